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

from conftest import EXAMPLES, held_programs, hookql_cmd

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


def test_many_probes_detach_leaves_nothing_of_ours_attached(tracefs):
    # issue 16: the links go from many threads at once and the tracepoints' perf events are left to a process
    # of their own that closes them as it exits (the kernel's slow part); no program of the run may outlive it
    import resource

    n = len(list((tracefs / "events/syscalls").glob("sys_enter_*")))
    if not 20 <= n <= 512 or resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * n + 256:
        pytest.skip(f"{n} sys_enter tracepoints; the hard limit of open files")
    c = comm()
    p, ids = start_attached("-e", f'on tracepoint:syscalls:sys_enter_* where comm == "{c}" {{ count by probe }}',
                            stdout=subprocess.DEVNULL)
    assert len(ids) == n and held_programs(p.pid) == set(ids)  # the run's own programs, by the ids it holds
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout or "[]")
    assert not [l for l in links if l.get("prog_id") in ids]  # none is on a link any more
    assert still_loaded(ids) == []  # nor loaded: nobody holds them, not the process left with the events either
    assert [pid for pid in os.listdir("/proc") if pid.isdigit() and _held(int(pid)) & set(ids)] == []


def test_detach_takes_every_program_off_before_it_returns(running, tracefs, tmp_path, monkeypatch):
    # BpfObject.detach(wait=False), as `run` ends: once it returns no program of ours is on a link, nor runs,
    # though the object (programs, maps) is still open and the perf events close in a process of their own
    from hookql.pipeline import check_source, compile_checked
    from hookql.runtime import features
    from hookql.runtime.decode import MapReader
    from hookql.runtime.loader import BpfObject
    from hookql.source import Source

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = f"on tracepoint:syscalls:sys_enter_* where current.pid == {os.getpid()} {{ count }}"
    front = check_source(Source("t.hq", text), running)
    assert front.ok, [d.render() for d in front.diagnostics.errors]
    compiled = compile_checked(front.checked, features.func_mode())
    (agg,) = compiled.layout["aggregations"]

    def linked() -> set[int]:
        links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                          check=True).stdout or "[]")
        return {l.get("prog_id") for l in links}

    with BpfObject(compiled.object, compiled.layout) as obj:
        obj.configure()
        obj.load()
        ids = {a.prog_id for a in obj.attach_all()}
        assert len(ids) == len(compiled.layout["probes"]) >= 20 and ids <= linked()
        count = lambda: MapReader().rows(obj.map_fd(agg["map"]), agg)[0].value  # noqa: E731
        os.getppid()
        assert count() >= 1
        obj.detach(wait=False)
        assert not ids & linked() and obj.links == []
        before = count()
        for _ in range(5):
            os.getppid()
        assert count() == before  # nothing of ours ran
        assert held_programs(os.getpid()) >= ids  # the programs themselves are ours until close()
    assert not held_programs(os.getpid()) & ids


def _held(pid: int) -> set[int]:
    try:
        return held_programs(pid)
    except OSError:  # gone meanwhile, or not ours to read
        return set()


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


# -- the cold path: clang started before the front end (codegen/build.py EarlyClang) ------------------------
def _fake_clang(tmp_path, body: str) -> Path:
    """A clang of the test's own, in a directory of root's that only root writes (build.py's checks)."""
    d = tmp_path / "bin"
    d.mkdir(mode=0o755)
    fake = d / "clang"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    return fake


def test_cold_run_with_errors_or_a_cached_object_leaves_no_clang_and_no_temporary_directory(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    tmp = tmp_path / "cache" / "hookql" / "tmp"
    bad = subprocess.run(hookql_cmd() + ["run", "-e", f"on {TP} {{ count by nope }}"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "unknown field 'nope'" in bad.stderr
    good = f"on {TP} {{ count }}"
    first = subprocess.run(hookql_cmd() + ["run", "-v", "-d", "0", "-e", good], capture_output=True, text=True,
                           env=env, timeout=120)
    for p in (tmp_path / "cache" / "hookql" / "run").iterdir():
        p.unlink()  # the run cache forgets it; the object stays: the clang started early is not used
    again = subprocess.run(hookql_cmd() + ["run", "-v", "-d", "0", "-e", good], capture_output=True, text=True,
                           env=env, timeout=120)
    assert first.returncode == again.returncode == 0
    assert "(built)" in first.stderr and "(cached)" in again.stderr
    assert list(tmp.iterdir()) == []  # every clang's private directory removed, used or not


@pytest.mark.parametrize("when", ["at_start", "after_reading_the_c"])
def test_clang_stopped_by_the_ctrl_c_that_stops_a_cold_run_is_not_reported(tmp_path, when):
    """Ctrl-C goes to the whole process group: the clang a cold run started early dies of it (while the front
    end runs, or while it compiles); the run then ends with 130 and says nothing of clang (this clang sends
    the Ctrl-C itself)."""
    fake = _fake_clang(tmp_path, ("cat >/dev/null\n" if when == "after_reading_the_c" else "") +
                       "kill -INT 0\nsleep 5\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HOOKQL_CLANG=str(fake))
    p = subprocess.Popen(hookql_cmd() + ["run", "-e", f"on {TP} {{ count }}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err == "" and out == ""
    assert list((tmp_path / "cache" / "hookql" / "tmp").iterdir()) == []


def test_what_clang_says_still_reaches_the_user(tmp_path):
    fake = _fake_clang(tmp_path, 'cat >/dev/null\necho "error: the fake clang refuses" >&2\nexit 1\n')
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HOOKQL_CLANG=str(fake))
    r = subprocess.run(hookql_cmd() + ["run", "-e", f"on {TP} {{ count }}"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1
    assert "clang could not build the generated program" in r.stderr and "the fake clang refuses" in r.stderr
    assert "Traceback" not in r.stderr
