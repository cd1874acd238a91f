"""Tracepoint fields without tracefs: read from the kernel's BTF (not root, reference kernels)."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, errors, hookql_cmd
from hookql.catalog import Catalog, btf_tp_format, parse_tp_format, ProbeError

CAT = Catalog.load()
README_TP = "on tracepoint:syscalls:sys_enter_getsockopt { count by comm; hist(optname) }"
_RAW = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d)")
SAMPLE = ["syscalls:sys_enter_getsockopt", "syscalls:sys_exit_getsockopt", "syscalls:sys_enter_openat",
          "syscalls:sys_enter_read", "syscalls:sys_enter_connect", "syscalls:sys_enter_getpid",
          "raw_syscalls:sys_enter", "sched:sched_switch", "sched:sched_process_exec", "sched:sched_wakeup",
          "sched:sched_process_fork", "sock:inet_sock_set_state", "skb:kfree_skb", "irq:irq_handler_entry",
          "net:netif_receive_skb", "tcp:tcp_retransmit_skb", "block:block_rq_issue", "signal:signal_generate"]


def raw_fields(text):
    """(name, offset, size, signed) of a format text, common_* left out."""
    out = []
    for m in _RAW.finditer(text):
        name = re.search(r"([A-Za-z_]\w*)(\[\d*\])?$", m["decl"].strip())[1]
        if not name.startswith("common_"):
            out.append((name, int(m["off"]), int(m["size"]), int(m["signed"])))
    return out


@pytest.fixture
def no_tracefs(monkeypatch, tmp_path):
    monkeypatch.setenv("HOOKQL_TRACEFS", str(tmp_path / "not-mounted"))


def test_btf_fields_agree_with_tracefs(running, tracefs):
    checked = 0
    for tp in SAMPLE:
        cat, name = tp.split(":")
        fmt = tracefs / "events" / cat / name / "format"
        if not fmt.exists():
            continue
        text = fmt.read_text()
        made = btf_tp_format(running, cat, name)
        assert made is not None, tp
        assert raw_fields(made) == raw_fields(text), tp
        a = {f.name: f.ty for f in parse_tp_format(text)}
        b = {f.name: f.ty for f in parse_tp_format(made)}
        assert {n: (t.kind, t.bits, t.signed, t.display) for n, t in a.items()} == \
               {n: (t.kind, t.bits, t.signed, t.display) for n, t in b.items()}, tp
        checked += 1
    assert checked >= 10


def test_btf_fields_agree_with_tracefs_for_nearly_all_events(running, tracefs):
    """Where several event classes share one prototype BTF cannot always tell which one an
    event uses (a few dozen of ~2300 events on 6.18): most must agree, all must resolve."""
    same = total = 0
    for fmt in sorted((tracefs / "events").glob("*/*/format")):
        cat, name = fmt.parent.parent.name, fmt.parent.name
        if cat == "ftrace":
            continue
        total += 1
        try:
            made = btf_tp_format(running, cat, name)
        except ProbeError:
            continue
        same += made is not None and raw_fields(made) == raw_fields(fmt.read_text())
    assert total and same / total > 0.97, (same, total)


def test_running_kernel_without_tracefs_reads_btf(running, no_tracefs):
    assert running.tracefs() is None
    hook = CAT.resolve("tracepoint", ["syscalls", "sys_enter_getsockopt"], running)
    assert hook.tp_fields_known and "BTF" in hook.tp_source
    f = hook.fields
    assert [n for n in f if f[n].kind == "tp"] == ["__syscall_nr", "fd", "level", "optname", "optval", "optlen"]
    assert (f["optname"].offset, f["optname"].ty.bits, f["optname"].ty.signed) == (32, 64, False)
    assert errors(README_TP, running) == []
    hook = CAT.resolve("tracepoint", ["sock", "inet_sock_set_state"], running)
    assert hook.fields["daddr"].ty.kind == "addr" and hook.fields["newstate"].ty.signed


@pytest.mark.parametrize("version", ["6.1", "6.18"])
def test_reference_kernels_check_tracepoint_fields(version, request):
    k = request.getfixturevalue("k61" if version == "6.1" else "k618")
    assert errors(README_TP, k) == []
    assert errors("on tracepoint:sched:sched_process_exec { count by comm, pid, old_pid }", k) == []
    assert errors("on tracepoint:syscalls:sys_exit_getsockopt where ret < 0 { count by ret }", k) == []
    e = errors("on tracepoint:syscalls:sys_enter_getsockopt { count by nope }", k)
    assert len(e) == 1 and "optname" in e[0].message
    e = errors("on tracepoint:syscalls:sys_enter_getsockop { count }", k)
    assert len(e) == 1 and "tracepoint:syscalls:sys_enter_getsockopt" in e[0].hint
    e = errors("on tracepoint:sched:sched_swich { count }", k)
    assert len(e) == 1 and "sched_switch" in e[0].hint


def _cli(args, env_extra, tmp_path, prefix=()):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), **env_extra)
    return subprocess.run([*prefix, *hookql_cmd(), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=180)


def _unreadable_tracefs(tmp_path):
    """A tracefs stand-in as the real one is to a user: mode 0700, someone else's."""
    d = tmp_path / "tracing"
    (d / "events" / "syscalls").mkdir(parents=True)
    for p in (d / "events" / "syscalls", d / "events", d):
        os.chown(p, 65534, 65534)
        p.chmod(0o700)
    return d


def test_cli_without_tracefs_access(tmp_path):
    """check, compile and hooks -v of the README's tracepoint script, as a process that cannot
    read tracefs: root with every capability dropped (no CAP_DAC_OVERRIDE), tracefs someone else's."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("needs root, setpriv and the running kernel's BTF")
    (tmp_path / "cache").mkdir()
    env = {"HOOKQL_TRACEFS": str(_unreadable_tracefs(tmp_path))}
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-all")
    r = _cli(["check", "-e", README_TP], env, tmp_path, drop)
    assert r.returncode == 0, r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    r = _cli(["compile", "-e", README_TP, "-o", str(tmp_path / "o.bpf.o")], env, tmp_path, drop)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.bpf.o").stat().st_size > 0
    r = _cli(["hooks", "-v", "tracepoint:syscalls:sys_enter_getsockopt"], env, tmp_path, drop)
    assert r.returncode == 0, r.stderr
    assert "optname" in r.stdout and "Fields from: BTF" in r.stdout
    r = _cli(["check", "--kernel", "6.1", "-e", README_TP], env, tmp_path, drop)
    assert r.returncode == 0, r.stderr


def test_cli_as_nobody(tmp_path):
    """A real user without privileges, when the interpreter is one it can run."""
    exe = hookql_cmd()
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
              "env", f"HOME={home}", f"XDG_CACHE_HOME={home}/cache", *exe]
    probe = subprocess.run(nobody + ["--version"], capture_output=True, text=True, cwd=home)
    if probe.returncode != 0:  # exactly as the run below: e.g. a Python under /root, which nobody cannot reach
        pytest.skip(f"user nobody cannot run this Python ({probe.stderr.strip()[:80]})")
    r = subprocess.run(nobody + ["check", "-e", README_TP], capture_output=True, text=True, cwd=home, timeout=180)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="root reading a directory another user wrote")
def test_a_tracefs_another_user_wrote_is_not_read(tmp_path):
    """`sudo -E` keeps HOOKQL_TRACEFS: root must not take a user's format files for the kernel's."""
    fake = tmp_path / "alice" / "tracefs"
    fmt = fake / "events" / "syscalls" / "sys_enter_getsockopt" / "format"
    fmt.parent.mkdir(parents=True)
    fmt.write_text("name: sys_enter_getsockopt\nID: 1\nformat:\n"
                   "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
                   "\tfield:long pwned;\toffset:4000;\tsize:8;\tsigned:1;\n")
    for d in [tmp_path / "alice", *[p for p in fake.rglob("*")], fake]:
        os.chown(d, 65534, 65534)
    r = _cli(["check", "-e", "on tracepoint:syscalls:sys_enter_getsockopt { count by pwned }"],
             {"HOOKQL_TRACEFS": str(fake)}, tmp_path)
    assert r.returncode == 1 and "pwned" in r.stderr and "optname" in r.stderr, r.stderr  # BTF's fields
