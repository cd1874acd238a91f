"""Type checker: every error kind has its message and position asserted."""
import pytest

from hookql import nodes as n
from hookql import types as T
from hookql.pipeline import check_source
from hookql.source import Source

from conftest import EXAMPLES, check, errors, one_error


def at(d):
    return (d.span.line, d.span.col)


# -- clean scripts ---------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_check_clean_on_both_reference_kernels(path, k61, k618):
    for k in (k61, k618):
        result = check_source(Source.from_path(path), k)  # as a file: `use` finds examples/hookql.toml
        assert [d.render() for d in result.diagnostics if d.is_error] == []


def test_typed_fields_resolve_with_types(k618):
    r = check_source(Source("t.hq", "on lsm:socket_connect where family == AF_INET6 and dport == 443 "
                                    "and daddr in 10.0.0.0/8 { count by comm, daddr, dport, protocol }"), k618)
    assert r.ok
    (c,) = r.checked.clauses
    keys = {k.id: k for k in c.actions[0].by}
    assert keys["daddr"].ty.kind == "addr" and keys["daddr"].symbol.source == "sockaddr"
    assert keys["dport"].ty.display == T.PORT and keys["dport"].symbol.recipe == "port"
    assert keys["protocol"].symbol.source == "socket"
    assert keys["comm"].ty.kind == "str" and keys["comm"].ty.size == 16
    fam = c.where.left.left.left
    assert fam.symbol.name == "family" and fam.ty.display == T.AF
    assert c.where.left.left.right.symbol.value == 10  # AF_INET6


def test_bind_gives_saddr_sport_from_the_sockaddr(k61):
    r = check_source(Source("t.hq", "on lsm:socket_bind where sport < 1024 { count by saddr, port }"), k61)
    assert r.ok
    (c,) = r.checked.clauses
    assert c.where.left.symbol.source == "sockaddr"
    assert c.hook.fields["daddr"].source == "socket"


def test_member_access_through_btf(k618):
    r = check_source(Source("t.hq", "on kprobe:tcp_sendmsg where sk.sk_rcvbuf > 0 "
                                    "{ count by sk.__sk_common.skc_dport, sk.sk_dport }"), k618)
    assert r.ok, [d.render() for d in r.diagnostics]
    by = r.checked.clauses[0].actions[0].by
    assert by[0].ty.big_endian and by[0].ty.bits == 16  # __be16, shown in host order
    assert [m.name for m in by[1].path if m.name] == ["__sk_common", "skc_dport"]  # sk_dport is a macro in sock.h


def test_seed_argument_name_is_accepted_where_position_and_type_agree(k61):
    assert errors("on kprobe:tcp_sendmsg { sum(len) by comm }", k61) == []
    assert errors("on lsm:socket_connect { count by addr_len }", k61) == []


def test_kernel_enums_and_defines(k618):
    r = check_source(Source("t.hq", "on lsm:socket_create where family == AF_INET and type == SOCK_STREAM "
                                    "and protocol == IPPROTO_TCP { count }\n"
                                    "on lsm:socket_bind { deny EACCES }"), k618)
    assert r.ok
    assert r.checked.clauses[1].actions[0].value == 13


def test_constants_in_any_order_and_sets(k618):
    r = check_source(Source("t.hq", "const B = A * 2\nconst A = 40 + 2\nconst WEB = {80, 443}\n"
                                    "on lsm:socket_connect where dport == B or dport in WEB { count }"), k618)
    assert r.ok
    assert r.checked.consts["B"].value == 84 and r.checked.consts["WEB"].value == frozenset({80, 443})


def test_deny_default_errno_is_eperm(k618):
    r = check_source(Source("t.hq", "on lsm:socket_connect where dport == 4444 { deny }"), k618)
    assert r.checked.clauses[0].actions[0].value == 1


def test_tracepoint_fields_from_tracefs(running, tracefs):
    r = check_source(Source("t.hq", "on tracepoint:syscalls:sys_enter_getsockopt where level == 1 "
                                    "{ count by comm, optname }\n"
                                    "on tracepoint:sock:inet_sock_set_state where newstate == TCP_ESTABLISHED "
                                    "{ count by daddr, dport }"), running)
    assert r.ok, [d.render() for d in r.diagnostics]
    f = r.checked.clauses[1].hook.fields
    assert f["daddr"].ty.kind == "addr" and f["daddr"].ty.version == 4 and f["dport"].ty.display == T.PORT


# -- each error kind: message and position ---------------------------------------
def test_unknown_hook_suggests_closest(k618):
    e = one_error("on lsm:socket_conect { count }", k618)
    assert at(e) == (1, 4)
    assert "no LSM hook 'socket_conect'" in e.message and "lsm:socket_connect" in e.hint


def test_missing_seed_hooks_suggest_real_ones(k61, k618):
    for k in (k61, k618):
        e = one_error("on kprobe:tcp_accept { count }", k)
        assert at(e) == (1, 4) and e.hint == "use kprobe:inet_csk_accept instead"
        e = one_error("\non kprobe:icmp_send { count }", k)
        assert at(e) == (2, 4) and e.hint == "use kprobe:__icmp_send instead"


def test_hook_missing_on_this_kernel_names_where_it_exists(k61):
    e = one_error("on lsm:mptcp_add_subflow { count }", k61)
    assert "no LSM hook 'mptcp_add_subflow' on kernel 6.1" in e.message and "6.18" in e.hint


def test_unknown_probe_type(k618):
    e = one_error("on kprobes:tcp_connect { count }", k618)
    assert at(e) == (1, 4) and "unknown probe type 'kprobes'" in e.message and "kprobe:tcp_connect" in e.hint


def test_unknown_field_lists_the_hooks_fields(k618):
    e = one_error("on kprobe:tcp_sendmsg where foo == 1 { count }", k618)
    assert at(e) == (1, 29)
    assert "unknown field 'foo' in kprobe:tcp_sendmsg; its fields are: sk, msg, size, family" in e.message


def test_unknown_field_did_you_mean(k618):
    e = one_error("on lsm:socket_connect { count by dprot }", k618)
    assert at(e) == (1, 34) and e.hint.startswith("did you mean 'dport'")


def test_unknown_member_lists_members(k618):
    e = one_error("on kprobe:tcp_sendmsg { count by sk.sk_rcvbufz }", k618)
    assert at(e) == (1, 37) and "struct sock has no member 'sk_rcvbufz'" in e.message and "sk_rcvbuf" in e.hint


def test_type_mismatch_string_vs_int(k618):
    e = one_error("on lsm:socket_connect where comm == 5 { count }", k618)
    assert at(e) == (1, 34)
    assert e.message == "cannot compare comm (string) with 5 (integer)"
    assert 'comm == "curl"' in e.hint


def test_sum_of_a_string(k618):
    e = one_error("on lsm:socket_connect {\n    sum(comm)\n}", k618)
    assert at(e) == (2, 9) and e.message == "sum() needs an integer value, but comm is a string"


def test_ordering_strings_and_addresses(k618):
    e = one_error("on lsm:socket_connect where daddr < ::1 { count }", k618)
    assert at(e) == (1, 35) and "'<' compares integers, but daddr is an IP address" in e.message


def test_network_needs_in(k618):
    e = one_error("on lsm:socket_connect where daddr == 10.0.0.0/8 { count }", k618)
    assert at(e) == (1, 35) and e.hint == "write `daddr in 10.0.0.0/8`"


def test_filter_must_be_a_condition(k618):
    e = one_error("on lsm:socket_connect where dport { count }", k618)
    assert at(e) == (1, 29) and "a filter must be true or false" in e.message


def test_deny_on_a_non_lsm_probe(k618):
    e = one_error("on kprobe:tcp_connect { count; deny }", k618)
    assert at(e) == (1, 32)
    assert e.message == "deny works only on LSM hooks; kprobe:tcp_connect can observe but not block"
    assert "lsm:socket_connect" in e.hint


def test_deny_on_a_void_lsm_hook(k618):
    e = one_error("on lsm:sock_graft { deny }", k618)
    assert at(e) == (1, 21) and "returns void" in e.message


def test_deny_needs_an_errno(k618):
    e = one_error('on lsm:socket_connect { deny "no" }', k618)
    assert at(e) == (1, 30) and "deny takes an errno" in e.message


def test_retval_on_an_entry_probe(k618):
    e = one_error("on kprobe:tcp_sendmsg where retval < 0 { count }", k618)
    assert at(e) == (1, 29) and e.message == "retval is not available in kprobe:tcp_sendmsg"
    assert e.hint == "retval is read when the function returns: use kretprobe:tcp_sendmsg"


def test_arguments_in_a_kretprobe(k618):
    # issue 13: a kretprobe reads its arguments as passed at entry (saved per thread under kprobes)
    assert not errors("on kretprobe:tcp_sendmsg { count by size }", k618)


def test_seed_argument_the_kernel_lacks_names_the_real_signature(k61, k618):
    for k in (k61, k618):
        e = one_error("on kprobe:tcp_connect { emit uaddr }", k)
        assert at(e) == (1, 30)
        assert "the seed documents `struct sockaddr *uaddr`" in e.message
        assert "the real signature is `int tcp_connect(struct sock *sk)`" in e.message
    e = one_error("on lsm:socket_setsockopt { emit optval }", k618)
    assert "the real signature is `int socket_setsockopt(struct socket *sock, int level, int optname)`" in e.message


def test_duplicate_constant(k618):
    e = one_error("const A = 1\nconst A = 2\non lsm:socket_connect where dport == A { count }", k618)
    assert at(e) == (2, 7) and e.message == "constant 'A' is defined twice"
    assert "line 1, column 7" in e.hint


def test_undefined_constant(k618):
    e = one_error("on lsm:socket_connect where dport == WATCHED { count }", k618)
    assert at(e) == (1, 38) and e.message == "unknown constant 'WATCHED'"


def test_constant_cycle(k618):
    e = one_error("const A = B\nconst B = A + 1\non lsm:socket_connect where dport == A { count }", k618)
    assert "defined in terms of itself (A -> B -> A)" in e.message


def test_constant_must_be_known_before_load(k618):
    e = one_error("const C = comm\non lsm:socket_connect { count }", k618)
    assert at(e) == (1, 11) and "unknown constant 'comm'" in e.message


def test_constant_shadowing_a_kernel_constant(k618):
    e = one_error("const AF_INET = 3\non lsm:socket_connect { count }", k618)
    assert at(e) == (1, 7) and "already a kernel constant" in e.message


def test_bad_aggregation_arity_and_name(k618):
    errs = errors("on lsm:socket_connect { count(dport); sum; cnt by comm; lhist(dport, 10, 0, 1) }", k618)
    assert [(at(d), d.message.split(";")[0]) for d in errs] == [
        ((1, 25), "count takes no arguments, got 1"),
        ((1, 39), "sum takes 1 argument, got 0"),
        ((1, 44), "unknown action 'cnt'"),
        ((1, 74), "lhist MAX (0) must be greater than MIN (10)"),
    ]


def test_invalid_address_literal(k618):
    e = one_error("on lsm:socket_connect where daddr == 10.0.0.256 { count }", k618)
    assert at(e) == (1, 38) and "'10.0.0.256' is not a valid IP address" in e.message


def test_group_by_a_struct(k618):
    e = one_error("on kprobe:tcp_sendmsg { count by sk.__sk_common }", k618)
    assert at(e) == (1, 34) and "cannot use sk.__sk_common" in e.message and "pick a member" in e.hint


def test_warnings_do_not_fail(k618):
    d = check('on lsm:socket_connect where dport == 70000 or comm == "a-very-long-command" { count }', k618)
    assert [x.severity for x in d] == ["warning", "warning"]
    assert at(d[0]) == (1, 38) and "out of range" in d[0].message
    assert "never matches" in d[1].message


def test_all_errors_are_reported_not_just_the_first(k618):
    errs = errors("on lsm:nope { count }\non kprobe:tcp_connect { deny }\n"
                  "on lsm:socket_connect where comm == 5 { sum(comm) }\non x { }", k618)
    assert [d.span.line for d in errs] == [1, 2, 3, 3, 4]


def test_tracepoint_fields_come_from_btf_on_reference_kernels(k61):
    """Issue 12: a reference kernel has no tracefs; its fields come from BTF (they used to be an error)."""
    assert errors("on tracepoint:syscalls:sys_enter_getsockopt { count by comm }", k61) == []
    assert errors("on tracepoint:syscalls:sys_enter_getsockopt { count by optname }", k61) == []
    e = one_error("on tracepoint:syscalls:sys_enter_getsockopt { count by nope }", k61)
    assert "optname" in e.message + (e.hint or "")


def test_unknown_tracepoint(running, tracefs):
    e = one_error("on tracepoint:syscalls:sys_enter_getsockop { count }", running)
    assert at(e) == (1, 4) and "tracepoint:syscalls:sys_enter_getsockopt" in e.hint


def test_use_of_an_unknown_library(k618, tmp_path):
    e = one_error("use netlib\non lsm:socket_connect { count }", k618)
    assert at(e) == (1, 1) and e.message == "unknown library 'netlib'"


def test_use_of_a_local_file(k618, tmp_path):
    (tmp_path / "ports.hq").write_text("const WEB = {80, 443}\n")
    main = tmp_path / "main.hq"
    main.write_text('use "ports.hq"\non lsm:socket_connect where dport in ports.WEB { count }\n')
    r = check_source(Source.from_path(main), k618)
    assert r.ok, [d.render() for d in r.diagnostics]


def test_inline_wrapper_hook_warns_with_the_real_function(k61):
    d = check("on kprobe:dev_queue_xmit { count }", k61)
    (w,) = d
    assert w.severity == "warning" and at(w) == (1, 4)
    assert "inline wrapper" in w.message and w.hint == "use kprobe:__dev_queue_xmit"
