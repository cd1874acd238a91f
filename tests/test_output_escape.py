"""Text output never prints a control character raw (runtime/escape.py).

A process name is anyone's to choose (prctl(PR_SET_NAME), an executable's
name) and can hold terminal escape sequences; so can a script's file name and
a library's source.  Tables, headers, `emit` lines and diagnostics print them
escaped (`\\x1b`, `\\n`, `\\\\`); JSON escapes them as JSON does.  The last
tests run a real process with such a comm under `hookql run` on this kernel.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import hookql_cmd
from hookql.diagnostics import Diagnostic
from hookql.runtime.decode import Row
from hookql.runtime.escape import escape_text
from hookql.runtime.output import TextPrinter
from hookql.source import Source, Span

WORKLOAD = Path(__file__).with_name("workload.py")
TP = "tracepoint:syscalls:sys_enter_getsockopt"


def raw_controls(text: str) -> set[str]:
    """Control characters (C0 but newline, DEL, C1) in printed text."""
    return {c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0}


# -- the scheme -------------------------------------------------------------------------------------------------
def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] != "\\":
            out.append(text[i])
            i += 1
        elif text[i + 1] == "x":
            out.append(chr(int(text[i + 2: i + 4], 16)))
            i += 4
        elif text[i + 1] == "u":  # bidi controls, line separators, lone surrogates
            out.append(chr(int(text[i + 2: i + 6], 16)))
            i += 6
        else:
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[text[i + 1]])
            i += 2
    return "".join(out)


def test_scheme():
    assert escape_text("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert escape_text("a\nb\tc\rd\\e\x00\x7f\x85\x9f") == "a\\nb\\tc\\rd\\\\e\\x00\\x7f\\x85\\x9f"
    assert escape_text("h\u00e9llo \u65e5\u672c \u00a0\ufffd") == "h\u00e9llo \u65e5\u672c \u00a0\ufffd"
    assert escape_text("a\\b\x1b", backslash=False) == "a\\b\\x1b"


@settings(max_examples=500)
@given(st.text())
def test_escaped_text_has_no_controls_and_reads_back(s):
    e = escape_text(s)
    assert not raw_controls(e) and "\n" not in e
    assert unescape(e) == s


# -- tables and headers -----------------------------------------------------------------------------------------
def test_table_header_and_histogram_escape_everything():
    agg = {"probe": "tp:x\x1b]0;t\x07", "func": "count", "text": 'count by comm == "\x1b[2J"', "line": 3,
           "by": [{"name": "comm", "display": None}, {"name": "n\x1b", "display": None}],
           "value_display": None}
    out = io.StringIO()
    p = TextPrinter(out, source="evil\x1b[2J\n.hq")
    p.aggregation(agg, [Row({"comm": "\x1b[31mh\u00e9\x07", "n\x1b": "a\\b"}, 5)])
    hist = dict(agg, func="hist", buckets=66, lhist=None)
    p.aggregation(hist, [Row({"comm": "x\x1b", "n\x1b": "y"}, [0, 0, 1] + [0] * 63)])
    p.deny("lsm:x\x9b31m", 1, 2, False)
    text = out.getvalue()
    assert not raw_controls(text), raw_controls(text)
    assert "[evil\\x1b[2J\\n.hq:3]" in text and "tp:x\\x1b]0;t\\x07: count by comm == \"\\x1b[2J\"" in text
    row = next(l for l in text.splitlines() if "h\u00e9" in l)
    assert row.split() == ["\\x1b[31mh\u00e9\\x07", "a\\\\b", "5"]
    header = next(l for l in text.splitlines() if "COMM" in l)
    assert header.split() == ["COMM", "N\\x1b", "COUNT"]
    assert row.index("a\\\\b") == header.index("N\\x1b")  # columns line up on the escaped text
    assert "  comm=x\\x1b  n\\x1b=y" in text and "lsm:x\\x9b31m: would deny 2" in text


# -- diagnostics ------------------------------------------------------------------------------------------------
def test_diagnostic_escapes_and_carets_follow():
    line = 'on lsm:socket_connect where comm == "\x1b[2J\x1b]0;x\x07" and nope == 1 { count }'
    src = Source("lib\x1b[31m.hq", line + "\n")
    col = line.index("nope") + 1
    d = Diagnostic("error", Span(src, 1, col, 1, col + 4), "unknown name 'nope\x1b' in lib\x1b.hq", hint="h\x07")
    text = d.render(color=False)
    assert not raw_controls(text), text
    first, echoed, carets, hint = text.splitlines()
    assert first.startswith("lib\\x1b[31m.hq:1:") and "'nope\\x1b' in lib\\x1b.hq" in first
    assert '"\\x1b[2J\\x1b]0;x\\x07"' in echoed and hint == "  hint: h\\x07"
    assert carets.index("^") == echoed.index("nope") and carets.endswith("^~~~")
    # color only adds its own escapes around the severity, the carets and "hint:"
    colored = d.render(color=True)
    assert colored.count("\x1b") == 6 and "\x1b[2J" not in colored


def test_diagnostic_from_a_real_check(k618):
    """A script whose string constant and file name carry escapes, checked for real."""
    from hookql.pipeline import check_source

    line = 'on lsm:socket_connect where comm == "\x1b[2J\x07" and nope == 5 { count }'
    r = check_source(Source("x\x1b[2J.hq", line + "\n"), k618)
    assert r.diagnostics.errors
    for d in r.diagnostics:
        out = d.render()
        assert not raw_controls(out), out
        first, echoed, carets = out.splitlines()[:3]
        assert first.startswith("x\\x1b[2J.hq:1:")
        shift = len(escape_text(line[:d.span.col - 1], backslash=False))
        assert carets.index("^") == len("   1 | ") + shift
        assert echoed[carets.index("^"):].startswith(d.span.text)


# -- for real: a process with ESC in its comm under `hookql run` ---------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


def hostile_comm() -> str:
    """15 bytes: colour, a bell, a non-ASCII letter, and a tag no other process has."""
    return "\x1b[31mh\u00e9\x07" + uuid.uuid4().hex[:6]


def run(args: list[str], comm: str, n_type: int, n_rcvbuf: int) -> subprocess.CompletedProcess:
    cmd = shlex.join([sys.executable, str(WORKLOAD), comm, str(n_type), str(n_rcvbuf)])
    return subprocess.run(hookql_cmd() + ["run", *args, "-c", cmd], capture_output=True, text=True, timeout=90)


@needs_root
def test_comm_with_terminal_escapes_prints_escaped(tmp_path):
    comm = hostile_comm()
    assert len(comm.encode()) == 15
    # the script file's own name is hostile too: it prints in every table's header
    script = tmp_path / "evil\x1b]0;pwned\x07.hq"
    script.write_text(f'on {TP} where comm == "{comm}" {{ count by comm; emit comm, optname }}\n')
    r = run([str(script)], comm, 2, 1)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert not raw_controls(out)
    shown = escape_text(comm)
    assert shown == "\\x1b[31mh\u00e9\\x07" + comm[-6:]
    # the byte-exact filter matched (é is two bytes, ESC and BEL one each): 3 calls, 3 events, one row
    emits = [l for l in out.splitlines() if l.startswith("comm=")]
    assert emits == [f"comm={shown} optname=3"] * 2 + [f"comm={shown} optname=8"], out
    row = next(l for l in out.splitlines() if l.strip().startswith(shown))
    assert row.split() == [shown, "3"]
    assert "[evil\\x1b]0;pwned\\x07.hq:1]" in out
    assert "\x1b" not in r.stderr


@needs_root
def test_comm_with_terminal_escapes_in_json(tmp_path):
    comm = hostile_comm()
    r = run(["--format", "json", "-e", f'on {TP} where comm == "{comm}" {{ count by comm; emit comm }}'], comm, 1, 1)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    objs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert [o["event"]["comm"] for o in objs if "event" in o] == [comm, comm]
    (agg,) = [o for o in objs if "aggregation" in o]
    assert agg["rows"] == [{"key": {"comm": comm}, "value": 2}]
