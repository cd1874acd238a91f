"""Cache entries that carry the sha256 of their content.

An entry is one file, written whole (a private temporary file, then an atomic
rename): the line `HQBLOB1 <sha256 of the payload>` and the payload.  Reading
gives the payload only when the file is a regular file of the running user's,
writable by no one else, in a checked directory (dirs.py), and its payload
still hashes to the recorded value; anything else (truncated, damaged,
swapped, foreign) is deleted and reads as missing, so the caller rebuilds it.
Callers load what they get from memory (libbpf's open_mem, a memfd for the
event printer), so nothing can change between the check and the use.

Writing never fails the caller: a read-only or full cache turns caching off
with one warning (dirs.warn) and the caller goes on with what it built.
"""
from __future__ import annotations

import os

from hookql.cache import dirs

try:  # the hash without hashlib's OpenSSL import (2-3 ms of a warm `hookql run`)
    from _sha256 import sha256
except ImportError:  # Python 3.12+ names it _sha2; elsewhere hashlib
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

MAGIC = b"HQBLOB1 "
_HEADER = len(MAGIC) + 64 + 1
_write_failed = False


def _dir(kind: str) -> str | None:
    return dirs.usable(kind)


def get(kind: str, name: str) -> bytes | None:
    """The payload of entry `name` under cache/`kind`, verified; None when missing or not to be trusted."""
    d = _dir(kind)
    if d is None:
        return None
    path = os.path.join(d, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # a symbolic link (ELOOP) or unreadable: not ours to load
        _discard(path)
        return None
    try:
        if not dirs.trusted_file(fd, path):
            data = None
        else:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
    finally:
        os.close(fd)
    if data is None or len(data) < _HEADER or not data.startswith(MAGIC) or data[_HEADER - 1:_HEADER] != b"\n":
        _discard(path)
        return None
    payload = data[_HEADER:]
    if sha256(payload).hexdigest().encode() != data[len(MAGIC):_HEADER - 1]:
        _discard(path)
        return None
    return payload


def put(kind: str, name: str, payload: bytes) -> str | None:
    """Store payload as entry `name`; its path, or None when the cache cannot take it (warned once)."""
    global _write_failed
    if _write_failed:
        return None
    d = _dir(kind)
    if d is None:
        return None
    path = os.path.join(d, name)
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(MAGIC + sha256(payload).hexdigest().encode() + b"\n")
                f.write(payload)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        _write_failed = True
        dirs.warn(f"cannot write to the cache {d}: {exc.strerror or exc}")
        return None
    return path


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
