"""The prometheus_client collector: at each scrape, every aggregation of every running script as a metric
family, and the service's own metrics.

| HookQL                 | Prometheus                                                        |
|------------------------|-------------------------------------------------------------------|
| count, sum (unsigned)  | counter `hookql_NAME_total`                                       |
| sum of a signed value  | gauge `hookql_NAME` (it can go down)                              |
| avg                    | summary `hookql_NAME_sum`, `hookql_NAME_count`                    |
| min, max               | gauge                                                             |
| hist                   | histogram: `le` at 0 and powers of two, exact (values <= le)      |
| lhist                  | histogram: `le` at each step's last integer, exact                |
| durations              | in seconds, `_seconds` in the name; sizes `_bytes`                |
"""
from __future__ import annotations

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    SummaryMetricFamily)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from hookql.runtime.decode import decode_key, display
from hookql.serve import naming
from hookql.serve.series import Series


def label_value(value, field: dict) -> str:
    """A key's value as a label: names for enums and errnos (display()), addresses as text, numbers as
    decimal; a kernel stack as its frames joined by ';' (as folded stacks are written)."""
    if hasattr(value, "frames"):
        return ";".join(value.frames) if value.frames else str(value)
    return str(display(value, field.get("display")))


def le_bounds(agg: dict) -> list[float]:
    """The upper bound of each kernel bucket (codegen's serve mode), in the value's own unit; the last
    bucket of an lhist is +Inf."""
    if agg["func"] == "hist":  # slot 0 negative, 1 zero, k >= 2: (2^(k-3), 2^(k-2)]
        return [0.0, 0.0] + [float(2 ** (k - 2)) for k in range(2, agg["buckets"])]
    lo, hi, step = agg["lhist"]  # slot 0 below lo; slot i: [lo + (i-1)*step, lo + i*step); last: >= hi
    n = agg["buckets"]
    return [float(lo - 1)] + [float(min(lo + i * step, hi) - 1) for i in range(1, n - 1)] + [float("inf")]


def labels_of(service, unit, agg: dict, raw: bytes) -> tuple:
    """A key's label values, cached per script by the key's bytes (a key's labels never change, but for
    the cgroup views, which resolve once)."""
    if not agg["by"]:
        return ()
    cache = unit.label_cache.setdefault(agg["map"], {})
    got = cache.get(raw)
    if got is None:
        key = decode_key(raw, agg["by"])
        if any(f["display"] == "kstack" for f in agg["by"]):
            from hookql.runtime.decode import Row

            rows = [Row(key, None)]
            unit.drainer.reader.stacks(unit.obj.map_fd("hq_stacks"), agg, rows, service.ksyms)
            key = rows[0].key
        got = tuple(label_value(key[f["name"]], f) for f in agg["by"])
        unresolved = any(v.startswith("cgroup:") for v, f in zip(got, agg["by"])  # the resolver may know it later
                         if f["display"] in ("cgroup", "container", "pod"))
        if len(cache) < 100_000 and not unresolved:
            cache[raw] = got
    return got


class Collector:
    """Reads through the service (its lock, units and series) at scrape time."""

    def __init__(self, service):
        self.service = service

    def describe(self):
        return []  # families are only known at scrape time

    def collect(self):
        svc = self.service
        with svc.lock:
            families = []
            for unit in svc.units:
                for agg in unit.layout["aggregations"]:
                    name = unit.metric_names[agg["map"]]
                    series = svc.series[name]
                    live = [(labels_of(svc, unit, agg, k), v) for k, v in unit.drainer.live(agg)]
                    families.append(self.family(unit, agg, name, series, series.view(live)))
            families += svc.self_metrics()
        return families

    def family(self, unit, agg: dict, name: str, series: Series, values: dict):
        func, labels = agg["func"], series.labels
        doc = naming.help_text(agg, unit.name)
        seconds = naming.unit(agg) == "seconds"
        scale = (lambda v: v / 1e9) if seconds else float
        if func == "count" or func == "sum" and not agg.get("value_is_signed"):
            fam = CounterMetricFamily(name, doc, labels=labels)
            _samples(fam, fam.name + "_total", labels, values, scale)
        elif func == "avg":
            fam = SummaryMetricFamily(name, doc, labels=labels)
            for k, (total, count) in values.items():
                fam.add_metric(list(k), count_value=count, sum_value=scale(total))
        elif func in ("sum", "min", "max"):
            fam = GaugeMetricFamily(name, doc, labels=labels)
            _samples(fam, name, labels, values, scale)
        else:
            fam = HistogramMetricFamily(name, doc, labels=labels)
            bounds = le_bounds(agg)
            for k, v in values.items():
                counts, total = v[:-1], v[-1]
                buckets, cum = [], 0
                for i, (c, le) in enumerate(zip(counts, bounds)):
                    cum += c
                    if func == "hist" and i == 0 or func == "lhist" and i == 0 and le < 0 <= agg["lhist"][0]:
                        continue  # negatives: counted in the next le (a negative le would drop _sum, _count)
                    if le != float("inf"):
                        buckets.append((floatToGoString(scale(le)), cum))
                buckets.append(("+Inf", cum))
                fam.add_metric(list(k), buckets=_trim(buckets), sum_value=scale(total))
        return fam


def _samples(fam, sample_name: str, labels: list[str], values: dict, scale) -> None:
    """One sample per series, made directly (what add_metric makes, at half its cost: a scrape of 10,000
    series is mostly this)."""
    fam.samples = [Sample(sample_name, dict(zip(labels, k)), scale(v), None, None) for k, v in values.items()]


def _trim(buckets: list) -> list:
    """Leave out the buckets above the last one that grew (64 powers of two per series otherwise); the
    ones kept are all the ones below, so `le` stays exact; +Inf always."""
    inf = buckets[-1]
    keep = len(buckets) - 1
    while keep > 1 and buckets[keep - 1][1] == inf[1] and buckets[keep - 2][1] == inf[1]:
        keep -= 1
    return buckets[:keep] + [inf]
