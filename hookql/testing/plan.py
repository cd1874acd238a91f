"""Before anything runs: find the case files, read them, check and compile each case's script for the
kernel it will run on, and check every expectation against what the script has.

A case that cannot run is settled here, with why: an error (a case file or script that does not check,
an expectation on an aggregation the script does not have) or a skip (a requirement the target kernel
does not meet).  What is left becomes the plan the executor runs (here or in the VM).
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hookql.diagnostics import Diagnostic
from hookql.testing.cases import SUFFIX, WILD, Case, CaseError, Expect, normalise, read, read_regular

SKIP_DIRS = {".git", ".hookql", ".venv", "node_modules", "__pycache__"}


@dataclass
class Target:
    """The kernel the cases run on: this one, or one in the VM."""

    kernel: object  # hookql.kernel.Kernel: what scripts are checked against
    release: str  # its release (uname -r)
    mode: str  # how kprobe:/kretprobe: attach there
    label: str
    arch: str = "x86_64"  # uname -m there


@dataclass
class Outcome:
    file: Path
    name: str
    status: str  # "pass", "fail", "skip", "error"
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0
    case: Case | None = None
    note: str = ""  # e.g. what --accept wrote

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass
class Planned:
    case: Case
    layout: dict
    object_path: str
    aggs: dict[int, dict] = field(default_factory=dict)  # id(expect) -> its aggregation in the layout
    seconds: float = 0.0


# -- discovery ---------------------------------------------------------------------------------
def discover(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Every case file under these paths (a directory's, recursively; hidden directories, .git, .hookql and
    virtual environments left out), sorted; and the paths that do not exist."""
    found, missing = [], []
    for p in paths:
        if p.is_file() or (p.exists() and not p.is_dir()):
            found.append(p)  # not a regular file: load_file says so
        elif p.is_dir():
            for root, dirs, files in os.walk(p):  # symbolic links to directories are not followed
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                found += [Path(root) / f for f in sorted(files) if f.endswith(SUFFIX)]
        else:
            missing.append(str(p))
    seen, out = set(), []
    for f in found:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out, missing


def selected(case_id: str, patterns: list[str]) -> bool:
    """-k: a case whose `FILE::NAME` holds any pattern (case-insensitive; * and ? as in the shell)."""
    if not patterns:
        return True
    low = case_id.lower()
    return any(fnmatch.fnmatch(low, f"*{p.lower()}*") for p in patterns)


def load_file(path: Path) -> tuple[list[Case], Outcome | None]:
    """The cases of a case file; or an error outcome for the whole file (unsafe, unreadable, malformed)."""
    from hookql.cache.dirs import CacheError, trusted_file_path

    try:
        trusted_file_path(str(path))  # its workloads run as root: no one else may change it
    except CacheError as exc:
        return [], Outcome(path, "<file>", "error", [f"{path}: not safe to run: {exc}"])
    try:
        return read(path), None
    except CaseError as exc:
        return [], Outcome(path, "<file>", "error", [exc.diagnostic.render()])
    except (OSError, UnicodeDecodeError) as exc:
        return [], Outcome(path, "<file>", "error", [f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"])


# -- requirements ------------------------------------------------------------------------------
def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("-")[0])[:3])


def compare(a, op: str, b) -> bool:
    """a OP b, for the comparisons a case writes (== != >= <= > <)."""
    return {"==": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[op]


def unmet(case: Case, target: Target) -> str | None:
    """Why the target cannot run this case (a skip), or None."""
    from hookql.pipeline import check_source
    from hookql.source import Source

    for r in case.requires:
        if r.kind == "kernel":
            have, want = _version(target.release), _version(r.value)
            if not compare(have[:len(want)], r.op, want):
                return f"needs kernel {r.op} {r.value}; this is {target.release}"
        elif r.kind == "arch" and r.value != target.arch:
            return f"needs the {r.value} architecture; this is {target.arch}"
        elif r.kind == "command" and not shutil.which(r.value):
            return f"needs the command {r.value!r}, which is not on PATH"
        elif r.kind == "hook":
            result = check_source(Source("<requires>", f"on {r.value} {{ count }}"), target.kernel)
            if not result.ok:
                return f"needs {r.value}, which kernel {target.release} does not have"
    return None


# -- the script --------------------------------------------------------------------------------
def script_source(case: Case):
    """The Source of the script under test; CaseError when it cannot be read."""
    from hookql.source import Source

    if case.inline is not None:
        return case.inline
    from hookql.cache.dirs import CacheError, trusted_file_path

    path = case.script
    span = case.script_span or case.span
    try:
        trusted_file_path(str(path))  # loaded as root: no one else may change it (as the case file)
    except CacheError as exc:
        raise CaseError(Diagnostic("error", span, f"the script {path} is not safe to load: {exc}")) from None
    except OSError:
        pass  # it cannot be read: said below
    try:
        text = read_regular(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        hint = ('name it with script "PATH", or write the clauses in the case' if case.script_span is None
                else "the path is relative to the case file")
        raise CaseError(Diagnostic("error", span, f"cannot read the script {path}: {why}", hint)) from None
    return Source(str(path), text, real=os.path.realpath(path))


def compile_case(case: Case, target: Target, scratch: Path) -> Planned:
    """Check and build the case's script for the target; CaseError (rendered) when it does not."""
    from hookql.codegen.build import BuildError
    from hookql.codegen.escape import UnsafeCText
    from hookql.codegen.ir import LoweringError
    from hookql.pipeline import check_source, compile_checked

    src = script_source(case)
    result = check_source(src, target.kernel)
    if not result.ok:
        raise _Rendered([d.render() for d in result.diagnostics.sorted() if d.is_error])
    if not result.checked.clauses:
        raise CaseError(Diagnostic("error", case.script_span or case.span, "the script has no clauses: nothing to test",
                                   "a case tests a script with `on` clauses"))
    try:
        compiled = compile_checked(result.checked, target.mode)
    except LoweringError as exc:
        raise _Rendered([Diagnostic("error", exc.span, str(exc)).render()]) from None
    except (BuildError, UnsafeCText) as exc:
        raise _Rendered([f"{src.name}: error: could not build: {exc}"]) from None
    obj = scratch / f"case{len(list(scratch.iterdir()))}.bpf.o"
    obj.write_bytes(compiled.object)
    planned = Planned(case, compiled.layout, str(obj))
    check_expectations(planned)
    return planned


class _Rendered(Exception):
    """Diagnostics already rendered (the script's own, with its file:line:col)."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def describe_aggs(layout: dict) -> str:
    return ", ".join(f"`{a['text']}` (line {a['line']})" for a in layout["aggregations"]) or "none"


def _prefix_end(raw: str, name: str) -> int | None:
    """Where NAME ends in RAW when RAW starts with it, spacing aside; None when it does not."""
    want = "".join(name.split())
    i = k = 0
    while k < len(want):
        while i < len(raw) and raw[i].isspace():
            i += 1
        if i >= len(raw) or raw[i] != want[k]:
            return None
        i, k = i + 1, k + 1
    return i


def resolve(e: Expect, layout: dict) -> dict:
    """The aggregation an expectation names, and what follows its name there ([KEY], at line N, bucket V);
    CaseError when it names none, or two alike without `at line`."""
    from hookql.testing.cases import subject_tail

    raw, span = e.agg, e.agg_span
    found, first_error = [], None
    for a in layout["aggregations"]:
        plain = re.sub(r"\s+as\s+\w+$", "", a["text"])
        for name in sorted({n for n in (a.get("name"), a["text"], plain) if n}, key=len, reverse=True):
            end = _prefix_end(raw, name)
            if end is None:
                continue
            try:
                tail = subject_tail(span.source, span.line, raw[end:], span.col + end)
            except CaseError as exc:
                first_error = first_error or exc
                continue
            found.append((a, tail))
            break
    if not found and first_error is not None:
        raise first_error
    if not found:
        _fail(e, f"the script has no aggregation `{normalise(raw)}`",
              f"its aggregations: {describe_aggs(layout)}; name one as written, or by its `as` name", span)
    at = {tail[0] for _, tail in found} - {None}
    if at:
        found = [(a, t) for a, t in found if a["line"] in at]
        if not found:
            _fail(e, f"the script has no `{normalise(raw.split(' at ')[0])}` on line {at.pop()}",
                  f"its aggregations: {describe_aggs(layout)}", span)
    if len({a["map"] for a, _ in found}) > 1:
        lines = ", ".join(str(a["line"]) for a, _ in found)
        _fail(e, f"the script has more than one `{normalise(raw)}` (lines {lines})",
              "say which: expect AGG at line N ...", span)
    a, (_, e.key, e.bucket) = found[0]
    return a


def _fail(e: Expect, message: str, hint: str | None = None, span=None):
    raise CaseError(Diagnostic("error", span or e.span, message, hint))


def check_expectations(p: Planned) -> None:
    """Every expectation names what the script has, in a form that fits it (CaseError if not)."""
    layout, case = p.layout, p.case
    emit_fields = {f["name"] for r in layout["emits"] for f in r["fields"]}
    key_fields = {f["name"] for a in layout["aggregations"] for f in a["by"]}
    for e in case.expects:
        if e.kind in ("emit", "no emit", "emits") and not layout["emits"]:
            _fail(e, "the script emits nothing", "expect emit needs a clause with `emit ...`")
        if e.kind == "denied" and not any(pr["deny"] for pr in layout["probes"]):
            _fail(e, "the script has no `deny`", "expect denied needs a clause that denies")
        if e.kind != "agg":
            continue
        a = resolve(e, layout)
        p.aggs[id(e)] = a
        agg = a.get("name") or a["text"]
        hist = a["func"] in ("hist", "lhist")
        by = [f["name"] for f in a["by"]]
        if e.key is not None and not by:
            _fail(e, f"`{a['text']}` has no keys: it is one value", f"expect {agg} {e.op} N")
        if e.key is not None and len(e.key) != len(by):
            _fail(e, f"`{a['text']}` is keyed by {len(by)} value{'s' * (len(by) != 1)} ({', '.join(by)}); "
                     f"this row names {len(e.key)}", f"give one value per key: [{', '.join(by)}]")
        if isinstance(e.value, dict):
            if not by:
                _fail(e, f"`{a['text']}` has no keys: compare it with a number", f"expect {agg} == N")
            if hist:
                _fail(e, "a histogram is compared bucket by bucket", f"expect {agg}[KEY] bucket VALUE == N")
            for k in e.value:
                if len(k) != len(by):
                    _fail(e, f"a row of this table names {len(k)} value{'s' * (len(k) != 1)}; "
                             f"`{a['text']}` is keyed by {', '.join(by)}",
                          "a row with several keys is written (K1, K2): N")
        elif by and e.key is None:
            _fail(e, f"`{a['text']}` has a row per {', '.join(by)}",
                  f"expect one row (expect {agg}[KEY] {e.op} N) or the table (expect {agg} == {{KEY: N}})")
        _check_names(e, a, [e.key] if e.key is not None else list(e.value) if isinstance(e.value, dict) else [])
        if e.key is not None and WILD in e.key and a["func"] not in ("count", "sum", "hist", "lhist"):
            _fail(e, f"* adds up the rows it matches; `{a['text']}` ({a['func']}) cannot be added up",
                  "name each key of the row")
        if e.bucket is not None and not hist:
            _fail(e, f"`{a['text']}` is not a histogram: it has no buckets", f"expect {agg}... {e.op} N")
        if hist and e.bucket is None:
            _fail(e, "a histogram is compared bucket by bucket",
                  f"expect {agg}{'[KEY]' if by else ''} bucket VALUE {e.op} N (the bucket holding VALUE)")
    for m in case.masks:
        if m not in emit_fields | key_fields:
            raise CaseError(Diagnostic("error", case.mask_spans.get(m, case.golden[1]),
                                       f"mask {m}: no key or emitted field is named {m}",
                                       f"keys: {', '.join(sorted(key_fields)) or 'none'}; emitted: "
                                       f"{', '.join(sorted(emit_fields)) or 'none'}"))


def _check_names(e: Expect, a: dict, keys: list[tuple]) -> None:
    """A key written as a name (an errno, an enum value) must be one its field prints: caught before anything
    runs, not as a row that never comes."""
    import difflib

    from hookql.runtime.events import _names

    for key in keys:
        for part, f in zip(key, a["by"]):
            if part is WILD or re.fullmatch(r"-?\d+", part):
                continue
            names = [t for _, t in _names(f.get("display"), False)]
            if names and part not in names:
                close = difflib.get_close_matches(part, names, 1)
                _fail(e, f"`{part}` is not a value of {f['name']}",
                      f"did you mean {close[0]}?" if close else f"it prints as one of: {', '.join(sorted(names)[:8])}, ...")


def plan_entry(index: int, p: Planned) -> dict:
    """What the executor needs of a case (JSON)."""
    cwd = str(p.case.file.parent.resolve())
    return {"index": index, "id": p.case.id, "object": p.object_path, "layout": p.layout,
            "enforce": p.case.enforce, "scope": p.case.scope,
            "workloads": [{"command": w.command, "timeout": w.timeout, "cwd": cwd} for w in p.case.workloads]}
