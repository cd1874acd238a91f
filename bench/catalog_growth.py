"""Growth to every catalog hook: startup and peak RSS with 1, 20 and all of
the catalog's hooks (kprobes and LSM hooks), HookQL against bpftrace, on
Debian's 6.1 kernel in the VM of the kernel test tier: this machine's kernel
has no kprobes and refuses LSM programs.

    sudo python3 bench/run.py --catalog     # adds this section to the results

The guest runs under software emulation (TCG), which inflates every absolute
time many times over: only the ratios between the tools mean something.
Objects are compiled on the host beforehand, so HookQL's runs in the guest
are warm (its first run there only fills the run cache).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/run.py's pokes make a getsockopt call: the hook every set ends with, so its first hit means all are live
LAST = ("lsm", "socket_getsockopt")


def catalog_hooks() -> list[tuple[str, str]]:
    """Every distinct catalog hook that 6.1 has and that attaches as written (no caveat)."""
    from hookql.catalog import Catalog

    hooks = sorted({(e.provider, e.hook) for e in Catalog.load().entries if "6.1" in e.in_kernels and not e.caveat})
    hooks.remove(LAST)
    return hooks + [LAST]


def scripts(hooks: list[tuple[str, str]]) -> dict[str, str]:
    # bpftrace 0.17 has no lsm: probes; kfunc:bpf_lsm_HOOK is the same attach point (the BPF LSM's
    # trampoline on the hook's stub), observed the same way
    bt = lambda p, h: f"kfunc:bpf_lsm_{h}" if p == "lsm" else f"{p}:{h}"
    return {"hookql": "\n".join(f"on {p}:{h} {{ count by comm }}" for p, h in hooks),
            "bpftrace": "\n".join(f"{bt(p, h)} {{ @[comm] = count(); }}" for p, h in hooks)}


# -- on the host -------------------------------------------------------------------------------
def measure(rounds: int) -> dict:
    """Compile here, boot the VM, measure there; the guest's results."""
    from hookql import kernel as K
    from hookql.pipeline import check_source, compile_checked
    from hookql.source import Source
    from hookql.testing import vm

    if vm.missing_tools():
        raise RuntimeError(f"the VM needs: apt-get install {' '.join(vm.missing_tools())}")
    hooks = catalog_hooks()
    sets = {"1": hooks[-1:], "20": hooks[-20:], "all": hooks}
    k61 = K.reference("6.1")
    spec = {"rounds": rounds, "sets": {}}
    for name, hs in sets.items():
        s = scripts(hs)
        checked = check_source(Source("<-e>", s["hookql"]), k61)  # the name `hookql run -e` gives it
        if not checked.ok:
            raise RuntimeError([d.render() for d in checked.diagnostics])
        compile_checked(checked.checked, "kprobe")  # fills the object cache the guest reads
        spec["sets"][name] = {**s, "probes": len(hs)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=vm.cache_root(), delete=False) as f:
        json.dump(spec, f)
    py = sys.executable
    script = f"""
export HOME={os.path.expanduser('~')} XDG_CACHE_HOME={vm.cache_root().parent.parent} PATH={Path(py).parent}:$PATH
cd {REPO}
{py} bench/catalog_growth.py --guest {f.name}
"""
    try:
        r = vm.run(script, timeout=3600)
    finally:
        os.unlink(f.name)
    if r.status != 0:
        raise RuntimeError(f"the guest failed ({r.status}):\n{r.stderr[-3000:]}\n{r.console[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- in the guest ------------------------------------------------------------------------------
def guest(spec_path: str) -> None:
    sys.path.insert(0, str(HERE))
    import run as bench
    from progs import enable_stats

    _stats = enable_stats()  # wait_live checks run_cnt: counted while this fd is open (until the guest exits)
    spec = json.loads(Path(spec_path).read_text())
    out = {"kernel": os.uname().release, "rounds": spec["rounds"], "sets": {}}
    for name, s in spec["sets"].items():
        n = s["probes"]
        bench.run_startup("hookql", s["hookql"], n, False)  # fills the guest's run cache
        res = {"probes": n}
        for tool in ("hookql", "bpftrace"):
            res[f"{tool}_startup"] = statistics.median(
                bench.run_startup(tool, s[tool], n, False) for _ in range(spec["rounds"]))
            t = bench.Tool(tool, s[tool])
            try:
                t.wait_live(expected=n, timeout=600)
                res[f"{tool}_rss_kb"] = t.peak_rss_kb()
            finally:
                t.stop()
        out["sets"][name] = res
        print(f"{name}: {res}", file=sys.stderr, flush=True)
    print(json.dumps(out))


def render(res: dict) -> list[str]:
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    lines = [f"| catalog hooks on {res['kernel']} in the VM (TCG: compare ratios) | probes | HookQL warm (s) | "
             "bpftrace (s) | warm/bpftrace | HookQL RSS (MiB) | bpftrace RSS (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["sets"].items():
        lines.append(f"| {name} | {r['probes']} | {r['hookql_startup']:.2f} | {r['bpftrace_startup']:.2f} | "
                     f"{ratio(r['hookql_startup'], r['bpftrace_startup'])} | {r['hookql_rss_kb'] / 1024:.1f} | "
                     f"{r['bpftrace_rss_kb'] / 1024:.1f} |")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--guest":
        guest(sys.argv[2])
    else:
        print("\n".join(render(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3))))
