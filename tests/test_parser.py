"""Grammar and parser: the issue's language surface, spans, recovery."""
import pytest

from hookql import nodes as n
from hookql.diagnostics import Diagnostics
from hookql.parser import needs_more, parse
from hookql.source import Source

from conftest import EXAMPLES


def parse_ok(text):
    d = Diagnostics()
    script = parse(Source("t.hq", text), d)
    assert not d, "\n".join(x.render() for x in d)
    return script


def parse_errs(text):
    d = Diagnostics()
    parse(Source("t.hq", text), d)
    return d


def test_design_card_angle_block():
    s = parse_ok("on lsm:socket_connect where family==AF_INET6 < count by comm >")
    (c,) = s.clauses
    assert c.probe.provider == "lsm" and c.probe.target == ["socket_connect"]
    assert isinstance(c.where, n.Binary) and c.where.op == "=="
    assert c.where.right.id == "AF_INET6"
    (a,) = c.actions
    assert a.func == "count" and [k.id for k in a.by] == ["comm"]


def test_angle_block_keeps_comparisons_in_filter():
    s = parse_ok("on lsm:socket_connect where dport < 1024 and dport > 10 < count by comm >")
    w = s.clauses[0].where
    assert w.op == "and" and w.left.op == "<" and w.right.op == ">"


def test_angle_block_with_emit_comparison_inside():
    s = parse_ok("on lsm:socket_connect < emit dport > 5, comm >")
    (e,) = s.clauses[0].actions
    assert isinstance(e, n.Emit) and e.values[0].op == ">"


def test_block_newlines_semicolons_and_continuations():
    s = parse_ok("""
const WATCH = 4444
on lsm:socket_connect where family == AF_INET6 and
        dport != WATCH {
    count by comm
    count by comm,
        daddr, dport

    sum(dport); hist(dport)
}
""")
    (c,) = s.clauses
    assert [a.func for a in c.actions] == ["count", "count", "sum", "hist"]
    assert [k.id for k in c.actions[1].by] == ["comm", "daddr", "dport"]
    assert s.consts[0].name == "WATCH" and s.consts[0].value.value == 4444


def test_literals():
    s = parse_ok('on lsm:socket_connect where daddr in 10.0.0.0/8 or daddr == ::1 or daddr in fe80::/10 '
                 'or comm == "a\\"b" or ts > 10ms or dport == 0x1F or dport in {80, 443,} { count }')
    lits = []

    def walk(e):
        if isinstance(e, n.Binary):
            walk(e.left), walk(e.right)
        else:
            lits.append(e)
    walk(s.clauses[0].where)
    by_type = {type(x).__name__: x for x in lits if not isinstance(x, n.Name)}
    ips = [x for x in lits if isinstance(x, n.IpLit)]
    assert [(str(x.network), x.is_cidr) for x in ips] == [("10.0.0.0/8", True), ("::1/128", False), ("fe80::/10", True)]
    assert by_type["StrLit"].value == 'a"b'
    assert by_type["DurationLit"].nanoseconds == 10_000_000
    assert [x.value for x in lits if isinstance(x, n.IntLit)] == [0x1F]
    assert [i.value for i in by_type["SetLit"].items] == [80, 443]


def test_operator_precedence():
    s = parse_ok("on kprobe:tcp_sendmsg where size + 1 * 2 > 3 and not size & 4 == 0 or pid == 1 { count }")
    w = s.clauses[0].where
    assert w.op == "or" and w.left.op == "and"
    gt = w.left.left
    assert gt.op == ">" and gt.left.op == "+" and gt.left.right.op == "*"
    assert w.left.right.op == "not"
    assert w.left.right.operand.op == "==" and w.left.right.operand.left.op == "&"


def test_member_access_and_probe_forms():
    s = parse_ok("on k:tcp_sendmsg { count by sk.__sk_common.skc_family }\n"
                 "on tracepoint:syscalls:sys_enter_getsockopt { count }\n"
                 "on kr:tcp_sendmsg { count }")
    m = s.clauses[0].actions[0].by[0]
    assert isinstance(m, n.Member) and m.name == "skc_family" and m.obj.name == "__sk_common"
    assert s.clauses[1].probe.target == ["syscalls", "sys_enter_getsockopt"]


def test_spans_point_at_source():
    s = parse_ok("\n\non lsm:socket_connect   where dport == 1 {\n  count by comm\n}")
    c = s.clauses[0]
    assert (c.probe.span.line, c.probe.span.col) == (3, 4)
    assert (c.where.span.line, c.where.span.col) == (3, 31)
    assert (c.actions[0].by[0].span.line, c.actions[0].by[0].span.col) == (4, 12)


def test_use_statements():
    s = parse_ok('use netlib.ports\nuse "lib/common.hq"\non lsm:socket_connect { count }')
    assert [(u.name, u.path) for u in s.uses] == [("netlib.ports", None), (None, "lib/common.hq")]


def test_every_example_parses():
    for path in EXAMPLES:
        parse_ok(path.read_text())


def test_errors_in_one_clause_do_not_hide_the_next():
    d = parse_errs("on lsm:socket_connect where dport = 1 { count }\n"
                   "on kprobe:tcp_connect { count by comm, }\n"
                   "on lsm:socket_bind { count }\n")
    assert [(x.span.line, x.span.col) for x in d] == [(1, 35), (2, 40)]
    assert d[0].hint == "use '==' to compare"
    assert "expected an expression" in d[1].message


def test_unclosed_brace_names_its_opener():
    d = parse_errs("on lsm:socket_connect {\n  count by comm\n")
    (e,) = d
    assert "'{' opened at line 1, column 23 is never closed" in e.message


def test_unknown_characters_are_reported_and_skipped():
    d = parse_errs("on lsm:socket_connect { @x = count() }\non kprobe:tcp_connect { count }")
    assert d[0].span.line == 1 and d[0].span.col == 25 and "no @maps" in d[0].message


def test_unterminated_string():
    d = parse_errs('on lsm:socket_connect where comm == "curl { count }')
    assert d[0].message == "unterminated string" and d[0].span.col == 37


@pytest.mark.parametrize("text,more", [
    ("on lsm:socket_connect {", True),
    ("on lsm:socket_connect where dport == 1", True),
    ("on lsm:socket_connect { count by comm }", False),
    ("on lsm:socket_connect < count by comm >", False),
    ("const X = 1 +", True),
    ("const X = 1", False),
    ("", False),
])
def test_needs_more_for_the_repl(text, more):
    assert needs_more(text) is more


# -- the parser module is generated ahead of time (tools/gen_parser.py) -------------------------------
def test_generated_parser_is_made_from_the_grammar_as_it_is():
    """grammar/lalr.py holds the LALR tables of grammar/hookql.lark: regenerate it after a grammar change."""
    import subprocess
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import gen_parser
    finally:
        sys.path.remove(str(REPO / "tools"))
    from hookql.grammar import lalr

    assert lalr.GRAMMAR_SHA256 == gen_parser.grammar_sha256(), "grammar changed: run python3 tools/gen_parser.py"
    lark = pytest.importorskip("lark")
    if lark.__version__ != lalr.LARK_VERSION:
        pytest.skip(f"made with Lark {lalr.LARK_VERSION}, Lark {lark.__version__} is installed")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gen_parser.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_generated_parser_parses_as_lark_does():
    """The same trees (and the same errors, with what was expected) as Lark building the tables itself."""
    import sys

    from conftest import REPO
    from hookql.lexer import lark_parser, shape, split_items, tokenize

    lark = pytest.importorskip("lark")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import gen_parser
    finally:
        sys.path.remove(str(REPO / "tools"))
    ref = lark.Lark(gen_parser.GRAMMAR.read_text(encoding="utf-8"), **gen_parser.OPTIONS)

    def shown(t):
        if hasattr(t, "children"):
            return str(t.data), [shown(c) for c in t.children], (t.meta.line, t.meta.column, t.meta.end_line,
                                                                 t.meta.end_column)
        return t.type, str(t), t.line, t.column, t.end_line, t.end_column

    def run(parser, toks):
        ip = parser.parse_interactive(start="item")
        try:
            for tok in toks:
                ip.feed_token(tok)
            return shown(ip.feed_eof(toks[-1] if toks else None))
        except Exception as exc:  # noqa: BLE001 - the two must fail alike
            ip = getattr(exc, "interactive_parser", None)
            return type(exc).__name__, sorted(ip.accepts() if ip else exc.expected)

    items = 0
    for path in EXAMPLES:
        for toks in split_items(tokenize(Source(path.name, path.read_text()), Diagnostics())):
            toks = shape(toks)
            for variant in (toks, toks[:len(toks) // 2], toks[:2] + toks[3:]):  # whole, cut, one token missing
                ref_toks = [lark.Token(t.type, t.value, t.start_pos, t.line, t.column, t.end_line, t.end_column,
                                       t.end_pos) for t in variant]
                assert run(lark_parser(), variant) == run(ref, ref_toks), (path.name, variant)
                items += 1
    assert items > 50
