#!/usr/bin/env python3
"""What a one-liner's user waits for, HookQL and bpftrace side by side, in one run (issue 16).

    sudo python3 bench/startup.py [--rounds 5] [--out bench/results] [--all-rounds 3] [--hookql PATH]

  attached  invocation -> every probe attached, cold and warm cache, 1 and 20 probes (bench/run.py's startup)
  whole     `TOOL -e SCRIPT -c /bin/true`, invocation -> exit: cold and warm cache, 1 and 20 probes
  detach    SIGINT once every probe is attached -> exit, with 1, 20 and all `sys_enter_*` tracepoints
            (a probe list, `on tracepoint:syscalls:sys_enter_* { count }`); beside it, for HookQL, when the
            kernel is done with the perf events the run left to a process of its own (runtime/loader.py
            BpfObject.detach): this process is that process's subreaper and waits for it
Tools interleaved round by round; medians. Writes OUT/startup.json and OUT/startup.md (the table printed).
Scripts: bench/run.py's (`count by comm` on 1 or 20 syscall tracepoints, getsockopt last). Cold: the script
never compiled (no object, no run entry); HookQL's own compiled templates stay, as after a user's first run.
Between measurements every process HookQL left behind is waited for, so each starts with the kernel idle.
--hookql: another `hookql` command to time (e.g. an older checkout's venv, for before/after).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run
from progs import reap, subreaper
from run import COMPILE_CACHE, _many, _ratio, median

HERE = Path(__file__).resolve().parent
TOOLS = ("hookql", "bpftrace")
ALL = {"hookql": "on tracepoint:syscalls:sys_enter_* { count }",
       "bpftrace": "tracepoint:syscalls:sys_enter_* { @ = count(); }"}


# -- the measurements ------------------------------------------------------------------------------------
def _cmd(tool: str, hookql: str, script: str) -> list[str]:
    return [hookql, "run", "-e", script] if tool == "hookql" else ["bpftrace", "-e", script]


def _cold(cache: str) -> None:
    for sub in COMPILE_CACHE:
        shutil.rmtree(os.path.join(cache, "hookql", sub), ignore_errors=True)


def whole(tool: str, probes: int, hookql: str, cache: str | None = None, cold: bool = False) -> float:
    """Seconds from invocation to exit of `TOOL -e SCRIPT -c /bin/true`."""
    if cold:
        _cold(cache)
    env = dict(os.environ, **({"XDG_CACHE_HOME": cache} if cache else {}))
    t0 = time.monotonic()
    r = subprocess.run(_cmd(tool, hookql, _many(tool, probes)) + ["-c", "/bin/true"], env=env,
                       capture_output=True, text=True)
    took = time.monotonic() - t0
    if r.returncode != 0 or "Attach" not in r.stdout + r.stderr:  # hookql: "Attached N", bpftrace: "Attaching N"
        raise RuntimeError(f"{tool} -c /bin/true failed ({r.returncode}): {r.stderr[-2000:]}")
    reap()
    return took


def detach(tool: str, probes: int | str, hookql: str, cache: str) -> dict[str, float]:
    """Seconds from SIGINT (every probe attached) to the tool's exit, and to the kernel being done with its
    tracepoints (bpftrace: the same; HookQL: when the process it left them to has exited)."""
    if probes == "all":
        script, n = ALL[tool], len(list(Path("/sys/kernel/tracing/events/syscalls").glob("sys_enter_*")))
    else:
        script, n = _many(tool, probes), probes
    t = _Tool(hookql, script, cache) if tool == "hookql" else run.Tool(tool, script)
    t.wait_live(expected=n)
    t0 = time.monotonic()
    t.proc.send_signal(signal.SIGINT)  # as Tool.stop(), which would also wait for what HookQL leaves behind
    _, err = t.proc.communicate(timeout=300)
    stopped = time.monotonic() - t0
    if t.proc.returncode != 0:
        raise RuntimeError(f"{tool} failed on SIGINT ({t.proc.returncode}): {err[-2000:]}")
    reap()
    return {"exit": stopped, "kernel_done": time.monotonic() - t0, "probes": n}


class _Tool(run.Tool):
    """run.Tool's HookQL, for any `hookql` command (--hookql)."""

    def __init__(self, hookql: str, script: str, cache: str):
        from progs import progs

        self.tool = "hookql"
        self.before = set(progs())
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([hookql, "run", "-e", script], env=dict(os.environ, XDG_CACHE_HOME=cache),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def attached(probes: int, hookql: str, warm: str, cold: str) -> dict[str, float]:
    """Invocation -> every probe attached: HookQL cold, warm; bpftrace; the venv's `python -c pass` (as
    bench/run.py's startup_round, with any `hookql` command)."""
    out = {}
    for key, cache in (("hookql_cold", cold), ("hookql_warm", warm)):
        if cache == cold:
            _cold(cache)
        t = _Tool(hookql, _many("hookql", probes), cache)
        try:
            out[key] = t.wait_live(expected=probes)
        finally:
            t.stop()
        reap()
    out["bpftrace"] = run.run_startup("bpftrace", _many("bpftrace", probes), probes)
    py = Path(hookql).with_name("python3")  # the Python that hookql command runs on, started and stopped
    t0 = time.monotonic()
    subprocess.run([str(py) if py.exists() else sys.executable, "-c", "pass"], check=True)
    out["python"] = time.monotonic() - t0
    return out


def measure(rounds: int, all_rounds: int, hookql: str) -> dict:
    res: dict = {"attached": {}, "whole": {}, "detach": {}}
    warm, cold = tempfile.mkdtemp(prefix="hqstart-warm-"), tempfile.mkdtemp(prefix="hqstart-cold-")
    try:
        for probes in (1, 20):
            for cache in (warm, cold):  # compiled once: the warm cache keeps it, the cold one its templates
                whole("hookql", probes, hookql, cache)
            rs = [attached(probes, hookql, warm, cold) for _ in range(rounds)]
            res["attached"][str(probes)] = {k: median([r[k] for r in rs]) for k in rs[0]}
            w: dict[str, list] = {"hookql_cold": [], "hookql_warm": [], "bpftrace": []}
            for _ in range(rounds):  # interleaved: drift lands on every tool alike
                w["hookql_cold"].append(whole("hookql", probes, hookql, cold, cold=True))
                w["hookql_warm"].append(whole("hookql", probes, hookql, warm))
                w["bpftrace"].append(whole("bpftrace", probes, hookql))
            res["whole"][str(probes)] = {k: median(v) for k, v in w.items()}
        for probes in (1, 20, "all") if all_rounds else (1, 20):
            n = all_rounds if probes == "all" else rounds
            d: dict[str, list] = {tool: [] for tool in TOOLS}
            for _ in range(n):
                for tool in TOOLS:
                    d[tool].append(detach(tool, probes, hookql, warm))
            res["detach"][str(probes)] = {tool: {k: median([r[k] for r in rs]) for k in rs[0]}
                                          for tool, rs in d.items()}
    finally:
        shutil.rmtree(warm, ignore_errors=True)
        shutil.rmtree(cold, ignore_errors=True)
    return res


# -- the table -----------------------------------------------------------------------------------------------
def render(res: dict) -> str:
    m = res["machine"]
    ms = lambda s: f"{s * 1000:.0f}" if s < 10 else f"{s:.1f} s"  # noqa: E731
    lines = [f"{m['host']}: kernel {m['kernel']}, {m['cores']} cores ({m['cpu']}); {m['bpftrace']}; {m['clang']}; "
             f"median of {m['rounds']} ({m['all_rounds']} with all probes).", "",
             "| whole `-c /bin/true` run (ms) | HookQL warm | HookQL cold | bpftrace | warm/bpftrace | "
             "cold/bpftrace |", "|---|---|---|---|---|---|"]
    for probes, r in res["whole"].items():
        lines.append(f"| {probes} probe{'s' * (probes != '1')} | {ms(r['hookql_warm'])} | {ms(r['hookql_cold'])} | "
                     f"{ms(r['bpftrace'])} | {_ratio(r['hookql_warm'], r['bpftrace'])} | "
                     f"{_ratio(r['hookql_cold'], r['bpftrace'])} |")
    lines += ["", "| invocation to attached (ms) | HookQL warm | HookQL cold | bpftrace | warm/bpftrace | "
                  "cold/bpftrace | venv `python -c pass` |", "|---|---|---|---|---|---|---|"]
    for probes, r in res["attached"].items():
        lines.append(f"| {probes} probe{'s' * (probes != '1')} | {ms(r['hookql_warm'])} | {ms(r['hookql_cold'])} | "
                     f"{ms(r['bpftrace'])} | {_ratio(r['hookql_warm'], r['bpftrace'])} | "
                     f"{_ratio(r['hookql_cold'], r['bpftrace'])} | {ms(r['python'])} |")
    lines += ["", "| stop (SIGINT) to exit (ms) | HookQL | bpftrace | HookQL/bpftrace | HookQL's perf events closed "
                  "(kernel, in the background) |", "|---|---|---|---|---|"]
    for probes, r in res["detach"].items():
        h, b = r["hookql"], r["bpftrace"]
        lines.append(f"| {h['probes']} probe{'s' * (h['probes'] != 1)} | {ms(h['exit'])} | {ms(b['exit'])} | "
                     f"{_ratio(h['exit'], b['exit'])} | {ms(h['kernel_done'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="HookQL vs bpftrace: whole one-liner runs, startup, detach")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--all-rounds", type=int, default=3, help="rounds of the detach of every sys_enter_* probe "
                                                               "(bpftrace takes ~30 s each; 0: none)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--hookql", help="the hookql command to time (default: bench/build/venv's, this checkout)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/startup.py loads BPF programs: run it as root")
    if not shutil.which("bpftrace"):
        sys.exit("bpftrace is not installed (apt-get install bpftrace)")
    subreaper()
    stats_fd = run.enable_stats()  # run_cnt counts while this fd is open: the poke after attach is seen to run
    if args.hookql is None:
        run.build()
    hookql = args.hookql or str(run.HOOKQL)
    res = {"machine": {"host": os.uname().nodename, "kernel": os.uname().release, "cpu": run._cpu(),
                       "cores": os.cpu_count(), "bpftrace": run._version(["bpftrace", "--version"]),
                       "clang": run._version(["clang", "--version"]), "rounds": args.rounds,
                       "all_rounds": args.all_rounds, "hookql": hookql}}
    try:
        res.update(measure(args.rounds, args.all_rounds, hookql))
    finally:
        os.close(stats_fd)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(res, indent=1) + "\n")
    table = render(res)
    (args.out / "startup.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
