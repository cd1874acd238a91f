"""The benchmark runs end to end on a small N (no timing assertions here:
the numbers are bench/run.py's to report)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark loads BPF programs")


@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is not installed (bin/setup installs it)")
def test_benchmark_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--n", "3000", "--rounds", "1",
                        "--keys", "1,10", "--rates", "1000", "--rate-seconds", "0.5", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    for name in ("count_by_comm", "filter_sum", "hist"):
        for tool in ("hookql", "bpftrace", "handwritten"):
            cost = res["cost"][name][tool]
            assert cost["events"] >= 3000 and cost["ns_per_event"] > 0 and cost["xlated"] > 0
    assert set(res["growth"]) == {"1", "10"}
    assert set(res["startup"]) == {"1", "20"}
    for tool in ("hookql", "bpftrace", "handwritten"):
        s = res["streaming"][tool]
        assert s["fired"] >= 3000 and s["delivered"] + s["lost"] == s["fired"]
        assert res["memory"][tool] > 0
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert "| count_by_comm |" in r.stdout and "HookQL/C" in r.stdout
