"""HookQL's value types, and how kernel (BTF) types map onto them.

The language has few types: integers (with a width, a sign and a display
such as port, address family or errno), booleans, strings, IP addresses,
CIDR networks, sets, and pointers/structs that only serve member access.
Network byte order never reaches the user: a `__be16` reads as a host-order
integer, and codegen inserts the swap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

# display hints for integers: how the runtime prints them
AF, PORT, PROTO, TCP_STATE, ERRNO, SOCK_TYPE, NS, HEX = "af", "port", "proto", "tcp_state", "errno", "sock_type", "ns", "hex"
TS = "ts"  # a point in time (bpf_ktime_get_ns); NS is a duration
DISPLAY_NAMES = {AF: "address family", PORT: "port", PROTO: "IP protocol", TCP_STATE: "TCP state",
                 ERRNO: "errno", SOCK_TYPE: "socket type", NS: "nanoseconds"}


@dataclass(frozen=True)
class Type:
    kind: str  # int bool str addr cidr set ptr struct opaque
    bits: int = 64
    signed: bool = False
    display: str | None = None
    version: int | None = None  # addr/cidr: 4, 6, or None when either
    size: int = 0  # str: bytes of the buffer (comm: 16)
    elem: "Type | None" = None  # set element
    big_endian: bool = False  # int read from a __be field; codegen swaps it
    ctype: Any = field(default=None, compare=False)  # BTF type behind ptr/struct/int
    cname: str = ""  # C spelling for messages ("struct sock *", "size_t")
    # str: read from user memory (bpf_probe_read_user_str), never as kernel memory: a syscall tracepoint's
    # `const char *` argument.  Once read it is a string like any other (a copy in the probe's buffer).
    user: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        if self.kind == "int" and self.display == NS:
            return "duration"
        if self.kind == "int" and self.display == TS:
            return "timestamp"
        if self.kind == "record":
            return "record"
        if self.kind == "int":
            base = self.cname or f"{'s' if self.signed else 'u'}{self.bits}"
            shown = "integer" if base == "integer" else f"integer, {base}"
            return f"{shown}, {DISPLAY_NAMES[self.display]}" if self.display in DISPLAY_NAMES else shown
        if self.kind == "str":
            return "string (from user memory)" if self.user else "string"
        if self.kind == "addr":
            return {4: "IPv4 address", 6: "IPv6 address"}.get(self.version, "IP address")
        if self.kind == "cidr":
            return {4: "IPv4 network", 6: "IPv6 network"}.get(self.version, "network")
        if self.kind == "set":
            return f"set of {self.elem}"
        if self.kind in ("ptr", "struct", "opaque"):
            return self.cname or self.kind
        return self.kind

    @property
    def is_scalar(self) -> bool:
        """Can be a key, an emitted value or compared."""
        return self.kind in ("int", "bool", "str", "addr", "ptr")

    @property
    def is_int(self) -> bool:
        return self.kind == "int"

    def with_display(self, display: str | None) -> "Type":
        return replace(self, display=display)


def INT(bits: int = 64, signed: bool = False, display: str | None = None, cname: str = "") -> Type:
    return Type("int", bits=bits, signed=signed, display=display, cname=cname)


BOOL = Type("bool", bits=8)
# Time: `ts` is a timestamp (monotonic nanoseconds); `ts - start[k]` and `10ms` are durations (nanoseconds).
DURATION = Type("int", bits=64, signed=False, display=NS, cname="duration")
TIMESTAMP = Type("int", bits=64, signed=False, display=TS, cname="timestamp")
RECORD = Type("record")  # a state map's value of several fields: read as who[k].comm
LITERAL_INT = Type("int", bits=64, signed=True, cname="integer")
STR = Type("str", size=0)


def string(size: int) -> Type:
    return Type("str", size=size)


def addr(version: int | None = None) -> Type:
    return Type("addr", version=version, bits=128)


def cidr(version: int | None) -> Type:
    return Type("cidr", version=version)


def set_of(elem: Type) -> Type:
    return Type("set", elem=elem)


# -- from BTF ---------------------------------------------------------------
_BE = {"__be16": 16, "__be32": 32, "__be64": 64}
_ADDR_STRUCTS = {"in6_addr": 6, "in_addr": 4}


def from_ctype(ct) -> Type:
    """The HookQL type of a value of BTF type `ct`."""
    names = ct.typedef_names()
    t = ct.strip()
    cname = ct.c_decl()
    for n in names:
        if n in _BE:
            return Type("int", bits=_BE[n], signed=False, big_endian=True, ctype=ct, cname=n)
    if t.kind == "int":
        bits, signed, _char, is_bool = t.int_encoding
        if is_bool:
            return replace(BOOL, ctype=ct, cname=cname)
        return Type("int", bits=bits, signed=signed, ctype=ct, cname=cname)
    if t.kind in ("enum", "enum64"):
        return Type("int", bits=t.size * 8, signed=t.signed, ctype=ct, cname=cname,
                    display=_ENUM_DISPLAY.get(t.name, f"enum {t.name}" if t.name else None))
    if t.kind == "ptr":
        tgt = t.target.strip()
        if tgt.kind in ("struct", "union"):
            return Type("ptr", ctype=ct, cname=cname)
        if tgt.kind == "int" and tgt.int_encoding[2] or (tgt.kind == "int" and tgt.name == "char"):
            return Type("str", size=64, ctype=ct, cname=cname)
        return Type("int", bits=64, display=HEX, ctype=ct, cname=cname)
    if t.kind == "array":
        el = t.target.strip()
        if el.kind == "int" and el.size == 1 and (el.int_encoding[2] or "char" in el.name):
            return Type("str", size=t.nelems, ctype=ct, cname=cname)
        return Type("opaque", ctype=ct, cname=cname)
    if t.kind in ("struct", "union"):
        if t.name in _ADDR_STRUCTS:
            return replace(addr(_ADDR_STRUCTS[t.name]), ctype=ct, cname=cname)
        return Type("struct", ctype=ct, cname=cname)
    return Type("opaque", ctype=ct, cname=cname)


_ENUM_DISPLAY = {"sock_type": SOCK_TYPE}


def struct_of(ty: Type):
    """The BTF struct/union reached by member access on `ty`, or None."""
    if ty.ctype is None:
        return None
    t = ty.ctype.strip()
    if ty.kind == "ptr":
        t = t.target.strip()
    return t if t.kind in ("struct", "union") else None


USER_STR = 256  # bytes read of a user string (a syscall's `const char *filename`), NUL included


def tp_field_type(ctype: str, size: int, signed: bool, name: str, syscall: bool = False) -> Type:
    """Type of a tracepoint format field (`field:__u8 saddr[4]; size:4; signed:0;`).

    In a syscall tracepoint (`syscall`), a `char *` / `const char *` argument is a user pointer to a
    string: typed a user string, read with bpf_probe_read_user_str.  Other pointers stay numbers."""
    c = ctype.strip()
    if syscall and re.fullmatch(r"(const\s+)?char\s*\*", c):
        return Type("str", size=USER_STR, cname=c, user=True)
    if c.startswith("__data_loc"):
        return Type("str", size=256, cname=c)
    if "[" in name or c.endswith("]"):
        if size in (4, 16) and "addr" in name:
            return replace(addr(4 if size == 4 else 6), cname=c)
        if "char" in c:
            return Type("str", size=size, cname=c)
        return Type("opaque", cname=c)
    if "*" in c:  # often a user-space pointer (syscalls): shown as a number, never dereferenced
        return INT(64, False, HEX, c)
    return INT(size * 8, signed, cname=c)
