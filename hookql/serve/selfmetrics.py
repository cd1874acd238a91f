"""The service's own metrics: what it runs, what the kernel lost or refused, what each program costs.

- hookql_build_info{version,kernel}, hookql_script_info{script,sha256}
- hookql_reloads_total{result="ok"|"error"}, hookql_drains_total
- hookql_probe_runs_total / hookql_probe_run_seconds_total{script,probe,program,line}: the kernel's
  run_cnt / run_time_ns, counted while the service holds its BPF_ENABLE_STATS descriptor
- hookql_kernel_events_total{script,counter}: every counter the programs keep (ringbuf_drops, a map full,
  stacks not taken, user memory not read, state stores refused, entries missing...)
- hookql_deny_total{script,probe,line,mode="enforce"|"would_deny"}
- hookql_map_entries{script,map} and hookql_map_capacity{script,map}: each keyed aggregation's map (what
  arrived since the last drain; named by its metric), state map and entry map
- hookql_series{metric}, hookql_series_overflow_total{metric}: label sets kept, and folded past the cap
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hookql import __version__


def counters(u, prog_fds: dict[str, int] | None = None) -> dict[tuple, float]:
    """A unit's counters the kernel keeps (program runs and time, kernel events, deny decisions), as
    {(family, label values...): n}. They live in the unit's object: when a reload stops a unit, the service
    keeps them (Service.retired) so the counters stay monotonic. prog_fds: func -> fd (after detach)."""
    from hookql.runtime import progstats

    if prog_fds is None:
        prog_fds = {a.func: a.prog_fd for a in u.links}
    out: dict[tuple, float] = {}
    for p in u.layout["probes"]:
        fd = prog_fds.get(p["func"])
        info = progstats.info(fd) if fd is not None else None
        labels = (u.path, p["text"], p["func"], str(p.get("line", "")))
        out[("runs", *labels)] = info.run_cnt if info else 0
        out[("secs", *labels)] = info.run_time_ns / 1e9 if info else 0
    stats = u.drainer.reader.stats(u.obj.map_fd("hq_stats"), u.layout["stats"])
    for name, n in stats.items():
        if not name.endswith(("_denied", "_would_deny")):
            out[("kernel", u.path, name)] = n
    for p in u.layout["probes"]:
        if p["deny"]:
            i = p["index"]
            for mode, stat in (("enforce", f"probe{i}_denied"), ("would_deny", f"probe{i}_would_deny")):
                out[("deny", u.path, p["text"], str(p.get("line", "")), mode)] = stats.get(stat, 0)
    return out


def families(svc) -> list:
    build = GaugeMetricFamily("hookql_build_info", "HookQL's version and the kernel it runs on",
                              labels=["version", "kernel"])
    build.add_metric([__version__, svc.kernel.label], 1)
    scripts = GaugeMetricFamily("hookql_script_info", "the scripts being served", labels=["script", "sha256"])
    reloads = CounterMetricFamily("hookql_reloads", "SIGHUP reloads, by result (an error keeps the running set)",
                                  labels=["result"])
    for result, n in svc.reloads.items():
        reloads.add_metric([result], n)
    drains = CounterMetricFamily("hookql_drains", "times the aggregation maps were drained into the totals")
    drains.add_metric([], svc.drains)
    runs = CounterMetricFamily("hookql_probe_runs", "times each program ran (kernel run_cnt)",
                               labels=["script", "probe", "program", "line"])
    secs = CounterMetricFamily("hookql_probe_run_seconds", "time each program ran, in seconds (kernel run_time_ns)",
                               labels=["script", "probe", "program", "line"])
    kernel = CounterMetricFamily("hookql_kernel_events", "events the programs counted as lost, refused or "
                                 "missing, by counter", labels=["script", "counter"])
    deny = CounterMetricFamily("hookql_deny", "deny decisions: blocked (enforce) or only counted (would_deny)",
                               labels=["script", "probe", "line", "mode"])
    entries = GaugeMetricFamily("hookql_map_entries", "entries in each kernel map now: a keyed aggregation's "
                                "(since the last drain), a state map's, an entry map's", labels=["script", "map"])
    capacity = GaugeMetricFamily("hookql_map_capacity", "entries each of those maps can hold (--map-size)",
                                 labels=["script", "map"])
    series = GaugeMetricFamily("hookql_series", "label sets kept for each metric (at most --series-cap, and "
                               "one overflow series)", labels=["metric"])
    overflow = CounterMetricFamily("hookql_series_overflow", "label sets that came after a metric's cap, whose "
                                   "values went to its __overflow__ series", labels=["metric"])
    totals = dict(svc.retired)  # what stopped units counted, plus what the running ones say
    for u in svc.units:
        scripts.add_metric([u.path, u.digest], 1)
        for key, n in counters(u).items():
            totals[key] = totals.get(key, 0) + n
        for a in u.layout["aggregations"]:  # the map events go to now: what arrived since the last drain
            if a["by"]:
                label = u.metric_names.get(a["map"], a["map"])
                fd = u.obj.map_fd(u.drainer.map_name(a, u.drainer.gen))
                entries.add_metric([u.path, label], u.drainer.reader.count_keys(fd, a["key_size"]))
                capacity.add_metric([u.path, label], svc.opts.map_entries or 4096)
        for m in u.layout.get("states", []) + u.layout.get("entries", []):
            label = m.get("name") or f"{m['text']} (entry of {m['exit']})"
            entries.add_metric([u.path, label], u.drainer.reader.count_keys(u.obj.map_fd(m["map"]), m["key_size"]))
            capacity.add_metric([u.path, label], svc.opts.map_entries or 4096)
    fams = {"runs": runs, "secs": secs, "kernel": kernel, "deny": deny}
    for (fam, *labels), n in totals.items():
        fams[fam].add_metric(labels, n)
    for name, s in svc.series.items():
        series.add_metric([name], len(s.totals))
        overflow.add_metric([name], s.folded_count)
    return [build, scripts, reloads, drains, runs, secs, kernel, deny, entries, capacity, series, overflow]

