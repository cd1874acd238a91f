"""Parsing: shaped tokens of each item -> Lark LALR tree -> hookql.nodes.

`parse` never raises on bad input: every syntax error becomes a Diagnostic
and parsing goes on with the next item.  `parse_item` is the REPL's entry
(one clause), `needs_more` tells the REPL whether to read another line.
"""
from __future__ import annotations

import ipaddress
import re

from hookql import nodes as n
from hookql.diagnostics import Diagnostics
from hookql.grammar.lalr import Token, Transformer, Tree, UnexpectedInput, UnexpectedToken, v_args
from hookql.lexer import lark_parser, shape, split_items, tokenize
from hookql.source import Source, Span

_DURATION_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
                "h": 3_600_000_000_000}

# How expected terminals read in "expected ..." messages.
_EXPECTED = {
    "NAME": "a name", "INT": "a number", "DURATION": "a duration", "STRING": "a string",
    "IPV4": "an address", "IPV6": "an address", "PROBE": "a probe (kprobe:FUNC, lsm:HOOK, tracepoint:CAT:NAME)",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LANGLE": "'<'", "RANGLE": "'>'",
    "COMMA": "','", "SEMICOLON": "';'", "_NL": "a new line", "EQUAL": "'='", "DOT": "'.'",
    "COMP_OP": "a comparison", "$END": "end of input", "WHERE": "'where'", "BY": "'by'", "ON": "'on'",
    "CONST": "'const'", "USE": "'use'", "EMIT": "'emit'", "DENY": "'deny'", "IN": "'in'", "NOT": "'not'",
    "AND": "'and'", "OR": "'or'", "LSQB": "'['", "RSQB": "']'", "DELETE": "'delete'",
}
# How deep expressions nest: parentheses around a further operator, `not`/`-`/`~`, `.`, a call's or a
# set's items each go one level down.  A chain of operators at one level (`a or b or c ...`,
# `x + y + z ...`) is one level however long.  README "The language" documents it.
MAX_NESTING = 64
# Integers are 64-bit: a literal is at most 2**64 - 1 (written as -N, at least -2**63).
MAX_INT = (1 << 64) - 1
MIN_INT = -(1 << 63)
# Digits read at all: longer literals are reported without being converted.
_MAX_DIGITS = 80

_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "PIPE", "CARET", "AMP", "LSHIFT", "RSHIFT",
              "TILDE", "BANG", "ANDAND", "OROR"}


def parse(source: Source, diags: Diagnostics) -> n.Script:
    """Parse a whole script; syntax errors go to diags, good items are kept."""
    items: list[n.Node] = []
    for toks in split_items(tokenize(source, diags)):
        node = _parse_tokens(source, shape(toks), diags, toks)
        if node is not None:
            items.append(node)
    end = source.text.count("\n") + 1
    return n.Script(Span(source, 1, 1, end, 1), items)


def parse_item(source: Source, diags: Diagnostics) -> list[n.Node]:
    """Parse what the REPL was given: usually one clause or const."""
    return parse(source, diags).items


def needs_more(text: str) -> bool:
    """True while a clause typed so far is incomplete (an open brace/paren, or
    `on ...` with no block yet), so the REPL keeps reading lines."""
    diags = Diagnostics()
    toks = [t for t in tokenize(Source("<repl>", text), diags) if t.type != "_NL"]
    if not toks:
        return False
    depth = 0
    for t in toks:
        depth += t.type in ("LBRACE", "LPAR")
        depth -= t.type in ("RBRACE", "RPAR")
    depth += sum((t.type == "LSQB") - (t.type == "RSQB") for t in toks)
    if depth > 0:
        return True
    last = toks[-1]
    if toks[0].type == "ON":
        shaped = shape(toks)
        closed = any(t.type in ("RBRACE", "RANGLE") for t in shaped)
        return not closed
    return last.type in _OPERATORS or last.type in ("COMMA", "EQUAL", "COMP_OP", "AND", "OR", "NOT", "IN", "BY",
                                                     "DELETE")


def _parse_tokens(source: Source, toks: list[Token], diags: Diagnostics, raw: list[Token]) -> n.Node | None:
    ip = lark_parser().parse_interactive(start="item")
    try:
        for tok in toks:
            ip.feed_token(tok)
        tree = ip.feed_eof(toks[-1] if toks else None)
    except UnexpectedToken as exc:
        _syntax_error(source, exc, toks, raw, diags)
        return None
    except UnexpectedInput as exc:  # pragma: no cover - other lark input errors
        line, col = getattr(exc, "line", 1), getattr(exc, "column", 1)
        diags.error(Span(source, line, col, line, col + 1), f"syntax error: {exc}")
        return None
    builder = _Build(source, diags)
    node = _transform(builder, tree)
    if builder.too_deep is not None:
        deep, depth = builder.too_deep
        diags.error(deep.span, f"expression nested too deeply: more than {MAX_NESTING} levels",
                    "nest less: name parts with `const` or `def`; a chain of one operator "
                    "(`a or b or c ...`) is one level however long")
        return None
    return node


def _transform(builder: Transformer, tree: Tree):
    """The Lark tree, transformed bottom-up without recursion (Lark's own
    Transformer recurses, and an expression of 10,000 terms is that deep)."""
    todo: list[tuple[object, bool]] = [(tree, False)]
    done: list[object] = []
    while todo:
        node, expanded = todo.pop()
        if not isinstance(node, Tree):
            done.append(node)
        elif expanded:
            k = len(node.children)
            children = done[len(done) - k:] if k else []
            del done[len(done) - k:]
            done.append(builder._call_userfunc(node, children))
        else:
            todo.append((node, True))
            todo.extend((child, False) for child in reversed(node.children))
    return done[0]


def _syntax_error(source: Source, exc: UnexpectedToken, toks: list[Token], raw: list[Token], diags: Diagnostics):
    tok = exc.token
    expected = _expected(exc)
    if tok.type == "$END":
        last = next((t for t in reversed(toks or raw) if t.type != "_NL"), None)
        span = Span.of_token(source, last) if last else Span(source, 1, 1, 1, 2)
        span = Span(source, span.end_line, span.end_col, span.end_line, span.end_col + 1)
        opener = _unclosed(toks)
        msg = "unexpected end of input"
        if opener is not None:
            msg = f"'{opener.value}' opened at line {opener.line}, column {opener.column} is never closed"
        diags.error(span, msg + (f"; expected {_one_of(expected)}" if expected else ""))
        return
    span = Span.of_token(source, tok)
    got = "a new line" if tok.type == "_NL" else f"'{tok.value}'"
    hint = _hint_for(tok, set(exc.expected), toks)
    diags.error(span, f"unexpected {got}; expected {_one_of(expected)}", hint)


_EXPR_OPS = _OPERATORS | {"COMP_OP", "AND", "OR", "IN", "NOT", "DOT"}
_EXPR_START = {"NAME", "INT", "STRING", "DURATION", "IPV4", "IPV6", "LPAR", "LBRACE", "MINUS", "TILDE", "NOT", "BANG"}


def _expected(exc: UnexpectedToken) -> list[str]:
    """What could come next, exactly (LALR's own sets leak other states' lookaheads)."""
    try:
        terms = set(exc.interactive_parser.accepts())
    except (AttributeError, UnexpectedInput):
        terms = set(exc.expected)
    if {"NAME", "INT", "STRING"} <= terms:  # anything that starts an expression
        terms = (terms - _EXPR_START) | {"an expression"}
    ops = terms & _EXPR_OPS
    if len(ops) >= 3:
        terms = (terms - ops) | {"an operator"}
    if "COMP_OP" in terms or "an operator" in terms:
        terms -= {"LANGLE", "RANGLE"}
    return sorted({_EXPECTED.get(t, t if t.startswith("an ") else _describe_terminal(t))
                   for t in terms if not t.startswith("__")})


def _describe_terminal(name: str) -> str:
    return f"'{name.lower()}'" if name.isalpha() else name


def _one_of(items: list[str]) -> str:
    if len(items) <= 1:
        return items[0] if items else "something else"
    return "one of " + ", ".join(items[:-1]) + " or " + items[-1]


def _unclosed(toks: list[Token]) -> Token | None:
    stack: list[Token] = []
    for t in toks:
        if t.type in ("LBRACE", "LPAR", "LANGLE"):
            stack.append(t)
        elif t.type in ("RBRACE", "RPAR", "RANGLE") and stack:
            stack.pop()
    return stack[-1] if stack else None


def _hint_for(tok: Token, expected: set[str], toks: list[Token]) -> str | None:
    if tok.type == "EQUAL" and "COMP_OP" in expected:
        before = next((toks[i - 1] for i, t in enumerate(toks) if t is tok and i), None)
        if before is not None and before.type == "RSQB":
            return ("state is stored by an action of its own in a clause's block, e.g. "
                    "`on PROBE { start[skaddr] = ts }`; to compare, use '=='")
        return "use '==' to compare"
    if tok.type == "NAME" and "PROBE" in expected:
        return (f"a probe names its provider, e.g. lsm:{tok.value} or kprobe:{tok.value}; "
                "tracepoints are tracepoint:CATEGORY:NAME")
    if "LBRACE" in expected and tok.type in ("NAME", "EMIT", "DENY"):
        return "actions go in a block after the probe: on PROBE [where FILTER] { ACTION ... }"
    if tok.type == "NAME" and ("_NL" in expected or "SEMICOLON" in expected):
        return "separate actions with a new line or ';'"
    if tok.type == "COMP_OP" and tok.value in ("<", ">") and toks and toks[0].type == "ON":
        return "a `< ... >` block must start with an action (count, sum, emit, deny...) and end the clause"
    return None


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "0": "\0", "r": "\r"}


@v_args(meta=True)
class _Build(Transformer):
    """Lark tree -> nodes, with a Span on every node."""

    def __init__(self, source: Source, diags: Diagnostics | None = None):
        super().__init__()
        self.src = source
        self.diags = diags if diags is not None else Diagnostics()
        # nesting level of each expression built (chains of one spine count once), and the first too deep
        self.level: dict[int, int] = {}
        self.too_deep: tuple[n.Expr, int] | None = None

    def _nest(self, node: n.Expr, *inner: n.Expr, spine: n.Expr | None = None) -> n.Expr:
        """Record node's nesting level: one more than its deepest inner part, the same as its spine (the
        left operand of a binary operator, which the checker walks without going deeper)."""
        level = max([self.level.get(id(x), 0) + 1 for x in inner] + [self.level.get(id(spine), 0)])
        self.level[id(node)] = level
        if level > MAX_NESTING and self.too_deep is None:
            self.too_deep = (node, level)
        return node

    def _span(self, meta) -> Span:
        return Span(self.src, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return Span.of_token(self.src, tok)

    # -- items --
    def start(self, meta, children):
        return children

    def const_def(self, meta, c):
        return n.Const(self._span(meta), str(c[0]), self._tok(c[0]), c[1])

    def def_stmt(self, meta, c):
        name, *params, body = c
        return n.Def(self._span(meta), str(name), self._tok(name), [str(p) for p in params if p is not None], body)

    def use_stmt(self, meta, c):
        target = c[0]
        if isinstance(target, Token):  # "path.hq"
            return n.Use(self._span(meta), None, _unquote(target.value))
        return n.Use(self._span(meta), target, None)

    def include_stmt(self, meta, c):
        use = self.use_stmt(meta, c)
        use.include = True
        return use

    def dotted_name(self, meta, c):
        return ".".join(str(t) for t in c)

    def clause(self, meta, c):
        probes = []
        for tok in c:
            if not isinstance(tok, Token):
                break
            parts = str(tok).split(":")
            probes.append(n.Probe(self._tok(tok), parts[0], parts[1:]))
        where = c[len(probes)] if len(c) == len(probes) + 2 else None
        clause = n.Clause(self._span(meta), probes[0], where, c[-1])
        clause.probes = probes
        return clause

    def where(self, meta, c):
        return c[0]

    def block(self, meta, c):
        return [x for x in c if isinstance(x, list)][0] if any(isinstance(x, list) for x in c) else []

    def actions(self, meta, c):
        return [x for x in c if isinstance(x, n.Action)]

    def agg(self, meta, c):
        name = c[0]
        args, by, alias = [], [], None
        for x in c[1:]:
            if isinstance(x, tuple) and x[0] == "args":
                args = x[1]
            elif isinstance(x, tuple) and x[0] == "by":
                by = x[1]
            elif isinstance(x, Token):
                alias = x
        agg = n.Aggregate(self._span(meta), str(name), self._tok(name), args, by)
        if alias is not None:
            agg.alias, agg.alias_span = str(alias), self._tok(alias)
        return agg

    def agg_args(self, meta, c):
        return ("args", list(c))

    def by_keys(self, meta, c):
        return ("by", list(c))

    def emit(self, meta, c):
        return n.Emit(self._span(meta), list(c))

    def deny(self, meta, c):
        return n.Deny(self._span(meta), c[0] if c else None)

    def store(self, meta, c):
        return n.Store(self._span(meta), c[0], c[1])

    def delete(self, meta, c):
        return n.Delete(self._span(meta), c[0])

    def index(self, meta, c):
        name, *keys = c
        return self._nest(n.Index(self._span(meta), str(name), self._tok(name), list(keys)), *keys)

    # -- expressions --
    def or_(self, meta, c):
        return self._bin(meta, "or", c[0], c[-1], None)

    def and_(self, meta, c):
        return self._bin(meta, "and", c[0], c[-1], None)

    def not_(self, meta, c):
        return self._nest(n.Unary(self._span(meta), "not", c[-1]), c[-1])

    def compare(self, meta, c):
        return self._bin(meta, str(c[1]), c[0], c[2], c[1])

    def in_(self, meta, c):
        return self._bin(meta, "in", c[0], c[1], None)

    def not_in(self, meta, c):
        return self._bin(meta, "not in", c[0], c[1], None)

    def binop(self, meta, c):
        return self._bin(meta, str(c[1]), c[0], c[2], c[1])

    def _bin(self, meta, op, left, right, tok):
        span = self._span(meta)
        op_span = self._tok(tok) if tok is not None else Span(self.src, left.span.end_line, left.span.end_col,
                                                              right.span.line, right.span.col)
        return self._nest(n.Binary(span, op, left, right, op_span), right, spine=left)

    def unary(self, meta, c):
        return self._nest(n.Unary(self._span(meta), str(c[0]), c[1]), c[1])

    def call(self, meta, c):
        args = [x for x in c[1:] if x is not None]
        return self._nest(n.Call(self._span(meta), c[0], args), c[0], *args)

    def member(self, meta, c):
        return self._nest(n.Member(self._span(meta), c[0], str(c[1]), self._tok(c[1])), c[0])

    def int_lit(self, meta, c):
        span = self._span(meta)
        value = self._int(span, str(c[0]), "integer")
        if value is not None and value > MAX_INT:
            self.diags.error(span, f"{_short(str(c[0]))} does not fit in 64 bits",
                             f"integers are 64-bit: at most {MAX_INT} (0xffffffffffffffff), "
                             f"at least {MIN_INT}")
            value = None
        return n.IntLit(span, 1 if value is None else value)  # 1 once reported: no error follows from it

    def _int(self, span: Span, raw: str, what: str) -> int | None:
        """A literal's value, or None after reporting one too long to read."""
        text = raw.replace("_", "")
        digits = re.sub(r"^0[xXbBoO]", "", text).lstrip("0")
        if len(digits) > _MAX_DIGITS:
            self.diags.error(span, f"{what} literal too long: {len(digits)} digits; integers are 64-bit",
                             f"a 64-bit integer has at most 20 decimal digits ({MAX_INT})")
            return None
        return int(text, 0) if not re.fullmatch(r"0\d+", text) else int(text, 10)

    def duration_lit(self, meta, c):
        span = self._span(meta)
        m = re.fullmatch(r"(\d+)([a-z]+)", str(c[0]))
        count = self._int(span, m[1], "duration")
        ns = None if count is None else count * _DURATION_NS[m[2]]
        if ns is not None and ns > MAX_INT:
            self.diags.error(span, f"{_short(str(c[0]))} is more than 64 bits of nanoseconds",
                             "durations are 64-bit nanoseconds: at most about 584 years (5124095h)")
            ns = None
        if ns is None:  # reported: a plain 1 from here on, so no error follows from it (nor from its unit)
            return n.IntLit(span, 1)
        return n.DurationLit(span, ns, str(c[0]))

    def str_lit(self, meta, c):
        return n.StrLit(self._span(meta), _unquote(str(c[0])))

    def ip_lit(self, meta, c):
        text = str(c[0])
        span = self._span(meta)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            net = None
        return n.IpLit(span, net, "/" in text, text)

    def name(self, meta, c):
        return n.Name(self._span(meta), str(c[0]))

    def set_lit(self, meta, c):
        return self._nest(n.SetLit(self._span(meta), list(c)), *c)


def _short(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), body)
