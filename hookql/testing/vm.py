"""Run commands on another kernel under qemu: Debian's stock kernel (6.1: kprobes, BPF LSM) or one you built.

    python -m hookql.testing.vm 'uname -r; cat /sys/kernel/security/lsm'
    python -m hookql.testing.vm --kernel-image ~/linux/arch/x86/boot/bzImage --modules DIR/lib/modules 'uname -r'

The guest shares this machine's root read-only over 9p with a tmpfs overlay
on top, so it runs the same Python, HookQL and tests; a busybox initramfs
loads the virtio/9p/overlay modules it finds, runs one shell script and
powers off.  Software emulation (TCG) makes the guest's Python ~14x slower
and clang ~50x: compile on the host, batch many checks into one boot.

Kernels (a Kernel: what qemu boots, the vmlinux ELF whose BTF the host checks
scripts against, and the lib/modules directory):
  kernel(package)       Debian's image (default: what linux-image-amd64 points
                        at), fetched once with apt-get download and cached; the
                        uncompressed vmlinux is booted directly (PVH).
  custom_kernel(image, modules)
                        any image you give: read (never executed), copied into
                        the private cache under its sha256.
      - a vmlinux ELF: x86-64, with .BTF (CONFIG_DEBUG_INFO_BTF) and the PVH
        entry note (CONFIG_PVH), which is how qemu boots an ELF; booted as is.
      - a bzImage: booted as a bzImage (qemu loads any).  Its vmlinux is
        extracted when the payload is xz, gzip, bzip2 or lzma (zstd from
        Python 3.14) and then must have .BTF: that is btf_path.  For lz4/lzo
        payloads btf_path is None: the host has no BTF for this kernel, so
        check scripts with --btf pointing at the build's vmlinux.
    The release comes from the kernel's own banner ("Linux version X"), and
    must be a plain release (digits.digits then [A-Za-z0-9._+~-]).
    modules: a lib/modules directory holding RELEASE/ (make modules_install
    INSTALL_MOD_PATH=DIR gives DIR/lib/modules); None for a kernel with
    virtio-pci, 9p and overlayfs built in.  The initramfs loads only the
    modules it finds, so a built-in kernel boots either way.

Needs (apt): qemu-system-x86 busybox-static cpio, and for Debian's kernel
network access to Debian's package archive (linux-image-amd64).  Failures
are VMError: one line saying what is missing or why the guest did not boot,
and what to do.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hookql.cache import dirs
from hookql.runtime.escape import escape_text
from hookql.testing.kernel_image import (EM_X86_64, ELF_MAGIC, PACKAGE, ImageError, PayloadUnsupported,
                                         bzimage_header, debian_kernel, default_image_package, elf_info,
                                         plain_release, release_candidates, vmlinux_from_bzimage)

# Modules the initramfs loads, in dependency order (Debian 6.1 builds them as modules).
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
           "virtio_console", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay"]
QEMU = "qemu-system-x86_64"
TOOLS = {QEMU: "qemu-system-x86", "busybox": "busybox-static", "cpio": "cpio"}  # executable -> apt package
LSM = "lockdown,capability,bpf"
MAX_IMAGE = 2 << 30  # a --kernel-image larger than this is refused

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# only the modules this kernel has as modules are here; built-in ones need nothing
for m in {modules}; do
  [ -f /modules/$m.ko ] || continue
  insmod /modules/$m.ko || echo "hqvm: insmod $m failed" > /dev/console
done
mkdir -p /lower /upper /root
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /lower
mount -t tmpfs -o size=1G tmpfs /upper
mkdir -p /upper/data /upper/work
# writes anywhere (/tmp included) land in the tmpfs; the host's files, a repo in /tmp too, stay visible
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /root
mkdir -p /root/hqvm /root/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /root/hqvm
{bind_modules}
chroot /root /bin/sh -c '
  : > /hqvm/started
  mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
  mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
  mount -t securityfs securityfs /sys/kernel/security; mount -t tracefs tracefs /sys/kernel/tracing
  mount -t bpf bpf /sys/fs/bpf; mount -t cgroup2 cgroup2 /sys/fs/cgroup
  ip link set lo up 2>/dev/null || ifconfig lo up
  cd /hqvm && /bin/sh /hqvm/cmd.sh > /hqvm/stdout 2> /hqvm/stderr; echo $? > /hqvm/status
  sync'
poweroff -f
"""


class VMError(Exception):
    """The VM cannot run: one line saying what is missing or why the guest did not boot, and what to do.
    `console` holds the guest's serial console when there was one."""

    def __init__(self, message: str, console: str = ""):
        super().__init__(message)
        self.console = console


@dataclass(frozen=True)
class Kernel:
    release: str  # a plain release (kernel_image.RELEASE): it names files
    vmlinux: Path | None  # the ELF vmlinux (its .BTF); None: a bzImage whose payload cannot be read here
    modules: Path | None  # a lib/modules directory holding <release>/; None: what the guest needs is built in
    boot: Path | None = None  # what qemu boots with -kernel; None: vmlinux

    @property
    def image(self) -> Path:
        return self.boot or self.vmlinux

    @property
    def btf_path(self) -> Path | None:
        """The vmlinux ELF the host checks scripts against (hookql.kernel.select(btf=...))."""
        return self.vmlinux

    @property
    def version(self) -> str:
        """major.minor: "6.1"."""
        return ".".join(self.release.split(".")[:2])


@dataclass
class Result:
    status: int | None  # None: the guest never finished (see console)
    stdout: str
    stderr: str
    console: str


def _shown(x: object) -> str:
    return escape_text(str(x))


def cache_root() -> Path:
    """The VM cache, checked and private (hookql.cache.dirs)."""
    try:
        return Path(dirs.require("vm"))
    except dirs.CacheError as exc:
        raise VMError(str(exc)) from None


def _private_dir(*parts: str) -> Path:
    try:
        return Path(dirs.require("vm", *parts))
    except dirs.CacheError as exc:
        raise VMError(str(exc)) from None


def missing_tools() -> list[str]:
    """The apt packages to install before a VM can run."""
    return [pkg for exe, pkg in TOOLS.items() if not shutil.which(exe)]


def require_tools() -> None:
    missing = [exe for exe in TOOLS if not shutil.which(exe)]
    if missing:
        raise VMError(f"{', '.join(missing)} not found: apt-get install {' '.join(TOOLS[e] for e in missing)}")


@cache
def kernel(package: str | None = None) -> Kernel:
    """Debian's stock kernel, unpacked once under the cache."""
    try:
        pkg = package or default_image_package()
        if not PACKAGE.fullmatch(pkg):  # it names a directory under the cache
            raise ImageError(f"{pkg!r} is not a Debian package name")
        work = cache_root() / pkg
        root = work / "root"
        mods = next(iter((root / "lib" / "modules").glob("*")), None) if root.exists() else None
        vmlinux = next(iter(work.glob("vmlinux-*")), None)
        if mods is None or vmlinux is None:
            vmlinux, release = debian_kernel(pkg, work)
        else:
            release = vmlinux.name.removeprefix("vmlinux-")
    except ImageError as exc:
        raise VMError(_shown(exc)) from None
    return Kernel(release, vmlinux, root / "lib" / "modules")


def _read_image(image: Path) -> bytes:
    """The bytes of a user's image: a regular file, opened once (no follow-up reads by path)."""
    try:
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise VMError(f"--kernel-image {_shown(image)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VMError(f"--kernel-image {_shown(image)}: not a regular file; give a vmlinux or a bzImage")
        if st.st_size > MAX_IMAGE:
            raise VMError(f"--kernel-image {_shown(image)}: {st.st_size >> 20} MiB is larger than any kernel image")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_IMAGE + 1)
    finally:
        os.close(fd)


def _store(directory: Path, name: str, data: bytes) -> Path:
    """data as directory/name (a private, checked directory), written whole; kept when already there."""
    out = directory / name
    if out.is_file() and not out.is_symlink() and out.stat().st_size == len(data):
        return out
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out


def _release_of(data: bytes, what: str, banner: str | None = None) -> str:
    cands = release_candidates(data)
    if banner:
        cands.append(banner.split(" ", 1)[0].encode())
    for raw in cands:
        if (rel := plain_release(raw)) is not None:
            return rel
    if cands:
        raise VMError(f"{what}: its release string \"{_shown(cands[0].decode('utf-8', 'replace'))}\" is not a "
                      f"plain kernel release (digits.digits then letters, digits, . _ + ~ -); not used")
    raise VMError(f"{what}: no \"Linux version\" banner in it; is it a Linux kernel?")


def _checked_elf(elf: bytes, what: str, need_pvh: bool) -> None:
    try:
        info = elf_info(elf)
    except ValueError as exc:
        raise VMError(f"{what}: {exc}") from None
    if info.machine != EM_X86_64:
        raise VMError(f"{what}: not an x86-64 kernel (ELF machine {info.machine}); the VM is qemu-system-x86_64")
    if not info.btf:
        raise VMError(f"{what}: no .BTF section; HookQL needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    if need_pvh and not info.pvh:
        raise VMError(f"{what}: no PVH entry note (CONFIG_PVH=y), so qemu cannot boot this ELF; "
                      f"give the bzImage (arch/x86/boot/bzImage) instead")


def custom_kernel(image: Path, modules: Path | None = None) -> Kernel:
    """A kernel from an image you give (see the module docstring for what is accepted); VMError."""
    what = f"--kernel-image {_shown(image)}"
    data = _read_image(Path(image))
    if len(data) > MAX_IMAGE:
        raise VMError(f"{what}: larger than any kernel image")
    key = hashlib.sha256(data).hexdigest()
    if data.startswith(ELF_MAGIC):
        _checked_elf(data, what, need_pvh=True)
        release = _release_of(data, what)
        vmlinux = _store(_private_dir("custom", key), "vmlinux", data)
        boot = None
    elif (hdr := bzimage_header(data)) is not None:
        try:
            elf = vmlinux_from_bzimage(data)
        except PayloadUnsupported:
            elf = None
        except ValueError as exc:
            raise VMError(f"{what}: a bzImage, but {exc}") from None
        if elf is not None:
            _checked_elf(elf, f"{what} (its vmlinux)", need_pvh=False)
            release = _release_of(elf, what)
        else:
            release = _release_of(b"", what, hdr[2])
        d = _private_dir("custom", key)
        vmlinux = _store(d, "vmlinux", elf) if elf is not None else None
        boot = _store(d, "bzImage", data)
    else:
        raise VMError(f"{what}: not a kernel image (neither an ELF vmlinux nor a bzImage; it starts with "
                      f"{data[:8].hex(' ')})")
    mods = None
    if modules is not None:
        mods = Path(os.path.realpath(modules))
        if not (mods / release / "kernel").is_dir():
            raise VMError(f"--modules {_shown(modules)}: no {release}/kernel/ in it; give the lib/modules directory "
                          f"of this kernel's build (make modules_install INSTALL_MOD_PATH=DIR gives DIR/lib/modules)")
    return Kernel(release, vmlinux, mods, boot)


def _module_bytes(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.bz2"):
        return bz2.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            raise VMError(f"{_shown(path)}: zstd-compressed modules need Python 3.14; "
                          f"build the kernel with CONFIG_MODULE_COMPRESS_NONE=y") from None
        return zstd.decompress(path.read_bytes())
    return path.read_bytes()


def _found_modules(k: Kernel) -> dict[str, Path]:
    """MODULES that k has as loadable modules, by name."""
    if k.modules is None:
        return {}
    base = k.modules / k.release / "kernel"
    found: dict[str, Path] = {}
    want = set(MODULES)
    for dirpath, _dirs, files in os.walk(base):
        for f in files:
            m = re.fullmatch(r"(.+)\.ko(\.xz|\.gz|\.bz2|\.zst)?", f)
            if m and m.group(1) in want and m.group(1) not in found:
                found[m.group(1)] = Path(dirpath) / f
    return found


def init_script(k: Kernel, found: list[str] | None = None) -> str:
    """The initramfs's /init for k (found: the module names it carries)."""
    names = [m for m in MODULES if found is None or m in found]
    bind = (f"mount --bind {shlex.quote('/root' + str(k.modules))} /root/lib/modules" if k.modules is not None
            else "# no modules directory: the host's /lib/modules stays (nothing loads from it)")
    return INIT.format(modules=" ".join(names), bind_modules=bind)


def _static_busybox() -> Path:
    path = shutil.which("busybox")
    if path is None:
        raise VMError("busybox not found: apt-get install busybox-static")
    try:
        dynamic = elf_info(Path(path).read_bytes()).interp
    except ValueError:
        dynamic = True
    if dynamic:
        raise VMError(f"{_shown(path)} is not a static busybox (the initramfs has no libraries): "
                      f"apt-get install busybox-static")
    return Path(path)


def initramfs(k: Kernel) -> Path:
    """A cpio with a static busybox, the modules k needs, and /init; cached by its content."""
    found = _found_modules(k)
    stage = Path(tempfile.mkdtemp(prefix="initrd-", dir=_private_dir("tmp")))
    try:
        for d in ("bin", "modules", "proc", "sys", "dev"):
            (stage / d).mkdir()
        shutil.copy(_static_busybox(), stage / "bin" / "busybox")
        for name, path in found.items():
            (stage / "modules" / f"{name}.ko").write_bytes(_module_bytes(path))
        (stage / "init").write_text(init_script(k, list(found)))
        (stage / "init").chmod(0o755)
        h = hashlib.sha256()
        for p in sorted(stage.rglob("*")):
            h.update(str(p.relative_to(stage)).encode() + b"\0")
            if p.is_file():
                h.update(p.read_bytes())
        out = cache_root() / f"initramfs-{h.hexdigest()[:16]}.cpio"
        if out.exists():
            return out
        files = subprocess.run(["find", "."], cwd=stage, capture_output=True, text=True, check=True).stdout
        fd, tmp = tempfile.mkstemp(dir=cache_root(), prefix=".initramfs-")
        with os.fdopen(fd, "wb") as f:
            r = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=files.encode(), stdout=f,
                               stderr=subprocess.PIPE)
        if r.returncode:
            os.unlink(tmp)
            raise VMError(f"cpio could not build the initramfs: {_shown(_last(r.stderr.decode('utf-8', 'replace')))}")
        os.replace(tmp, out)
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _last(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ""


_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


def boot_failure(console: str) -> str:
    """The console's last meaningful line (a panic, else the last line), escaped, with what to do."""
    lines = [_TIMESTAMP.sub("", l).strip() for l in console.splitlines()]
    lines = [l for l in lines if l]
    if not lines:
        return "the VM did not boot: no console output (is it an x86-64 kernel with CONFIG_SERIAL_8250_CONSOLE=y?)"
    panic = [l for l in lines if "Kernel panic" in l]
    failed = [l for l in lines if re.search(r"failed|can't|error|not found|No such", l, re.I)]
    tail = [l for l in lines if not l.startswith(("reboot:", "ACPI:"))] or lines
    # the panic's reason (not its "---[ end" trailer), else the first failure (the rest follow from it)
    line = (panic or failed or tail)[0 if panic or failed else -1][:300]
    hint = ""
    if any("hqvm: insmod" in l or "hostroot" in l or "unknown filesystem type" in l for l in lines):
        hint = ("; the guest needs virtio-pci, 9p over virtio and overlayfs, built in or as modules "
                "(give --modules DIR/lib/modules)")
    return f"the VM did not boot: {_shown(line)}{hint}"


def _qemu_path(p: Path) -> str:
    return str(p).replace(",", ",,")  # qemu's option syntax: a comma in a value is doubled


def _default_kernel() -> Kernel:
    return kernel()


RESULT_MAX = 64 << 20


def _read_result(path: Path) -> str:
    """A file the guest wrote into the results share: a regular file, not through a link the guest made
    (it is root in there), at most RESULT_MAX bytes; "" when there is none."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return ""
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return f.read(RESULT_MAX).decode("utf-8", "replace")


def run(script: str, timeout: float = 900, cpus: int = 2, memory: str = "2G", kernel: Kernel | None = None) -> Result:
    """Boot, run `script` with /bin/sh in the guest (cwd: a fresh results dir), power off.
    kernel None: Debian's default.  VMError when the tools are missing or the guest did not boot;
    a guest that booted but never finished gives Result.status None."""
    require_tools()
    k = kernel if kernel is not None else _default_kernel()
    rd = initramfs(k)
    results = Path(tempfile.mkdtemp(prefix="run-", dir=_private_dir("tmp")))
    try:
        (results / "cmd.sh").write_text(script)
        console = results / "console.log"
        cmd = [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", memory, "-smp", str(cpus),
               "-machine", "q35", "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", str(k.image), "-initrd", str(rd),
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
               "-virtfs", f"local,path={_qemu_path(results)},mount_tag=results,security_model=none,multidevs=remap",
               "-serial", f"file:{_qemu_path(console)}",
               "-append", f"console=ttyS0 quiet panic=-1 lsm={LSM}"]
        qemu_err, timed_out = "", False
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=timeout, check=False)
            qemu_err = p.stderr.decode("utf-8", "replace") if p.returncode else ""
        except subprocess.TimeoutExpired:
            timed_out = True
        read = lambda n: _read_result(results / n)  # noqa: E731
        log = read("console.log")
        if not (results / "started").exists():
            if qemu_err:
                raise VMError(f"qemu could not start the VM: {_shown(_last(qemu_err))}", log)
            msg = boot_failure(log)
            if timed_out:
                msg = msg.replace("did not boot", f"did not boot within {timeout:g} s", 1)
            raise VMError(msg, log)
        status = read("status").strip()
        return Result(int(status) if status.lstrip("-").isdigit() else None, read("stdout"), read("stderr"), log)
    finally:
        shutil.rmtree(results, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hookql.testing.vm",
                                 description="Run a shell command on another kernel under qemu.")
    ap.add_argument("--kernel-image", type=Path, help="a vmlinux (with .BTF and PVH) or a bzImage; "
                                                      "default: Debian's linux-image-amd64")
    ap.add_argument("--modules", type=Path, help="the lib/modules directory of --kernel-image's build")
    ap.add_argument("--package", help="a Debian kernel package (default: what linux-image-amd64 points at)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the shell command (default: uname -r)")
    args = ap.parse_args(argv)
    try:
        if args.kernel_image:
            k = custom_kernel(args.kernel_image, args.modules)
        else:
            k = kernel(args.package)
        r = run(" ".join(args.command) or "uname -r", timeout=args.timeout, kernel=k)
    except VMError as exc:
        if exc.console:
            sys.stderr.write("hqvm: console:\n" + "\n".join(escape_text(l) for l in exc.console.splitlines()[-40:])
                             + "\n")
        sys.stderr.write(f"hqvm: error: {exc}\n")
        return 125
    sys.stdout.write(r.stdout)  # the command's own output, as a shell would show it
    sys.stderr.write(r.stderr)
    if r.status is None:
        sys.stderr.write("hqvm: the guest did not finish; console:\n"
                         + "\n".join(escape_text(l) for l in r.console[-3000:].splitlines()) + "\n")
    return r.status if r.status is not None else 125


if __name__ == "__main__":
    sys.exit(main())
