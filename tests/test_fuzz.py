"""The front end never raises on any input: every failure is a Diagnostic."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookql.parser import needs_more
from hookql.pipeline import check_source
from hookql.source import Source

from conftest import EXAMPLES

TOKENS = [
    "on", "where", "const", "use", "emit", "deny", "by", "and", "or", "not", "in", "{", "}", "(", ")", "<", ">",
    ",", ";", "\n", ".", "=", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "&", "|", "^", "~", "<<", ">>",
    "!", "&&", "||", "lsm:socket_connect", "kprobe:tcp_sendmsg", "kretprobe:tcp_sendmsg", "lsm:sock_graft",
    "tracepoint:syscalls:sys_enter_getsockopt", "kprobe:nope", "x:y:z", "count", "sum", "avg", "min", "max",
    "hist", "lhist", "comm", "pid", "retval", "daddr", "dport", "family", "sk", "size", "sock", "AF_INET6",
    "EPERM", "X", "0", "1", "4444", "-1", "0x10", "10s", "10.0.0.0/8", "::1", "fe80::/10", "1.2.3.999",
    '"curl"', '"', "#c\n", "@", "$", "sk.sk_rcvbuf", ".nope", "{80, 443}",
]
SEEDS = [p.read_text() for p in EXAMPLES]


def no_raise(text: str, kernel) -> None:
    result = check_source(Source("fuzz.hq", text), kernel)
    for d in result.diagnostics:
        d.render()  # rendering must not fail either
    needs_more(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join))
def test_token_soup(k618, text):
    no_raise(text, k618)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_arbitrary_text(k618, text):
    no_raise(text, k618)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SEEDS), st.integers(0, 400), st.integers(0, 8), st.sampled_from(TOKENS))
def test_mutated_examples(k61, seed, pos, cut, insert):
    pos = pos % (len(seed) + 1)
    no_raise(seed[:pos] + insert + seed[pos + cut:], k61)


# -- issue 12: the new operators and the front end's limits ---------------------------
TP = "tracepoint:syscalls:sys_enter_getsockopt"
LIMIT_TOKENS = TOKENS + [
    "<<", ">>", "1 << 100", "1 << -1", "/ 0", "% (1 - 1)", "99999999999999999999", "0xffffffffffffffff",
    "9" * 400, '"héllo"', '"a"', "daddr_v6", "127.0.0.1", "::ffff:1.2.3.4", "{1, 2, 3}", "optname", "level",
    TP, "tracepoint:sock:inet_sock_set_state", "def", "f(x)", "(", ")",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(LIMIT_TOKENS), max_size=30).map(" ".join))
def test_token_soup_with_shifts_and_limits(k618, text):
    no_raise(text, k618)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(terms=st.integers(1, 3000), op=st.sampled_from(["and", "or", "&&", "||", "+", "<<", ">>", "*", "/", "%", "|"]),
       prefix=st.sampled_from(["not ", "-", "~", "!", "(", "f(", "{"]), depth=st.integers(0, 300))
def test_deep_and_wide_expressions(k618, terms, op, prefix, depth):
    logic = op in ("and", "or", "&&", "||")
    chain = f" {op} ".join(f"optname == {i}" if logic else str(i) for i in range(terms))
    close = {"(": ")", "f(": ")", "{": "}"}.get(prefix, "")
    cond = prefix * depth + (chain if logic else f"optname == {chain}") + close * depth
    no_raise(f"def f(x) = x\non {TP} where {cond} {{ count }}", k618)


INTS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 63, 64, 2**63, 2**64 - 1, 2**64]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]), INTS), max_size=6),
       INTS)
def test_constant_folding_reports_or_folds(k618, steps, first):
    expr = str(first) + "".join(f" {op} ({v})" for op, v in steps)
    result = check_source(Source("fuzz.hq", f"const X = {expr}\non {TP} where optname == X {{ count }}"), k618)
    for d in result.diagnostics:
        assert d.span is not None and "internal error" not in d.message
        d.render()
    if result.ok:
        value = result.checked.consts["X"].value
        assert -2**63 <= value <= 2**64 - 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.one_of(st.ip_addresses(), st.text(max_size=20), INTS), b=st.one_of(st.ip_addresses(), st.text(max_size=20), INTS),
       op=st.sampled_from(["==", "!=", "<", "in", "not in"]))
def test_constant_comparisons_never_raise(k618, a, b, op):
    lit = lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"' if isinstance(v, str) \
        else str(v)
    no_raise(f"on {TP} where {lit(a)} {op} {lit(b)} or {lit(a)} {op} {{{lit(b)}}} {{ count }}", k618)
