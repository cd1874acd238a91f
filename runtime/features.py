"""What the running kernel can attach, found by looking, not assumed.

os.path rather than pathlib: `hookql run` asks these before it attaches, and
pathlib's import (it pulls in `re`) would be a tenth of a warm start."""
from __future__ import annotations

import os

SECURITYFS = "/sys/kernel/security"
TRACEFS = "/sys/kernel/tracing"


CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            lines = f.read().splitlines()
        for line in lines:
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
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type") or os.path.exists(f"{TRACEFS}/kprobe_events")


def func_mode() -> str:
    """How to attach kprobe:/kretprobe: here: kprobes where the kernel has them,
    else BPF trampolines (fentry/fexit)."""
    return "kprobe" if has_kprobes() else "fentry"


def active_lsms() -> list[str] | None:
    """The kernel's LSM order, or None when securityfs cannot be read."""
    ensure_mounted(SECURITYFS, "securityfs")
    try:
        with open(f"{SECURITYFS}/lsm") as f:
            return f.read().strip().split(",")
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


def ensure_mounted(path: str, fstype: str) -> None:
    """Mount a kernel pseudo-filesystem if it is missing and we may (root)."""
    if os.geteuid() != 0 or not os.path.isdir(path) or os.listdir(path):
        return
    import subprocess

    subprocess.run(["mount", "-t", fstype, fstype, path], capture_output=True, check=False)


def ensure_tracefs() -> None:
    if not os.path.exists(f"{TRACEFS}/events"):
        ensure_mounted(TRACEFS, "tracefs")
