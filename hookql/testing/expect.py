"""A case's results against its expectations: what failed, as expected against actual.

Keys and emitted values are compared as `hookql run` prints them (a name for an enum or an errno, an
address as text); a count or sum with no row is 0.  The golden form of the results (golden "FILE") is
text: each aggregation's rows sorted, then each emitted event, masked fields as `*`.
"""
from __future__ import annotations

import difflib
import ipaddress
import re

from hookql.runtime.escape import escape_text
from hookql.testing.cases import WILD, Case, Expect
from hookql.testing.plan import Planned, compare

MAX_LISTED = 12


def _where(e: Expect) -> str:
    s = e.span
    return f"{escape_text(s.source.name, backslash=False)}:{s.line}:{s.col}"


def _text(v) -> str:
    if isinstance(v, float):  # walltime: seconds
        return f"{v:.6f}"
    return "" if v is None else str(v)


def same_key(want: str, got) -> bool:
    if want is WILD:
        return True
    g = _text(got)
    if g == want:
        return True
    try:
        return ipaddress.ip_address(want) == ipaddress.ip_address(g)
    except ValueError:
        return False


def key_text(key: tuple) -> str:
    return ", ".join(escape_text(k) for k in key)


def _row_key(row: dict, by: list[str]) -> tuple:
    return tuple(_text(row["key"][b]) for b in by)


def _find_row(rows: list[dict], by: list[str], key: tuple) -> dict | None:
    return next((r for r in rows if all(same_key(k, r["key"][b]) for k, b in zip(key, by))), None)


def _added(rows: list[dict]) -> dict:
    """Rows of a count, sum or histogram added into one."""
    if isinstance(rows[0]["value"], list):
        buckets: dict = {}
        for r in rows:
            for b in r["value"]:
                k = (b["min"], b["max"])
                buckets[k] = buckets.get(k, 0) + b["count"]
        return {"key": {}, "value": [{"min": lo, "max": hi, "count": c} for (lo, hi), c in buckets.items()]}
    return {"key": {}, "value": sum(r["value"] for r in rows)}


def _bucket(value: list[dict], v: int) -> int:
    for b in value:
        if (b["min"] is None or b["min"] <= v) and (b["max"] is None or v < b["max"]):
            return b["count"]
    return 0


def _shown(v, unit: str | None) -> str:
    """A value of an emitted event as `hookql run` prints it in text: a duration with its unit, a walltime
    as the time of day, the rest as JSON had it."""
    if unit == "ns" and isinstance(v, int):
        from hookql.runtime.decode import duration_text

        return duration_text(v)
    if isinstance(v, float):  # walltime: seconds since the epoch
        import time

        return time.strftime("%H:%M:%S", time.localtime(v))
    return _text(v)


def event_line(event: dict, masks: set[str] = frozenset()) -> str:
    """An emitted event as `hookql run` prints it: name=value ..., escaped (a kernel stack left out)."""
    units = event.get("units", {})
    return " ".join(f"{escape_text(k)}={'*' if k in masks else escape_text(_shown(v, units.get(k)))}"
                    for k, v in event["event"].items() if not isinstance(v, list))


def _pattern(e: Expect) -> str:
    """An emit expectation as the case wrote it: ~ "RE" or "LINE" (control characters escaped)."""
    body = escape_text(e.value, backslash=False)
    return f'~ "{body}"' if e.pattern else f'"{body}"'



def _result_agg(result: dict, agg: dict) -> dict | None:
    return next((a for a in result["aggregations"] if a["text"] == agg["text"] and a["line"] == agg["line"]), None)


def script_name(case: Case) -> str:
    """The script as failures name it: its path as the case gives it, or the case file for inline clauses."""
    import os

    path = case.inline.name if case.inline is not None else os.path.relpath(case.script) \
        if not os.path.relpath(case.script).startswith("..") else str(case.script)
    return escape_text(path, backslash=False)


def _agg_check(e: Expect, agg: dict, got: dict | None, script: str) -> list[str]:
    rows = got["rows"] if got else []
    by = [f["name"] for f in agg["by"]]
    additive = agg["func"] in ("count", "sum", "hist", "lhist")
    where = f"`{escape_text(agg['text'])}` ({script}:{agg['line']})"
    if isinstance(e.value, dict):
        out = []
        matched = set()
        for key, want in e.value.items():
            row = _find_row(rows, by, key)
            if row is None and want == 0 and additive:
                continue  # a count or sum with no row is 0
            if row is None:
                out.append(f"  [{key_text(key)}]: expected {want}, no such row")
                continue
            matched.add(id(row))
            if row["value"] != want:
                out.append(f"  [{key_text(key)}]: expected {want}, got {row['value']}")
        extra = [r for r in rows if id(r) not in matched]
        for r in extra[:MAX_LISTED]:
            out.append(f"  [{key_text(_row_key(r, by))}]: {r['value']}, not expected")
        if len(extra) > MAX_LISTED:
            out.append(f"  ... and {len(extra) - MAX_LISTED} more rows not expected")
        return [f"{where} is not the table expected:", *out] if out else []
    if e.key is not None and WILD in e.key:  # the rows it matches, added up
        hits = [r for r in rows if all(same_key(k, r["key"][b]) for k, b in zip(e.key, by))]
        row = _added(hits) if hits else None
        label = f"{where}[{key_text(e.key)}]"
    elif e.key is not None:
        row = _find_row(rows, by, e.key)
        label = f"{where}[{key_text(e.key)}]"
    else:
        row = rows[0] if rows else None
        label = where
    if e.bucket is not None:
        have = _bucket(row["value"], e.bucket) if row else 0
        label += f" bucket holding {e.bucket}"
    elif row is None:
        if not additive:
            near = ", ".join(key_text(_row_key(r, by)) for r in rows[:MAX_LISTED])
            return [f"{label}: no such row" + (f" (rows: {near})" if near else " (no rows)")]
        have = 0
    else:
        have = row["value"]
    if have is None or not compare(have, e.op, e.value):
        extra = ""
        if e.key is not None and row is None and rows:
            extra = f" (no such row; rows: {', '.join(key_text(_row_key(r, by)) for r in rows[:MAX_LISTED])})"
        return [f"{label}: expected {e.op} {e.value}, got {have}{extra}"]
    return []


def _emit_checks(case: Case, result: dict) -> list[str]:
    lines = [event_line(ev) for ev in result["events"]]
    used: set[int] = set()
    start, out = 0, []
    for e in case.expects:
        if e.kind == "emits":
            if not compare(len(lines), e.op, e.value):
                out.append(f"{_where(e)}: expected {e.op} {e.value} emitted events, got {len(lines)}")
            continue
        match = lambda l: re.search(e.value, l) if e.pattern else l == e.value  # noqa: E731
        if e.kind == "no emit":
            bad = [l for l in lines if match(l)]
            if bad:
                shown = "\n".join(f"      {l}" for l in bad[:MAX_LISTED])
                out.append(f"{_where(e)}: expected no emitted event {'matching' if e.pattern else 'that is'} "
                           f"{_pattern(e)}; {len(bad)} were:\n{shown}")
            continue
        if e.kind != "emit":
            continue
        hit = next((i for i in range(start if case.ordered else 0, len(lines))
                    if i not in used and match(lines[i])), None)
        if hit is None:
            shown = "\n".join(f"      {l}" for l in lines[:MAX_LISTED]) or "      (none)"
            more = f"\n      ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
            how = f"matches {_pattern(e)}" if e.pattern else f"is {_pattern(e)}"
            order = " after the events matched above" if case.ordered and used else ""
            out.append(f"{_where(e)}: no emitted event {how}{order}; the events were:\n{shown}{more}")
        else:
            used.add(hit)
            start = hit + 1
    return out


def _workload_checks(case: Case, result: dict) -> tuple[list[str], list[str]]:
    """(the workloads' failures, notes on them that fail nothing)."""
    out, notes = [], []
    if len(result["workloads"]) != len(case.workloads):
        return [f"only {len(result['workloads'])} of the {len(case.workloads)} workloads ran"], notes
    for w, r in zip(case.workloads, result["workloads"]):
        where = f"{escape_text(w.span.source.name, backslash=False)}:{w.span.line}:{w.span.col}"
        cmd = escape_text(w.command)
        if "error" in r:
            out.append(f"{where}: the workload did not run: {escape_text(r['error'])}: {cmd}")
            continue
        tail = escape_text(r["stderr"].strip()[-800:])
        if r["not_found"]:
            out.append(f"{where}: the workload's command was not found: {cmd}\n      {tail}")
        elif r["timed_out"]:
            out.append(f"{where}: the workload did not finish in {w.timeout:g}s and was killed "
                       f"(with everything it started): {cmd}")
        elif w.exits is not None and r["status"] != w.exits:
            out.append(f"{where}: the workload exited {r['status']}, expected {w.exits}: {cmd}"
                       + (f"\n      stderr: {tail}" if tail else ""))
        for name in ("stdout", "stderr"):
            pat = getattr(w, name)
            if pat and not re.search(pat[0], r[name]):
                shown_pat = escape_text(pat[0], backslash=False)
                out.append(f"{where}: the workload's {name} has nothing matching ~ \"{shown_pat}\": "
                           f"{escape_text(r[name].strip()[-400:]) or '(empty)'}")
        if r["left_running"] and not r["timed_out"]:
            notes.append(f"{where}: note: the workload left {r['left_running']} process(es) running; they were killed")
    return out, notes


def evaluate(p: Planned, result: dict) -> tuple[list[str], list[str]]:
    """(every failure of a case that ran, [] when it passed; notes that fail nothing)."""
    case = p.case
    out, notes = _workload_checks(case, result)
    if not case.allow_loss:
        out += [f"lost: {escape_text(m)} (write `allow loss` in the case if that is expected)" for m in result["lost"]]
    for e in case.expects:
        if e.kind == "agg":
            agg = p.aggs[id(e)]
            fails = _agg_check(e, agg, _result_agg(result, agg), script_name(case))
            out += [f"{_where(e)}: {fails[0]}", *fails[1:]] if fails else []
        elif e.kind == "denied":
            n = sum(d["denied"] + d["would_deny"] for d in result["denies"])
            if not compare(n, e.op, e.value):
                out.append(f"{_where(e)}: expected {e.op} {e.value} events denied"
                           f"{'' if case.enforce else ' (would deny: no `enforce`)'}, got {n}")
    out += _emit_checks(case, result)
    return out, notes


# -- golden files ------------------------------------------------------------------------------
def golden_text(p: Planned, result: dict) -> str:
    """The case's results as text: stable for the same events (rows sorted, masked fields as *)."""
    from hookql.runtime.output import bucket_label

    masks = set(p.case.masks)
    out = [f"# {escape_text(p.case.name)}: written by `hookql test --accept`"]
    for agg in p.layout["aggregations"]:
        got = _result_agg(result, agg)
        by = [f["name"] for f in agg["by"]]
        out.append(f"{escape_text(agg['text'])} (line {agg['line']})")
        rows = []
        for r in (got["rows"] if got else []):
            key = ", ".join("*" if b in masks else escape_text(_text(r["key"][b])) for b in by)
            if agg["func"] in ("hist", "lhist"):
                for b in r["value"]:
                    label = bucket_label(b["min"], b["max"], agg["func"])
                    rows.append(f"  {key + ' ' if by else ''}{label} {b['count']}")
            else:
                rows.append(f"  {key + ': ' if by else ''}{_text(r['value'])}")
        out += sorted(rows) if by else rows
    for d in result["denies"]:
        out.append(f"deny {escape_text(d['probe'])}: {d['denied']} denied, {d['would_deny']} would deny")
    for ev in result["events"]:
        out.append(f"emit {event_line(ev, masks)}")
    return "\n".join(out) + "\n"


def golden_diff(expected: str, actual: str, path: str) -> list[str]:
    diff = list(difflib.unified_diff(expected.splitlines(), actual.splitlines(), f"{path} (golden)",
                                     f"{path} (actual)", lineterm="", n=1))
    if len(diff) > 60:
        diff = diff[:60] + [f"... {len(diff) - 60} more lines of diff"]
    return [escape_text(l, backslash=False) for l in diff]
