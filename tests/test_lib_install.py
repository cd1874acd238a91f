"""Versioned libraries from real git repos (git init, commits, tags) over
file:// URLs: install, lock, upgrades, transitive dependencies, conflicts,
--locked, tampering, version requirements, and a real run."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import hookql_cmd

WORKLOAD = Path(__file__).with_name("workload.py")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), **GIT_ENV)


def git(cwd, *args, env):
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def release(repo: Path, version: str, files: dict[str, str], env, deps: str = "", needs: str = "") -> None:
    """Commit files as the library at `version` and tag it vVERSION."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main", env=env)
    name = repo.name
    (repo / "hookql.toml").write_text(f'[package]\nname = "{name}"\nversion = "{version}"\n{needs}\n'
                                      f"[dependencies]\n{deps}\n")
    for f, text in files.items():
        (repo / f).write_text(text)
    git(repo, "add", "-A", env=env)
    git(repo, "commit", "-q", "-m", f"v{version}", env=env)
    git(repo, "tag", f"v{version}", env=env)


def project(tmp_path, deps: str) -> Path:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "hookql.toml").write_text(f'[package]\nname = "app"\nversion = "0.1.0"\n\n[dependencies]\n{deps}\n')
    return app


def hq(app, *args, env):
    return subprocess.run(hookql_cmd() + list(args), cwd=app, env=env, capture_output=True, text=True, timeout=120)


def locked(app) -> dict:
    import tomllib
    return {l["name"]: l for l in tomllib.loads((app / "hookql.lock").read_text())["library"]}


def test_install_lock_and_upgrade_within_and_across_majors(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const WEB = {80}\n"}, env)
    release(net, "1.1.0", {"lib.hq": "const WEB = {80, 443}\n"}, env)
    release(net, "2.0.0", {"lib.hq": "const PORTS = {80, 443}\n"}, env)
    app = project(tmp_path, "")
    r = hq(app, "lib", "add", "netlib", "--git", f"file://{net}", "--version", "^1.0", env=env)
    assert r.returncode == 0, r.stderr
    lock = locked(app)["netlib"]
    assert lock["version"] == "1.1.0" and len(lock["commit"]) == 40 and lock["hash"].startswith("sha256:")
    assert 'netlib = { git = "file://' in (app / "hookql.toml").read_text()
    (app / "s.hq").write_text("use netlib\non lsm:socket_connect where dport in netlib.WEB { count }\n")
    assert hq(app, "check", "--kernel", "6.18", "s.hq", env=env).returncode == 0
    assert hq(app, "lib", "list", env=env).stdout.startswith("netlib 1.1.0  file://")
    # a new minor release: install keeps the lock, update moves to it
    release(net, "1.2.0", {"lib.hq": "const WEB = {80, 443, 8080}\n"}, env)
    assert hq(app, "lib", "install", env=env).returncode == 0 and locked(app)["netlib"]["version"] == "1.1.0"
    assert hq(app, "lib", "update", "netlib", env=env).returncode == 0 and locked(app)["netlib"]["version"] == "1.2.0"
    # across the major version: the range changes, and so does the API
    toml = (app / "hookql.toml").read_text().replace('version = "^1.0"', 'version = "^2"')
    (app / "hookql.toml").write_text(toml)
    assert hq(app, "lib", "install", env=env).returncode == 0 and locked(app)["netlib"]["version"] == "2.0.0"
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and "netlib.WEB" in r.stderr  # v2 renamed it: the error names the use


def test_transitive_dependency_and_conflict(tmp_path, env):
    base, ranges = tmp_path / "base", None
    release(base, "1.0.0", {"lib.hq": "def private(a) = a in 10.0.0.0/8\n"}, env)
    release(base, "2.0.0", {"lib.hq": "def private(a) = a in 10.0.0.0/8 or a in 192.168.0.0/16\n"}, env)
    mid = tmp_path / "mid"
    release(mid, "1.0.0", {"lib.hq": "use base\ndef outside(a) = not base.private(a)\n"}, env,
            deps=f'base = {{ git = "file://{base}", version = "^1" }}')
    app = project(tmp_path, f'mid = {{ git = "file://{mid}", version = "^1" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 0, r.stderr
    assert {k: v["version"] for k, v in locked(app).items()} == {"base": "1.0.0", "mid": "1.0.0"}
    (app / "s.hq").write_text("use mid\non lsm:socket_connect where mid.outside(daddr) { count }\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 0, r.stderr
    # the app now also wants base ^2: no version satisfies both
    (app / "hookql.toml").write_text((app / "hookql.toml").read_text() +
                                     f'base = {{ git = "file://{base}", version = "^2" }}\n')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1
    assert "conflicting requirements for 'base'" in r.stderr
    assert "app requires ^2" in r.stderr and "app -> mid requires ^1" in r.stderr and "tags: v1.0.0, v2.0.0" in r.stderr


def test_no_tag_satisfies_lists_the_tags(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{net}", version = "^3" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "no tag of 'netlib' satisfies ^3 (required by app); tags: v1.0.0" in r.stderr


def test_locked_mode_for_ci(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{net}", version = "^1" }}')
    r = hq(app, "lib", "install", "--locked", env=env)
    assert r.returncode == 1 and "there is no hookql.lock" in r.stderr
    assert hq(app, "lib", "install", env=env).returncode == 0
    fresh = dict(env, XDG_CACHE_HOME=str(tmp_path / "ci-cache"))  # a CI machine: empty cache
    assert hq(app, "lib", "install", "--locked", env=fresh).returncode == 0
    (app / "hookql.toml").write_text((app / "hookql.toml").read_text().replace('"^1"', '"^1.0"'))
    r = hq(app, "lib", "install", "--locked", env=env)
    assert r.returncode == 1 and "hookql.lock is stale" in r.stderr


def test_tampered_cache_is_caught(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const WEB = {80}\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{net}", version = "^1" }}')
    assert hq(app, "lib", "install", env=env).returncode == 0
    cached = next(Path(env["XDG_CACHE_HOME"]).glob("hookql/libs/*/*/lib.hq"))
    cached.write_text("const WEB = {80, 22}\n")
    (app / "s.hq").write_text("use netlib\non lsm:socket_connect where dport in netlib.WEB { count }\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and "does not match hookql.lock" in r.stderr and "it was modified" in r.stderr


def test_library_needing_a_newer_hookql_or_kernel(tmp_path, env):
    new = tmp_path / "futurelib"
    release(new, "1.0.0", {"lib.hq": "const X = 1\n"}, env, needs='hookql = ">=9.0"')
    app = project(tmp_path, f'futurelib = {{ git = "file://{new}", version = "^1" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "library 'futurelib' 1.0.0 needs hookql >=9.0; this is hookql" in r.stderr
    k = tmp_path / "kernlib"
    release(k, "1.0.0", {"lib.hq": "const X = 1\n"}, env, needs='kernel = "6.5"')
    app2 = tmp_path / "app2"
    app2.mkdir()
    (app2 / "hookql.toml").write_text(f'[dependencies]\nkernlib = {{ git = "file://{k}", version = "^1" }}\n')
    assert hq(app2, "lib", "install", env=env).returncode == 0
    (app2 / "s.hq").write_text("use kernlib\non lsm:socket_connect where dport == kernlib.X { count }\n")
    r = hq(app2, "check", "--kernel", "6.1", "s.hq", env=env)
    assert r.returncode == 1 and "library 'kernlib' 1.0.0 needs kernel 6.5.0 or newer; this is 6.1" in r.stderr
    assert hq(app2, "check", "--kernel", "6.18", "s.hq", env=env).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_script_using_a_git_library_runs_for_real(tmp_path, env):
    comm = "hq" + uuid.uuid4().hex[:8]
    lib = tmp_path / "optlib"
    release(lib, "1.0.0", {"lib.hq": "def rcvbuf(o) = o == SO_RCVBUF\n"}, env)
    app = project(tmp_path, f'optlib = {{ git = "file://{lib}", version = "^1" }}')
    assert hq(app, "lib", "install", env=env).returncode == 0
    (app / "s.hq").write_text(f'use optlib\non tracepoint:syscalls:sys_enter_getsockopt where comm == "{comm}" '
                              "and optlib.rcvbuf(optname) { count by comm }\n")
    r = hq(app, "run", "--format", "json", "s.hq", "-c", f"{sys.executable} {WORKLOAD} {comm} 2 7", env=env)
    assert r.returncode == 0, r.stderr
    (agg,) = [json.loads(l) for l in r.stdout.splitlines()]
    assert agg["rows"] == [{"key": {"comm": comm}, "value": 7}]


@pytest.mark.skipif(os.geteuid() != 0, reason="hookql test loads BPF programs")
def test_a_git_librarys_tests_run_with_deps_and_not_on_install(tmp_path, env):
    ran = tmp_path / "ran"
    lib = tmp_path / "optlib"
    case = (f'test "rcvbuf" {{\n    use optlib\n    on tracepoint:syscalls:sys_enter_getsockopt where '
            f'optlib.rcvbuf(optname) {{ count }}\n    run "echo x >> {ran}; {sys.executable} -c \'import socket; '
            f'socket.socket().getsockopt(1, 8)\'"\n    expect count == 1\n}}\n')
    release(lib, "1.0.0", {"lib.hq": "def rcvbuf(o) = o == SO_RCVBUF\n", "lib.hqt": case}, env)
    app = project(tmp_path, f'optlib = {{ git = "file://{lib}", version = "^1" }}')
    assert hq(app, "lib", "install", env=env).returncode == 0
    assert not ran.exists()  # installing never runs a library's tests
    (app / "a.hq").write_text("on tracepoint:syscalls:sys_enter_getsockopt { count }\n")
    (app / "a.hqt").write_text(f'test "a" {{\n    run "true"\n    expect count == 0\n}}\n')
    r = hq(app, "test", env=env)
    assert r.returncode == 0 and "a.hqt: a" in r.stdout and "rcvbuf" not in r.stdout, r.stdout + r.stderr
    r = hq(app, "test", "--deps", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS " in r.stdout and "lib.hqt: rcvbuf" in r.stdout and ran.read_text() == "x\n", r.stdout
