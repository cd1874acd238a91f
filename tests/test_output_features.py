"""Output that tools need: per-interval values (--every T --interval), the
N largest rows (--top N), and emit as aligned columns (--emit-format
columns), in text and JSON.  Workloads make known numbers of getsockopt(2)
calls; nothing here depends on timing beyond bursts separated by sleeps
twenty times the interval."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import hookql_cmd
from hookql.runtime.events import column_width
from hookql.runtime.output import TextPrinter, JsonPrinter
from hookql.runtime.decode import Row

TP = "tracepoint:syscalls:sys_enter_getsockopt"
root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")

# usage: bursts.py COMM N:OPTNAME... -- N getsockopt calls with OPTNAME each, then a 2 s sleep
BURSTS = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
s = socket.socket()
for burst in sys.argv[2:]:
    n, opt = map(int, burst.split(":"))
    for _ in range(n):
        s.getsockopt(socket.SOL_SOCKET, opt)
    time.sleep(2)
"""


@pytest.fixture
def run(tmp_path):
    work = tmp_path / "bursts.py"
    work.write_text(BURSTS)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def go(script, *opts, workload=()):
        cmd = f"{sys.executable} {work} {' '.join(workload)}" if workload else None
        argv = hookql_cmd() + ["run", "-e", script, *opts] + (["-c", cmd] if cmd else [])
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        return r
    return go


def _json(out: str) -> list[dict]:
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


# -- 1. per-interval values -----------------------------------------------------------------------
@root
def test_interval_values_add_up_to_the_total_and_show_each_burst(run):
    script = (f'on {TP} where comm == "hqiv" {{ count; count by optname; hist(optname); max(optname) by comm; '
              "avg(optname) }")
    bursts = [(5, 8), (7, 3), (11, 7)]  # SO_RCVBUF, SO_TYPE, SO_SNDBUF
    r = run(script, "--every", "100ms", "--interval", "--format", "json",
            workload=["hqiv", *(f"{n}:{o}" for n, o in bursts)])
    objs = _json(r.stdout)
    by_text = {}
    for o in objs:
        by_text.setdefault(o["text"], []).append(o)
    counts = by_text["count"]
    assert [o["interval"] for o in counts] == list(range(1, len(counts) + 1))  # one per interval, in order
    assert all(o["start"] <= o["end"] for o in counts)
    assert all(a["end"] == b["start"] for a, b in zip(counts, counts[1:]))  # the intervals tile the run
    per = [sum(r["value"] for r in o["rows"]) for o in counts]
    assert sum(per) == 23  # every event in exactly one interval
    running = [sum(per[: i + 1]) for i in range(len(per))]
    assert 5 in running and 12 in running  # each burst shows up on its own, in order
    # keyed counts: per key, the intervals add up to the burst
    keyed = {}
    for o in by_text["count by optname"]:
        for row in o["rows"]:
            keyed[row["key"]["optname"]] = keyed.get(row["key"]["optname"], 0) + row["value"]
    assert keyed == {8: 5, 3: 7, 7: 11}
    hist_total = sum(b["count"] for o in by_text["hist(optname)"] for row in o["rows"] for b in row["value"])
    assert hist_total == 23
    # max is reset each interval: the second burst's interval says 3, not the 8 of the first
    maxes = [o["rows"][0]["value"] for o in by_text["max(optname) by comm"] if o["rows"]]
    assert maxes == [8, 3, 7]
    avgs = [o["rows"][0]["value"] for o in by_text["avg(optname)"] if o["rows"]]
    assert avgs == [8, 3, 7]


@root
def test_interval_text_has_a_header_per_interval(run):
    r = run(f'on {TP} where comm == "hqivt" {{ count }}', "--every", "100ms", "--interval",
            workload=["hqivt", "4:8", "6:3"])
    heads = re.findall(r"^--- interval (\d+): (\d\d:\d\d:\d\d\.\d{3}) to (\d\d:\d\d:\d\d\.\d{3}) \(\d+\.\d\ds\) ---$",
                       r.stdout, re.M)
    assert [int(h[0]) for h in heads] == list(range(1, len(heads) + 1)) and len(heads) >= 2
    values = [int(v) for v in re.findall(r"^  COUNT\n +(\d+)$", r.stdout, re.M)]
    assert sum(values) == 10 and values[0] == 4  # the first burst alone, then the second


@root
def test_without_interval_every_prints_running_totals(run):
    r = run(f'on {TP} where comm == "hqtot" {{ count }}', "--every", "100ms", "--format", "json",
            workload=["hqtot", "4:8", "6:3"])
    totals = [o["rows"][0]["value"] for o in _json(r.stdout) if o["rows"]]
    assert totals == sorted(totals) and totals[-1] == 10 and "interval" not in _json(r.stdout)[0]


def test_interval_needs_every(tmp_path):
    r = subprocess.run(hookql_cmd() + ["run", "-e", f"on {TP} {{ count }}", "--interval"], capture_output=True,
                       text=True, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 2 and "--interval" in r.stderr and "--every" in r.stderr and "Traceback" not in r.stderr


# -- 2. top N -------------------------------------------------------------------------------------
AGG = {"probe": "t:x:y", "func": "count", "text": "count by optname", "line": 1,
       "by": [{"name": "optname", "display": None}], "value_display": None}


def test_top_keeps_the_largest_rows_and_counts_the_rest():
    import io

    rows = [Row({"optname": i}, i * 10) for i in range(1, 41)]
    out = io.StringIO()
    TextPrinter(out, "s.hq", top=10).aggregation(AGG, rows)
    lines = out.getvalue().splitlines()
    assert [int(l.split()[0]) for l in lines[3:13]] == list(range(40, 30, -1))
    assert lines[13] == "  ... and 30 more" and len(lines) == 14
    out = io.StringIO()
    JsonPrinter(out, "s.hq", top=10).aggregation(AGG, rows)
    obj = json.loads(out.getvalue())
    assert [r["key"]["optname"] for r in obj["rows"]] == list(range(40, 30, -1)) and obj["omitted"] == 30
    out = io.StringIO()
    JsonPrinter(out, "s.hq", top=50).aggregation(AGG, rows)
    assert len(json.loads(out.getvalue())["rows"]) == 40 and json.loads(out.getvalue())["omitted"] == 0
    out = io.StringIO()
    JsonPrinter(out, "s.hq").aggregation(AGG, rows)
    assert "omitted" not in json.loads(out.getvalue())  # without --top, as before


@root
def test_top_on_a_live_run(run):
    work = [f"{n}:{n}" for n in range(1, 13)]  # optname n, n times: 12 keys
    script = f'on {TP} where comm == "hqtop" {{ count by optname; hist(optname) by optname; count }}'
    r = run(script, "--top", "3", "--format", "json", workload=["hqtop", *work])
    objs = {o["text"]: o for o in _json(r.stdout)}
    c = objs["count by optname"]
    assert [(x["key"]["optname"], x["value"]) for x in c["rows"]] == [(12, 12), (11, 11), (10, 10)]
    assert c["omitted"] == 9
    assert len(objs["hist(optname) by optname"]["rows"]) == 3 and objs["hist(optname) by optname"]["omitted"] == 9
    assert objs["count"]["rows"][0]["value"] == 78 and "omitted" not in objs["count"]  # unkeyed: one row
    r = run(script, "--top", "3", workload=["hqtop", *work])
    assert r.stdout.count("  ... and 9 more\n") == 2


# -- 3. emit as columns ---------------------------------------------------------------------------
def test_column_widths_come_from_types():
    f = lambda name, kind, size, signed=False, display=None: {"name": name, "kind": kind, "size": size,
                                                               "signed": signed, "display": display}
    assert column_width(f("comm", "str", 16), []) == 16
    assert column_width(f("pid", "int", 4), []) == 7
    assert column_width(f("args.pid", "int", 4, True), []) == 8  # the header is wider
    assert column_width(f("daddr", "addr", 16), []) == 39
    assert column_width(f("optname", "int", 4, True), []) == 11
    assert column_width(f("sport", "int", 2), []) == 5
    assert column_width(f("x", "int", 8), []) == 20
    assert column_width(f("family", "int", 2, display="af"), [(10, "AF_INET6")]) == 8
    assert column_width(f("sk", "int", 8, display="hex"), []) == 18


@root
def test_emit_columns_line_up_under_a_header(run):
    script = f'on {TP} where comm == "hqcol" {{ emit comm, pid, optname, level }}\n' \
             f'on {TP} where comm == "hqcol" and optname == 3 {{ emit optname, comm }}'
    r = run(script, "--emit-format", "columns", workload=["hqcol", "2:8", "3:3"])
    lines = [l for l in r.stdout.splitlines() if l]
    head = lines[0]
    assert head.split() == ["COMM", "PID", "OPTNAME", "LEVEL"] and not head.endswith(" ")
    starts = [head.index(h) for h in head.split()]
    assert starts[:3] == [0, 17, 25]  # comm 16 wide, pid 7, one space between columns
    rows = [l for l in lines if "hqcol" in l]
    assert len(rows) == 2 + 3 + 3
    first = [l for l in rows if l.startswith("hqcol")]
    assert len(first) == 5
    for l in first:
        cells = l.split()
        assert [l.index(c, i) for c, i in zip(cells, starts)] == starts  # every value starts under its name
        assert cells[2] in ("8", "3") and cells[3] == "1" and not l.endswith(" ")  # level: SOL_SOCKET
    # the second clause's records have their own header, printed again whenever the kind of record changes
    second = [l for l in lines if l.startswith("OPTNAME")]
    assert second and second[0].split() == ["OPTNAME", "COMM"]
    assert lines.count(head) >= 2


@root
def test_emit_columns_escape_control_characters(run, tmp_path):
    script = f'on {TP} where level == 1 and optname == 8 {{ emit comm, optname }}'
    r = run(script, "--emit-format", "columns", workload=["hq\x1b[2Jx", "1:8"])
    row = next(l for l in r.stdout.splitlines() if l.startswith("hq"))
    assert "\x1b" not in r.stdout
    assert row.startswith("hq\\x1b[2Jx") and row[17:].strip() == "8" and row[16] == " "


@root
def test_emit_kv_stays_the_default_and_json_ignores_the_text_form(run):
    script = f'on {TP} where comm == "hqkv" {{ emit comm, optname }}'
    r = run(script, workload=["hqkv", "1:8"])
    assert "comm=hqkv optname=8" in r.stdout
    r = run(script, "--emit-format", "columns", "--format", "json", workload=["hqkv", "1:8"])
    assert [o["event"] for o in _json(r.stdout)] == [{"comm": "hqkv", "optname": 8}]
