"""Run compiled cases: load, attach, run the workloads, read everything back.

    python3 -m hookql.testing.executor PLAN.json RESULTS.json

The same code runs here (hookql test) and inside the VM (hookql test
--kernel 6.1), on objects the host compiled.  A case runs as `hookql run
--format json -c WORKLOADS` would (runtime/session.py, in this process):
its aggregations, emitted events, deny counts and anything lost are what
that run prints.  The result of each case is plain JSON: the host compares
it with the expectations (hookql/testing/expect.py).
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time

from hookql.testing.workloads import Cgroup


def _skip(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _needs(layout: dict) -> str | None:
    """Why this kernel cannot run these probes at all, or None."""
    from hookql.runtime import features

    attach = {p["attach"] for p in layout["probes"]}
    if "lsm" in attach:
        why = features.bpf_lsm_hint()
        if why:
            return why
    if attach & {"kprobe", "kretprobe"} and not features.has_kprobes():
        return "this kernel has no kprobes (CONFIG_KPROBES, or kprobe events are off)"
    return None


def run_case(case: dict, scratch: str) -> dict:
    """One case of a plan: {"id", "object", "layout", "enforce", "scope", "workloads": [...]}."""
    from hookql.runtime.libbpf import LibbpfError
    from hookql.runtime.loader import LoadError
    from hookql.runtime.session import RunOptions, Session

    layout = case["layout"]
    why = _needs(layout)
    if why:
        return _skip(why)
    cg = Cgroup.create(str(case["index"]))
    if cg is None and case["scope"] == "workload":
        return _skip("the workload scope needs a cgroup v2 hierarchy HookQL can create a cgroup in "
                     "(mount cgroup2 at /sys/fs/cgroup), or write `scope host` in the case")
    spec = os.path.join(scratch, f"spec{case['index']}.json")
    out_file = os.path.join(scratch, f"workloads{case['index']}.json")
    with open(spec, "w") as f:
        json.dump({"cgroup": cg.path if cg else None, "out": out_file, "workloads": case["workloads"]}, f)
    limit = sum(w["timeout"] for w in case["workloads"]) + 60  # the driver ends first; this ends a stuck one
    opts = RunOptions(duration=limit, command=[sys.executable, "-m", "hookql.testing.workloads", spec],
                      format="json", enforce=case["enforce"],
                      cgroup=cg.id if cg is not None and case["scope"] == "workload" else 0)
    out, err = io.StringIO(), io.StringIO()
    session = Session(case["object"], layout, opts, out=out, err=err)
    try:
        session.run()
    except (LoadError, LibbpfError) as exc:
        if getattr(exc, "refused", False):  # this kernel cannot run the hook: said, skipped
            return {**_skip(str(exc)), "refused": True}
        hint = getattr(exc, "hint", None)
        msg = str(exc.strerror if isinstance(exc, LibbpfError) else exc) + (f" (hint: {hint})" if hint else "")
        return {"status": "error", "reason": f"could not load or attach: {msg}"}
    finally:
        left = cg.remove() if cg is not None else None
    if session.stopped_by is not None:
        raise KeyboardInterrupt
    try:
        with open(out_file) as f:
            workloads = json.load(f)
    except (OSError, ValueError):
        return {"status": "error", "reason": "the workloads did not finish (their runner was stopped)",
                "stderr": err.getvalue()[-4000:]}
    if len(workloads) != len(case["workloads"]):
        return {"status": "error", "reason": f"only {len(workloads)} of the {len(case['workloads'])} workloads ran "
                                             "(their runner was stopped)"}
    if left:
        return {"status": "error", "reason": left}
    result = {"status": "ran", "workloads": workloads, "aggregations": [], "events": [], "denies": [],
              "states": [], "lost": session.lost}
    for line in out.getvalue().splitlines():
        obj = json.loads(line)
        if "event" in obj:
            result["events"].append(obj)
        elif obj.get("aggregation") == "deny":
            result["denies"].append(obj)
        elif "aggregation" in obj:
            result["aggregations"].append(obj)
        else:
            result["states"].append(obj)
    return result


def run_plan(plan: list[dict], progress=None) -> list[dict]:
    scratch = tempfile.mkdtemp(prefix="hookql-test-")
    results = []
    try:
        for case in plan:
            if progress:
                progress(case)
            t0 = time.monotonic()
            try:
                results.append(run_case(case, scratch))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # a bug of HookQL's: this case errs, the others still run
                import traceback

                where = traceback.extract_tb(exc.__traceback__)[-1]
                results.append({"status": "error", "reason": f"internal error ({type(exc).__name__}: {exc}, at "
                                f"{os.path.basename(where.filename)}:{where.lineno}): a HookQL bug; please report it"})
            results[-1]["seconds"] = time.monotonic() - t0
    finally:
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)
    return results


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        plan = json.load(f)
    try:
        results = run_plan(plan)
    except KeyboardInterrupt:
        return 130
    if argv[1] == "-":  # in the VM: on standard output, marked (the host reads it back)
        from hookql.testing.runner import RESULT_MARK

        sys.stdout.write(RESULT_MARK + json.dumps(results) + "\n")
    else:
        with open(argv[1], "w") as f:
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
