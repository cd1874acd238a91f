#!/usr/bin/env python3
"""The REPL: a new clause, typed and entered, until its program is attached; beside bpftrace's start of the same
one-liner until attached.

    sudo python3 bench/repl.py [--rounds 7] [--out bench/results]

The REPL process is warm (its imports paid by the first clause, as after a session's first line); each measured
clause is new (a constant no clause had before), so it is checked, rendered, built with clang, loaded and
attached; that is what a user waits for after Enter (Repl.enter, as the prompt calls it, with `&`: attached in the
background, then detached).  bpftrace runs the same one-liner from scratch each time (bench/run.py's Tool: from
invocation until its program is attached, read from the kernel).  Target (issue 16): at most 1x bpftrace's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import run as bench  # noqa: E402

CLAUSE = "on tracepoint:syscalls:sys_enter_getsockopt where args.level == {n} {{ count by comm }}"
ONE_LINER = "tracepoint:syscalls:sys_enter_getsockopt /args->level == {n}/ {{ @[comm] = count(); }}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="hqbench-repl-")
    from hookql.repl import Repl

    stats_fd = bench.enable_stats()  # run counts (bench/run.py's proof that a program is live), while it is open
    repl = Repl(out=io.StringIO())
    repl.enter(CLAUSE.format(n=1) + " &")  # the session's first line: imports, BTF
    repl.detach_all()
    hq, bt = [], []
    for _ in range(a.rounds):  # interleaved
        n = random.randint(2, 2**31 - 1)
        t0 = time.perf_counter()
        repl.enter(CLAUSE.format(n=n) + " &")
        hq.append(time.perf_counter() - t0)
        if not repl.background:
            sys.exit("the REPL did not attach:\n" + repl.out.getvalue()[-2000:])
        repl.detach_all()
        bt.append(bench.run_startup("bpftrace", ONE_LINER.format(n=n), 1))
    os.close(stats_fd)
    res = {"machine": f"{os.uname().release}, {os.cpu_count()} CPUs", "rounds": a.rounds,
           "repl_ms": round(statistics.median(hq) * 1000, 1), "bpftrace_ms": round(statistics.median(bt) * 1000, 1)}
    res["ratio"] = round(res["repl_ms"] / res["bpftrace_ms"], 2)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "repl.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"machine: {res['machine']}; median of {a.rounds}")
    print("| new clause until attached | HookQL REPL | bpftrace (start of the same one-liner) | REPL/bpftrace |")
    print("|---|---|---|---|")
    print(f"| 1 probe, never built before | {res['repl_ms']} ms | {res['bpftrace_ms']} ms | {res['ratio']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
