"""Kernel images: Debian's package, a vmlinux ELF, a bzImage; read, never executed.

A bzImage is a boot stub with the kernel as a compressed payload; the setup
header (boot protocol 2.08+) says where the payload is, its first bytes say
how it is compressed.  Decompressed, it is the ELF vmlinux: its .BTF section
is the kernel's BTF, and qemu boots it directly when it has the PVH entry
note (CONFIG_PVH), which the VM runner relies on for Debian's kernel.
Debian compresses with xz; gzip, bzip2, lzma and xz come from the standard
library, zstd only where Python has compression.zstd (3.14); lz4 and lzo are
not read (PayloadUnsupported).

Everything here parses bytes the user handed over, so every offset is bounds
checked, output is capped, and a release string is accepted only when it is a
plain kernel release (it names files and directories).
"""
from __future__ import annotations

import bz2
import glob
import lzma
import re
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"
MAX_VMLINUX = 1 << 30  # decompressed payloads larger than this are refused
# A plain kernel release: "6.1.0-56-amd64", "6.12.3+", "6.8.0-rc1~x"; no separators, no controls.
RELEASE = re.compile(r"[0-9]+\.[0-9]+[A-Za-z0-9._+~-]{0,60}")
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,100}")  # a Debian package name
EM_X86_64 = 62
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point qemu boots an ELF vmlinux through


class ImageError(Exception):
    """The image or package cannot be used; the message says why and what to do."""


class PayloadUnsupported(ValueError):
    """A bzImage whose payload is compressed in a way Python cannot undo here (lz4, lzo, zstd before 3.14)."""


def _zstd():
    try:
        from compression import zstd  # Python 3.14+
    except ImportError:
        return None
    return zstd


def _decompress(payload: bytes) -> bytes:
    """The first stream in payload, decompressed by its magic; ValueError / PayloadUnsupported."""
    if payload.startswith(XZ_MAGIC):
        dec, name = lzma.LZMADecompressor(format=lzma.FORMAT_XZ), "xz"
    elif payload.startswith(b"\x1f\x8b"):
        dec, name = zlib.decompressobj(wbits=31), "gzip"
    elif payload.startswith(b"BZh"):
        dec, name = bz2.BZ2Decompressor(), "bzip2"
    elif payload.startswith(b"\x5d\x00\x00"):
        dec, name = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), "lzma"
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        if _zstd() is None:
            raise PayloadUnsupported("its payload is zstd-compressed, which this Python (before 3.14) cannot read")
        dec, name = _zstd().ZstdDecompressor(), "zstd"
    elif payload.startswith(b"\x02\x21\x4c\x18") or payload.startswith(b"\x89LZO"):
        raise PayloadUnsupported("its payload is lz4- or lzo-compressed, which Python cannot read")
    else:
        raise PayloadUnsupported("its payload is in no compression format HookQL knows")
    try:
        out = dec.decompress(payload, MAX_VMLINUX + 1)
    except (lzma.LZMAError, OSError, zlib.error, EOFError) as exc:
        raise ValueError(f"its {name} payload is damaged ({exc})") from None
    if len(out) > MAX_VMLINUX:
        raise ValueError(f"its {name} payload decompresses to more than {MAX_VMLINUX >> 20} MiB")
    return out


def bzimage_header(data: bytes) -> tuple[int, int, str | None] | None:
    """(payload offset, payload length, kernel_version string) of a bzImage, None if data is not one."""
    if len(data) < 0x250 or data[0x1FE:0x200] != b"\x55\xaa" or data[0x202:0x206] != b"HdrS":
        return None
    version, = struct.unpack_from("<H", data, 0x206)
    setup_sects = data[0x1F1] or 4
    kv_ptr, = struct.unpack_from("<H", data, 0x20E)
    banner = None
    if kv_ptr and 0x200 + kv_ptr < len(data):
        raw = data[0x200 + kv_ptr:0x200 + kv_ptr + 256].split(b"\0", 1)[0]
        banner = raw.decode("utf-8", "replace")
    if version < 0x208:
        return 0, 0, banner
    off, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + off
    if not length or start + length > len(data):
        return 0, 0, banner
    return start, length, banner


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage; ValueError (PayloadUnsupported: a compression not read here)."""
    hdr = bzimage_header(bzimage)
    if hdr and hdr[1]:
        payload = bzimage[hdr[0]:hdr[0] + hdr[1]]
    else:  # no usable header: the first xz stream, as Debian's images carry it
        start = bzimage.find(XZ_MAGIC)
        if start < 0:
            raise ValueError("no xz payload in this bzImage (is it a Debian kernel?)")
        payload = bzimage[start:]
    elf = _decompress(payload)
    if not elf.startswith(ELF_MAGIC):
        raise ValueError("the payload is not an ELF vmlinux")
    return elf


@dataclass(frozen=True)
class ElfInfo:
    machine: int
    btf: bool  # has a .BTF section
    pvh: bool  # has the PVH entry note qemu boots through
    interp: bool  # has PT_INTERP: a dynamically linked program


def elf_info(data: bytes) -> ElfInfo:
    """What a 64-bit little-endian ELF holds, bounds checked; ValueError if it is not one."""
    if not data.startswith(ELF_MAGIC) or len(data) < 64:
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF (an x86-64 kernel is)")
    try:
        (machine, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx) = (
            struct.unpack_from("<18xH12xQQ6xHHHHH", data, 0))
        pvh = interp = False
        for i in range(phnum):
            p_type, _, p_off, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
            interp |= p_type == 3
            if p_type != PT_NOTE:
                continue
            pos, end = p_off, min(p_off + p_filesz, len(data))
            while pos + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                name = data[pos + 12:pos + 12 + namesz].rstrip(b"\0")
                pvh |= name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
        btf = False
        if shnum and shstrndx < shnum:
            str_off = struct.unpack_from("<24xQ", data, shoff + shstrndx * shentsize)[0]
            for i in range(shnum):
                name_off, = struct.unpack_from("<I", data, shoff + i * shentsize)
                btf |= data[str_off + name_off:str_off + name_off + 5] == b".BTF\0"
    except (struct.error, OverflowError):
        raise ValueError("a damaged ELF file (its headers point outside it)") from None
    return ElfInfo(machine, btf, pvh, interp)


def release_candidates(data: bytes) -> list[bytes]:
    """What follows each b"Linux version " in data (the kernel's banner), up to the next space."""
    out, pos = [], data.find(b"Linux version ")
    while pos >= 0 and len(out) < 16:
        start = pos + len(b"Linux version ")
        out.append(data[start:start + 80].split(b" ", 1)[0].split(b"\0", 1)[0])
        pos = data.find(b"Linux version ", start)
    return out


def plain_release(raw: bytes | str) -> str | None:
    """raw if it is a plain kernel release (safe as a file name, nothing to escape), else None."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text if RELEASE.fullmatch(text) else None


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else "no output"


def debian_kernel(package: str, workdir: Path) -> tuple[Path, str]:
    """apt-get download PACKAGE, unpack it, return (vmlinux ELF path, kernel release); ImageError."""
    if not PACKAGE.fullmatch(package):
        raise ImageError(f"{package!r} is not a Debian package name")
    workdir.mkdir(parents=True, exist_ok=True)
    debs = glob.glob(str(workdir / f"{package}_*.deb"))
    try:
        if not debs:
            r = subprocess.run(["apt-get", "download", package], cwd=workdir, capture_output=True, text=True)
            if r.returncode:
                raise ImageError(f"could not fetch Debian's kernel package {package}: "
                                 f"{_last_line(r.stderr or r.stdout)}; run apt-get update, or give --kernel-image PATH")
            debs = glob.glob(str(workdir / f"{package}_*.deb"))
        root = workdir / "root"
        r = subprocess.run(["dpkg-deb", "-x", debs[0], str(root)], capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ImageError(f"{exc.filename} not found: fetching Debian's kernel needs a Debian-like host; "
                         f"give --kernel-image PATH") from None
    if r.returncode:
        raise ImageError(f"could not unpack {Path(debs[0]).name}: {_last_line(r.stderr)}; delete {workdir} and retry")
    bzs = sorted((root / "boot").glob("vmlinuz-*"))
    release = plain_release(bzs[0].name.removeprefix("vmlinuz-")) if bzs else None
    if release is None:
        raise ImageError(f"{package} holds no boot/vmlinuz-RELEASE; is it a kernel image package?")
    out = workdir / f"vmlinux-{release}"
    try:
        out.write_bytes(vmlinux_from_bzimage(bzs[0].read_bytes()))
    except ValueError as exc:
        raise ImageError(f"{package}'s vmlinuz-{release}: {exc}") from None
    return out, release


def default_image_package() -> str:
    """The versioned package linux-image-amd64 points at (e.g. linux-image-6.1.0-56-amd64); ImageError."""
    try:
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError("apt-cache not found: fetching Debian's kernel needs a Debian-like host; "
                         "give --kernel-image PATH") from None
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            pkg = line.split(":", 1)[1].strip()
            if PACKAGE.fullmatch(pkg):
                return pkg
    raise ImageError("apt-cache knows no linux-image-amd64; run apt-get update, or give --kernel-image PATH")


if __name__ == "__main__":
    import sys
    pkg = sys.argv[1] if len(sys.argv) > 1 else default_image_package()
    path, rel = debian_kernel(pkg, Path(tempfile.mkdtemp(prefix="hookql-kernel-")))  # private, not a shared name
    print(path, rel)
