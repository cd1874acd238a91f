"""Libraries and `use "PATH"` against hostile input (issue 11: S3, S4, S5, resolution).

Real attacks, real git repos (git init, commit, tag over file paths), the real
`hookql` command: a dependency URL that is a git option (`--upload-pack=CMD`)
or runs a command (`ext::`), symbolic links out of a library, `use` of files
outside the project, and dependency graphs that used to take exponential time
or were misreported as cycles."""
import json
import os
import stat
import tomllib
import uuid
from pathlib import Path

import pytest

from hookql.checker import FileResolver
from hookql.libs import git as G
from hookql.libs.errors import InstallError
from hookql.pipeline import check_source
from hookql.source import Source

from test_lib_install import GIT_ENV, git, hq, locked, project, release


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), **GIT_ENV)


@pytest.fixture
def marker():
    """A file that must never be created; removed afterwards if it was."""
    path = Path(f"/tmp/PWNED_{uuid.uuid4().hex}")
    yield path
    if path.exists():
        path.unlink()


def secret() -> str:
    return "HQSECRET_" + uuid.uuid4().hex


def in_git_repo_with_origin(app: Path, tmp_path: Path, env) -> None:
    """The project is a git checkout with a remote: `git ls-remote --upload-pack=CMD` (no URL) then runs
    CMD against origin, which is how the S3 attack ran commands."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin), env=env)
    git(app, "init", "-q", "-b", "main", env=env)
    git(app, "remote", "add", "origin", str(origin), env=env)


def cache_files(env) -> list[Path]:
    root = Path(env["XDG_CACHE_HOME"])
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()] if root.exists() else []


# -- S3: git URLs --------------------------------------------------------------------------------
def test_upload_pack_url_in_the_project_manifest_runs_nothing(tmp_path, env, marker):
    app = project(tmp_path, f'evil = {{ git = "--upload-pack=touch {marker};", version = "*" }}')
    in_git_repo_with_origin(app, tmp_path, env)
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and not marker.exists()
    assert f"{app / 'hookql.toml'}: dependency 'evil': git URL '--upload-pack=touch {marker};' starts with '-'" \
        in r.stderr
    assert "write an https://, ssh://, git:// or file:// URL" in r.stderr
    (app / "s.hq").write_text("use evil\non lsm:socket_connect { count }\n")  # `use` reads the manifest too
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and "starts with '-'" in r.stderr and not marker.exists()


def test_upload_pack_url_in_a_transitive_library_manifest_runs_nothing(tmp_path, env, marker):
    mid = tmp_path / "mid"
    release(mid, "1.0.0", {"lib.hq": "const X = 1\n"}, env,
            deps=f'evil = {{ git = "--upload-pack=touch {marker};", version = "*" }}')
    app = project(tmp_path, f'mid = {{ git = "file://{mid}", version = "^1" }}')
    in_git_repo_with_origin(app, tmp_path, env)
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and not marker.exists()
    assert "library 'mid' 1.0.0:" in r.stderr and "hookql.toml: dependency 'evil'" in r.stderr
    assert "starts with '-'" in r.stderr and not (app / "hookql.lock").exists()


def test_lib_add_with_an_option_as_url_runs_nothing_and_leaves_the_manifest(tmp_path, env, marker):
    app = project(tmp_path, "")
    in_git_repo_with_origin(app, tmp_path, env)
    before = (app / "hookql.toml").read_bytes()
    r = hq(app, "lib", "add", "evil", f"--git=--upload-pack=touch {marker};", env=env)
    assert r.returncode == 1 and not marker.exists()
    assert "starts with '-'" in r.stderr
    assert (app / "hookql.toml").read_bytes() == before


@pytest.mark.parametrize("url, why", [
    ("ext::sh -c touch% {marker}", "transport::address"),
    ("fd::3", "transport::address"),
    ("http://example.invalid/x.git", "http://"),
    ("relative/repo", "neither a URL nor an absolute path"),
    ("ssh://-oProxyCommand=touch%20{marker}/x", "starts with '-'"),
    ("file:///tmp/a\nb", "control characters"),
])
def test_dangerous_urls_are_refused_in_the_manifest_and_in_lib_add(tmp_path, env, marker, url, why):
    url = url.format(marker=marker)
    app = project(tmp_path, "")
    before = (app / "hookql.toml").read_bytes()
    r = hq(app, "lib", "add", "x", f"--git={url}", env=env)
    assert r.returncode == 1 and why in r.stderr and not marker.exists()
    assert (app / "hookql.toml").read_bytes() == before
    (app / "hookql.toml").write_text(before.decode() + f"x = {{ git = {json.dumps(url)}, version = \"*\" }}\n")
    r = hq(app, "lib", "install", env=dict(env, GIT_ALLOW_PROTOCOL="ext:fd:file:http"))
    assert r.returncode == 1 and why in r.stderr and "dependency 'x'" in r.stderr and not marker.exists()


def test_the_projects_own_git_config_takes_no_part(tmp_path, env, marker):
    """git runs outside the project: a checkout's .git/config (core.sshCommand) cannot run commands."""
    app = project(tmp_path, 'x = { git = "ssh://example.invalid/x.git", version = "*" }')
    git(tmp_path, "init", "-q", str(app), env=env)
    git(app, "config", "core.sshCommand", f"touch {marker}; false", env=env)
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "git ls-remote" in r.stderr and not marker.exists()


def test_git_refuses_ext_even_when_the_environment_allows_it(tmp_path, marker, monkeypatch):
    """The allowlist is passed to git itself, below the URL checks: ext:: never runs."""
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "ext")
    with pytest.raises(InstallError, match="not allowed"):
        G.run("ls-remote", "--", f"ext::sh -c touch% {marker}", cwd=tmp_path)
    assert not marker.exists()


def test_url_checks():
    ok = ["https://github.com/o/r.git", "ssh://git@host/o/r", "git://host/r", "file:///srv/r", "/srv/r",
          "git@github.com:o/r.git", "host:o/r"]
    bad = ["--upload-pack=x", "-x", "ext::sh", "fd::1", "http://h/r", "ftp://h/r", "a b", "r\x1b[2J", "", "../r",
           "ssh://-oProxyCommand=x/r", "ssh://-oProxyCommand=x@h/r", "-host:r", "git@-oProxy:r", "EXT::x", 5]
    assert [u for u in ok if G.check_url(u)] == []
    assert [u for u in bad if not G.check_url(u)] == []


def test_lib_add_quotes_toml_and_refuses_bad_names_and_ranges(tmp_path, env):
    net = tmp_path / 'q"u ote' / "netlib"  # a quote in the URL: pasted in, it would end the TOML string
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, "")
    before = (app / "hookql.toml").read_bytes()
    for args in (["x\ny", "--git", "/srv/r"], ['a = 1\n[package]\nb', "--git", "/srv/r"],
                 ["ok", "--git", "/srv/r", "--version", '^1" }\n[x]\ny = { z = "'], ["ok", "--git", "/srv/r",
                                                                                   "--version", "banana"]):
        r = hq(app, "lib", "add", *args, env=env)
        assert r.returncode == 1 and "hookql lib: error:" in r.stderr, args
        assert (app / "hookql.toml").read_bytes() == before, args
    # a URL with a space is refused (git URLs have none: write %20)...
    r = hq(app, "lib", "add", "netlib", "--git", str(net), env=env)
    assert r.returncode == 1 and "whitespace" in r.stderr and (app / "hookql.toml").read_bytes() == before
    # ...but a quote is just a character, written as a proper TOML string
    quoted = tmp_path / 'q"uote' / "netlib"
    net.parent.rename(quoted.parent)
    r = hq(app, "lib", "add", "netlib", "--git", f"file://{quoted}", "--version", "^1", env=env)
    assert r.returncode == 0, r.stderr
    dep = tomllib.loads((app / "hookql.toml").read_text())["dependencies"]["netlib"]
    assert dep == {"git": f"file://{quoted}", "version": "^1"}
    assert locked(app)["netlib"]["git"] == f"file://{quoted}"


def test_failed_lib_add_leaves_the_manifest_byte_for_byte(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, "")
    (app / "hookql.toml").write_text((app / "hookql.toml").read_text() + "# a comment the user wrote\n")
    before = (app / "hookql.toml").read_bytes()
    r = hq(app, "lib", "add", "netlib", "--git", f"file://{net}", "--version", "^3", env=env)
    assert r.returncode == 1 and "no tag of 'netlib' satisfies ^3" in r.stderr
    assert (app / "hookql.toml").read_bytes() == before and not (app / "hookql.lock").exists()
    r = hq(app, "lib", "add", "netlib", "--git", f"file://{tmp_path}/nothing-here", env=env)
    assert r.returncode == 1 and (app / "hookql.toml").read_bytes() == before
    assert not [p for p in app.iterdir() if p.name.startswith(".hookql")]  # no temporary file left behind
    r = hq(app, "lib", "add", "netlib", "--git", f"file://{net}", env=env)
    assert r.returncode == 0 and "# a comment the user wrote" in (app / "hookql.toml").read_text()


def test_a_damaged_lock_is_not_trusted(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{net}", version = "^1" }}')
    assert hq(app, "lib", "install", env=env).returncode == 0
    text = (app / "hookql.lock").read_text()
    commit = locked(app)["netlib"]["commit"]
    for bad in (text.replace(commit, "../../../../etc"), text.replace(f"file://{net}", "--upload-pack=x")):
        (app / "hookql.lock").write_text(bad)
        r = hq(app, "lib", "install", "--locked", env=env)
        assert r.returncode == 1 and "hookql.lock is damaged" in r.stderr


# -- S4: symbolic links in libraries --------------------------------------------------------------
def outside_files(tmp_path) -> tuple[Path, Path, str]:
    """A file and a directory outside every library, holding a secret."""
    s = secret()
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "secret.hq").write_text(f"{s} this is not hookql\n")
    (out / "dir" / "lib.hq").write_text(f"{s} nor this\n")
    return out / "secret.hq", out / "dir", s


@pytest.mark.parametrize("links", [
    {"lib.hq": "FILE"},                        # the root module is a link to a file elsewhere
    {"lib.hq": "/etc/shadow"},                # the original report
    {"home": "DIR", "lib.hq": None},         # a directory link out
    {"up.hq": "../../outside/secret.hq", "lib.hq": None},  # relative, escaping with ..
], ids=["file", "shadow", "dir", "dotdot"])
def test_git_library_with_links_out_is_refused_and_nothing_is_copied(tmp_path, env, links):
    secret_file, secret_dir, s = outside_files(tmp_path)
    lib = tmp_path / "libs" / "netlib"
    lib.mkdir(parents=True)
    git(lib, "init", "-q", "-b", "main", env=env)
    files = {}
    for name, target in links.items():
        if target is None:
            files[name] = "const X = 1\n"
        else:
            os.symlink({"FILE": str(secret_file), "DIR": str(secret_dir)}.get(target, target), lib / name)
    release(lib, "1.0.0", files, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{lib}", version = "^1" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1, r.stderr
    name = next(n for n, t in links.items() if t is not None)
    assert f"library 'netlib' 1.0.0: {name} is a symbolic link to" in r.stderr and "outside the library" in r.stderr
    assert s not in r.stdout + r.stderr
    for f in cache_files(env):
        assert s.encode() not in f.read_bytes(), f
    assert not list(Path(env["XDG_CACHE_HOME"]).glob("hookql/libs/*/*"))  # nothing was stored
    assert not list(Path(env["XDG_CACHE_HOME"]).glob("hookql/libs/.fetch-*"))  # the private clone is gone


def test_git_library_with_links_inside_installs_and_keeps_them_as_links(tmp_path, env):
    lib = tmp_path / "netlib"
    lib.mkdir()
    git(lib, "init", "-q", "-b", "main", env=env)
    (lib / "real").mkdir()
    (lib / "real" / "ports.hq").write_text("const WEB = {80, 443}\n")
    os.symlink("real/ports.hq", lib / "ports.hq")
    os.symlink("real", lib / "alias")
    release(lib, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{lib}", version = "^1" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 0, r.stderr
    (src,) = Path(env["XDG_CACHE_HOME"]).glob("hookql/libs/*/*")
    assert os.readlink(src / "ports.hq") == "real/ports.hq" and (src / "alias").is_symlink()
    libs = Path(env["XDG_CACHE_HOME"]) / "hookql" / "libs"
    assert stat.S_IMODE(libs.stat().st_mode) == 0o700
    (app / "s.hq").write_text("use netlib.ports\nuse netlib.alias.ports\n"
                              "on lsm:socket_connect where dport in netlib.ports.WEB { count }\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 0, r.stderr
    # the lock's hash covers the link itself: pointing it elsewhere inside is caught
    os.unlink(src / "ports.hq")
    os.symlink("lib.hq", src / "ports.hq")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and "does not match hookql.lock" in r.stderr


def path_library(tmp_path, links: dict[str, str], files: dict[str, str] | None = None) -> Path:
    app = project(tmp_path, 'mylib = { path = "mylib" }')
    lib = app / "mylib"
    lib.mkdir()
    for name, text in (files or {}).items():
        (lib / name).write_text(text)
    for name, target in links.items():
        os.symlink(target, lib / name)
    return app


def test_path_library_whose_root_module_links_out_is_an_error_at_the_use(tmp_path, env, k618):
    secret_file, secret_dir, s = outside_files(tmp_path)
    app = path_library(tmp_path, {"lib.hq": str(secret_file), "sub": str(secret_dir)})
    (app / "s.hq").write_text("on lsm:socket_bind { count }\nuse mylib\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and s not in r.stdout + r.stderr
    assert f"s.hq:2:1: error: library 'mylib': {app / 'mylib' / 'lib.hq'} is (or passes through) a symbolic " \
           "link to outside the library" in r.stderr
    (app / "s.hq").write_text("use mylib.sub.lib\non lsm:socket_bind { count }\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and s not in r.stdout + r.stderr and "s.hq:1:1: error:" in r.stderr
    # /etc/shadow, as reported: an error, and none of it printed
    (app / "mylib" / "lib.hq").unlink()
    os.symlink("/etc/shadow", app / "mylib" / "lib.hq")
    (app / "s.hq").write_text("use mylib\non lsm:socket_bind { count }\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and "symbolic link to outside the library" in r.stderr
    assert "root:" not in r.stderr and len(r.stderr.splitlines()) <= 5


def test_path_library_manifest_linking_out_is_not_read(tmp_path, env):
    s = secret()
    outside = tmp_path / "elsewhere.toml"
    outside.write_text(f'[package]\nversion = "{s}"\n')  # were it read, the error would quote the version
    app = path_library(tmp_path, {"hookql.toml": str(outside)}, {"lib.hq": "const X = 1\n"})
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and s not in r.stderr and "symbolic link to outside its library" in r.stderr


def test_git_library_path_dependencies_stay_inside_it(tmp_path, env):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hookql.toml").write_text('[package]\nname = "victim"\n')
    mid = tmp_path / "mid"
    release(mid, "1.0.0", {"lib.hq": "const X = 1\n"}, env, deps=f'v = {{ path = "{victim}" }}')
    app = project(tmp_path, f'mid = {{ git = "file://{mid}", version = "^1" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "path dependency 'v'" in r.stderr and "outside its library" in r.stderr


# -- S5: use "PATH" --------------------------------------------------------------------------------
def use_errors(script: Path, kernel, resolver=None):
    r = check_source(Source.from_path(script), kernel, resolver)
    return [d for d in r.diagnostics if d.is_error]


@pytest.mark.parametrize("resolver", [None, FileResolver], ids=["manifest", "file"])
def test_use_path_outside_the_project_is_refused_unread(tmp_path, k618, resolver):
    s = secret()
    (tmp_path / "outside.hq").write_text(f"{s} not hookql\n")
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    (app / "hookql.toml").write_text('[package]\nname = "app"\n')
    (app / "common.hq").write_text("const WEB = {80, 443}\n")
    os.symlink(tmp_path / "outside.hq", app / "link.hq")
    script = app / "sub" / "s.hq"
    for use, says in [(str(tmp_path / "outside.hq"), "an absolute path"), ("/etc/shadow", "an absolute path"),
                      ("../../outside.hq", "outside.hq is outside the project"),
                      ("../link.hq", "link.hq is (or passes through) a symbolic link to outside the project")]:
        script.write_text(f'on lsm:socket_bind {{ count }}\n   use "{use}"\n')
        (err,) = use_errors(script, k618, resolver and resolver())
        assert (err.span.line, err.span.col) == (2, 4) and says in err.message, err.render()
        assert f"({os.path.realpath(app)})" in err.message and "move the file into the project" in err.hint
        assert s not in err.render()
    # inside the project (the directory of its hookql.toml), `..` is fine
    script.write_text('use "../common.hq"\non lsm:socket_connect where dport in common.WEB { count }\n')
    assert use_errors(script, k618, resolver and resolver()) == []


def test_use_path_without_a_manifest_stays_in_the_scripts_directory(tmp_path, env):
    s = secret()
    (tmp_path / "outside.hq").write_text(f"{s}\n")
    d = tmp_path / "scripts"
    (d / "inc").mkdir(parents=True)
    (d / "inc" / "ports.hq").write_text("const WEB = {80}\n")
    (d / "s.hq").write_text('use "inc/ports.hq"\nuse "../outside.hq"\non lsm:socket_connect { count }\n')
    r = hq(d, "check", "--kernel", "6.18", "s.hq", env=env)
    assert r.returncode == 1 and s not in r.stdout + r.stderr
    assert "s.hq:2:1: error: use \"../outside.hq\": ../outside.hq is outside the project" in r.stderr
    # -e: the current directory is the project
    r = hq(d, "check", "--kernel", "6.18", "-e", 'use "/etc/shadow"\non lsm:socket_connect { count }', env=env)
    assert r.returncode == 1 and "<-e>:1:1: error:" in r.stderr and "absolute path" in r.stderr
    assert "root:" not in r.stderr
    r = hq(d, "check", "--kernel", "6.18", "-e", 'use "inc/ports.hq"\non lsm:socket_connect '
           'where dport in ports.WEB { count }', env=env)
    assert r.returncode == 0, r.stderr


def test_use_path_inside_a_library_stays_in_the_library(tmp_path, k618):
    app = project(tmp_path, 'mylib = { path = "mylib" }')
    (app / "mylib").mkdir()
    (app / "mylib" / "lib.hq").write_text('use "ports.hq"\nuse "../private.hq"\nconst X = 1\n')
    (app / "mylib" / "ports.hq").write_text("const WEB = {80}\n")
    (app / "private.hq").write_text("const Y = 2\n")
    (app / "s.hq").write_text("use mylib\non lsm:socket_connect { count }\n")
    (err,) = use_errors(app / "s.hq", k618)
    assert err.span.source.name.endswith("mylib/lib.hq") and (err.span.line, err.span.col) == (2, 1)
    assert "private.hq is outside library 'mylib'" in err.message and "put the file in the library" in err.hint


# -- resolution --------------------------------------------------------------------------------------
def write_manifest(d: Path, name: str, deps: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "hookql.toml").write_text(f'[package]\nname = "{name}"\nversion = "1.0.0"\n\n[dependencies]\n'
                                   + "".join(f"{x}\n" for x in deps))


def test_a_diamond_of_path_dependencies_resolves_once_per_node(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    depth = 18
    for i in range(depth):
        nxt = [f'{x}{i + 1} = {{ path = "{tmp_path}/libs/{x}{i + 1}" }}' for x in "ab"] \
            if i + 1 < depth else [f'netlib = {{ git = "file://{net}", version = "^1" }}']
        for side in "ab":
            write_manifest(tmp_path / "libs" / f"{side}{i}", f"{side}{i}", nxt)
    app = project(tmp_path, 'a0 = { path = "../libs/a0" }\nb0 = { path = "../libs/b0" }')
    r = hq(app, "lib", "install", env=env)  # 2**18 paths, 36 nodes; hq() gives up after 120 s
    assert r.returncode == 0, r.stderr
    assert list(locked(app)) == ["netlib"]


def test_a_chain_of_100_path_libraries_resolves(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    n = 100
    for i in range(n):
        dep = (f'l{i + 1} = {{ path = "{tmp_path}/libs/l{i + 1}" }}' if i + 1 < n
               else f'netlib = {{ git = "file://{net}" }}')
        write_manifest(tmp_path / "libs" / f"l{i}", f"l{i}", [dep])
    app = project(tmp_path, 'l0 = { path = "../libs/l0" }')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 0, r.stderr
    assert list(locked(app)) == ["netlib"]  # the end of the chain is reached (no depth cut-off)


def test_a_chain_of_22_git_libraries_resolves(tmp_path, env):
    n = 22
    for i in reversed(range(n)):
        dep = f'g{i + 1} = {{ git = "file://{tmp_path}/g{i + 1}", version = "^1" }}' if i + 1 < n else ""
        release(tmp_path / f"g{i}", "1.0.0", {"lib.hq": f"const X = {i}\n"}, env, deps=dep)
    app = project(tmp_path, f'g0 = {{ git = "file://{tmp_path}/g0", version = "^1" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(locked(app)) == sorted(f"g{i}" for i in range(n))


def test_a_cycle_of_path_dependencies_is_named(tmp_path, env):
    write_manifest(tmp_path / "libs" / "a", "a", ['b = { path = "../b" }'])
    write_manifest(tmp_path / "libs" / "b", "b", ['c = { path = "../c" }'])
    write_manifest(tmp_path / "libs" / "c", "c", ['a = { path = "../a" }'])
    app = project(tmp_path, 'a = { path = "../libs/a" }')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "path dependencies form a cycle: a -> b -> c -> a" in r.stderr


def test_choices_that_undo_each_other_are_reported_as_such(tmp_path, env):
    x, y = tmp_path / "x", tmp_path / "y"
    release(x, "1.0.0", {"lib.hq": "const A = 1\n"}, env)
    release(y, "1.0.0", {"lib.hq": "const B = 1\n"}, env)
    release(x, "2.0.0", {"lib.hq": "const A = 2\n"}, env, deps=f'y = {{ git = "file://{y}", version = "^1" }}')
    release(y, "2.0.0", {"lib.hq": "const B = 2\n"}, env, deps=f'x = {{ git = "file://{x}", version = "^1" }}')
    app = project(tmp_path, f'x = {{ git = "file://{x}" }}\ny = {{ git = "file://{y}" }}')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "does not settle: the versions chosen for x, y keep changing" in r.stderr


# -- the cache ---------------------------------------------------------------------------------------
def test_an_unsafe_cache_is_not_used(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{net}", version = "^1" }}')
    assert hq(app, "lib", "install", env=env).returncode == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by anyone, no sticky bit
    bad = dict(env, XDG_CACHE_HOME=str(shared))
    r = hq(app, "lib", "install", "--locked", env=bad)
    assert r.returncode == 1 and "cannot use the library cache" in r.stderr and "writable by others" in r.stderr
    assert not (shared / "hookql" / "libs").exists()
    (app / "s.hq").write_text("use netlib\non lsm:socket_connect where dport == netlib.X { count }\n")
    r = hq(app, "check", "--kernel", "6.18", "s.hq", env=bad)
    assert r.returncode == 1 and "s.hq:1:1: error: cannot use the library cache" in r.stderr


# -- found by attacking the first version of these fixes ------------------------------------------------
NOBODY = 65534


def _victim(tmp_path) -> Path:
    v = tmp_path / "victim"
    v.write_text("root's secret\n")
    v.chmod(0o600)
    return v


def _racing_mkstemp(monkeypatch, module, victim: Path):
    """The attacker in a directory they own wins the race: right after HookQL made its temporary file,
    it is renamed away and a symbolic link to a file of root's takes its name."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, **kw):
        fd, tmp = real(*a, **kw)
        os.rename(tmp, tmp + ".moved")
        os.symlink(victim, tmp)
        return fd, tmp

    monkeypatch.setattr(module.tempfile, "mkstemp", mkstemp)


@pytest.mark.skipif(os.geteuid() != 0, reason="root editing another user's project")
def test_rewriting_a_users_manifest_never_chmods_or_chowns_through_a_link(tmp_path, monkeypatch):
    from hookql.libs import manifest as M

    victim = _victim(tmp_path)
    proj = tmp_path / "proj"
    proj.mkdir()
    lock = proj / "hookql.lock"
    lock.write_text("version = 1\n")
    os.chown(lock, NOBODY, NOBODY)
    real_open = os.open

    def racing_open(name, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(name, flags, mode, dir_fd=dir_fd)
        if str(name).endswith(".tmp") and flags & os.O_CREAT:  # the attacker wins the race at once
            os.rename(name, f"{name}.moved", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.symlink(victim, name, dir_fd=dir_fd)
        return fd

    monkeypatch.setattr(M.os, "open", racing_open)
    try:
        M.write_atomic(lock, "version = 1\n# new\n")
    except M.ManifestError:
        pass
    st = victim.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert victim.read_text() == "root's secret\n"


def test_a_project_directory_swapped_for_a_link_is_not_written_through(tmp_path):
    """The directory hookql.toml was read from is the one written, even when its name now leads elsewhere
    (another user swaps it while git runs)."""
    from hookql.libs import manifest as M

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "hookql.toml").write_text('[package]\nname = "p"\nversion = "0.1.0"\n')
    root = M.load_project(proj / "hookql.toml")
    victim = tmp_path / "victim"
    victim.mkdir()
    proj.rename(tmp_path / "proj.real")
    proj.symlink_to(victim)
    M.write_atomic(root.path, root.text + "# rewritten\n", root.dir_fd)
    assert not (victim / "hookql.toml").exists()
    assert (tmp_path / "proj.real" / "hookql.toml").read_text().endswith("# rewritten\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="root writing into another user's directory")
def test_compile_output_never_chmods_through_a_link(tmp_path, monkeypatch):
    from hookql.codegen import build

    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    _racing_mkstemp(monkeypatch, build, victim)
    try:
        build.write_file(str(out / "x.bpf.o"), b"\x7fELF")
    except OSError:
        pass
    st = victim.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_git_never_reads_a_users_configuration(tmp_path, env, marker):
    """`sudo -E` keeps HOME, XDG_CONFIG_HOME and GIT_* from the user: their .gitconfig could set a hooks
    path (a post-checkout hook runs at install), core.fsmonitor or core.sshCommand."""
    home = tmp_path / "alice"
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    for hook in ("post-checkout", "reference-transaction", "fsmonitor"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
    config = f"[core]\n\thooksPath = {hooks}\n\tfsmonitor = {hooks}/fsmonitor\n"
    (home / ".gitconfig").write_text(config)
    (home / "xdg" / "git").mkdir(parents=True)
    (home / "xdg" / "git" / "config").write_text(config)
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = project(tmp_path, f'netlib = {{ git = "file://{net}", version = "^1" }}')
    hostile = dict(env, HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
                   GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="core.hooksPath", GIT_CONFIG_VALUE_0=str(hooks),
                   GIT_TEMPLATE_DIR=str(home))
    r = hq(app, "lib", "install", env=hostile)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


def test_use_resolves_from_where_the_script_really_was(tmp_path, k618):
    """A link on the script's path is swapped between reading the script and reading its `use`s (to
    `/`, so that the script's directory would be `/` and any file `inside` it): the use still resolves
    from the directory the script was read from."""
    from hookql import cli

    s = secret()
    outside = tmp_path / "outside.hq"
    outside.write_text(f"{s}\n")
    d1 = tmp_path / "d1"
    d1.mkdir()
    rel = os.path.relpath(outside, "/")
    (d1 / "x.hq").write_text(f'use "{rel}"\non lsm:socket_connect {{ count }}\n')
    link = tmp_path / "lnk"
    link.symlink_to(d1)
    name, text = cli._read_text(str(link / "x.hq"))
    src = cli._source(name, text)
    link.unlink()
    link.symlink_to("/")
    result = check_source(src, k618)
    shown = "\n".join(d.render() for d in result.diagnostics)
    assert not result.ok and s not in shown  # resolved from d1, where there is no such file


def test_lib_output_escapes_paths_and_lock_values(tmp_path, env):
    net = tmp_path / "netlib"
    release(net, "1.0.0", {"lib.hq": "const X = 1\n"}, env)
    app = tmp_path / "\x1b]0;pwned\x07\x1b[31mproj"
    app.mkdir()
    (app / "hookql.toml").write_text(f'[package]\nname = "app"\nversion = "0.1.0"\n\n[dependencies]\n'
                                     f'netlib = {{ git = "file://{net}", version = "^1" }}\n')
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr + r.stdout and "\x07" not in r.stderr + r.stdout
    lock = (app / "hookql.lock").read_text().replace('version = "1.0.0"', 'version = "1.0.0\\u000b\\u001c"')
    (app / "hookql.lock").write_text(lock)
    r = hq(app, "lib", "list", env=env)
    assert r.returncode != 0 and "\x0b" not in r.stdout + r.stderr and "\x1c" not in r.stdout + r.stderr


def test_lib_errors_escape_the_paths_they_name(tmp_path, env):
    evil = tmp_path / "\x1b[2J\x1b]0;owned\x07d"
    evil.mkdir()
    app = project(tmp_path, 'x = { path = "x" }')
    (app / "x").symlink_to(evil)
    r = hq(app, "lib", "install", env=env)
    assert r.returncode == 1 and "no hookql.toml" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr + r.stdout and "\x07" not in r.stderr + r.stdout


def test_a_manifest_another_user_left_above_does_not_make_the_project(tmp_path, k618):
    """A root script in /tmp/dir: another user's /tmp/hookql.toml must not widen its project to /tmp."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    (shared / "hookql.toml").write_text('[package]\nname = "mine"\nversion = "0.1.0"\n')
    os.chown(shared / "hookql.toml", NOBODY, NOBODY)
    s = secret()
    (shared / "loot.hq").write_text(f"{s}\n")
    d = shared / "dir"
    d.mkdir()
    (d / "s.hq").write_text('use "../loot.hq"\non lsm:socket_connect { count }\n')
    src = Source(str(d / "s.hq"), (d / "s.hq").read_text(), real=str(d / "s.hq"))
    result = check_source(src, k618)
    shown = "\n".join(x.render() for x in result.diagnostics)
    assert not result.ok and s not in shown and "outside the project" in shown, shown
