"""`hookql run`'s options and signals, as a user meets them: Ctrl-C at any moment,
map and ring-buffer sizes the machine cannot hold, -p of a process that is not
there, a script with nothing to attach.  Every one is a short message and an
exit code, never a traceback."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, hookql_cmd
from hookql import runargs

TP = "tracepoint:syscalls:sys_enter_getsockopt"
SCRIPT = f"on {TP} {{ count }}"
root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


def hookql(*args, env=None, timeout=120):
    return subprocess.run(hookql_cmd() + list(args), capture_output=True, text=True, env=env, timeout=timeout)


def one_line_usage_error(r, option: str) -> str:
    """argparse's usage, then one line naming the option; exit 2."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hookql run: error: argument {option}: "), r.stderr
    return last


# -- 1. Ctrl-C (and SIGTERM) at any moment --------------------------------------------------------
BIN = hookql_cmd()  # the installed command: bin/hookql, which execs `python3 -I -m hookql` (same process)


def _handlers_in_place(pid: int) -> bool:
    """hookql/__main__.py's first act is to catch SIGTERM: from then on HookQL's code is running."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(l.split()[1] for l in status.splitlines() if l.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _interrupt(env, sig, delay, after_handlers=True):
    p = subprocess.Popen(BIN + ["run", "-e", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    if after_handlers:
        deadline = time.monotonic() + 60
        while not _handlers_in_place(p.pid) and p.poll() is None:
            if time.monotonic() > deadline:
                p.kill()
                pytest.fail("bin/hookql never put its signal handlers in place")
            time.sleep(0.0002)
    time.sleep(delay)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


DELAYS = [0, 0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.4]


def _assert_quiet(sig, code, out, err, delay):
    assert "Traceback" not in err and "internal error" not in err, f"{sig!r} after {delay}s:\n{err}"
    if "Attached" in err:  # it got to attach: the signal stops the run, which prints as it always does
        assert code == 0, err
        assert f"{TP}: count" in out
    else:
        assert code == 128 + sig, f"{sig!r} after {delay}s: exit {code}\n{err}"
        assert err == "" and out == ""


@root
@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_any_moment_exits_quietly(tmp_path, cache, sig):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    if cache == "warm":
        assert hookql("run", "-d", "0", "-e", SCRIPT, env=env).returncode == 0
    for delay in DELAYS:
        if cache == "cold":
            env["XDG_CACHE_HOME"] = str(tmp_path / f"c{delay}")  # a compile every time
        _assert_quiet(sig, *_interrupt(env, sig, delay), delay)


@root
def test_ctrl_c_from_the_first_millisecond(tmp_path):
    """Counted from the exec: before bin/hookql's first line the interpreter is still starting and
    importing `site` (with the installation's .pth files), where a Ctrl-C is Python's own fatal
    error; that is the only traceback there may be, never one from HookQL."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    for delay in [0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.1]:
        code, out, err = _interrupt(env, signal.SIGINT, delay, after_handlers=False)
        if "Fatal Python error: init_" in err or code == -signal.SIGINT:
            continue  # the interpreter's own start (init_import_site, init_sys_streams...), before any HookQL code
        _assert_quiet(signal.SIGINT, code, out, err, delay)


# -- 2. map and ring buffer sizes -----------------------------------------------------------------
@pytest.mark.parametrize("value", ["3", "12288", "4294967296", "1024", "0", "-4096", "x"])
def test_ringbuf_size_is_checked_when_parsed(value):
    line = one_line_usage_error(hookql("run", "--ringbuf-size", value, "-e", SCRIPT), "--ringbuf-size")
    assert "a power of 2" in line and str(runargs.MAX_RINGBUF_SIZE) in line
    assert runargs.parse(["--ringbuf-size", value, "-e", SCRIPT]) is None  # the fast reader leaves it to argparse


@pytest.mark.parametrize("value", ["0", "-1", str(runargs.MAX_MAP_SIZE + 1), "4294967295", "1e3"])
def test_map_size_is_checked_when_parsed(value):
    line = one_line_usage_error(hookql("run", f"--map-size={value}", "-e", SCRIPT), "--map-size")
    assert f"from 1 to {runargs.MAX_MAP_SIZE}" in line


@pytest.mark.parametrize("option,value", [("--map-size", "1"), ("--map-size", str(runargs.MAX_MAP_SIZE)),
                                          ("--ringbuf-size", str(runargs.PAGE_SIZE)),
                                          ("--ringbuf-size", str(runargs.MAX_RINGBUF_SIZE))])
def test_the_bounds_themselves_are_accepted(option, value):
    fast = runargs.parse([option, value, "-e", SCRIPT])
    assert fast is not None and getattr(fast, option[2:].replace("-", "_")) == int(value)


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


@root
def test_a_map_larger_than_memory_says_so_and_names_the_option():
    # lhist with 1000 steps: about 8 KB an entry. Twice this machine's memory in entries, which the
    # kernel refuses at once (more than all its pages) rather than trying.
    entry = 8 * 1002
    n = 1
    while n * entry <= 2 * _mem_total():
        n *= 2
    if n > runargs.MAX_MAP_SIZE:
        pytest.skip("this machine has more memory than the largest --map-size can ask for")
    r = hookql("run", "--map-size", str(n), "-d", "1s", "-e", f"on {TP} {{ lhist(optname, 0, 1000, 1) by comm }}")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "verifier" not in r.stderr and "HookQL bug" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first == (f"hookql: error: cannot create the map of `lhist(optname, 0, 1000, 1) by comm` (line 1, hq_agg0) "
                     f"with --map-size {n}: too large for this machine's memory or memory limits (ENOMEM)"), r.stderr
    assert "hint: lower --map-size" in r.stderr
    assert "Attached" not in r.stderr


@pytest.mark.parametrize("err,why", [(errno.E2BIG, "too large for this kernel's limits (E2BIG)"),
                                     (errno.EINVAL, "a size this kernel refuses (EINVAL)"),
                                     (errno.ENOMEM, "memory or memory limits (ENOMEM)")])
def test_map_creation_errors_name_the_map_and_the_option(monkeypatch, err, why):
    """The same reading for the errors a real run can't provoke here (the options' bounds keep them out)."""
    from hookql.runtime import libbpf, loader

    layout = {"aggregations": [{"map": "hq_agg0", "text": "count by comm", "line": 3, "by": ["comm"]}],
              "probes": []}
    monkeypatch.setattr(libbpf, "messages", [("warning", f"libbpf: map 'hq_events': failed to create: x(-{err})")])
    e = loader._map_error(err, layout, {"--ringbuf-size": 1 << 31})
    assert str(e) == f"cannot create the ring buffer of `emit` (hq_events) with --ringbuf-size {1 << 31}: " + (
        why if err != errno.ENOMEM else "too large for this machine's " + why)
    assert e.hint == "lower --ringbuf-size"
    monkeypatch.setattr(libbpf, "messages", [("warning", f"libbpf: map 'hq_agg0': failed to create: x(-{err})")])
    e = loader._map_error(err, layout, {})
    assert str(e).startswith("cannot create the map of `count by comm` (line 3, hq_agg0) with its default size "
                             "(4096 entries): ")
    assert e.hint == "lower --map-size"
    assert loader._map_error(errno.EACCES, layout, {}) is None  # not a size: the usual load errors


# -- 3. -p ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-5", "0", "x", "99999999999"])
def test_pid_must_be_a_process_id(value):
    line = one_line_usage_error(hookql("run", "-p", value, "-e", SCRIPT), "-p")
    assert "is not a process id" in line


@root
def test_pid_of_no_process_is_an_error():
    gone = subprocess.Popen(["true"])
    gone.wait()
    r = hookql("run", "-p", str(gone.pid), "-e", SCRIPT)
    assert r.returncode == 1
    assert r.stderr == f"hookql: error: -p {gone.pid}: no such process; give the id of a running process\n"


# -- 4. a script with nothing to attach ---------------------------------------------------------------
EMPTY = {"empty": "", "blank": "\n\n", "comments": "# nothing here yet\n",
         "consts_and_defs": "const WEB = {80, 443}\ndef web(p) = p in WEB\n"}


@pytest.mark.parametrize("name", EMPTY)
def test_a_script_without_clauses_is_an_error_for_run_and_compile(tmp_path, name):
    f = tmp_path / f"{name}.hq"
    f.write_text(EMPTY[name])
    r = hookql("check", str(f))  # check accepts it: a library of consts and defs checks on its own
    assert r.returncode == 0, r.stderr
    for cmd in (["run", "-d", "1s"], ["compile", "-o", str(tmp_path / "out.o")]):
        r = hookql(*cmd, str(f))
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"{f}:1:1: error: no clauses: nothing for `hookql {cmd[0]}` to attach\n"), r.stderr
        assert "hint: add a clause" in r.stderr and "Attached" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.o").exists()


def test_run_e_of_nothing_is_an_error():
    r = hookql("run", "-e", "  # nothing\n")
    assert r.returncode == 1 and r.stderr.startswith("<-e>:1:1: error: no clauses"), r.stderr


# -- 5. our programs, by the ids our process holds ------------------------------------------------
@root
def test_verbose_run_prints_each_program_id_and_they_are_gone_after():
    script = f"on {TP} {{ count }}\non tracepoint:syscalls:sys_enter_getsockname {{ count }}"
    p = subprocess.Popen(hookql_cmd() + ["run", "-v", "--format", "json", "-e", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines = []
    while len([l for l in lines if "(program id " in l]) < 2:
        line = p.stderr.readline()
        assert line, "".join(lines) + p.stderr.read()
        lines.append(line)
    ids = [int(l.rsplit("(program id ", 1)[1].rstrip(")\n")) for l in lines if "(program id " in l]
    assert len(set(ids)) == 2
    for i in ids:  # the kernel has them, under the name the object gives them
        show = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)], capture_output=True, text=True)
        assert show.returncode == 0 and json.loads(show.stdout)["name"].startswith("hq_probe")
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [i for i in ids if subprocess.run(["bpftool", "prog", "show", "id", str(i)],
                                                 capture_output=True).returncode == 0]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def test_the_bench_never_writes_the_stats_sysctl():
    """bench/run.py reads run time through a BPF_ENABLE_STATS fd it holds, not the global sysctl."""
    for f in ("run.py", "progs.py", "catalog_growth.py"):
        text = (REPO / "bench" / f).read_text()
        assert '"sysctl"' not in text and "sysctl -" not in text and "bpf_stats_enabled=" not in text, f
