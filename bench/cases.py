#!/usr/bin/env python3
"""`hookql test`'s own speed: a native case end to end, and every VM example case in one boot.

    sudo python3 bench/cases.py [--rounds 3] [--vm] [--out bench/results]

native  `hookql test examples` on this kernel, --rounds times (the first with an empty cache: cold, every
        script built with clang), each case's time from the JUnit XML (planning, load, attach, its workloads,
        read back, detach), and the whole command's wall time
vm      `hookql test --kernel 6.1` on the kprobe and LSM examples: the whole run's wall time (one boot), the
        cases' own times, and what is left for booting and powering off
Writes OUT/cases.json and prints a table. Target (issue 15): a native case under 2 s end to end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOKQL = [str(Path(sys.executable).parent / "hookql")]  # the hookql of the venv running this


def run(args: list[str], cache: str) -> tuple[float, dict[str, tuple[str, float]], str]:
    """(wall seconds, {case id: (status, seconds)}, the summary line)."""
    with tempfile.TemporaryDirectory() as d:
        xml = os.path.join(d, "r.xml")
        t0 = time.monotonic()
        r = subprocess.run(HOOKQL + ["test", "--junit", xml, *args], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "XDG_CACHE_HOME": cache}, timeout=3600)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit(f"hookql test failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        cases = {}
        for tc in ET.parse(xml).getroot().iter("testcase"):
            status = next((c.tag for c in tc if c.tag in ("failure", "error", "skipped")), "pass")
            cases[f"{tc.get('classname')}::{tc.get('name')}"] = (status, float(tc.get("time")))
    return wall, cases, r.stdout.strip().splitlines()[-1]


def vm_examples() -> list[str]:
    return [str(p.with_suffix(".hqt").relative_to(REPO)) for p in sorted((REPO / "examples").glob("*.hq"))
            if re.search(r"^\s*on\s+(kprobe|kretprobe|lsm):", p.read_text(), re.M)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vm", action="store_true", help="also the VM run (a few minutes)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    res: dict = {"machine": f"{os.uname().release}, {os.cpu_count()} CPUs", "native": [], "vm": None}
    with tempfile.TemporaryDirectory() as cache:
        for i in range(a.rounds):
            wall, cases, summary = run(["examples"], cache)
            ran = {k: t for k, (s, t) in cases.items() if s == "pass"}
            res["native"].append({"cold": i == 0, "wall": round(wall, 3), "cases": len(ran),
                                  "median": round(statistics.median(ran.values()), 3),
                                  "max": round(max(ran.values()), 3),
                                  "slowest": max(ran, key=ran.get), "summary": summary})
        if a.vm:
            files = vm_examples()
            wall, cases, summary = run(["--kernel", "6.1", *files], cache)
            own = sum(t for _, t in cases.values())
            res["vm"] = {"wall": round(wall, 1), "cases": len(cases), "boots": 1, "cases_seconds": round(own, 1),
                         "rest": round(wall - own, 1), "median": round(statistics.median(t for _, t in cases.values()), 2),
                         "summary": summary}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "cases.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"machine: {res['machine']}")
    print("| run | cases | median case | slowest case | whole `hookql test examples` |")
    print("|---|---|---|---|---|")
    for r in res["native"]:
        print(f"| native, {'cold (empty cache)' if r['cold'] else 'warm'} | {r['cases']} | {r['median']:.2f} s | "
              f"{r['max']:.2f} s ({r['slowest'].split('::', 1)[1]}) | {r['wall']:.1f} s |")
    if res["vm"]:
        v = res["vm"]
        print(f"| VM (--kernel 6.1, one boot) | {v['cases']} | {v['median']:.2f} s | | {v['wall']:.1f} s "
              f"(cases {v['cases_seconds']:.1f} s, boot, build and power-off {v['rest']:.1f} s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
