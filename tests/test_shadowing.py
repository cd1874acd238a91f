"""No silent shadowing: where a hook's own field has a builtin's name
(tracepoint:syscalls:sys_enter_kill's `pid` is the process being signalled,
the builtin `pid` the one sending), both stay reachable -- `args.pid` is the
field, `current.pid` the builtin -- and a bare `pid` (still the field, as it
always was) is a warning that says which is which."""
import json
import os
import subprocess
import sys

import pytest

from conftest import check, errors, hookql_cmd

KILL = "tracepoint:syscalls:sys_enter_kill"
root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


def warnings(text, kernel):
    return [d for d in check(text, kernel) if not d.is_error]


def test_a_bare_name_a_field_takes_from_a_builtin_is_a_warning_naming_both(k618):
    ws = warnings(f"on {KILL} {{ count by pid }}", k618)
    assert len(ws) == 1
    w = ws[0].render()
    assert "'pid' is tracepoint:syscalls:sys_enter_kill's field" in w and "not the builtin pid" in w
    assert "args.pid for the field" in w and "current.pid for the builtin" in w
    assert (ws[0].span.line, ws[0].span.col) == (1, 50)


@pytest.mark.parametrize("text", [f"on {KILL} {{ count by args.pid }}", f"on {KILL} {{ count by current.pid }}",
                                  f"on {KILL} where args.pid != current.pid {{ emit args.pid, current.pid, sig }}",
                                  f"on {KILL} {{ count by comm, current.comm, args.sig, current.tid }}",
                                  "on tracepoint:syscalls:sys_enter_getsockopt { count by pid }"])
def test_explicit_spellings_and_unshadowed_names_are_clean(text, k618):
    assert list(check(text, k618)) == []


def test_explicit_spellings_work_on_any_hook(k618):
    assert list(check("on kprobe:tcp_sendmsg { sum(args.size) by current.comm, args.sk.sk_rcvbuf }", k618)) == []


@pytest.mark.parametrize("text,at,says,hint", [
    (f"on {KILL} {{ count by current.sig }}", "sig }", "no builtin 'sig'; the builtins are: comm, pid", "args.NAME"),
    (f"on {KILL} {{ count by current.pdi }}", "pdi", "no builtin 'pdi'", "did you mean 'pid'"),
    (f"on {KILL} {{ count by args.comm }}", "comm", f"{KILL} has no field 'comm'; its fields are: __syscall_nr, pid, sig",
     "comm is a builtin: write current.comm or comm"),
    (f"on {KILL} {{ count by args.sgi }}", "sgi", "has no field 'sgi'", "did you mean 'sig'"),
])
def test_a_wrong_explicit_name_is_an_error_at_the_name(text, at, says, hint, k618):
    errs = errors(text, k618)
    assert len(errs) == 1
    e = errs[0]
    assert (e.span.line, e.span.col) == (1, text.index(at) + 1) and says in e.message and hint in (e.hint or "")


def test_a_constant_or_field_called_args_keeps_its_meaning(k618):
    # a library constant args.X is the constant; a struct member after a field is a member, as before
    assert errors("const args = 3\non tracepoint:syscalls:sys_enter_kill where sig == args { count }", k618) == []


def test_hooks_v_shows_both(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    r = subprocess.run(hookql_cmd() + ["hooks", "-v", KILL, "--kernel", "6.18"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    field = next(l for l in lines if l.split()[:1] == ["pid"])
    builtin = next(l for l in lines if l.split()[:1] == ["current.pid"])
    assert "also args.pid" in field and "which is current.pid" in field
    assert "process id" in builtin and "the builtin" in builtin


KILLER = r"""
import os, signal, sys, time
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.kill(pid, signal.SIGUSR2)
    os.waitpid(pid, 0)
print(os.getpid(), *kids)
"""


@root
def test_the_field_is_the_target_and_the_builtin_the_caller(tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    out = tmp_path / "ids"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    text = (f"on {KILL} where sig == 12 {{ emit args.pid, current.pid, pid, current.comm }}")  # 12: SIGUSR2
    r = subprocess.run(hookql_cmd() + ["run", "-e", text, "--format", "json", "-c",
                                       f"sh -c '{sys.executable} {script} > {out}'"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    parent, *kids = map(int, out.read_text().split())
    events = [json.loads(l)["event"] for l in r.stdout.splitlines() if l.startswith("{") and '"event"' in l]
    mine = [e for e in events if e["current.pid"] == parent]
    assert sorted(e["args.pid"] for e in mine) == sorted(kids)  # the field: whom the signal is for
    assert all(e["pid"] == e["args.pid"] for e in mine)  # a bare pid is still the field (with a warning)
    assert "warning: 'pid' is tracepoint:syscalls:sys_enter_kill's field" in r.stderr
