"""Metric names, HELP text, label names and label values for a script's aggregations.

A name comes from the script where the author gives one (`count by comm as tcp_connects` ->
hookql_tcp_connects_total); otherwise it is derived from what is stable about the aggregation: the
script's file name, the probe and the function and keys (hookql_connect_lsm_socket_connect_count_by_comm).
Line numbers stay out of names (an edit above a clause would rename its metric); two aggregations
that would share a name get _2, _3 in the file's order.
"""
from __future__ import annotations

import os
import re

PREFIX = "hookql_"
_BAD = re.compile(r"[^a-zA-Z0-9_]+")
MAX_NAME = 200
# Where a value's unit is known: durations are exported in seconds, sizes in bytes (Prometheus's base units).
SIZE_NAMES = {"size", "len", "length", "bytes", "copied", "size_goal"}


def sanitize(text: str) -> str:
    """Any text as a metric or label name part: [a-zA-Z0-9_], runs of others as one '_', no leading digit."""
    out = _BAD.sub("_", text).strip("_")
    if not out or out[0].isdigit():
        out = "_" + out
    return out[:MAX_NAME]


def unit(agg: dict) -> str | None:
    """'seconds' for durations (nanoseconds in the kernel), 'bytes' for a size field, else None."""
    if agg.get("value_display") == "ns":
        return "seconds"
    value = agg.get("value_name") or ""
    last = value.rsplit(".", 1)[-1]
    if agg["func"] != "count" and (last in SIZE_NAMES or last.endswith("_bytes")):
        return "bytes"
    return None


def base_name(script: str, agg: dict) -> str:
    """The metric's name without _total/_sum/...: hookql_<alias>, or derived (see the module)."""
    u = unit(agg)
    if agg.get("name"):
        name = PREFIX + agg["name"]
    else:
        stem = os.path.splitext(os.path.basename(script))[0]
        probe = agg["probe"].split(",")[0].strip()  # a probe list: its first probe names it
        keys = [k["name"] for k in agg["by"]]
        value = agg.get("value_name")
        parts = [stem, probe, agg["func"] + (f"_{value}" if value else "")] + (["by", *keys] if keys else [])
        name = PREFIX + sanitize("_".join(parts))
    if u and not name.endswith("_" + u):
        name += "_" + u
    return sanitize(name)


def label_names(agg: dict) -> list[str]:
    """A label per `by` key, from how the key is written (`sk.sk_rcvbuf` -> sk_sk_rcvbuf); unique."""
    out: list[str] = []
    for k in agg["by"]:
        name = sanitize(k["name"])
        if name.startswith("__"):  # reserved for Prometheus's own labels
            name = "k" + name
        while name in out or name in ("le", "quantile"):
            name += "_"
        out.append(name)
    return out


def help_text(agg: dict, where: str) -> str:
    """HELP: the aggregation's source text and where it is (prometheus_client escapes it)."""
    text = " ".join(agg["text"].split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{text} on {agg['probe']} ({where}:{agg['line']})"


# The service's own metrics (selfmetrics.py): no aggregation may take one of these names.
RESERVED = {"hookql_build_info", "hookql_script_info", "hookql_reloads", "hookql_drains", "hookql_probe_runs",
            "hookql_probe_run_seconds", "hookql_kernel_events", "hookql_deny", "hookql_map_entries",
            "hookql_map_capacity", "hookql_series", "hookql_series_overflow"}


def unique(names: list[str]) -> list[str]:
    """Names as given, but for a later one that would be the same family as an earlier one or a self-metric
    (`x` and `x_total` are one counter family): _2, _3... in order.  Two families of one name make the whole
    exposition invalid, and Prometheus would reject every scrape."""
    taken = set(RESERVED)
    out = []
    for n in names:
        base = n[:-len("_total")] if n.endswith("_total") else n
        name, i = base, 1
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        out.append(name)
    return out
