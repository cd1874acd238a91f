"""The cache as an attacker meets it (issue 11, S1 and S2, and cache faults).

Every test is a real attack or fault against the real `hookql` command run as
root: files planted by another uid (chowned to nobody), a user's cache
directory that `sudo -E` would hand to root, damaged entries, a read-only
and a full file system (tmpfs in a private mount namespace).  Success is
that nothing planted runs (a marker file it would create never appears) and
the run itself still works.
"""
import hashlib
import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import hookql_cmd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="planting files as another user and loading BPF need root")

NOBODY = 65534
WORKLOAD = Path(__file__).with_name("workload.py")
TP = "tracepoint:syscalls:sys_enter_getsockopt"
# emit needs the event printer (the cache's native library), and a cold run the grammar and template caches
SCRIPT = (f'on {TP} where comm == "hqcachetest" {{ count by comm }}\n'  # a kernel enum: the BTF cache too
          f'on {TP} where comm == "hqcachetest" and optname != TCP_CLOSE {{ emit optname }}')
WL = f"{sys.executable} {WORKLOAD} hqcachetest 2 0"


def blob(payload: bytes) -> bytes:
    """A cache entry as an attacker can forge one: the header's form, with a plain sha256 (the key that
    signs HookQL's own entries is in root's home, 0600)."""
    return b"HQBLOB2 " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


HEADER = len(blob(b""))


def run(env, *args, script=SCRIPT):
    return subprocess.run(hookql_cmd() + ["run", *args, "-e", script, "-c", WL], capture_output=True, text=True,
                          env=env, timeout=120)


def ran_fine(r) -> bool:
    return r.returncode == 0 and "hqcachetest" in r.stdout and "optname=3" in r.stdout


@pytest.fixture
def env(tmp_path):
    tmp = tmp_path / "tmp"  # a shared temporary directory of the test's own, like /tmp
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), TMPDIR=str(tmp))


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "planted code ran as root"


def evil_library(tmp_path, marker) -> bytes:
    """A shared library whose constructor creates the marker."""
    src = tmp_path / "evil.c"
    src.write_text(textwrap.dedent(f"""\
        #include <fcntl.h>
        #include <unistd.h>
        __attribute__((constructor)) static void pwn(void) {{ close(open("{marker}", O_CREAT | O_WRONLY, 0644)); }}
        """))
    so = tmp_path / "evil.so"
    subprocess.run(["clang", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    return so.read_bytes()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def events_library_name() -> str:
    from hookql import __version__
    from hookql.runtime import events

    return f"events-{hashlib.sha256(events._SOURCE.read_bytes() + __version__.encode()).hexdigest()[:16]}.so"


def plant(path: Path, data: bytes, uid: int = NOBODY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, uid, uid)


def chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)]:
            os.chown(name, uid, uid)


# -- S1: no pickle from the shared temporary directory ---------------------------------------
def test_a_lark_cache_planted_in_the_shared_tmp_is_never_unpickled(tmp_path, env, marker):
    tmp = Path(env["TMPDIR"])
    # where Lark's cache=True (what HookQL used) looks for HookQL's grammar: ask that very Lark
    probe = textwrap.dedent("""\
        from lark import Lark
        from hookql.grammar import GRAMMAR_PATH
        Lark(open(GRAMMAR_PATH).read(), parser="lalr", lexer="basic", start=["start", "item"],
             propagate_positions=True, maybe_placeholders=False, cache=True)
        """)
    subprocess.run([sys.executable, "-c", probe], env=env, check=True)
    planted = [p for p in tmp.iterdir() if p.name.startswith(".lark_cache_")]
    assert planted
    for p in planted:
        plant(p, pickle.dumps(Evil(marker)))
    before = sorted(tmp.iterdir())
    for cmd in (["check", "-e", SCRIPT], ["compile", "-e", SCRIPT, "-o", str(tmp_path / "o.bpf.o")]):
        r = subprocess.run(hookql_cmd() + cmd, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
    r = run(env)
    assert ran_fine(r), r.stderr
    assert sorted(tmp.iterdir()) == before  # and HookQL left nothing of its own in the shared directory


# -- S2: a cache another user can write is refused -------------------------------------------------
def test_sudo_E_with_a_users_cache_directory_is_refused_and_the_run_goes_on(tmp_path, env, marker):
    """`sudo -E` keeps the user's XDG_CACHE_HOME: root must not load what that user planted there."""
    home = tmp_path / "home" / "alice"
    cache = home / ".cache"
    plant(cache / "hookql" / "native" / events_library_name(), blob(evil_library(tmp_path, marker)))
    chown_tree(tmp_path / "home", NOBODY)
    env["XDG_CACHE_HOME"] = str(cache)
    r = run(env)
    assert ran_fine(r), r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, r.stderr
    assert "is owned by nobody (uid 65534)" in warnings[0] and "sudo without -E" in warnings[0]
    assert "running without a cache" in warnings[0]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_cache_directory_others_can_write_is_refused(tmp_path, env, marker, mode):
    native = Path(env["XDG_CACHE_HOME"]) / "hookql" / "native"
    plant(native / events_library_name(), blob(evil_library(tmp_path, marker)), uid=0)
    os.chmod(native.parent, mode)
    r = run(env)
    assert ran_fine(r), r.stderr
    assert "writable by others" in r.stderr and "running without a cache" in r.stderr


def test_a_cache_directory_that_is_a_symlink_is_refused(tmp_path, env, marker):
    elsewhere = tmp_path / "elsewhere"
    plant(elsewhere / "native" / events_library_name(), blob(evil_library(tmp_path, marker)))
    chown_tree(elsewhere, NOBODY)
    (Path(env["XDG_CACHE_HOME"])).mkdir()
    (Path(env["XDG_CACHE_HOME"]) / "hookql").symlink_to(elsewhere)
    r = run(env)
    assert ran_fine(r), r.stderr
    assert "running without a cache" in r.stderr


def test_entries_planted_by_another_user_in_our_cache_are_never_loaded(tmp_path, env, marker):
    """The directory is ours, but files in it are not (made before it was private, or planted):
    a native library, template bytecode (Jinja unpickles its header) and an object, each with a
    header an attacker can compute, owned by nobody."""
    first = run(env)  # fills the cache
    assert ran_fine(first), first.stderr
    root = Path(env["XDG_CACHE_HOME"]) / "hookql"
    evil_so = evil_library(tmp_path, marker)
    for p in (root / "native").iterdir():
        plant(p, blob(evil_so))
    for p in (root / "jinja").iterdir():
        plant(p, blob(b"x\n" + pickle.dumps(Evil(marker))))
        # and in the file Jinja's own FileSystemBytecodeCache would read
        plant(root / "jinja" / "__jinja2_x.cache", b"j2" + pickle.dumps(Evil(marker)))
    for p in (root / "run").iterdir():
        p.unlink()  # the cold path, so the templates are rendered again
    r = run(env)
    assert ran_fine(r), r.stderr
    assert not any(p.stat().st_uid == NOBODY for p in (root / "native").iterdir())


def test_a_swapped_object_is_not_loaded(tmp_path, env):
    """Another script's object put in place of this one's (as an old HookQL cache file, and as a
    damaged entry): the run rebuilds its own object instead of loading the swapped one."""
    other = f'on {TP} {{ count }}'
    assert run(env, script=other).returncode == 0
    root = Path(env["XDG_CACHE_HOME"]) / "hookql"
    other_obj = next((root / "obj").iterdir()).read_bytes()
    assert ran_fine(run(env))
    for swapped in (other_obj[HEADER:], other_obj[:-1] + bytes([other_obj[-1] ^ 1])):
        for p in (root / "obj").iterdir():
            p.write_bytes(swapped)
        r = run(env, "-v")
        assert ran_fine(r), r.stderr
        assert "(cached run)" not in r.stderr


# -- cache faults --------------------------------------------------------------------------
def test_truncated_entries_are_rebuilt_and_compile_never_writes_a_broken_object(tmp_path, env):
    assert ran_fine(run(env))
    fresh = tmp_path / "fresh.bpf.o"
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(fresh)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    root = Path(env["XDG_CACHE_HOME"]) / "hookql"
    entries = [p for p in root.rglob("*") if p.is_file()]
    # (no "grammar": the parser's tables ship in the package, grammar/lalr.py, and are never cached)
    assert {p.parent.name for p in entries} >= {"obj", "native", "jinja", "run", "btf"}
    for p in entries:
        data = p.read_bytes()
        p.write_bytes(data[:len(data) // 2])
    r = run(env)
    assert ran_fine(r), r.stderr
    assert "internal error" not in r.stderr and "format invalid" not in r.stderr
    from hookql.cache import blobs
    for p in entries:  # each written again, whole and signed
        data = p.read_bytes()
        assert len(data) > HEADER and blobs._mac(data[HEADER:]) == data[len(blobs.MAGIC):HEADER - 1]
    for p in (root / "obj").iterdir():
        p.write_bytes(p.read_bytes()[:100])
    out = tmp_path / "out.bpf.o"
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(out)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == fresh.read_bytes()


def _in_private_mount(env, mount_opts: str, tmp_path) -> subprocess.CompletedProcess:
    """`hookql run` with its cache on a tmpfs mounted with mount_opts, in a mount namespace of its own."""
    cache = Path(env["XDG_CACHE_HOME"])
    cache.mkdir(parents=True, exist_ok=True)
    hq = " ".join(hookql_cmd())
    shell = (f"mount -t tmpfs -o {mount_opts} hqtest {cache} && "
             f"{hq} run -e '{SCRIPT}' -c '{WL}'")
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mount_opts,why", [("ro,size=1m", "Read-only file system"),
                                            ("size=64k", "No space left on device")])
def test_a_read_only_or_full_cache_turns_caching_off_with_one_warning(tmp_path, env, mount_opts, why):
    r = _in_private_mount(env, mount_opts, tmp_path)
    assert ran_fine(r), r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and why in warnings[0] and "running without a cache" in warnings[0], r.stderr
    assert "internal error" not in r.stderr


def test_a_clang_another_user_can_change_is_never_run(tmp_path, env, marker):
    """`sudo -E` keeps HOOKQL_CLANG (and a user's PATH may lead to their own clang)."""
    fake = tmp_path / "bin" / "clang"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexec {shutil.which('clang')} \"$@\"\n")
    fake.chmod(0o755)
    os.chown(fake, NOBODY, NOBODY)
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(tmp_path / "o.bpf.o")], capture_output=True,
                       text=True, env=dict(env, HOOKQL_CLANG=str(fake)), timeout=120)
    assert r.returncode == 1 and "is not safe to run" in r.stderr and "Traceback" not in r.stderr, r.stderr
    os.chown(fake, 0, 0)
    fake.chmod(0o777)
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(tmp_path / "o.bpf.o")], capture_output=True,
                       text=True, env=dict(env, HOOKQL_CLANG=str(fake)), timeout=120)
    assert r.returncode == 1 and "writable by others" in r.stderr, r.stderr


# -- found by attacking the first version of these fixes ------------------------------------------------
def test_a_directory_root_owns_but_another_user_wrote_is_not_a_cache(tmp_path, env, marker):
    """`sudo -E` lets a user point XDG_CACHE_HOME at any directory root owns, such as a library checkout
    in root's cache, whose files the user wrote (root-owned, right modes, well-formed entries): without
    the key in root's own home, none of it loads."""
    authored = tmp_path / "checkout"  # made by root from the user's content
    plant(authored / "hookql" / "native" / events_library_name(), blob(evil_library(tmp_path, marker)), uid=0)
    for d in (authored, authored / "hookql", authored / "hookql" / "native"):
        os.chmod(d, 0o700)
    env["XDG_CACHE_HOME"] = str(authored)
    r = run(env)
    assert ran_fine(r), r.stderr


def test_a_link_another_user_owns_on_the_cache_path_is_refused(tmp_path, env, marker):
    """In a sticky shared directory, a link owned by another user (who can swap it at any time) leads
    to a directory root owns."""
    shared = Path(env["TMPDIR"])  # 1777, like /tmp
    target = tmp_path / "roots"
    target.mkdir(mode=0o700)
    link = shared / "cache"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    env["XDG_CACHE_HOME"] = str(link)
    r = run(env)
    assert ran_fine(r), r.stderr
    assert "is owned by nobody (uid 65534)" in r.stderr and "running without a cache" in r.stderr


def test_clang_reached_through_another_users_directory_or_link_is_refused(tmp_path, env):
    home = tmp_path / "alice"
    home.mkdir()
    (home / "clang").symlink_to(shutil.which("clang"))  # the real clang, today: the link can change
    os.chown(home, NOBODY, NOBODY)
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(tmp_path / "o.bpf.o")], capture_output=True,
                       text=True, env=dict(env, HOOKQL_CLANG=str(home / "clang")), timeout=120)
    assert r.returncode == 1 and "owned by nobody" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- found by attacking the second version ------------------------------------------------------
def test_clang_never_takes_options_or_programs_from_the_environment(tmp_path, env, marker):
    """`sudo -E` keeps CCC_OVERRIDE_OPTIONS (clang adds its options: a plugin), COMPILER_PATH (where
    clang finds ld), CPATH and the like: clang runs with a fixed environment."""
    plugin = tmp_path / "plugin.so"
    plugin.write_bytes(evil_library(tmp_path, marker))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ld").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bindir / "ld").chmod(0o755)
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "bpf").mkdir()
    (tmp_path / "inc" / "bpf" / "bpf_helpers.h").write_text("#error planted header\n")
    hostile = dict(env, CCC_OVERRIDE_OPTIONS=f"+-fplugin={plugin}", COMPILER_PATH=str(bindir),
                   CPATH=str(tmp_path / "inc"), C_INCLUDE_PATH=str(tmp_path / "inc"), LIBRARY_PATH=str(bindir))
    r = run(hostile)  # cold: the object and the event printer (linked: ld) are both built
    assert ran_fine(r), r.stderr


def test_clang_never_works_in_the_callers_temporary_directory(tmp_path, env):
    """A user's TMPDIR (sudo -E) is where they could rename HookQL's directory and swap the object clang
    wrote: nothing is ever made there (its mtime does not move), and clang does not need it either
    (a TMPDIR that is a file would make clang fail if it used it)."""
    shared = tmp_path / "alices_tmp"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    os.chown(shared, NOBODY, NOBODY)
    before = shared.stat().st_mtime_ns
    r = run(dict(env, TMPDIR=str(shared)))
    assert ran_fine(r), r.stderr
    assert shared.stat().st_mtime_ns == before and not list(shared.iterdir())
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = run(dict(env, TMPDIR=str(not_a_dir), XDG_CACHE_HOME=str(tmp_path / "cache2")))
    assert ran_fine(r), r.stderr


def test_the_command_ignores_python_variables_and_the_current_directory(tmp_path, env, marker):
    """`sudo -E` keeps PYTHONPYCACHEPREFIX, PYTHONWARNINGS and the like (sudo drops only PYTHONPATH,
    PYTHONHOME and a few others), each a way to make any Python run the caller's code as it starts; and
    a `hookql/` folder in the current directory must not stand in for HookQL."""
    evil = tmp_path / "evil"
    (evil / "hookql").mkdir(parents=True)
    payload = f"open({str(marker)!r}, 'w').close()\n"
    (evil / "sitecustomize.py").write_text(payload)
    (evil / "usercustomize.py").write_text(payload)
    (evil / "evilwarn.py").write_text(payload + "class W(Warning): pass\n")
    (evil / "hookql" / "__init__.py").write_text(payload)
    (evil / "hookql" / "__main__.py").write_text(payload)
    hostile = dict(env, PYTHONPATH=str(evil), PYTHONWARNINGS="ignore::evilwarn.W", PYTHONUSERBASE=str(evil),
                   PYTHONSTARTUP=str(evil / "sitecustomize.py"), PYTHONINSPECT="1")
    r = subprocess.run(hookql_cmd() + ["check", "--kernel", "6.18", "-e", "on lsm:socket_connect { count }"],
                       capture_output=True, text=True, env=hostile, cwd=evil, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "ok: 1 script checked" in r.stderr, r.stderr


def test_compile_output_onto_a_device_or_link_never_replaces_it(tmp_path, env):
    """`hookql compile -o /dev/null` used to rename a regular file over the device node."""
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(dev)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "elsewhere.o")
    r = subprocess.run(hookql_cmd() + ["compile", "-e", SCRIPT, "-o", str(link)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1 and "is a symbolic link" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert link.is_symlink() and not (tmp_path / "elsewhere.o").exists()


def test_a_fifo_in_place_of_a_script_is_refused_not_waited_on(tmp_path, env):
    fifo = tmp_path / "s.hq"
    os.mkfifo(fifo)
    r = subprocess.run(hookql_cmd() + ["check", str(fifo)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr


def test_the_shipped_parser_cannot_unpickle_anything():
    """grammar/lalr.py is Lark's standalone code, cache path and all; its `pickle` import is taken out
    (tools/gen_parser.py), so even that path could not unpickle, and HookQL never asks for a cache."""
    from hookql import lexer
    from hookql.grammar import lalr

    assert not hasattr(lalr, "pickle")
    assert lexer.lark_parser().options.cache is False
