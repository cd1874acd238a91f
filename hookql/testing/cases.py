r"""Test case files (`*.hqt`): what a case is, and reading one.

A case file sits next to the script it tests and holds one or more cases:

    # getsockopt.hqt: cases for getsockopt.hq
    test "getsockopt calls are counted per command" {
        run "python3 -c 'import socket; socket.socket().getsockopt(1, 7)'" timeout 5s
        expect count by comm == {"python3": 1}
    }

One statement per line inside `test "NAME" { ... }`:

    script "PATH"                  the script under test (default: this file's name with .hq)
    on ... { ... }                 or the script itself, inline (also use, const, def, include)
    run "CMD" [timeout 10s] [exits N|any] [stdout ~ "RE"] [stderr ~ "RE"]
    expect AGG OP N                an unkeyed aggregation (OP: == != >= <= > <)
    expect AGG[KEY, ...] OP N      one row (a count or sum with no such row is 0)
    expect AGG == {KEY: N, ...}    the whole table: these rows and no others ({} for none)
    expect AGG[KEY] bucket V OP N  a histogram's count in the bucket that holds the value V
    expect emit "LINE"             an emitted event, as `name=value ...`; ~ "RE" for a pattern
    expect emits OP N              how many events were emitted
    expect denied OP N             how many events deny decided (denied, or would deny)
    golden "FILE" [mask NAME, ...] every result, compared with FILE (hookql test --accept writes it)
    requires kernel OP VERSION | hook PROVIDER:HOOK | command NAME
    enforce                        deny takes effect (as run --enforce)
    scope host                     count every process's events, not only the workload's
    ordered                        emit expectations match the events in the order written
    allow loss                     drops, full maps and lost events do not fail the case

AGG names an aggregation as written in the script (`count by comm`, `hist(size)`), by its `as NAME`,
or with `at line N` after it when the script has two alike.  Keys are strings, integers, dotted IPv4
addresses or names (AF_INET, -EPERM), compared with the rows as `hookql run` prints them.

Every mistake is a CaseError naming file:line:col, with a hint; nothing here runs anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hookql.diagnostics import Diagnostic
from hookql.source import Source, Span

SUFFIX = ".hqt"
OPS = ("==", "!=", ">=", "<=", ">", "<")
# What a line of HookQL starts with: an inline script.
SCRIPT_WORDS = {"on", "use", "const", "def", "include"}
STATEMENTS = {"script", "run", "expect", "golden", "requires", "enforce", "scope", "ordered", "allow"}
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 3600.0


class CaseError(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


@dataclass
class Workload:
    command: str
    span: Span
    timeout: float = DEFAULT_TIMEOUT
    exits: int | None = 0  # None: any status
    stdout: tuple[str, Span] | None = None  # a pattern its output must hold
    stderr: tuple[str, Span] | None = None


@dataclass
class Expect:
    kind: str  # "agg", "emit", "no emit", "emits", "denied"
    span: Span
    agg: str | None = None  # the aggregation, as the case writes it (with [KEY], at line N, bucket V if any)
    agg_span: Span | None = None
    at_line: int | None = None
    key: tuple | None = None  # one row: its key, each part as text (or WILD); set when planned
    bucket: int | None = None
    op: str = "=="
    value: object = None  # an int; a table {key tuple: int}; an emit line or pattern
    pattern: bool = False  # emit ~ "RE"


@dataclass
class Requirement:
    kind: str  # "kernel", "hook", "command", "arch"
    span: Span
    value: str
    op: str = ">="


@dataclass
class Case:
    name: str
    file: Path
    source: Source  # the case file
    span: Span
    script: Path | None = None
    script_span: Span | None = None
    inline: Source | None = None  # the inline script: the case file with all but its lines blanked
    workloads: list[Workload] = field(default_factory=list)
    expects: list[Expect] = field(default_factory=list)
    requires: list[Requirement] = field(default_factory=list)
    enforce: bool = False
    scope: str = "workload"  # or "host"
    ordered: bool = False
    allow_loss: bool = False
    golden: tuple[Path, Span] | None = None
    masks: list[str] = field(default_factory=list)
    mask_spans: dict = field(default_factory=dict)  # mask name -> where the case names it

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


# -- tokens ------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<space>[ \t]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<badstring>"[^\n]*)
  | (?P<op>==|!=|>=|<=|>|<|~)
  | (?P<punct>[{}\[\](),:*])
  | (?P<ipv4>\d{1,3}(?:\.\d{1,3}){3}(?![\w.]))
  | (?P<duration>\d+(?:\.\d+)?(?:ms|s|m)(?![\w.]))
  | (?P<version>\d+\.\d+(?:\.\d+)?(?![\w.]))
  | (?P<number>-?\d+(?![\w.]))
  | (?P<word>-?[A-Za-z_][A-Za-z0-9_-]*(?:[.:][A-Za-z_*][A-Za-z0-9_*-]*)*)
  | (?P<badnumber>-?\d[\w.]*)
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "0": "\0"}


@dataclass
class Tok:
    kind: str
    text: str
    line: int
    col: int  # 1-based
    value: object = None

    @property
    def end(self) -> int:
        return self.col + len(self.text)


def _unquote(tok_text: str, src: Source, line: int, col: int) -> str:
    out, i, body = [], 0, tok_text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif nxt == "x":
            c = col + 1 + i
            raise CaseError(Diagnostic("error", Span(src, line, c, line, c + 2), "\\x takes two hex digits",
                                       "e.g. \\x1b; write \\\\x for a backslash and an x"))
        else:  # kept as written: a pattern says \d, \[ or \.
            out += ["\\", nxt]
            i += 2
    return "".join(out)


def _tokens(src: Source, lineno: int, text: str) -> list[Tok]:
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos + 1
        if not m:
            raise CaseError(Diagnostic("error", Span(src, lineno, col, lineno, col + 1),
                                       f"unexpected character {text[pos]!r}",
                                       "strings are in double quotes; see `hookql test --help` for the format"))
        kind = m.lastgroup
        word = m.group()
        pos = m.end()
        if kind in ("space", "comment"):
            continue
        if kind == "badnumber":
            raise CaseError(Diagnostic("error", Span(src, lineno, col, lineno, col + len(word)),
                                       f"`{word}` is not a number, a duration or a version",
                                       "a number is 42 or -1; a duration 500ms, 5s or 2m; a version 6.1; an "
                                       "address 10.0.0.1 (an IPv6 address in quotes)"))
        if kind == "badstring":
            raise CaseError(Diagnostic("error", Span(src, lineno, col, lineno, col + len(word)),
                                       "this string has no closing quote", 'end it with " on the same line'))
        tok = Tok(kind, word, lineno, col)
        if kind == "string":
            tok.value = _unquote(word, src, lineno, col)
        elif kind == "number":
            tok.value = int(word)
        toks.append(tok)
    return toks


# -- statements --------------------------------------------------------------------------------
class _Line:
    """The tokens of one statement, consumed left to right; errors point at them."""

    def __init__(self, src: Source, toks: list[Tok], text: str):
        self.src, self.toks, self.i, self.text = src, toks, 0, text

    def span(self, tok: Tok | None = None) -> Span:
        tok = tok or (self.toks[self.i] if self.i < len(self.toks) else None)
        if tok is None:
            last = self.toks[-1]
            return Span(self.src, last.line, last.end, last.line, last.end + 1)
        return Span(self.src, tok.line, tok.col, tok.line, tok.end)

    def fail(self, message: str, hint: str | None = None, tok: Tok | None = None):
        raise CaseError(Diagnostic("error", self.span(tok), message, hint))

    def peek(self, ahead: int = 0) -> Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *texts: str) -> bool:
        t = self.peek()
        return t is not None and t.text in texts and t.kind in ("word", "op", "punct")

    def next(self, what: str, *kinds: str, hint: str | None = None) -> Tok:
        t = self.peek()
        if t is None or (kinds and t.kind not in kinds):
            self.fail(f"expected {what}" + (f", found `{t.text}`" if t else " here"), hint)
        self.i += 1
        return t

    def word(self, *texts: str, hint: str | None = None) -> Tok:
        t = self.peek()
        if t is None or t.text not in texts:
            want = " or ".join(f"`{x}`" for x in texts)
            self.fail(f"expected {want}" + (f", found `{t.text}`" if t else " here"), hint)
        self.i += 1
        return t

    def done(self) -> None:
        if self.i < len(self.toks):
            self.fail(f"unexpected `{self.toks[self.i].text}` at the end of the statement",
                      "one statement per line; see the format in `hookql test --help`")


def _duration(line: _Line, tok: Tok) -> float:
    if tok.kind != "duration":
        line.fail("expected a duration such as 5s, 500ms or 2m", tok=tok)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", tok.text)
    secs = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]
    if not 0 < secs <= MAX_TIMEOUT:
        line.fail(f"a timeout must be more than 0 and at most {int(MAX_TIMEOUT)}s", tok=tok)
    return secs


class _Wild(str):
    """`*` in a row's key: any value (the rows it matches are added up)."""

    def __repr__(self) -> str:
        return "*"


WILD = _Wild("*")


def _key_part(line: _Line, wild: bool = False) -> str:
    if wild and line.at("*"):
        line.next("*")
        return WILD
    t = line.next("a key: a string, an integer, an IPv4 address or a name" + (", or *" if wild else ""),
                  "string", "number", "ipv4", "word", hint='quote anything else, e.g. "::1"')
    if t.kind == "string":
        return t.value
    return str(t.value) if t.kind == "number" else t.text


def _key(line: _Line, close: str) -> tuple:
    """KEY or (KEY, KEY, ...) up to `close`."""
    if line.at("("):
        line.next("(")
        parts = [_key_part(line)]
        while line.at(","):
            line.next(",")
            parts.append(_key_part(line))
        line.word(")")
        return tuple(parts)
    wild = close == "]"
    parts = [_key_part(line, wild)]
    while close == "]" and line.at(","):
        line.next(",")
        parts.append(_key_part(line, wild))
    return tuple(parts)


def _count(line: _Line) -> int:
    t = line.next("an integer", "number", hint="expectations compare counts and sums: whole numbers")
    return t.value


def subject_tail(src: Source, lineno: int, text: str, col: int) -> tuple[int | None, tuple | None, int | None]:
    """What follows an aggregation in an expectation's subject (TEXT starts at column COL):
    [at line N] [[KEY, ...]] [bucket V]; CaseError when that is not what it is."""
    line = _Line(src, _tokens(src, lineno, " " * (col - 1) + text), " " * (col - 1) + text)
    at = key = bucket = None
    if line.at("at"):
        line.next("at")
        line.word("line")
        at = _count(line)
    if line.at("["):
        line.next("[")
        key = _key(line, "]")
        line.word("]", hint="a row is [KEY] or [KEY, KEY, ...], one value per `by` key (* for any)")
    if line.at("bucket"):
        line.next("bucket")
        bucket = _count(line)
    line.done()
    return at, key, bucket


def _code(text: str, start: int, comments: tuple[str, ...] = ("#",)):
    """(index, character) of TEXT[start:] outside string literals, up to a comment."""
    i, quote = start, False
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote = True
        elif text.startswith(comments, i):
            return
        else:
            yield i, ch
        i += 1


def _unclosed(text: str, start: int) -> int | None:
    """Where the first bracket left open in TEXT[start:] is (outside quotes), if one is."""
    stack = []
    for i, ch in _code(text, start):
        if ch in "([{":
            stack.append(i)
        elif ch in ")]}" and stack:
            stack.pop()
    return stack[0] if stack else None


def _comparison(text: str, start: int) -> tuple[int, str] | None:
    """The last comparison operator at the top level of TEXT[start:] (outside quotes and brackets, before a
    comment): where an aggregation's own text ends and what it is compared with begins.  `>>` and `<<`
    are shifts, not comparisons; a run of = ! < > ~ that is no comparison is returned as it is (an error)."""
    found, depth, skip = None, 0, start
    for i, ch in _code(text, start):
        if i < skip:
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in "=!<>~":
            j = i
            while j < len(text) and text[j] in "=!<>~":
                j += 1
            run = text[i:j]
            if run not in (">>", "<<"):
                found = (i, run)
            skip = j
    return found


def normalise(text: str) -> str:
    """An aggregation's text with its spacing made canonical: `hist( x )  by comm,pid` -> `hist(x) by comm, pid`."""
    text = " ".join(text.split())
    text = re.sub(r"\s*([(),])\s*", r"\1", text)
    return re.sub(r",", ", ", text).replace(")by ", ") by ").replace(")as ", ") as ")


def _expect_line(src: Source, lineno: int, text: str) -> Expect:
    """An `expect` line.  An aggregation's text is the script's (`count by who[sk].comm`, `hist(now - t[k])`):
    it is kept as written, up to the comparison, and matched with the script's aggregations when the case
    is planned (plan.py); only what follows the comparison is read here."""
    m = re.match(r"(\s*)expect\b\s*", text)
    kw = Tok("word", "expect", lineno, len(m.group(1)) + 1)
    span = Span(src, lineno, kw.col, lineno, kw.end)
    rest = text[m.end():]
    first = re.match(r"(emits|emit|denied|no)\b", rest)
    if first or not rest.strip() or rest.lstrip().startswith("#"):
        line = _Line(src, _tokens(src, lineno, text), text)
        line.next("expect")
        return _expect_simple(line, kw, span)
    cmp = _comparison(text, m.end())
    opened = _unclosed(text, m.end())
    if cmp is None and opened is not None:
        raise CaseError(Diagnostic("error", Span(src, lineno, opened + 1, lineno, opened + 2),
                                   f"this `{text[opened]}` is not closed", "close it on the same line"))
    if cmp is None:
        c = len(text.rstrip()) + 1
        raise CaseError(Diagnostic("error", Span(src, lineno, c, lineno, c + 1),
                                   "expected a comparison (== != >= <= > <) and a count",
                                   "e.g. expect count by comm[\"curl\"] == 2"))
    pos, op = cmp
    subject = text[m.end():pos].rstrip()
    col = m.end() + 1
    if not subject:
        raise CaseError(Diagnostic("error", Span(src, lineno, col, lineno, col + 1),
                                   "expected an aggregation as the script writes it, e.g. `count by comm`, or its "
                                   "`as` name"))
    if op == "~":
        raise CaseError(Diagnostic("error", Span(src, lineno, pos + 1, lineno, pos + 2),
                                   "~ matches emitted lines; compare an aggregation with == != >= <= > <"))
    if op not in OPS:
        raise CaseError(Diagnostic("error", Span(src, lineno, pos + 1, lineno, pos + 1 + len(op)),
                                   f"`{op}` is not a comparison", "compare with == != >= <= > <"))
    blank = " " * pos + text[pos:]
    line = _Line(src, _tokens(src, lineno, blank), blank)
    line.next("a comparison", "op")
    e = Expect("agg", span, agg=subject, agg_span=Span(src, lineno, col, lineno, col + len(subject)), op=op)
    if line.at("{"):
        if op != "==":
            line.fail("a whole table is compared with `==` alone: expect AGG == {KEY: N, ...}")
        line.next("{")
        table = {}
        while not line.at("}"):
            k = _key(line, ":")
            line.word(":")
            if k in table:
                line.fail(f"the row [{', '.join(k)}] is in this table twice", tok=line.toks[line.i - 2])
            table[k] = _count(line)
            if not line.at(","):
                break
            line.next(",")
        line.word("}", hint="rows are KEY: N, separated by commas, e.g. {\"curl\": 2, \"wget\": 1}")
        e.value = table
    else:
        e.value = _count(line)
    line.done()
    return e


def _expect_simple(line: _Line, kw: Tok, span: Span) -> Expect:
    """expect emit ..., expect no emit ..., expect emits OP N, expect denied OP N."""
    first = line.peek()
    if first is None:
        line.fail("expected what to expect: an aggregation, `emit`, `no emit`, `emits` or `denied`")
    negated = first.text == "no"
    if negated:
        line.next("no")
        first = line.peek()
        if first is None or first.text != "emit":
            line.fail("`no` goes with emit: expect no emit ~ \"RE\"")
    if first.text == "emit":
        line.next("emit")
        pattern = line.at("~")
        if pattern:
            line.next("~")
        t = line.next("the emitted line in double quotes", "string",
                      hint='e.g. expect emit "comm=curl dport=443", or expect emit ~ "dport=44[0-9]"')
        if pattern:
            try:
                re.compile(t.value)
            except re.error as exc:
                line.fail(f"not a regular expression: {exc}", tok=t)
        line.done()
        return Expect("no emit" if negated else "emit", span, value=t.value, pattern=pattern)
    line.next(first.text)
    op = line.next("a comparison", "op").text
    if op == "~":
        line.fail(f"{first.text} is a number: compare it with == != >= <= > <")
    e = Expect(first.text, span, op=op, value=_count(line))
    line.done()
    return e


def _requirement(line: _Line, kw: Tok) -> Requirement:
    what = line.word("kernel", "hook", "command", "arch",
                     hint="requires kernel >= 6.1, requires hook kprobe:tcp_v4_connect, requires command nc, "
                          "requires arch x86_64")
    span = line.span(kw)
    if what.text == "kernel":
        op = line.next("a comparison", "op").text
        v = line.next("a kernel version such as 6.1", "version", "number")
        return Requirement("kernel", span, v.text, op)
    t = line.next("a name", "word", "string")
    return Requirement(what.text, span, t.value if t.kind == "string" else t.text)


def _run(line: _Line, kw: Tok) -> Workload:
    t = line.next("the command in double quotes", "string", hint='e.g. run "curl -s http://127.0.0.1:8080/"')
    if not t.value.strip():
        line.fail("an empty command", tok=t)
    if "\0" in t.value:
        line.fail("a command cannot hold a NUL character (\\0 or \\x00)", tok=t,
                  hint="for the shell's own escapes write the backslash twice: printf '\\\\033[1m'")
    w = Workload(t.value, line.span(kw))
    while line.peek() is not None:
        opt = line.word("timeout", "exits", "stdout", "stderr")
        if opt.text == "timeout":
            w.timeout = _duration(line, line.next("a duration"))
        elif opt.text == "exits":
            if line.at("any"):
                line.next("any")
                w.exits = None
            else:
                w.exits = _count(line)
        else:
            line.word("~")
            p = line.next("a pattern in double quotes", "string")
            try:
                re.compile(p.value)
            except re.error as exc:
                line.fail(f"not a regular expression: {exc}", tok=p)
            setattr(w, opt.text, (p.value, line.span(p)))
    return w


def _relative(line: _Line, tok: Tok, what: str, up: bool = False) -> Path:
    """A path relative to the case file (so a repository can be moved or cloned); `..` only where `up`."""
    p = tok.value
    parts = p.split("/")
    if not p or p.startswith("/") or "\0" in p or (".." in parts and not up):
        inside = "" if up else ", inside this directory (no `..`)"
        line.fail(f"the {what} must be a path relative to the case file{inside}", tok=tok,
                  hint="case files name files next to them, so a repository can be moved or cloned")
    return Path(p)


def _statement(case: Case, line: _Line) -> None:
    kw = line.next("a statement", "word")
    k = kw.text
    if k == "script":
        if case.script is not None:
            line.fail("this case names its script already", tok=kw)
        t = line.next("the script's path in double quotes", "string")
        case.script = case.file.parent / _relative(line, t, "script", up=True)
        case.script_span = line.span(t)
    elif k == "run":
        case.workloads.append(_run(line, kw))
    elif k == "requires":
        case.requires.append(_requirement(line, kw))
    elif k == "golden":
        if case.golden is not None:
            line.fail("one golden file per case", tok=kw)
        t = line.next("the golden file's path in double quotes", "string")
        if t.value.endswith((".hq", SUFFIX)):
            line.fail("a golden file holds results, not a script or cases: --accept would overwrite it", tok=t,
                      hint='name it after the case, e.g. golden "connects.expected"')
        case.golden = (case.file.parent / _relative(line, t, "golden file"), line.span(t))
        if line.at("mask"):
            line.next("mask")
            names = [line.next("a field name", "word")]
            while line.at(","):
                line.next(",")
                names.append(line.next("a field name", "word"))
            for t in names:
                case.masks.append(t.text)
                case.mask_spans[t.text] = line.span(t)
    elif k == "enforce":
        case.enforce = True
    elif k == "ordered":
        case.ordered = True
    elif k == "scope":
        case.scope = line.word("host", "workload").text
    elif k == "allow":
        line.word("loss")
        case.allow_loss = True
    else:
        line.fail(f"unknown statement `{k}`",
                  "a case holds: script, run, expect, golden, requires, enforce, scope, ordered, allow loss, "
                  "or HookQL clauses (on ...)", tok=kw)
    line.done()


# -- the file ----------------------------------------------------------------------------------
def _brace_delta(text: str) -> int:
    """{ minus } in a line of HookQL, outside strings and comments."""
    return sum((ch == "{") - (ch == "}") for _, ch in _code(text, 0, ("#", "//")))


def _first_word(text: str) -> str:
    m = re.match(r"\s*([A-Za-z_]+|\S)", text)
    return m.group(1) if m else ""


def parse(src: Source, path: Path) -> list[Case]:
    """Every case in a case file; CaseError at the first mistake."""
    lines = src.text.split("\n")
    cases: list[Case] = []
    case: Case | None = None
    inline: set[int] = set()  # line numbers of the current case's inline script
    n = 0
    while n < len(lines):
        text = lines[n].rstrip("\r")
        lineno = n + 1
        n += 1
        if case is not None and _first_word(text) in SCRIPT_WORDS:
            if case.script is not None:
                _Line(src, _tokens(src, lineno, text), text).fail(
                    "this case names a script already: give its clauses inline or a script, not both")
            inline.add(lineno)
            depth = _brace_delta(text)
            # the inline script goes on while a block is open, and over lines that are not a case statement
            while n < len(lines):
                nxt = lines[n].rstrip("\r")
                w = _first_word(nxt)
                if depth <= 0 and (w in STATEMENTS or w == "}"):
                    break
                inline.add(n + 1)
                depth += _brace_delta(nxt)
                n += 1
            continue
        if case is not None and _first_word(text) == "expect":
            case.expects.append(_expect_line(src, lineno, text))
            continue
        toks = _tokens(src, lineno, text)
        if not toks:
            continue
        line = _Line(src, toks, text)
        if case is None:
            kw = line.word("test", hint='a case file holds cases: test "what it shows" { ... }')
            name = line.next("the case's name in double quotes", "string").value
            if not name.strip():
                line.fail("a case needs a name", tok=toks[1])
            if any(c.name == name for c in cases):
                line.fail(f"two cases named {name!r} in this file", tok=toks[1])
            line.word("{")
            line.done()
            case = Case(name, path, src, line.span(kw))
            inline = set()
            continue
        if toks[0].text == "}" and len(toks) == 1:
            _finish(case, src, lines, inline)
            cases.append(case)
            case = None
            continue
        _statement(case, line)
    if case is not None:
        last = len(lines)
        raise CaseError(Diagnostic("error", case.span, f"case {case.name!r} has no closing `}}`",
                                   f"end it with a line holding only `}}` (by line {last})"))
    return cases


def _finish(case: Case, src: Source, lines: list[str], inline: set[int]) -> None:
    if inline and case.script is not None:
        raise CaseError(Diagnostic("error", case.script_span, "this case has inline clauses and names a script",
                                   "give its clauses inline or a script, not both"))
    if inline:
        # the case file with every other line blanked: the front end's errors point at this file's lines
        kept = "\n".join(l if i + 1 in inline else "" for i, l in enumerate(lines))
        case.inline = Source(src.name, kept, real=src.real)
    elif case.script is None:
        script = case.file.with_suffix(".hq")
        case.script = script
    if not case.workloads:
        raise CaseError(Diagnostic("error", case.span, f"case {case.name!r} runs nothing",
                                   'add a workload: run "COMMAND" (it runs once everything is attached)'))
    if not case.expects and case.golden is None:
        raise CaseError(Diagnostic("error", case.span, f"case {case.name!r} expects nothing",
                                   "add an expectation (expect count == 3) or a golden file (golden \"x.out\")"))


MAX_SIZE = 4 << 20


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, opened so that a FIFO or device put there cannot hang the open (as
    hookql/cli.py _read_text reads a script); OSError when it is not one, or is larger than LIMIT."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file")
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(27, f"larger than {limit >> 20} MiB")
    return data


def read(path: Path) -> list[Case]:
    """The cases of one file (read as text; nothing in it runs here): a regular file, at most 4 MiB;
    OSError or CaseError when not."""
    data = read_regular(path, MAX_SIZE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        src = Source(str(path), data.decode("utf-8", "replace"))
        raise CaseError(Diagnostic("error", Span(src, line, col, line, col + 1),
                                   f"byte 0x{data[exc.start]:02x} is not UTF-8", "case files are UTF-8 text"))
    src = Source(str(path), text, real=str(path.resolve()))
    return parse(src, path)
