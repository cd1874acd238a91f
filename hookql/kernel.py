"""Which kernel a script is checked against: the running one (its BTF and
tracefs), a shipped reference kernel (`--kernel 6.1`), or any BTF file
(`--btf PATH`)."""
from __future__ import annotations

import lzma
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from hookql.btf import Btf
from hookql.runtime.libbpf import LibbpfError, LibbpfMissing

RUNNING_BTF = Path("/sys/kernel/btf/vmlinux")
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class KernelError(Exception):
    """The kernel to check against cannot be had; the message says what to do."""


@dataclass
class Kernel:
    label: str  # what messages call it: "6.18.44-fc (running)", "6.1 (reference)"
    version: str  # "6.1", "6.18", or the running release
    btf: Btf
    running: bool = False
    _tp_formats: dict = field(default_factory=dict, repr=False)

    @property
    def short(self) -> str:
        """major.minor, for matching against reference kernels."""
        return ".".join(self.version.split(".")[:2])

    def tracefs(self) -> Path | None:
        if not self.running:
            return None
        for p in TRACEFS:
            if (p / "events").is_dir():
                return p
        return None


def reference_versions() -> list[str]:
    d = resources.files("hookql") / "data" / "btf"
    return sorted((p.name.removesuffix(".btf.xz") for p in d.iterdir() if p.name.endswith(".btf.xz")),
                  key=lambda v: tuple(int(x) for x in v.split(".")))


@cache
def reference(version: str) -> Kernel:
    """A shipped reference kernel, by version ("6.1", "6.1.0-56-amd64" or "6.18.3")."""
    known = reference_versions()
    short = ".".join(version.split("-")[0].split(".")[:2])
    if short not in known:
        raise KernelError(f"no reference BTF for kernel {version}; shipped: {', '.join(known)} "
                          "(or pass --btf PATH to a vmlinux or BTF file)")
    raw = lzma.decompress((resources.files("hookql") / "data" / "btf" / f"{short}.btf.xz").read_bytes())
    return Kernel(f"{short} (reference)", short, _load(lambda: Btf.from_bytes(raw, f"reference {short}")))


def running() -> Kernel:
    rel = os.uname().release
    if not RUNNING_BTF.exists():
        raise KernelError(f"this kernel ({rel}) exposes no BTF at {RUNNING_BTF} (CONFIG_DEBUG_INFO_BTF); "
                          f"check against a reference with --kernel {'/'.join(reference_versions())} "
                          "or pass --btf PATH")
    return Kernel(f"{rel} (running)", rel, _load(lambda: Btf.from_file(RUNNING_BTF)), running=True)


def from_btf(path: str) -> Kernel:
    if not os.path.exists(path):
        raise KernelError(f"--btf {path}: no such file")
    return Kernel(f"{path}", Path(path).name, _load(lambda: Btf.from_file(path)))


def select(kernel: str | None = None, btf: str | None = None) -> Kernel:
    """The kernel named on the command line, else the running one."""
    if btf:
        return from_btf(btf)
    if kernel:
        return reference(kernel)
    return running()


def _load(make):
    try:
        return make()
    except LibbpfMissing as exc:
        raise KernelError(str(exc)) from None
    except LibbpfError as exc:
        raise KernelError(f"cannot read BTF: {exc.strerror}") from None
