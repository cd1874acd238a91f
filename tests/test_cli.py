"""`hookql check` and `hookql hooks` as users run them."""
import subprocess

from conftest import EXAMPLES, hookql_cmd


def run(*args, stdin=None):
    return subprocess.run(hookql_cmd() + list(args), capture_output=True, text=True, input=stdin, timeout=120)


def test_check_examples_is_clean():
    for kernel in ([], ["--kernel", "6.1"], ["--kernel", "6.18"]):
        r = run("check", *kernel, *map(str, EXAMPLES))
        assert r.returncode == 0, r.stderr
        assert f"ok: {len(EXAMPLES)} scripts checked" in r.stderr


def test_check_reports_every_error_with_file_line_col_caret_and_hint(tmp_path):
    bad = tmp_path / "bad.hq"
    bad.write_text("on lsm:socket_connect where comm == 5 { count }\n"
                   "on kprobe:tcp_accept { count }\n")
    r = run("check", "--kernel", "6.1", str(bad))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == f"{bad}:1:34: error: cannot compare comm (string) with 5 (integer)"
    assert lines[1] == "   1 | on lsm:socket_connect where comm == 5 { count }"
    assert lines[2] == "     |                                  ^~"
    assert lines[3].startswith("  hint: strings compare with strings")
    assert any(l.startswith(f"{bad}:2:4: error: kprobe:tcp_accept") for l in lines)
    assert "hint: use kprobe:inet_csk_accept instead" in r.stderr
    assert lines[-1] == "2 errors (kernel 6.1 (reference))"
    assert "Traceback" not in r.stderr


def test_check_inline_and_stdin():
    assert run("check", "-e", "on lsm:socket_connect { count by comm }").returncode == 0
    r = run("check", "-", stdin="on lsm:socket_connect { count by nope }")
    assert r.returncode == 1 and r.stderr.startswith("<stdin>:1:34: error: unknown field 'nope'")


def test_check_with_a_btf_file(tmp_path):
    import lzma
    from importlib import resources
    raw = lzma.decompress((resources.files("hookql") / "data" / "btf" / "6.1.btf.xz").read_bytes())
    (tmp_path / "vmlinux.btf").write_bytes(raw)
    r = run("check", "--btf", str(tmp_path / "vmlinux.btf"), "-e", "on kprobe:inet_csk_accept { count by flags }")
    assert r.returncode == 0, r.stderr
    r = run("check", "--btf", str(tmp_path / "nope"), "-e", "on kprobe:tcp_connect { count }")
    assert r.returncode == 1 and "no such file" in r.stderr
    r = run("check", "--btf", "/etc/hostname", "-e", "on kprobe:tcp_connect { count }")
    assert r.returncode == 1 and r.stderr.startswith("hookql: error: cannot read BTF:") and "libbpf:" not in r.stderr


def test_check_usage_errors():
    r = run("check", "/nonexistent/x.hq")
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    r = run("check", "--kernel", "5.4", "-e", "on lsm:socket_connect { count }")
    assert r.returncode == 1 and "no reference BTF for kernel 5.4; shipped: 6.1, 6.18" in r.stderr


def test_hooks_lists_the_catalog():
    r = run("hooks")
    assert r.returncode == 0
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == 66  # 24 kprobe entries + 42 LSM hooks
    assert any(l.startswith("kprobe:tcp_accept ") and " NO " in l for l in rows)
    r = run("hooks", "lsm:socket_*")
    assert r.returncode == 0 and all(l.startswith("lsm:socket_") for l in r.stdout.splitlines()[1:])


def test_hooks_verbose_describes_a_hook():
    r = run("hooks", "-v", "lsm:security_socket_connect")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("lsm:socket_connect   (seed: security_socket_connect)")
    assert "Signature: int socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)" in out
    assert "소켓이 원격 주소에 연결될 때" in out
    assert "Use case: Enforce or log policy on outgoing network connections." in out
    assert "Seed names accepted: addr_len = addrlen" in out
    assert "daddr" in out and "Can deny: yes" in out


def test_hooks_verbose_on_a_missing_hook():
    r = run("hooks", "-v", "kprobe:icmp_send", "--kernel", "6.1")
    assert r.returncode == 1 and "use kprobe:__icmp_send instead" in r.stderr


def test_check_accepts_a_script_without_clauses(tmp_path):
    """A file of consts and defs is a library: it checks on its own (run and compile refuse it:
    tests/test_run_options.py)."""
    lib = tmp_path / "lib.hq"
    lib.write_text("# ports\nconst WEB = {80, 443}\ndef web(p) = p in WEB\n")
    r = run("check", str(lib))
    assert r.returncode == 0 and "ok: 1 script checked" in r.stderr, r.stderr
    assert run("check", "-e", "").returncode == 0


def test_ctrl_c_while_reading_options_is_quiet(monkeypatch):
    from hookql import cli, runargs

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(runargs, "parse", interrupted)
    assert cli.main(["run", "-e", "on a:b { count }"]) == 130
