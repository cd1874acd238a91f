"""`walltime` (the wall-clock time of an event, for `emit` only) and `emit kstack`: the checker's rules, the
generated C, the C event printer on records built here (no kernel), and as root both on
tracepoint:syscalls:sys_enter_getppid for a process with a unique comm, next to bpftrace 0.17."""
import ctypes
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import uuid

import pytest

from conftest import BpftracePrinting, errors, hookql_cmd, one_error

TP = "tracepoint:syscalls:sys_enter_getppid"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


# -- the checker ------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [
    f"on {TP} {{ emit walltime }}",
    f"on {TP} {{ emit walltime, comm, pid }}",
    f"on {TP} {{ emit current.walltime, kstack }}",
    f"on {TP} where comm == \"x\" {{ emit walltime; count by comm }}",
])
def test_walltime_in_emit_checks(running, k61, script):
    assert not errors(script, running)
    assert not errors(script, k61)


@pytest.mark.parametrize("script, hint", [
    (f"on {TP} {{ count by walltime }}", "--every 1s --interval"),
    (f"on {TP} {{ count by comm, current.walltime }}", "--every 1s --interval"),
    (f"on {TP} where walltime > 0 {{ count }}", "use ts"),
    (f"on {TP} {{ emit walltime + 1 }}", "use ts"),
    (f"on {TP} {{ emit walltime - ts }}", "use ts"),
    (f"on {TP} {{ hist(walltime) }}", "use ts"),
    (f"on {TP} {{ max(current.walltime) by comm }}", "use ts"),
    (f"on {TP} {{ st[pid] = walltime }}", "use ts"),
    (f"on {TP} {{ st[walltime] = 1 }}", "use ts"),
    (f"def late(t) = t > 5\non {TP} where late(walltime) {{ count }}", "use ts"),
])
def test_walltime_is_for_emit_only(running, script, hint):
    e = one_error(script, running)
    assert e.message == "walltime is the wall-clock time of the event, for display: it can only be an `emit` value"
    assert "emit walltime, comm, pid" in e.hint and hint in e.hint
    line = script.count("\n", 0, script.index("walltime")) + 1
    word = "current.walltime" if "current.walltime" in script else "walltime"
    col = script.index(word) - (script.rfind("\n", 0, script.index(word)) + 1) + 1
    assert (e.span.line, e.span.col) == (line, col)


def test_walltime_is_a_builtin_not_a_field(running):
    e = one_error(f"on {TP} {{ emit args.walltime }}", running)
    assert "has no field 'walltime'" in e.message and "current.walltime" in e.hint
    e = one_error(f"on {TP} {{ emit current.waltime }}", running)
    assert "no builtin 'waltime'" in e.message and "walltime" in e.hint
    e = one_error("const walltime = 5\non tracepoint:syscalls:sys_enter_getppid { count }", running)
    assert "builtin field" in e.message


def test_walltime_is_listed_with_its_doc():
    from hookql import fields as F
    f = F.BUILTINS["walltime"]
    assert f.kind == "builtin" and f.ty.kind == "walltime" and not f.ty.is_int and not f.ty.is_scalar
    assert "emit" in f.doc and "HH:MM:SS" in f.doc
    r = subprocess.run(hookql_cmd() + ["hooks", "-v", "--kernel", "6.18", TP], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\s*walltime\b.*HH:MM:SS", r.stdout, re.M), r.stdout


def test_generated_c_reads_the_boot_clock_and_the_stack(tmp_path):
    src = f"on {TP} {{ emit walltime, comm, kstack }}"
    r = subprocess.run(hookql_cmd() + ["compile", "--emit-c", "-e", src], capture_output=True, text=True,
                       env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    c = r.stdout
    assert c.count("bpf_ktime_get_boot_ns()") == 1 and "bpf_ktime_get_ns()" not in c
    assert c.count("bpf_get_stackid(ctx, &hq_stacks, 0)") == 1 and c.count("} hq_stacks SEC") == 1


def test_layout_marks_walltime_and_kstack(running):
    from hookql.codegen.ir import lower
    from hookql.pipeline import check_source
    from hookql.source import Source

    prog = lower(check_source(Source("t.hq", f"on {TP} {{ emit walltime, pid, kstack }}"), running).checked)
    lay = prog.layout()
    fs = {f["name"]: f for f in lay["emits"][0]["fields"]}
    assert fs["walltime"]["display"] == "walltime" and fs["walltime"]["size"] == 8
    assert fs["kstack"]["display"] == "kstack" and fs["kstack"]["size"] == 8 and fs["kstack"]["signed"]
    assert lay["kstack"] and prog.stats.count("kstack_failed") == 1


# -- the C printer, on records built here -----------------------------------------------------------
def _field(name, offset, display, signed=False, kind="int", size=8):
    return {"name": name, "kind": kind, "size": size, "offset": offset, "signed": signed, "display": display}


WALL = _field("walltime", 8, "walltime")
COMM = _field("comm", 16, None, kind="str", size=16)
STACK = _field("kstack", 32, "kstack", signed=True)
KALLSYMS = ("ffffffff81000000 T _text\nffffffff81000100 t do_syscall_64\n"
            "ffffffff81000300 t evil\x1b]0;pwned\x07\nffffffff81000400 d data_x\n")
STACKS = {7: [0xffffffff81000110, 0xffffffff81000305, 0x1000]}
LOOKUP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@pytest.fixture
def utc():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _print(fields, raws, fmt, tmp_path, emit_format="kv", offset=0, kallsyms=KALLSYMS, stacks=STACKS):
    from hookql.runtime.events import EventPrinter
    from hookql.runtime.ksyms import KSyms

    ks = tmp_path / "kallsyms"
    ks.write_text(kallsyms)
    looked = []

    def lookup(fd, key, value):
        sid = ctypes.c_uint32.from_address(key).value
        looked.append((fd, sid))
        if sid not in stacks:
            return -2
        ips = (ctypes.c_uint64 * 127)(*stacks[sid])
        ctypes.memmove(value, ips, ctypes.sizeof(ips))
        return 0

    fn = LOOKUP(lookup)
    size = max(f["offset"] + f["size"] for f in fields)
    rec = {"id": 0, "probe": TP, "line": 1, "size": size, "fields": fields}
    out = io.StringIO()
    p = EventPrinter([rec], fmt, out, emit_format, stacks=(42, KSyms(str(ks))), offset=offset,
                     lookup=ctypes.cast(fn, ctypes.c_void_p).value)
    try:
        for raw in raws:
            buf = (ctypes.c_char * len(raw)).from_buffer_copy(raw.ljust(size, b"\0"))
            p.lib.hq_ev_sample(p.ctx, buf, len(buf))
        p.flush()
        assert p.bad == 0
    finally:
        p.close()
    assert all(fd == 42 for fd, _ in looked)
    return out.getvalue()


def _rec(boot_ns=0, comm=b"", sid=0):
    return bytes(8) + struct.pack("<Q", boot_ns) + comm.ljust(16, b"\0") + struct.pack("<q", sid)


# 2026-11-25 23:35:19.207917 UTC, as boot time 1000.5 s plus the offset
EPOCH_NS = 1795649719_207917_500
BOOT_NS = 1000_500_000_000
OFFSET = EPOCH_NS - BOOT_NS


def test_walltime_prints_hh_mm_ss_in_text_and_epoch_seconds_in_json(tmp_path, utc):
    raws = [_rec(BOOT_NS, b"curl"), _rec(BOOT_NS + 1_000_000_000, b"curl")]
    text = _print([WALL, COMM], raws, "text", tmp_path, offset=OFFSET)
    assert text == "walltime=23:35:19 comm=curl\nwalltime=23:35:20 comm=curl\n"
    lines = _print([WALL, COMM], raws, "json", tmp_path, offset=OFFSET).splitlines()
    objs = [json.loads(l) for l in lines]
    assert [o["event"]["walltime"] for o in objs] == [1795649719.207917, 1795649720.207917]
    assert all("units" not in o for o in objs)
    assert re.search(r'"walltime": 1795649719\.207917,', lines[0])  # six decimals, a number
    cols = _print([WALL, COMM], raws, "text", tmp_path, "columns", offset=OFFSET)
    assert cols == "TIME     COMM\n23:35:19 curl\n23:35:20 curl\n"


def test_walltime_follows_the_local_time_zone(tmp_path, utc):
    os.environ["TZ"] = "Asia/Seoul"  # UTC+9, no daylight saving
    time.tzset()
    text = _print([WALL], [_rec(BOOT_NS)], "text", tmp_path, offset=OFFSET)
    assert text == "walltime=08:35:19\n"


def test_wall_offset_is_realtime_minus_boottime():
    from hookql.runtime.events import wall_offset
    off = wall_offset()
    now = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert abs(off - now) < 1_000_000_000  # the same offset, to far better than a second


def test_emit_kstack_prints_frames_under_the_line(tmp_path, utc):
    raws = [_rec(BOOT_NS, b"curl", 7), _rec(BOOT_NS, b"x\x1b", -17), _rec(BOOT_NS, b"y", 9)]
    text = _print([WALL, COMM, STACK], raws, "text", tmp_path, offset=OFFSET)
    assert text == ("walltime=23:35:19 comm=curl\n"
                    "        do_syscall_64+16\n"
                    "        evil\\x1b]0;pwned\\x07+5\n"  # kallsyms text is escaped as any text
                    "        0x1000\n"
                    "\n"
                    "walltime=23:35:19 comm=x\\x1b\n"
                    "        [no stack: EEXIST (its hash bucket held another stack)]\n"
                    "\n"
                    "walltime=23:35:19 comm=y\n"
                    "        [no stack: ENOENT (not in the stack map)]\n"
                    "\n")
    cols = _print([STACK, WALL, COMM], raws[:1], "text", tmp_path, "columns", offset=OFFSET)
    assert cols == ("TIME     COMM\n23:35:19 curl\n"
                    "        do_syscall_64+16\n        evil\\x1b]0;pwned\\x07+5\n        0x1000\n\n")
    alone = _print([STACK], [_rec(sid=7)], "text", tmp_path)
    assert alone == "        do_syscall_64+16\n        evil\\x1b]0;pwned\\x07+5\n        0x1000\n\n"


def test_emit_kstack_in_json_is_a_list_of_frames_or_null(tmp_path):
    raws = [_rec(BOOT_NS, b"curl", 7), _rec(BOOT_NS, b"x", -12)]
    lines = _print([COMM, STACK], raws, "json", tmp_path).splitlines()
    assert len(lines) == 2
    a, b = (json.loads(l)["event"] for l in lines)
    assert a == {"comm": "curl", "kstack": ["do_syscall_64+16", "evil\x1b]0;pwned\x07+5", "0x1000"]}
    assert b == {"comm": "x", "kstack": None}


def test_emit_kstack_matches_the_python_symboliser(tmp_path):
    """The C writes each frame as runtime/ksyms.py's KSyms.frame does (the `count by kstack` tables)."""
    from hookql.runtime.ksyms import KSyms
    ks = tmp_path / "kallsyms"
    ks.write_text(KALLSYMS)
    want = list(KSyms(str(ks)).stack(7, STACKS[7]).frames)
    got = json.loads(_print([STACK], [_rec(sid=7)], "json", tmp_path))["event"]["kstack"]
    assert got == want


def test_a_deep_stack_of_long_names_then_a_long_string(tmp_path):
    """127 frames whose escaped names are long, then a string of escapes: the printer's buffer grows for all."""
    name = "f" + "\x01" * 300
    syms = "ffffffff81000000 t " + name + "\n"
    text_field = _field("s", 40, None, kind="str", size=256)
    raw = _rec(0, b"", 1) + (b"\x02" * 255 + b"\0")
    got = json.loads(_print([STACK, text_field], [raw], "json", tmp_path, kallsyms=syms,
                            stacks={1: [0xffffffff81000000 + i for i in range(127)]}))["event"]
    assert got["kstack"] == [f"{name}+{i}" for i in range(127)] and got["s"] == "\x02" * 255
    text = _print([text_field, STACK], [raw], "text", tmp_path, kallsyms=syms,
                  stacks={1: [0xffffffff81000000 + i for i in range(127)]})
    assert text.count("        f\\x01") == 127 and "\x01" not in text


def test_two_stacks_in_one_record_are_labelled(tmp_path):
    other = dict(STACK, name="current.kstack", offset=40)
    text = _print([COMM, STACK, other], [_rec(0, b"c", 7) + struct.pack("<q", -17)], "text", tmp_path)
    assert text.startswith("comm=c\n  kstack:\n        do_syscall_64+16\n")
    assert "\n\n  current.kstack:\n        [no stack: EEXIST" in text


# -- as root: sys_enter_getppid from a process with a unique comm ------------------------------------
CALLER = '''
import os, sys, time
open("/proc/self/comm", "w").write(sys.argv[1])
time.sleep(float(sys.argv[3]))
for _ in range(int(sys.argv[2])):
    os.getppid()
'''


def _run(tmp_path, script, n, *opts, wait=0.0):
    wl = tmp_path / "caller.py"
    wl.write_text(CALLER)
    comm = "hq" + uuid.uuid4().hex[:10]
    before = time.time()
    r = subprocess.run(hookql_cmd() + ["run", *opts, "-e", script.replace("COMM", comm), "-c",
                                       f"{sys.executable} {wl} {comm} {n} {wait}"],
                       capture_output=True, text=True, timeout=120)
    after = time.time()
    assert r.returncode == 0, r.stderr
    return r, comm, before, after


FRAME = re.compile(r"[\w.$]+\+\d+|0x[0-9a-f]+")


@needs_root
def test_emit_walltime_and_kstack_in_json(tmp_path):
    n = 5
    r, comm, before, after = _run(tmp_path, f'on {TP} where comm == "COMM" {{ emit walltime, comm, pid, kstack }}',
                                  n, "--format", "json")
    events = [json.loads(l)["event"] for l in r.stdout.splitlines() if l.startswith('{"probe"')]
    assert len(events) == n, r.stdout
    for ev in events:
        assert ev["comm"] == comm
        assert before - 5 <= ev["walltime"] <= after + 5, (before, ev["walltime"], after)
        assert ev["kstack"] and all(FRAME.fullmatch(f) for f in ev["kstack"]), ev
        assert any(f.startswith(("do_syscall_64+", "__x64_sys_getppid+")) for f in ev["kstack"]), ev
    assert "no kernel stack" not in r.stderr


@needs_root
def test_emit_walltime_and_kstack_in_text_and_columns(tmp_path):
    n = 3
    script = f'on {TP} where comm == "COMM" {{ emit walltime, comm, kstack }}'
    for opts in ((), ("--emit-format", "columns")):
        r, comm, before, after = _run(tmp_path, script, n, *opts)
        window = {time.strftime("%H:%M:%S", time.localtime(t)) for t in range(int(before) - 5, int(after) + 6)}
        if opts:
            assert r.stdout.startswith("TIME     COMM\n"), r.stdout
            rows = re.findall(rf"^(\d\d:\d\d:\d\d) {comm}\n((?:        \S+\n)+)\n", r.stdout, re.M)
        else:
            rows = re.findall(rf"^walltime=(\d\d:\d\d:\d\d) comm={comm}\n((?:        \S+\n)+)\n", r.stdout, re.M)
        assert len(rows) == n, r.stdout
        for clock, frames in rows:
            assert clock in window
            assert any(f.startswith("do_syscall_64+") for f in frames.split()), frames


@needs_root
@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is the oracle")
def test_emit_kstack_has_bpftraces_frames(tmp_path):
    comm = "hq" + uuid.uuid4().hex[:10]
    bt = BpftracePrinting(f'{TP} /comm == "{comm}"/ {{ printf("<%s>%s\\n", comm, kstack); }}')
    try:
        wl = tmp_path / "caller.py"
        wl.write_text(CALLER)
        r = subprocess.run(hookql_cmd() + ["run", "--format", "json", "-e",
                                           f'on {TP} where comm == "{comm}" {{ emit kstack }}', "-c",
                                           f"{sys.executable} {wl} {comm} 2 0"],
                           capture_output=True, text=True, timeout=120)
        bt.until(lambda lines: sum(l.startswith(f"<{comm}>") for l in lines) >= 2)
    finally:
        bt_out = bt.stop()
    assert r.returncode == 0, r.stderr
    ours = [json.loads(l)["event"]["kstack"] for l in r.stdout.splitlines() if l.startswith('{"probe"')]
    theirs = [m.split() for m in re.findall(rf"^<{comm}>\n((?:        \S+\n)+)", bt_out, re.M)]
    assert len(ours) == 2 and len(theirs) == 2, (r.stdout, bt_out)
    # the same program type at the same tracepoint: the same frames (the innermost one at least differs
    # by nothing here; compare from the second on, which is the caller's side of the tracepoint)
    assert all(o[1:] == t[1:] for o, t in zip(ours, theirs)), (ours, theirs)
