"""Run commands on Debian's stock kernel (6.1: kprobes, BPF LSM) under qemu.

    python3 tests/vm/vm.py 'uname -r; cat /sys/kernel/security/lsm'

The guest shares this machine's root read-only over 9p with a tmpfs overlay
on top, so it runs the same Python, HookQL and tests; it boots the
uncompressed vmlinux directly (PVH) with a busybox initramfs that loads the
virtio/9p/overlay modules, runs one shell script and powers off.  Software
emulation (TCG) makes the guest's Python ~14x slower and clang ~50x: compile
on the host, batch many checks into one boot.

Needs (apt): qemu-system-x86 busybox-static cpio, and network access to
Debian's package archive for linux-image-amd64 (fetched once, cached).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from kernel_image import debian_kernel, default_image_package  # noqa: E402

from hookql.cache import dirs  # noqa: E402

# Modules the initramfs loads, in dependency order (Debian 6.1 builds them as modules).
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
           "virtio_console", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay"]
QEMU = "qemu-system-x86_64"
LSM = "lockdown,capability,bpf"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /modules/$m.ko || echo "hqvm: insmod $m failed" > /dev/console; done
mkdir -p /lower /upper /root
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /lower
mount -t tmpfs -o size=1G tmpfs /upper
mkdir -p /upper/data /upper/work
# writes anywhere (/tmp included) land in the tmpfs; the host's files, a repo in /tmp too, stay visible
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /root
mkdir -p /root/hqvm /root/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /root/hqvm
mount --bind /root{modules_dir} /root/lib/modules
chroot /root /bin/sh -c '
  mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
  mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
  mount -t securityfs securityfs /sys/kernel/security; mount -t tracefs tracefs /sys/kernel/tracing
  mount -t bpf bpf /sys/fs/bpf; mount -t cgroup2 cgroup2 /sys/fs/cgroup
  ip link set lo up 2>/dev/null || ifconfig lo up
  cd /hqvm && /bin/sh /hqvm/cmd.sh > /hqvm/stdout 2> /hqvm/stderr; echo $? > /hqvm/status
  sync'
poweroff -f
"""


@dataclass
class Kernel:
    release: str
    vmlinux: Path
    modules: Path  # .../lib/modules


@dataclass
class Result:
    status: int | None  # None: the guest never finished (see console)
    stdout: str
    stderr: str
    console: str


def cache_root() -> Path:
    return Path(dirs.require("vm"))


def missing_tools() -> list[str]:
    need = {QEMU: "qemu-system-x86", "busybox": "busybox-static", "cpio": "cpio"}
    return [pkg for exe, pkg in need.items() if not shutil.which(exe)]


@cache
def kernel(package: str | None = None) -> Kernel:
    """Debian's stock kernel, unpacked once under the cache."""
    pkg = package or default_image_package()
    work = cache_root() / pkg
    root = work / "root"
    mods = next(iter((root / "lib" / "modules").glob("*")), None) if root.exists() else None
    vmlinux = next(iter(work.glob("vmlinux-*")), None)
    if mods is None or vmlinux is None:
        vmlinux, release = debian_kernel(pkg, work)
    else:
        release = vmlinux.name.removeprefix("vmlinux-")
    return Kernel(release, vmlinux, root / "lib" / "modules")


def initramfs(k: Kernel) -> Path:
    init = INIT.format(modules=" ".join(MODULES), modules_dir=str(k.modules))
    tag = hashlib.sha256(init.encode()).hexdigest()[:12]
    out = cache_root() / f"initramfs-{k.release}-{tag}.cpio"
    if out.exists():
        return out
    stage = Path(tempfile.mkdtemp(prefix="hqvm-initrd-"))
    try:
        (stage / "bin").mkdir()
        (stage / "modules").mkdir()
        for d in ("proc", "sys", "dev"):
            (stage / d).mkdir()
        shutil.copy(shutil.which("busybox"), stage / "bin" / "busybox")
        base = k.modules / k.release / "kernel"
        for m in MODULES:
            ko = next(base.rglob(f"{m}.ko"))
            shutil.copy(ko, stage / "modules" / ko.name)
        (stage / "init").write_text(init)
        (stage / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=stage, capture_output=True, text=True, check=True).stdout
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=files.encode(), stdout=f,
                           check=True)
        tmp.replace(out)
    finally:
        shutil.rmtree(stage)
    return out


def run(script: str, timeout: float = 900, cpus: int = 2, memory: str = "2G") -> Result:
    """Boot, run `script` with /bin/sh in the guest (cwd: a fresh results dir), power off."""
    k = kernel()
    rd = initramfs(k)
    results = Path(tempfile.mkdtemp(prefix="hqvm-"))
    try:
        (results / "cmd.sh").write_text(script)
        console = results / "console.log"
        cmd = [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", memory, "-smp", str(cpus),
               "-machine", "q35", "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", str(k.vmlinux), "-initrd", str(rd),
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
               "-virtfs", f"local,path={results},mount_tag=results,security_model=none,multidevs=remap",
               "-serial", f"file:{console}",
               "-append", f"console=ttyS0 quiet panic=-1 lsm={LSM}"]
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            pass
        read = lambda n: (results / n).read_text(errors="replace") if (results / n).exists() else ""
        status = read("status").strip()
        return Result(int(status) if status.lstrip("-").isdigit() else None, read("stdout"), read("stderr"),
                      read("console.log"))
    finally:
        shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    if missing_tools():
        sys.exit(f"install first: apt-get install {' '.join(missing_tools())}")
    r = run(" ".join(sys.argv[1:]) or "uname -r")
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if r.status is None:
        sys.stderr.write("hqvm: the guest did not finish; console:\n" + r.console[-3000:])
    sys.exit(r.status if r.status is not None else 125)
