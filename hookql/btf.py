"""Kernel types read from BTF through libbpf's own API (btf__* via ctypes).

libbpf parses the BTF (raw /sys/kernel/btf/vmlinux, an ELF's .BTF section, or
bytes); this module only walks the `struct btf_type` records libbpf hands
back, lazily, so checking a script touches a handful of the ~120k types.
"""
from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hookql.cache import blobs
from hookql.runtime import libbpf

# enum btf_kind (include/uapi/linux/btf.h)
KINDS = {
    0: "unknown", 1: "int", 2: "ptr", 3: "array", 4: "struct", 5: "union",
    6: "enum", 7: "fwd", 8: "typedef", 9: "volatile", 10: "const",
    11: "restrict", 12: "func", 13: "func_proto", 14: "var", 15: "datasec",
    16: "float", 17: "decl_tag", 18: "type_tag", 19: "enum64",
}
KIND_FUNC = 12
_MODIFIERS = {"typedef", "volatile", "const", "restrict", "type_tag"}
_U32x3 = ctypes.c_uint32 * 3


@dataclass(frozen=True)
class Member:
    name: str
    type: "CType"
    bit_offset: int
    bitfield_size: int = 0


@dataclass(frozen=True)
class Param:
    name: str
    type: "CType"


@dataclass(frozen=True)
class FuncSig:
    name: str
    ret: "CType"
    params: tuple[Param, ...]

    def c_decl(self) -> str:
        args = ", ".join(p.type.c_decl(p.name) for p in self.params) or "void"
        return f"{self.ret.c_decl(self.name)}({args})"


class CType:
    """One BTF type, decoded on first use.  id 0 is void."""

    __slots__ = ("btf", "id", "kind", "name", "_vlen", "_kflag", "_size_or_type", "_addr", "__dict__")

    def __init__(self, btf: "Btf", type_id: int):
        self.btf = btf
        self.id = type_id
        if type_id == 0:
            self.kind, self.name, self._vlen, self._kflag, self._size_or_type, self._addr = "void", "void", 0, 0, 0, 0
            return
        addr = libbpf.check_ptr(btf._lib.btf__type_by_id(btf.handle, type_id), "btf__type_by_id")
        name_off, info, size_or_type = _U32x3.from_address(addr)
        self._addr = addr
        self.kind = KINDS.get((info >> 24) & 0x1F, "unknown")
        self._vlen = info & 0xFFFF
        self._kflag = info >> 31
        self._size_or_type = size_or_type
        self.name = btf.name(name_off)

    def __repr__(self) -> str:
        return f"CType({self.kind} {self.c_decl()!r} #{self.id})"

    # -- structure ---------------------------------------------------------
    def _extra(self, words: int, offset: int = 0) -> ctypes.Array:
        return (ctypes.c_uint32 * words).from_address(self._addr + 12 + offset * 4)

    @property
    def target(self) -> "CType":
        """Pointee, aliased type, return type, or element type."""
        if self.kind == "array":
            return self.btf.type(self._extra(3)[0])
        return self.btf.type(self._size_or_type)

    @property
    def size(self) -> int:
        if self.kind in ("int", "struct", "union", "enum", "enum64", "float"):
            return self._size_or_type
        if self.kind == "ptr":
            return 8
        if self.kind == "array":
            return self.nelems * self.target.size
        if self.kind in _MODIFIERS:
            return self.target.size
        return 0

    @property
    def nelems(self) -> int:
        return self._extra(3)[2] if self.kind == "array" else 0

    @property
    def int_encoding(self) -> tuple[int, bool, bool, bool]:
        """(bits, signed, char, bool) for an int."""
        enc = self._extra(1)[0]
        return enc & 0xFF, bool((enc >> 24) & 1), bool((enc >> 24) & 2), bool((enc >> 24) & 4)

    @property
    def signed(self) -> bool:
        if self.kind == "int":
            return self.int_encoding[1]
        if self.kind in ("enum", "enum64"):
            return bool(self._kflag)
        return False

    @cached_property
    def members(self) -> tuple[Member, ...]:
        if self.kind not in ("struct", "union"):
            return ()
        words = self._extra(3 * self._vlen)
        out = []
        for i in range(self._vlen):
            name_off, tid, off = words[3 * i: 3 * i + 3]
            if self._kflag:
                out.append(Member(self.btf.name(name_off), self.btf.type(tid), off & 0xFFFFFF, off >> 24))
            else:
                out.append(Member(self.btf.name(name_off), self.btf.type(tid), off))
        return tuple(out)

    @cached_property
    def params(self) -> tuple[Param, ...]:
        if self.kind != "func_proto":
            return ()
        words = self._extra(2 * self._vlen)
        return tuple(Param(self.btf.name(words[2 * i]), self.btf.type(words[2 * i + 1])) for i in range(self._vlen))

    @cached_property
    def datasec_vars(self) -> dict[str, tuple[int, int]]:
        """For a DATASEC (.rodata, .bss): variable name -> (offset, size)."""
        if self.kind != "datasec":
            return {}
        words = self._extra(3 * self._vlen)
        return {self.btf.type(words[3 * i]).name: (words[3 * i + 1], words[3 * i + 2]) for i in range(self._vlen)}

    @cached_property
    def enumerators(self) -> tuple[tuple[str, int], ...]:
        if self.kind == "enum":
            words = self._extra(2 * self._vlen)
            vals = []
            for i in range(self._vlen):
                v = words[2 * i + 1]
                if self._kflag and v >= 1 << 31:
                    v -= 1 << 32
                vals.append((self.btf.name(words[2 * i]), v))
            return tuple(vals)
        if self.kind == "enum64":
            words = self._extra(3 * self._vlen)
            return tuple(
                (self.btf.name(words[3 * i]), words[3 * i + 1] | (words[3 * i + 2] << 32)) for i in range(self._vlen)
            )
        return ()

    # -- views -------------------------------------------------------------
    def strip(self) -> "CType":
        """Skip typedefs and qualifiers to the type that gives the layout."""
        t = self
        while t.kind in _MODIFIERS:
            t = t.target
        return t

    def typedef_names(self) -> list[str]:
        """Names of the typedefs on the way to the layout type (`__be16`, `u16`...)."""
        names, t = [], self
        while t.kind in _MODIFIERS:
            if t.kind == "typedef":
                names.append(t.name)
            t = t.target
        return names

    def find_member(self, name: str) -> list[Member] | None:
        """Path of members to `name`, descending into anonymous structs/unions."""
        t = self.strip()
        for m in t.members:
            if m.name == name:
                return [m]
            if not m.name and m.type.strip().kind in ("struct", "union"):
                sub = m.type.find_member(name)
                if sub:
                    return [m, *sub]
        return None

    def member_names(self) -> list[str]:
        out: list[str] = []
        for m in self.strip().members:
            if m.name:
                out.append(m.name)
            elif m.type.strip().kind in ("struct", "union"):
                out.extend(m.type.member_names())
        return out

    def c_decl(self, var: str = "") -> str:
        """C spelling of the type, as in a declaration of `var`."""
        sep = " " if var else ""
        k = self.kind
        if k == "void":
            return f"void{sep}{var}"
        if k in ("int", "float", "typedef"):
            return f"{self.name}{sep}{var}"
        if k in ("struct", "union", "enum", "enum64"):
            word = "enum" if k == "enum64" else k
            return f"{word} {self.name or '(anon)'}{sep}{var}"
        if k == "fwd":
            return f"{'union' if self._kflag else 'struct'} {self.name}{sep}{var}"
        if k in ("const", "volatile", "restrict"):
            return f"{k} {self.target.c_decl(var)}"
        if k == "type_tag":
            return self.target.c_decl(var)
        if k == "ptr":
            tgt = self.target
            if tgt.kind == "func_proto":
                args = ", ".join(p.type.c_decl() for p in tgt.params)
                return f"{tgt.target.c_decl()} (*{var})({args})"
            inner = tgt.c_decl()
            return f"{inner} *{var}" if not inner.endswith("*") else f"{inner}*{var}"
        if k == "array":
            return f"{self.target.c_decl(var)}[{self.nelems}]"
        return f"{k}{sep}{var}"


class Btf:
    """A parsed BTF blob (kernel vmlinux BTF).  Frees libbpf's object on close."""

    def __init__(self, handle: int, label: str, keepalive: bytes | None = None, owned: bool = True):
        self._lib = libbpf.lib()
        self.handle = handle
        self.label = label
        self._keepalive = keepalive
        self._owned = owned
        self._types: dict[int, CType] = {0: CType(self, 0)}
        self._names: dict[int, str] = {}
        self._enumerators: dict[str, tuple[int, str]] | None = None
        self._tracepoints: TracepointIndex | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Btf":
        """Raw BTF (/sys/kernel/btf/vmlinux) or an ELF with a .BTF section."""
        l = libbpf.lib()
        libbpf.messages.clear()
        handle = libbpf.check_ptr(l.btf__parse(os.fsencode(path), None), "btf__parse", str(path))
        return cls(handle, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, label: str) -> "Btf":
        l = libbpf.lib()
        libbpf.messages.clear()
        buf = ctypes.create_string_buffer(data, len(data))
        handle = libbpf.check_ptr(l.btf__new(buf, len(data)), "btf__new", label)
        return cls(handle, label, keepalive=data)

    def close(self) -> None:
        if self.handle and self._owned:
            self._lib.btf__free(self.handle)
        self.handle = 0

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except (AttributeError, TypeError):
            pass

    # -- lookups -------------------------------------------------------------
    def name(self, off: int) -> str:
        s = self._names.get(off)
        if s is None:
            raw = self._lib.btf__name_by_offset(self.handle, off)
            s = self._names[off] = raw.decode() if raw else ""
        return s

    def type(self, type_id: int) -> CType:
        t = self._types.get(type_id)
        if t is None:
            t = self._types[type_id] = CType(self, type_id)
        return t

    def find(self, name: str, kind: str) -> CType | None:
        kind_id = next(k for k, v in KINDS.items() if v == kind)
        tid = self._lib.btf__find_by_name_kind(self.handle, name.encode(), kind_id)
        return self.type(tid) if tid > 0 else None

    def func(self, name: str) -> FuncSig | None:
        f = self.find(name, "func")
        if f is None:
            return None
        proto = f.target
        return FuncSig(name, proto.target, proto.params)

    def struct(self, name: str) -> CType | None:
        return self.find(name, "struct")

    def raw_data(self) -> bytes:
        size = ctypes.c_uint32()
        ptr = libbpf.check_ptr(self._lib.btf__raw_data(self.handle, ctypes.byref(size)), "btf__raw_data")
        return ctypes.string_at(ptr, size.value)

    @cached_property
    def digest(self) -> str:
        return blobs.sha256(self.raw_data()).hexdigest()[:16]  # hashlib's, without its OpenSSL import

    def type_count(self) -> int:
        return self._lib.btf__type_cnt(self.handle)

    def iter_types(self):
        for i in range(1, self.type_count()):
            yield self.type(i)

    def tracepoints(self) -> "TracepointIndex":
        """The kernel's tracepoints as BTF records them (see TracepointIndex);
        a full scan, cached on disk per BTF like the enumerators."""
        if self._tracepoints is not None:
            return self._tracepoints
        entry = f"tracepoints-{self.digest}.json"
        cached = blobs.get("btf", entry)
        if cached is not None:
            try:
                d = json.loads(cached)
                self._tracepoints = TracepointIndex(dict(d["events"]), dict(d["syscalls"]))
                return self._tracepoints
            except (ValueError, TypeError, KeyError):
                pass
        self._tracepoints = _scan_tracepoints(self)
        blobs.put("btf", entry, json.dumps({"events": self._tracepoints.events,
                                            "syscalls": self._tracepoints.syscalls}).encode())
        return self._tracepoints

    def enumerators(self) -> dict[str, tuple[int, str]]:
        """Every enumerator in the kernel: NAME -> (value, enum name).

        A full scan costs ~0.2 s, so the result is cached on disk per BTF.
        """
        if self._enumerators is not None:
            return self._enumerators
        entry = f"enums-{self.digest}.json"
        cached = blobs.get("btf", entry)  # verified; JSON besides, which only ever makes data
        if cached is not None:
            try:
                self._enumerators = {k: (v, e) for k, (v, e) in json.loads(cached).items()}
                return self._enumerators
            except (ValueError, TypeError):
                pass
        out: dict[str, tuple[int, str]] = {}
        n = self.type_count()
        for i in range(1, n):
            addr = self._lib.btf__type_by_id(self.handle, i)
            kind = (_U32x3.from_address(addr)[1] >> 24) & 0x1F
            if kind in (6, 19):
                t = self.type(i)
                for name, value in t.enumerators:
                    out.setdefault(name, (value, t.name))
        self._enumerators = out
        blobs.put("btf", entry, json.dumps(out).encode())  # without a cache, the next run scans again
        return out



# -- tracepoints -----------------------------------------------------------------
@dataclass(frozen=True)
class TracepointIndex:
    """What BTF says about tracepoints, without tracefs.

    events: event name -> its event class ("" when no class fits): the record
        is `struct trace_event_raw_<class>`.  Every tracepoint has a
        `__traceiter_<event>` function (and a `btf_trace_<event>` typedef)
        whose parameters are the TP_PROTO; each class has a
        `trace_event_raw_event_<class>` function with the class's TP_PROTO.
        An event belongs to the class with the same prototype; where several
        classes share one, the class named like the event wins (TRACE_EVENT),
        then a class that is no event of its own (DECLARE_EVENT_CLASS), then
        the longest common name prefix.  Raw-only tracepoints (DECLARE_TRACE,
        no tracefs event) have no class.
    syscalls: syscall name -> the function whose prototype names its
        arguments (`__do_sys_X`, else `__se_sys_X`; "" for no arguments).
    BTF does not record an event's category (TRACE_SYSTEM); only tracefs does.
    """

    events: dict[str, str]
    syscalls: dict[str, str]


_SYSCALL_ENTRY = ("__x64_sys_", "__arm64_sys_", "__riscv_sys_", "__s390x_sys_", "__powerpc_sys_")


def _scan_tracepoints(btf: Btf) -> TracepointIndex:
    iters: dict[str, CType] = {}
    classes: dict[str, CType] = {}
    records: set[str] = set()
    sys_do: set[str] = set()
    sys_se: set[str] = set()
    sys_entry: set[str] = set()
    lib = btf._lib
    for i in range(1, btf.type_count()):
        kind = (_U32x3.from_address(lib.btf__type_by_id(btf.handle, i))[1] >> 24) & 0x1F
        if kind not in (4, KIND_FUNC):
            continue
        t = btf.type(i)
        n = t.name
        if kind == 4:
            if n.startswith("trace_event_raw_"):
                records.add(n[16:])
        elif n.startswith("__traceiter_"):
            iters[n[12:]] = t
        elif n.startswith("trace_event_raw_event_"):
            classes[n[22:]] = t
        elif n.startswith("__do_sys_"):
            sys_do.add(n[9:])
        elif n.startswith("__se_sys_"):
            sys_se.add(n[9:])
        elif n.startswith(_SYSCALL_ENTRY):
            sys_entry.add(n.split("_sys_", 1)[1])
    classes = {c: f for c, f in classes.items() if c in records}

    def named(f: CType) -> tuple:
        return tuple((p.name, p.type.id) for p in f.target.params[1:])

    def typed(f: CType) -> tuple:
        return tuple(p.type.id for p in f.target.params[1:])

    by_named: dict[tuple, list[str]] = {}
    by_typed: dict[tuple, list[str]] = {}
    for c, f in classes.items():
        by_named.setdefault(named(f), []).append(c)
        by_typed.setdefault(typed(f), []).append(c)
    events: dict[str, str] = {}
    for e, f in iters.items():
        cands = by_named.get(named(f)) or by_typed.get(typed(f)) or []
        events[e] = _pick_class(e, cands, iters)
    syscalls: dict[str, str] = {}
    for s in sys_entry | sys_se | sys_do:
        syscalls[s] = f"__do_sys_{s}" if s in sys_do else f"__se_sys_{s}" if s in sys_se else ""
    return TracepointIndex(dict(sorted(events.items())), dict(sorted(syscalls.items())))


def _pick_class(event: str, cands: list[str], events) -> str:
    if not cands:
        return ""
    if event in cands:
        return event

    def prefix(c: str) -> int:
        a, b = event.replace("__", "_"), c.replace("__", "_")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    return max(sorted(cands), key=lambda c: (c not in events, prefix(c)))
