"""What the running kernel can attach, found by looking, not assumed."""
from __future__ import annotations

import os
from pathlib import Path

SECURITYFS = Path("/sys/kernel/security")
TRACEFS = Path("/sys/kernel/tracing")
BPFFS = Path("/sys/fs/bpf")


CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass  # no /proc: assume nothing, the kernel will say
    return 0


def can_load_bpf() -> bool:
    """CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON (tracing programs need both)."""
    caps = effective_caps()
    has = lambda c: bool(caps >> c & 1)
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def has_kprobes() -> bool:
    """kprobes through perf (the kprobe PMU) or tracefs' kprobe_events."""
    return Path("/sys/bus/event_source/devices/kprobe/type").exists() or (TRACEFS / "kprobe_events").exists()


def func_mode() -> str:
    """How to attach kprobe:/kretprobe: here: kprobes where the kernel has them,
    else BPF trampolines (fentry/fexit)."""
    return "kprobe" if has_kprobes() else "fentry"


def active_lsms() -> list[str] | None:
    """The kernel's LSM order, or None when securityfs cannot be read."""
    ensure_mounted(SECURITYFS, "securityfs")
    try:
        return (SECURITYFS / "lsm").read_text().strip().split(",")
    except OSError:
        return None


def bpf_lsm_hint() -> str | None:
    """Why LSM programs cannot work here, with the boot fix; None if they can."""
    lsms = active_lsms()
    if lsms is None or "bpf" in lsms:
        return None
    fixed = ",".join([*lsms, "bpf"])
    return (f"the BPF LSM is not active (/sys/kernel/security/lsm: {','.join(lsms)}); "
            f"boot with lsm={fixed} on the kernel command line")


def ensure_mounted(path: Path, fstype: str) -> None:
    """Mount a kernel pseudo-filesystem if it is missing and we may (root)."""
    if os.geteuid() != 0 or not path.is_dir() or any(path.iterdir()):
        return
    import subprocess

    subprocess.run(["mount", "-t", fstype, fstype, str(path)], capture_output=True, check=False)


def ensure_tracefs() -> None:
    if not (TRACEFS / "events").exists():
        ensure_mounted(TRACEFS, "tracefs")
