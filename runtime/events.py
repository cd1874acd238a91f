"""Streaming emitted events: the ring buffer is drained and printed in C.

runtime/events.c is built once per HookQL version into the cache (with the
clang HookQL already needs) and handed to libbpf as the ring buffer's sample
callback, so printing an event runs no Python.  This module turns each emit
record's layout into the plan the C follows: field offsets and kinds, and how
every value prints (name tables, hex), in the text or JSON form that
runtime/output.py uses for everything else.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import hashlib
import json
import os
from functools import cache
from pathlib import Path

from hookql import __version__
from hookql.cache import blobs
from hookql.runtime.decode import NAMES, _families
from hookql.runtime.escape import escape_text

_SOURCE = Path(__file__).with_name("events.c")
_KINDS = {"uint": 0, "sint": 1, "str": 2, "addr": 3}
_D_NONE, _D_NAMES, _D_HEX, _D_DURATION, _D_WALLTIME, _D_KSTACK = 0, 1, 2, 3, 4, 5
_D_CGROUPS = {"cgroup": 6, "container": 7, "pod": 8}  # D_CGROUP, D_CONTAINER, D_POD: text from a callback
_CGROUP_WIDTH = {"cgroup": 24, "container": 12, "pod": 36}  # columns: a path, 12 hex digits, a uid
_WALL_WIDTH, _WALL_HEADER = 8, "TIME"  # walltime in columns: HH:MM:SS under TIME, as bcc's tools (-T)
_WALL_JSON = 28  # -9223372036.854775 at the most: seconds since the epoch, six decimals
_MAX_INT_TEXT = 24  # -9223372036854775808, or "0x" + 16 digits in quotes
_NONE = 0xFFFFFFFF  # no record printed yet


class EventsError(RuntimeError):
    """The C printer could not be built or loaded."""


class _Name(ctypes.Structure):
    _fields_ = [("value", ctypes.c_int64), ("text", ctypes.c_char_p)]


class _Field(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint32), ("size", ctypes.c_uint32), ("kind", ctypes.c_uint32),
                ("display", ctypes.c_uint32), ("prefix", ctypes.c_char_p), ("names", ctypes.POINTER(_Name)),
                ("n_names", ctypes.c_uint32), ("width", ctypes.c_uint32)]


class _Record(ctypes.Structure):
    _fields_ = [("head", ctypes.c_char_p), ("tail", ctypes.c_char_p), ("size", ctypes.c_uint32),
                ("n_fields", ctypes.c_uint32), ("max_text", ctypes.c_uint32), ("fields", ctypes.POINTER(_Field)),
                ("header", ctypes.c_char_p)]


class _Out(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int32), ("json", ctypes.c_int32), ("n_records", ctypes.c_uint32),
                ("records", ctypes.POINTER(_Record)), ("buf", ctypes.c_void_p), ("len", ctypes.c_uint64),
                ("cap", ctypes.c_uint64), ("events", ctypes.c_uint64), ("bad", ctypes.c_uint64),
                ("error", ctypes.c_int32), ("last", ctypes.c_uint32), ("wall_offset", ctypes.c_int64),
                ("stack_fd", ctypes.c_int32), ("lookup", ctypes.c_void_p), ("sym_addr", ctypes.c_void_p),
                ("sym_off", ctypes.c_void_p), ("sym_names", ctypes.c_void_p), ("n_syms", ctypes.c_uint64),
                ("wall_sec", ctypes.c_int64), ("wall_text", ctypes.c_char * 8), ("resolve", ctypes.c_void_p)]


# cgroup, container, pod values: the C calls back for their text (runtime/cgroups.py)
_RESOLVE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32)


@cache
def _library() -> ctypes.CDLL:
    src = _SOURCE.read_bytes()
    name = f"events-{hashlib.sha256(src + __version__.encode()).hexdigest()[:16]}.so"
    code = blobs.get("native", name)
    if code is None:
        code = _build(src)
        blobs.put("native", name, code)
    lib = _dlopen(code)
    lib.hq_ev_sample.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.hq_ev_sample.restype = ctypes.c_int
    lib.hq_ev_flush.argtypes = [ctypes.POINTER(_Out)]
    lib.hq_ev_flush.restype = ctypes.c_int
    lib.hq_ev_free.argtypes = [ctypes.POINTER(_Out)]
    lib.hq_ev_free.restype = None
    return lib


def _build(src: bytes) -> bytes:
    """runtime/events.c as a shared library, built with clang (codegen/build.py run_clang)."""
    from hookql.codegen.build import BuildError, clang, run_clang

    try:
        code, so, err = run_clang(clang()[0], ["-O2", "-shared", "-fPIC"], src, "events.so")
    except BuildError as exc:
        raise EventsError(str(exc))
    if code:
        raise EventsError(f"building the event printer failed:\n{err.strip()}")
    return so


def _dlopen(code: bytes) -> ctypes.CDLL:
    """Load the library from these very bytes: a memfd no other process can write, else a file in a
    private directory (hookql/cache/dirs.py private_tmpdir, never $TMPDIR)."""
    try:
        fd = os.memfd_create("hookql-events", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            os.write(fd, code)
            return ctypes.CDLL(f"/proc/self/fd/{fd}")
        except OSError:
            pass
        finally:
            os.close(fd)
    from hookql.cache import dirs

    try:
        with dirs.private_tmpdir() as tmp:
            path = os.path.join(tmp, "events.so")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
            with os.fdopen(fd, "wb") as f:
                f.write(code)
            return ctypes.CDLL(path)
    except dirs.CacheError as exc:
        raise EventsError(str(exc))


def wall_offset() -> int:
    """REALTIME - BOOTTIME in nanoseconds, taken once at start: a walltime record holds
    bpf_ktime_get_boot_ns() (CLOCK_BOOTTIME), and this plus it is the time since the epoch.  The boot clock
    is read on either side of the wall clock and the middle taken.  BOOTTIME rather than MONOTONIC: it keeps
    counting through a suspend, so the offset stays right after a resume (only a step of the wall clock
    itself, settimeofday or an NTP step, moves it: such a step during a run is not followed)."""
    import time

    b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    real = time.time_ns()
    b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return real - (b0 + b1) // 2


def _stack_names() -> list[tuple[int, str]]:
    """-errno -> how a stack the kernel could not take prints in text (runtime/ksyms.py's KStack.lines)."""
    from hookql.runtime.ksyms import stack_error

    return [(-code, f"[no stack: {stack_error(code)}]") for code in sorted(_errno.errorcode)]


def _names(display: str | None, as_json: bool) -> list[tuple[int, str]]:
    """value -> how it prints, for the displays that print names (runtime/decode.py's tables)."""
    if display == "errno":
        pairs = [(-code, f"-{name}") for code, name in _errno.errorcode.items()]
    else:
        pairs = list((_families() if display == "af" else NAMES.get(display) or {}).items())
    return [(v, json.dumps(t) if as_json else t) for v, t in pairs]


_INT_WIDTH = {(1, False): 3, (1, True): 4, (2, False): 5, (2, True): 6, (4, False): 10, (4, True): 11}
_PID_NAMES = ("pid", "tid", "ppid", "tgid")


def column_width(f: dict, names: list[tuple[int, str]]) -> int:
    """How wide an emit field's column is, from its type, as bcc's tools lay theirs out: comm 16, a pid 7
    (PID_MAX_LIMIT has 7 digits), an address 39 (the longest IPv6 text), an integer as wide as its type's
    largest value (or its longest name: AF_INET6, -ECONNREFUSED), hex 0x and two digits a byte; a longer
    string 24.  The header's name widens a column; a longer value is printed whole, not cut."""
    kind, size = f["kind"], f["size"]
    if f["display"] == "walltime":
        return _WALL_WIDTH
    if f["display"] in _CGROUP_WIDTH:
        return max(_CGROUP_WIDTH[f["display"]], len(escape_text(f["name"])))
    if kind == "str":
        width = min(size, 16 if size <= 16 else 24)
    elif kind == "addr":
        width = 39
    elif f["display"] == "hex":
        width = 2 + 2 * size
    elif f["name"].rpartition(".")[2] in _PID_NAMES or f["name"].endswith("_pid"):
        width = 7
    else:
        width = max(_INT_WIDTH.get((size, bool(f["signed"])), 20), max((len(t) for _, t in names), default=0))
    return max(width, len(escape_text(f["name"])))


class EventPrinter:
    """Prints every record of a layout's `emits` to `out` (a file with a
    descriptor: written by the C directly; anything else gets the text from
    take()).  Text is `name=value` pairs (kv) or aligned columns under a
    header line (columns: the header again whenever another emit's records
    follow, or tables were printed in between); JSON is one object a line.

    `walltime` values print as HH:MM:SS (local time) in text and seconds since the epoch in JSON, from
    `offset` (REALTIME - BOOTTIME, wall_offset() when not given).  `kstack` values need `stacks`: (the
    hq_stacks map's fd, a runtime/ksyms.py KSyms) and optionally `lookup`, the address of a function
    int(int fd, const void *key, void *value) (libbpf's bpf_map_lookup_elem when not given); in text the
    frames print under the event's line (and row), in JSON as a list.  `cgroup`, `container` and `pod`
    values print as strings from `resolver` (runtime/cgroups.py's default one when not given)."""

    def __init__(self, records: list[dict], fmt: str, out, emit_format: str = "kv", stacks=None,
                 offset: int | None = None, lookup: int | None = None, resolver=None):
        self.lib = _library()
        self.json = fmt == "json"
        self.columns = not self.json and emit_format == "columns"
        self._keep = []  # every ctypes object the C points into
        recs = (_Record * len(records))()
        for r in sorted(records, key=lambda r: r["id"]):
            recs[r["id"]] = self._record(r)
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        self.out = out
        walls = any(f["display"] == "walltime" for r in records for f in r["fields"])
        self.state = _Out(fd=fd, json=self.json, n_records=len(records), records=recs, last=_NONE,
                          wall_offset=(wall_offset() if offset is None else offset) if walls else 0,
                          stack_fd=-1, wall_sec=-1)
        self._keep.append(recs)
        if stacks is not None and any(f["display"] == "kstack" for r in records for f in r["fields"]):
            self._stacks(*stacks, lookup)
        if any(f["display"] in _D_CGROUPS for r in records for f in r["fields"]):
            self._cgroups(resolver)
        self.sample_fn = ctypes.cast(self.lib.hq_ev_sample, ctypes.c_void_p)
        self.ctx = ctypes.cast(ctypes.pointer(self.state), ctypes.c_void_p)

    def _cgroups(self, resolver) -> None:
        """Give the C a callback for the text of cgroup, container and pod values: runtime/cgroups.py's
        resolver (cached, so a callback is a dict lookup and a copy; the default one unless given).  Only
        records holding such values call it; it never fails (an unknown id is `cgroup:<id>`)."""
        from hookql.runtime import cgroups

        res = resolver or cgroups.default()
        kinds = {v: k for k, v in _D_CGROUPS.items()}

        def resolve(cid: int, display: int, buf: int, cap: int) -> int:
            try:
                text = res.display(cid, kinds[display]).encode()
            except Exception:  # never into the C: the id as the fallback says
                text = cgroups.fallback(cid).encode()
            ctypes.memmove(buf, text, min(len(text), cap))
            return len(text)  # more than cap: the C asks again with room for it all

        fn = _RESOLVE(resolve)
        self._keep.append(fn)
        self.state.resolve = ctypes.cast(fn, ctypes.c_void_p)

    def _stacks(self, fd: int, ksyms, lookup: int | None) -> None:
        """Hand the C the stack map and kallsyms (read now, once per run), sorted by address."""
        import array

        if lookup is None:
            from hookql.runtime import libbpf

            lookup = ctypes.cast(libbpf.lib().bpf_map_lookup_elem, ctypes.c_void_p).value
        addrs, names = ksyms.table()
        blob = b"\0".join(n.encode() for n in names) + b"\0"
        offs, at = array.array("I"), 0
        for n in names:
            offs.append(at)
            at += len(n.encode()) + 1
        addr_arr = (ctypes.c_uint64 * max(1, len(addrs)))(*addrs)
        off_arr = (ctypes.c_uint32 * max(1, len(offs))).from_buffer(offs) if offs else (ctypes.c_uint32 * 1)()
        names_buf = ctypes.create_string_buffer(blob, len(blob))
        self._keep += [addr_arr, offs, off_arr, names_buf]
        st = self.state
        st.stack_fd, st.lookup, st.n_syms = fd, lookup, len(addrs)
        st.sym_addr, st.sym_off = ctypes.addressof(addr_arr), ctypes.addressof(off_arr)
        st.sym_names = ctypes.addressof(names_buf)

    def _c(self, text: str) -> bytes:
        b = text.encode()
        self._keep.append(b)
        return b

    def _record(self, rec: dict) -> _Record:
        fields = (_Field * len(rec["fields"]))()
        text = 0
        header = []
        # in text a kernel stack prints under the line: the line's separators and columns skip it
        stacks = [f for f in rec["fields"] if f["display"] == "kstack"]
        shown = [f for f in rec["fields"] if self.json or f["display"] != "kstack"]
        for i, f in enumerate(rec["fields"]):
            stack = f["display"] == "kstack"
            pos = next((j for j, g in enumerate(shown) if g is f), -1)
            last = pos == len(shown) - 1
            sep = (", " if self.json else " ") if pos > 0 else ""
            prefix = f"{sep}{json.dumps(f['name'])}: " if self.json else f"{sep}{escape_text(f['name'])}="
            if self.columns:
                prefix = sep
            if stack and not self.json:  # several stacks: each under its name, as `count by ..., kstack`
                prefix = f"  {escape_text(f['name'])}:\n" if len(stacks) > 1 else ""
            kind = f["kind"] if f["kind"] != "int" else ("sint" if f["signed"] else "uint")
            names = _names(f["display"], self.json) if kind in ("uint", "sint") else []
            if stack:
                names = [] if self.json else _stack_names()
            names = [(v, t) for v, t in names if v >= 0 or kind == "sint"]
            table = (_Name * len(names))(*[_Name(v, self._c(t)) for v, t in names])
            self._keep.append(table)
            display = _D_KSTACK if stack else _D_WALLTIME if f["display"] == "walltime" else \
                _D_CGROUPS[f["display"]] if f["display"] in _D_CGROUPS else _D_NAMES if names else _D_HEX if f["display"] == "hex" else \
                _D_DURATION if f["display"] == "ns" and not self.json else _D_NONE  # 1.5ms; JSON: nanoseconds
            width = 0
            if self.columns and not stack:
                width = column_width(f, names)
                title = _WALL_HEADER if f["display"] == "walltime" else escape_text(f["name"].upper())
                width = max(width, len(title))
                header.append(title.ljust(width) if not last else title)
                if last:
                    width = 0  # the last column: no trailing spaces
            fields[i] = _Field(f["offset"], f["size"], _KINDS[kind], display, self._c(prefix), table, len(names),
                               width)
            # the most this value can print as: JSON escapes are up to 6 bytes per byte of a string (text
            # escapes up to 4: \x1b), in bytes (a name as written can hold UTF-8); a stack's frames reserve
            # their own room as they print
            longest_name = max((len(t.encode()) for _, t in names), default=0)
            value = 6 * f["size"] + 2 if kind == "str" else 48 if kind == "addr" else \
                _WALL_JSON if f["display"] == "walltime" else max(_MAX_INT_TEXT, longest_name)
            text += len(prefix.encode()) + value + width
        self._keep.append(fields)
        head_line = " ".join(header) + "\n" if self.columns and header else None
        if self.json:
            units = {f["name"]: "ns" for f in rec["fields"] if f["kind"] == "int" and f["display"] == "ns"}
            head = (f'{{"probe": {json.dumps(rec["probe"])}, "line": {rec["line"]}, '
                    + (f'"units": {json.dumps(units)}, ' if units else "") + '"event": {')
            tail = "}}\n"
        else:
            head, tail = "", "\n" if shown else ""  # only stacks: no empty line before them
        return _Record(self._c(head), self._c(tail), rec["size"], len(rec["fields"]),
                       text + len(head) + len(tail) + len((head_line or "").encode()), fields,
                       self._c(head_line) if head_line else None)

    def new_header(self) -> None:
        """Columns: print the header again before the next record (tables were printed in between)."""
        self.state.last = _NONE

    def flush(self) -> None:
        """Write what the C has formatted (after the caller flushed `out`, so output stays in order)."""
        if self.state.fd >= 0:
            err = self.lib.hq_ev_flush(ctypes.byref(self.state))
            if err:
                raise OSError(-err, os.strerror(-err))
        elif self.state.len:
            self.out.write(ctypes.string_at(self.state.buf, self.state.len).decode("utf-8", "replace"))
            self.state.len = 0

    @property
    def bad(self) -> int:
        return self.state.bad

    def close(self) -> None:
        self.lib.hq_ev_free(ctypes.byref(self.state))
