"""hookql.testing.vm: kernels you give are read, never trusted (pure, no boot), and one boot of Debian's kernel.

A --kernel-image is parsed by HookQL running as root: whatever it holds must
end in a one-line VMError, never a traceback, a file outside the private cache
or a raw control character on the terminal."""
import gzip
import hashlib
import lzma
import os
import shlex
import struct
import subprocess
from pathlib import Path

import pytest

from hookql.testing import vm

BANNER = b"Linux version 6.9.0-test (builder@host) (gcc) #1 SMP\0"


def make_elf(banner: bytes = BANNER, btf: bool = True, pvh: bool = True, machine: int = 62) -> bytes:
    """A minimal ELF64 vmlinux: a PT_NOTE (Xen PVH entry, or another note), .shstrtab, .BTF, a banner."""
    note = struct.pack("<III", 4, 4, 18 if pvh else 1) + b"Xen\0" + b"\0" * 4
    shstr = b"\0.shstrtab\0" + (b".BTF\0" if btf else b".data\0")
    note_off = 64 + 56
    shstr_off = note_off + len(note)
    btf_off = shstr_off + len(shstr)
    body = b"\x9f\xeb\x01\x00" + banner
    shoff = (btf_off + len(body) + 7) // 8 * 8
    ehdr = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
            + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, shoff, 0, 64, 56, 1, 64, 3, 1))
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    sh = lambda name, typ, off, size: struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, off, size, 0, 0, 1, 0)
    shdrs = sh(0, 0, 0, 0) + sh(1, 3, shstr_off, len(shstr)) + sh(11, 1, btf_off, len(body))
    data = ehdr + phdr + note + shstr + body
    return data + b"\0" * (shoff - len(data)) + shdrs


def make_bzimage(payload: bytes, version_string: bytes = b"6.9.0-test (builder@host) #1 SMP") -> bytes:
    """A bzImage: one setup sector after the boot sector, the boot protocol 2.15 header, the payload."""
    setup = bytearray(1024)
    setup[0x1F1] = 1
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<H", setup, 0x20E, 0x100)  # kernel_version: at 0x200 + 0x100
    setup[0x300:0x300 + len(version_string) + 1] = version_string + b"\0"
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    return bytes(setup) + payload + b"\0\0\0\0"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _one_line_escaped(exc: vm.VMError) -> str:
    msg = str(exc)
    assert "\n" not in msg and "\x1b" not in msg and "\x07" not in msg, msg
    return msg


def test_missing_tools_say_what_to_install(monkeypatch, cache):
    monkeypatch.setattr(vm.shutil, "which", lambda exe: None)
    monkeypatch.setattr(vm, "_default_kernel", lambda: pytest.fail("fetched a kernel before checking the tools"))
    assert vm.missing_tools() == ["qemu-system-x86", "busybox-static", "cpio"]
    with pytest.raises(vm.VMError) as err:
        vm.run("uname -r")
    assert str(err.value) == ("qemu-system-x86_64, busybox, cpio not found: "
                              "apt-get install qemu-system-x86 busybox-static cpio")


@pytest.mark.parametrize("content, expect", [
    (b"#!/bin/sh\nrm -rf /\n", "not a kernel image (neither an ELF vmlinux nor a bzImage; it starts with 23 21"),
    (b"", "not a kernel image"),
    (b"\x7fELF\x01\x01" + b"\0" * 80, "not a 64-bit little-endian ELF"),
    (b"\x7fELF\x02\x01" + b"\xff" * 80, "a damaged ELF file"),
], ids=["script", "empty", "elf32", "damaged-elf"])
def test_not_a_kernel_image(tmp_path, cache, content, expect):
    img = tmp_path / "image"
    img.write_bytes(content)
    img.chmod(0o755)  # executable or not, it is only read
    with pytest.raises(vm.VMError) as err:
        vm.custom_kernel(img)
    assert expect in _one_line_escaped(err.value)
    assert not (cache / "hookql" / "vm" / "custom").exists() or not _files(cache / "hookql" / "vm" / "custom")


def test_image_path_is_a_device_or_missing(tmp_path, cache):
    with pytest.raises(vm.VMError, match="not a regular file"):
        vm.custom_kernel(Path("/dev/zero"))  # would never end if read
    with pytest.raises(vm.VMError) as err:
        vm.custom_kernel(tmp_path / "no\x1b[2Jsuch")
    assert "No such file" in _one_line_escaped(err.value) and "\\x1b[2J" in str(err.value)


@pytest.mark.parametrize("kind", ["elf", "bzimage-xz", "bzimage-lz4"])
def test_release_with_separators_and_controls_is_refused(tmp_path, cache, kind):
    evil = b"../../x\x1b]0;pwned\x07"
    if kind == "elf":
        data = make_elf(banner=b"Linux version " + evil + b" (x) #1\0")
    elif kind == "bzimage-xz":
        data = make_bzimage(lzma.compress(make_elf(banner=b"Linux version " + evil + b" #1\0")))
    else:  # a payload HookQL cannot unpack: the release comes from the setup header
        data = make_bzimage(b"\x02\x21\x4c\x18" + b"\0" * 64, version_string=evil + b" #1")
    img = tmp_path / "bzImage"
    img.write_bytes(data)
    with pytest.raises(vm.VMError) as err:
        vm.custom_kernel(img)
    msg = _one_line_escaped(err.value)
    assert "is not a plain kernel release" in msg and "\\x1b]0;pwned\\x07" in msg
    assert not (tmp_path / "x").exists() and not (cache / "x").exists()
    assert all(p.is_relative_to(cache / "hookql" / "vm") for p in _files(cache))


def test_elf_without_btf_pvh_or_x86(tmp_path, cache):
    for kwargs, expect in [({"btf": False}, "CONFIG_DEBUG_INFO_BTF"), ({"pvh": False}, "CONFIG_PVH"),
                           ({"machine": 183}, "not an x86-64 kernel"),
                           ({"banner": b"no banner here"}, 'no "Linux version" banner')]:
        img = tmp_path / "vmlinux"
        img.write_bytes(make_elf(**kwargs))
        with pytest.raises(vm.VMError) as err:
            vm.custom_kernel(img)
        assert expect in _one_line_escaped(err.value), kwargs


def test_custom_vmlinux_is_copied_into_the_private_cache(tmp_path, cache):
    data = make_elf()
    img = tmp_path / "vmlinux"
    img.write_bytes(data)
    k = vm.custom_kernel(img)
    digest = hashlib.sha256(data).hexdigest()
    assert (k.release, k.version, k.modules, k.boot) == ("6.9.0-test", "6.9", None, None)
    assert k.btf_path == k.image == vm.cache_root() / "custom" / digest / "vmlinux"
    assert k.btf_path.read_bytes() == data
    img.write_bytes(b"changed after the check")  # what qemu boots is the copy that was checked
    assert k.image.read_bytes() == data
    assert (k.btf_path.parent.stat().st_mode & 0o777) == 0o700
    assert vm.custom_kernel(k.btf_path) == k  # same bytes, same entry


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress], ids=["xz", "gzip"])
def test_custom_bzimage_extracts_its_vmlinux(tmp_path, cache, compress):
    elf = make_elf()
    img = tmp_path / "bzImage"
    img.write_bytes(make_bzimage(compress(elf)))
    k = vm.custom_kernel(img)
    assert k.release == "6.9.0-test" and k.boot.name == "bzImage" and k.image == k.boot
    assert k.btf_path.read_bytes() == elf and k.btf_path.parent == k.boot.parent


def test_custom_bzimage_with_an_unreadable_payload_boots_without_btf(tmp_path, cache):
    img = tmp_path / "bzImage"
    img.write_bytes(make_bzimage(b"\x02\x21\x4c\x18" + b"\0" * 64))
    k = vm.custom_kernel(img)
    assert (k.release, k.btf_path, k.image.name) == ("6.9.0-test", None, "bzImage")
    img.write_bytes(make_bzimage(b"\xfd7zXZ\x00" + b"\xff" * 64))  # xz, damaged
    with pytest.raises(vm.VMError, match="a bzImage, but its xz payload is damaged"):
        vm.custom_kernel(img)


def test_modules_directory(tmp_path, cache):
    img = tmp_path / "vmlinux"
    img.write_bytes(make_elf())
    with pytest.raises(vm.VMError, match=r"no 6\.9\.0-test/kernel/ in it"):
        vm.custom_kernel(img, tmp_path)
    mods = tmp_path / "it's; reboot -f; $(x)" / "lib" / "modules"
    (mods / "6.9.0-test" / "kernel" / "fs" / "9p").mkdir(parents=True)
    (mods / "6.9.0-test" / "kernel" / "fs" / "9p" / "9p.ko.xz").write_bytes(lzma.compress(b"\x7fELF module"))
    k = vm.custom_kernel(img, mods)
    found = vm._found_modules(k)
    assert list(found) == ["9p"] and vm._module_bytes(found["9p"]) == b"\x7fELF module"
    init = vm.init_script(k, list(found))
    bind = next(l for l in init.splitlines() if l.startswith("mount --bind"))
    assert shlex.split(bind) == ["mount", "--bind", f"/root{mods}", "/root/lib/modules"]
    assert "for m in 9p; do" in init


def test_builtin_kernel_initramfs_loads_nothing(cache):
    k = vm.Kernel("6.9.0-test", None, None, Path("/nonexistent/bzImage"))
    init = vm.init_script(k, [])
    assert "mount --bind" not in init and "for m in ; do" in init and "[ -f /modules/$m.ko ] || continue" in init
    if vm.missing_tools():
        pytest.skip(f"needs {vm.missing_tools()}")
    rd = vm.initramfs(k)
    assert rd.parent == vm.cache_root()
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=rd.open("rb"), capture_output=True, text=True).stdout
    assert "init" in listing.split() and "bin/busybox" in listing.split() and ".ko" not in listing


def test_boot_failure_is_one_escaped_line():
    console = ("[    0.000000] Linux version 6.9.0\n\n"
               "[    1.234567] mount: mounting hostroot on /lower failed: No such device\n"
               "[    1.3] Kernel panic - not syncing: Attempted to kill init! \x1b[31mred\x1b[0m\n"
               "[    1.4] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n")
    msg = vm.boot_failure(console)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("the VM did not boot: Kernel panic - not syncing: Attempted to kill init! "
                          "\\x1b[31mred\\x1b[0m; the guest needs virtio-pci")
    assert "built in or as modules" in msg
    msg = vm.boot_failure("mount: mounting hostroot on /lower failed: No such device\n"
                          "chroot: can't execute '/bin/sh': No such file or directory\n[    2.1] reboot: Power down\n")
    assert msg.startswith("the VM did not boot: mount: mounting hostroot on /lower failed: No such device; ")
    assert vm.boot_failure("").startswith("the VM did not boot: no console output")


def test_debian_package_name_is_checked(cache):
    with pytest.raises(vm.VMError, match="is not a Debian package name"):
        vm.kernel("../../etc")


# -- one boot ------------------------------------------------------------------------------------
@pytest.mark.vm
def test_default_kernel_boots_and_runs_a_command():
    if os.environ.get("HOOKQL_SKIP_VM"):
        pytest.skip("HOOKQL_SKIP_VM is set")
    assert not vm.missing_tools(), f"apt-get install {' '.join(vm.missing_tools())}"
    k = vm.kernel()
    assert k.version == "6.1" and k.btf_path.is_file()
    r = vm.run("uname -r; echo err >&2; exit 3", timeout=600)
    assert (r.status, r.stdout.strip(), r.stderr.strip()) == (3, k.release, "err"), r.console[-2000:]


@pytest.mark.vm
def test_custom_bzimage_boots_with_its_modules_and_says_why_not_without():
    if os.environ.get("HOOKQL_SKIP_VM"):
        pytest.skip("HOOKQL_SKIP_VM is set")
    assert not vm.missing_tools(), f"apt-get install {' '.join(vm.missing_tools())}"
    debian = vm.kernel()
    bz = next((debian.modules.parent.parent / "boot").glob("vmlinuz-*"))
    k = vm.custom_kernel(bz, debian.modules)
    assert k.release == debian.release and k.image.name == "bzImage"
    assert k.btf_path.read_bytes() == debian.btf_path.read_bytes()
    r = vm.run("uname -r", timeout=600, kernel=k)
    assert (r.status, r.stdout.strip()) == (0, debian.release), r.console[-2000:]
    with pytest.raises(vm.VMError) as err:  # Debian builds 9p as a module: without them the guest cannot start
        vm.run("uname -r", timeout=600, kernel=vm.custom_kernel(bz))
    assert str(err.value).startswith("the VM did not boot: mount: mounting hostroot on /lower failed")
    assert "give --modules" in str(err.value) and err.value.console
