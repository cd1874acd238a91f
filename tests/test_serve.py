"""`hookql serve`, natively (tracepoints): reload (SIGHUP) with no gap and no double count, the series cap,
churn (drained maps never fill, totals stay exact, RSS bounded), bad input (paths, scripts, ports, root,
HTTP), `emit` as JSON lines, and `hookql check --serve`'s warning about unbounded keys (pure front end).

A serve process is identified by its pid; its BPF programs by the ids it holds in /proc/PID/fdinfo,
never by name host-wide.  The workloads call getsid(2) under a comm of their own, and the scripts count
only that comm, so nothing else on the host is counted."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, held_programs, hookql_cmd

ROOT = os.geteuid() == 0
CHURN_SECONDS = float(os.environ.get("HOOKQL_CHURN_SECONDS", "60"))

# comms of this run's workloads (another run's, or another test's, are never counted)
COMM = f"hq{os.getpid() % 1000000}"
native = pytest.mark.skipif(not ROOT, reason="serving needs root (tracepoints, natively)")

# A workload: sets its comm, calls getsid(2) until STOPFILE exists, then prints how many calls it made.
# mode "loop": getsid(0) as fast as it goes; "values N": getsid(1..N) in turns; "churn": getsid(v) with v
# increasing forever, CALLS calls per value, at most PER_SEC new values a second (so a drain interval's new
# keys stay far below --map-size).
WORKLOAD = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)
mode, stop = sys.argv[2], sys.argv[3]
getsid = libc.getsid
n = 0
open(stop + ".started", "w").close()
if mode == "loop":
    while not os.path.exists(stop):
        for _ in range(200):
            getsid(0)
        n += 200
elif mode == "values":
    values = int(sys.argv[4])
    rounds = int(sys.argv[5])
    for r in range(rounds):
        for v in range(1, values + 1):
            getsid(v)
            n += 1
elif mode == "churn":
    calls, per_sec = int(sys.argv[4]), int(sys.argv[5])
    v, t0 = 1_000_000, time.monotonic()
    while not os.path.exists(stop):
        for _ in range(per_sec // 10):
            for _ in range(calls):
                getsid(v)
            n += calls
            v += 1
        t0 += 0.1
        time.sleep(max(0.0, t0 - time.monotonic()))
print(n, flush=True)
'''


def wait_for(pred, what: str, timeout: float = 120):
    """Poll until pred() is true (a guard against hanging, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


class Serve:
    """One `hookql serve` process on a free port; its log (stderr) and emit lines (stdout) in files."""

    def __init__(self, tmp: Path, *args: str, user: list[str] | None = None, port: int | None = None,
                 wait: bool = True):
        self.tmp = tmp
        self.port = port or free_port()
        self.err_path, self.out_path = tmp / "serve.err", tmp / "serve.out"
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"), PYTHONUNBUFFERED="1")
        cmd = [*(user or []), *hookql_cmd(), "serve", "--listen", f"127.0.0.1:{self.port}", *args]
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tmp)
        if wait:
            wait_for(lambda: "serving " in self.log() or self.proc.poll() is not None, "serve to start")
            assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def samples(self) -> list[tuple[str, dict, float]]:
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.get("/metrics")
        assert status == 200, body
        return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(body.decode())
                for s in fam.samples]

    def families(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        return {f.name: f for f in text_string_to_metric_families(self.get("/metrics")[1].decode())}

    def held(self) -> set[int]:
        return held_programs(self.proc.pid)

    def hup(self, expect: str = "reloaded:") -> None:
        """SIGHUP, then wait for its outcome in the log: 'reloaded:' or 'reload failed'."""
        before = self.log().count("reloading (SIGHUP)")
        n_ok, n_err = self.log().count("reloaded:"), self.log().count("reload failed")
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.log().count("reloaded:") + self.log().count("reload failed") > n_ok + n_err,
                 "the reload's outcome")
        assert self.log().count("reloading (SIGHUP)") == before + 1
        assert self.log().count(expect) == (n_ok if expect == "reloaded:" else n_err) + 1, self.log()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def serves():
    started = []
    yield started
    for s in started:
        if isinstance(s, Workload):
            s.kill()
        else:
            s.stop()


def serve(serves, tmp: Path, *args, **kw) -> Serve:
    s = Serve(tmp, *args, **kw)
    serves.append(s)
    return s


class Workload:
    def __init__(self, tmp: Path, comm: str, *args):
        self.stop_file = tmp / f"stop-{comm}"
        script = tmp / "workload.py"
        script.write_text(WORKLOAD)
        self.proc = subprocess.Popen([sys.executable, str(script), comm, args[0], str(self.stop_file),
                                      *map(str, args[1:])], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: Path(str(self.stop_file) + ".started").exists() or self.proc.poll() is not None,
                 "the workload to start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def finish(self) -> int:
        """Stop it; the number of getsid calls it made."""
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0
        return int(out)


def workload(serves, tmp: Path, comm: str, *args) -> Workload:
    w = Workload(tmp, comm, *args)
    serves.append(w)
    return w


def value(samples, name: str, **labels) -> float:
    got = [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
    assert len(got) == 1, (name, labels, [s for s in samples if s[0] == name])
    return got[0]


def total(samples, name: str) -> float:
    return sum(v for n, _, v in samples if n == name)


def counts(samples, name: str) -> dict:
    return {tuple(sorted(l.items())): v for n, l, v in samples if n == name}


def reload_script(where: str, alias: str = "sid_a") -> str:
    return f'on tracepoint:syscalls:sys_enter_getsid where {where} {{ count by comm as {alias} }}\n'


# -- 1. reload -----------------------------------------------------------------------------------------
def reload_through(tmp_path, serves) -> tuple[str, int, list, Serve]:
    """A loop of getsid runs through five reloads that swap a.hq (its `where` changes, every variant still
    matching every call) while b.hq stays.  Checked on the way: b's program is never replaced, a's is
    replaced each time and the old one is no longer held, and no counter goes down.  (comm, the calls
    made, the samples scraped after the workload stopped, the service)."""
    d = tmp_path / "scripts"
    d.mkdir()
    c = COMM + "r"
    wheres = [f'comm == "{c}"', f'comm == "{c}" and args.pid == 0', f'args.pid >= 0 and comm == "{c}"',
              f'comm == "{c}" and cpu >= 0', f'not (comm != "{c}")', f'comm == "{c}" and uid >= 0']
    (d / "a.hq").write_text(reload_script(wheres[0]))
    (d / "b.hq").write_text(reload_script(f'comm == "{c}"', "sid_b"))
    s = serve(serves, tmp_path, "--drain-interval", "100ms", str(d))
    assert len(s.held()) == 2, s.held()  # one program each (their links hold the same ids)
    w = workload(serves, tmp_path, c, "loop")
    last = {"hookql_sid_a_total": 0.0, "hookql_sid_b_total": 0.0}
    b_prog = None
    for where in wheres[1:]:
        before = s.held()
        (d / "a.hq").write_text(reload_script(where))
        s.hup()
        after = s.held()
        assert len(after) == 2 and len(before & after) == 1, (before, after)  # a's program replaced, b's kept
        b_prog = b_prog or before & after
        assert before & after == b_prog
        now = s.samples()
        for name in last:  # counters continue: nothing reset by the reload
            v = value(now, name, comm=c)
            assert v >= last[name] and v > 0, (name, v, last[name])
            last[name] = v
    assert s.log().count("reloaded: 1 script new or changed, 1 replaced or removed, 1 unchanged") == 5
    calls = w.finish()
    got = s.samples()
    assert value(got, "hookql_reloads_total", result="ok") == len(wheres) - 1
    assert value(got, "hookql_reloads_total", result="error") == 0
    return c, calls, got, s


@native
def test_reload_keeps_unchanged_swaps_changed_with_no_gap(tmp_path, serves):
    c, calls, got, s = reload_through(tmp_path, serves)
    assert value(got, "hookql_sid_b_total", comm=c) == calls  # unchanged: every call, once
    assert value(got, "hookql_sid_a_total", comm=c) >= calls  # swapped: no call missed (no gap)
    b = value(got, "hookql_sid_b_total", comm=c)
    time.sleep(0.3)  # drains in between change nothing
    assert value(s.samples(), "hookql_sid_b_total", comm=c) == b
    assert s.stop() == 0
    assert "Traceback" not in s.log()


@native
def test_reload_counts_each_call_once(tmp_path, serves):
    """The new version attaches inert, one write to hq_epoch makes it live and the old one inert, then the old
    one detaches: each call is counted by one of them, but for a call whose two programs ran on either side of
    that write (the old one first, reading the old epoch, the new one after, reading the new): at most one a
    CPU a reload.  Before the handover every call of the overlap counted twice (48 to 169 extra here)."""
    c, calls, got, s = reload_through(tmp_path, serves)
    reloads = 5
    assert calls <= value(got, "hookql_sid_a_total", comm=c) <= calls + reloads * os.cpu_count()


@native
def test_reload_errors_keep_the_running_set_and_files_come_and_go(tmp_path, serves):
    d = tmp_path / "scripts"
    d.mkdir()
    c = COMM + "e"
    good = reload_script(f'comm == "{c}"')
    (d / "a.hq").write_text(good)
    (d / "b.hq").write_text(reload_script(f'comm == "{c}"', "sid_b"))
    s = serve(serves, tmp_path, "--drain-interval", "200ms", str(d))
    held = s.held()
    assert len(held) == 2
    w = workload(serves, tmp_path, c, "loop")

    def grows(name="hookql_sid_a_total"):  # the running programs still count
        v = value(s.samples(), name, comm=c)
        wait_for(lambda: value(s.samples(), name, comm=c) > v, f"{name} to grow")

    errors = 0
    # a script that fails to check: the error at file:line:col, logged and counted; nothing swapped
    (d / "a.hq").write_text(f'on tracepoint:syscalls:sys_enter_getsid where comm == "{c}" {{ count by comm as }}\n')
    s.hup("reload failed")
    errors += 1
    assert f"{d / 'a.hq'}:1:" in s.log() and "the running scripts stay as they were" in s.log(), s.log()
    assert s.held() == held
    grows()
    # a file that cannot be read (not UTF-8; root reads any mode)
    (d / "a.hq").write_bytes(b"on \xff\xfe\n")
    s.hup("reload failed")
    errors += 1
    assert f"  {d / 'a.hq'}: error: cannot read: 'utf-8' codec" in s.log(), s.log()  # in the log, indented
    assert s.held() == held
    grows()
    # the served directory gone
    (d / "a.hq").write_text(good)
    d.rename(tmp_path / "away")
    s.hup("reload failed")
    errors += 1
    assert f"{d}: no such script or directory" in s.log(), s.log()
    assert s.held() == held
    grows("hookql_sid_b_total")
    (tmp_path / "away").rename(d)
    got = s.samples()
    assert value(got, "hookql_reloads_total", result="error") == errors
    assert value(got, "hookql_reloads_total", result="ok") == 0
    # back as it was: nothing new
    s.hup()
    assert "reloaded: 0 scripts new or changed, 0 replaced or removed, 2 unchanged" in s.log()
    assert s.held() == held
    # a new file is served
    (d / "c.hq").write_text(reload_script(f'comm == "{c}"', "sid_c"))
    s.hup()
    with_c = s.held()
    assert held < with_c and len(with_c) == 3
    grows("hookql_sid_c_total")
    # a removed file stops: its program no longer held, its metric gone
    b_before = value(s.samples(), "hookql_sid_b_total", comm=c)
    (d / "b.hq").unlink()
    s.hup()
    now = s.held()
    assert len(now) == 2 and now < with_c
    assert "hookql_sid_b_total" not in {n for n, _, _ in s.samples()}
    # what it had counted was drained before it went: the calls so far are all in a and in c's since its start
    assert b_before > 0
    calls = w.finish()
    got = s.samples()
    assert value(got, "hookql_sid_a_total", comm=c) == calls  # a was never replaced: exact
    assert 0 < value(got, "hookql_sid_c_total", comm=c) < calls
    assert value(got, "hookql_reloads_total", result="error") == errors
    assert value(got, "hookql_reloads_total", result="ok") == 3
    assert s.stop() == 0
    assert "Traceback" not in s.log()


# -- 2. the series cap ---------------------------------------------------------------------------------
def pid_script(comm: str, alias: str) -> str:
    return f'on tracepoint:syscalls:sys_enter_getsid where comm == "{comm}" {{ count by args.pid as {alias} }}\n'


@native
def test_series_cap_folds_into_overflow_sum_exact_monotonic(tmp_path, serves):
    c = COMM + "c"
    (tmp_path / "p.hq").write_text(pid_script(c, "sid_pids"))
    s = serve(serves, tmp_path, "--series-cap", "5", "--drain-interval", "200ms", str(tmp_path / "p.hq"))
    name = "hookql_sid_pids_total"
    rounds, seen = 50, {}
    for run in (1, 2, 3):
        w = workload(serves, tmp_path, c, "values", 20, rounds)
        assert w.finish() == 20 * rounds
        for _ in range(3):  # scrapes between drains, and after them: no series ever goes down
            got = s.samples()
            now = counts(got, name)
            for k, v in seen.items():
                assert now.get(k, 0) >= v, (k, v, now.get(k))
            seen = now
            time.sleep(0.25)
        got = s.samples()
        series = counts(got, name)
        overflow = (("args_pid", "__overflow__"),)
        assert len(series) == 6 and overflow in series, series  # 5 label sets, and the overflow
        assert sum(series.values()) == 20 * rounds * run  # the true total
        assert all(v == rounds * run for k, v in series.items() if k != overflow)  # admitted at first sight
        assert series[overflow] == 15 * rounds * run
        assert value(got, "hookql_series_overflow_total", metric="hookql_sid_pids") == 15  # distinct, folded
        assert value(got, "hookql_series", metric="hookql_sid_pids") == 6
    fams = s.families()
    assert "one overflow series" in fams["hookql_series"].documentation
    assert s.stop() == 0


# -- 3. churn ------------------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@native
def test_churn_series_at_cap_totals_exact_maps_never_fill(tmp_path, serves):
    """HOOKQL_CHURN_SECONDS (default 60) of getsid(v), v new 200 times a second (5 calls each), under
    --series-cap 50 and --map-size 256, drained every 500 ms (about 100 new keys an interval)."""
    c = COMM + "h"
    (tmp_path / "churn.hq").write_text(pid_script(c, "sid_churn"))
    s = serve(serves, tmp_path, "--series-cap", "50", "--map-size", "256", "--drain-interval", "500ms",
              str(tmp_path / "churn.hq"))
    name, overflow = "hookql_sid_churn_total", (("args_pid", "__overflow__"),)
    w = workload(serves, tmp_path, c, "churn", 5, 200)
    rss = [rss_mib(s.proc.pid)]
    seen: dict = {}
    end = time.monotonic() + CHURN_SECONDS
    while time.monotonic() < end:
        time.sleep(1)
        got = s.samples()
        now = counts(got, name)
        for k, v in seen.items():
            assert now.get(k, 0) >= v, (k, v, now.get(k))  # every series only grows
        seen = now
        if len(now) > 50:
            assert len(now) == 51 and overflow in now
            assert value(got, "hookql_series", metric="hookql_sid_churn") == 51
        full = [v for n, l, v in got if n == "hookql_kernel_events_total" and l["counter"].endswith("_full")]
        assert full and not any(full), full  # the drained maps never filled
        rss.append(rss_mib(s.proc.pid))
    calls = w.finish()
    got = s.samples()
    series = counts(got, name)
    assert len(series) == 51 and overflow in series
    assert sum(series.values()) == calls  # nothing lost, nothing counted twice
    folded = value(got, "hookql_series_overflow_total", metric="hookql_sid_churn")
    assert folded == calls // 5 - 50  # every key past the first 50, once
    assert value(got, "hookql_drains_total") >= 1
    print(f"churn: {CHURN_SECONDS:.0f}s, {calls} calls, {calls // 5} keys; serve RSS {rss[0]:.1f} MiB at start, "
          f"{max(rss):.1f} MiB at most, {rss[-1]:.1f} MiB at the end")
    assert max(rss) < 200
    assert s.stop() == 0


# -- 4. bad input, HTTP, emit --------------------------------------------------------------------------
def serve_fails(tmp: Path, *args, user=None) -> str:
    """Run serve expecting it to stop at start: exit 1, never serving; its stderr."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"))
    p = subprocess.run([*(user or []), *hookql_cmd(), "serve", *args], capture_output=True, text=True, env=env,
                       timeout=300, cwd="/")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "hookql serve: serving " not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.stdout == ""
    return p.stderr


@native
def test_start_errors_exit_nonzero_nothing_attached(tmp_path):
    c = COMM + "b"
    good = tmp_path / "good.hq"
    good.write_text(reload_script(f'comm == "{c}"'))
    port = f"127.0.0.1:{free_port()}"
    # an unknown path
    err = serve_fails(tmp_path, "--listen", port, str(good), str(tmp_path / "nope.hq"))
    assert f"error: {tmp_path / 'nope.hq'}: no such script or directory" in err and "nothing was loaded" in err
    # a script that fails to check, beside a good one: file:line:col, nothing loaded
    bad = tmp_path / "bad.hq"
    bad.write_text(f'on tracepoint:syscalls:sys_enter_getsid where comm == "{c}" {{ count by nosuchfield }}\n')
    err = serve_fails(tmp_path, "--listen", port, str(good), str(bad))
    assert f"{bad}:1:" in err and "nosuchfield" in err and "nothing was loaded" in err, err
    # a directory without scripts
    (tmp_path / "empty").mkdir()
    err = serve_fails(tmp_path, "--listen", port, str(tmp_path / "empty"))
    assert "no *.hq script in" in err
    # a port in use: one clear line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        where = f"127.0.0.1:{taken.getsockname()[1]}"
        err = serve_fails(tmp_path, "--listen", where, str(good))
    assert err.strip().splitlines() == [f"hookql serve: error: cannot listen on {where}: Address already in use; "
                                        "nothing was loaded"], err
    # a bad --listen: argparse's usage error would be 2; the converter says what to give
    p = subprocess.run([*hookql_cmd(), "serve", "--listen", "localhost", str(good)], capture_output=True, text=True)
    assert p.returncode != 0 and "ADDR:PORT" in p.stderr and "Traceback" not in p.stderr


@native
def test_start_without_privileges_names_the_capabilities(tmp_path):
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="hq-serve-nobody-"))
    try:
        os.chmod(d, 0o777)
        script = d / "s.hq"
        script.write_text(reload_script('comm == "x"'))
        script.chmod(0o644)
        # CAP_DAC_READ_SEARCH only: the venv's Python may live where nobody cannot go (pyenv's, under /root,
        # 0700, on CI); it is not one of the capabilities that loading BPF needs
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                "env", f"XDG_CACHE_HOME={d}/cache"]
        err = serve_fails(d, "--listen", f"127.0.0.1:{free_port()}", str(script), user=user)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "CAP_BPF" in lines[0] and "CAP_PERFMON" in lines[0], err
    finally:
        subprocess.run(["rm", "-rf", str(d)])


@native
def test_http_malformed_requests_and_methods(tmp_path, serves):
    (tmp_path / "h.hq").write_text(reload_script(f'comm == "{COMM}x"'))
    s = serve(serves, tmp_path, str(tmp_path / "h.hq"))
    assert s.get("/healthz")[0] == 200 and s.get("/healthz")[1].startswith(b"ok: 1 script, 1 probes attached")

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as c:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := c.recv(65536):
                out += chunk
            return out

    assert b"400 - Bad request" in raw(b"\x00\xff\x16\x03\x01garbage\r\n\r\n")  # no version: no status line
    assert raw(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n").split(b"\r\n")[0].split()[1] == b"414"
    assert raw(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n").split()[1] in (b"431", b"400")
    assert raw(b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc").split()[1] == b"405"
    assert raw(b"GET /nothing HTTP/1.0\r\n\r\n").split()[1] == b"404"
    # slow clients that send nothing, or half a request line: the next proper scrape is answered meanwhile
    slow = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(20)]
    slow[0].sendall(b"GET /metr")
    status, body = s.get("/metrics")
    assert status == 200 and b"hookql_build_info" in body
    for c in slow:
        c.close()
    status, body = s.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and body.endswith(b"# EOF\n")
    assert s.proc.poll() is None and "Traceback" not in s.log()
    assert s.stop() == 0


@native
def test_emit_lines_are_json_objects_on_stdout(tmp_path, serves):
    import json

    c = COMM + "j"
    (tmp_path / "e.hq").write_text(f'on tracepoint:syscalls:sys_enter_getsid where comm == "{c}" '
                                   f'{{ emit comm, args.pid }}\n')
    s = serve(serves, tmp_path, str(tmp_path / "e.hq"))
    w = workload(serves, tmp_path, c, "values", 7, 2)
    assert w.finish() == 14
    wait_for(lambda: s.out().count("\n") >= 14, "14 emit lines")
    assert s.stop() == 0
    lines = s.out().splitlines()
    assert len(lines) == 14
    objs = [json.loads(l) for l in lines]
    assert all(o["probe"] == "tracepoint:syscalls:sys_enter_getsid" and o["line"] == 1 for o in objs), objs[0]
    assert all(o["event"]["comm"] == c for o in objs), objs[0]
    assert sorted(o["event"]["args.pid"] for o in objs) == sorted(list(range(1, 8)) * 2), objs[0]
    assert "Traceback" not in s.log()


# -- 5. hookql check --serve: unbounded keys (pure front end) -----------------------------------------
def serve_warnings(text: str, kernel, cap: int = 1000) -> list:
    from hookql.diagnostics import Diagnostics
    from hookql.pipeline import check_source
    from hookql.serve.lint import warn_unbounded_keys
    from hookql.source import Source

    result = check_source(Source("t.hq", text), kernel)
    assert result.ok, [d.render() for d in result.diagnostics]
    before = {d.render() for d in result.diagnostics}
    warn_unbounded_keys(result.checked, result.diagnostics, cap)
    return [d for d in Diagnostics(result.diagnostics.sorted()) if d.render() not in before]


UNBOUNDED = [
    ("on lsm:socket_connect { count by pid }", "pid", "a process id"),
    ("on lsm:socket_connect { count by tid }", "tid", "a thread id"),
    ("on tracepoint:syscalls:sys_enter_getsid { count by args.pid }", "args.pid", "a process or thread id"),
    ("on tracepoint:syscalls:sys_enter_getsid { count by current.pid }", "current.pid", "a process id"),
    ("on tracepoint:sched:sched_process_fork { count by child_pid }", "child_pid", "a process or thread id"),
    ("on lsm:socket_connect { count by daddr }", "daddr", "an address"),
    ("on lsm:socket_connect { hist(dport) by saddr }", "saddr", "an address"),
    ("on lsm:socket_connect { count by sport }", "sport", "a local port"),
    ("on tracepoint:syscalls:sys_enter_getsid { count by cgroup }", "cgroup", "a cgroup"),
    ("on tracepoint:syscalls:sys_enter_getsid { count by ts }", "ts", "a timestamp"),
]


@pytest.mark.parametrize("text,key,what", UNBOUNDED, ids=[u[1] for u in UNBOUNDED])
def test_check_serve_warns_unbounded_key(k61, text, key, what):
    ws = serve_warnings(text, k61, cap=50)
    assert len(ws) == 1, [w.render() for w in ws]
    w = ws[0]
    assert not w.is_error and w.span.line == 1 and w.span.col == text.index(" by ") + 5
    assert w.span.text == key
    assert f"`by {key}`" in w.message and what in w.message and "--series-cap (50)" in w.message
    assert "__overflow__" in w.message and "`as NAME`" in w.hint and "coarser keys" in w.hint


@pytest.mark.parametrize("text", [
    "on tracepoint:syscalls:sys_enter_getsid { count by comm }",
    "on tracepoint:syscalls:sys_enter_getsid { count by uid, gid, cpu }",
    "on tracepoint:syscalls:sys_enter_getsid { count by container, pod }",
    "on tracepoint:syscalls:sys_enter_getsid { count by pid % 10 }",
    "on tracepoint:syscalls:sys_enter_getsid { count by kstack }",
    "on lsm:socket_connect { count by dport, family, protocol }",
    "on lsm:socket_connect { count; sum(dport); hist(dport) }",
    "on tracepoint:syscalls:sys_enter_getsid { emit pid, comm }",
])
def test_check_serve_quiet_on_bounded_keys(k61, text):
    assert serve_warnings(text, k61) == []


def test_check_serve_cli(tmp_path):
    f = tmp_path / "k.hq"
    f.write_text("on tracepoint:syscalls:sys_enter_getsid {\n    count by comm\n    count by args.pid as sids\n}\n"
                 "on tracepoint:syscalls:sys_enter_getsid, tracepoint:syscalls:sys_enter_getpgid "
                 "{ count by tid }\n")
    base = [*hookql_cmd(), "check", "--kernel", "6.1", "--color", "never"]
    plain = subprocess.run([*base, str(f)], capture_output=True, text=True)
    assert plain.returncode == 0 and "warning" not in plain.stderr, plain.stderr
    served = subprocess.run([*base, "--serve", str(f)], capture_output=True, text=True)
    assert served.returncode == 0, served.stderr
    lines = [l for l in served.stderr.splitlines() if ": warning: " in l]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{f}:3:14: warning: served, `by args.pid`")
    assert lines[1].startswith(f"{f}:5:") and "`by tid`" in lines[1]  # a probe list: once
    assert "--series-cap (1000)" in lines[0] and "2 warnings" in served.stderr
    capped = subprocess.run([*base, "--series-cap", "20", str(f)], capture_output=True, text=True)
    assert capped.returncode == 0 and capped.stderr.count("--series-cap (20)") == 2, capped.stderr
    bad = subprocess.run([*base, "--serve", "--series-cap", "0", str(f)], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a series cap" in bad.stderr and "Traceback" not in bad.stderr


@native
def test_scripts_another_user_could_change_are_refused(tmp_path, serves):
    """The attack: a service that loads every *.hq of a directory loads what another user plants there (a
    `deny` rule, or a script that emits what it likes into the node's logs).  A script is served only if
    every directory on its path and the file are root's or the service's and writable by nobody else; else
    refused at start (nothing loaded) and at reload (the running set stays)."""
    c = COMM + "t"
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(tmp_path, 0o755)
    shared.chmod(0o777)  # another user can add or replace files here
    (shared / "planted.hq").write_text(reload_script(f'comm == "{c}"'))
    err = serve_fails(tmp_path, "--listen", f"127.0.0.1:{free_port()}", str(shared))
    assert "refused" in err and "writable by others" in err and "nothing was loaded" in err, err
    shared.chmod(0o755)
    theirs = shared / "planted.hq"
    os.chown(theirs, 65534, 65534)  # nobody's file in our directory: nobody can rewrite it
    err = serve_fails(tmp_path, "--listen", f"127.0.0.1:{free_port()}", str(shared))
    assert "refused" in err and "owned by nobody" in err, err
    # at reload: a good set runs; a planted file makes the reload fail and the running set stays
    os.chown(theirs, 0, 0)
    s = serve(serves, tmp_path, "--drain-interval", "100ms", str(shared))
    held = s.held()
    evil = shared / "evil.hq"
    evil.write_text(reload_script(f'comm == "{c}"', "evil"))
    os.chown(evil, 65534, 65534)
    s.hup(expect="reload failed")
    assert "evil.hq: refused" in s.log() and s.held() == held
    assert value(s.samples(), "hookql_reloads_total", result="error") == 1
