"""`hookql check --serve`: warnings about what a script means once served, where the checker alone has
nothing to say.

A `by` key whose values never stop coming (a new pid with every process) makes one Prometheus series
per value; `hookql serve` keeps at most --series-cap label sets per metric and folds the rest into one
__overflow__ series (hookql/serve/series.py), so such a metric soon says little per label.  Warned about:
process and thread ids (`pid`, `tid`, and any field of type pid_t or named like one: `args.pid`,
`parent_pid`), IP addresses, `sport` (the local port: ephemeral ports on the connecting side), `cgroup`
(every login session and transient unit is a new cgroup), timestamps and durations.  Not warned about:
`comm` (programs' names: few in practice), `dport` and other ports (services), uid/gid, cpu,
`container` and `pod` (what runs on the node), enum-like and errno keys, `kstack` (code paths).
A computed key (`pid % 10`) is the author's choice and is left alone.
"""
from __future__ import annotations

import re

from hookql import nodes as n
from hookql.types import NS, TS

_PID_NAME = re.compile(r"(^|_)(p?pid|tgid|tid)$")


def unbounded(e: n.Expr) -> str | None:
    """What makes a `by` key's values unbounded, in words, or None when they are not (or not known to be)."""
    ty = e.ty
    if ty is None or not isinstance(e, (n.Name, n.Member)):
        return None
    field = getattr(e, "symbol", None)
    kind, name = getattr(field, "kind", None), getattr(field, "name", None)
    if kind == "builtin":
        return {"pid": "a process id", "tid": "a thread id", "cgroup": "a cgroup (every session and transient "
                "unit is a new one)"}.get(name) or _by_type(ty)
    if name == "sport" or getattr(field, "recipe", None) == "sport":
        return "a local port (ephemeral on the connecting side)"
    if ty.kind == "int" and (ty.cname == "pid_t" or _PID_NAME.search(name or getattr(e, "name", "") or "")):
        return "a process or thread id"
    return _by_type(ty)


def _by_type(ty) -> str | None:
    if ty.kind == "addr":
        return "an address"
    if ty.kind == "int" and ty.display == TS:
        return "a timestamp"
    if ty.kind == "int" and ty.display == NS:
        return "a duration"
    return None


def warn_unbounded_keys(checked, diags, cap: int) -> None:
    """A warning at each `by` key of an aggregation whose values are unbounded (see the module)."""
    seen = set()  # a probe list's clauses are copies of one: each key warned about once
    for clause in checked.clauses:
        for a in clause.actions:
            if not isinstance(a, n.Aggregate):
                continue
            for e in a.by:
                what = unbounded(e)
                where = (e.span.source.name, e.span.line, e.span.col)
                if what is None or where in seen:
                    continue
                seen.add(where)
                diags.warning(e.span, f"served, `by {e.span.text}` makes a series per value, and {what} takes "
                              f"new values without end: past --series-cap ({cap}) label sets, the metric's new "
                              "ones are folded into one __overflow__ series",
                              "export coarser keys (comm, container, dport...) and name the metric with "
                              "`as NAME`; keep per-value keys for `hookql run`, or raise --series-cap if the "
                              "values are few")
