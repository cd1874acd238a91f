"""Classic tools written in HookQL (examples/syscount.hq, pidpersec.hq, killsnoop.hq, tcpretrans.hq), each run
as root, with the command line it is meant for, against a workload this test controls: exact counts for the
workload's own events only (a unique comm or port, added to a copy of the example), never host-wide by name."""
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, bpftrace_attached, check, hookql_cmd

root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
EXAMPLES = ["syscount", "pidpersec", "killsnoop", "tcpretrans"]


def _json(out: str) -> list[dict]:
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def _comm() -> str:
    return "hq" + uuid.uuid4().hex[:10]


def _run(tmp_path, name, old, new, workload, *opts):
    """Run a copy of examples/NAME.hq with OLD replaced by NEW (once, and it must be there) under -c WORKLOAD."""
    text = (REPO / "examples" / f"{name}.hq").read_text()
    assert text.count(old) == 1, (old, text)
    script = tmp_path / f"{name}.hq"
    script.write_text(text.replace(old, new, 1))
    wl = tmp_path / "wl.py"
    wl.write_text(workload)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", *opts, str(script), "-c",
                                       f"{sys.executable} {wl}"], capture_output=True, text=True, env=env,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    return _json(r.stdout), r.stderr


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_check_clean(name, running):
    assert list(check((REPO / "examples" / f"{name}.hq").read_text(), running)) == []


# -- syscount: count by syscall id and by comm, --top 10 -------------------------------------------
SYSCOUNT_WL = r"""
import ctypes, os
ctypes.CDLL(None).prctl(15, b"{comm}", 0, 0, 0)
for _ in range({n}):
    os.getppid()
for _ in range({m}):
    os.getuid()
# a dozen other syscalls, a few times each: more rows than --top 10 keeps
for _ in range(3):
    os.getpid(); os.geteuid(); os.getgid(); os.getegid(); os.getpgrp(); os.getsid(0); os.times(); os.uname()
    os.getcwd(); os.sched_yield(); os.umask(os.umask(0o22)); os.getpriority(os.PRIO_PROCESS, 0); os.getresuid()
"""


@root
@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")
def test_syscount_counts_exactly_and_top_limits(tmp_path):
    comm, n, m = _comm(), 301, 207
    objs, _ = _run(tmp_path, "syscount", "on tracepoint:raw_syscalls:sys_enter {",
                   f'on tracepoint:raw_syscalls:sys_enter where comm == "{comm}" {{',
                   SYSCOUNT_WL.replace("{comm}", comm).replace("{n}", str(n)).replace("{m}", str(m)), "--top", "10")
    by = {o["text"]: o for o in objs if "aggregation" in o}
    ids = by["count by id"]
    counts = {row["key"]["id"]: row["value"] for row in ids["rows"]}
    assert counts[110] == n and counts[102] == m, counts  # getppid, getuid on x86_64
    assert len(ids["rows"]) == 10 and ids["omitted"] >= 3, ids  # 15+ distinct syscalls: 10 shown, the rest counted
    values = [row["value"] for row in ids["rows"]]
    assert values == sorted(values, reverse=True)
    comms = by["count by comm"]
    assert [row["key"]["comm"] for row in comms["rows"]] == [comm] and comms["omitted"] == 0
    assert comms["rows"][0]["value"] >= sum(values) + ids["omitted"]  # every syscall by id, shown or not


# -- pidpersec: forks per interval, --every --interval ---------------------------------------------
PIDPERSEC_WL = r"""
import ctypes, os, time
ctypes.CDLL(None).prctl(15, b"{comm}", 0, 0, 0)
for burst in ({a}, {b}):
    for _ in range(burst):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    time.sleep(0.8)
"""


@root
def test_pidpersec_intervals_add_up_and_show_both_bursts(tmp_path):
    comm, a, b = _comm(), 5, 7
    objs, _ = _run(tmp_path, "pidpersec", "on tracepoint:sched:sched_process_fork {",
                   f'on tracepoint:sched:sched_process_fork where parent_comm == "{comm}" {{',
                   PIDPERSEC_WL.replace("{comm}", comm).replace("{a}", str(a)).replace("{b}", str(b)),
                   "--every", "200ms", "--interval")
    counts = [o for o in objs if o.get("text") == "count"]
    assert counts and all("interval" in o for o in counts)
    assert [o["interval"] for o in counts] == list(range(1, len(counts) + 1))
    per = [sum(r["value"] for r in o["rows"]) for o in counts]
    assert sum(per) == a + b, per  # every fork in exactly one interval
    assert sum(1 for v in per if v) >= 2, per  # the bursts, 0.8 s apart, land in different intervals
    running = [sum(per[: i + 1]) for i in range(len(per))]
    assert a in running, per  # the first burst is complete before the second begins


# -- killsnoop: kill(2)'s exit, reading its entry's fields (saved per thread at sys_enter_kill) -----
KILLSNOOP_WL = r"""
import ctypes, os
ctypes.CDLL(None).prctl(15, b"{comm}", 0, 0, 0)
gone = int(open("/proc/sys/kernel/pid_max").read())  # pids are below pid_max: none has this one
for _ in range({n}):
    os.kill(os.getpid(), 0)
for _ in range({m}):
    try:
        os.kill(gone, 0)
    except ProcessLookupError:
        pass
    else:
        raise SystemExit("kill of a missing pid succeeded")
"""


@root
def test_killsnoop_pairs_entry_and_exit(tmp_path):
    comm, n, m = _comm(), 6, 4
    objs, err = _run(tmp_path, "killsnoop", "on tracepoint:syscalls:sys_exit_kill {",
                     f'on tracepoint:syscalls:sys_exit_kill where comm == "{comm}" {{',
                     KILLSNOOP_WL.replace("{comm}", comm).replace("{n}", str(n)).replace("{m}", str(m)))
    events = [o["event"] for o in objs if "event" in o]
    assert len(events) == n + m, events
    assert {e["comm"] for e in events} == {comm}
    (me,) = {e["current.pid"] for e in events}
    gone = int(open("/proc/sys/kernel/pid_max").read())
    own = [e for e in events if e["args.pid"] == me]
    missing = [e for e in events if e["args.pid"] == gone]
    assert len(own) == n and len(missing) == m
    assert all(e["sig"] == 0 for e in events)
    assert {e["ret"] for e in own} == {0} and {e["ret"] for e in missing} == {"-ESRCH"}  # a syscall's -errno prints by name
    (st,) = [o for o in objs if "entry" in o]  # every kill host-wide is saved at entry: none left, none missed
    assert (st["entry"], st["exit"], st["stored"], st["deleted"], st["entries"], st["evicted"], st["failed"],
            st["missing"]) == ("tracepoint:syscalls:sys_enter_kill", "tracepoint:syscalls:sys_exit_kill",
                               st["deleted"], st["stored"], 0, 0, 0, 0), st
    assert st["stored"] >= n + m, st


# -- tcpretrans: SYN retransmissions in a private network namespace, next to bpftrace 0.17 ---------------
# `unshare -n`: a network namespace of this workload's own (lo only), so nothing host-wide changes.  A
# listener whose accept queue is full (listen(0), one connection never accepted) drops every SYN: the
# clients' SYNs are retransmitted until TCP_SYNCNT (a socket option) gives up.  How many retransmissions
# that is depends on the kernel's SYN timeouts, so the count is compared with bpftrace's, not predicted.
TCPRETRANS_WL = r"""
import socket, sys, threading
port, sport4, sport6 = (int(a) for a in sys.argv[1:4])
full = []
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    l = socket.socket(fam, socket.SOCK_STREAM)
    l.bind((host, port))
    l.listen(0)
    full.append((l, socket.create_connection((host, port))))  # never accepted: the queue is full
def connect(fam, host, sport, syncnt):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syncnt)
    s.bind((host, sport))
    try:
        s.connect((host, port))
    except TimeoutError:
        pass
    else:
        raise SystemExit("a SYN to a full accept queue was answered")
ts = [threading.Thread(target=connect, args=a) for a in ((socket.AF_INET, "127.0.0.1", sport4, 2),
                                                          (socket.AF_INET6, "::1", sport6, 1))]
[t.start() for t in ts]
[t.join() for t in ts]
for l, c in full:
    l.close()
    c.close()
"""


@root
@pytest.mark.skipif(not shutil.which("bpftrace") or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="bpftrace is the oracle; unshare and ip make the private network namespace")
def test_tcpretrans_counts_retransmissions_as_bpftrace_does(tmp_path):
    port, sport4, sport6 = random.sample(range(20000, 60000), 3)
    text = (REPO / "examples" / "tcpretrans.hq").read_text()
    old = "on tracepoint:tcp:tcp_retransmit_skb {"
    assert text.count(old) == 1
    script = tmp_path / "tcpretrans.hq"
    # this workload's connections only: its port (host-wide retransmissions go on as they will)
    script.write_text(text.replace(old, f"on tracepoint:tcp:tcp_retransmit_skb where dport == {port} {{"))
    wl = tmp_path / "wl.py"
    wl.write_text(TCPRETRANS_WL)
    inner = f"ip link set lo up && exec {sys.executable} {wl} {port} {sport4} {sport6}"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    bt = bpftrace_attached(f"tracepoint:tcp:tcp_retransmit_skb /args->dport == {port}/ "
                           "{ @[args->family, args->sport, args->state] = count(); }")
    try:
        r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(script), "-c",
                                           f"unshare -n sh -c '{inner}'"],
                           capture_output=True, text=True, env=env, timeout=180)
    finally:
        bt.send_signal(signal.SIGINT)
        bt_out, _ = bt.communicate(timeout=180)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "a SYN to a full accept queue" not in r.stderr, r.stderr
    objs = _json(r.stdout)
    events = [o["event"] for o in objs if "event" in o]
    sent = {(sport4, "127.0.0.1", "127.0.0.1"), (sport6, "::1", "::1")}
    assert {(e["sport"], e["saddr_v6"], e["daddr_v6"]) for e in events} == sent, events
    assert {(e["dport"], e["state"]) for e in events} == {(port, "TCP_SYN_SENT")}
    assert all("walltime" in e for e in events)
    ours = {s: sum(1 for e in events if e["sport"] == s) for s in (sport4, sport6)}
    assert ours[sport4] >= 2 and ours[sport6] >= 1, ours  # at least TCP_SYNCNT each
    (agg,) = [o for o in objs if o.get("text") == "count by daddr_v6, dport"]
    assert {(row["key"]["daddr_v6"], row["key"]["dport"]): row["value"] for row in agg["rows"]} == \
        {("127.0.0.1", port): ours[sport4], ("::1", port): ours[sport6]}
    # bpftrace: "@[FAMILY, SPORT, STATE]: N" (AF_INET 2, AF_INET6 10; TCP_SYN_SENT 2)
    theirs = {(int(m[1]), int(m[2]), int(m[3])): int(m[4])
              for m in re.finditer(r"^@\[(\d+), (\d+), (\d+)\]: (\d+)$", bt_out, re.M)}
    assert theirs == {(2, sport4, 2): ours[sport4], (10, sport6, 2): ours[sport6]}, bt_out
