"""The kernel test tier: Debian's stock 6.1 kernel under qemu (hookql.testing.vm; scenarios in tests/vm/).

One boot runs everything: every seed hook attached and fired (objects
compiled here, loaded there), the design card verbatim, typed fields end to
end, `deny` with and without --enforce, and kretprobes reading their arguments
(examples/tcpconnect.hq's probe list, tcpaccept.hq) next to bpftrace 0.17, and `hookql serve` reloading a
`deny` rule while connects run (no gap; its counters in /metrics).  Run it alone with
`python3 -m pytest -q -m vm`.
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from hookql import kernel as K
from hookql.catalog import Catalog
from hookql.pipeline import check_source, compile_checked
from hookql.source import Source
from hookql.testing import vm

from conftest import REPO, hookql_cmd

sys.path.insert(0, str(REPO / "tests" / "vm"))
import guest  # noqa: E402
import guest_cli  # noqa: E402

pytestmark = pytest.mark.vm

# Seed hooks this kernel has but cannot attach, and why (the checker warns about them too).
CANNOT_ATTACH = {
    "kprobe:dev_queue_xmit": "an inline wrapper in 6.1: its only out-of-line copy is local to af_packet.c and "
                             "has no ftrace site; the kernel refuses the kprobe (EINVAL). Use __dev_queue_xmit",
}
# Seed hooks that attach but that this VM cannot make fire, and why.
CANNOT_FIRE = {
    "kprobe:sock_sendmsg": "6.1's compiler inlined it into every socket syscall (send, sendto, sendmsg, write); "
                           "only in-kernel senders outside net/socket.c (NFS, iSCSI, io_uring...) call the "
                           "out-of-line copy a kprobe sees. lsm:socket_sendmsg sees every send",
    "lsm:secmark_relabel_packet": "needs a SECMARK netfilter rule and an LSM that provides secmarks "
                                  "(SELinux, Smack, AppArmor); the VM boots lsm=lockdown,capability,bpf",
    "lsm:secmark_refcount_inc": "same: secmark refcounts move only when a secmark-providing LSM is active",
    "lsm:secmark_refcount_dec": "same: secmark refcounts move only when a secmark-providing LSM is active",
}


def _compile(src: Source, kern) -> dict:
    result = check_source(src, kern)
    assert result.ok, [d.render() for d in result.diagnostics]
    compiled = compile_checked(result.checked, "kprobe")
    path = vm.cache_root() / "objects" / compiled.object_name  # the guest opens it by path
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(compiled.object)
    return {"object": str(path), "layout": compiled.layout}


@pytest.fixture(scope="module")
def guest_run():
    if os.environ.get("HOOKQL_SKIP_VM"):
        pytest.skip("HOOKQL_SKIP_VM is set")
    missing = vm.missing_tools()
    assert not missing, f"the VM tier needs: apt-get install {' '.join(missing)} (bin/setup installs them)"
    k61 = K.reference("6.1")
    work = vm.cache_root() / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = {}
    for prov, hook in sorted({(e.provider, e.hook) for e in Catalog.load().entries if "6.1" in e.in_kernels}):
        entry = _compile(Source(f"<{prov}:{hook}>", f"on {prov}:{hook} {{ count by comm }}"), k61)
        layout = work / f"{prov}_{hook}.json"
        layout.write_text(json.dumps(entry["layout"]))
        manifest[f"{prov}:{hook}"] = {"object": entry["object"], "layout": str(layout)}
    (work / "manifest.json").write_text(json.dumps(manifest))
    # Warm the object cache with exactly what `hookql run` will build in the guest.
    _compile(Source("<-e>", guest_cli.ENFORCE), k61)
    _compile(Source("<-e>", guest_cli.TYPED), k61)
    _compile(Source.from_path(REPO / "examples" / "design_card.hq"), k61)
    for text in guest_cli.tcp_scripts().values():
        _compile(Source("<-e>", text), k61)
    for text in guest_cli.SERVE_TEXTS:  # what `hookql serve` builds there (its path is in the C: same path)
        result = check_source(Source(guest_cli.SERVE_FILE, text), k61)
        assert result.ok, [d.render() for d in result.diagnostics]
        compile_checked(result.checked, "kprobe", serve=True)
    py = sys.executable
    script = f"""
export HOME={os.path.expanduser('~')} XDG_CACHE_HOME={vm.cache_root().parent.parent} PATH={Path(py).parent}:$PATH
cd {REPO}
{py} tests/vm/guest.py conformance {work / 'manifest.json'}
{py} tests/vm/guest_cli.py {' '.join(hookql_cmd())}
"""
    r = vm.run(script, timeout=2400)
    assert r.status == 0, f"guest failed ({r.status}):\n{r.stderr[-4000:]}\n--- console:\n{r.console[-3000:]}"
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    return {"conformance": lines[0], "scenarios": {s["scenario"]: s for s in lines[1:] if "scenario" in s},
            "manifest": manifest, "raw": lines}


def test_every_seed_hook_attaches_and_fires(guest_run):
    conf = guest_run["conformance"]
    results = conf["results"]
    cat = Catalog.load()
    rows, attached, fired = [], 0, 0
    for e in cat.entries:
        probe = f"{e.provider}:{e.hook}"
        res = results.get(probe)
        if res is None:
            status = "missing on 6.1" + (f" (use {e.suggest})" if e.suggest else "")
        elif not res["attached"]:
            status = (f"cannot attach: {CANNOT_ATTACH[probe]}" if probe in CANNOT_ATTACH
                      else f"ATTACH FAILED: {res['error']}")
        elif res["count"] > 0:
            status = f"fires ({res['count']})"
        else:
            status = f"attached, did not fire: {CANNOT_FIRE.get(probe, 'NO REASON KNOWN')}"
        attached += bool(res and res["attached"])
        fired += bool(res and res.get("count", 0) > 0)
        rows.append(f"{e.provider + ':' + e.seed_name:<40} {status}")
    report = "\n".join([f"kernel {conf['release']}: {attached} of {len(cat.entries)} seed entries attach, "
                        f"{fired} fire", *rows, f"trigger notes: {conf['trigger_notes']}"])
    (vm.cache_root() / "conformance.txt").write_text(report + "\n")
    print("\n" + report)
    failed = [r for r in rows if "ATTACH FAILED" in r or "NO REASON KNOWN" in r]
    assert not failed, report
    for probe, res in results.items():
        assert res["attached"] or probe in CANNOT_ATTACH, (probe, res)
        assert not res["attached"] or res["count"] > 0 or probe in CANNOT_FIRE, report


def test_exact_counts_for_a_known_workload(guest_run):
    results = guest_run["conformance"]["results"]
    got = {p: results[p]["by_comm"].get(guest.TRIGGER_COMM, 0) for p in guest.EXPECT}
    assert got == guest.EXPECT


def test_design_card_counts_ipv6_connects_by_comm(guest_run):
    s = guest_run["scenarios"]["design_card"]
    assert s["rc"] == 0, s["stderr"]
    (agg,) = [o for o in s["output"] if o.get("aggregation") == "count"]
    assert agg["probe"] == "lsm:socket_connect" and agg["by"] == ["comm"]
    assert {"key": {"comm": guest_cli.MIX}, "value": 3} in agg["rows"]


def test_typed_fields_end_to_end(guest_run):
    s = guest_run["scenarios"]["typed"]
    assert s["rc"] == 0, s["stderr"]
    p4, p6 = s["ports"]
    events = [o["event"] for o in s["output"] if "event" in o]
    assert sorted((e["family"], e["daddr"], e["dport"]) for e in events) == sorted(
        [("AF_INET", "127.0.0.1", p4)] * 2 + [("AF_INET6", "::1", p6)] * 3)
    (agg,) = [o for o in s["output"] if o.get("aggregation") == "count"]
    assert agg["rows"] == [{"key": {"daddr": "::1", "dport": p6}, "value": 3}]  # where family == AF_INET6


def test_deny_with_enforce_blocks_only_its_port(guest_run):
    s = guest_run["scenarios"]["enforce=True,term"]
    assert s["rc"] == 0, s["stderr"]
    assert s["during"] == {"4444": "EPERM", "4445": "ok"}
    assert s["after"] == "ok" and not s["left_attached"]
    assert "lsm:socket_connect: denied 1" in s["output"]


def test_deny_without_enforce_only_counts(guest_run):
    s = guest_run["scenarios"]["enforce=False,term"]
    assert s["rc"] == 0, s["stderr"]
    assert s["during"] == {"4444": "ok", "4445": "ok"}
    assert "lsm:socket_connect: would deny 1 (run with --enforce to deny)" in s["output"]


def test_killed_hookql_stops_enforcing(guest_run):
    s = guest_run["scenarios"]["enforce=True,kill"]
    assert s["during"]["4444"] == "EPERM"
    assert s["after"] == "ok" and not s["left_attached"]


def test_deny_stops_when_the_run_ends_by_itself(guest_run):
    s = guest_run["scenarios"]["enforce=True,exit"]
    assert s["rc"] == 0, s["stderr"]
    assert s["during"] == {"4444": "EPERM", "4445": "ok"}
    assert s["after"] == "ok" and not s["left_attached"]
    assert "lsm:socket_connect: denied 1" in s["output"]


# -- kretprobes reading their arguments (saved at entry by a kprobe), a probe list, bpftrace 0.17 alongside ---


def _tcp(guest_run, name: str) -> tuple[dict, dict]:
    s = guest_run["scenarios"].get("tcp")
    assert s is not None, [l for l in guest_run["raw"] if "error" in l]
    run = s[name]
    assert run["rc"] == 0, run["stderr"]
    assert "warning" not in run["stderr"], run["stderr"]  # nothing lost, nothing missing
    return s, run


def _bpftrace_map(out: str, name: str) -> dict[str, int]:
    """bpftrace's exit print of @name: `@name[KEY]: N` lines -> {KEY: N} (`@name: N` -> {"": N})."""
    return {m[1] or "": int(m[2]) for m in re.finditer(rf"^@{name}(?:\[(.*)\])?: (-?\d+)$", out, re.M)}


def _entries(run: dict) -> dict[str, dict]:
    return {o["entry"]: o for o in run["output"] if "entry" in o}


def test_tcpconnect_example_reads_its_arguments_at_return(guest_run):
    s, run = _tcp(guest_run, "tcpconnect")
    conns = s["conns"]
    (pid,) = {c["pid"] for c in conns}
    objs = [o for o in run["output"] if "event" in o]
    assert {o["probe"] for o in objs} == {"kretprobe:tcp_v4_connect, kretprobe:tcp_v6_connect"}
    events = [o["event"] for o in objs]
    assert all(e["comm"] == guest_cli.TCP and e["pid"] == pid and e["walltime"] > 1e9 for e in events), events
    # the destination from the sockaddr connect(2) passed, the source from the socket the call bound
    got = sorted((e["family"], e["saddr"], e["sport"], e["daddr"], e["dport"]) for e in events)
    assert got == sorted((c["family"], *c["client"], *c["server"]) for c in conns)
    (agg,) = [o for o in run["output"] if o.get("aggregation") == "count"]
    p4, p6 = conns[0]["server"][1], conns[-1]["server"][1]
    assert sorted((r["key"]["daddr"], r["key"]["dport"], r["value"]) for r in agg["rows"]) == sorted(
        [("127.0.0.1", p4, guest_cli.N4), ("::1", p6, guest_cli.N6)])
    assert all(r["key"]["comm"] == guest_cli.TCP for r in agg["rows"])
    # every entry saved was taken by its return: none left, none missing, none evicted
    entries = _entries(run)
    # (the entry is saved for every thread, the where runs at the return: the connects to hqwait count too)
    for fn, n in (("tcp_v4_connect", guest_cli.N4 + guest_cli.WAIT_CONNECTS), ("tcp_v6_connect", guest_cli.N6)):
        e = entries[f"kprobe:{fn}"]
        assert e["exit"] == f"kretprobe:{fn}"
        assert (e["stored"], e["deleted"], e["entries"], e["evicted"], e["failed"], e["missing"]) == (n, n, 0, 0, 0, 0), e
    # bpftrace 0.17: the same connects, the same destination ports (read from the socket, not the sockaddr)
    bt = s["bpftrace"]["stdout"]
    assert _bpftrace_map(bt, "connect") == {"4, 0": guest_cli.N4, "6, 0": guest_cli.N6}, bt
    assert _bpftrace_map(bt, "dport") == {str(p4): guest_cli.N4, str(p6): guest_cli.N6}, bt


def test_tcpaccept_example_reads_the_returned_socket(guest_run):
    s, run = _tcp(guest_run, "tcpaccept")
    conns = s["conns"]
    (pid,) = {c["pid"] for c in conns}
    events = [o["event"] for o in run["output"] if "event" in o]
    assert all(e["comm"] == guest_cli.TCP and e["pid"] == pid for e in events), events
    # remote end: the connecting socket; local end: the listener's address and port
    got = sorted((e["family"], e["daddr"], e["dport"], e["saddr"], e["sport"]) for e in events)
    assert got == sorted((c["family"], *c["client"], *c["server"]) for c in conns)
    assert not _entries(run)  # it reads no argument: no entry program
    p4, p6 = conns[0]["server"][1], conns[-1]["server"][1]
    bt = s["bpftrace"]["stdout"]
    assert {k: v for k, v in _bpftrace_map(bt, "accept").items() if k.startswith(guest_cli.TCP)} == {
        f"{guest_cli.TCP}, {p4}": guest_cli.N4, f"{guest_cli.TCP}, {p6}": guest_cli.N6}, bt


def test_kretprobe_sums_an_argument_passed_by_value(guest_run):
    s, run = _tcp(guest_run, "args")
    sent = [c["sent"] for c in s["conns"]]
    assert sent == guest_cli.SIZES
    (total,) = [o for o in run["output"] if o.get("aggregation") == "sum"]
    assert total["rows"] == [{"key": {}, "value": sum(sent)}]
    (by_ret,) = [o for o in run["output"] if o.get("aggregation") == "count" and o["probe"] == "kretprobe:tcp_sendmsg"]
    assert {r["key"]["retval"]: r["value"] for r in by_ret["rows"]} == {n: sent.count(n) for n in set(sent)}
    e = _entries(run)["kprobe:tcp_sendmsg"]
    n = len(sent)
    assert (e["stored"], e["deleted"], e["entries"], e["evicted"], e["failed"], e["missing"]) == (n, n, 0, 0, 0, 0), e
    bt = s["bpftrace"]["stdout"]
    assert _bpftrace_map(bt, "size") == {"": sum(sent)}, bt
    assert _bpftrace_map(bt, "sent") == {str(k): sent.count(k) for k in set(sent)}, bt


def test_a_call_under_way_at_attach_is_not_seen_and_leaves_nothing(guest_run):
    # hqwait sleeps in accept(2) (in inet_csk_accept) while the probes attach, then accepts once more: a
    # kretprobe only sees returns of calls entered after it attached, so the first accept is not seen at all
    # (as bpftrace does not see it), the second is paired; nothing is missing, nothing left
    s, run = _tcp(guest_run, "args")
    assert "accept" in s["waiter_wchan"] or "wait_for_connect" in s["waiter_wchan"], s["waiter_wchan"]
    (by_flags,) = [o for o in run["output"] if o.get("aggregation") == "count" and o["probe"] == "kretprobe:inet_csk_accept"]
    assert sum(r["value"] for r in by_flags["rows"]) == 1, by_flags
    # the entry is saved for every thread (the where runs at the return): hqtcp's accepts pass through the map too
    e = _entries(run)["kprobe:inet_csk_accept"]
    n = guest_cli.N4 + guest_cli.N6 + 1
    assert (e["stored"], e["deleted"], e["entries"], e["evicted"], e["failed"], e["missing"]) == (n, n, 0, 0, 0, 0), e
    bt = s["bpftrace"]["stdout"]
    assert _bpftrace_map(bt, "accept")[f"{guest_cli.WAIT}, {s['waiter_port']}"] == 1, bt


# -- `hookql serve`: an LSM deny rule reloaded while connects run, its counters in /metrics --


def _serve(guest_run, enforce: bool) -> dict:
    s = guest_run["scenarios"].get(f"serve,enforce={enforce}")
    assert s is not None, [l for l in guest_run["raw"] if "error" in l]
    assert s["rc"] == 0, s["stderr"]
    assert "error" not in s["stderr"] and "warning" not in s["stderr"], s["stderr"]
    assert s["after"] == "ok" and not s["left_attached"]
    return s


def _samples(s: dict, name: str, **labels) -> list:
    return [v for n, l, v in s["metrics"] if n == name and all(l.get(k) == w for k, w in labels.items())]


def test_serve_reloads_a_deny_rule_with_no_gap(guest_run):
    s = _serve(guest_run, True)
    # each reload replaced the script (its deny clause's program changed) while hqloop connected
    assert s["reloads"] == ["hookql serve: reloaded: 1 script new or changed, 1 replaced or removed, 0 unchanged\n"] \
        * guest_cli.SERVE_RELOADS, s["stderr"]
    assert _samples(s, "hookql_reloads_total", result="ok") == [guest_cli.SERVE_RELOADS]
    # every attempt, before, during and after the reloads, was denied
    (attempts,) = s["connects"].values()
    assert s["connects"] == {"EPERM": attempts}
    # and counted once: the deny counters of the replaced programs stay in the totals
    assert sum(_samples(s, "hookql_deny_total", mode="enforce")) == attempts, s["metrics"]
    assert sum(_samples(s, "hookql_deny_total", mode="would_deny")) == 0
    # the count clause (below the deny) counts each attempt at most once: the newest program on an LSM hook runs
    # first and a denying one ends the chain, so while a new object attaches, between its deny and its count
    # programs, the new deny runs first and nothing counts the attempt
    (counted,) = _samples(s, "hookql_deny_lsm_socket_connect_count_by_comm_total", comm=guest_cli.LOOP)
    assert 0 < counted <= attempts


def test_serve_without_enforce_only_counts_would_deny(guest_run):
    s = _serve(guest_run, False)
    assert s["connects"] == {"ok": 6}  # 3 before a reload, 3 after
    assert _samples(s, "hookql_reloads_total", result="ok") == [1]
    assert sum(_samples(s, "hookql_deny_total", mode="would_deny")) == 6, s["metrics"]
    assert sum(_samples(s, "hookql_deny_total", mode="enforce")) == 0
    # the count clause: both versions of the script in one metric (the old one drained once more when replaced)
    assert sum(_samples(s, "hookql_deny_lsm_socket_connect_count_by_comm_total")) == 6, s["metrics"]
