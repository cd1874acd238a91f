"""Reading files only inside a directory.

A project's `use "PATH"`, a library's modules and its hookql.toml are read
through here: the file's real path (symbolic links resolved) must be inside
the real root, it must be a regular file, and nothing is opened before the
first check passes.  The open file's real path is checked again, so a link
swapped in between cannot redirect the read.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path


class Outside(Exception):
    """The path leads outside the root; nothing of it was read."""

    def __init__(self, path: str, root: str, link: bool):
        super().__init__(path)
        self.path, self.root, self.link = path, root, link


def real(path: str | Path) -> str:
    return os.path.realpath(path)


def inside(path: str, root: str) -> bool:
    """path (real) is root (real) or under it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def check(path: str | Path, root: str | Path, root_is_real: bool = False) -> str:
    """The real path of `path`, or Outside when it is not inside `root`.  root_is_real: `root` is a real
    path the caller fixed earlier (from a file it opened): it is compared as it is, and a root that no
    longer resolves to itself (a directory on it swapped for a link since) is Outside."""
    if "\0" in str(path) or "\0" in str(root):
        raise OSError(22, "Invalid argument (a NUL character in the path)")
    root_r = str(root) if root_is_real else real(root)
    if root_is_real and real(root) != root_r:
        raise Outside(str(path), str(root), link=True)
    p = real(path)
    if not inside(p, root_r):
        # inside as written, outside once resolved: a symbolic link leads out
        lexical = os.path.normpath(os.path.abspath(path))
        link = inside(lexical, root_r) or inside(lexical, os.path.normpath(os.path.abspath(root)))
        raise Outside(str(path), str(root), link)
    return p


def read_bytes(path: str | Path, root: str | Path) -> bytes:
    """The content of `path`, which must be a regular file inside `root`; Outside or OSError when not."""
    return read_real(path, root)[0]


def read_real(path: str | Path, root: str | Path, root_is_real: bool = False) -> tuple[bytes, str]:
    """(the content of `path`, the real path of the file read); as read_bytes."""
    p = check(path, root, root_is_real)
    root_r = str(root) if root_is_real else real(root)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW
    fd = os.open(p, flags)
    try:
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = p  # no /proc: the path was resolved and its last component not followed
        if not inside(opened, root_r):
            raise Outside(str(path), str(root), link=True)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "Is a directory") if stat.S_ISDIR(st.st_mode) else \
                OSError(22, "not a regular file")
        return read_all(fd), opened
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    """Everything left to read from an open file."""
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def read_text(path: str | Path, root: str | Path) -> str:
    return read_bytes(path, root).decode("utf-8")
