"""Every example compiles with clang; on this kernel, every program type it
allows (kprobe, kretprobe, tracepoint) passes libbpf's open and the verifier.
LSM programs are refused here (EPERM), so they get libbpf's open and map
creation; the kernel test tier loads and fires them in a VM."""
import os
import shutil
import subprocess

import pytest

from hookql import kernel as K
from hookql.pipeline import check_source, compile_checked
from hookql.runtime.loader import BpfObject
from hookql.source import Source

from conftest import EXAMPLES, hookql_cmd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


@pytest.fixture(scope="module")
def kern():
    return K.running()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["kprobe", "fentry"])
def test_example_compiles(path, mode, kern):
    result = check_source(Source.from_path(path), kern)
    compiled = compile_checked(result.checked, mode)
    assert compiled.object[:4] == b"\x7fELF"


@needs_root
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_opens_and_verifies_where_this_kernel_allows(path, kern):
    result = check_source(Source.from_path(path), kern)
    compiled = compile_checked(result.checked, "kprobe")
    verifiable = {p["func"] for p in compiled.layout["probes"] if p["attach"] in ("kprobe", "kretprobe", "tp")}
    with BpfObject(compiled.object, compiled.layout) as obj:
        obj.configure(enforce=True)
        obj.only(verifiable)
        obj.load()  # raises LoadError with the verifier's log on rejection


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop capabilities")
def test_unprivileged_run_says_what_is_needed():
    # root without capabilities: the kernel refuses bpf() exactly as for a normal user
    cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] + hookql_cmd()
    r = subprocess.run(cmd + ["run", "-e", "on tracepoint:syscalls:sys_enter_getsockopt { count }"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "needs privileges" in r.stderr and "CAP_BPF" in r.stderr and "Traceback" not in r.stderr
