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
