"""Building: BPF C -> object file with clang, cached on disk.

Objects are cache entries (hookql/cache/blobs.py) under obj/, named by a hash
of the generated C (which already encodes the script, the kernel's types and
the attach modes), clang's identity and HookQL's version: a second run of the
same script on the same kernel skips clang.  What callers get is the object's
bytes, verified against the hash recorded when it was built; a damaged entry
is rebuilt, and without a usable cache every build runs clang.
"""
from __future__ import annotations

import hashlib
import os
import platform
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
    arch = _ARCH.get(platform.machine(), "x86")
    return ["-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-O2", "-g", "-Wall", "-Wno-unused-variable",
            "-Wno-unused-function", "-Werror=implicit-function-declaration"]


def build(c_source: str, out: str | None = None) -> Built:
    exe, version = clang()
    key = hashlib.sha256("\0".join([c_source, version, " ".join(flags()), __version__]).encode()).hexdigest()[:24]
    name = f"{key}.bpf.o"
    obj = blobs.get("obj", name)
    hit = obj is not None
    if not hit:
        obj = _clang(exe, c_source)
    path = blobs.put("obj", name, obj) if not hit else None
    if out is not None:
        write_file(out, obj)
    return Built(obj, hit, name, path)


def _clang(exe: str, c_source: str) -> bytes:
    """The object clang makes of c_source, in a private temporary directory."""
    with tempfile.TemporaryDirectory(prefix="hookql-clang-") as tmp:
        target = os.path.join(tmp, "prog.bpf.o")
        proc = subprocess.run([exe, *flags(), "-c", "-x", "c", "-", "-o", target], input=c_source,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(proc.stderr.strip() or f"clang exited with {proc.returncode}")
        with open(target, "rb") as f:
            return f.read()


def write_file(out: str, data: bytes) -> None:
    """out holds data whole or is left as it was: a temporary file beside it, then a rename."""
    out = os.fspath(out)
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
