"""The warm-path cache: which scripts it may replay by text alone, and entries that must not match."""
import os

import pytest

from hookql.cache import blobs, dirs
from hookql.cache import runs as runcache


@pytest.mark.parametrize("text,uses", [
    ("use x", True), ('  include "a.hq"', True), ("x\n use y", True), ("use", True), ("use-x", True),
    ("user", False), ("use1", False), ("use_x", False), ("including", False), ("on a { count }", False),
])
def test_scripts_that_use_other_files_are_not_cached_by_text(text, uses):
    assert (runcache.key("<-e>", text, "kprobe") is None) == uses


def test_an_entry_replays_only_for_its_own_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    obj = blobs.put("obj", "x.bpf.o", b"\x7fELF")
    k = runcache.key("<-e>", "on a:b { count }", "kprobe")
    runcache.store(k, "x.bpf.o", {"probes": [], "lhist": (0, 10, 5)}, ["a warning"])
    hit = runcache.load(k)
    assert hit["object"] == b"\x7fELF" and hit["diagnostics"] == ["a warning"] and hit["layout"]["lhist"] == (0, 10, 5)
    assert runcache.load(runcache.key("<-e>", "on a:b { count }", "fentry")) is None  # another attach mode
    # an entry found under another identity's file name (a checksum collision) is a miss
    other = runcache.key("<-e>", "on a:c { count }", "kprobe")
    run_dir = dirs.require("run")
    os.replace(os.path.join(run_dir, runcache._name(k)), os.path.join(run_dir, runcache._name(other)))
    assert runcache.load(other) is None
    os.unlink(obj)
    runcache.store(k, "x.bpf.o", {}, [])
    assert runcache.load(k) is None  # the object is gone from the cache
