"""Workloads for the kprobe/LSM examples' cases (run with `hookql test --kernel 6.1`):
`python3 workloads/vm_net.py MODE`.

Each mode runs in a network namespace of its own (lo only, up: no route anywhere else), so the fixed
ports are free and a connect to any other address fails at once with ENETUNREACH.  Each connect prints
`ADDR:PORT ok|ERRNO` (a case can check it with stdout ~), and the modes assert what the kernel must do,
so a workload that did not do what its case counts on exits non-zero.  Kept small: Python in the VM is slow.
"""
import ctypes
import errno
import fcntl
import select
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
PORT, CLOSED, CLIENT = 47200, 47201, 47202  # a listener's port; nothing listens on CLOSED; a client's port
V4, V6 = socket.AF_INET, socket.AF_INET6


def listener(host, port=PORT):
    s = socket.socket(V6 if ":" in host else V4)
    s.bind((host, port))
    s.listen(8)
    return s


def connect(host, port, bind=None):
    """Connect once; prints and returns the outcome ('ok' or the errno's name)."""
    s = socket.socket(V6 if ":" in host else V4)
    if bind is not None:
        s.bind((host, bind))
    try:
        s.connect((host, port))
        got = "ok"
    except OSError as exc:
        got = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
    print(f"{host}:{port} {got}")
    return got


def watch():
    """connect_watch/design_card: IPv6 connects to a listener (twice) and to port 4444, one IPv4 connect."""
    ls = [listener("::1"), listener("::1", 4444), listener("127.0.0.1")]  # noqa: F841 (kept open)
    for host, port in [("::1", PORT), ("::1", PORT), ("::1", 4444), ("127.0.0.1", PORT)]:
        assert connect(host, port) == "ok"
    assert connect("::1", CLOSED) == "ECONNREFUSED"  # refused later: the LSM hook saw it first


def destinations():
    """private_destinations/uses_netlib: loopback, private (10/8, 172.16/12, fc00::/7), documentation
    (public) addresses; web ports (80, 443, 8080, 8443) and others."""
    for host, port in [("10.1.2.3", 80), ("10.200.0.9", 5432), ("172.16.0.1", 443), ("192.0.2.1", 443),
                       ("198.51.100.7", 22), ("fc00::1", 8080), ("2001:db8::1", 8443)]:
        assert connect(host, port) == "ENETUNREACH"
    for host, port in [("127.0.0.1", 8080), ("::1", 22), ("::1", 443)]:
        assert connect(host, port) == "ECONNREFUSED"


def connects():
    """tcpconnect/tcp_connect_stream: IPv4 and IPv6 connects accepted, one refused (the SYN was sent), one
    with no route (the kernel sent nothing)."""
    ls = [listener("127.0.0.1"), listener("::1")]  # noqa: F841 (kept open)
    assert connect("127.0.0.1", PORT) == "ok" and connect("::1", PORT) == "ok"
    assert connect("127.0.0.1", CLOSED) == "ECONNREFUSED"
    assert connect("10.1.2.3", 80) == "ENETUNREACH"


def accepts():
    """tcpaccept: one IPv4 and one IPv6 connection accepted (from CLIENT), and an accept that failed."""
    for host in ("127.0.0.1", "::1"):
        with listener(host) as lst:
            c = socket.socket(lst.family)
            c.bind((host, CLIENT))
            c.connect((host, PORT))
            a, peer = lst.accept()
            print(f"accepted {peer[0]}:{peer[1]} on {host}:{PORT}")
            lst.setblocking(False)
            try:
                lst.accept()  # nothing waiting: EAGAIN, inet_csk_accept returns NULL
                raise AssertionError("a second accept succeeded")
            except BlockingIOError:
                print("accept EAGAIN")
            a.close()
            c.close()


SIZES = [100, 2000, 7, 30000]


def sends():
    """tcp_send_sizes: one connection sending SIZES bytes, one send(2) each (they fit its buffers)."""
    with listener("127.0.0.1") as lst, socket.create_connection(("127.0.0.1", PORT)) as c:
        a, _ = lst.accept()
        for n in SIZES:
            assert c.send(b"x" * n) == n
        print(f"sent {sum(SIZES)}")
        a.close()


def send_errors():
    """tcp_send_errors: a send on a socket never connected (EPIPE); on a connection the peer reset
    (ECONNRESET, then EPIPE); a non-blocking send to a full connection (EAGAIN, once)."""
    def fails(s, data, want):
        try:
            s.send(data)
        except OSError as exc:
            assert exc.errno == want, exc
            print(f"send {errno.errorcode[want]}")
            return
        raise AssertionError(f"send did not fail with {errno.errorcode[want]}")

    fails(socket.socket(), b"x", errno.EPIPE)
    with listener("127.0.0.1") as lst:
        c = socket.create_connection(("127.0.0.1", PORT))
        a, _ = lst.accept()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()  # SO_LINGER 0: a reset
        assert select.select([c], [], [], 5)[0]  # the reset has arrived
        fails(c, b"x", errno.ECONNRESET)
        fails(c, b"x", errno.EPIPE)
        c.close()
        c = socket.create_connection(("127.0.0.1", PORT))
        a, _ = lst.accept()  # never reads
        c.setblocking(False)
        chunk, sent = b"x" * 65536, 0
        while True:
            try:
                sent += c.send(chunk)
            except BlockingIOError:
                assert sent > 0
                print("send EAGAIN")
                break
        c.close()
        a.close()


if __name__ == "__main__":
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        sys.exit(f"unshare(CLONE_NEWNET): errno {ctypes.get_errno()} (run as root)")
    with socket.socket(V4, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", 1))  # SIOCSIFFLAGS: lo up
    {"watch": watch, "destinations": destinations, "connects": connects, "accepts": accepts, "sends": sends,
     "send_errors": send_errors}[sys.argv[1]]()
