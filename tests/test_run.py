"""End to end on this machine's kernel: compile, load, attach, fire real
tracepoints, read the maps back and check the numbers."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import EXAMPLES, hookql_cmd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

WORKLOAD = Path(__file__).with_name("workload.py")
TP = "tracepoint:syscalls:sys_enter_getsockopt"


def comm() -> str:
    return "hq" + uuid.uuid4().hex[:10]  # at most 15 bytes: a comm nothing else has


def wl(name: str, n_type: int, n_rcvbuf: int = 0, pause: float = 0) -> str:
    return f"{sys.executable} {WORKLOAD} {name} {n_type} {n_rcvbuf} {pause}"


def hookql(*args, timeout=60):
    return subprocess.run(hookql_cmd() + list(args), capture_output=True, text=True, timeout=timeout)


def run_json(script: str, *args):
    r = hookql("run", "--format", "json", "-e", script, *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")], r.stderr


def by_text(objs):
    return {o["text"]: o for o in objs if "aggregation" in o}


# Our programs are the ids our hookql process printed (`run -v`), never every program named hq_probe*
# on the host: another BPF user of the machine (another test run, another tool) is not ours to count.
def program_ids(stderr: str) -> list[int]:
    """The ids `hookql run -v` printed for the programs it attached."""
    return [int(i) for i in re.findall(r"\(program id (\d+)\)", stderr)]


def still_loaded(ids, wait: float = 10) -> list[int]:
    """Those of ids the kernel still has (`bpftool prog show id N` finds it), after waiting up to `wait`
    seconds for it to free them (a program goes when its last fd and link do, after an RCU grace period)."""
    deadline = time.monotonic() + wait
    while True:
        left = [i for i in ids if subprocess.run(["bpftool", "prog", "show", "id", str(i)],
                                                 capture_output=True).returncode == 0]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def start_attached(*args, stdout=subprocess.PIPE):
    """`hookql run -v ARGS` started and read until every probe attached: (process, its program ids)."""
    p = subprocess.Popen(hookql_cmd() + ["run", "-v", *args], stdout=stdout, stderr=subprocess.PIPE, text=True)
    head, ids, want = [], [], None
    while want is None or len(ids) < want:
        line = p.stderr.readline()
        if not line:
            p.kill()
            raise AssertionError("hookql ended before attaching:\n" + "".join(head) + p.stderr.read())
        head.append(line)
        if line.startswith("Attached "):
            want = int(line.split()[1])
        ids += program_ids(line)
    assert ids, "".join(head)
    return p, ids


def test_every_aggregation_reads_back_exact_numbers():
    c = comm()
    script = (f'on {TP} where comm == "{c}" {{ count by comm; sum(optname) by comm; avg(optname); '
              f'min(optname); max(optname); hist(optname); lhist(optname, 0, 10, 5) }}')
    objs, err = run_json(script, "-c", wl(c, 7, 5))
    assert "Attached 1 probe" in err
    aggs = by_text(objs)
    assert aggs["count by comm"]["rows"] == [{"key": {"comm": c}, "value": 12}]
    assert aggs["sum(optname) by comm"]["rows"] == [{"key": {"comm": c}, "value": 7 * 3 + 5 * 8}]
    assert aggs["avg(optname)"]["rows"][0]["value"] == (7 * 3 + 5 * 8) // 12
    assert aggs["min(optname)"]["rows"][0]["value"] == 3
    assert aggs["max(optname)"]["rows"][0]["value"] == 8
    assert aggs["hist(optname)"]["rows"][0]["value"] == [{"min": 2, "max": 4, "count": 7},
                                                        {"min": 8, "max": 16, "count": 5}]
    assert aggs["lhist(optname, 0, 10, 5)"]["rows"][0]["value"] == [{"min": 0, "max": 5, "count": 7},
                                                                   {"min": 5, "max": 10, "count": 5}]


def test_count_by_several_keys_and_a_filter():
    c = comm()
    objs, _ = run_json(f'on {TP} where comm == "{c}" and optname == SO_RCVBUF {{ count by comm, optname, level }}',
                       "-c", wl(c, 4, 6))
    (agg,) = objs
    assert agg["by"] == ["comm", "optname", "level"]
    assert agg["rows"] == [{"key": {"comm": c, "optname": 8, "level": 1}, "value": 6}]


def test_emit_streams_one_event_per_call():
    c = comm()
    objs, _ = run_json(f'on {TP} where comm == "{c}" {{ emit comm, optname, pid }}', "-c", wl(c, 2, 3))
    events = [o["event"] for o in objs if "event" in o]
    assert [e["optname"] for e in events] == [3, 3, 8, 8, 8]
    assert {e["comm"] for e in events} == {c} and len({e["pid"] for e in events}) == 1


def test_text_output_tables_and_histogram():
    c = comm()
    r = hookql("run", "-e", f'on {TP} where comm == "{c}" {{ count by comm; hist(optname) }}', "-c", wl(c, 3, 1))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"{TP}: count by comm" in out
    assert "COMM" in out and "COUNT" in out
    row = next(l for l in out.splitlines() if l.strip().startswith(c))
    assert row.split() == [c, "4"]
    assert any(l.strip().startswith("[2, 4)") and l.split()[2] == "3" and "|@@@" in l for l in out.splitlines())
    assert any(l.strip().startswith("[8, 16)") and l.split()[2] == "1" for l in out.splitlines())


def test_every_prints_while_running():
    c = comm()
    objs, _ = run_json(f'on {TP} where comm == "{c}" {{ count }}', "--every", "500ms", "-c", wl(c, 3, 2, 1.6))
    counts = [o["rows"][0]["value"] if o["rows"] else 0 for o in objs]
    assert len(counts) >= 3, counts  # at least two interval prints and the final one
    assert counts[-1] == 5 and 3 in counts  # the first interval saw only the calls before the pause


def test_duration_stops_and_nothing_stays_attached():
    start = time.monotonic()
    r = hookql("run", "-v", "-d", "700ms", "-e", f"on {TP} {{ count }}")
    assert r.returncode == 0 and "Attached 1 probe" in r.stderr
    assert 0.7 <= time.monotonic() - start < 20
    ids = program_ids(r.stderr)
    assert len(ids) == 1, r.stderr
    assert still_loaded(ids) == []


def test_sigterm_stops_prints_and_releases():
    p, ids = start_attached("-e", f"on {TP} {{ count }}")
    assert still_loaded(ids, wait=0) == ids, "the probe never attached"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"{TP}: count" in out
    assert still_loaded(ids) == []


def test_sigkill_leaves_nothing_attached():
    p, ids = start_attached("-e", f"on {TP} {{ count }}", stdout=subprocess.DEVNULL)
    assert still_loaded(ids, wait=0) == ids
    p.kill()
    p.wait()
    p.stderr.close()
    assert still_loaded(ids) == []  # the kernel frees the programs when the last fd closes


def test_pid_filter():
    c = comm()
    other = subprocess.Popen(wl(c, 0, 3, 2.5).split())
    try:
        time.sleep(0.3)
        objs, _ = run_json(f"on {TP} {{ count by comm }}", "-p", str(other.pid), "-d", "10s")
    finally:
        other.wait()
    (agg,) = objs
    assert agg["rows"] == [{"key": {"comm": c}, "value": 3}]  # stopped when the process exited


def test_full_maps_are_counted_and_reported():
    names = [comm() for _ in range(4)]
    cmd = " && ".join(wl(n, 2) for n in names)
    r = hookql("run", "--format", "json", "--map-size", "2", "-e",
               f'on {TP} where comm == "{names[0]}" or comm == "{names[1]}" or comm == "{names[2]}" '
               f'or comm == "{names[3]}" {{ count by comm }}', "-c", f"sh -c '{cmd}'")
    assert r.returncode == 0, r.stderr
    (agg,) = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(agg["rows"]) == 2
    assert "hookql: warning: 4 events not counted in `count by comm` (line 1): its map is full" in r.stderr


def test_compile_emit_c_and_cache(tmp_path):
    script = tmp_path / "s.hq"
    script.write_text(f"on {TP} where level == 1 {{\n  count by comm\n}}\n")
    r = hookql("compile", str(script), "--emit-c")
    assert r.returncode == 0
    c = r.stdout
    assert 'SEC("tp/syscalls/sys_enter_getsockopt")' in c and "BPF_MAP_TYPE_PERCPU_HASH" in c
    assert f'#line 2 "{script}"' in c  # clang and verifier messages point into the script
    assert "vmlinux.h" not in c.replace("__VMLINUX_H__", "")
    out = tmp_path / "s.bpf.o"
    r1 = hookql("compile", str(script), "-o", str(out))
    r2 = hookql("compile", str(script), "-o", str(out))
    assert r1.returncode == r2.returncode == 0
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert "cached" in r2.stderr


def test_run_reports_check_errors_before_loading():
    r = hookql("run", "-v", "-e", f"on {TP} {{ count by nope }}")
    assert r.returncode == 1
    assert r.stderr.startswith("<-e>:1:") and "nothing was loaded" in r.stderr
    assert "Attached" not in r.stderr and program_ids(r.stderr) == []


def test_command_that_cannot_start():
    r = hookql("run", "-v", "-e", f"on {TP} {{ count }}", "-c", "/nonexistent/cmd")
    assert r.returncode == 1 and "cannot run -c" in r.stderr and "Traceback" not in r.stderr
    ids = program_ids(r.stderr)
    assert len(ids) == 1, r.stderr  # attached first, then the command could not start
    assert still_loaded(ids) == []


def test_ring_buffer_drops_are_counted_and_reported():
    # A stalled reader, made certain with SIGSTOP: the C printer is fast enough to keep up with a
    # tight loop on some machines, so a race between them would not always drop.
    c = comm()
    n = 20000
    p = subprocess.Popen(hookql_cmd() + ["run", "--ringbuf-size", "4096", "-e",
                                         f'on {TP} where comm == "{c}" {{ emit comm, optname }}'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Attached 1 probe" in p.stderr.readline()
        p.send_signal(signal.SIGSTOP)
        subprocess.run(wl(c, n).split(), check=True)
        p.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0, err
    delivered = sum(1 for l in out.splitlines() if l.startswith(f"comm={c} "))
    lost = next(int(l.split()[2]) for l in err.splitlines() if "emitted events lost" in l)
    assert lost > 0 and delivered + lost == n  # every event is either printed or counted as lost


def test_second_run_skips_the_front_end_and_replays_warnings(tmp_path):
    import os as _os
    env = dict(_os.environ, XDG_CACHE_HOME=str(tmp_path))
    script = f'on {TP} where comm == "a-name-longer-than-15" {{ count }}'  # a warning: never matches
    runs = [subprocess.run(hookql_cmd() + ["run", "-v", "-d", "0", "-e", script], capture_output=True, text=True,
                           env=env, timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0]
    assert "(built)" in runs[0].stderr and "(cached run)" in runs[1].stderr
    for r in runs:
        assert "warning: comm holds at most 15 bytes" in r.stderr
