"""Workloads for the network examples' cases (examples/*.hqt): `python3 workloads/net.py MODE`.

Each mode runs in a network namespace of its own (lo only, up): fixed ports are free, nothing leaves it.
The comm is hq-MODE, so a case counting host-wide (`scope host`) can tell these connections apart.
"""
import ctypes
import fcntl
import select
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
PORT, CLOSED = 47123, 47124  # a listener's port; nothing listens on CLOSED
# a classic BPF socket filter of one instruction, `ret #0`: the socket takes no packet (SO_ATTACH_FILTER)
DROP = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))


def drop_all(s, on=True):
    if on:
        s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(DROP)))
    else:
        s.setsockopt(socket.SOL_SOCKET, 27, 0)  # SO_DETACH_FILTER


def listener(host="127.0.0.1", fam=socket.AF_INET):
    s = socket.socket(fam)
    s.bind((host, PORT))
    s.listen(8)
    return s


def refused(host="127.0.0.1", fam=socket.AF_INET):
    with socket.socket(fam) as c:
        assert c.connect_ex((host, CLOSED)) == 111  # ECONNREFUSED: the SYN met no socket


def bind():
    a, b = socket.socket(), socket.socket()
    a.bind(("0.0.0.0", PORT))
    try:
        b.bind(("0.0.0.0", PORT))  # no SO_REUSEADDR: EADDRINUSE
    except OSError:
        pass
    socket.socket(socket.AF_INET6).bind(("::1", 0))  # port 0: the kernel picks one
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.1", 53))
    socket.socket(socket.AF_UNIX).bind("\0hookql")  # not AF_INET/AF_INET6: not reported


def connect():
    """A connect to a listener over IPv4, one over IPv6, and one refused."""
    l4, l6 = listener(), listener("::1", socket.AF_INET6)
    socket.create_connection(("127.0.0.1", PORT)).close()
    socket.create_connection(("::1", PORT)).close()
    refused()


def lostsyn():
    """A connect whose first SYN the listener's filter drops: TCP sends it again after 1s (its initial RTO)."""
    l4 = listener()
    drop_all(l4)
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", PORT))  # EINPROGRESS
    time.sleep(0.5)
    drop_all(l4, False)
    assert select.select([], [c], [], 3)[1] and not c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def life():
    """A connection refused (it lives microseconds), and one held open for 100ms."""
    refused()
    l4 = listener()
    c = socket.create_connection(("127.0.0.1", PORT))
    s, _ = l4.accept()
    time.sleep(0.1)
    c.close()
    s.close()


def retrans():
    """The server's end takes no packet: data sent to it is retransmitted (a loss probe, the RTO: 200ms)."""
    l4 = listener()
    c = socket.create_connection(("127.0.0.1", PORT))
    s, _ = l4.accept()
    drop_all(s)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # two segments in flight: a loss probe soon
    c.sendall(b"x" * 100)
    c.sendall(b"y" * 100)
    time.sleep(0.5)
    for end in (s, c):  # closed with a reset (SO_LINGER 0): nothing is retransmitted after the workload
        end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        end.close()


def drops():
    """Packets no socket takes: two TCP SYNs to a closed port, three UDP datagrams to a closed port."""
    refused()
    refused("::1", socket.AF_INET6)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        u.sendto(b"x", ("127.0.0.1", CLOSED))


def dests():
    """UDP connects (no packet is sent) to private, public and loopback addresses."""
    for fam, addr, port in ((2, "10.1.2.3", 80), (2, "192.168.1.1", 5432), (10, "fd00::1", 443), (2, "172.32.0.1", 80),
                            (2, "8.8.8.8", 443), (2, "1.1.1.1", 53), (2, "127.0.0.1", 8080), (10, "::1", 80)):
        socket.socket(fam, socket.SOCK_DGRAM).connect_ex((addr, port))  # ENETUNREACH here: no route


if __name__ == "__main__":
    mode = sys.argv[1]
    libc.prctl(15, f"hq-{mode}".encode(), 0, 0, 0)  # PR_SET_NAME
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        sys.exit(f"unshare(CLONE_NEWNET): errno {ctypes.get_errno()} (run as root)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", 1))  # SIOCSIFFLAGS: lo up
    globals()[mode]()
