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
    # latency: enter -> exit per thread, two programs per tool, both counted (N enters, N exits)
    for tool in ("hookql", "bpftrace", "handwritten"):
        cost = res["cost"]["latency"][tool]
        assert cost["events"] >= 2 * 3000 and cost["ns_per_event"] > 0 and cost["xlated"] > 0
    assert "| latency |" in r.stdout


@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is not installed (bin/setup installs it)")
def test_cost_only_runs_just_the_named_scripts(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--n", "2000", "--rounds", "1",
                        "--cost-only", "latency", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["cost"]) == {"latency"} and not res["growth"] and not res["startup"]
    for tool in ("hookql", "bpftrace", "handwritten"):
        assert res["cost"]["latency"][tool]["events"] >= 2 * 2000 and res["cost"]["latency"][tool]["ns_per_event"] > 0
    assert "| latency |" in r.stdout and "startup" not in r.stdout
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--cost-only", "latncy"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no script latncy" in bad.stderr


def test_catalog_growth_scripts_check_on_6_1():
    """bench/catalog_growth.py's scripts (1, 20, all catalog hooks) are valid for 6.1; the VM run
    itself takes minutes of emulation and is left to `bench/run.py --catalog`."""
    sys.path.insert(0, str(REPO / "bench"))
    import catalog_growth
    from hookql import kernel as K
    from hookql.pipeline import check_source
    from hookql.source import Source

    hooks = catalog_growth.catalog_hooks()
    assert hooks[-1] == catalog_growth.LAST and len(hooks) == len(set(hooks)) > 20
    s = catalog_growth.scripts(hooks)
    result = check_source(Source("<-e>", s["hookql"]), K.reference("6.1"))
    assert result.ok, [d.render() for d in result.diagnostics]
    assert s["bpftrace"].count("{") == len(hooks) and "kfunc:bpf_lsm_socket_getsockopt" in s["bpftrace"]


@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is not installed (bin/setup installs it)")
def test_startup_bench_runs_end_to_end(tmp_path):
    # bench/startup.py (issue 16): whole -c runs, time to attached, stop to exit, HookQL and bpftrace in one run
    r = subprocess.run([sys.executable, str(REPO / "bench" / "startup.py"), "--rounds", "1", "--all-rounds", "0",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "startup.json").read_text())
    for probes in ("1", "20"):
        assert set(res["whole"][probes]) == {"hookql_cold", "hookql_warm", "bpftrace"}
        assert set(res["attached"][probes]) == {"hookql_cold", "hookql_warm", "bpftrace", "python"}
        assert all(v > 0 for k in ("whole", "attached") for v in res[k][probes].values())
        for tool in ("hookql", "bpftrace"):
            d = res["detach"][probes][tool]
            assert d["probes"] == int(probes) and 0 < d["exit"] <= d["kernel_done"]
    assert "all" not in res["detach"]
    assert "| whole `-c /bin/true` run (ms) |" in r.stdout and "| 20 probes |" in r.stdout
    assert (tmp_path / "startup.md").read_text().strip() == r.stdout.strip()
