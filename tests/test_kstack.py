"""Kernel stacks: `count by kstack` (bpf_get_stackid into a stack-trace map, symbolised from
/proc/kallsyms at print time), the checker's rules, the generated C, escaping of kallsyms text, and as
root examples/tcpdrop.hq on UDP drops this test makes on loopback, next to bpftrace 0.17."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, errors, hookql_cmd, one_error

TP = "tracepoint:skb:kfree_skb"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


# -- the checker ------------------------------------------------------------------------------------
def test_tcpdrop_example_checks(running):
    assert not errors((REPO / "examples" / "tcpdrop.hq").read_text(), running)


@pytest.mark.parametrize("script", [
    f"on {TP} where kstack == 0 {{ count }}",
    f"on {TP} where kstack in {{1, 2}} {{ count }}",
    f"on {TP} {{ emit kstack + 1 }}",
    f"on {TP} {{ emit pid, -kstack }}",
    f"on {TP} {{ sum(kstack) }}",
    f"on {TP} {{ count by kstack + 1 }}",
    f"on {TP} {{ st[pid] = kstack }}",
    f"on {TP} {{ hist(current.kstack) }}",
])
def test_kstack_is_a_by_key_or_emit_value_only(running, script):
    e = one_error(script, running)
    assert "kstack is a kernel stack: it can only be a `by` key of an aggregation or an `emit` value" in e.message
    assert "count by kstack" in e.hint and "emit comm, kstack" in e.hint
    col = (script.index("current.kstack") if "current.kstack" in script else script.index("kstack")) + 1
    assert e.span.line == 1 and e.span.col == col


@pytest.mark.parametrize("script", [
    f"on {TP} {{ count by kstack }}",
    f"on {TP} {{ count by current.kstack, reason }}",
    f"on {TP} {{ hist(len) by kstack }}" .replace("len", "protocol"),
    "on tracepoint:syscalls:sys_enter_getsockopt { max(optlen) by comm, kstack }",
    f"on {TP} {{ emit kstack }}",
    f"on {TP} {{ emit pid, current.kstack, reason }}",
])
def test_kstack_keys_check(running, script):
    assert not errors(script, running)


def test_every_provider_can_take_a_stack():
    from hookql import fields as F
    assert F.STACK_PROVIDERS == {"kprobe", "kretprobe", "tracepoint", "lsm"}
    assert F.BUILTINS["kstack"].ty.kind == "kstack" and not F.BUILTINS["kstack"].ty.is_scalar


def test_generated_c_takes_stacks_into_one_map(running, tmp_path):
    from hookql.codegen.ir import lower
    from hookql.pipeline import check_source
    from hookql.source import Source

    src = f"on {TP} {{ count by kstack }}\non {TP} where protocol == 8 {{ count by reason, kstack }}"
    prog = lower(check_source(Source("t.hq", src), running).checked)
    assert prog.stats.count("kstack_failed") == 1 and prog.layout()["kstack"]
    r = subprocess.run(hookql_cmd() + ["compile", "--emit-c", "-e", src], capture_output=True, text=True,
                       env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    c = r.stdout
    assert c.count("BPF_MAP_TYPE_STACK_TRACE);") == 1 and c.count("} hq_stacks SEC") == 1
    assert c.count("bpf_get_stackid(ctx, &hq_stacks, 0)") == 2


# -- symbolising ------------------------------------------------------------------------------------
def test_ksyms_symbolises_escapes_and_falls_back_to_hex(tmp_path):
    from hookql.runtime.ksyms import KSyms
    from hookql.runtime.output import TextPrinter
    from hookql.runtime.decode import Row
    import io

    ks = tmp_path / "kallsyms"
    ks.write_text("ffffffff81000000 T _text\nffffffff81000100 t udp_rcv\nffffffff81000200 d data_x\n"
                  "ffffffff81000300 t evil\x1b]0;pwned\x07\nffffffffc0000000 t mod_fn\t[mymod]\n")
    k = KSyms(str(ks))
    st = k.stack(5, [0xffffffff81000110, 0xffffffff81000310, 0x1000, 0xffffffffc0000004])
    assert st.frames == ("udp_rcv+16", "evil\x1b]0;pwned\x07+16", "0x1000", "mod_fn+4")
    assert k.note is None
    agg = {"probe": TP, "text": "count by kstack", "line": 1, "func": "count", "value_display": None,
           "by": [{"name": "kstack", "display": "kstack"}]}
    out = io.StringIO()
    TextPrinter(out).aggregation(agg, [Row({"kstack": st}, 3)])
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "evil\\x1b]0;pwned\\x07+16" in text
    assert "        udp_rcv+16\n" in text and "count=3" in text


def test_ksyms_without_addresses_says_why(tmp_path):
    from hookql.runtime.ksyms import KSyms
    ks = tmp_path / "kallsyms"
    ks.write_text("0000000000000000 T _text\n0000000000000000 t udp_rcv\n")
    k = KSyms(str(ks))
    assert k.stack(1, [0xffffffff81000110]).frames == ("0xffffffff81000110",)
    assert "kptr_restrict" in k.note and "root" in k.note


def test_a_stack_not_taken_prints_why():
    from hookql.runtime.ksyms import KStack, stack_error
    st = KStack(-17, error=stack_error(17))
    assert st.lines() == ["[no stack: EEXIST (its hash bucket held another stack)]"] and st.json() is None


# -- as root: tcpdrop on drops this test makes ------------------------------------------------------
SENDER = '''
import socket, sys
open("/proc/self/comm", "w").write(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x", ("127.0.0.1", int(sys.argv[2])))  # nobody listens: a NO_SOCKET drop each
'''


def _closed_udp_port() -> int:
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@needs_root
def test_tcpdrop_counts_udp_drops_with_their_stack(tmp_path):
    n = 25
    wl = tmp_path / "send.py"
    wl.write_text(SENDER)
    comm = "hq" + uuid.uuid4().hex[:10]
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(REPO / "examples" / "tcpdrop.hq"), "-c",
                                       f"{sys.executable} {wl} {comm} {_closed_udp_port()} {n}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    obj = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")][-1]
    assert obj["by"] == ["reason", "kstack"]
    udp = [row for row in obj["rows"] if row["key"]["kstack"] and
           any(f.startswith("__udp4_lib_rcv+") for f in row["key"]["kstack"])]
    # drops by reason: other UDP traffic on this host to closed ports counts too, so at least n
    assert sum(row["value"] for row in udp) >= n
    for row in udp:
        assert all(re.fullmatch(r"[\w.$]+\+\d+|0x[0-9a-f]+", f) for f in row["key"]["kstack"]), row


@needs_root
@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is the oracle")
def test_exact_count_and_same_stack_as_bpftrace(tmp_path):
    n = 30
    wl = tmp_path / "send.py"
    wl.write_text(SENDER)
    comm = "hq" + uuid.uuid4().hex[:10]
    # the sender's own drops: loopback delivers in the sending task's softirq, so comm is the sender's
    where = f'reason == SKB_DROP_REASON_NO_SOCKET and comm == "{comm}"'
    bt = subprocess.Popen(["bpftrace", "-e", f'tracepoint:skb:kfree_skb /args->reason == 3 && comm == "{comm}"/ '
                           "{ @[kstack] = count(); }"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = bt.stdout.readline()
    if "Attaching" not in line:
        bt.kill()
        pytest.fail(f"bpftrace did not attach: {line}{bt.stderr.read()}")
    try:
        r = subprocess.run(hookql_cmd() + ["run", "-e", f"on {TP} where {where} {{ count by kstack }}", "-c",
                                           f"{sys.executable} {wl} {comm} {_closed_udp_port()} {n}"],
                           capture_output=True, text=True, timeout=120)
    finally:
        bt.send_signal(signal.SIGINT)
        bt_out, _ = bt.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    # hookql: "  count=N" then the frames, indented; bpftrace: "@[\n    frames\n]: N"
    ours = [(int(m[1]), m[2].split()) for m in re.finditer(r"^  count=(\d+)\n((?:        \S+\n)+)", r.stdout, re.M)]
    theirs = [(int(m[2]), m[1].split()) for m in re.finditer(r"^@\[\n((?:    \S+\n)+)\]: (\d+)", bt_out, re.M)]
    assert sum(c for c, _ in ours) == n, r.stdout
    assert sum(c for c, _ in theirs) == n, bt_out
    assert sorted(ours) == sorted(theirs)
    assert all(any(f.startswith("__udp4_lib_rcv+") for f in frames) for _, frames in ours)
