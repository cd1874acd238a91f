"""Building: BPF C -> object file with clang, cached on disk.

Objects live under $XDG_CACHE_HOME/hookql/obj, named by a hash of the
generated C (which already encodes the script, the kernel's types and the
attach modes), the clang version and HookQL's version: a second run of the
same script on the same kernel skips clang.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hookql import __version__
from hookql.paths import cache_dir

_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
         "riscv64": "riscv"}


class BuildError(Exception):
    """clang is missing or rejected the generated C (a HookQL bug if so)."""


@dataclass
class Built:
    path: Path
    cached: bool
    key: str


@cache
def clang() -> tuple[str, str]:
    """clang's path, and an identity of its binary for cache keys: path, size and
    mtime (a stat, where `clang --version` would cost a process, 20 ms a cold run)."""
    exe = os.environ.get("HOOKQL_CLANG") or shutil.which("clang")
    if not exe:
        raise BuildError("clang was not found; install it (Debian/Ubuntu: apt-get install clang libbpf-dev) "
                         "or set HOOKQL_CLANG")
    real = os.path.realpath(exe)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise BuildError(f"clang ({exe}) cannot be run: {exc.strerror}") from None
    return exe, f"{real}:{st.st_size}:{st.st_mtime_ns}"


def flags() -> list[str]:
    arch = _ARCH.get(platform.machine(), "x86")
    return ["-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-O2", "-g", "-Wall", "-Wno-unused-variable",
            "-Wno-unused-function", "-Werror=implicit-function-declaration"]


def build(c_source: str, out: Path | None = None) -> Built:
    exe, version = clang()
    key = hashlib.sha256("\0".join([c_source, version, " ".join(flags()), __version__]).encode()).hexdigest()[:24]
    obj_dir = cache_dir() / "obj"
    cached = obj_dir / f"{key}.bpf.o"
    hit = cached.exists()
    if not hit:
        obj_dir.mkdir(parents=True, exist_ok=True)
        tmp = obj_dir / f".{key}.{os.getpid()}.o"
        proc = subprocess.run([exe, *flags(), "-c", "-x", "c", "-", "-o", str(tmp)], input=c_source,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BuildError(proc.stderr.strip() or f"clang exited with {proc.returncode}")
        tmp.replace(cached)  # atomic: concurrent runs never see half an object
    if out is not None:
        shutil.copyfile(cached, out)
    return Built(cached, hit, key)
