"""The cached library trees: $XDG_CACHE_HOME/hookql/libs/<url hash>/<commit>.

The cache directory comes from hookql.cache.dirs (the running user's, 0700,
checked before use).  A library is cloned into a private temporary directory
there, and its checkout copied without following symbolic links: a link that
leads outside the library (absolute, or `..` past its root, directly or
through other links) fails the install, so nothing outside a library is ever
read or copied.  Links inside it are copied as links.  tree_hash is what
hookql.lock records (lock.verify compares it with the cached tree).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from hookql.cache import dirs
from hookql.libs import git
from hookql.libs.confine import inside, read_all
from hookql.libs.errors import InstallError, show

def libs_dir() -> Path:
    """The checked cache directory for library sources; InstallError when it may not be used."""
    try:
        return Path(dirs.require("libs"))
    except dirs.CacheError as exc:
        raise InstallError(f"cannot use the library cache: {exc}") from None


def source_dir(url: str, commit: str) -> Path:
    if not git.check_commit(commit):
        raise InstallError(f"'{show(commit)}' is not a commit id")
    return libs_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / commit


def fetch(url: str, commit: str, what: str = "") -> Path:
    """The cached tree of `commit` from `url`, cloned and copied when it is not there yet."""
    dest = source_dir(url, commit)
    if os.path.isdir(dest) and not os.path.islink(dest):
        return dest
    what = what or f"the library at {show(url)}"
    tmp = tempfile.mkdtemp(prefix=".fetch-", dir=libs_dir())  # 0700, a fresh name
    try:
        work = os.path.join(tmp, "repo")
        git.clone(url, commit, work)
        staged = os.path.join(tmp, "tree")
        copy_tree(work, staged, what)
        os.makedirs(dest.parent, 0o700, exist_ok=True)
        try:
            os.rename(staged, dest)
        except OSError:
            if not (os.path.isdir(dest) and not os.path.islink(dest)):  # not another install's copy
                raise
    except OSError as exc:
        raise InstallError(f"{what}: cannot store it in {dest}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_link(root: str, rel: str, target: str, what: str) -> None:
    """A link at rel (under the real directory root) must point inside root, as written and as resolved."""
    lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    resolved = os.path.realpath(os.path.join(root, rel))
    if os.path.isabs(target) or lexical == ".." or lexical.startswith("../") or not inside(resolved, root):
        raise InstallError(f"{what}: {show(rel)} is a symbolic link to {show(target)}, outside the library; "
                           "a library may link only to its own files (ask its author to replace the link "
                           "with the file)")


def copy_tree(src: str, dst: str, what: str) -> None:
    """Copy the checkout at src to the new directory dst: directories, regular files, and symbolic links
    that stay inside (as links); never following a link, never reading outside src."""
    root = os.path.realpath(src)
    os.mkdir(dst, 0o755)
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(root, rel_dir)) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name == ".git":
                continue
            rel = os.path.join(rel_dir, e.name)
            st = os.lstat(e.path)
            out = os.path.join(dst, rel)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(e.path)
                _check_link(root, rel, target, what)
                os.symlink(target, out)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(out, 0o755)
                pending.append(rel)
            elif stat.S_ISREG(st.st_mode):
                _copy_file(e.path, out, 0o755 if st.st_mode & 0o100 else 0o644)
            else:
                raise InstallError(f"{what}: {show(rel)} is not a file, directory or symbolic link")


def _copy_file(src: str, dst: str, mode: int) -> None:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, f"{src} is not a regular file")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                os.write(out, b)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and content, in path order; a symbolic link contributes its
    target's text (it is never followed)."""
    entries: list[tuple[tuple[str, ...], bool]] = []  # (path parts, is a link)
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        with os.scandir(os.path.join(root, *parts)) as it:
            for e in it:
                mode = os.lstat(e.path).st_mode
                if stat.S_ISDIR(mode):
                    pending.append(parts + (e.name,))
                elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                    entries.append((parts + (e.name,), stat.S_ISLNK(mode)))
    h = hashlib.sha256()
    for parts, link in sorted(entries):
        p = os.path.join(root, *parts)
        name = os.fsencode(os.path.join(*parts))
        if link:
            h.update(name + b"\0\0symlink\0" + os.fsencode(os.readlink(p)) + b"\0")
        else:
            h.update(name + b"\0" + _read(p) + b"\0")
    return "sha256:" + h.hexdigest()

