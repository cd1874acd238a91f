"""The service's running totals of one metric, by label values, with a cap on how many label sets it keeps.

Label sets are admitted in the order they are first seen (by a scrape or a drain) until the cap; after
that a new label set's values are added to one overflow series whose every label is `__overflow__`, so
the sum over all series stays the true total and every series only grows.  A label set, once admitted
or folded, stays so for as long as the service runs (and across reloads while the metric keeps its name,
function and labels).
"""
from __future__ import annotations

OVERFLOW = "__overflow__"


def merge(func: str, a, b):
    """Two values of one function, added up (min/max: the extreme; None: nothing seen)."""
    if a is None:
        return b
    if b is None:
        return a
    if func in ("count", "sum"):
        return a + b
    if func == "min":
        return min(a, b)
    if func == "max":
        return max(a, b)
    return [x + y for x, y in zip(a, b)]  # avg [sum, count]; histograms [buckets..., sum]


class Series:
    def __init__(self, func: str, labels: list[str], cap: int):
        self.func, self.labels, self.cap = func, labels, cap
        self.totals: dict[tuple, object] = {}
        self.folded: set[tuple] = set()  # label sets that came after the cap (bounded below)
        self.folded_count = 0  # how many distinct label sets were folded into the overflow series
        self.overflow = (OVERFLOW,) * len(labels)

    def signature(self) -> tuple:
        return self.func, tuple(self.labels)

    def admit(self, key: tuple) -> tuple:
        """The series a label set's values go to: its own, or the overflow series once the cap is reached."""
        if key in self.totals:
            return key
        if len(self.totals) - (self.overflow in self.totals) < self.cap:
            self.totals[key] = None
            return key
        if key not in self.folded:
            self.folded_count += 1
            if len(self.folded) < 100_000:  # memory of which ones were counted; beyond it, counted again
                self.folded.add(key)
        self.totals.setdefault(self.overflow, None)
        return self.overflow

    def add(self, key: tuple, value) -> None:
        k = self.admit(key)
        self.totals[k] = merge(self.func, self.totals[k], value)

    def view(self, live: list[tuple[tuple, object]]) -> dict[tuple, object]:
        """What a scrape shows: the totals plus what the kernel holds now (not kept: the next drain adds it)."""
        out = dict(self.totals)
        for key, value in live:
            k = self.admit(key)
            out[k] = merge(self.func, out.get(k), value)
        return {k: v for k, v in out.items() if v is not None}
