"""Cache entries signed with a key only the running user can read.

An entry is one file, written whole (a private temporary file, then an atomic
rename): the line `HQBLOB2 <HMAC-SHA256 of the payload>` and the payload.
The key is 32 random bytes made on first use, 0600, in the running user's
own home (dirs.key_dir: from the password database, so `sudo -E` cannot
point it elsewhere).  Reading gives the payload only when the file is a
regular file of the running user's, writable by no one else, in a checked
directory (dirs.py), and its payload carries the key's MAC: so content that
another user wrote, even into a directory root owns (a library checkout,
anything root unpacked for someone), never passes.  Anything else
(truncated, damaged, swapped, foreign) is deleted and reads as missing, so
the caller rebuilds it.  Callers load what they get from memory (libbpf's
open_mem, a memfd for the event printer), so nothing can change between the
check and the use.

Writing never fails the caller: a read-only or full cache turns caching off
with one warning (dirs.warn) and the caller goes on with what it built.
"""
from __future__ import annotations

import os
from _operator import _compare_digest as _same  # hmac.compare_digest, without importing hmac

from hookql.cache import dirs

try:  # the hash without hashlib's OpenSSL import (2-3 ms of a warm `hookql run`)
    from _sha256 import sha256
except ImportError:  # Python 3.12+ names it _sha2; elsewhere hashlib
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

MAGIC = b"HQBLOB2 "
_HEADER = len(MAGIC) + 64 + 1
_write_failed = False
_pads: tuple[bytes, bytes] | None = None


def _mac(payload: bytes) -> bytes | None:
    """HMAC-SHA256 (RFC 2104) of payload under the user's cache key, as hex; None without a key."""
    global _pads
    if _pads is None:
        key = _key()
        if key is None:
            return None
        block = key.ljust(64, b"\0")
        _pads = bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)
    inner = sha256(_pads[0] + payload).digest()
    return sha256(_pads[1] + inner).hexdigest().encode()


def _key() -> bytes | None:
    try:
        d = dirs.key_dir()
    except dirs.CacheError as exc:
        dirs.warn(str(exc))
        return None
    path = os.path.join(d, "key")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # another process made it: read theirs
            except OSError as exc:
                dirs.warn(f"cannot create the cache key {path}: {exc.strerror}")
                return None
            try:
                key = os.urandom(32)
                os.write(fd, key)
                return key
            finally:
                os.close(fd)
        except OSError as exc:
            dirs.warn(f"cannot read the cache key {path}: {exc.strerror}")
            return None
        try:
            ok = dirs.trusted_file(fd, path) and not os.fstat(fd).st_mode & 0o077
            key = os.read(fd, 64) if ok else b""
        finally:
            os.close(fd)
        if len(key) != 32:
            dirs.warn(f"the cache key {path} is not safe (another user can read or write it, or it is damaged); "
                      f"delete it")
            return None
        return key
    return None


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
    mac = _mac(payload)
    if mac is None:
        return None  # no key to check it with (warned): unused, and left as it is
    if not _same(mac, data[len(MAGIC):_HEADER - 1]):
        _discard(path)
        return None
    return payload


def put(kind: str, name: str, payload: bytes) -> str | None:
    """Store payload as entry `name`; its path, or None when the cache cannot take it (warned once)."""
    global _write_failed
    if _write_failed:
        return None
    d = _dir(kind)
    mac = _mac(payload) if d is not None else None
    if mac is None:
        return None
    path = os.path.join(d, name)
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(MAGIC + mac + b"\n")
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
