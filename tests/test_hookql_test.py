"""`hookql test` as users run it, on this kernel (tracepoints): cases that pass and fail and how they say so,
bad input caught before anything runs, workloads that hang or are missing, --accept, --junit, -k, and the
attacks a case file or a workload can try (hookql/testing/)."""
import json
import os
import re
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO, held_programs, hookql_cmd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
PY = "/usr/bin/python3"
GETPPID = "on tracepoint:syscalls:sys_enter_getppid { count by comm }"


def hqtest(tmp_path, *args, cwd=None, timeout=120):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(hookql_cmd() + ["test", *args], capture_output=True, text=True, env=env, cwd=cwd or tmp_path,
                       timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def getppids(n: int) -> str:
    """Python calling getppid(2) n times; /bin/sh -c, which runs it, calls it once more (dash: $PPID)."""
    return f"{PY} -c 'import os; [os.getppid() for _ in range({n})]'"


def test_passing_and_failing_cases_say_expected_and_actual(tmp_path):
    write(tmp_path, "s.hq", f"{GETPPID}\non tracepoint:syscalls:sys_enter_getppid {{ hist(args.__syscall_nr) as nr }}\n")
    write(tmp_path, "s.hqt", f'''# two cases
test "three calls" {{
    run "{getppids(3)}"
    expect count by comm == {{"python3": 3, "sh": 1}}
    expect count by comm["python3"] >= 3
    expect count by comm["nobody"] == 0
    expect nr bucket 110 == 4
}}
test "a wrong count" {{
    run "{getppids(2)}"
    expect count by comm["python3"] == 5
    expect count by comm == {{"python3": 2, "bash": 1}}
}}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].startswith("PASS  s.hqt: three calls")
    assert lines[1].startswith("FAIL  s.hqt: a wrong count")
    assert "s.hqt:11:5: `count by comm` (s.hq:1)[python3]: expected == 5, got 2" in r.stdout
    assert "s.hqt:12:5: `count by comm` (s.hq:1) is not the table expected:" in r.stdout
    assert "[bash]: expected 1, no such row" in r.stdout and "[sh]: 1, not expected" in r.stdout
    assert lines[-1].startswith("1 passed, 1 failed in ")


def test_inline_clauses_and_emits_in_order(tmp_path):
    wl = f"{PY} -c 'import socket; s = socket.socket(); s.getsockopt(1, 7); s.setsockopt(1, 2, 1)'"
    write(tmp_path, "e.hqt", f'''test "emits" {{
    on tracepoint:syscalls:sys_enter_getsockopt {{ emit comm, args.optname }}
    on tracepoint:syscalls:sys_enter_setsockopt {{ emit comm, uid }}
    run "{wl}"
    ordered
    expect emit "comm=python3 args.optname=7"
    expect emit ~ "^comm=python3 uid=0$"
    expect emits == 2
}}
test "out of order" {{
    on tracepoint:syscalls:sys_enter_getsockopt {{ emit comm, args.optname }}
    on tracepoint:syscalls:sys_enter_setsockopt {{ emit comm, uid }}
    run "{wl}"
    ordered
    expect emit ~ "uid="
    expect emit "comm=python3 args.optname=7"
}}
''')
    r = hqtest(tmp_path, "e.hqt")
    assert "PASS  e.hqt: emits" in r.stdout, r.stdout
    assert "FAIL  e.hqt: out of order" in r.stdout
    assert "e.hqt:16:5: no emitted event is \"comm=python3 args.optname=7\" after the events matched above" in r.stdout
    assert "comm=python3 uid=0" in r.stdout  # the events it saw, listed


def test_bad_expectations_are_caught_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    write(tmp_path, "s.hq", GETPPID + "\n")
    write(tmp_path, "s.hqt", f'''test "no such aggregation" {{
    run "touch {marker}"
    expect sum(size) == 1
}}
test "keys" {{
    run "touch {marker}"
    expect count by comm["a", "b"] == 1
}}
test "emits" {{
    run "touch {marker}"
    expect emit "x"
}}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1
    assert not marker.exists()  # no workload ran
    assert "s.hqt:3:12: error: the script has no aggregation `sum(size)`" in r.stdout
    assert "its aggregations: `count by comm` (line 1)" in r.stdout
    assert "s.hqt:7:5: error: `count by comm` is keyed by 1 value (comm); this row names 2" in r.stdout
    assert "s.hqt:11:5: error: the script emits nothing" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("0 passed, 3 errors")


def test_a_script_that_does_not_check_is_an_error_at_its_line(tmp_path):
    write(tmp_path, "s.hqt", 'test "t" {\n    on tracepoint:syscalls:sys_enter_getppid { count by nosuch }\n'
                             '    run "true"\n    expect count by nosuch == {}\n}\n')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1
    assert "ERROR s.hqt: t" in r.stdout and "s.hqt:2:57: error: unknown field 'nosuch'" in r.stdout, r.stdout


def test_a_case_file_with_a_syntax_error(tmp_path):
    write(tmp_path, "s.hqt", 'test "t" {\n    run "true"\n    expect count =! 1\n}\n')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1
    assert "ERROR s.hqt\n    s.hqt:3:18: error:" in r.stdout, r.stdout


def test_a_hanging_workload_is_killed_with_all_it_started_and_nothing_stays_attached(tmp_path):
    pidfile = tmp_path / "pids"
    write(tmp_path, "s.hq", GETPPID + "\n")
    write(tmp_path, "s.hqt", f'''test "hangs" {{
    run "sleep 600 & echo $! > {pidfile}; setsid sleep 600 & echo $! >> {pidfile}; sleep 600" timeout 2s
    expect count by comm == {{}}
}}
''')
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = subprocess.Popen(hookql_cmd() + ["test", "s.hqt"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    held = set()
    while p.poll() is None:  # the programs this run holds, while it runs
        held |= held_programs(p.pid)
        time.sleep(0.05)
    out = p.stdout.read()
    assert p.returncode == 1
    assert "s.hqt:2:5: the workload did not finish in 2s and was killed (with everything it started)" in out, out
    assert held, "the run never held its programs"
    for prog in held:
        assert subprocess.run(["bpftool", "prog", "show", "id", str(prog)], capture_output=True).returncode != 0
    for pid in map(int, pidfile.read_text().split()):  # a background job, and one in its own session
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not [d for d in os.listdir("/sys/fs/cgroup") if d.startswith(f"hookql-test.{p.pid}.")]


def test_a_missing_command_and_a_wrong_exit_status(tmp_path):
    write(tmp_path, "s.hq", "on tracepoint:syscalls:sys_enter_getsockopt { count by comm }\n")
    write(tmp_path, "s.hqt", '''test "missing" {
    run "no-such-command-hq --x"
    expect count by comm == {}
}
test "status" {
    run "echo oops >&2; exit 3"
    run "exit 4" exits 4 stderr ~ "never"
    expect count by comm == {}
}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert "s.hqt:2:5: the workload's command was not found: no-such-command-hq --x" in r.stdout, r.stdout
    assert re.search(r"s.hqt:6:5: the workload exited 3, expected 0: echo oops >&2; exit 3\n +stderr: oops", r.stdout)
    assert "s.hqt:7:5: the workload's stderr has nothing matching ~ \"never\"" in r.stdout
    assert r.returncode == 1


def test_requirements_not_met_are_skipped_with_the_reason(tmp_path):
    write(tmp_path, "s.hq", GETPPID + "\n")
    write(tmp_path, "s.hqt", '''test "old kernel" {
    requires kernel < 4.0
    run "true"
    expect count by comm == {}
}
test "no command" {
    requires command no-such-tool-hq
    run "true"
    expect count by comm == {}
}
test "no hook" {
    requires hook kprobe:no_such_function_hq
    run "true"
    expect count by comm == {}
}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 0  # skipped is not failed; and never passed
    assert re.search(r"SKIP  s.hqt: old kernel  \[needs kernel < 4.0; this is 6\.", r.stdout), r.stdout
    assert "SKIP  s.hqt: no command  [needs the command 'no-such-tool-hq'" in r.stdout
    assert "SKIP  s.hqt: no hook  [needs kprobe:no_such_function_hq" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("0 passed, 3 skipped")


def test_kprobe_and_lsm_cases_are_skipped_here_not_passed(tmp_path):
    write(tmp_path, "s.hqt", '''test "lsm" {
    on lsm:socket_connect { count }
    run "true"
    expect count == 0
}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert "SKIP  s.hqt: lsm  [" in r.stdout and "PASS" not in r.stdout, r.stdout


def test_accept_writes_the_golden_file_and_then_it_passes(tmp_path):
    write(tmp_path, "s.hq", "on tracepoint:syscalls:sys_enter_getppid { count by comm; emit comm, pid }\n")
    write(tmp_path, "s.hqt", f'''test "golden" {{
    run "{getppids(2)}"
    golden "s.expected" mask pid
}}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1
    assert "the golden file s.expected does not exist: run `hookql test --accept`" in r.stdout, r.stdout
    r = hqtest(tmp_path, "--accept", "s.hqt")
    assert r.returncode == 0 and "(accepted: wrote s.expected)" in r.stdout, r.stdout
    text = (tmp_path / "s.expected").read_text()
    assert "count by comm (line 1)\n  python3: 2\n" in text and text.count("emit comm=python3 pid=*\n") == 2
    assert hqtest(tmp_path, "s.hqt").returncode == 0
    (tmp_path / "s.expected").write_text(text.replace("python3: 2", "python3: 7"))
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1 and "-  python3: 7\n" in r.stdout and "+  python3: 2\n" in r.stdout, r.stdout


def test_junit_and_k(tmp_path):
    write(tmp_path, "s.hq", GETPPID + "\n")
    write(tmp_path, "s.hqt", f'''test "one" {{
    run "{getppids(1)}"
    expect count by comm["python3"] == 1
}}
test "two" {{
    run "{getppids(1)}"
    expect count by comm["python3"] == 2
}}
test "three" {{
    requires kernel < 2.0
    run "true"
    expect count by comm == {{}}
}}
''')
    r = hqtest(tmp_path, "--junit", "out.xml")  # no PATH: the directory (no hookql.toml above it: here)
    assert r.returncode == 1
    suite = ET.parse(tmp_path / "out.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("3", "1", "1", "0")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["one"].find("failure") is None and cases["one"].get("classname") == "s.hqt"
    assert "expected == 2, got 1" in cases["two"].find("failure").text
    assert cases["three"].find("skipped") is not None
    r = hqtest(tmp_path, "-k", "ON", "s.hqt")
    assert r.returncode == 0 and "one" in r.stdout and "two" not in r.stdout and "1 passed in" in r.stdout
    r = hqtest(tmp_path, "-k", "nothing-matches", "s.hqt")
    assert r.returncode == 2 and "no test cases" in r.stderr


def test_lost_events_fail_a_case_unless_it_allows_loss(tmp_path):
    # 6000 distinct keys into a map of 4096: the map is full; that is reported, and fails the case
    write(tmp_path, "s.hqt", f'''test "full" {{
    on tracepoint:syscalls:sys_enter_close {{ count by args.fd }}
    run "{PY} -c 'import os\\nfor fd in range(10000, 16000):\\n    try: os.close(fd)\\n    except OSError: pass'"
    expect count by args.fd[10000] == 1
}}
test "allowed" {{
    on tracepoint:syscalls:sys_enter_close {{ count by args.fd }}
    run "{PY} -c 'import os\\nfor fd in range(10000, 16000):\\n    try: os.close(fd)\\n    except OSError: pass'"
    allow loss
    expect count by args.fd[10000] == 1
}}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert "FAIL  s.hqt: full" in r.stdout and "PASS  s.hqt: allowed" in r.stdout, r.stdout
    assert re.search(r"lost: \d+ events not counted in `count by args.fd` \(line 2\): its map is full", r.stdout)


# -- attacks ----------------------------------------------------------------------------------
def test_a_case_file_others_can_write_is_not_run(tmp_path):
    marker = tmp_path / "ran"
    d = tmp_path / "shared"
    d.mkdir()
    write(d, "s.hqt", f'test "t" {{\n    on tracepoint:syscalls:sys_enter_getppid {{ count }}\n'
                      f'    run "touch {marker}"\n    expect count == 0\n}}\n').chmod(0o666)
    r = hqtest(tmp_path, str(d / "s.hqt"))
    assert r.returncode == 1 and not marker.exists()
    assert "not safe to run" in r.stdout and "writable by others" in r.stdout, r.stdout


def test_a_golden_file_never_leads_outside_the_case_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    d = tmp_path / "repo"
    d.mkdir()
    (d / "g.expected").symlink_to(outside)
    write(d, "s.hqt", f'''test "t" {{
    on tracepoint:syscalls:sys_enter_getppid {{ count }}
    run "{getppids(1)}"
    golden "g.expected"
}}
''')
    r = hqtest(d, "--accept", "s.hqt")
    assert r.returncode == 1 and "leads outside" in r.stdout, r.stdout
    assert outside.read_text() == "keep me\n"


def test_hostile_text_is_escaped_in_the_console_and_the_junit(tmp_path):
    # a case name, a workload's output and a process name (the kernel's: anyone sets their own) with
    # terminal escapes and characters XML 1.0 cannot hold
    write(tmp_path, "s.hqt", f'''test "evil \\x1b]0;title\\x07 \\x00 name" {{
    on tracepoint:syscalls:sys_enter_getppid {{ emit comm }}
    run "{PY} -c 'import ctypes, os, sys; ctypes.CDLL(None).prctl(15, b\\"\\\\x1b[31mred\\\\x01\\", 0, 0, 0); os.getppid(); sys.stderr.write(\\"\\\\x1b[2J\\\\x00\\"); sys.exit(1)'"
    expect emit "nothing"
}}
''')
    r = hqtest(tmp_path, "--junit", "j.xml", "s.hqt")
    assert r.returncode == 1
    assert "\x1b" not in r.stdout and "\x00" not in r.stdout and "\x07" not in r.stdout
    assert "evil \\x1b]0;title\\x07 \\x00 name" in r.stdout, r.stdout
    assert "comm=\\x1b[31mred\\x01" in r.stdout
    root = ET.parse(tmp_path / "j.xml").getroot()  # parses: nothing XML forbids
    case = root.find("testsuite/testcase")
    assert case.get("name") == "evil \\x1b]0;title\\x07 \\x00 name"
    assert "\\x1b[2J" in case.find("failure").text


def test_the_junit_file_is_not_written_through_a_link(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep\n")
    (tmp_path / "j.xml").symlink_to(target)
    write(tmp_path, "s.hqt", 'test "t" {\n    on tracepoint:syscalls:sys_enter_getppid { count }\n'
                             '    run "true"\n    expect count == 0\n}\n')
    r = hqtest(tmp_path, "--junit", "j.xml", "s.hqt")
    assert r.returncode == 2 and "cannot write --junit j.xml" in r.stderr
    assert target.read_text() == "keep\n"


def test_deps_runs_the_dependencies_cases_and_a_library_uses_itself(tmp_path):
    lib, proj = tmp_path / "lib", tmp_path / "proj"
    lib.mkdir(), proj.mkdir()
    write(lib, "hookql.toml", '[package]\nname = "mylib"\nversion = "1.0.0"\nhookql = ">=0.1"\n')
    write(lib, "lib.hq", "def small(n) = n < 10\n")
    getsockopt = f"{PY} -c 'import socket; socket.socket().getsockopt(1, 7)'"
    write(lib, "lib.hqt", f'''test "small levels" {{
    use mylib
    on tracepoint:syscalls:sys_enter_getsockopt where mylib.small(args.level) {{ count }}
    run "{getsockopt}"
    expect count == 1
}}
''')
    write(proj, "hookql.toml", '[package]\nname = "proj"\nversion = "0.1.0"\nhookql = ">=0.1"\n\n'
                               '[dependencies]\nmylib = { path = "../lib" }\n')
    write(proj, "p.hq", "use mylib\non tracepoint:syscalls:sys_enter_getsockopt where mylib.small(args.level) "
                        "{ count by comm }\n")
    write(proj, "p.hqt", f'test "p" {{\n    run "{getsockopt}"\n    expect count by comm == {{"python3": 1}}\n}}\n')
    (proj / "sub").mkdir()
    r = hqtest(tmp_path, cwd=proj / "sub")  # no PATH: the project's root, found upward
    assert r.returncode == 0 and "/proj/p.hqt: p" in r.stdout and "lib.hqt" not in r.stdout, r.stdout
    r = hqtest(tmp_path, "--deps", cwd=proj)
    assert r.returncode == 0, r.stdout
    assert "PASS  p.hqt: p" in r.stdout and f"PASS  {lib}/lib.hqt: small levels" in r.stdout


def test_a_kernel_image_that_cannot_boot_says_why_in_one_line(tmp_path):
    write(tmp_path, "s.hqt", 'test "t" {\n    on tracepoint:syscalls:sys_enter_getppid { count }\n'
                             '    run "true"\n    expect count == 0\n}\n')
    write(tmp_path, "junk.img", "not a kernel\n")
    r = hqtest(tmp_path, "--kernel-image", "junk.img", "s.hqt")
    assert r.returncode == 2 and r.stdout == "", r.stdout
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("hookql test: error: ") and "junk.img" in line, line


# -- what a red-team review found (each once a false pass, a hang or a leak) ---------------------------------
def test_a_workload_that_kills_its_runner_fails_the_case_never_passes_it(tmp_path):
    write(tmp_path, "s.hqt", '''test "kill -9" {
    on tracepoint:syscalls:sys_enter_getppid { count by comm }
    run "kill -9 $PPID; sleep 0.3"
    run "exit 3"
    expect count by comm["x"] == 0
}
test "kill -INT" {
    on tracepoint:syscalls:sys_enter_getppid { count by comm }
    run "kill -INT $PPID; sleep 0.3; exit 7"
    run "exit 3"
    expect count by comm["x"] == 0
}
''')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1 and "PASS" not in r.stdout, r.stdout
    assert "ERROR s.hqt: kill -9" in r.stdout and "did not finish" in r.stdout
    assert "s.hqt:9:5: the workload exited 7" in r.stdout and "s.hqt:10:5: the workload exited 3" in r.stdout


def test_a_cgroup_the_workload_makes_is_counted_and_removed_with_what_runs_in_it(tmp_path):
    tag = f"hq{os.getpid()}x"
    write(tmp_path, "s.hqt", f'''test "nested" {{
    on tracepoint:syscalls:sys_enter_getppid {{ count by comm }}
    run "CG=/sys/fs/cgroup$(grep ^0:: /proc/self/cgroup | cut -d: -f3); mkdir $CG/sub; echo $$ > $CG/sub/cgroup.procs; {PY} -c 'import os; os.getppid()'; setsid sleep 777{tag} 2>/dev/null & true"
    expect count by comm == {{"sh": 1, "python3": 1}}
}}
''')
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = subprocess.run(hookql_cmd() + ["test", "s.hqt"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert subprocess.run(["pgrep", "-f", f"sleep 777{tag}"], capture_output=True).returncode == 1
    assert not [d for d in os.listdir("/sys/fs/cgroup") if d.startswith("hookql-test.") and
                not Path(f"/proc/{d.split('.')[1]}").exists()]


def test_a_script_others_can_write_is_not_loaded(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    script = write(d, "s.hq", GETPPID + "\n")
    script.chmod(0o666)
    write(tmp_path, "s.hqt", f'test "t" {{\n    script "shared/s.hq"\n    run "true"\n'
                             f'    expect count by comm == {{}}\n}}\n')
    r = hqtest(tmp_path, "s.hqt")
    assert r.returncode == 1 and "s.hqt:2:12: error: the script" in r.stdout and "not safe to load" in r.stdout


def test_fifos_never_hang_the_run(tmp_path):
    os.mkfifo(tmp_path / "f.hqt")
    write(tmp_path, "s.hqt", 'test "t" {\n    on tracepoint:syscalls:sys_enter_getppid { count }\n'
                             '    run "true"\n    expect count == 1\n}\n')
    os.mkfifo(tmp_path / "j.xml")
    r = hqtest(tmp_path, "--junit", "j.xml", ".", timeout=60)
    assert "ERROR f.hqt\n    f.hqt: cannot read: not a regular file" in r.stdout, r.stdout
    assert r.returncode == 2 and "cannot write --junit j.xml" in r.stderr


def test_a_flood_of_output_is_kept_to_its_tail(tmp_path):
    write(tmp_path, "s.hqt", '''test "flood" {
    on tracepoint:syscalls:sys_enter_getppid { count }
    run "head -c 300000000 /dev/zero; echo; echo the-end" stdout ~ "the-end"
    expect count >= 0
}
''')
    r = hqtest(tmp_path, "s.hqt", timeout=300)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout


def test_accept_never_overwrites_a_file_it_did_not_write(tmp_path):
    write(tmp_path, "notes.txt", "my notes\n")
    write(tmp_path, "s.hqt", f'test "t" {{\n    on tracepoint:syscalls:sys_enter_getppid {{ count }}\n'
                             f'    run "{getppids(1)}"\n    golden "notes.txt"\n}}\n')
    r = hqtest(tmp_path, "--accept", "s.hqt")
    assert r.returncode == 1 and "is not a golden file `hookql test --accept` wrote" in r.stdout, r.stdout
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_and_leaves_nothing(tmp_path, sig):
    """Ctrl-C or SIGTERM while a workload runs: 130, nothing attached, no cgroup left."""
    write(tmp_path, "s.hqt", 'test "t" {\n    on tracepoint:syscalls:sys_enter_getppid { count }\n'
                             '    run "sleep 600" timeout 10m\n    expect count == 0\n}\n')
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = subprocess.Popen(hookql_cmd() + ["test", "s.hqt"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not held_programs(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    held = held_programs(p.pid)
    time.sleep(0.3)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    for prog in held:
        assert subprocess.run(["bpftool", "prog", "show", "id", str(prog)], capture_output=True).returncode != 0
    assert not [d for d in os.listdir("/sys/fs/cgroup") if d.startswith(f"hookql-test.{p.pid}.")]
