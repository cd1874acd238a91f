"""User strings: a syscall tracepoint's `const char *` argument (openat's filename) is read from user
memory (bpf_probe_read_user_str), usable in emit, as a `by` key and in ==/!= with string literals; the
checker refuses arithmetic and member access on it.  As root: a workload with a unique comm opens N
files with known unique names; the emit lines show exactly those names, a comparison counts exactly
one name's opens, a name with control characters prints escaped."""
import json
import os
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, hookql_cmd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
TP = "tracepoint:syscalls:sys_enter_openat"

OPENER = r'''
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
d, names, reps = sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
extra = sys.argv[5].encode("utf-8", "surrogateescape") if len(sys.argv) > 5 else None
for name in names:
    for _ in range(reps):
        os.close(os.open(os.path.join(d, name), os.O_RDONLY | os.O_CREAT, 0o600))
if extra is not None:
    os.close(os.open(os.path.join(d.encode(), extra), os.O_RDONLY | os.O_CREAT, 0o600))
'''


def _run(tmp_path, script: str, *args: str, opts=()) -> subprocess.CompletedProcess:
    wl = tmp_path / "open.py"
    wl.write_text(OPENER)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    cmd = " ".join([sys.executable, str(wl), *args])
    r = subprocess.run(hookql_cmd() + ["run", *opts, "-e", script, "-c", cmd], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return r


def test_user_string_type_and_checker(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    for bad, want in [(f"on {TP} where filename + 1 > 0 {{ count }}", "string (from user memory)"),
                      (f"on {TP} {{ emit filename.x }}", "has no members"),
                      (f"on {TP} {{ sum(filename) }}", "needs an integer")]:
        p = tmp_path / "bad.hq"
        p.write_text(bad + "\n")
        r = subprocess.run(hookql_cmd() + ["check", str(p)], capture_output=True, text=True, env=env)
        assert r.returncode != 0 and want in r.stderr and "Traceback" not in r.stderr, r.stderr
    p = tmp_path / "ok.hq"
    p.write_text(f'on {TP} where args.filename != "/x" {{ count by filename, comm; emit filename }}\n')
    r = subprocess.run(hookql_cmd() + ["check", str(p)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_opensnoop_example_checks(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run(hookql_cmd() + ["check", str(REPO / "examples" / "opensnoop.hq")], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr


@needs_root
def test_emit_shows_exactly_the_opened_names(tmp_path):
    comm = "hq" + uuid.uuid4().hex[:10]
    tag = uuid.uuid4().hex[:8]
    names = [f"f{tag}_{i}" for i in range(7)]
    d = tmp_path / "files"
    d.mkdir()
    r = _run(tmp_path, f'on {TP} where comm == "{comm}" {{ emit filename }}', comm, str(d), ",".join(names), "1")
    got = [l.split("filename=", 1)[1] for l in r.stdout.splitlines() if "filename=" in l and tag in l]
    assert sorted(got) == sorted(str(d / n) for n in names), r.stdout


@needs_root
def test_comparison_counts_exactly_its_opens(tmp_path):
    comm = "hq" + uuid.uuid4().hex[:10]
    tag = uuid.uuid4().hex[:8]
    names = [f"g{tag}_{i}" for i in range(3)]
    d = tmp_path / "files"
    d.mkdir()
    target = str(d / names[1])
    r = _run(tmp_path, f'on {TP} where comm == "{comm}" and filename == "{target}" {{ count }}\n'
                       f'on {TP} where comm == "{comm}" {{ count by filename }}',
             comm, str(d), ",".join(names), "5", opts=("--format", "json"))
    objs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    one = next(o for o in objs if o["line"] == 1)
    assert one["rows"] == [{"key": {}, "value": 5}], one  # exactly the 5 opens of that one name
    by = next(o for o in objs if o["line"] == 2)
    assert {row["key"]["filename"]: row["value"] for row in by["rows"] if tag in row["key"]["filename"]} == {str(d / n): 5 for n in names}, by


@needs_root
def test_control_characters_print_escaped(tmp_path):
    comm = "hq" + uuid.uuid4().hex[:10]
    tag = uuid.uuid4().hex[:8]
    d = tmp_path / "files"
    d.mkdir()
    wl_name = f"h{tag}\x1b[31m\x01x"
    r = _run(tmp_path, f'on {TP} where comm == "{comm}" {{ emit filename }}', comm, str(d), f"plain{tag}", "1",
             "'" + wl_name + "'")
    assert "\x1b" not in r.stdout and "\x01" not in r.stdout
    assert f"h{tag}\\x1b[31m\\x01x" in r.stdout, r.stdout


NULL_OPENER = r'''
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)
for _ in range(int(sys.argv[2])):
    libc.syscall(257, -100, None, 0)  # openat(AT_FDCWD, NULL, 0): EFAULT, and the tracepoint sees NULL
'''


@needs_root
def test_unreadable_user_strings_are_counted_and_reported(tmp_path):
    """Nothing is lost silently: a user string that cannot be read (NULL here) reads as "" and is counted."""
    comm = "hq" + uuid.uuid4().hex[:10]
    wl = tmp_path / "null.py"
    wl.write_text(NULL_OPENER)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", "-e",
                                       f'on {TP} where comm == "{comm}" {{ count by filename }}',
                                       "-c", f"{sys.executable} {wl} {comm} 7"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    (agg,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert agg["rows"] == [{"key": {"filename": ""}, "value": 7}]
    assert "7 user strings could not be read" in r.stderr
