"""`hookql serve` under attack from a local user who can only reach its HTTP port: slow clients, connection
floods, and a SIGHUP when the service has no descriptor left.  Natively (tracepoints), as root."""
import os
import resource
import signal
import socket
import subprocess
import time

from test_serve import COMM, Serve, native, reload_script, serve, serves, wait_for  # noqa: F401 - fixture

from hookql.serve.http import MAX_CLIENTS


def _script(tmp_path):
    (tmp_path / "a.hq").write_text(reload_script(f'comm == "{COMM}a"'))
    return str(tmp_path / "a.hq")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _closed(c: socket.socket) -> bool:
    """True once the server has closed c (EOF, reset or broken pipe on a trickled byte)."""
    try:
        c.sendall(b"X")
        c.setblocking(False)
        try:
            return c.recv(65536) == b""
        except BlockingIOError:
            return False
        finally:
            c.setblocking(True)
    except OSError:
        return True


@native
def test_slow_trickle_is_dropped_and_not_logged(tmp_path, serves):
    """A request line trickled a byte a second used to hold its thread forever (the 10 s was per read);
    a client that idled 10 s put a traceback in the log."""
    s = serve(serves, tmp_path, _script(tmp_path))
    idle = socket.create_connection(("127.0.0.1", s.port))
    c = socket.create_connection(("127.0.0.1", s.port))
    c.sendall(b"GET /metrics HTTP/1.0\r\nX-")
    wait_for(lambda: time.sleep(1) or _closed(c), "the trickling client to be dropped", timeout=90)
    wait_for(lambda: _closed(idle), "the idle client to be dropped", timeout=90)
    assert s.get("/metrics")[0] == 200
    assert "Traceback" not in s.log() and "Exception" not in s.log(), s.log()
    assert s.stop() == 0


@native
def test_connection_flood_keeps_scrapes_answered_and_fds_bounded(tmp_path, serves):
    """Thousands of held-open connections used to take a thread and a descriptor each, until the service
    (1024 descriptors under systemd) could accept no scrape and its SIGHUP crashed it."""
    s = serve(serves, tmp_path, _script(tmp_path))
    base = _open_fds(s.proc.pid)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(4 * MAX_CLIENTS + 100, soft - 200)
    held = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        c.sendall(b"GET /metrics HTTP/1.0\r\n")  # half a request, never finished
        held.append(c)
    try:
        status, body = s.get("/metrics")
        assert status == 200 and b"hookql_build_info" in body
        assert _open_fds(s.proc.pid) <= base + MAX_CLIENTS + 8
        assert sum(1 for _ in os.listdir(f"/proc/{s.proc.pid}/task")) <= MAX_CLIENTS + 16
    finally:
        for c in held:
            c.close()
    assert s.proc.poll() is None and "Traceback" not in s.log(), s.log()
    assert s.stop() == 0


@native
def test_sighup_without_descriptors_keeps_serving(tmp_path, serves):
    """A reload that cannot list its directory (EMFILE) used to end the service ("internal error")."""
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "a.hq").write_text(reload_script(f'comm == "{COMM}a"'))
    s = serve(serves, tmp_path, str(d))
    pid = s.proc.pid
    now = _open_fds(pid)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={now}:"], check=True)  # the soft limit only
    (d / "a.hq").write_text(reload_script(f'comm == "{COMM}b"'))
    s.hup(expect="reload failed")
    assert "internal error" not in s.log() and s.proc.poll() is None
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:"], check=True)
    s.hup()
    assert s.get("/metrics")[0] == 200
    assert s.stop() == 0


@native
def test_head_has_no_body(tmp_path, serves):
    s = serve(serves, tmp_path, _script(tmp_path))
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as c:
        c.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200" and body == b"", out[:200]
    assert s.stop() == 0


@native
def test_names_that_would_collide_never_break_the_exposition(tmp_path, serves):
    """A script can name an aggregation like a self-metric (`as reloads`) or two so they are one counter family
    (`as x`, `as x_total`): two families of one name make Prometheus reject the whole scrape.  The later one
    gets _2; promtool accepts the text."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "b.hq").write_text(f'on tracepoint:syscalls:sys_enter_getsid where comm == "{COMM}n" '
                            '{ count as reloads; count as x; count as x_total }\n')
    (d / "c.hq").write_text(f'on tracepoint:syscalls:sys_enter_getsid where comm == "{COMM}n" {{ count by comm as x }}\n')
    s = serve(serves, tmp_path, str(d))
    fams = s.families()
    assert {"hookql_reloads", "hookql_reloads_2", "hookql_x", "hookql_x_2", "hookql_x_3"} <= set(fams), sorted(fams)
    body = s.get("/metrics")[1]
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert b"second HELP" not in p.stdout + p.stderr and b"error" not in (p.stdout + p.stderr).lower(), p
