"""ctypes bindings to the system libbpf (libbpf.so.1).

Only what HookQL calls is declared, each with its exact C signature, so a
wrong argument fails in ctypes rather than inside libbpf.  libbpf >= 1.0
returns NULL / negative errno and sets errno; callers turn that into
LibbpfError with the call's name.
"""
from __future__ import annotations

import ctypes
import os

# No collections or functools: this module is on the way to a warm attach, where each import shows.

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
    "libbpf_strerror": (ctypes.c_int, [ctypes.c_int, c_char_p, ctypes.c_size_t]),
    "libbpf_set_print": (c_void_p, [c_void_p]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    # objects and programs
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__open_mem": (c_void_p, [c_char_p, ctypes.c_size_t, c_void_p]),
    "bpf_object__load": (ctypes.c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [c_void_p, ctypes.c_bool]),
    "bpf_program__fd": (ctypes.c_int, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_perf_event": (c_void_p, [c_void_p, ctypes.c_int]),
    "bpf_link__fd": (ctypes.c_int, [c_void_p]),
    "bpf_link__destroy": (ctypes.c_int, [c_void_p]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, c_void_p, ctypes.POINTER(c_u32)]),
    # maps
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_map__fd": (ctypes.c_int, [c_void_p]),
    "bpf_map__set_max_entries": (ctypes.c_int, [c_void_p, c_u32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_map__set_initial_value": (ctypes.c_int, [c_void_p, c_void_p, ctypes.c_size_t]),
    "bpf_map__reuse_fd": (ctypes.c_int, [c_void_p, ctypes.c_int]),
    "bpf_map_create": (ctypes.c_int, [ctypes.c_int, c_char_p, c_u32, c_u32, c_u32, c_void_p]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, c_void_p, c_void_p]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, c_void_p]),
    "bpf_map_lookup_and_delete_elem": (ctypes.c_int, [ctypes.c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (ctypes.c_int, [ctypes.c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                            ctypes.POINTER(c_u32), c_void_p]),
    "bpf_map_lookup_and_delete_batch": (ctypes.c_int, [ctypes.c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                                       ctypes.POINTER(c_u32), c_void_p]),
    "bpf_enable_stats": (ctypes.c_int, [ctypes.c_int]),
    # ring buffers
    "ring_buffer__new": (c_void_p, [ctypes.c_int, c_void_p, c_void_p, c_void_p]),
    "ring_buffer__poll": (ctypes.c_int, [c_void_p, ctypes.c_int]),
    "ring_buffer__consume": (ctypes.c_int, [c_void_p]),
    "ring_buffer__epoll_fd": (ctypes.c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
}

# ring_buffer__new's sample_fn is runtime/events.c's hq_ev_sample, passed as a plain pointer

# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, c_char_p, c_void_p)
LEVELS = {0: "warning", 1: "info", 2: "debug"}
# libbpf's messages are kept, not printed: callers show them with their own error.
messages: list[tuple[str, str]] = []  # the last MAX_MESSAGES
MAX_MESSAGES = 200
# Debug lines (hundreds per load) are formatted only for -v: each costs a callback into Python.
keep_debug = False


_handle: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """Load libbpf once, with every used function's prototype declared."""
    global _handle
    if _handle is None:
        _handle = _load()
    return _handle


def _load() -> ctypes.CDLL:
    try:
        handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        from ctypes.util import find_library  # runs ldconfig: only when the usual soname is not there

        try:
            handle = ctypes.CDLL(find_library("bpf") or "libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise LibbpfMissing(
                "libbpf.so.1 was not found; install it (Debian/Ubuntu: "
                "apt-get install libbpf1, Fedora: dnf install libbpf)"
            ) from exc
    for fn, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(handle, fn)
        f.restype = restype
        f.argtypes = argtypes
    handle.libbpf_set_print(ctypes.cast(_print_cb, c_void_p))
    return handle


_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [c_char_p, ctypes.c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = ctypes.c_int


# The size of a va_list's state, which va_copy duplicates: formatting consumes
# it, and a message longer than the first buffer is formatted twice.
_VA_LIST_SIZE = {"x86_64": 24, "AMD64": 24, "aarch64": 32, "arm64": 32}.get(os.uname().machine)
_FIRST_BUF = 4096
_FALLBACK_BUF = 1 << 24  # elsewhere: one pass, as large as libbpf's biggest verifier log buffer


def _format(fmt: bytes, args: int) -> tuple[str, int]:
    """The whole message: libbpf prints a verifier log (up to 16 MiB) as one
    message, which a fixed buffer would cut mid-instruction, before the line
    that failed."""
    # On x86-64 and arm64 a va_list argument is passed as a pointer to its
    # state, so libc's vsnprintf can format it for us; copying that state is va_copy.
    if _VA_LIST_SIZE is None:
        buf = ctypes.create_string_buffer(_FALLBACK_BUF)
        n = _libc.vsnprintf(buf, len(buf), fmt, args)
        return buf.value.decode(errors="replace"), n
    saved = ctypes.create_string_buffer(ctypes.string_at(args, _VA_LIST_SIZE), _VA_LIST_SIZE)
    buf = ctypes.create_string_buffer(_FIRST_BUF)
    n = _libc.vsnprintf(buf, len(buf), fmt, args)
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        n = _libc.vsnprintf(buf, len(buf), fmt, ctypes.addressof(saved))
    return buf.value.decode(errors="replace"), n


@_PRINT_FN
def _print_cb(level: int, fmt: bytes, args: int) -> int:
    if level == 2 and not keep_debug:
        return 0
    text, n = _format(fmt, args)
    messages.append((LEVELS.get(level, str(level)), text.rstrip()))
    if len(messages) > MAX_MESSAGES:
        del messages[:-MAX_MESSAGES]
    return max(n, 0)


def annotate_log(log: str, source: str, lines: dict) -> str:
    """A verifier log with the script's own text on its line-info lines.

    clang records `; <C source line> @ file:line` for each instruction, but the
    #line directives point it at the script, whose text it cannot read: the
    lines read `;  @ t.hq:5`. `lines` (the layout's "lines": {line: text})
    fills them in: `; count by comm @ t.hq:5`."""
    import re

    def fill(m: "re.Match") -> str:
        if m[2] != source:
            return m[0]
        text = lines.get(str(m[3])) or lines.get(int(m[3])) if lines else None
        return f"; {text} @ {m[2]}:{m[3]}" if text else m[0]
    return re.sub(r"^; ( *) @ (.+):(\d+)$", fill, log, flags=re.M)


def strerror(err: int) -> str:
    """errno text, including libbpf's own codes (4000+: bad ELF, wrong kernel...)."""
    buf = ctypes.create_string_buffer(256)
    if lib().libbpf_strerror(err, buf, len(buf)) == 0:
        return buf.value.decode()
    return os.strerror(err)


def version() -> str:
    l = lib()
    return f"{l.libbpf_major_version()}.{l.libbpf_minor_version()}"


def check_ptr(ptr: int | None, call: str, what: str = "") -> int:
    """Turn a NULL return into LibbpfError carrying errno."""
    if not ptr:
        _raise(ctypes.get_errno() or 22, call, what)
    return ptr


def check_int(ret: int, call: str, what: str = "") -> int:
    """Turn a negative return (-errno, libbpf >= 1.0) into LibbpfError."""
    if ret < 0:
        _raise(-ret, call, what)
    return ret


def _raise(err: int, call: str, what: str):
    warn = [m for lvl, m in messages if lvl == "warning"]
    detail = f" ({warn[-1].removeprefix('libbpf: ')})" if warn else ""
    raise LibbpfError(err, f"{call}{' ' + what if what else ''}: {strerror(err)}{detail}")
