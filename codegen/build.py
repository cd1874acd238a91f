"""Building: BPF C -> object file with clang, cached on disk.

Objects are cache entries (hookql/cache/blobs.py) under obj/, named by a hash
of the generated C (which already encodes the script, the kernel's types and
the attach modes), clang's identity and HookQL's version: a second run of the
same script on the same kernel skips clang.  What callers get is the object's
bytes, verified against the hash recorded when it was built; a damaged entry
is rebuilt, and without a usable cache every build runs clang.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache

from hookql import __version__
from hookql.cache import blobs

_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
         "riscv64": "riscv"}


class BuildError(Exception):
    """clang rejected the generated C (a HookQL bug), or is missing or unsafe (bug=False: the machine's)."""

    def __init__(self, message: str, bug: bool = True):
        super().__init__(message)
        self.bug = bug


@dataclass
class Built:
    object: bytes  # the ELF object
    cached: bool
    name: str  # its entry in the cache (obj/NAME), for the run cache
    path: str | None  # where that entry is, None when the cache is off


@cache
def clang() -> tuple[str, str]:
    """clang's path, and an identity of its binary for cache keys: path, size and
    mtime (a stat, where `clang --version` would cost a process, 20 ms a cold run)."""
    exe = os.environ.get("HOOKQL_CLANG") or shutil.which("clang")
    if not exe:
        raise BuildError("clang was not found; install it (Debian/Ubuntu: apt-get install clang libbpf-dev) "
                         "or set HOOKQL_CLANG", bug=False)
    from hookql.cache import dirs

    try:  # the real file, reached only through directories and links no other user can change
        real = dirs.trusted_file_path(os.path.abspath(exe))
        st = os.stat(real)
    except dirs.CacheError as exc:
        raise BuildError(f"clang: {exc}", bug=False) from None
    except OSError as exc:
        raise BuildError(f"clang ({exe}) cannot be run: {exc.strerror}", bug=False) from None
    return real, f"{real}:{st.st_size}:{st.st_mtime_ns}"  # run what was checked, not the name again


def flags() -> list[str]:
    arch = _ARCH.get(os.uname().machine, "x86")  # platform.machine(), without importing platform
    return ["-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-O2", "-g", "-Wall", "-Wno-unused-variable",
            "-Wno-unused-function", "-Werror=implicit-function-declaration"]


def build(c_source: str, out: str | None = None, early: EarlyClang | None = None) -> Built:
    """early: a clang started before the C existed (EarlyClang), used on a cache miss; the caller closes it."""
    exe, version = clang()
    key = blobs.sha256("\0".join([c_source, version, " ".join(flags()), __version__]).encode()).hexdigest()[:24]
    name = f"{key}.bpf.o"
    obj = blobs.get("obj", name)
    hit = obj is not None
    if not hit:
        obj = early.compile(c_source) if early is not None else _clang(exe, c_source)
    path = blobs.put("obj", name, obj) if not hit else None
    if out is not None:
        try:
            write_file(out, obj)
        except OSError as exc:
            raise BuildError(f"cannot write {out}: {exc.strerror or exc}", bug=False) from None
    return Built(obj, hit, name, path)


def _clang(exe: str, c_source: str) -> bytes:
    """The object clang makes of c_source."""
    code, out, err = run_clang(exe, ["-c", *flags()], c_source.encode(), "prog.bpf.o")
    if code != 0:
        raise BuildError(err.strip() or f"clang exited with {code}")
    return out


class EarlyClang:
    """The clang of one object, started before its C exists: a cold `hookql run` starts it first, so that
    clang's own start (loading LLVM, ~25 ms before it reads a byte) runs on another core while the front
    end imports, checks and renders.  compile() writes the C to its standard input, as run_clang does
    (same flags, environment and private directory); clang reads all of its input before it compiles,
    so the C goes in whole; meanwhile() runs while it compiles (the caller's work that needs no object).
    close() stops a clang that was not used (the object was in the cache, the script has errors, a signal
    came) and removes its directory; always call it (a `with` block)."""

    def __init__(self, meanwhile=None):
        from hookql.cache import dirs

        self._meanwhile = meanwhile
        exe, _ = clang()
        self._dir = dirs.private_tmpdir()
        try:
            tmp = self._dir.__enter__()
        except dirs.CacheError as exc:
            raise BuildError(str(exc), bug=False) from None
        self._target = os.path.join(tmp, "prog.bpf.o")
        try:
            self._proc = subprocess.Popen([exe, "-c", *flags(), "-x", "c", "-", "-o", self._target],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          cwd="/", env=dict(_CLANG_ENV, TMPDIR=tmp, HOME=tmp))
        except OSError as exc:
            self._dir.__exit__(None, None, None)
            raise BuildError(f"clang ({exe}) cannot be run: {exc.strerror}", bug=False) from None

    def compile(self, c_source: str) -> bytes:
        """The object clang makes of c_source (once)."""
        from hookql.cache import dirs

        try:
            self._proc.stdin.write(c_source.encode())  # read at once: clang is waiting for it
            self._proc.stdin.close()
        except BrokenPipeError:  # clang is gone (a signal): what it said, and its exit status, below
            pass
        if self._meanwhile is not None:
            self._meanwhile()
        err = self._proc.stderr.read()  # to its end: clang's exit
        self._proc.wait()
        if self._proc.returncode != 0:
            raise BuildError(err.decode(errors="replace").strip() or f"clang exited with {self._proc.returncode}")
        try:
            return dirs.read_own(self._target)
        except dirs.CacheError as exc:
            raise BuildError(str(exc), bug=False) from None

    def close(self) -> None:
        if self._proc.poll() is None:  # not used: blocked reading its input
            self._proc.kill()
            self._proc.wait()
        for f in (self._proc.stdin, self._proc.stderr):
            try:
                f.close()
            except BrokenPipeError:  # what was left unwritten to a clang that is gone
                pass
        self._dir.__exit__(None, None, None)

    def __enter__(self) -> "EarlyClang":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# clang reads its options, include paths and helper programs from the environment (CCC_OVERRIDE_OPTIONS,
# CPATH, COMPILER_PATH, ...); run as root with a user's environment (sudo -E), that is the user's code.
_CLANG_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}


def run_clang(exe: str, args: list[str], source: bytes, output: str) -> tuple[int, bytes, str]:
    """clang ARGS on C from standard input, with a fixed environment and a private temporary directory;
    (exit code, the output file's bytes, clang's messages)."""
    from hookql.cache import dirs

    try:
        with dirs.private_tmpdir() as tmp:
            target = os.path.join(tmp, output)
            proc = subprocess.run([exe, *args, "-x", "c", "-", "-o", target], input=source, capture_output=True,
                                  cwd="/", env=dict(_CLANG_ENV, TMPDIR=tmp, HOME=tmp))  # "/": the same DWARF comp_dir every build
            err = proc.stderr.decode(errors="replace")
            return proc.returncode, dirs.read_own(target) if proc.returncode == 0 else b"", err
    except dirs.CacheError as exc:
        raise BuildError(str(exc), bug=False) from None


def write_file(out: str, data: bytes) -> None:
    """out holds data whole or is left as it was: a temporary file beside it, then a rename.  A device or
    a pipe (-o /dev/null, a FIFO) is written to, never replaced; a symbolic link is refused."""
    import stat

    out = os.fspath(out)
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise OSError(40, f"{out} is a symbolic link; give the file it points to")
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        fd = os.open(out, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OSError(21, f"{out} is not a regular file")
    fd, tmp = tempfile.mkstemp(prefix=".hookql-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(out)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # the descriptor, not the name: another user may own the directory
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
