"""User sockaddrs: a syscall tracepoint's `struct sockaddr *` argument (bind's umyaddr, connect's uservaddr,
sendto's addr) is read from user memory (bpf_probe_read_user) into typed fields, family/addr/port and, as on
LSM hooks, saddr/sport on bind and daddr/dport on connect and sendto.  The checker refuses members through
the user pointer; `hookql hooks -v` shows the fields and says where they come from.  As root: a workload
with a unique comm binds, connects and sends on known ports of 127.0.0.1 and ::1 (also with a sockaddr at
the very end of a mapping, a NULL pointer and a page never touched); exact counts, next to bpftrace 0.17
reading the same syscalls."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from conftest import bpftrace_attached, errors, hookql_cmd, one_error

BIND, CONNECT, SENDTO = (f"tracepoint:syscalls:sys_enter_{s}" for s in ("bind", "connect", "sendto"))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


# -- the front end ----------------------------------------------------------------------------------
def test_fields_of_each_syscall(running, tracefs):
    from hookql.catalog import Catalog

    cat = Catalog.load()
    for tp, ptr, role in [(BIND, "umyaddr", ("saddr", "sport")), (CONNECT, "uservaddr", ("daddr", "dport")),
                          (SENDTO, "addr", ("daddr", "dport"))]:
        h = cat.resolve("tracepoint", tp.split(":")[1:], running)
        for name in ("family", "addr", "port", *role):
            f = h.fields[name]
            assert f.kind == "derived" and f.source == "usockaddr", (tp, name, f)
            assert f"from {ptr}, read from user memory" in f.doc
        assert str(h.fields["addr"].ty) == "IP address" and str(h.fields["port"].ty).endswith("port")
        assert str(h.fields["family"].ty).endswith("address family")
        other = {"saddr", "sport"} if role[0] == "daddr" else {"daddr", "dport"}
        assert not other & set(h.fields), tp
    # sendto's pointer is named `addr`: the typed address replaces it (as a user string replaces its pointer)
    h = cat.resolve("tracepoint", ["syscalls", "sys_enter_sendto"], running)
    assert h.fields["addr"].ty.kind == "addr"
    # accept's sockaddr is filled on the way out: nothing to read at entry, so no typed fields
    h = cat.resolve("tracepoint", ["syscalls", "sys_enter_accept"], running)
    assert not {"family", "addr", "port"} & set(h.fields)


def test_hooks_v_shows_fields_from_user_memory(tmp_path, tracefs):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run(hookql_cmd() + ["hooks", "-v", BIND], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    for name in ("family", "addr", "port", "saddr", "sport"):
        assert re.search(rf"^    {name} +.*\(from umyaddr, read from user memory\)$", r.stdout, re.M), r.stdout
    assert "Network fields:" in r.stdout


@pytest.mark.parametrize("script, col, hint", [
    (f"on {BIND} {{ emit umyaddr.sa_family }}", "umyaddr.", "family, addr, port, saddr, sport"),
    (f"on {CONNECT} {{ count by args.uservaddr.sa_family }}", "uservaddr.", "family, addr, port, daddr, dport"),
    (f"on {CONNECT} where uservaddr.sa_data == 0 {{ count }}", "uservaddr.", "family, addr, port, daddr, dport"),
    ("on tracepoint:syscalls:sys_enter_accept { emit upeer_sockaddr.sa_family }", "upeer_sockaddr.",
     "fills this sockaddr on the syscall's way out"),
])
def test_member_through_a_user_pointer_is_an_error(running, tracefs, script, col, hint):
    e = one_error(script, running)
    assert "points into the process's memory: its members are not read" in e.message, e.message
    assert hint in e.hint, e.hint
    assert e.span.col == script.index(col) + len(col) + 1


@pytest.mark.parametrize("script, name", [
    (f"on {SENDTO} {{ emit addr.sa_family }}", "addr"),
    (f"on {CONNECT} {{ emit dport.x }}", "dport"),
])
def test_member_of_a_field_read_from_a_user_sockaddr_is_an_error(running, tracefs, script, name):
    e = one_error(script, running)
    assert f"'{name}'" in e.message and "read from a sockaddr in user memory: it has no members" in e.message
    assert f"emit {name}" in e.hint


def test_typed_fields_check(running, tracefs):
    assert not errors(f"on {BIND} where family == AF_INET6 and addr == ::1 and port > 1024 "
                      f"{{ count by comm, family, addr, port; emit comm, saddr, sport }}\n"
                      f"on {CONNECT} where daddr in 127.0.0.0/8 {{ count by dport }}\n"
                      f"on {SENDTO} where args.addr != 0.0.0.0 {{ count by addr, port }}\n", running)


def _c(script: str, *opts) -> str:
    r = subprocess.run(hookql_cmd() + ["compile", "--emit-c", *opts, "-e", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_user_sockaddr_reads_user_memory_only(tracefs):
    c = _c(f"on {BIND} {{ count by family, addr, port }}")
    body = c[c.index("hq_usa_read(const void"):]
    body = body[:body.index("\n}\n")]
    assert "bpf_probe_read_user(" in body and "bpf_probe_read_kernel" not in body and "CORE_READ" not in body
    assert "sizeof(r), uptr" in body and "16, uptr" in body  # the sockaddr_in6, then a sockaddr_in's 16 bytes


def test_kernel_sockaddr_never_read_with_the_user_helper():
    # lsm:socket_connect's sockaddr is the kernel's copy: CO-RE reads, never bpf_probe_read_user
    c = _c("on lsm:socket_connect { count by family, daddr, dport }", "--kernel", "6.1")
    assert "hq_sockaddr_family" in c and "probe_read_user" not in c and "hq_usa" not in c


# -- as root: a workload with known sockaddrs -------------------------------------------------------
WORKLOAD = r'''
import ctypes, mmap, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)
p4, p6, u4, u6, n4, n6 = (int(a) for a in sys.argv[2:8])
for fam, host, port, n in ((socket.AF_INET, "127.0.0.1", p4, n4), (socket.AF_INET6, "::1", p6, n6)):
    l = socket.socket(fam, socket.SOCK_STREAM)
    l.bind((host, port))                       # bind: the known port, once
    l.listen(64)
    for _ in range(n):
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.bind((host, 0))                      # bind: port 0, n times
        c.connect((host, port))                # connect: the known port, n times
        a, _ = l.accept()
        a.close(); c.close()
    l.close()
    u = socket.socket(fam, socket.SOCK_DGRAM)
    for _ in range(n):
        u.sendto(b"x", (host, u4 if fam == socket.AF_INET else u6))  # sendto: nobody listens; n times
    u.close()
# a sockaddr that ends where its mapping ends (the next page PROT_NONE): sockaddr_in (16 bytes) and
# sockaddr_in6 without its scope id (24, SIN6_LEN_RFC2133): a UDP connect to u4 / u6
page = mmap.PAGESIZE
m = mmap.mmap(-1, 2 * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0
sa4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", u4) + socket.inet_pton(socket.AF_INET, "127.0.0.1") + bytes(8)
sa6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", u6) + bytes(4) + socket.inet_pton(socket.AF_INET6, "::1")
for fam, sa in ((socket.AF_INET, sa4), (socket.AF_INET6, sa6)):
    m[page - len(sa):page] = sa
    u = socket.socket(fam, socket.SOCK_DGRAM)
    assert libc.connect(u.fileno(), ctypes.c_void_p(base + page - len(sa)), len(sa)) == 0, ctypes.get_errno()
    u.close()
# reads that fail: a NULL sockaddr (bind and connect), and a page never touched (bind)
s = socket.socket()
libc.bind(s.fileno(), None, 16)
libc.connect(s.fileno(), None, 16)
fresh = mmap.mmap(-1, page)
libc.bind(s.fileno(), ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(fresh))), 16)
s.close()
'''

SCRIPT = """on {BIND} where comm == "{comm}" {{ count by comm, family, addr, port; emit comm, saddr, sport }}
on {CONNECT} where comm == "{comm}" {{ count by comm, family, addr, port; count by daddr, dport }}
on {SENDTO} where comm == "{comm}" {{ count by family, daddr, dport }}
"""

# bpftrace 0.17 reads a syscall tracepoint's pointer arguments as user memory (probe_read_user)
BPFTRACE = r"""
tracepoint:syscalls:sys_enter_WHAT /comm == "COMM"/ {
  $sa = (struct sockaddr *)args->PTR;
  if ($sa->sa_family == 2) {
    $s4 = (struct sockaddr_in *)args->PTR;
    @WHAT4[bswap($s4->sin_port), ntop($s4->sin_addr.s_addr)] = count();
  } else if ($sa->sa_family == 10) {
    $s6 = (struct sockaddr_in6 *)args->PTR;
    @WHAT6[bswap($s6->sin6_port), ntop($s6->sin6_addr.in6_u.u6_addr8)] = count();
  } else {
    @WHAT_other[$sa->sa_family] = count();
  }
}
"""


def _free_port(fam: int, kind: int) -> int:
    with socket.socket(fam, kind) as s:
        s.bind(("127.0.0.1" if fam == socket.AF_INET else "::1", 0))
        return s.getsockname()[1]


def _bpftrace_script(comm: str) -> str:
    probes = [BPFTRACE.replace("WHAT", what).replace("PTR", ptr).replace("COMM", comm)
              for what, ptr in (("bind", "umyaddr"), ("connect", "uservaddr"))]
    return "".join(probes)


@needs_root
def test_exact_counts_next_to_bpftrace(tmp_path):
    if not shutil.which("bpftrace"):
        pytest.skip("bpftrace is the oracle")
    comm = "hq" + uuid.uuid4().hex[:10]
    p4, p6 = _free_port(socket.AF_INET, socket.SOCK_STREAM), _free_port(socket.AF_INET6, socket.SOCK_STREAM)
    u4, u6 = _free_port(socket.AF_INET, socket.SOCK_DGRAM), _free_port(socket.AF_INET6, socket.SOCK_DGRAM)
    n4, n6 = 5, 3
    wl = tmp_path / "wl.py"
    wl.write_text(WORKLOAD)
    script = tmp_path / "usa.hq"
    script.write_text(SCRIPT.format(BIND=BIND, CONNECT=CONNECT, SENDTO=SENDTO, comm=comm))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    bt = bpftrace_attached(_bpftrace_script(comm))
    try:
        r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(script), "-c",
                                           f"{sys.executable} {wl} {comm} {p4} {p6} {u4} {u6} {n4} {n6}"],
                           capture_output=True, text=True, timeout=180, env=env)
    finally:
        bt.send_signal(signal.SIGINT)
        bt_out, _ = bt.communicate(timeout=180)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    objs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    aggs = {(o["probe"], o["text"]): {tuple(row["key"].values()): row["value"] for row in o["rows"]}
            for o in objs if "aggregation" in o}
    L4, L6 = "127.0.0.1", "::1"
    assert aggs[(BIND, "count by comm, family, addr, port")] == {
        (comm, "AF_INET", L4, p4): 1, (comm, "AF_INET", L4, 0): n4,
        (comm, "AF_INET6", L6, p6): 1, (comm, "AF_INET6", L6, 0): n6,
        (comm, "AF_UNSPEC", "::", 0): 2,  # NULL, and a page never touched: read as AF_UNSPEC, counted
    }
    assert aggs[(CONNECT, "count by comm, family, addr, port")] == {
        (comm, "AF_INET", L4, p4): n4, (comm, "AF_INET6", L6, p6): n6,
        (comm, "AF_INET", L4, u4): 1, (comm, "AF_INET6", L6, u6): 1,  # at the end of a mapping
        (comm, "AF_UNSPEC", "::", 0): 1,
    }
    assert aggs[(CONNECT, "count by daddr, dport")] == {(L4, p4): n4, (L6, p6): n6, (L4, u4): 1, (L6, u6): 1,
                                                        ("::", 0): 1}
    assert aggs[(SENDTO, "count by family, daddr, dport")] == {("AF_INET", L4, u4): n4, ("AF_INET6", L6, u6): n6}
    emits = sorted((o["event"]["saddr"], o["event"]["sport"]) for o in objs if "event" in o)
    assert emits == sorted([(L4, p4)] + [(L4, 0)] * n4 + [(L6, p6)] + [(L6, 0)] * n6 + [("::", 0)] * 2)
    assert "3 user strings or sockaddrs could not be read" in r.stderr, r.stderr
    # bpftrace, the same syscalls: "@bind4[PORT, ADDR]: N", "@bind_other[FAMILY]: N"
    theirs = {}
    for m in re.finditer(r"^@(bind|connect)(4|6|_other)\[([^\]]*)\]: (\d+)$", bt_out, re.M):
        what, fam, key, n = m[1], m[2], [k.strip() for k in m[3].split(",")], int(m[4])
        fam = {"4": "AF_INET", "6": "AF_INET6"}.get(fam) or {"0": "AF_UNSPEC"}.get(key[0], key[0])
        port, addr = (int(key[0]), key[1]) if fam != "AF_UNSPEC" else (0, "::")
        theirs[(what, fam, addr, port)] = n
    ours = {("bind", f, a, p): n for (_, f, a, p), n in aggs[(BIND, "count by comm, family, addr, port")].items()}
    ours.update({("connect", f, a, p): n
                 for (_, f, a, p), n in aggs[(CONNECT, "count by comm, family, addr, port")].items()})
    assert ours == theirs, bt_out
