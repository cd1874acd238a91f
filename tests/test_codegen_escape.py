"""Generated C is closed to injection (codegen/escape.py).

Whatever a script's file name or its string constants hold (newlines, `*/`,
quotes, backslashes, `??/`, non-UTF-8 bytes), the generated C differs from the
C of a benign name or string of the same byte length only inside comments and
string/character literals: a small C tokenizer here strips those and the rest
must be identical.  A few examples go through the real clang, and the reported
attack (a script path that closes the header comment and #includes a file)
runs through the real `hookql compile`.
"""
from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import hookql_cmd
from hookql.codegen.build import clang, flags
from hookql.codegen.escape import UnsafeCText, c_char_literal, c_comment, c_ident, c_string_literal, c_tokens
from hookql.pipeline import check_source, generate_c
from hookql.source import Source

TP = "tracepoint:syscalls:sys_enter_getsockopt"
NASTY = ["*/", "/*", "//", "\n", "\r", "\\", "\\\n", '"', "'", "??/", "??=", "#include \"/etc/shadow\"", "\t", "\x0b",
         "\x0c", "\x1b[2J", "\x7f", "\x85", "\u2028", "\u00e9", "\u65e5", "\U0001f600", "\udcff", "0", "7", " ", "%"]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def hostile_text(parts: int = 8, surrogates: bool = True):
    """Any text but NUL (a file name cannot hold one), weighted towards what breaks C.  A lone
    surrogate stands for a file name's non-UTF-8 byte (surrogateescape); a script's text is UTF-8
    and never holds one."""
    chars = st.characters(blacklist_characters="\0")
    nasty = st.sampled_from(NASTY if surrogates else [x for x in NASTY if x != "\udcff"])
    return st.lists(st.one_of(nasty, st.text(chars, max_size=4)), max_size=parts).map("".join)


# -- a small C tokenizer: what is left when comments and literals are removed ------------------------------------
def strip_c(c: str) -> str:
    """c with every comment replaced by one space and every string and character
    literal emptied ("" and ''), after line splicing, as C's translation phases
    1-3 see it.  Raises on an unterminated comment or literal."""
    c = c.replace("\\\n", "")  # phase 2: a spliced line is one line
    out = []
    i, n = 0, len(c)
    while i < n:
        ch = c[i]
        if c.startswith("/*", i):
            end = c.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"unterminated comment at {i}")
            out.append(" ")
            i = end + 2
        elif c.startswith("//", i):
            end = c.find("\n", i)
            out.append(" ")
            i = n if end < 0 else end
        elif ch in "\"'":
            j = i + 1
            while j < n and c[j] != ch:
                if c[j] == "\n":
                    raise ValueError(f"newline in a literal at {i}: {c[i:j]!r}")
                j += 2 if c[j] == "\\" else 1
            if j >= n:
                raise ValueError(f"unterminated literal at {i}")
            out.append(ch + ch)
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def test_strip_c_sees_what_clang_sees():
    assert strip_c('a /* x */ b // y\nc "s\\"t" \'\\\'\' d') == "a   b  \nc \"\" '' d"
    assert strip_c("a /* x *\\\n/ b") == "a   b"  # a splice closes a comment
    assert strip_c('#line 1 "a\\\nb"\nx') == '#line 1 ""\nx'
    with pytest.raises(ValueError):
        strip_c('x "a\nb"')


# -- the filters on their own ------------------------------------------------------------------------------------
def c_literal_bytes(lit: str) -> bytes:
    """The bytes a C string/char literal as c_string/c_char spell it stands for."""
    body, out, i = lit[1:-1], bytearray(), 0
    while i < len(body):
        if body[i] != "\\":
            out += body[i].encode("ascii")
            i += 1
        elif body[i + 1] in "01234567":
            out.append(int(body[i + 1: i + 4], 8))
            assert re.fullmatch(r"[0-7]{3}", body[i + 1: i + 4])
            i += 4
        else:
            assert body[i + 1] in "\"'\\?"
            out += body[i + 1].encode()
            i += 2
    return bytes(out)


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


@settings(max_examples=500)
@given(hostile_text())
@example("a*/\n#include \"/etc/shadow\"\n/*/x.hq")
@example("\udcff\udc80.hq")  # a non-UTF-8 file name, as Python hands it over (surrogateescape)
@example("\ud800")
def test_c_string_is_the_exact_bytes_in_plain_ascii(s):
    lit = c_string_literal(s)
    assert lit.isascii() and lit.isprintable()
    assert strip_c(lit) == '""'
    assert "??" not in lit
    assert c_literal_bytes(lit) == _utf8(s)


def test_c_char_every_byte():
    for b in range(256):
        lit = c_char_literal(b)
        assert lit.isascii() and lit.isprintable() and strip_c(lit) == "''"
        assert c_literal_bytes(lit) == bytes([b])
    assert c_char_literal(ord("c")) == "'c'" and c_char_literal(0xC3) == "'\\303'"
    with pytest.raises(ValueError):
        c_char_literal(256)


@settings(max_examples=500)
@given(hostile_text())
def test_c_comment_stays_one_comment(s):
    text = c_comment(s)
    assert text.isascii() and text.isprintable()
    assert "*/" not in text and "/*" not in text and "??" not in text
    assert all(m in "xuU" for m in re.findall(r"\\(.?)", text)), text  # no backslash can splice
    for c in (f"/* {text} */\nx", f"/*{text}*/\nx"):
        assert strip_c(c) == " \nx", c


def test_names_must_be_identifiers():
    assert c_ident("sk_rcvbuf") == "sk_rcvbuf"
    assert c_tokens("struct sock *") == "struct sock *" and c_tokens("char comm[16];") == "char comm[16];"
    for bad in ["a b", "a;b", "x\n#include", "a/*", "", "1a", "é"]:
        with pytest.raises(UnsafeCText):
            c_ident(bad)
    for bad in ["x\n", "a/*b", "#x", 'a"b', "a\\b", "a'b", "a(b)"]:
        with pytest.raises(UnsafeCText):
            c_tokens(bad)


# -- whole programs ----------------------------------------------------------------------------------------------
def hq_quote(s: str) -> str:
    """s as a HookQL string literal (the lexer takes any character but `"`, `\\` and newline as is)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def c_of(text: str, kernel, name: str = "t.hq") -> str:
    r = check_source(Source(name, text), kernel)
    assert r.ok, [d.render() for d in r.diagnostics]
    return generate_c(r.checked, "fentry")[0]


def assert_plain(c: str) -> None:
    """Generated C is ASCII with no control character but newline and tab."""
    bad = {ch for ch in c if not (ch.isascii() and (ch.isprintable() or ch in "\n\t"))}
    assert not bad, bad


def script(kind: str, s: str, t: str) -> str:
    """String constants where, in a set, next to a key and an emit; the tracepoint needs the running kernel."""
    S, T = hq_quote(s), hq_quote(t)
    if kind == "tp":
        return f"on {TP} where comm == {S} or comm in {{{S}, {T}}} {{ count by comm; emit comm, optname }}"
    return f"on lsm:socket_connect where comm != {S} and comm == {T} {{ count by comm, daddr }}"


def benign_pair(s: str, t: str) -> tuple[str, str]:
    """Printable ASCII strings of the same UTF-8 lengths as s and t, equal when they are
    and in the same order (a set's elements are sorted): the same C shape."""
    n = lambda x: len(x.encode("utf-8", "surrogatepass"))
    if s == t:
        return "a" * n(s), "a" * n(t)
    lo, hi = ("a", "b") if s < t else ("b", "a")
    return lo * n(s), hi * n(t)


@pytest.fixture(scope="module")
def kernels(k618, tracefs, running):
    return {"tp": running, "lsm": k618}


@settings(max_examples=60, **SETTINGS)
@given(kind=st.sampled_from(["tp", "lsm"]), name=hostile_text(), s=hostile_text(4, False), t=hostile_text(4, False))
@example(kind="tp", name="a*/\n#include \"/etc/shadow\"\n/*/x.hq", s='";\n#include "x"\n', t="*/ ??/\\")
@example(kind="lsm", name="\udcff.hq", s="h\u00e9llo", t="\x1b[31m")
@example(kind="tp", name="a*\\\n/\n#include \"x\"\n/*", s="*\\", t="\n/")  # a splice closing the comment
@example(kind="tp", name="x.hq", s="", t="\ud800")  # a lone surrogate (once a traceback in the checker)
def test_hostile_text_changes_nothing_outside_literals_and_comments(kernels, kind, name, s, t):
    k = kernels[kind]
    hostile = c_of(script(kind, s, t), k, name)
    benign = c_of(script(kind, *benign_pair(s, t)), k, "t.hq")
    assert_plain(hostile)
    assert strip_c(hostile) == strip_c(benign)


def compile_c(c: str, tmp_path) -> subprocess.CompletedProcess:
    out = tmp_path / f"{uuid.uuid4().hex}.o"
    return subprocess.run([clang()[0], *flags(), "-c", "-x", "c", "-", "-o", str(out)], input=c,
                          capture_output=True, text=True)


@settings(max_examples=15, **SETTINGS)
@given(name=hostile_text(), s=hostile_text(3, False), t=hostile_text(3, False))
@example(name="a*/\n#include \"/etc/shadow\"\n/*/x.hq", s="h\u00e9llo\\", t="??/")
def test_hostile_programs_compile(kernels, tmp_path, name, s, t):
    r = compile_c(c_of(script("tp", s, t), kernels["tp"], name), tmp_path)
    assert r.returncode == 0, r.stderr


@settings(max_examples=10, **SETTINGS)
@given(s=hostile_text())
@example(s="\x1b[0m??/\n\"\\0")
def test_literals_and_comments_hold_under_the_host_compiler(tmp_path, s):
    """The filters' output read back by the real clang: the exact bytes, and a comment that stays one."""
    data = _utf8(s)
    chars = ", ".join(c_char_literal(b) for b in data) or "0"
    prog = (f"#include <stdio.h>\n/* {c_comment(s)} */\n#line 1 {c_string_literal(s)}\n"
            f"static const char s[] = {c_string_literal(s)};\nstatic const char c[] = {{{chars}}};\n"
            "int main(void) { fwrite(s, 1, sizeof(s) - 1, stdout); fwrite(c, 1, sizeof(c), stdout); return 0; }\n")
    exe = tmp_path / f"{uuid.uuid4().hex}"
    r = subprocess.run([clang()[0], "-Wall", "-Werror", "-x", "c", "-", "-o", str(exe)], input=prog,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert got == data + (data or b"\0")


def test_the_reported_attack_reads_nothing(tmp_path):
    """A script path that closes the header comment and #includes a file: `hookql compile` builds the
    object and clang never reads the file (its content appears nowhere; before, clang printed it)."""
    secret = tmp_path / "secret"
    token = f"HQ_SECRET_{uuid.uuid4().hex}"
    secret.write_text(token + "\n")
    hostile = str(tmp_path) + f'/a*/\n#include "{secret}"\n/*'
    os.makedirs(hostile)
    path = hostile + "/x.hq"
    with open(path, "w") as f:
        f.write(f'on {TP} where comm == "curl" {{ count by comm }}\n'
                'on lsm:socket_connect where comm == "*/\\n#include \\"x\\"" { count }\n')
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run(hookql_cmd() + ["compile", path], capture_output=True, text=True, env=env, timeout=120)
    assert token not in r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    obj = hostile + "/x.bpf.o"
    assert os.path.getsize(obj) > 0
    with open(obj, "rb") as f:
        assert token.encode() not in f.read()
    c = subprocess.run(hookql_cmd() + ["compile", "--emit-c", path], capture_output=True, text=True, env=env,
                       timeout=120)
    assert c.returncode == 0, c.stderr
    assert_plain(c.stdout)
    assert not re.search(r"^\s*#\s*include\s+\"/", c.stdout, re.M)
    assert '#line 1 "' + str(tmp_path) + '/a*/\\012#include \\"' in c.stdout
