"""The hook catalog: all 80 seed entries walked against both reference kernels."""
import json

import pytest

from hookql.catalog import Catalog, ProbeError, parse_tp_format

from conftest import SHARED, check

CAT = Catalog.load()
REFERENCE = SHARED / "reference" / "seed-hooks-vs-btf.json"


def test_catalog_has_every_seed_entry():
    assert len(CAT.entries) == 80
    kinds = [e.provider for e in CAT.entries]
    assert kinds.count("kprobe") == 24 and kinds.count("lsm") == 56
    assert len({e.hook for e in CAT.entries if e.provider == "lsm"}) == 42
    for e in CAT.entries:
        assert e.title and e.description_ko and e.use_case and e.source, e.seed_name
        assert any("\uac00" <= ch <= "\ud7a3" for ch in e.description_ko), e.seed_name  # the Korean line


@pytest.mark.parametrize("entry", CAT.entries, ids=lambda e: f"{e.provider}:{e.seed_name}")
def test_seed_entry_on_both_reference_kernels(entry, k61, k618):
    for kern in (k61, k618):
        probe = f"{entry.provider}:{entry.seed_name}"
        if kern.version in entry.in_kernels:
            hook = CAT.resolve(entry.provider, [entry.seed_name], kern)
            assert hook.name == entry.hook and hook.sig is not None
            # a script using the hook checks clean, with a typed field where the hook has one
            key = next((f for f in ("daddr", "family", "comm") if f in hook.fields), "comm")
            assert [d.render() for d in check(f"on {probe} {{ count by {key} }}", kern) if d.is_error] == []
        else:
            with pytest.raises(ProbeError) as exc:
                CAT.resolve(entry.provider, [entry.seed_name], kern)
            assert exc.value.hint, f"{probe} on {kern.label}: no hint"


def _decl(args):
    return [(t.replace(" *", "*").replace("*", " *").strip(), n) for t, n in args]


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/reference is not beside the repo")
def test_signatures_match_the_shared_reference(k61, k618):
    """Our BTF reading agrees with the independent check in shared/reference."""
    refs = json.loads(REFERENCE.read_text())
    assert len(refs) == 80
    for ref in refs:
        e = CAT.by_seed_name[(ref["kind"], ref["seed_name"])]
        assert e.hook == ref["kernel_name"]
        for kern, present, args in ((k618, ref["in_6_18"], ref["args"]),
                                    (k61, ref["in_6_1"], ref.get("args_6_1") or ref["args"])):
            assert (kern.version in e.in_kernels) == present, (ref["seed_name"], kern.label)
            if not present:
                continue
            hook = CAT.resolve(e.provider, [e.seed_name], kern)
            ours = [(p.type.c_decl(), p.name) for p in hook.sig.params]
            assert _decl(ours) == _decl(args), (ref["seed_name"], kern.label)


def test_lsm_spellings_name_one_hook(k618):
    a = CAT.resolve("lsm", ["security_socket_connect"], k618)
    b = CAT.resolve("lsm", ["socket_connect"], k618)
    assert a.name == b.name == "socket_connect" and a.btf_func == "bpf_lsm_socket_connect"
    assert CAT.resolve("lsm", ["security_sock_rcv_skb"], k618).name == "socket_sock_rcv_skb"


def test_functions_outside_the_catalog_come_from_btf(k618):
    hook = CAT.resolve("kprobe", ["tcp_v4_connect"], k618)
    assert not hook.seeds and [p.name for p in hook.sig.params] == ["sk", "uaddr", "addr_len"]
    assert hook.fields["dport"].source == "sockaddr"  # a connect hook's sockaddr is the peer
    lsm = CAT.resolve("lsm", ["file_open"], k618)
    assert lsm.can_deny and "retval" in lsm.fields


def test_kernel_differences_6_1_vs_6_18(k61, k618):
    old = CAT.resolve("kprobe", ["inet_csk_accept"], k61)
    new = CAT.resolve("kprobe", ["inet_csk_accept"], k618)
    assert [p.name for p in old.sig.params] == ["sk", "flags", "err", "kern"]
    assert [p.name for p in new.sig.params] == ["sk", "arg"]


def test_kretprobe_derives_network_fields_from_a_returned_sock(k618):
    hook = CAT.resolve("kretprobe", ["inet_csk_accept"], k618)
    assert hook.fields["daddr"].index == -1 and hook.fields["retval"].ty.kind == "ptr"


def test_tracepoint_format_parsing():
    text = """name: inet_sock_set_state
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;
\tfield:char * optval;\toffset:40;\tsize:8;\tsigned:0;
"""
    f = {x.name: x for x in parse_tp_format(text)}
    assert list(f) == ["oldstate", "sport", "saddr", "daddr_v6", "name", "optval"]
    assert f["oldstate"].ty.signed and f["oldstate"].ty.bits == 32 and f["oldstate"].offset == 16
    assert f["sport"].ty.display == "port"
    assert (f["saddr"].ty.kind, f["saddr"].ty.version) == ("addr", 4)
    assert (f["daddr_v6"].ty.kind, f["daddr_v6"].ty.version) == ("addr", 6)
    assert f["name"].ty.kind == "str" and f["optval"].ty.kind == "int"
