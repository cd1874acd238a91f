"""Which kernel a script is checked against: the running one (its BTF and
tracefs), a shipped reference kernel (`--kernel 6.1`), or any BTF file
(`--btf PATH`)."""
from __future__ import annotations

import lzma
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from hookql.btf import Btf
from hookql.runtime.libbpf import LibbpfError, LibbpfMissing

RUNNING_BTF = Path("/sys/kernel/btf/vmlinux")
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEFS_ENV = "HOOKQL_TRACEFS"  # tests point it at an unreadable directory to act as a user


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
        """The running kernel's tracefs, if this user can read it (it is root's, mode 0700);
        else None, and tracepoints are read from BTF.  $HOOKQL_TRACEFS names another place."""
        if not self.running:
            return None
        env = os.environ.get(TRACEFS_ENV)
        if env and not _trusted_dir(env):
            return None  # another user's directory (sudo -E keeps the variable): not read; BTF instead
        for p in (Path(env),) if env else TRACEFS:
            try:
                with os.scandir(p / "events") as it:  # opening it needs read and search permission
                    next(it, None)
                return p
            except OSError:  # missing, not mounted, or not ours to read
                continue
        return None


def reference_versions() -> list[str]:
    from importlib import resources  # only for reference kernels: its import is ~5 ms of a cold run

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
    from importlib import resources

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


# -- can a hook attach here? -------------------------------------------------------
@dataclass(frozen=True)
class Attach:
    """Whether hooks of one provider can attach on this machine, and why."""

    verdict: str  # yes | no | unknown | - (not the running kernel)
    reason: str = ""

    @property
    def shown(self) -> str:
        return "unknown (needs root)" if self.verdict == "unknown" else self.verdict


def attach_support(kern: Kernel, provider: str) -> Attach:
    """Whether a provider's hooks can attach on the running kernel: looked at, not assumed.

    tracepoints: always (they need only root). kprobe/kretprobe: kprobes where the
    kernel has them, else BPF trampolines (fentry/fexit). lsm: `bpf` in the LSM
    list and trampolines. Trampolines are probed by loading and attaching a
    trivial fentry program, once per process, and only as root; without root the
    answer is unknown rather than guessed."""
    from hookql.runtime import features

    if not kern.running:
        return Attach("-", f"kernel {kern.label} is not the running one")
    if provider == "tracepoint":
        return Attach("yes", "tracepoints")
    if provider in ("kprobe", "kretprobe") and features.has_kprobes():
        return Attach("yes", "as kprobes")
    if provider == "lsm":
        lsms = features.active_lsms()
        if lsms is not None and "bpf" not in lsms:
            return Attach("no", f"the BPF LSM is not active (lsm={','.join(lsms)}); boot with lsm=...,bpf")
    tramp = fentry_works(kern)
    if tramp is None:
        return Attach("unknown", "probing BPF trampolines (fentry) needs root")
    ok, why = tramp
    if provider == "lsm":
        if features.active_lsms() is None:
            return Attach("unknown", "cannot read /sys/kernel/security/lsm")
        return Attach("yes", "BPF LSM over trampolines") if ok else Attach(
            "no", f"this kernel refuses BPF trampolines (fentry: {why}), which LSM programs need")
    return Attach("yes", "as fentry/fexit (no kprobes)") if ok else Attach(
        "no", f"no kprobes (CONFIG_KPROBES), and this kernel refuses BPF trampolines (fentry: {why})")


_FENTRY: dict[str, tuple[bool, str] | None] = {}
_FENTRY_TARGETS = ("security_socket_connect", "tcp_sendmsg", "do_sys_openat2", "vfs_read")


def _trusted_dir(path: str) -> bool:
    """Every directory on the way to path is root's or ours, writable by nobody else (hookql/cache/dirs.py)."""
    from hookql.cache import dirs

    try:
        dirs.trusted_path(path, os.geteuid(), path)
        return True
    except dirs.CacheError:
        return False


def fentry_works(kern: Kernel) -> tuple[bool, str] | None:
    """(can attach, why not) for a trivial fentry program; None without the privileges to try.
    Cached per process (HOOKQL_FENTRY_PROBE=0|1 sets the answer, for tests)."""
    forced = os.environ.get("HOOKQL_FENTRY_PROBE")
    if forced in ("0", "1"):
        return (forced == "1", "" if forced == "1" else "refused (HOOKQL_FENTRY_PROBE=0)")
    if "answer" in _FENTRY:
        return _FENTRY["answer"]
    from hookql.runtime import features

    if not features.can_load_bpf():
        return None  # not cached: privileges are per process, and might be gained
    target = next((t for t in _FENTRY_TARGETS if kern.btf.find(t, "func")), None)
    _FENTRY["answer"] = _probe_fentry(kern.btf.find(target, "func").id) if target else (False, "no target function")
    return _FENTRY["answer"]


def _probe_fentry(btf_id: int) -> tuple[bool, str]:
    """Load `r0 = 0; exit` as BPF_PROG_TYPE_TRACING/BPF_TRACE_FENTRY on btf_id, attach it
    (BPF_RAW_TRACEPOINT_OPEN), and close both at once."""
    import ctypes
    import errno
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    nr_bpf = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}.get(os.uname().machine)
    if nr_bpf is None:
        return False, "unknown architecture"
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, ..., expected_attach_type
    # at 68, attach_btf_id at 108 (include/uapi/linux/bpf.h)
    struct.pack_into("=IIQQ", attr, 0, 26, 2, ctypes.addressof(insns), ctypes.addressof(license))
    struct.pack_into("=16s", attr, 48, b"hq_probe")
    struct.pack_into("=I", attr, 68, 24)  # BPF_TRACE_FENTRY
    struct.pack_into("=I", attr, 108, btf_id)
    prog = libc.syscall(nr_bpf, 5, attr, 128)  # BPF_PROG_LOAD
    if prog < 0:
        err = ctypes.get_errno()
        return False, f"load: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
    try:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("=QI", attr, 0, 0, prog)
        link = libc.syscall(nr_bpf, 17, attr, 16)  # BPF_RAW_TRACEPOINT_OPEN
        if link < 0:
            err = ctypes.get_errno()
            return False, f"attach: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
        os.close(link)
        return True, ""
    finally:
        os.close(prog)
