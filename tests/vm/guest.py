"""Runs inside the VM: attach precompiled HookQL objects, fire the hooks with
known workloads, read the counts back, print one JSON document.

    guest.py conformance MANIFEST.json     # one object per seed hook
    guest.py trigger                       # the workload alone (its comm is "hqtrig")

Objects are compiled on the host (clang under TCG is ~50x slower); the guest
only loads, attaches and reads maps, through HookQL's own runtime.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

TRIGGER_COMM = "hqtrig"  # the exact-count phase (TCP, UDP, UNIX)
MODULES_COMM = "hqtrig2"  # tun, sctp, xfrm: module loading makes counts inexact
RELEASE = os.uname().release
MODDIR = Path("/lib/modules") / RELEASE / "kernel"


# -- kernel modules, without modprobe/depmod ------------------------------------
def insmod(name: str, _seen=None) -> bool:
    """Load a module and, first, what its .modinfo says it depends on."""
    seen = _seen if _seen is not None else set()
    if name in seen or Path(f"/sys/module/{name}").exists():
        return True
    seen.add(name)
    ko = next(MODDIR.rglob(f"{name}.ko"), None) or next(MODDIR.rglob(f"{name.replace('_', '-')}.ko"), None)
    if ko is None:
        return False
    data = ko.read_bytes()
    deps = []
    i = data.find(b"depends=")
    if i >= 0:
        deps = [d for d in data[i + 8: data.index(b"\0", i)].decode().split(",") if d]
    for d in deps:
        insmod(d, seen)
    return subprocess.run(["busybox", "insmod", str(ko)], capture_output=True).returncode == 0


# -- the workload ------------------------------------------------------------------
def set_comm(name: str) -> None:
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


# What the workload does, so tests can assert exact counts for process-context hooks.
# Counted for comm hqtrig only: the phase that makes these calls and no others of their kind.
EXPECT = {
    "lsm:socket_listen": 3, "lsm:socket_shutdown": 1, "lsm:socket_socketpair": 2,
    # 4 explicit getsockname() calls, plus one per socket CPython wraps around an fd (it validates the fd
    # with getsockname): 5 accept()s and the 4 sockets of 2 socketpair()s
    "lsm:socket_getsockname": 4 + 5 + 4, "lsm:socket_getpeername": 1, "kprobe:tcp_v6_connect": 1,
    "kprobe:inet_csk_listen_start": 2, "kprobe:tcp_connect": 4, "kprobe:inet_bind": 3,
}


def tcp_traffic() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # inet_bind 1
    srv.listen()  # socket_listen 1, inet_csk_listen_start 1
    addr = srv.getsockname()  # getsockname 1
    clients = [socket.create_connection(addr) for _ in range(3)]  # tcp_connect 3
    conns = [srv.accept()[0] for _ in clients]
    clients[0].sendall(b"x" * 1000)
    conns[0].recv(1000)
    os.write(clients[0].fileno(), b"w")  # write(2): sock_write_iter -> sock_sendmsg
    conns[0].recv(1)
    clients[0].getsockname()  # getsockname 2
    clients[0].getpeername()  # socket_getpeername 1
    clients[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clients[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    try:
        conns[0].getsockopt(socket.SOL_SOCKET, socket.SO_PEERSEC, 64)  # getpeersec_stream
    except OSError:
        pass  # no LSM gives a peer context; the hook still ran
    clients[0].shutdown(socket.SHUT_WR)  # socket_shutdown 1
    for s in clients + conns + [srv]:
        s.close()
    srv6 = socket.socket(socket.AF_INET6)
    srv6.bind(("::1", 0))
    srv6.listen()  # socket_listen 2, inet_csk_listen_start 2
    addr6 = srv6.getsockname()[:2]  # getsockname 3
    c6 = socket.create_connection(addr6)  # tcp_v6_connect 1, tcp_connect 4
    a6 = srv6.accept()[0]
    c6.sendall(b"y")
    a6.recv(1)
    for s in (c6, a6, srv6):
        s.close()


def udp_traffic() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))  # inet_bind 2
    rx.setsockopt(socket.SOL_IP, 34, 1)  # IP_PASSSEC: recvmsg asks for the peer's security context
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))  # inet_bind 3
    raddr = rx.getsockname()  # getsockname 4
    tx.sendto(b"hello", raddr)
    rx.recvmsg(100, 256)
    tx.connect(raddr)
    tx.send(b"again")
    rx.recv(100)
    tx.close()
    rx.close()


def unix_traffic() -> None:
    a, b = socket.socketpair()  # socket_socketpair 1
    a.send(b"z")
    b.recv(1)
    a.close(), b.close()
    path = f"/tmp/hq-{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()  # socket_listen 3
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)  # unix_stream_connect
    srv.accept()[0].close()
    c.close(), srv.close()
    os.unlink(path)
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # socketpair 2
    d1.send(b"q")  # unix_may_send
    d2.recv(1)
    d1.close(), d2.close()


TUNSETIFF, TUNSETPERSIST, TUNSETQUEUE = 0x400454CA, 0x400454CB, 0x400454D9
IFF_TUN, IFF_NO_PI, IFF_MULTI_QUEUE, IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE = 0x1, 0x1000, 0x100, 0x200, 0x400
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def tun_traffic() -> str | None:
    if not insmod("tun"):
        return "tun module did not load"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    # a new device: tun_dev_alloc_security, tun_dev_create, tun_dev_attach
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"hqtun0", IFF_TUN | IFF_NO_PI))
    fcntl.ioctl(fd, TUNSETPERSIST, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"hqtun0", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"hqtun0", flags | IFF_UP))
    # one IPv4/UDP packet into the device: the driver hands it to netif_receive_skb
    payload = b"hq"
    udp = struct.pack("!HHHH", 9, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 99, 0, 2]),
                     bytes([10, 99, 0, 1]))
    os.write(fd, ip + udp)
    os.close(fd)
    fd2 = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd2, TUNSETIFF, struct.pack("16sH", b"hqtun0", IFF_TUN | IFF_NO_PI))  # tun_dev_open
    fcntl.ioctl(fd2, TUNSETPERSIST, 0)
    os.close(fd2)
    mq = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(mq, TUNSETIFF, struct.pack("16sH", b"hqmq0", IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE))
    fcntl.ioctl(mq, TUNSETQUEUE, struct.pack("16sH", b"", IFF_DETACH_QUEUE))
    fcntl.ioctl(mq, TUNSETQUEUE, struct.pack("16sH", b"", IFF_ATTACH_QUEUE))  # tun_dev_attach_queue
    os.close(mq)
    s.close()
    return None


def sctp_traffic() -> str | None:
    insmod("crc32c_generic")  # libcrc32c asks the kernel for crc32c, which would need modprobe
    if not insmod("sctp"):
        return "sctp module did not load"
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    sin = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + socket.inet_aton("127.0.0.1") + bytes(8)
    c.setsockopt(socket.IPPROTO_SCTP, 100, sin)  # SCTP_SOCKOPT_BINDX_ADD: sctp_bind_connect
    c.connect(srv.getsockname())  # bind_connect; the server sees assoc_request; the client assoc_established
    a = srv.accept()[0]  # sctp_sk_clone
    c.send(b"s")
    a.recv(1)
    for x in (a, c, srv):
        x.close()
    return None


def xfrm_traffic() -> str | None:
    for m in ("xfrm_user", "xfrm_algo"):
        insmod(m)
    r = subprocess.run(["ip", "xfrm", "policy", "add", "src", "127.0.0.1", "dst", "127.0.0.2", "dir", "out",
                        "ctx", "hookql_test"], capture_output=True, text=True)
    subprocess.run(["ip", "xfrm", "policy", "flush"], capture_output=True)
    return None if r.returncode == 0 else f"ip xfrm policy add: {r.stderr.strip()}"


def trigger() -> dict:
    set_comm(TRIGGER_COMM)
    tcp_traffic()
    udp_traffic()
    unix_traffic()
    time.sleep(0.5)  # let softirq work and socket teardown (sk_free_security) finish
    return {}


def trigger_modules() -> dict:
    set_comm(MODULES_COMM)
    notes = {}
    for name, fn in (("tun", tun_traffic), ("sctp", sctp_traffic), ("xfrm", xfrm_traffic)):
        try:
            why = fn()
        except OSError as exc:
            why = f"{type(exc).__name__}: {exc}"
        if why:
            notes[name] = why
    time.sleep(0.5)  # let softirq work and socket teardown (sk_free_security) finish
    return notes


# -- conformance: attach everything, trigger once, read back ---------------------------
def conformance(manifest: dict) -> dict:
    from hookql.runtime.decode import MapReader
    from hookql.runtime.loader import BpfObject, LoadError
    from hookql.runtime.libbpf import LibbpfError

    objs, results = [], {}
    for hook, entry in manifest.items():
        layout = json.loads(Path(entry["layout"]).read_text())
        obj = BpfObject(entry["object"], layout)
        try:
            obj.__enter__()
            obj.configure()
            obj.load()
            obj.attach_all()
            objs.append((hook, obj, layout))
            results[hook] = {"attached": True}
        except (LoadError, LibbpfError) as exc:
            obj.close()
            results[hook] = {"attached": False, "error": str(exc)}
    notes = {}
    for phase in ("trigger", "trigger-modules"):
        notes.update(json.loads(subprocess.run([sys.executable, __file__, phase], capture_output=True, text=True,
                                               check=True).stdout))
    reader = MapReader()
    for hook, obj, layout in objs:
        agg = layout["aggregations"][0]
        rows = reader.rows(obj.map_fd(agg["map"]), agg)
        results[hook]["by_comm"] = {r.key["comm"]: r.value for r in rows}
        results[hook]["count"] = sum(r.value for r in rows)
        obj.close()
    return {"release": RELEASE, "results": results, "trigger_notes": notes}


if __name__ == "__main__":
    if sys.argv[1] == "trigger":
        print(json.dumps(trigger()))
    elif sys.argv[1] == "trigger-modules":
        print(json.dumps(trigger_modules()))
    elif sys.argv[1] == "conformance":
        print(json.dumps(conformance(json.loads(Path(sys.argv[2]).read_text()))))
