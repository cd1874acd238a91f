"""The warm-path cache: which scripts it may replay by text alone, and entries that must not match."""
import os

import pytest

from hookql import runcache


@pytest.mark.parametrize("text,uses", [
    ("use x", True), ('  include "a.hq"', True), ("x\n use y", True), ("use", True), ("use-x", True),
    ("user", False), ("use1", False), ("use_x", False), ("including", False), ("on a { count }", False),
])
def test_scripts_that_use_other_files_are_not_cached_by_text(text, uses):
    assert (runcache.key("<-e>", text, "kprobe") is None) == uses


def test_an_entry_replays_only_for_its_own_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    obj = tmp_path / "x.bpf.o"
    obj.write_bytes(b"\x7fELF")
    k = runcache.key("<-e>", "on a:b { count }", "kprobe")
    runcache.store(k, obj, {"probes": [], "lhist": (0, 10, 5)}, ["a warning"])
    hit = runcache.load(k)
    assert hit["object"] == str(obj) and hit["diagnostics"] == ["a warning"] and hit["layout"]["lhist"] == (0, 10, 5)
    assert runcache.load(runcache.key("<-e>", "on a:b { count }", "fentry")) is None  # another attach mode
    # an entry found under another identity's file name (a checksum collision) is a miss
    other = runcache.key("<-e>", "on a:c { count }", "kprobe")
    os.replace(runcache._path(k), runcache._path(other))
    assert runcache.load(other) is None
    obj.unlink()
    runcache.store(k, obj, {}, [])
    assert runcache.load(k) is None  # the object is gone from the cache
