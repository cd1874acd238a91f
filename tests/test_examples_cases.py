"""Every example has test cases, and the project runs them through `hookql test` as a user would: here for
those on tracepoints, in the VM (`--kernel 6.1`, one boot for all) for those on kprobes and LSM hooks."""
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, hookql_cmd

EXAMPLES = REPO / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.hq"))


def _needs_vm(script) -> bool:
    """Whether the script has a clause on a kprobe or LSM hook (this machine cannot attach those)."""
    return bool(re.search(r"^\s*on\s+(kprobe|kretprobe|lsm):", script.read_text(), re.M))


NATIVE = {p.stem for p in SCRIPTS if not _needs_vm(p)}
VM = {p.stem for p in SCRIPTS if _needs_vm(p)}


def _junit(tmp_path, *args, timeout):
    out = tmp_path / "results.xml"
    env = {**os.environ, "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(tmp_path / "cache"))}
    r = subprocess.run(hookql_cmd() + ["test", "--junit", str(out), *args], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    cases = {}
    for tc in ET.parse(out).getroot().iter("testcase"):
        status = next((c.tag for c in tc if c.tag in ("failure", "error", "skipped")), "pass")
        cases.setdefault(os.path.basename(tc.get("classname")).removesuffix(".hqt"), []).append(
            (tc.get("name"), status, tc.get("time")))
    return r, cases


def test_every_example_and_the_library_has_cases():
    missing = [p.name for p in SCRIPTS if not p.with_suffix(".hqt").exists()]
    assert not missing, f"examples without test cases: {missing}"
    assert list((EXAMPLES / "netlib").glob("*.hqt")), "examples/netlib has no test cases"


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_the_examples_cases_pass_here(tmp_path):
    r, cases = _junit(tmp_path, "examples", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in NATIVE | {"netlib"}:
        assert cases.get(name), f"no cases ran for {name}"
        assert all(s == "pass" for _, s, _ in cases[name]), (name, cases[name], r.stdout)
    for name in VM:  # kprobes and LSM: skipped here with the reason, never passed
        assert cases.get(name) and all(s == "skipped" for _, s, _ in cases[name]), (name, cases.get(name))
    print("\n" + r.stdout)


@pytest.mark.vm
def test_the_examples_cases_pass_in_the_vm(tmp_path):
    if os.environ.get("HOOKQL_SKIP_VM"):
        pytest.skip("HOOKQL_SKIP_VM is set")
    files = [str(EXAMPLES / f"{n}.hqt") for n in sorted(VM)]
    r, cases = _junit(tmp_path, "--kernel", "6.1", *files, timeout=2400)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in VM:
        assert cases.get(name) and all(s == "pass" for _, s, _ in cases[name]), (name, cases.get(name), r.stdout)
    assert "in a VM" in r.stdout.splitlines()[-1]
    print("\n" + r.stdout)
