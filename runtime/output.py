"""Printing results: text tables and bpftrace-style histograms, or JSON lines.

Every piece of text a table or header prints (keys such as comm, names as
written in the script, probe names, the script's file name) passes through
runtime/escape.py's escape_text: control characters never reach the terminal
raw.  JSON lines are escaped by json.dumps."""
from __future__ import annotations

import json
import sys

from hookql.runtime.decode import Row, display, duration_text
from hookql.runtime.escape import escape_text

BAR = 52


def bucket_bounds(agg: dict) -> list[tuple[int | None, int | None]]:
    """[lo, hi) of every slot; None is unbounded."""
    if agg["func"] == "hist":
        out = [(None, 0), (0, 1)]
        out += [(1 << i, 1 << (i + 1)) for i in range(agg["buckets"] - 2)]
        return out
    lo, hi, step = agg["lhist"]
    inner = [(lo + i * step, min(lo + (i + 1) * step, hi)) for i in range(agg["buckets"] - 2)]
    return [(None, lo), *inner, (hi, None)]


def _num(v: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if v and v % size == 0 and abs(v) >= size:
            return f"{v // size}{unit}"
    return str(v)


def bucket_label(lo, hi, func: str, unit: str | None = None) -> str:
    num = duration_text if unit == "ns" else _num  # a histogram of durations: bounds with units
    if func == "hist" and lo is not None and hi == lo + 1:
        return f"[{num(lo)}]"
    return f"{'(...' if lo is None else '[' + num(lo)}, {'...)' if hi is None else num(hi) + ')'}"


def _key_text(agg: dict, key: dict) -> list[str]:
    return [escape_text(_dur_or(key[f["name"]], f["display"])) for f in agg["by"]]


def _value_text(agg: dict, value) -> str:
    if value is None:
        return "-"
    return escape_text(_dur_or(value, agg["value_display"] if agg["func"] in ("min", "max", "sum", "avg") else None))


def _dur_or(value, kind: str | None):
    """Durations (display "ns") print with units in text; JSON keeps integer nanoseconds."""
    return duration_text(value) if kind == "ns" and isinstance(value, int) else display(value, kind)


def _sort_value(row: Row):
    v = row.value
    if isinstance(v, list):
        return sum(v)
    return v if v is not None else 0


def top_rows(rows: list[Row], top: int | None) -> tuple[list[Row], int]:
    """The rows largest first (the sum of a histogram's counts), at most `top` of them; and how many were left
    out.  Ties keep the map's order."""
    rows = sorted(rows, key=_sort_value, reverse=True)
    if top is None or len(rows) <= top:
        return rows, 0
    return rows[:top], len(rows) - top


def _clock(t: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


class _LineCounter:
    """Passes writes through, counting lines, so a live view can redraw itself."""

    def __init__(self, out):
        self.target = out
        self.lines = 0

    def write(self, s: str) -> None:
        self.lines += s.count("\n")
        self.target.write(s)

    def flush(self) -> None:
        self.target.flush()


class TextPrinter:
    def __init__(self, out=sys.stdout, source: str = "", top: int | None = None):
        self.out = _LineCounter(out)
        self.source = source
        self.top = top  # --top: at most this many rows of a keyed aggregation

    def interval(self, n: int, start: float, end: float) -> None:
        """--interval: what follows holds this interval's values only (wall-clock start and end)."""
        self.out.write(f"\n--- interval {n}: {_clock(start)} to {_clock(end)} ({end - start:.2f}s) ---\n")

    def erase(self) -> None:
        """Move back over everything printed so far and clear it (ANSI)."""
        if self.out.lines:
            self.out.target.write(f"\x1b[{self.out.lines}F\x1b[J")
            self.out.lines = 0

    def header(self, agg: dict) -> None:
        where = f"{escape_text(self.source)}:{agg['line']}" if self.source else f"line {agg['line']}"
        self.out.write(f"\n{escape_text(agg['probe'])}: {escape_text(agg['text'])}   [{where}]\n")

    def aggregation(self, agg: dict, rows: list[Row]) -> None:
        self.header(agg)
        if not rows or all(_sort_value(r) == 0 for r in rows):
            self.out.write("  (no events)\n")
            return
        rows, omitted = top_rows(rows, self.top if agg["by"] else None)
        more = f"  ... and {omitted} more\n" if omitted else ""
        if any(f["display"] == "kstack" for f in agg["by"]):
            self.stack_rows(agg, rows)
            self.out.write(more)
            return
        if agg["func"] in ("hist", "lhist"):
            for row in rows:
                if agg["by"]:
                    self.out.write("  " + "  ".join(f"{escape_text(f['name'])}={t}" for f, t in zip(agg["by"], _key_text(agg, row.key))) + "\n")
                self.histogram(agg, row.value)
            self.out.write(more)
            return
        head = [escape_text(h.upper()) for h in [f["name"] for f in agg["by"]] + [agg["func"]]]
        body = [_key_text(agg, r.key) + [_value_text(agg, r.value)] for r in rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        fmt = lambda cells: "  " + "  ".join(
            c.rjust(w) if i == len(cells) - 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        self.out.write(fmt(head).rstrip() + "\n")
        for cells in body:
            self.out.write(fmt(cells).rstrip() + "\n")
        self.out.write(more)

    def stack_rows(self, agg: dict, rows: list[Row]) -> None:
        """Rows keyed by a kernel stack, as bpftrace prints @[kstack]: the other keys and the value on one line,
        then each stack one frame a line, indented; every frame escaped (kallsyms is kernel text)."""
        for row in rows:
            cells = [f"{escape_text(f['name'])}={t}" for f, t in zip(agg["by"], _key_text(agg, row.key))
                     if f["display"] != "kstack"]
            if agg["func"] not in ("hist", "lhist"):
                cells.append(f"{escape_text(agg['func'])}={_value_text(agg, row.value)}")
            self.out.write("  " + "  ".join(cells) + "\n" if cells else "")
            for f in agg["by"]:
                if f["display"] == "kstack":
                    st = row.key[f["name"]]
                    lines = st.lines() if hasattr(st, "lines") else [str(st)]
                    self.out.write(f"  {escape_text(f['name'])}:\n" if len(agg["by"]) > 1 else "")
                    self.out.write("".join(f"        {escape_text(fr)}\n" for fr in lines))
            if agg["func"] in ("hist", "lhist"):
                self.histogram(agg, row.value)
            self.out.write("\n")

    def histogram(self, agg: dict, counts: list[int]) -> None:
        bounds = bucket_bounds(agg)
        used = [i for i, c in enumerate(counts) if c]
        if not used:
            self.out.write("  (no events)\n")
            return
        top = max(counts)
        labels = [bucket_label(*bounds[i], agg["func"], agg.get("value_display")) for i in range(used[0], used[-1] + 1)]
        lw = max(len(l) for l in labels)
        for label, i in zip(labels, range(used[0], used[-1] + 1)):
            bar = "@" * round(BAR * counts[i] / top) if top else ""
            self.out.write(f"  {label:<{lw}} {counts[i]:>10} |{bar:<{BAR}}|\n")

    def deny(self, probe: str, denied: int, would: int, enforce: bool) -> None:
        if enforce:
            self.out.write(f"\n{escape_text(probe)}: denied {denied}\n")
        else:
            self.out.write(f"\n{escape_text(probe)}: would deny {would} (run with --enforce to deny)\n")

    def flush(self) -> None:
        self.out.flush()


class JsonPrinter:
    """One JSON object per line: each aggregation per print, each emitted event."""

    def __init__(self, out=sys.stdout, source: str = "", top: int | None = None):
        self.out = out
        self.source = source
        self.top = top  # --top: "rows" holds at most this many, "omitted" says how many more there were
        self.extra: dict = {}  # --interval: {"interval": n, "start": t0, "end": t1} on each object

    def interval(self, n: int, start: float, end: float) -> None:
        self.extra = {"interval": n, "start": round(start, 6), "end": round(end, 6)}

    def _write(self, obj: dict) -> None:
        self.out.write(json.dumps({**obj, **self.extra}, default=str) + "\n")

    def aggregation(self, agg: dict, rows: list[Row]) -> None:
        out_rows = []
        shown, omitted = top_rows(rows, self.top if agg["by"] else None)
        for r in shown:
            key = {f["name"]: (_stack_json(r.key[f["name"]]) if f["display"] == "kstack" else
                               _jsonable(display(r.key[f["name"]], f["display"]))) for f in agg["by"]}
            if agg["func"] in ("hist", "lhist"):
                value = [{"min": lo, "max": hi, "count": c}
                         for (lo, hi), c in zip(bucket_bounds(agg), r.value) if c]
            else:
                value = _jsonable(r.value)
            out_rows.append({"key": key, "value": value})
        self._write({"probe": agg["probe"], "aggregation": agg["func"], "text": agg["text"], "line": agg["line"],
                     "by": [f["name"] for f in agg["by"]], "rows": out_rows,
                     **({"unit": "ns"} if agg.get("value_display") == "ns" else {}),
                     **({"omitted": omitted} if self.top is not None and agg["by"] else {})})

    def deny(self, probe: str, denied: int, would: int, enforce: bool) -> None:
        self._write({"probe": probe, "aggregation": "deny", "enforce": enforce, "denied": denied,
                     "would_deny": would})

    def flush(self) -> None:
        self.out.flush()


def _stack_json(v):
    """A kernel stack in JSON: its frames, innermost first; null when the kernel could not take it."""
    return v.json() if hasattr(v, "json") else v


def _jsonable(v):
    return v if isinstance(v, (int, float, str)) or v is None else str(v)
