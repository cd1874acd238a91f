#!/usr/bin/env python3
"""`hookql serve`'s costs: a scrape of many series, the service idle, its memory.

    sudo python3 bench/serve.py [--series 10000] [--scrapes 20] [--idle 10] [--out bench/results]

One script counts getsid(2) calls by their argument; a workload calls getsid(v) for v = 1..SERIES once
each, so after a drain the metric has SERIES series. Then, with the drain still ticking every second:
  scrape  wall time of a whole GET /metrics (connect to the last byte), median and max of --scrapes
  idle    CPU the service uses with no events for --idle seconds (utime + stime from /proc), % of a core
  memory  RSS of the service after the scrapes (VmRSS), and its peak (VmHWM)
Writes OUT/serve.json and prints a table. Targets (issue 14): a 10,000-series scrape in at most 100 ms,
idle under 1% of a core.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMM = "hqservebench"
SCRIPT = f'on tracepoint:syscalls:sys_enter_getsid where comm == "{COMM}" {{ count by args.pid as bench_getsid }}\n'
WORKLOAD = f"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"{COMM}", 0, 0, 0)
for v in range(1, int(sys.argv[1]) + 1):
    try:
        os.getsid(v)
    except OSError:
        pass
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def hookql() -> list[str]:
    exe = Path(sys.executable).parent / "hookql"
    return [str(exe)] if exe.exists() else [str(REPO / "bin" / "hookql")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hqservebench-") as tmp:
        script = Path(tmp) / "bench.hq"
        script.write_text(SCRIPT)
        port = free_port()
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        svc = subprocess.Popen(hookql() + ["serve", "--listen", f"127.0.0.1:{port}", "--drain-interval", "1s",
                                           "--series-cap", str(args.series * 2), "--map-size",
                                           str(max(4096, args.series * 2)), str(script)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if get(base + "/healthz").startswith(b"ok"):
                        break
                except OSError:
                    pass
                if svc.poll() is not None or time.monotonic() > deadline:
                    print(f"hookql serve did not start: {svc.stderr.read()}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            subprocess.run([sys.executable, "-c", WORKLOAD, str(args.series)], check=True)
            while True:  # every call counted and drained
                body = get(base + "/metrics").decode()
                n = sum(1 for l in body.splitlines() if l.startswith("hookql_bench_getsid_total{"))
                if n >= args.series:
                    break
                if time.monotonic() > deadline:
                    print(f"only {n} of {args.series} series showed up", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            times = []
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                get(base + "/metrics")
                times.append(time.perf_counter() - t0)
            c0, t0 = cpu_seconds(svc.pid), time.monotonic()
            time.sleep(args.idle)
            idle = (cpu_seconds(svc.pid) - c0) / (time.monotonic() - t0) * 100
            result = {"series": args.series, "scrape_ms_median": statistics.median(times) * 1000,
                      "scrape_ms_max": max(times) * 1000, "scrape_ms_all": [round(t * 1000, 1) for t in times],
                      "idle_cpu_percent": idle,
                      "rss_mib": status_kib(svc.pid, "VmRSS") / 1024, "peak_rss_mib": status_kib(svc.pid, "VmHWM") / 1024,
                      "machine": f"{os.uname().release}, {os.cpu_count()} CPUs"}
        finally:
            svc.terminate()
            try:
                svc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                svc.kill()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"hookql serve, {result['series']} series ({result['machine']})")
    print(f"  scrape     median {result['scrape_ms_median']:.1f} ms, max {result['scrape_ms_max']:.1f} ms "
          f"(target <= 100 ms at 10,000 series)")
    print(f"  idle       {result['idle_cpu_percent']:.2f}% of a core over {args.idle:g} s (target < 1%)")
    print(f"  memory     RSS {result['rss_mib']:.1f} MiB, peak {result['peak_rss_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
