"""The front end's limits and edge semantics (issue 12): every input the checker
passes builds, and everything past a limit is an error naming it.

Each test is a regression for one cause a fuzzer found; the ones that say a
script builds run the real `hookql compile` (clang) on the running kernel."""
import subprocess

import pytest

from hookql import checker as CK
from hookql import parser as P
from hookql.pipeline import check_source
from hookql.source import Source

from conftest import check, errors, hookql_cmd, one_error

TP = "tracepoint:syscalls:sys_enter_getsockopt"
SOCK = "tracepoint:sock:inet_sock_set_state"


def at(d):
    return d.span.line, d.span.col


def warnings(text, kernel):
    return [d for d in check(text, kernel) if d.severity == "warning"]


def compiles(text, tmp_path, name="x"):
    """`hookql compile -e TEXT -o OUT`: the real clang builds it (warnings allowed)."""
    script = tmp_path / f"{name}.hq"
    script.write_text(text)
    r = subprocess.run(hookql_cmd() + ["compile", str(script), "-o", str(tmp_path / f"{name}.o")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    return r


@pytest.fixture(scope="module")
def tp(tracefs, running):
    return running


# -- 1: literals wider than 64 bits ------------------------------------------------
def test_literal_wider_than_64_bits_is_an_error_with_a_hint(k618):
    e = one_error(f"on {TP} where optname == 99999999999999999999 {{ count }}", k618)
    assert at(e) == (1, 62) and "does not fit in 64 bits" in e.message
    assert "at most 18446744073709551615" in e.hint
    assert errors(f"on {TP} where optname == 0xffffffffffffffff {{ count }}", k618) == []


def test_constants_and_negations_out_of_64_bits(k618):
    e = one_error(f"const X = -0xffffffffffffffff\non {TP} {{ count }}", k618)
    assert e.span.line == 1 and "does not fit in 64 bits" in e.message
    e = one_error(f"on {TP} where optname == 0xffffffffffffffff + 1 {{ count }}", k618)
    assert "does not fit in 64 bits" in e.message and e.span.text == "+"


def test_out_of_range_for_the_field_warns_for_constants_too(k618):
    d = warnings(f"const BIG = 70000\non lsm:socket_connect where dport == BIG or dport == -1 {{ count }}", k618)
    assert [x.span.text for x in d] == ["BIG", "-1"] and all("out of range" in x.message for x in d)


def test_literal_too_long_to_read(k618):
    for digits in (400, 5000):
        e = one_error(f"const X = {'9' * digits}\non {TP} {{ count }}", k618)
        assert f"too long: {digits} digits" in e.message and e.span.line == 1
    e = one_error(f"on {TP} where optname == 0x{'f' * 5000} {{ count }}", k618)
    assert "too long" in e.message
    e = one_error(f"on {TP} where optname == {'9' * 5000}ns {{ count }}", k618)
    assert "duration literal too long" in e.message
    e = one_error(f"on {TP} where optname == 99999999999h {{ count }}", k618)
    assert "more than 64 bits of nanoseconds" in e.message


# -- 2: << and >> ------------------------------------------------------------------
def test_shifts_parse_with_c_precedence():
    from hookql.diagnostics import Diagnostics
    diags = Diagnostics()
    s = P.parse(Source("t.hq", f"on {TP} where a << 2 + 1 & 4 == b >> 1 {{ hist(x << 2) }}"), diags)
    assert not diags, [x.render() for x in diags]
    w = s.clauses[0].where
    assert w.op == "==" and w.left.op == "&" and w.left.left.op == "<<" and w.left.left.right.op == "+"
    assert w.right.op == ">>" and s.clauses[0].actions[0].args[0].op == "<<"


def test_shifts_next_to_angle_blocks(k618):
    assert errors(f"on {TP} where optname << 1 > 2 < hist(optname >> 1) >", k618) == []
    assert errors(f"on {TP} < count by optname >> 1 >", k618) == []


def test_shift_compiles(tp, tmp_path):
    compiles(f"on {TP} {{ hist(optname << 2) }}\non {TP} where optname >> 1 == 2 < count by level << 1 >", tmp_path)


# -- 3: folding reports at the operator ----------------------------------------------
@pytest.mark.parametrize("text, where, msg", [
    (f"const X = 1 + -1\non {TP} where optname == 1 << (X - 1) {{ count }}", (2, 64), "shift by -1"),
    (f"on {TP} where optname == 1 << 100 {{ count }}", (1, 64), "shift by 100"),
    (f"on {TP} {{ hist(optname >> 64) }}", (1, 60), "shift by 64"),
    (f"const Z = 0\non {TP} where optname / Z == 1 {{ count }}", (2, 59), "division by zero"),
    (f"const R = 5 % (2 - 2)\non {TP} {{ count }}", (1, 13), "remainder by zero"),
    (f"on {TP} where optname % (3 - 3) == 1 {{ count }}", (1, 59), "remainder by zero"),
    (f"on {TP} {{ lhist(optname, 0, 1 << 63 << 1, 1) }}", (1, 73), "does not fit in 64 bits"),
])
def test_folding_errors_point_at_the_operator(k618, text, where, msg):
    e = one_error(text, k618)
    assert at(e) == where and msg in e.message, e.render()


def test_folding_follows_c():
    assert CK._compare("<", -1, 0xffffffffffffffff) is False  # C compares as unsigned
    from hookql.diagnostics import Diagnostics
    node = P.parse(Source("t.hq", "const X = -7 / 2"), Diagnostics()).items[0].value
    assert CK._fold_checked(node, -7, 2, Diagnostics()) == -3
    node.op = "%"
    assert CK._fold_checked(node, -7, 2, Diagnostics()) == -1


def test_folded_lhist_bounds_compile(tp, tmp_path):
    compiles(f"on {TP} {{ lhist(optname, 0, 10 * 10, ~-2) }}", tmp_path)


# -- 4: deep expressions -------------------------------------------------------------
@pytest.mark.parametrize("op", ["and", "or", "+"])
def test_ten_thousand_terms_check(k618, op):
    terms = [f"optname != {i}" for i in range(10_000)] if op != "+" else [f"{i}" for i in range(10_000)]
    cond = f" {op} ".join(terms) if op != "+" else f"optname == {' + '.join(terms)}"
    assert errors(f"on {TP} where {cond} {{ count }}", k618) == []
    if op == "+":
        assert errors(f"const X = {' + '.join(terms)}\non {TP} where optname == X {{ count }}", k618) == []


def test_def_body_of_ten_thousand_terms(k618):
    body = " or ".join(f"x == {i}" for i in range(10_000))
    assert errors(f"def big(x) = {body}\non {TP} where big(optname) {{ count }}", k618) == []


@pytest.mark.parametrize("prefix", ["not ", "-", "~", "!"])
def test_thousand_nested_unary_is_a_clear_error(k618, prefix):
    e = one_error(f"on {TP} where {prefix * 1000}optname == 1 {{ count }}", k618)
    assert f"nested too deeply: more than {P.MAX_NESTING} levels" in e.message


def test_nested_parentheses_limit(k618):
    ok = "(optname == 1 or " * (P.MAX_NESTING - 1) + "optname == 2" + ")" * (P.MAX_NESTING - 1)
    assert errors(f"on {TP} where {ok} {{ count }}", k618) == []
    deep = "(optname == 1 or " * 400 + "optname == 2" + ")" * 400
    e = one_error(f"on {TP} where {deep} {{ count }}", k618)
    assert "nested too deeply" in e.message and "one level however long" in e.hint
    assert errors(f"on {TP} where {'(' * 5000}optname == 1{')' * 5000} {{ count }}", k618) == []  # no node


def test_defs_nested_past_the_limit(k618):
    defs = "def b0(x) = x > 1\n" + "".join(f"def b{i}(x) = b{i - 1}(x)\n" for i in range(1, 300))
    e = one_error(defs + f"on {TP} where b299(optname) {{ count }}", k618)
    assert f"defs nested more than {CK.MAX_DEF_DEPTH} deep" in e.message


def test_constants_defined_through_too_many(k618):
    consts = "".join(f"const A{i} = A{i + 1} + 1\n" for i in range(300)) + "const A300 = 1\n"
    errs = errors(consts + f"on {TP} where optname == A0 {{ count }}", k618)
    assert errs and all(f"more than {CK.MAX_CONST_DEPTH} other constants" in e.message for e in errs)
    chain = "const A0 = 1\n" + "".join(f"const A{i} = A{i - 1} + 1\n" for i in range(1, 2000))
    assert errors(chain + f"on {TP} where optname == A1999 {{ count }}", k618) == []


def test_long_chain_compiles(tp, tmp_path):
    compiles(f"on {TP} where " + " or ".join(f"optname == {i}" for i in range(400)) + " { count }", tmp_path)


# -- 5: def doubling chains ----------------------------------------------------------
def doubling(levels):
    return "def a0(x) = x > 1\n" + "".join(f"def a{i}(x) = a{i - 1}(x) and a{i - 1}(x)\n" for i in range(1, levels + 1))


def test_def_doubling_is_shared_not_copied(k618):
    r = check_source(Source("t.hq", doubling(12) + f"on {TP} where a12(optname) {{ count }}"), k618)
    assert r.ok
    top = r.checked.clauses[0].where
    inner = top.expansion
    assert inner.left.expansion is inner.right.expansion  # a11(x) expanded once, shared by both uses


def test_def_doubling_past_the_limit_is_an_error(k618):
    e = one_error(doubling(20) + f"on {TP} where a20(optname) {{ count }}", k618)
    assert f"at most {CK.MAX_INLINED}" in e.message and "inlines" in e.message


def test_many_uses_of_a_big_def_are_bounded(k618):
    uses = " or ".join(["a13(optname)"] * 50)
    e = one_error(doubling(13) + f"on {TP} where {uses} {{ count }}", k618)
    assert "the defs used in this clause inline" in e.message


def test_def_doubling_within_the_limit_compiles(tp, tmp_path):
    compiles(doubling(10) + f"on {TP} where a10(optname) {{ count }}", tmp_path)


# -- 6: set size ---------------------------------------------------------------------
def test_set_size_limit(k618):
    big = ", ".join(str(i) for i in range(1, 100_001))
    e = one_error(f"on lsm:socket_connect where dport in {{{big}}} {{ count }}", k618)
    assert at(e) == (1, 38) and f"at most {CK.MAX_SET_ELEMENTS} elements; this one has 100000" in e.message
    ok = ", ".join(str(i) for i in range(1, CK.MAX_SET_ELEMENTS + 1))
    assert errors(f"const S = {{{ok}}}\non lsm:socket_connect where dport in S {{ count }}", k618) == []


def test_largest_set_compiles(tp, tmp_path):
    ok = ", ".join(str(i) for i in range(1, CK.MAX_SET_ELEMENTS + 1))
    compiles(f"on {TP} where optname in {{{ok}}} {{ count }}", tmp_path)


# -- 7: comparisons of two constants -------------------------------------------------
def test_constant_comparison_is_folded_with_a_warning(k618):
    d = check(f'on {TP} where "a" != "b" {{ count }}', k618)
    assert [x.severity for x in d] == ["warning"]
    assert "always true; the clause always fires" in d[0].message
    d = check(f'on {TP} where 10.0.0.1 in 10.0.0.0/8 and not ("x" in {{"x"}}) {{ count }}', k618)
    assert [x.severity for x in d] == ["warning"] * 3
    assert any("always false: the clause never fires" in x.message for x in d)


def test_constant_values_cannot_be_keys_and_in_needs_a_constant(k618):
    e = errors(f'on {TP} {{ count by "a"; emit 10.0.0.1 }}', k618)
    assert len(e) == 2 and all("every event would have the same value" in x.message for x in e)
    e = one_error(f"on {SOCK} where daddr in saddr {{ count }}", k618)
    assert "needs a constant on its right" in e.message


def test_constant_comparisons_compile(tp, tmp_path):
    compiles(f'on {TP} where "a" != "b" {{ count }}\n'
             f'on {TP} where comm == "x" and not ("a" == "b") and 10.0.0.1 in {{10.0.0.0/8}} {{ count }}\n'
             f'on {TP} where 1 == 2 {{ count }}', tmp_path)


# -- 8: v4-mapped addresses ----------------------------------------------------------
def test_ipv4_against_an_ipv6_field_means_v4_mapped(k618):
    assert check(f"on {SOCK} where daddr_v6 == 127.0.0.1 or daddr_v6 in 10.0.0.0/8 {{ count }}", k618) == []
    assert check(f"on {SOCK} where daddr == ::ffff:1.2.3.4 or daddr in ::ffff:0:0/96 "
                 f"or daddr == daddr_v6 {{ count }}", k618) == []
    d = warnings(f"on {SOCK} where daddr == ::1 or daddr in fe80::/10 {{ count }}", k618)
    assert len(d) == 2 and all("outside ::ffff:0:0/96" in x.message for x in d)
    d = check(f"on {TP} where ::ffff:127.0.0.1 == 127.0.0.1 {{ count }}", k618)
    assert len(d) == 1 and "always true" in d[0].message


def test_v4_mapped_compiles(tp, tmp_path):
    compiles(f"on {SOCK} where daddr_v6 == 127.0.0.1 or daddr_v6 in 10.0.0.0/8 {{ count by daddr_v6 }}", tmp_path)


# -- 9: strings count UTF-8 bytes ----------------------------------------------------
def test_non_ascii_string_compare_checks(k618):
    assert check(f'on {TP} where comm == "héllo" {{ count }}', k618) == []
    assert check(f'on {TP} where comm == "ééééééé" {{ count }}', k618) == []  # 14 bytes
    d = warnings(f'on {TP} where comm == "éééééééé" {{ count }}', k618)  # 8 characters, 16 bytes
    assert len(d) == 1 and "holds at most 15 bytes" in d[0].message and "(16 bytes)" in d[0].message
    d = warnings(f'on {TP} where comm in {{"éééééééé", "x"}} {{ count }}', k618)
    assert len(d) == 1 and "never match" in d[0].message


def test_non_ascii_string_compare_compiles(tp, tmp_path):
    compiles(f'on {TP} where comm == "héllo" or comm in {{"ü", "x"}} {{ count }}', tmp_path)


def test_a_negative_literal_in_a_set_is_a_constant(k618):
    """Found by the script generator: `{3, -1}` was taken for a value read from the event."""
    from conftest import errors

    assert errors("on tracepoint:syscalls:sys_enter_getsockopt where optname in {3, -1} { count }", k618) == []
    assert errors("on tracepoint:syscalls:sys_enter_getsockopt where optname not in {-(2), ~0} { count }", k618) == []


def test_named_constants_in_a_set_lower(tmp_path):
    """Found by the script generator: a kernel constant in a set (`{AF_INET}`) checked, then lowering
    found no symbol on it."""
    compiles("const A = 3\non tracepoint:syscalls:sys_enter_getsockopt where optname in {AF_INET, A, -1} "
             "{ count }", tmp_path)
