"""The C event printer (runtime/events.c) against Python's own formatting.

Each record is printed by the C and compared with what Python makes of the same
bytes: bytes.decode(errors="replace"), ipaddress, hex(), json.dumps, and in text
mode runtime/escape.py's escape_text (control characters never print raw).  No
kernel is involved: records are built here and handed to the C sample callback.
"""
from __future__ import annotations

import ctypes
import errno
import io
import ipaddress
import json
import struct

import pytest
from hypothesis import given, settings, strategies as st

from hookql.runtime.decode import NAMES
from hookql.runtime.escape import escape_text
from hookql.runtime.events import EventPrinter

DISPLAYS = [None, "af", "proto", "tcp_state", "sock_type", "errno", "hex", "port"]


def expected_value(f: dict, raw: bytes, as_json: bool):
    """What runtime/output.py printed for one value before printing moved to C."""
    b = raw[f["offset"]: f["offset"] + f["size"]]
    if f["kind"] == "str":
        v = b.split(b"\0", 1)[0].decode(errors="replace")
    elif f["kind"] == "addr":
        a = ipaddress.IPv6Address(b)
        v = str(a.ipv4_mapped or a)
    else:
        v = int.from_bytes(b, "little", signed=f["signed"])
        d = f["display"]
        if d in NAMES:
            v = NAMES[d].get(v, v)
        elif d == "errno" and v < 0 and -v in errno.errorcode:
            v = f"-{errno.errorcode[-v]}"
        elif d == "hex":
            v = hex(v)
    return v


def expected(rec: dict, raw: bytes, as_json: bool) -> str:
    vals = {f["name"]: expected_value(f, raw, as_json) for f in rec["fields"]}
    if as_json:
        return json.dumps({"probe": rec["probe"], "line": rec["line"], "event": vals}) + "\n"
    return " ".join(f"{escape_text(k)}={escape_text(v)}" for k, v in vals.items()) + "\n"


def feed(p: EventPrinter, raw: bytes) -> None:
    """Hand one record to the C, as libbpf's ring_buffer__poll does."""
    buf = (ctypes.c_char * len(raw)).from_buffer_copy(raw)
    p.lib.hq_ev_sample(p.ctx, buf, len(raw))


def printed(recs: list[dict], raws: list[bytes], fmt: str) -> str:
    out = io.StringIO()
    p = EventPrinter(recs, fmt, out)
    try:
        for raw in raws:
            feed(p, raw)
        p.flush()
        assert p.bad == 0
    finally:
        p.close()
    return out.getvalue()


@st.composite
def fields(draw):
    n = draw(st.integers(1, 6))
    out, off = [], 8
    for i in range(n):
        kind = draw(st.sampled_from(["int", "str", "addr"]))
        if kind == "int":
            size = draw(st.sampled_from([1, 2, 4, 8]))
            f = {"kind": "int", "size": size, "signed": draw(st.booleans()), "display": draw(st.sampled_from(DISPLAYS))}
        elif kind == "str":
            f = {"kind": "str", "size": draw(st.sampled_from([16, 64])), "signed": False, "display": None}
        else:
            f = {"kind": "addr", "size": 16, "signed": False, "display": None}
        off = (off + f["size"] - 1) // f["size"] * f["size"] if kind == "int" else off
        f.update(name=f"f{i}", offset=off)
        off += f["size"]
        out.append(f)
    return out


def addr_bytes():
    mapped = st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b)
    groups = st.lists(st.sampled_from([0, 0, 0, 1, 0xffff, 0xfe80, 0x2001]), min_size=8, max_size=8)
    sparse = groups.map(lambda g: struct.pack(">8H", *g))
    return st.one_of(mapped, sparse, st.binary(min_size=16, max_size=16))


# What a hostile comm or kernel string holds: terminal escapes, C0/C1 controls, DEL, backslashes.
CONTROLS = st.sampled_from(["\x1b", "\x1b[2J", "\x1b]0;pwn\x07", "\n", "\r", "\t", "\b", "\x7f", "\x9b", "\x85",
                            "\\", "\\x1b", "\u2028", "h\u00e9", "\u65e5"])


def str_bytes(size):
    text = st.text(max_size=size // 4).map(lambda s: s.encode())
    hostile = st.lists(st.one_of(CONTROLS, st.text(max_size=3)), max_size=8).map(lambda p: "".join(p).encode())
    return st.one_of(text, hostile, st.binary(max_size=size)).map(lambda b: b[:size].ljust(size, b"\0"))


@st.composite
def record_and_bytes(draw):
    fs = draw(fields())
    size = max(f["offset"] + f["size"] for f in fs)
    raw = bytearray(draw(st.binary(min_size=size, max_size=size)))
    raw[:4] = b"\0\0\0\0"
    for f in fs:
        if f["kind"] == "addr":
            raw[f["offset"]: f["offset"] + 16] = draw(addr_bytes())
        elif f["kind"] == "str":
            raw[f["offset"]: f["offset"] + f["size"]] = draw(str_bytes(f["size"]))
    rec = {"id": 0, "probe": 'kprobe:tcp_"x"', "line": 7, "size": size, "fields": fs}
    return rec, bytes(raw)


@settings(max_examples=400, deadline=None)
@given(record_and_bytes(), st.sampled_from(["text", "json"]))
def test_c_prints_as_python_does(rb, fmt):
    rec, raw = rb
    assert printed([rec], [raw], fmt) == expected(rec, raw, fmt == "json")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_ascii_byte_prints_as_python_does(fmt):
    """DEL (0x7f) is escaped by json.dumps like the control characters: hypothesis found it once in CI."""
    fs = [{"name": "s", "kind": "str", "size": 64, "signed": False, "display": None, "offset": 8}]
    rec = {"id": 0, "probe": "p", "line": 1, "size": 72, "fields": fs}
    for start in range(1, 128, 63):
        raw = bytes(8) + bytes(range(start, min(start + 63, 128))).ljust(64, b"\0")
        assert printed([rec], [raw], fmt) == expected(rec, raw, fmt == "json")


def test_names_errno_hex_and_addresses():
    fs = [{"name": "family", "kind": "int", "size": 2, "signed": False, "display": "af", "offset": 8},
          {"name": "ret", "kind": "int", "size": 4, "signed": True, "display": "errno", "offset": 12},
          {"name": "ptr", "kind": "int", "size": 8, "signed": False, "display": "hex", "offset": 16},
          {"name": "daddr", "kind": "addr", "size": 16, "signed": False, "display": None, "offset": 24},
          {"name": "comm", "kind": "str", "size": 16, "signed": False, "display": None, "offset": 40}]
    rec = {"id": 0, "probe": "lsm:socket_connect", "line": 1, "size": 56, "fields": fs}
    raw = (bytes(8) + struct.pack("<Hxxi", 10, -111) + struct.pack("<Q", 0xffff8881) +
           ipaddress.IPv6Address("2001:db8::1").packed + b"curl\0".ljust(16, b"\0"))
    assert printed([rec], [raw], "text") == \
        "family=AF_INET6 ret=-ECONNREFUSED ptr=0xffff8881 daddr=2001:db8::1 comm=curl\n"
    line = json.loads(printed([rec], [raw], "json"))
    assert line["event"] == {"family": "AF_INET6", "ret": "-ECONNREFUSED", "ptr": "0xffff8881",
                             "daddr": "2001:db8::1", "comm": "curl"}


def test_unknown_record_is_counted_not_printed():
    rec = {"id": 0, "probe": "p", "line": 1, "size": 16,
           "fields": [{"name": "x", "kind": "int", "size": 8, "signed": False, "display": None, "offset": 8}]}
    out = io.StringIO()
    p = EventPrinter([rec], "text", out)
    bad = struct.pack("<I", 5) + bytes(12)
    short = bytes(8)
    for raw in (bad, short):
        feed(p, raw)
    p.flush()
    assert out.getvalue() == "" and p.bad == 2
    p.close()


def test_text_mode_escapes_control_characters():
    """A comm with terminal escapes prints them escaped (\\x1b, \\n, \\\\), never raw; printable UTF-8 as is."""
    fs = [{"name": "comm", "kind": "str", "size": 16, "signed": False, "display": None, "offset": 8}]
    rec = {"id": 0, "probe": "p", "line": 1, "size": 24, "fields": fs}
    comm = "\x1b[2Jh\u00e9\n\\\x07\x7f\u0085".encode()
    raw = bytes(8) + comm.ljust(16, b"\0")
    text = printed([rec], [raw], "text")
    assert text == "comm=\\x1b[2Jh\u00e9\\n\\\\\\x07\\x7f\\x85\n"
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in text)
    assert json.loads(printed([rec], [raw], "json"))["event"]["comm"] == comm.decode()


def test_text_mode_escapes_field_names():
    """A name as written in the script (`emit` of an expression) is escaped in text mode too."""
    fs = [{"name": "x\x1b[31m", "kind": "int", "size": 8, "signed": False, "display": None, "offset": 8}]
    rec = {"id": 0, "probe": "p", "line": 1, "size": 16, "fields": fs}
    assert printed([rec], [bytes(8) + struct.pack("<Q", 5)], "text") == "x\\x1b[31m=5\n"
