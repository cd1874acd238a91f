"""`hookql hooks`: whether a hook exists (BTF) apart from whether it can attach here; tracepoints."""
import os
import shutil
import subprocess

import pytest

from conftest import hookql_cmd
from hookql import kernel as K
from hookql.runtime import features


def run(*args, env=None, prefix=()):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([*prefix, *hookql_cmd(), *args], capture_output=True, text=True, env=e, timeout=180)


def rows(out):
    return {l.split()[0]: l.split() for l in out.splitlines()[1:] if l.strip()}


def test_listing_shows_btf_and_attach_apart():
    r = run("hooks", env={"HOOKQL_FENTRY_PROBE": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:4] == ["HOOK", "BTF", "ATTACH", "REFERENCE"]
    t = rows(r.stdout)
    assert t["kprobe:tcp_accept"][1:3] == ["NO", "-"]
    assert t["lsm:socket_connect"][1] == "yes"
    kp = "yes" if features.has_kprobes() else "no"
    assert t["kprobe:tcp_sendmsg"][1:3] == ["yes", kp]
    assert t["lsm:socket_connect"][2] == "no"  # trampolines refused (forced): no BPF LSM either
    assert "ATTACH lsm: no:" in r.stderr and "trampolines" in r.stderr
    assert "hookql hooks 'tracepoint:*'" in r.stderr


def test_listing_on_a_reference_kernel_does_not_guess_attach():
    t = rows(run("hooks", "--kernel", "6.1").stdout)
    assert t["kprobe:tcp_sendmsg"][1:3] == ["yes", "-"]


def test_attach_support_probes_the_kernel(running):
    if os.geteuid() != 0:
        pytest.skip("probing trampolines needs root")
    verdict = K.fentry_works(running)
    assert verdict is not None and K.fentry_works(running) is verdict  # probed once per process
    kp = K.attach_support(running, "kprobe")
    if not features.has_kprobes():
        assert kp.verdict == ("yes" if verdict[0] else "no") and "kprobes" in kp.reason
    lsms = features.active_lsms()
    lsm = K.attach_support(running, "lsm")
    if lsms is not None and "bpf" not in lsms:
        assert lsm.verdict == "no" and "lsm=" in lsm.reason
    elif lsms is not None:
        assert lsm.verdict == ("yes" if verdict[0] else "no")
    assert K.attach_support(K.reference("6.1"), "lsm").verdict == "-"


def test_without_privileges_attach_is_unknown_not_guessed():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop capabilities")
    r = run("hooks", "lsm:socket_*", prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-all"))
    assert r.returncode == 0, r.stderr
    lsms = features.active_lsms()
    for line in r.stdout.splitlines()[1:]:
        if lsms is None or "bpf" in lsms:
            assert "unknown (needs root)" in line
        else:
            assert " no " in line
    r = run("hooks", "kprobe:tcp_sendmsg", prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-all"))
    assert ("yes" if features.has_kprobes() else "unknown (needs root)") in r.stdout


def test_tracepoints_are_listed_by_pattern(tmp_path):
    r = run("hooks", "tracepoint:syscalls:sys_enter_getsock*")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tracepoint:syscalls:sys_enter_getsockopt", "tracepoint:syscalls:sys_enter_getsockname"] \
        or sorted(r.stdout.split()) == ["tracepoint:syscalls:sys_enter_getsockname", "tracepoint:syscalls:sys_enter_getsockopt"]
    r = run("hooks", "t:sched_switch")
    assert r.returncode == 0 and r.stdout.split()[0].endswith(":sched_switch")
    r = run("hooks", "tracepoint:nope_nothing*")
    assert r.returncode == 1 and "no tracepoint matches" in r.stderr
    # without tracefs: from BTF; categories only for syscalls
    env = {"HOOKQL_TRACEFS": str(tmp_path / "none")}
    r = run("hooks", "tracepoint:*:sched_switch", env=env)
    assert r.returncode == 0 and r.stdout.split() == ["tracepoint:?:sched_switch"]
    assert "BTF" in r.stderr and "categories" in r.stderr
    r = run("hooks", "tracepoint:*", "--kernel", "6.1")
    n = len(r.stdout.split())
    assert r.returncode == 0 and n > 1000 and "tracepoint:syscalls:sys_exit_getsockopt" in r.stdout.split()


def test_default_listing_stays_the_catalog():
    r = run("hooks")
    assert not any(l.startswith("tracepoint:") for l in r.stdout.splitlines())
