"""A syscall's entry and exit paired (issue 13): a `tracepoint:syscalls:sys_exit_X` clause sees the fields of
sys_enter_X (saved per thread at the entry, taken out at the exit), user strings and user sockaddrs included.

Front end: what `hookql hooks -v` lists, which field wins, errors.  As root: examples/bindsnoop.hq,
execsnoop.hq and killsnoop.hq and read(2) clauses on one workload of known binds, execs, kills and reads,
followed with `-p PID` (so every entry saved is the workload's and the entries report is exact: as many taken
as stored, none left, none missing), next to bpftrace 0.17 on the same workload; and the report's `missing`
and `left` on calls that straddle the attach and the stop."""
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, check, hookql_cmd, one_error

root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
READ_NR = {"x86_64": 0, "aarch64": 63}.get(platform.machine())


def _resolve(running, name):
    from hookql.catalog import Catalog
    return Catalog.load().resolve("tracepoint", name.split(":"), running)


# -- front end -------------------------------------------------------------------------------------------
def test_sys_exit_sees_the_entry_fields(running):
    h = _resolve(running, "syscalls:sys_exit_bind")
    assert [n for n, f in h.fields.items() if f.kind == "tp" and f.entry] == ["fd", "umyaddr", "addrlen"]
    assert not h.fields["ret"].entry and not h.fields["__syscall_nr"].entry  # the exit's own
    for n in ("family", "saddr", "sport", "addr", "port"):  # the user sockaddr, read at the exit
        assert h.fields[n].entry, n
    assert "daddr" not in h.fields and "dport" not in h.fields  # bind: saddr/sport; connect: daddr/dport
    c = _resolve(running, "syscalls:sys_exit_connect")
    assert c.fields["daddr"].entry and c.fields["dport"].entry and "sport" not in c.fields
    x = _resolve(running, "syscalls:sys_exit_execve")
    assert x.fields["filename"].entry and x.fields["filename"].ty.kind == "str"


def test_hooks_v_lists_the_entry_fields():
    r = subprocess.run(hookql_cmd() + ["hooks", "-v", "tracepoint:syscalls:sys_exit_bind"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.startswith("    ")}
    for n in ("fd", "umyaddr", "addrlen"):
        assert "at sys_enter_bind, saved per thread until the exit" in lines[n], lines[n]
    assert "saved per thread" not in lines["ret"]
    assert "from umyaddr, read from user memory" in lines["sport"] and "IP address" in lines["saddr"]
    assert r.stdout.count("    __syscall_nr ") == 1  # the exit's; the entry's is left out
    assert "the user memory a saved pointer names (a string, a sockaddr) is read at the return" in r.stdout


def test_the_entry_fields_check_and_shadowing_warns(running):
    assert list(check('on t:syscalls:sys_exit_bind where family == AF_INET6 { emit fd, saddr, sport, ret; '
                      'count by ret }', running)) == []
    assert list(check("on t:syscalls:sys_exit_read { sum(ret) by count; count by fd, args.count }", running)) == []
    # sys_enter_kill's `pid` (the process signalled) at the exit: the field, with the warning it has at entry
    (w,) = check("on t:syscalls:sys_exit_kill { emit pid, sig, ret }", running)
    assert not w.is_error and "sys_exit_kill's field" in w.message and "args.pid" in w.hint
    assert list(check("on t:syscalls:sys_exit_kill { emit args.pid, current.pid, sig, ret }", running)) == []


def test_an_unknown_field_at_the_exit_is_an_error(running):
    e = one_error("on t:syscalls:sys_exit_bind { emit umyadr }", running)
    assert (e.span.line, e.span.col) == (1, 36)
    assert "unknown field 'umyadr'" in e.message and "umyaddr" in e.message and "umyaddr" in e.hint
    e = one_error("on t:syscalls:sys_exit_execve where filename > 3 { count }", running)
    assert e.span.line == 1 and "filename" in e.render()  # a user string, as at the entry: no `<`


def _c(tmp_path, text):
    script = tmp_path / "t.hq"
    script.write_text(text)
    r = subprocess.run(hookql_cmd() + ["compile", "--emit-c", str(script)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_only_a_clause_that_reads_the_entry_saves_it(tmp_path):
    own = _c(tmp_path, "on t:syscalls:sys_exit_bind { count by ret }")
    assert 'SEC("tp/syscalls/sys_enter_bind")' not in own and "hq_entry" not in own
    both = _c(tmp_path, "on t:syscalls:sys_exit_bind { count by ret, fd }\n"
                        "on t:syscalls:sys_exit_bind { emit saddr, sport }")
    assert both.count('SEC("tp/syscalls/sys_enter_bind")') == 2  # one entry program and map per clause
    assert "BPF_MAP_TYPE_LRU_HASH" in both and "hq_usa_read" in both


# -- as root: one workload, followed with -p, next to bpftrace -------------------------------------------
WORKLOAD = r"""
import errno, json, os, socket, sys, time
comm, go, facts, data, true_copy = sys.argv[1:6]
n_kill, n_gone = int(sys.argv[6]), int(sys.argv[7])
open("/proc/self/comm", "w").write(comm)
gone = int(open("/proc/sys/kernel/pid_max").read())  # pids are below pid_max: none has this one
while not os.path.exists(go):  # stat and nanosleep only: no bind, exec, kill or read until the probes are in
    time.sleep(0.005)
a = socket.socket(socket.AF_INET)
a.bind(("127.0.0.1", 0))
port = a.getsockname()[1]
b = socket.socket(socket.AF_INET6)
b.bind(("::1", 0))
c = socket.socket(socket.AF_INET)
try:
    c.bind(("127.0.0.1", port))
except OSError as e:
    assert e.errno == errno.EADDRINUSE, e
else:
    raise SystemExit("a second bind of a bound port succeeded")
u = socket.socket(socket.AF_UNIX)
u.bind(b"\0" + comm.encode())  # not IP: bindsnoop leaves it out
for _ in range(n_kill):
    os.kill(os.getpid(), 0)
for _ in range(n_gone):
    try:
        os.kill(gone, 0)
    except ProcessLookupError:
        pass
    else:
        raise SystemExit("kill of a missing pid succeeded")
fd = os.open(data, os.O_RDONLY)
os.dup2(fd, 77)
os.close(fd)
while os.read(77, 100):
    pass
os.lseek(77, 0, os.SEEK_SET)
os.read(77, 4096)
with open(facts, "w") as f:
    json.dump({"pid": os.getpid(), "port": port, "fds": [a.fileno(), b.fileno(), c.fileno()], "gone": gone}, f)
try:
    os.execv("/nonexistent/" + comm, ["x"])
except FileNotFoundError:
    pass
else:
    raise SystemExit("exec of a missing file succeeded")
os.execv(true_copy, [true_copy])  # a copy of true named comm: the same comm after the exec
"""

READS = """
on tracepoint:syscalls:sys_exit_read where fd == 77 { sum(ret) by count; count by fd, count }
on tracepoint:syscalls:sys_exit_read { sum(ret) }
"""

BPFTRACE = r"""
BEGIN { printf("ready\n"); }
tracepoint:syscalls:sys_enter_bind /pid == PID/ { @a[tid] = args->umyaddr; }
tracepoint:syscalls:sys_exit_bind /pid == PID && @a[tid] != 0/ {
    $sa = (struct sockaddr_in *)uptr(@a[tid]);
    $p = $sa->sin_port;
    if ($sa->sin_family == 2 || $sa->sin_family == 10) {
        @bind[$sa->sin_family, (($p & 0xff) << 8) | ($p >> 8), args->ret] = count();
    }
    delete(@a[tid]);
}
tracepoint:syscalls:sys_enter_execve /pid == PID/ { @exec[comm] = count(); @execf[str(args->filename)] = count(); }
tracepoint:syscalls:sys_exit_execve /pid == PID/ { @execret[args->ret] = count(); }
tracepoint:syscalls:sys_exit_kill /pid == PID/ { @killret[args->ret] = count(); }
tracepoint:syscalls:sys_exit_read /pid == PID/ { @readsum = sum(args->ret); }
tracepoint:sched:sched_process_exit /pid == PID/ { exit(); }
"""

DATA_SIZE = 1234  # read 100 at a time: 12 reads of 100, one of 34, one of 0; then one of 4096: 1234


def _bt_maps(out: str) -> dict[str, dict[tuple, int]]:
    """bpftrace's printed maps: {'@bind': {(2, 0, 0): 1, ...}, '@readsum': {(): 1234}}."""
    maps: dict[str, dict[tuple, int]] = {}
    for m in re.finditer(r"^(@\w+)(?:\[(.*)\])?: (-?\d+)$", out, re.M):
        key = tuple(int(k) if re.fullmatch(r"-?\d+", k) else k for k in (m[2].split(", ") if m[2] else []))
        maps.setdefault(m[1], {})[key] = int(m[3])
    return maps


def _start_workload(tmp_path, comm, *args):
    wl = tmp_path / "wl.py"
    wl.write_text(WORKLOAD)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(DATA_SIZE))
    true_copy = tmp_path / comm
    shutil.copy("/bin/true", true_copy)
    paths = {"go": tmp_path / "go", "facts": tmp_path / "facts.json"}
    p = subprocess.Popen([sys.executable, str(wl), comm, str(paths["go"]), str(paths["facts"]), str(data),
                          str(true_copy), *map(str, args)])
    return p, paths, true_copy


def _wait_for(stream, text, proc, what):
    """Read lines until one holds text (the process has attached); its death fails the test."""
    seen = []
    for line in stream:
        seen.append(line)
        if text in line:
            return seen
    proc.wait(timeout=30)
    pytest.fail(f"{what} did not attach:\n{''.join(seen)}{proc.stderr.read() if proc.stderr else ''}")


@root
@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is the oracle")
def test_bindsnoop_execsnoop_killsnoop_and_reads_pair_exactly(tmp_path):
    comm, n_kill, n_gone = "hq" + uuid.uuid4().hex[:10], 5, 3
    script = tmp_path / "pairing.hq"
    script.write_text("".join((REPO / "examples" / f"{n}.hq").read_text() + "\n"
                              for n in ("bindsnoop", "execsnoop", "killsnoop")) + READS)
    wl, paths, true_copy = _start_workload(tmp_path, comm, n_kill, n_gone)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    hq = bt = None
    try:
        hq = subprocess.Popen(hookql_cmd() + ["run", "--format", "json", "-p", str(wl.pid), str(script)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        hq_err = _wait_for(hq.stderr, "Attached", hq, "hookql")
        bt = subprocess.Popen(["bpftrace", "-e", BPFTRACE.replace("PID", str(wl.pid))], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "BPFTRACE_STRLEN": "200"})  # 64 by default: the paths are longer
        _wait_for(bt.stdout, "ready", bt, "bpftrace")
        paths["go"].touch()
        assert wl.wait(timeout=120) == 0  # true's status: the workload ran to its last exec
        out, err = hq.communicate(timeout=120)  # -p: hookql stops when the process is gone
        bt_out, bt_err = bt.communicate(timeout=120)  # exit() on the process's exit
    finally:
        for p in (wl, hq, bt):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    err = "".join(hq_err) + err
    assert hq.returncode == 0, err
    assert "Traceback" not in err and "warning" not in err, err  # nothing missed, left, evicted or unread
    facts = json.loads(paths["facts"].read_text())
    pid, port, fds = facts["pid"], facts["port"], facts["fds"]
    objs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    events = [o for o in objs if "event" in o]

    def emitted(line):
        return [o["event"] for o in events if o["line"] == line]

    text = script.read_text().splitlines()
    line_of = {k: next(i + 1 for i, l in enumerate(text) if l.startswith(k)) for k in (
        "on tracepoint:syscalls:sys_exit_bind", "on tracepoint:syscalls:sys_enter_execve",
        "on tracepoint:syscalls:sys_exit_execve", "on tracepoint:syscalls:sys_exit_kill")}

    # bindsnoop: the IP binds, each with its socket, address, port and result (the AF_UNIX one left out)
    binds = [(e["comm"], e["pid"], e["fd"], e["family"], e["saddr"], e["sport"], e["ret"])
             for e in emitted(line_of["on tracepoint:syscalls:sys_exit_bind"] + 1)]
    assert binds == [(comm, pid, fds[0], "AF_INET", "127.0.0.1", 0, 0), (comm, pid, fds[1], "AF_INET6", "::1", 0, 0),
                     (comm, pid, fds[2], "AF_INET", "127.0.0.1", port, "-EADDRINUSE")], binds
    by = {o["text"]: o for o in objs if "aggregation" in o}
    counts = {(r["key"]["sport"], r["key"]["ret"]): r["value"] for r in by["count by sport, ret"]["rows"]}
    assert counts == {(0, 0): 2, (port, "-EADDRINUSE"): 1}, counts
    bt_maps = _bt_maps(bt_out)
    assert bt_maps["@bind"] == {(2, 0, 0): 1, (10, 0, 0): 1, (2, port, -98): 1}, bt_out

    # execsnoop: both execs at the entry; the failed one at the exit too, its filename still readable there
    execs = [(e["comm"], e["pid"], e["filename"])
             for e in emitted(line_of["on tracepoint:syscalls:sys_enter_execve"] + 1)]
    assert execs == [(comm, pid, f"/nonexistent/{comm}"), (comm, pid, str(true_copy))], execs
    failed = [(e["comm"], e["filename"], e["ret"])
              for e in emitted(line_of["on tracepoint:syscalls:sys_exit_execve"] + 1)]
    assert failed == [(comm, f"/nonexistent/{comm}", "-ENOENT")], failed
    assert bt_maps["@exec"] == {(comm,): 2} and bt_maps["@execret"] == {(-2,): 1, (0,): 1}, bt_out
    assert bt_maps["@execf"] == {(f"/nonexistent/{comm}",): 1, (str(true_copy),): 1}, bt_out

    # killsnoop: the signalled pid and the signal from the entry, the result from the exit
    kills = [(e["comm"], e["current.pid"], e["args.pid"], e["sig"], e["ret"])
             for e in emitted(line_of["on tracepoint:syscalls:sys_exit_kill"] + 1)]
    assert kills == [(comm, pid, pid, 0, 0)] * n_kill + [(comm, pid, facts["gone"], 0, "-ESRCH")] * n_gone, kills
    assert bt_maps["@killret"] == {(0,): n_kill, (-3,): n_gone}, bt_out

    # read(2): the entry's fd and count, the exit's ret; every read of the process, as bpftrace sums them
    sums = {r["key"]["count"]: r["value"] for r in by["sum(ret) by count"]["rows"]}
    assert sums == {100: DATA_SIZE, 4096: DATA_SIZE}, sums
    reads = {(r["key"]["fd"], r["key"]["count"]): r["value"] for r in by["count by fd, count"]["rows"]}
    assert reads == {(77, 100): DATA_SIZE // 100 + 2, (77, 4096): 1}, reads
    (total,) = by["sum(ret)"]["rows"]
    assert total["value"] == bt_maps["@readsum"][()] >= 2 * DATA_SIZE, (total, bt_out)  # ld.so's reads too

    # the entries: every one saved was taken at its exit, none left, none missed, none evicted or refused
    entries = [o for o in objs if "entry" in o]
    assert {(o["entry"].split(":")[-1], o["exit"].split(":")[-1]) for o in entries} == {
        ("sys_enter_bind", "sys_exit_bind"), ("sys_enter_execve", "sys_exit_execve"),
        ("sys_enter_execveat", "sys_exit_execveat"), ("sys_enter_kill", "sys_exit_kill"),
        ("sys_enter_read", "sys_exit_read")}, entries
    for o in entries:
        assert o["stored"] == o["deleted"] and (o["entries"], o["evicted"], o["failed"], o["missing"]) == \
            (0, 0, 0, 0), o
    stored = {}
    for o in entries:
        stored.setdefault(o["exit"].split(":")[-1], []).append(o["stored"])
    assert stored["sys_exit_bind"] == [4]  # the AF_UNIX bind is saved too: the family is known at the exit
    assert stored["sys_exit_execve"] == [2] and stored["sys_exit_execveat"] == [0]
    assert stored["sys_exit_kill"] == [n_kill + n_gone]
    # the clause on fd 77 saves every read of the process (the `where` is decided at the exit); the clause
    # that reads only `ret` saves nothing
    (n_reads,) = stored["sys_exit_read"]
    assert n_reads >= DATA_SIZE // 100 + 3


# -- as root: a read that began before the probes attached, and one still blocked when they stop -----------
BLOCKED = r"""
import os, sys, time
go = sys.argv[1]
open("/proc/self/comm", "w").write("hqblocked")
os.read(0, 1)  # blocked in read(2) when the probes attach: its exit finds no entry
while not os.path.exists(go):
    time.sleep(0.005)
for n in (3, 5, 7):
    os.read(0, n)
os.read(0, 1)  # blocked when hookql stops: its entry is left
"""


def _in_read(pid: int) -> bool:
    """Is the workload blocked in read(0, buf, 1) (not in one of Python's own reads as it starts)?"""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr, fd, _, count = f.read().split()[:4]
    except (OSError, ValueError):
        return False  # "running", or gone
    return (nr, int(fd, 16), int(count, 16)) == (str(READ_NR), 0, 1)


def _pending(pid: int) -> int:
    """Bytes in the workload's stdin pipe not read yet."""
    import array
    import fcntl
    import termios
    buf = array.array("i", [0])
    with open(f"/proc/{pid}/fd/0", "rb", buffering=0) as f:
        fcntl.ioctl(f.fileno(), termios.FIONREAD, buf)
    return buf[0]


def _until(cond, proc):
    """Poll cond (never an assertion on time: the test's own timeout bounds the wait)."""
    while not cond():
        assert proc.poll() is None, "the workload died"
        time.sleep(0.01)


@root
@pytest.mark.skipif(READ_NR is None, reason="read(2)'s number on this machine")
def test_a_call_that_straddles_the_attach_is_missing_and_one_at_the_stop_is_left(tmp_path):
    wl_py = tmp_path / "blocked.py"
    wl_py.write_text(BLOCKED)
    go = tmp_path / "go"
    wl = subprocess.Popen([sys.executable, str(wl_py), str(go)], stdin=subprocess.PIPE)
    hq = None
    try:
        _until(lambda: _in_read(wl.pid), wl)
        hq = subprocess.Popen(hookql_cmd() + ["run", "--format", "json", "-p", str(wl.pid), "-e",
                                              "on t:syscalls:sys_exit_read { count by fd, count; sum(ret) }"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
        hq_err = _wait_for(hq.stderr, "Attached", hq, "hookql")
        wl.stdin.write(b"x")
        wl.stdin.flush()
        go.touch()
        wl.stdin.write(b"a" * 15)  # the reads of 3, 5 and 7: 3 + 5 + 7 bytes
        wl.stdin.flush()
        # the last read(0, 1) blocks: stop hookql there
        _until(lambda: _in_read(wl.pid) and not _pending(wl.pid), wl)
        hq.send_signal(signal.SIGTERM)
        out, err = hq.communicate(timeout=60)
        wl.stdin.write(b"z")
        wl.stdin.close()
        assert wl.wait(timeout=60) == 0
    finally:
        for p in (wl, hq):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    err = "".join(hq_err) + err
    assert hq.returncode == 0, err
    objs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    by = {o["text"]: o for o in objs if "aggregation" in o}
    rows = {(r["key"]["fd"], r["key"]["count"]): r["value"] for r in by["count by fd, count"]["rows"]}
    assert rows == {(0, 3): 1, (0, 5): 1, (0, 7): 1}, rows  # not the read that began before the attach
    assert by["sum(ret)"]["rows"][0]["value"] == 15
    (e,) = [o for o in objs if "entry" in o]
    assert (e["stored"], e["deleted"], e["entries"], e["evicted"], e["failed"], e["missing"]) == (4, 3, 1, 0, 0, 1), e
    assert "1 returns of tracepoint:syscalls:sys_exit_read (line 1) found no saved entry" in err, err
    assert "were evicted" not in err, err  # one left is not one evicted

