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
    """top/parts, created 0700 and checked as the cache is; CacheError when it may not be used."""
    path = os.path.join(top, *parts)
    if path in _verified:
        return path
    euid = os.geteuid()
    if top not in _verified:
        _check_ancestors(os.path.dirname(top), euid, top)
        try:
            os.makedirs(os.path.dirname(top), 0o700, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the directory {os.path.dirname(top)}: {exc.strerror}") from None
        _own_dir(top, euid, top)
        _verified[top] = top
    for i in range(len(parts)):
        _own_dir(os.path.join(top, *parts[:i + 1]), euid, top)
    _verified[path] = path
    return path


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


def _check_ancestors(parent: str, euid: int, target: str) -> None:
    """Every directory above the cache, on its real path: root's or ours, and writable by nobody else
    (a sticky directory like /tmp is fine: others cannot rename what we own in it)."""
    try:
        real = os.path.realpath(parent)
    except OSError as exc:
        raise CacheError(f"{target}: {exc.strerror}") from None
    d = real
    while True:
        try:
            st = os.stat(d)
        except FileNotFoundError:
            st = None  # made below, by us
        except OSError as exc:
            raise CacheError(f"{target}: cannot inspect {d}: {exc.strerror}") from None
        if st is not None:
            if st.st_uid not in (0, euid):
                raise CacheError(f"{target} is not safe: {d} is owned by {_who(st.st_uid)}, "
                                 f"who could replace what HookQL loads; {_fix_hint(euid)}")
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise CacheError(f"{target} is not safe: {d} is writable by others "
                                 f"(mode {stat.S_IMODE(st.st_mode):o}); {_fix_hint(euid)}")
        up = os.path.dirname(d)
        if up == d:
            return
        d = up


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
