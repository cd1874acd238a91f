#!/usr/bin/env python3
"""HookQL vs bpftrace vs hand-written libbpf C, side by side, in one run.

    sudo python3 bench/run.py [--n 2000000] [--rounds 5] [--out bench/results] [--cost-only latency,hist]

Measures, for the same work in each tool (medians of --rounds):
  cost      in-kernel ns/event from the kernel's bpf_stats (run_time_ns / run_cnt; on while this
            process holds a BPF_ENABLE_STATS fd: the global sysctl is left alone)
            while bench/workload makes N getsockopt calls; xlated/jited sizes. `latency` (enter -> exit
            per thread, two programs) sums both programs' run time over both programs' events
  growth    the same for `count by level` with 1, 1k and 100k distinct keys
  startup   invocation -> every probe attached (its program on a BPF link, or on a perf event
            the tool holds), cold and warm cache, 1 and 20 probes; beside it `python -c pass`
            of the venv HookQL runs from, the floor for any Python tool
  streaming one event per call at full rate: delivered, lost; then paced rates
  memory    peak RSS (VmHWM) of the tool's process
Writes OUT/results.json, OUT/results.png and prints a table with ratios.

HookQL runs from its own venv (bench/build/venv, `pip install .`), as users install
it: the machine's development Python may carry .pth hooks that cost more than
HookQL's whole warm start.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from progs import attached, enable_stats, progs, reap, subreaper

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
TP = "tracepoint:syscalls:sys_enter_getsockopt"
TP_EXIT = "tracepoint:syscalls:sys_exit_getsockopt"
TOOLS = ("hookql", "bpftrace", "handwritten")

# The same work in each tool.
SCRIPTS = {
    "count_by_comm": {"hookql": f"on {TP} {{ count by comm }}",
                      "bpftrace": f"{TP} {{ @[comm] = count(); }}", "handwritten": "count_by_comm"},
    "filter_sum": {"hookql": f"on {TP} where level == 1 {{ sum(optname) by comm }}",
                   "bpftrace": f"{TP} /args->level == 1/ {{ @[comm] = sum(args->optname); }}",
                   "handwritten": "filter_sum"},
    "hist": {"hookql": f"on {TP} {{ hist(optname) }}", "bpftrace": f"{TP} {{ @ = hist(args->optname); }}",
             "handwritten": "hist"},
    # enter -> exit of each of the workload's calls, per thread: two programs per tool, whose run
    # times are summed over both programs' events
    "latency": {"hookql": f'on {TP} where comm == "hqbench" {{ start[tid] = ts }}\n'
                         f"on {TP_EXIT} where tid in start {{ hist(ts - start[tid]); delete start[tid] }}",
                "bpftrace": f'{TP} /comm == "hqbench"/ {{ @start[tid] = nsecs; }}\n'
                            f"{TP_EXIT} /@start[tid]/ {{ @ns = hist(nsecs - @start[tid]); delete(@start[tid]); }}",
                "handwritten": "latency", "programs": 2},
}
GROWTH = {"hookql": f"on {TP} {{ count by level }}", "bpftrace": f"{TP} {{ @[args->level] = count(); }}",
          "handwritten": "count_by_level"}
STREAM = {"hookql": f"on {TP} {{ emit pid, comm }}",
          "bpftrace": f'{TP} {{ printf("%d %s\\n", pid, comm); }}', "handwritten": "emit"}
# 20 syscall tracepoints for the startup test; getsockopt last, so its first event means all are live.
SYSCALLS = ["socket", "connect", "accept4", "bind", "listen", "sendto", "recvfrom", "sendmsg", "recvmsg",
            "shutdown", "socketpair", "setsockopt", "getsockname", "getpeername", "openat", "close", "read",
            "write", "mmap", "getsockopt"]


VENV = BUILD / "venv"
HOOKQL = VENV / "bin" / "hookql"


# -- building -------------------------------------------------------------------------
def build() -> None:
    BUILD.mkdir(exist_ok=True)
    install_hookql()
    cc = lambda *a: subprocess.run(list(a), check=True, cwd=HERE)
    cc("gcc", "-O2", "-o", str(BUILD / "workload"), "workload.c")
    cc("gcc", "-O2", "-o", str(BUILD / "loader"), "ref/loader.c", "-lbpf")
    vmlinux_h = BUILD / "vmlinux.h"
    if not vmlinux_h.exists():
        with open(vmlinux_h, "w") as f:
            subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"], stdout=f,
                           check=True)
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), "x86")
    for src in (HERE / "ref").glob("*.bpf.c"):
        cc("clang", "-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-O2", "-g", f"-I{BUILD}", f"-I{HERE / 'ref'}",
           "-c", str(src), "-o", str(BUILD / src.name.replace(".bpf.c", ".bpf.o")))


def install_hookql() -> None:
    """This checkout, installed into bench/build/venv as `pip install` would for a user
    (dependencies from the index the first time; HookQL itself afresh every run)."""
    fresh = not (VENV / "bin" / "pip").exists()
    if fresh:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")  # pip writes .pyc whatever PYTHONDONTWRITEBYTECODE says
    cmd = [str(VENV / "bin" / "pip"), "install", "-q", str(HERE.parent)]
    subprocess.run(cmd if fresh else cmd + ["--no-deps", "--force-reinstall"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


# -- the kernel's own accounting (bench/progs.py) -------------------------------------------
def stats(ids) -> tuple[int, int]:
    now = progs()
    return (sum(now[i].get("run_time_ns", 0) for i in ids if i in now),
            sum(now[i].get("run_cnt", 0) for i in ids if i in now))


def poke() -> None:
    s = socket.socket()
    s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    s.close()


# -- running a tool ---------------------------------------------------------------------------
GROWTH_MAP = 131072  # as bench/ref/count_by_level.bpf.c: every tool gets room for 100k keys


class Tool:
    def __init__(self, tool: str, script: str, cache: str | None = None, stdout=subprocess.DEVNULL,
                 map_size: int | None = None):
        self.tool = tool
        env = dict(os.environ)
        if cache:
            env["XDG_CACHE_HOME"] = cache
        if tool == "hookql":
            cmd = [str(HOOKQL), "run", "-e", script]
            cmd += ["--map-size", str(map_size)] if map_size else []
        elif tool == "bpftrace":
            cmd = ["bpftrace", "-e", script]
            if map_size:
                env["BPFTRACE_MAP_KEYS_MAX"] = str(map_size)
            env["BPFTRACE_PERF_RB_PAGES"] = env.get("BPFTRACE_PERF_RB_PAGES", "64")
        else:
            cmd = [str(BUILD / "loader"), str(BUILD / f"{script}.bpf.o")]
        self.before = set(progs())
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)

    def wait_live(self, expected: int = 1, timeout: float = 120) -> float:
        """Seconds from invocation until `expected` of the tool's programs are attached
        (polled every millisecond); then a poke proves the getsockopt one live."""
        deadline = self.t0 + timeout
        while len(ids := attached(self.proc.pid, self.before)) < expected:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.tool} exited: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.tool} never attached")
            time.sleep(0.001)
        live = time.monotonic() - self.t0
        self.ids = list(ids)
        poke()
        if not any(progs().get(i, {}).get("run_cnt") for i in self.ids):
            raise RuntimeError(f"{self.tool}: attached, yet its getsockopt program did not run")
        return live

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        reap()  # what HookQL left closing its perf events: the next measurement starts with the kernel idle
        return out or "", err or ""


def workload(n: int, keys: int = 1, rate: float = 0) -> float:
    out = subprocess.run([str(BUILD / "workload"), str(n), str(keys), str(rate)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def run_cost(tool: str, script: str, n: int, keys: int = 1, map_size: int | None = None, programs: int = 1) -> dict:
    t = Tool(tool, script, map_size=map_size)
    try:
        t.wait_live(expected=programs)
        rt0, cnt0 = stats(t.ids)
        per_call = workload(n, keys)
        rt1, cnt1 = stats(t.ids)
        info = progs()
        xl = sum(info[i].get("bytes_xlated", 0) for i in t.ids if i in info)
        jit = sum(info[i].get("bytes_jited", 0) for i in t.ids if i in info)
        rss = t.peak_rss_kb()
    finally:
        t.stop()
    events = cnt1 - cnt0
    return {"ns_per_event": (rt1 - rt0) / events if events else None, "events": events, "xlated": xl,
            "jited": jit, "workload_ns_per_call": per_call, "rss_kb": rss}


# Cold: the script was never compiled -- no object, no run entry. HookQL's own compiled
# internals (its Jinja templates' bytecode) stay: a user's first run of any script makes them, once.
COMPILE_CACHE = ("obj", "run")


def run_startup(tool: str, script: str, probes: int, cache: str | None = None) -> float:
    t = Tool(tool, script, cache=cache)
    try:
        return t.wait_live(expected=probes)
    finally:
        t.stop()


def startup_round(probes: int, warm_cache: str, cold_cache: str) -> dict[str, float]:
    """One of each, back to back: HookQL with a cold compile cache, with a warm one, bpftrace; the venv's Python."""
    hq, bt = _many("hookql", probes), _many("bpftrace", probes)
    for sub in COMPILE_CACHE:
        shutil.rmtree(os.path.join(cold_cache, "hookql", sub), ignore_errors=True)
    return {"hookql_cold": run_startup("hookql", hq, probes, cold_cache),
            "hookql_warm": run_startup("hookql", hq, probes, warm_cache),
            "bpftrace": run_startup("bpftrace", bt, probes), "python": python_floor()}


def run_stream(tool: str, script: str, n: int, rate: float = 0) -> dict:
    out_file = tempfile.TemporaryFile(mode="w+")
    t = Tool(tool, script, stdout=out_file)
    try:
        t.wait_live()
        rt0, cnt0 = stats(t.ids)
        per_call = workload(n, 1, rate)
        time.sleep(1.0)  # let the reader drain
        rt1, cnt1 = stats(t.ids)
    finally:
        _, err = t.stop()
    out_file.seek(0)
    text = out_file.read()
    fired = cnt1 - cnt0
    if tool == "handwritten":
        delivered = int(next((l.split()[1] for l in text.splitlines() if l.startswith("received")), 0))
    else:
        delivered = sum(1 for l in text.splitlines() if "hqbench" in l)
    return {"fired": fired, "delivered": min(delivered, fired), "lost": max(fired - delivered, 0),
            "rate_per_s": 1e9 / per_call if per_call else None, "reported_lost": _reported_lost(err + "\n" + text)}


def stream_sweep(tool: str, rates: list[int], seconds: float) -> dict:
    """Lost events at each paced rate (and the rate the workload reached: past its limit it
    runs flat out); the first losing rate is where the tool starts to drop."""
    out = {}
    for rate in rates:
        r = run_stream(tool, STREAM[tool], int(rate * seconds), rate)
        out[str(rate)] = {"lost": r["lost"], "reported_lost": r["reported_lost"], "reached": r["rate_per_s"]}
    return out


def python_floor() -> float:
    """Wall time of the venv's `python -c pass`: what any Python tool installed there pays first."""
    t0 = time.monotonic()
    subprocess.run([str(VENV / "bin" / "python"), "-c", "pass"], check=True)
    return time.monotonic() - t0


def _reported_lost(err: str) -> int | None:
    """What the tool itself told the user it lost (None: it said nothing)."""
    for line in err.splitlines():
        words = line.split()
        if "emitted events lost" in line:  # hookql
            return int(words[2])
        if line.startswith("Lost ") and "events" in line:  # bpftrace
            return int(words[1])
    return None


# -- the run -------------------------------------------------------------------------------------
def interleaved(rounds: int, measure) -> dict[str, list]:
    """Each round measures every tool once, so drift on the machine (other tenants, frequency) lands on all
    tools alike instead of on whichever ran last."""
    out: dict[str, list] = {tool: [] for tool in TOOLS}
    for _ in range(rounds):
        for tool in TOOLS:
            out[tool].append(measure(tool))
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description="HookQL vs bpftrace vs hand-written libbpf C")
    ap.add_argument("--n", type=int, default=2_000_000, help="getsockopt calls per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keys", default="1,1000,100000", help="distinct keys for the growth test")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--rates", default="100000,200000,400000,800000,1600000",
                    help="paced event rates (per second) for the streaming sweep")
    ap.add_argument("--rate-seconds", type=float, default=2.0, help="how long each paced rate runs")
    ap.add_argument("--catalog", action="store_true",
                    help="also startup and RSS with 1, 20 and all catalog hooks (kprobes, LSM) on 6.1 in the VM "
                         "(bench/catalog_growth.py; minutes of emulation)")
    ap.add_argument("--cost-only", metavar="SCRIPTS",
                    help="measure only the in-kernel cost of these scripts (comma-separated: "
                         f"{','.join(SCRIPTS)}), nothing else")
    args = ap.parse_args()
    only = set(args.cost_only.split(",")) if args.cost_only else set(SCRIPTS)
    if only - set(SCRIPTS):
        sys.exit(f"--cost-only: no script {', '.join(sorted(only - set(SCRIPTS)))} (there are {', '.join(SCRIPTS)})")
    if os.geteuid() != 0:
        sys.exit("bench/run.py loads BPF programs: run it as root")
    if not shutil.which("bpftrace"):
        sys.exit("bpftrace is not installed (apt-get install bpftrace)")
    subreaper()  # Tool.stop() waits for the processes HookQL leaves behind (bench/progs.py)
    stats_fd = enable_stats()  # run_time_ns and run_cnt are counted while this fd is open
    build()
    res: dict = {"machine": {"kernel": os.uname().release, "cpu": _cpu(), "cores": os.cpu_count(),
                             "bpftrace": _version(["bpftrace", "--version"]),
                             "clang": _version(["clang", "--version"]), "n": args.n, "rounds": args.rounds},
                 "cost": {}, "growth": {}, "startup": {}, "streaming": {}, "memory": {}}
    try:
        for name, per_tool in SCRIPTS.items():
            if name not in only:
                continue
            rounds = interleaved(args.rounds, lambda tool: run_cost(tool, per_tool[tool], args.n,
                                                                    programs=per_tool.get("programs", 1)))
            res["cost"][name] = {tool: {k: median([r[k] for r in rs]) for k in rs[0]} for tool, rs in rounds.items()}
        if not args.cost_only:  # --cost-only: the in-kernel cost of some scripts, nothing else
            for keys in (int(k) for k in args.keys.split(",")):
                rounds = interleaved(args.rounds, lambda tool: run_cost(tool, GROWTH[tool], args.n, keys, GROWTH_MAP))
                res["growth"][str(keys)] = {tool: median([r["ns_per_event"] for r in rs]) for tool, rs in rounds.items()}
            warm_cache, cold_cache = tempfile.mkdtemp(prefix="hqbench-warm-"), tempfile.mkdtemp(prefix="hqbench-cold-")
            try:
                for probes in (1, 20):
                    for cache in (warm_cache, cold_cache):  # the warm one keeps this; the cold one keeps the templates
                        run_startup("hookql", _many("hookql", probes), probes, cache)
                    rounds = [startup_round(probes, warm_cache, cold_cache) for _ in range(args.rounds)]
                    res["startup"][f"{probes}"] = {k: median([r[k] for r in rounds]) for k in rounds[0]}
            finally:
                shutil.rmtree(warm_cache, ignore_errors=True)
                shutil.rmtree(cold_cache, ignore_errors=True)
            for tool in TOOLS:
                res["streaming"][tool] = run_stream(tool, STREAM[tool], min(args.n, 500_000))
            rates = [int(r) for r in args.rates.split(",")]
            res["stream_rates"] = {tool: stream_sweep(tool, rates, args.rate_seconds) for tool in TOOLS}
            for tool in TOOLS:
                res["memory"][tool] = res["cost"]["count_by_comm"][tool]["rss_kb"]
            if args.catalog:
                import catalog_growth

                res["catalog_growth"] = catalog_growth.measure(args.rounds)
    finally:
        os.close(stats_fd)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    table = render_table(res)
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    chart(res, args.out / "results.png")
    return 0


def _many(tool: str, probes: int) -> str:
    names = SYSCALLS[-probes:]
    if tool == "hookql":
        return "\n".join(f"on tracepoint:syscalls:sys_enter_{s} {{ count by comm }}" for s in names)
    return "\n".join(f"tracepoint:syscalls:sys_enter_{s} {{ @{s}[comm] = count(); }}" for s in names)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _version(cmd) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"Kernel {m['kernel']}, {m['cores']} cores ({m['cpu']}); {m['bpftrace']}; {m['clang']}; "
             f"N={m['n']}, median of {m['rounds']}.", "",
             "| in-kernel cost (ns/event) | HookQL | bpftrace | hand-written C | HookQL/C | HookQL/bpftrace |",
             "|---|---|---|---|---|---|"]
    for name, r in res["cost"].items():
        h, b, c = (r[t]["ns_per_event"] for t in TOOLS)
        lines.append(f"| {name} | {h:.1f} | {b:.1f} | {c:.1f} | {_ratio(h, c)} | {_ratio(h, b)} |")
    lines += ["", "| program size (xlated / jited bytes) | HookQL | bpftrace | hand-written C |", "|---|---|---|---|"]
    for name, r in res["cost"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[t]['xlated']:.0f} / {r[t]['jited']:.0f}" for t in TOOLS) + " |")
    if res["growth"]:
        lines += ["", "| count by level, distinct keys (ns/event) | HookQL | bpftrace | hand-written C | HookQL/C |",
                  "|---|---|---|---|---|"]
    for keys, r in res["growth"].items():
        h, b, c = (r[t] for t in TOOLS)
        lines.append(f"| {keys} | {h:.1f} | {b:.1f} | {c:.1f} | {_ratio(h, c)} |")
    if res["startup"]:
        lines += ["", "| startup to attached (ms) | HookQL cold | HookQL warm | bpftrace | warm/bpftrace | cold/bpftrace "
                      "| venv `python -c pass` |", "|---|---|---|---|---|---|---|"]
    for probes, r in res["startup"].items():
        ms = {k: f"{v * 1000:.1f}" for k, v in r.items()}
        lines.append(f"| {probes} probe{'s' * (probes != '1')} | {ms['hookql_cold']} | {ms['hookql_warm']} | "
                     f"{ms['bpftrace']} | {_ratio(r['hookql_warm'], r['bpftrace'])} | "
                     f"{_ratio(r['hookql_cold'], r['bpftrace'])} | {ms['python']} |")
    if res["streaming"]:
        lines += ["", "| streaming (one event per call) | fired | delivered | lost | lost as reported by the tool |",
                  "|---|---|---|---|---|"]
    for tool, r in res["streaming"].items():
        lines.append(f"| {tool} | {r['fired']} | {r['delivered']} | {r['lost']} | {r['reported_lost']} |")
    rates = res.get("stream_rates", {})
    if rates:
        keys = list(next(iter(rates.values())))
        lines += ["", "| events lost at a paced rate (events/s) | " + " | ".join(keys) +
                  " | starts to drop at | fastest run without drops |", "|---|" + "---|" * (len(keys) + 2)]
        for tool, r in rates.items():
            first = next((k for k in keys if r[k]["lost"]), None)
            clean = max((r[k]["reached"] or 0 for k in keys if not r[k]["lost"]), default=0)
            lines.append(f"| {tool} | " + " | ".join(str(r[k]["lost"]) for k in keys) +
                         f" | {first + '/s' if first else 'no drops'} | {clean / 1e3:.0f}k/s |")
    mem = res["memory"]
    if mem:
        lines += ["", "| peak RSS (MiB) | HookQL | bpftrace | hand-written C | HookQL/bpftrace |", "|---|---|---|---|---|"]
        lines.append("| count_by_comm | " + " | ".join(f"{mem[t] / 1024:.1f}" for t in TOOLS) +
                     f" | {_ratio(mem['hookql'], mem['bpftrace'])} |")
    if res.get("catalog_growth"):
        import catalog_growth

        lines += [""] + catalog_growth.render(res["catalog_growth"])
    return "\n".join(lines)


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = {"hookql": "#2a9d8f", "bpftrace": "#e76f51", "handwritten": "#264653"}
    names = list(res["cost"])
    for i, tool in enumerate(TOOLS):
        axes[0].bar([x + i * 0.27 for x in range(len(names))],
                    [res["cost"][n][tool]["ns_per_event"] or 0 for n in names], 0.27, label=tool, color=colors[tool])
    axes[0].set_xticks([x + 0.27 for x in range(len(names))], names)
    axes[0].set_ylabel("ns per event (bpf_stats)")
    axes[0].set_title("In-kernel cost")
    axes[0].legend()
    keys = list(res["growth"])
    for tool in TOOLS:
        axes[1].plot(keys, [res["growth"][k][tool] for k in keys], marker="o", label=tool, color=colors[tool])
    axes[1].set_xlabel("distinct keys")
    axes[1].set_ylabel("ns per event")
    axes[1].set_title("Cost as keys grow")
    probes = list(res["startup"])
    series = (("hookql_cold", "HookQL cold", "#8ecae6"), ("hookql_warm", "HookQL warm", colors["hookql"]),
              ("bpftrace", "bpftrace", colors["bpftrace"]))
    for i, (key, label, color) in enumerate(series):
        axes[2].bar([x + i * 0.27 for x in range(len(probes))], [res["startup"][p][key] for p in probes], 0.27,
                    label=label, color=color)
    axes[2].set_xticks([x + 0.27 for x in range(len(probes))], [f"{p} probe(s)" for p in probes])
    axes[2].set_ylabel("seconds to attached")
    axes[2].set_title("Startup")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
