"""Script libraries, first part: `def` predicates, `use NAME[.mod]` through
hookql.toml path dependencies, errors in library files."""
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from hookql.pipeline import check_source
from hookql.source import Source

from conftest import REPO, check, hookql_cmd

WORKLOAD = Path(__file__).with_name("workload.py")


def lib(tmp_path, files: dict[str, str], deps='mylib = { path = "mylib" }') -> Path:
    (tmp_path / "hookql.toml").write_text(f"[package]\nname = \"app\"\nversion = \"0.1.0\"\n\n[dependencies]\n{deps}\n")
    for name, text in files.items():
        p = tmp_path / "mylib" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def check_file(path: Path, kernel):
    return check_source(Source.from_path(path), kernel)


def test_def_with_parameters_is_checked_at_its_use(k618):
    d = check("def private(a) = a in 10.0.0.0/8 or a in 192.168.0.0/16\n"
              "on lsm:socket_connect where private(daddr) { count }\n"
              "on lsm:socket_connect where private(comm) { count }\n", k618)
    errs = [x for x in d if x.is_error]
    assert errs and all(e.span.line == 1 for e in errs)  # the error is in the def's body...
    assert errs[0].message == "comm (string) cannot be in 10.0.0.0/8 (IPv4 network)"
    (note,) = errs[0].notes  # ...and says where it was used
    assert (note.span.line, note.span.col) == (3, 29) and note.message == "in private(...), used here"


def test_def_arity_and_unknown_names(k618):
    d = [x for x in check("def web(p) = p in {80, 443}\n"
                          "on lsm:socket_connect where web(1, 2) or wbe(dport) { count }", k618) if x.is_error]
    assert [(x.span.line, x.span.col, x.message) for x in d] == [
        (2, 29, "web() takes 1 argument (p), got 2"), (2, 42, "unknown predicate 'wbe'")]
    assert d[1].hint == "did you mean 'web'?"


def test_use_library_and_module_through_the_manifest(tmp_path, k618):
    root = lib(tmp_path, {"lib.hq": "const RFC1918 = {10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16}\n"
                                    "def private(a) = a in RFC1918\n",
                          "ports.hq": "const WEB = {80, 443}\n"})
    script = root / "s.hq"
    script.write_text("use mylib\nuse mylib.ports\n"
                      "on lsm:socket_connect where mylib.private(daddr) and dport in mylib.ports.WEB { count }\n")
    r = check_file(script, k618)
    assert r.ok, [d.render() for d in r.diagnostics]
    assert r.checked.consts["mylib.ports.WEB"].value == frozenset({80, 443})


def test_error_in_a_library_points_into_the_library_file(tmp_path, k618):
    root = lib(tmp_path, {"lib.hq": "def bad(a) = a == 5\n"})
    script = root / "s.hq"
    script.write_text("use mylib\non lsm:socket_connect where mylib.bad(comm) { count }\n")
    (err,) = [d for d in check_file(script, k618).diagnostics if d.is_error]
    assert err.span.source.name.endswith("mylib/lib.hq") and (err.span.line, err.span.col) == (1, 16)
    assert err.notes[0].span.source.name == str(script) and err.notes[0].span.line == 2


def test_unknown_library_missing_module_and_no_manifest(tmp_path, k618):
    root = lib(tmp_path, {"lib.hq": "const X = 1\n"})
    script = root / "s.hq"
    script.write_text("use nolib\nuse mylib.nomod\non lsm:socket_connect { count }\n")
    errs = [d for d in check_file(script, k618).diagnostics if d.is_error]
    assert errs[0].message.startswith("unknown library 'nolib'") and "declares: mylib" in errs[0].message
    assert "library 'mylib' has no module 'nomod'" in errs[1].message
    bare = Path(tempfile.mkdtemp(prefix="hq-nomanifest-"))  # no hookql.toml above it
    (bare / "s.hq").write_text("use mylib\non lsm:socket_connect { count }\n")
    (err,) = [d for d in check_file(bare / "s.hq", k618).diagnostics if d.is_error]
    assert err.message == "unknown library 'mylib'"
    assert err.hint.startswith("there is no hookql.toml above") and "[dependencies]" in err.hint


def test_library_modules_define_no_clauses(tmp_path, k618):
    root = lib(tmp_path, {"lib.hq": "on lsm:socket_connect { count }\n"})
    (root / "s.hq").write_text("use mylib\non lsm:socket_connect { count }\n")
    (err,) = [d for d in check_file(root / "s.hq", k618).diagnostics if d.is_error]
    assert "clauses belong in the scripts that use it" in err.message


def test_include_takes_a_modules_clauses(tmp_path, k618):
    from hookql.pipeline import generate_c

    root = lib(tmp_path, {"monitors.hq": "const WATCH = 4444\n"
                                         "on lsm:socket_connect where dport == WATCH { count by comm }\n"})
    (root / "s.hq").write_text("include mylib.monitors\non lsm:socket_bind { count }\n")
    r = check_file(root / "s.hq", k618)
    assert r.ok, [d.render() for d in r.diagnostics]
    probes = [c.hook.probe for c in r.checked.clauses]
    assert probes == ["lsm:socket_bind", "lsm:socket_connect"]
    assert r.checked.clauses[1].span.source.name.endswith("mylib/monitors.hq")  # errors would point there
    c_source, layout = generate_c(r.checked)
    assert [p["text"] for p in layout["probes"]] == probes


def test_example_library_checks(k618):
    r = check_file(REPO / "examples" / "uses_netlib.hq", k618)
    assert r.ok, [d.render() for d in r.diagnostics]


@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")
def test_script_using_a_library_runs_for_real(tmp_path):
    comm = "hq" + uuid.uuid4().hex[:8]
    root = lib(tmp_path, {"lib.hq": f'def ours(c) = c == "{comm}"\n', "opts.hq": "def rcvbuf(o) = o == SO_RCVBUF\n"})
    script = root / "s.hq"
    script.write_text("use mylib\nuse mylib.opts\n"
                      "on tracepoint:syscalls:sys_enter_getsockopt where mylib.ours(comm) and mylib.opts.rcvbuf(optname)"
                      " { count by comm }\n")
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(script), "-c",
                                       f"{sys.executable} {WORKLOAD} {comm} 3 5"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    (agg,) = [json.loads(l) for l in r.stdout.splitlines()]
    assert agg["rows"] == [{"key": {"comm": comm}, "value": 5}]
