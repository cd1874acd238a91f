"""Where the cache lives, and whether it may be trusted.

The cache is $XDG_CACHE_HOME/hookql (default ~/.cache/hookql).  Before any
part of it is used, every directory on its real path must be owned by root
or by the running user and be writable by no one else (a world-writable
directory such as /tmp is accepted only with its sticky bit, and only above
a directory we own); HookQL's own directories must be the running user's
and are made 0700.  That is ssh's StrictModes: `sudo -E`, which keeps a
user's XDG_CACHE_HOME, must not let that user plant what root then loads.

A cache that fails the checks, or cannot be written (read-only, full), is
not used: one warning says why and what to do, and the run goes on without
it (every run then compiles).  `require` is for the callers that cannot do
without one (library installs).

Plain os and stat only: `hookql run`'s warm path comes through here.
"""
from __future__ import annotations

import os
import stat
import sys

_warned: set[str] = set()
_verified: dict[str, str] = {}  # real path -> path, directories already checked in this process


class CacheError(Exception):
    """The cache (or a part of it) cannot be used; the message says why and what to do."""


def base() -> str:
    """The cache root, unchecked."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "hookql")


def require(*parts: str) -> str:
    """The cache directory base()/parts, created 0700 and checked; CacheError when it may not be used."""
    return private(base(), *parts)


def state_base() -> str:
    """Where HookQL keeps state that is not a cache (the REPL's history): $XDG_STATE_HOME/hookql."""
    root = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(root, "hookql")


def private(top: str, *parts: str) -> str:
    """The real path of top/parts, created 0700 and checked as the cache is; CacheError when it may not be
    used.  Callers use the real path returned, never `top` again: every directory on it is root's or
    ours and writable by nobody else, so no one else can redirect it later."""
    path = os.path.join(top, *parts)
    if path in _verified:
        return _verified[path]
    euid = os.geteuid()
    if top not in _verified:
        real_top = trusted_path(top, euid, top)
        try:
            os.makedirs(os.path.dirname(real_top), 0o700, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the directory {os.path.dirname(real_top)}: {exc.strerror}") from None
        if trusted_path(top, euid, top) != real_top:  # anything changed while we created it
            raise CacheError(f"{top} changed while HookQL was checking it; try again")
        _own_dir(real_top, euid, top)
        _verified[top] = real_top
    real = _verified[top]
    for part in parts:
        real = os.path.join(real, part)
        _own_dir(real, euid, top)
    _verified[path] = real
    return real


def key_dir() -> str:
    """Where the key that signs cache entries lives (blobs.py): under the running user's home from the
    password database, not $HOME or XDG_CACHE_HOME, which `sudo -E` keeps from another user; a user
    without a usable home keeps it in the cache itself."""
    import pwd

    try:
        return private(os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache", "hookql"))
    except (KeyError, CacheError):
        return require()


class private_tmpdir:
    """A new 0700 directory for one job (clang's output), removed after: under the checked cache
    (cache/tmp), else in /tmp when /tmp itself passes the checks (root's, sticky).  Never $TMPDIR:
    `sudo -E` keeps a user's, who could rename our directory in it and swap what we read back."""

    def __enter__(self) -> str:
        import tempfile

        try:
            base = require("tmp")
        except CacheError:
            try:
                base = trusted_path("/tmp", os.geteuid(), "/tmp")
            except CacheError as exc:
                raise CacheError(f"no private place for temporary files: {exc}") from None
        self.path = tempfile.mkdtemp(prefix="hookql-", dir=base)
        return self.path

    def __exit__(self, *exc) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def read_own(path: str) -> bytes:
    """A file we just made in a private directory: never through a link, and ours."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise CacheError(f"{path} is not the file HookQL made")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def usable(*parts: str) -> str | None:
    """require(), or None after one warning: the caller goes on without a cache."""
    try:
        return require(*parts)
    except CacheError as exc:
        warn(str(exc))
        return None


def warn(message: str, going_on: str = "running without a cache") -> None:
    """Say it once per process, on stderr, with what HookQL does instead."""
    if message not in _warned:
        _warned.add(message)
        print(f"hookql: warning: {message}; {going_on}", file=sys.stderr)


def trusted_file(fd: int, path: str) -> bool:
    """An open cache file may be read: a regular file of ours that no one else can write."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _who(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _fix_hint(euid: int) -> str:
    where = "XDG_CACHE_HOME (XDG_STATE_HOME for the REPL's history)"
    if euid == 0:
        return f"as root, use root's own: run sudo without -E, or set {where} to a directory only root can write"
    return f"set {where} to a directory only you can write"


def trusted_file_path(path: str) -> str:
    """The real path of an existing file HookQL will run or read as trusted (clang): every directory and
    link on the way passes trusted_path's checks, and the file is root's or ours, writable by nobody else."""
    euid = os.geteuid()
    real = trusted_path(path, euid, path, leaf=True, hint="use one that only root can change")
    st = os.stat(real)
    if st.st_uid not in (0, euid):
        raise CacheError(f"{path} is not safe to run: {real} is owned by {_who(st.st_uid)}, who could make "
                         "HookQL run anything")
    if st.st_mode & 0o022:
        raise CacheError(f"{path} is not safe to run: {real} is writable by others (mode {st.st_mode & 0o7777:o})")
    return real


def trusted_path(path: str, euid: int, target: str, leaf: bool = False, hint: str | None = None) -> str:
    """The real path of `path`, resolved one component at a time from /: every directory passed through
    must be root's or ours and writable by nobody else (a sticky directory such as /tmp may be, but then
    what we pass through in it must be root's or ours), and so must every symbolic link's directory:
    nothing on the way can be changed by another user.  Components that do not exist yet are kept as
    written (we create them).  CacheError names the first one that fails."""
    hint = hint or _fix_hint(euid)
    pending = [p for p in reversed(os.path.abspath(path).split("/")) if p]
    cur, shared, hops = "/", False, 0
    _trusted_dir(cur, os.stat(cur), euid, target, hint)
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)  # cur has no links in it: its parent is the real one
            shared = _trusted_dir(cur, os.stat(cur), euid, target, hint)  # checked already: only its flag
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            if ".." in pending:
                raise CacheError(f"{target}: '..' after {nxt}, which does not exist; write the path without '..'")
            return os.path.join(nxt, *reversed(pending))
        except OSError as exc:
            raise CacheError(f"{target}: cannot inspect {nxt}: {exc.strerror}") from None
        if shared and st.st_uid not in (0, euid):  # in /tmp: another user's entry, which they can swap
            raise CacheError(f"{target} is not safe: {nxt} is owned by {_who(st.st_uid)}, who could replace "
                             f"what HookQL loads; {hint}")
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise CacheError(f"{target}: too many levels of symbolic links")
            link = os.readlink(nxt)
            pending.extend(p for p in reversed(link.split("/")) if p)
            if link.startswith("/"):
                cur, shared = "/", False
            continue
        if not stat.S_ISDIR(st.st_mode):
            if leaf and not pending:
                return nxt  # the file itself: trusted_file_path checks it
            raise CacheError(f"{target}: {nxt} is not a directory")
        shared = _trusted_dir(nxt, st, euid, target, hint)
        cur = nxt
    return cur


def _trusted_dir(d: str, st: os.stat_result, euid: int, target: str, hint: str) -> bool:
    """d may be passed through (CacheError if not); True when it is a sticky directory others can write."""
    if st.st_uid not in (0, euid):
        raise CacheError(f"{target} is not safe: {d} is owned by {_who(st.st_uid)}, "
                         f"who could replace what HookQL loads; {hint}")
    if st.st_mode & 0o022:
        if not st.st_mode & stat.S_ISVTX:
            raise CacheError(f"{target} is not safe: {d} is writable by others "
                             f"(mode {stat.S_IMODE(st.st_mode):o}); {hint}")
        return True
    return False


def _own_dir(d: str, euid: int, top: str) -> None:
    """d exists (made 0700 if not) as a real directory of ours that no one else can write."""
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(f"cannot create the directory {d}: {exc.strerror}") from None
    try:
        st = os.lstat(d)
    except OSError as exc:
        raise CacheError(f"{d}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"{d} is not safe: it is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a directory'}; "
                         f"remove it, or {_fix_hint(euid)}")
    if st.st_uid != euid:
        raise CacheError(f"{d} is not safe: it is owned by {_who(st.st_uid)}, not by "
                         f"{_who(euid)} who runs HookQL; {_fix_hint(euid)}")
    if st.st_mode & 0o022:
        raise CacheError(f"{d} is not safe: it is writable by others "
                         f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 700 {d}`, or {_fix_hint(euid)}")
    if st.st_mode & 0o077:
        try:
            os.chmod(d, 0o700)  # ours, made before HookQL made them private
        except OSError:
            pass
