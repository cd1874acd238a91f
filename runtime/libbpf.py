"""ctypes bindings to the system libbpf (libbpf.so.1).

Only what HookQL calls is declared, each with its exact C signature, so a
wrong argument fails in ctypes rather than inside libbpf.  libbpf >= 1.0
returns NULL / negative errno and sets errno; callers turn that into
LibbpfError with the call's name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_u32 = ctypes.c_uint32
c_s32 = ctypes.c_int32


class LibbpfError(OSError):
    """A libbpf call failed; errno and the call name are kept for messages."""


class LibbpfMissing(RuntimeError):
    """libbpf.so.1 is not installed."""


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    # BTF objects
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__new": (c_void_p, [c_void_p, c_u32]),
    "btf__free": (None, [c_void_p]),
    "btf__type_cnt": (c_u32, [c_void_p]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_u32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_u32]),
    "btf__find_by_name_kind": (c_s32, [c_void_p, c_char_p, c_u32]),
    "btf__raw_data": (c_void_p, [c_void_p, ctypes.POINTER(c_u32)]),
    "libbpf_major_version": (c_u32, []),
    "libbpf_minor_version": (c_u32, []),
}


@cache
def lib() -> ctypes.CDLL:
    """Load libbpf once, with every used function's prototype declared."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise LibbpfMissing(
                "libbpf.so.1 was not found; install it (Debian/Ubuntu: "
                "apt-get install libbpf1, Fedora: dnf install libbpf)"
            ) from exc
    for fn, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(handle, fn)
        f.restype = restype
        f.argtypes = argtypes
    return handle


def version() -> str:
    l = lib()
    return f"{l.libbpf_major_version()}.{l.libbpf_minor_version()}"


def check_ptr(ptr: int | None, call: str, what: str = "") -> int:
    """Turn a NULL return into LibbpfError carrying errno."""
    if not ptr:
        err = ctypes.get_errno() or 22
        raise LibbpfError(err, f"{call}{' ' + what if what else ''}: {os.strerror(err)}")
    return ptr
