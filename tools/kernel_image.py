"""Get an uncompressed vmlinux (ELF, with .BTF) out of a Debian kernel package.

Debian's bzImage carries its payload as xz after the magic `fd 37 7a 58 5a 00`;
decompressed, it is the ELF vmlinux: its .BTF section is the kernel's BTF, and
qemu boots it directly (PVH), which the VM test tier relies on.
"""
from __future__ import annotations

import glob
import lzma
import subprocess
import tempfile
from pathlib import Path

XZ_MAGIC = b"\xfd7zXZ\x00"


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        raise ValueError("no xz payload in this bzImage (is it a Debian kernel?)")
    # The payload is followed by trailing data; stop at the end of the xz stream.
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = dec.decompress(bzimage[start:])
    if not elf.startswith(b"\x7fELF"):
        raise ValueError("the xz payload is not an ELF vmlinux")
    return elf


def debian_kernel(package: str, workdir: Path) -> tuple[Path, str]:
    """apt-get download PACKAGE, unpack it, return (vmlinux ELF path, kernel release)."""
    workdir.mkdir(parents=True, exist_ok=True)
    debs = glob.glob(str(workdir / f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=workdir, check=True)
        debs = glob.glob(str(workdir / f"{package}_*.deb"))
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "-x", debs[0], str(root)], check=True)
    bz = sorted((root / "boot").glob("vmlinuz-*"))[0]
    release = bz.name.removeprefix("vmlinuz-")
    out = workdir / f"vmlinux-{release}"
    out.write_bytes(vmlinux_from_bzimage(bz.read_bytes()))
    return out, release


def default_image_package() -> str:
    """The versioned package linux-image-amd64 points at (e.g. linux-image-6.1.0-56-amd64)."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("apt-cache knows no linux-image-amd64; run apt-get update")


if __name__ == "__main__":
    import sys
    pkg = sys.argv[1] if len(sys.argv) > 1 else default_image_package()
    path, rel = debian_kernel(pkg, Path(tempfile.mkdtemp(prefix="hookql-kernel-")))  # private, not a shared name
    print(path, rel)
