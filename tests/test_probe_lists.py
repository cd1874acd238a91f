"""Probe lists: `on A, B where ... { ... }`, tracepoint wildcards (`tracepoint:syscalls:sys_enter_getp*`) and the
`probe` builtin.  First the front end (every error with file:line:col and hint, against kernel 6.1's reference
BTF and the running kernel), a kprobe list built for 6.1 (two programs, one map); then, as root, exact counts
of a workload with a unique comm next to bpftrace 0.17 running the same probe list."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from hookql import types as T
from hookql.pipeline import check_source, compile_checked, generate_c
from hookql.source import Source

from conftest import check, errors, hookql_cmd

GETPPID, GETPGID, GETSID = (f"tracepoint:syscalls:sys_enter_{s}" for s in ("getppid", "getpgid", "getsid"))


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, col) of the nth occurrence of needle in text, as a diagnostic names it."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def where(d) -> tuple[str, int, int]:
    return d.span.source.name, d.span.line, d.span.col


def one(text: str, kernel):
    errs = errors(text, kernel)
    assert len(errs) == 1, "\n".join(d.render() for d in errs) or "no error"
    return errs[0]


def ok(text: str, kernel):
    r = check_source(Source("t.hq", text), kernel)
    assert r.ok, "\n".join(d.render() for d in r.diagnostics)
    return r.checked


@pytest.fixture(params=["k61", "running"])
def kern(request):
    return request.getfixturevalue(request.param)


# -- the front end -------------------------------------------------------------------------------------------
def test_a_list_is_one_clause_per_probe_with_the_probe_builtin(kern):
    text = f"on {GETPGID}, t:syscalls:sys_enter_getsid where args.pid > 0 {{ count by probe, args.pid; emit probe }}"
    checked = ok(text, kern)
    assert [c.hook.probe for c in checked.clauses] == [GETPGID, GETSID]
    g = checked.clauses[0].group
    assert g is checked.clauses[1].group and g.texts == [GETPGID, GETSID]
    assert g.written == f"{GETPGID}, t:syscalls:sys_enter_getsid"
    for c in checked.clauses:  # `probe` is as long as the longest name, on every probe
        assert c.actions[0].by[0].ty == T.string(len(GETPGID) + 1)
    c_source, layout = generate_c(checked)
    assert len(layout["probes"]) == 2 and len(layout["aggregations"]) == 1 and len(layout["emits"]) == 1
    assert layout["aggregations"][0]["probe"] == g.written
    assert c_source.count(f'"{GETPGID}", {len(GETPGID) + 1})') == 1  # each program its own name, a constant
    assert c_source.count(f'"{GETSID}", {len(GETSID) + 1})') == 1


def test_a_name_that_is_a_field_on_one_probe_and_the_builtin_on_another(kern):
    text = f"on {GETPPID}, {GETPGID} {{ count by pid }}"
    e = one(text, kern)
    assert where(e) == ("t.hq", *at(text, "pid }"))
    assert e.message == (f"'pid' is {GETPGID}'s own field but the builtin pid on {GETPPID}: in a probe list a "
                         "name means one thing on every probe")
    assert e.hint == "write args.pid (where every probe has that field) or current.pid (the builtin)"
    assert errors(f"on {GETPPID}, {GETPGID} {{ count by current.pid }}", kern) == []


def test_a_field_one_probe_lacks_is_reported_naming_that_probe(kern):
    text = f"on {GETPGID}, {GETPPID}, {GETSID} {{ count by args.pid }}"
    e = one(text, kern)
    assert where(e) == ("t.hq", *at(text, "pid }"))
    assert e.message == f"{GETPPID} has no field 'pid'; its fields are: __syscall_nr"
    assert e.hint == "pid is a builtin: write current.pid or pid"


def test_what_every_probe_gets_wrong_is_said_once(kern):
    text = f"on {GETPGID}, {GETSID} {{ count by nosuch }}"
    errs = errors(text, kern)
    assert len(errs) == 2 and {e.message.split(";")[0] for e in errs} == {
        f"unknown field 'nosuch' in {GETPGID}", f"unknown field 'nosuch' in {GETSID}"}
    text = f'on {GETPGID}, {GETSID} where args.pid == "x" {{ count }}'
    e = one(text, kern)  # the same message on both probes: once
    assert where(e)[1:] == at(text, "==") and e.hint


def test_key_types_must_agree_across_the_list(kern):
    text = "on t:syscalls:sys_enter_recvfrom, t:syscalls:sys_enter_sendto { count by addr_len }"
    e = one(text, kern)
    assert where(e) == ("t.hq", *at(text, "addr_len }"))
    assert e.message == ("'addr_len' is an integer, int * on tracepoint:syscalls:sys_enter_recvfrom but an integer, "
                         "int on tracepoint:syscalls:sys_enter_sendto: in a probe list, each key, value and emitted "
                         "field has one type on every probe")
    assert e.hint == "split the clause, one per probe, or use a field both probes type alike"


def test_integers_widen_to_hold_every_probes_values(k61):
    # tcp_push_one's mss_now is a u32, tcp_push's an int: the shared key is an s64 (an s32 would show big
    # u32 values as negative)
    checked = ok("on kprobe:tcp_push_one, kprobe:tcp_push { count by mss_now; sum(mss_now) }", k61)
    for c in checked.clauses:
        assert (c.actions[0].by[0].ty.bits, c.actions[0].by[0].ty.signed) == (64, True)
    c_source, _ = generate_c(checked)
    assert re.search(r"struct hq_agg0_key \{\s*__s64 k0;", c_source)
    # tcp_sendmsg's size is a size_t (u64), tcp_stream_alloc_skb's an int: no 64-bit integer holds both
    text = "on kprobe:tcp_sendmsg, kprobe:tcp_stream_alloc_skb { count by size }"
    e = one(text, k61)
    assert where(e) == ("t.hq", *at(text, "size }"))
    assert e.message.startswith("'size' is an integer, size_t on kprobe:tcp_sendmsg but an integer, int on "
                                "kprobe:tcp_stream_alloc_skb")
    # u32, int, size_t: each pair but the last two has a common type; the error names those two
    text = "on kprobe:tcp_trim_head, kprobe:tcp_parse_fastopen_option, kprobe:tcp_recvmsg { count by len }"
    e = one(text, k61)
    assert where(e) == ("t.hq", *at(text, "len }"))
    assert e.message.startswith("'len' is an integer, int on kprobe:tcp_parse_fastopen_option but an integer, size_t "
                                "on kprobe:tcp_recvmsg: no integer type holds every value of both")
    assert e.hint == "split the clause, one per probe, or use a field both probes type alike"


def test_strings_take_the_longest(running):
    tps = running.tracefs()
    if not (tps and (tps / "events/cgroup/cgroup_attach_task").is_dir() and (tps / "events/sched/sched_wakeup").is_dir()):
        pytest.skip("needs cgroup:cgroup_attach_task (a __data_loc comm) and sched:sched_wakeup (a char[16] comm)")
    text = "on tracepoint:cgroup:cgroup_attach_task, tracepoint:sched:sched_wakeup { count by args.comm; emit args.comm }"
    checked = ok(text, running)
    assert {c.actions[0].by[0].ty.size for c in checked.clauses} == {256}
    c_source, _ = generate_c(checked)
    # the 16-byte comm fills the 256-byte slot, the rest zeroed: no stale ring-buffer bytes in the record
    assert "__builtin_memset(r->f0 + 16, 0, 240);" in c_source
    compile_checked(checked)


def test_duplicates_through_aliases_and_wildcards(k61):
    text = f"on {GETPPID}, t:syscalls:sys_enter_getppid {{ count }}"
    e = one(text, k61)
    assert where(e) == ("t.hq", *at(text, ", t:syscalls")[:1], at(text, ", t:syscalls")[1] + 2)
    assert e.message == f"{GETPPID} is already in this probe list" and e.hint == "name each probe once"
    text = "on lsm:socket_connect, lsm:security_socket_connect { count }"
    e = one(text, k61)
    assert where(e)[1:] == at(text, "lsm:security") and e.message == "lsm:socket_connect is already in this probe list"
    text = "on kprobe:tcp_v4_connect, k:tcp_v4_connect { count }"
    assert one(text, k61).message == "kprobe:tcp_v4_connect is already in this probe list"
    text = f"on {GETPPID}, tracepoint:syscalls:sys_enter_getp* {{ count }}"
    e = one(text, k61)  # once for the pattern, naming what it repeats
    assert where(e)[1:] == at(text, "tracepoint:syscalls:sys_enter_getp*")
    assert e.message == f"tracepoint:syscalls:sys_enter_getp* matches {GETPPID}, already in this probe list"
    assert e.hint == "name each probe once: narrow the pattern, or drop what it repeats"
    e = one("on tracepoint:syscalls:sys_enter_get*, tracepoint:syscalls:sys_enter_getp* { count }", k61)
    assert re.fullmatch(r"tracepoint:syscalls:sys_enter_getp\* matches \S+, \S+, \S+ and \d+ more, already in this "
                        r"probe list", e.message), e.message


def test_wildcards_only_name_tracepoints(k61):
    for probe, hint in [("kprobe:tcp_v*_connect", "list the functions one by one: on kprobe:tcp_v4_connect, "
                                                  "kprobe:tcp_v6_connect"),
                        ("lsm:socket_*", "list the hooks one by one: on lsm:socket_connect, lsm:socket_bind"),
                        ("tracepoint:*", "a tracepoint is CATEGORY:NAME, either part a pattern: tracepoint:sock:*, "
                                         "tracepoint:*:sys_enter_getp*")]:
        text = f"on {GETPPID}, {probe} {{ count }}"
        e = one(text, k61)
        assert where(e) == ("t.hq", *at(text, probe))
        assert e.message == (f"wildcards name tracepoints (tracepoint:sock:*, tracepoint:syscalls:sys_enter_*), "
                             f"not {probe}")
        assert e.hint == hint


def test_a_wildcard_that_matches_nothing(kern):
    text = "on tracepoint:syscalls:sys_enter_nosuch* { count }"
    e = one(text, kern)
    assert where(e) == ("t.hq", 1, 4)
    assert e.message.startswith("no tracepoint matches tracepoint:syscalls:sys_enter_nosuch* (from ")
    assert e.hint.startswith("`hookql hooks 'tracepoint:syscalls:sys_enter_nosuch*'` lists what there is")


def test_offline_only_syscall_patterns_match(k61):
    e = one("on tracepoint:sock:* { count }", k61)  # BTF records no categories but syscalls'
    assert e.message == "no tracepoint matches tracepoint:sock:* (from BTF of kernel 6.1 (reference))"
    assert "checked offline, only tracepoint:syscalls:* patterns can match" in e.hint


def test_wildcards_expand_in_name_order(kern):
    checked = ok("on tracepoint:syscalls:sys_enter_getp* { count by probe }", kern)
    names = [c.hook.probe for c in checked.clauses]
    assert names == sorted(names) and {GETPPID, GETPGID} <= set(names)
    assert all(n.startswith("tracepoint:syscalls:sys_enter_getp") for n in names)
    assert checked.clauses[0].group.written == "tracepoint:syscalls:sys_enter_getp*"


def test_sock_wildcard_on_the_running_kernel(running, tracefs):
    checked = ok("on tracepoint:sock:* { count by probe, comm }", running)
    assert "tracepoint:sock:inet_sock_set_state" in [c.hook.probe for c in checked.clauses]


def test_at_most_512_probes_a_clause(kern):
    text = "on tracepoint:syscalls:* { count }"
    e = one(text, kern)
    assert where(e) == ("t.hq", 1, 4)
    assert re.fullmatch(r"tracepoint:syscalls:\* matches \d+ tracepoints; a clause attaches at most 512 probes",
                        e.message) and e.hint == "narrow the pattern"
    # each pattern under the limit, the list over it
    text = "on tracepoint:syscalls:sys_enter_*, tracepoint:syscalls:sys_exit_* { count }"
    e = one(text, kern)
    assert where(e) == ("t.hq", 1, 4)
    assert re.fullmatch(r"this probe list attaches \d+ probes; a clause attaches at most 512", e.message)
    assert e.hint == "narrow the patterns, or split the clause"


def test_deny_in_a_list_with_a_kprobe_names_the_kprobe(k61):
    text = "on lsm:socket_connect, kprobe:tcp_v4_connect where dport == 4444 { deny }"
    e = one(text, k61)
    assert where(e) == ("t.hq", *at(text, "deny"))
    assert e.message == "deny works only on LSM hooks; kprobe:tcp_v4_connect can observe but not block"
    assert e.hint
    assert errors("on lsm:socket_connect, lsm:socket_bind where port == 4444 { deny }", k61) == []


def test_retval_in_a_list_with_a_kprobe(k61):
    text = "on kprobe:tcp_v4_connect, kretprobe:tcp_v4_connect { count by retval }"
    e = one(text, k61)
    assert where(e) == ("t.hq", *at(text, "retval"))
    assert e.message == "retval is not available in kprobe:tcp_v4_connect"
    assert e.hint == "retval is read when the function returns: use kretprobe:tcp_v4_connect"


def test_a_def_reading_a_field_one_probe_lacks_points_at_the_def(k61):
    text = "def big(x) = size > x\non kprobe:tcp_sendmsg, kprobe:tcp_v4_connect where big(100) { count by probe }"
    e = one(text, k61)
    assert where(e) == ("t.hq", 1, 14) and "unknown field 'size' in kprobe:tcp_v4_connect" in e.message
    assert e.notes and e.notes[0].span.line == 2


def test_probe_in_a_state_store(kern):
    # a lone clause's `probe` stored (this crashed: its hook was not known yet when the map was typed)
    text = (f"on {GETPGID} {{ m[tid] = probe }}\non {GETPPID} {{ m[tid] = probe }}\n"
            f"on {GETSID} where tid in m {{ count by m[tid]; delete m[tid] }}")
    checked = ok(text, kern)
    assert checked.states["m"].value == T.string(len(GETPPID) + 1)  # the longer of the two stores
    text = (f"on {GETPGID}, {GETPPID} {{ m[tid] = probe }}\n"
            f"on {GETSID} where m[tid] == \"{GETPGID}\" {{ count by m[tid]; delete m[tid] }}")
    ok(text, kern)


def test_probe_compares_with_strings_and_sets(kern):
    checked = ok(f'on {GETPPID}, {GETSID} where probe in {{"{GETSID}", "x"}} or probe == "{GETPPID}" {{ count }}',
                 kern)
    generate_c(checked)
    d = check(f'on {GETSID} where probe == "{GETPPID}" {{ count }}', kern)  # one byte longer: never equal
    assert [x.message for x in d] == [f'probe holds at most {len(GETSID)} bytes; "{GETPPID}" ({len(GETPPID)} '
                                      "bytes) never matches"]
    e = one(f'on {GETPPID}, {GETSID} where probe < "b" {{ count }}', kern)
    assert e.message == "'<' compares integers, but probe is a string"


def test_a_probe_list_in_an_included_module(tmp_path, k61):
    (tmp_path / "hookql.toml").write_text('[package]\nname = "app"\nversion = "0.1.0"\n\n'
                                          '[dependencies]\nmylib = { path = "mylib" }\n')
    (tmp_path / "mylib").mkdir()
    (tmp_path / "mylib" / "mon.hq").write_text(
        'const WHO = "x"\ndef ours(c) = c == WHO\n'
        f"on {GETPPID}, tracepoint:syscalls:sys_enter_getpg* where ours(comm) {{ count by probe; m[tid] = probe }}\n"
        f"on {GETSID} where tid in m {{ count by m[tid]; delete m[tid] }}\n")
    (tmp_path / "s.hq").write_text("include mylib.mon\n")
    r = check_source(Source.from_path(tmp_path / "s.hq"), k61)
    assert r.ok, [d.render() for d in r.diagnostics]
    names = [c.hook.probe for c in r.checked.clauses]
    assert names == [GETPPID, GETPGID, "tracepoint:syscalls:sys_enter_getpgrp", GETSID]
    _, layout = generate_c(r.checked)
    assert len(layout["aggregations"]) == 2 and len(layout["probes"]) == 4
    (tmp_path / "mylib" / "mon.hq").write_text(f"on {GETPPID}, {GETPGID} {{ count by pid }}\n")
    (e,) = [d for d in check_source(Source.from_path(tmp_path / "s.hq"), k61).diagnostics if d.is_error]
    assert e.span.source.name.endswith("mylib/mon.hq") and "means one thing on every probe" in e.message


def test_kprobe_list_builds_for_6_1_two_programs_one_map(k61):
    text = ("on kprobe:tcp_v4_connect, kprobe:tcp_v6_connect {\n"
            "    count by probe, comm, daddr, dport\n    emit probe, daddr, dport\n}\n")
    checked = ok(text, k61)
    compiled = compile_checked(checked, "kprobe")
    c = compiled.c_source
    assert c.count('SEC("kprobe/tcp_v4_connect")') == 1 and c.count('SEC("kprobe/tcp_v6_connect")') == 1
    assert c.count("} hq_agg0 SEC(\".maps\");") == 1 and "hq_agg1" not in c  # one map, both programs fill it
    progs = c.split('SEC("kprobe/')[1:]
    assert len(progs) == 2 and all("bpf_map_lookup_elem(&hq_agg0" in p for p in progs)
    assert "struct hq_ev0 " in c and "struct hq_ev1 " not in c  # one record
    assert c.count('"kprobe:tcp_v4_connect", 22)') == 1 and c.count('"kprobe:tcp_v6_connect", 22)') == 1
    layout = compiled.layout
    assert [p["text"] for p in layout["probes"]] == ["kprobe:tcp_v4_connect", "kprobe:tcp_v6_connect"]
    (agg,) = layout["aggregations"]
    assert agg["probe"] == "kprobe:tcp_v4_connect, kprobe:tcp_v6_connect"
    assert [k["name"] for k in agg["by"]] == ["probe", "comm", "daddr", "dport"]
    (ev,) = layout["emits"]
    assert [f["name"] for f in ev["fields"]] == ["probe", "daddr", "dport"]
    assert compiled.object[:4] == b"\x7fELF"


def test_cli_compile_with_kernel_6_1(tmp_path):
    script = tmp_path / "l.hq"
    script.write_text("on kprobe:tcp_v4_connect, kprobe:tcp_v6_connect { count by probe }\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(hookql_cmd() + ["compile", "--kernel", "6.1", "--attach", "kprobe", "--emit-c", str(script)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('SEC("kprobe/') == 2 and r.stdout.count('SEC(".maps")') >= 1


# -- as root: the workload's own events, exactly, and bpftrace 0.17 on the same events -------------------------
root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
WORKLOAD = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
for _ in range(3):
    os.getppid()
for i in range(5):
    try:
        os.getpgid(100 + i)  # args.pid 100..104: a log2 bucket [64, 128), a sum of 510
    except OSError:
        pass
for i in range(7):
    try:
        os.getsid(1000 + i)  # args.pid 1000..1006: [512, 1K), 7021
    except OSError:
        pass
"""
COUNTS = {GETPPID: 3, GETPGID: 5, GETSID: 7}


def _comm() -> str:
    return "hq" + uuid.uuid4().hex[:10]


def _run(tmp_path, text: str, comm: str, *opts) -> tuple[str, str]:
    script = tmp_path / "s.hq"
    script.write_text(text)
    wl = tmp_path / "wl.py"
    wl.write_text(WORKLOAD)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(hookql_cmd() + ["run", *opts, str(script), "-c", f"{sys.executable} {wl} {comm}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    return r.stdout, r.stderr


SCRIPT = """\
on {ppid}, {pgid}, {sid} where comm == "{comm}" {{
    count by probe
    count by probe, comm
    emit probe, current.pid
}}
on tracepoint:syscalls:sys_enter_getp* where comm == "{comm}" {{ count by probe }}
on {pgid}, t:syscalls:sys_enter_getsid where comm == "{comm}" {{
    sum(args.pid) by probe
    hist(args.pid) by probe
    hist(args.pid)
}}
on {ppid}, {sid} where probe == "{sid}" and comm == "{comm}" {{ count }}
on {ppid}, {pgid}, {sid} where comm == "{comm}" and probe in {{"{ppid}", "{sid}"}} {{ count by probe }}
"""


def _bpftrace(prog: str):
    p = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "Attaching" not in line:
        p.kill()
        pytest.fail(f"bpftrace did not attach: {line}{p.stderr.read()}")
    return p


def _bpftrace_maps(p) -> dict[str, dict[str, int]]:
    """{map: {probe: value}} from bpftrace's exit print of @map[probe] = count()/sum()."""
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    maps: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"^@(\w*)\[([^\]]+)\]: (\d+)$", out, re.M):
        maps.setdefault(m[1], {})[m[2]] = int(m[3])
    for m in re.finditer(r"^@(\w*)\[([^\]]+)\]: \n((?:\[.*\n)+)", out, re.M):  # hist: the sum of its buckets
        maps.setdefault(m[1], {})[m[2]] = sum(int(x) for x in re.findall(r"^\[\S*, \S*\)\s+(\d+) \|", m[3], re.M))
    return maps


@root
@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is the oracle")
def test_counts_json_and_bpftrace_agree(tmp_path):
    comm = _comm()
    bt = _bpftrace(f'{GETPPID},{GETPGID},{GETSID} /comm == "{comm}"/ {{ @[probe] = count(); }} '
                   f'{GETPGID},{GETSID} /comm == "{comm}"/ {{ @s[probe] = sum(args->pid); @h[probe] = hist(args->pid); }}')
    try:
        out, _ = _run(tmp_path, SCRIPT.format(ppid=GETPPID, pgid=GETPGID, sid=GETSID, comm=comm), comm,
                      "--format", "json")
    finally:
        maps = _bpftrace_maps(bt)
    objs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    aggs = [o for o in objs if "aggregation" in o]
    rows = lambda o: {r["key"].get("probe"): r["value"] for r in o["rows"]}  # noqa: E731
    by_line = {o["line"]: o for o in aggs}
    assert rows(by_line[2]) == COUNTS
    assert by_line[2]["probe"] == f"{GETPPID}, {GETPGID}, {GETSID}" and by_line[2]["by"] == ["probe"]
    assert [r["key"] for r in by_line[3]["rows"]] == [{"probe": p, "comm": comm} for p in (GETSID, GETPGID, GETPPID)]
    assert [r["value"] for r in by_line[3]["rows"]] == [7, 5, 3]
    assert rows(by_line[6]) == {GETPPID: 3, GETPGID: 5}  # the wildcard: getpeername, getpgrp... saw nothing of ours
    assert rows(by_line[8]) == {GETPGID: 510, GETSID: 7021}
    assert rows(by_line[9]) == {GETPGID: [{"min": 64, "max": 128, "count": 5}],
                                GETSID: [{"min": 512, "max": 1024, "count": 7}]}
    assert by_line[10]["rows"][0]["value"] == [{"min": 64, "max": 128, "count": 5},
                                               {"min": 512, "max": 1024, "count": 7}]
    assert by_line[12]["rows"] == [{"key": {}, "value": 7}]  # where probe == getsid
    assert rows(by_line[13]) == {GETSID: 7, GETPPID: 3}
    events = [o["event"] for o in objs if "event" in o]
    assert [e["probe"] for e in events] == [GETPPID] * 3 + [GETPGID] * 5 + [GETSID] * 7  # one thread: in order
    assert len({e["current.pid"] for e in events}) == 1
    assert {o["probe"] for o in objs if "event" in o} == {f"{GETPPID}, {GETPGID}, {GETSID}"}
    # bpftrace 0.17, the same probes, the same events
    assert maps[""] == COUNTS and maps["s"] == {GETPGID: 510, GETSID: 7021}
    assert maps["h"] == {GETPGID: 5, GETSID: 7}


@root
def test_text_output(tmp_path):
    comm = _comm()
    out, _ = _run(tmp_path, SCRIPT.format(ppid=GETPPID, pgid=GETPGID, sid=GETSID, comm=comm), comm)
    head = f"{GETPPID}, {GETPGID}, {GETSID}: count by probe   [s.hq:2]"
    assert head in out
    table = out.split(head)[1].split("\n\n")[0]
    assert re.findall(r"^  (tracepoint:\S+)\s+(\d+)$", table, re.M) == [(GETSID, "7"), (GETPGID, "5"),
                                                                          (GETPPID, "3")]
    assert len(re.findall(rf"^probe={re.escape(GETSID)} current.pid=\d+$", out, re.M)) == 7


@root
def test_state_stored_in_a_list_read_in_another_clause(tmp_path):
    comm = _comm()
    # clauses on one probe run in the file's order: on getpgid the store (first clause) runs before the read
    text = (f'on {GETPPID}, {GETPGID} where comm == "{comm}" {{ last[tid] = probe }}\n'
            f'on {GETSID}, t:syscalls:sys_enter_getpgid where comm == "{comm}" and tid in last {{\n'
            "    count by probe, last[tid]\n}\n"
            f'on {GETSID} where comm == "{comm}" and tid in last {{ delete last[tid] }}\n')
    out, err = _run(tmp_path, text, comm, "--format", "json")
    objs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    (agg,) = [o for o in objs if "aggregation" in o]
    got = {(r["key"]["probe"], r["key"]["last[tid]"]): r["value"] for r in agg["rows"]}
    # getpgid reads what it has just stored, 5 times; the first getsid reads the last getpgid's and deletes it
    assert got == {(GETPGID, GETPGID): 5, (GETSID, GETPGID): 1}, got
    (st,) = [json.loads(l) for l in (out + err).splitlines() if l.startswith('{"state"')]
    assert (st["state"], st["stored"], st["deleted"], st["entries"], st["evicted"]) == ("last", 1, 1, 0, 0), st


SLEEPER = r"""
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
for _ in range(5):
    time.sleep(0.02)  # a timer wakes it: sched:sched_wakeup with its comm in the record
"""


@root
def test_strings_of_two_widths_load_and_read_back(tmp_path):
    from hookql import kernel as K

    tps = K.running().tracefs()
    if not (tps and (tps / "events/cgroup/cgroup_attach_task").is_dir()):
        pytest.skip("needs cgroup:cgroup_attach_task")
    comm = _comm()
    # args.comm: a __data_loc string (256 bytes) on cgroup_attach_task, a char[16] on sched_wakeup
    script = tmp_path / "s.hq"
    script.write_text(f'on tracepoint:cgroup:cgroup_attach_task, tracepoint:sched:sched_wakeup '
                      f'where args.comm == "{comm}" {{\n    count by probe, args.comm\n    emit probe, args.comm\n}}\n')
    wl = tmp_path / "wl.py"
    wl.write_text(SLEEPER)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(script), "-c", f"{sys.executable} {wl} {comm}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    objs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    (agg,) = [o for o in objs if "aggregation" in o]
    assert [r["key"] for r in agg["rows"]] == [{"probe": "tracepoint:sched:sched_wakeup", "args.comm": comm}]
    events = [o["event"] for o in objs if "event" in o]
    assert events and all(e == {"probe": "tracepoint:sched:sched_wakeup", "args.comm": comm} for e in events)
    assert agg["rows"][0]["value"] == len(events)


@root
def test_hundreds_of_probes_within_the_usual_open_file_limit(tmp_path, tracefs):
    # a probe holds three descriptors (program, link, perf event): 360 syscall entries need more than the usual
    # soft limit of 1024 open files, which `hookql run` raises as far as the hard limit lets it
    import resource

    n = len(list((tracefs / "events/syscalls").glob("sys_enter_*")))
    if not 342 <= n <= 512 or resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 3 * n + 256:
        pytest.skip(f"{n} sys_enter tracepoints; the hard limit of open files")
    comm = _comm()
    script = tmp_path / "s.hq"
    script.write_text(f'on tracepoint:syscalls:sys_enter_* where comm == "{comm}" {{ count by probe }}\n')
    wl = tmp_path / "wl.py"
    wl.write_text(WORKLOAD)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    soft = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))  # noqa: E731
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(script), "-c", f"{sys.executable} {wl} {comm}"],
                       capture_output=True, text=True, env=env, timeout=600, preexec_fn=soft)
    assert r.returncode == 0, r.stderr
    assert f"Attached {n} probes" in r.stderr
    (agg,) = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    counts = {row["key"]["probe"]: row["value"] for row in agg["rows"]}
    assert {p: counts.get(p) for p in COUNTS} == COUNTS
