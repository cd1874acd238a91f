"""Taking an aggregation's counts out of the kernel with nothing lost.

Built for serving, each aggregation is two maps (hq_aggN and hq_aggN_1) and the programs write the one
`hq_gen` names (codegen/templates/probe.c.j2).  A drain flips hq_gen, then waits until no program that
read the old value is still running: it replaces the element of `hq_sync`, a map of maps, and the kernel
answers such an update only after an RCU grace period (synchronize_rcu), which every BPF program run sits
inside.  The old maps are then the service's alone: read, then emptied, with no increment racing them.
Between drains the maps hold only what arrived since the last one, so they never fill with churn as
long as a drain interval's new keys fit --map-size (the rest is counted as dropped, as always).
"""
from __future__ import annotations

import ctypes

from hookql.runtime import libbpf

ZERO = ctypes.c_uint32(0)


def value_of(func: str, per_cpu: list[bytes], buckets: int):
    """One key's per-CPU values folded, keeping what Prometheus needs (an average's sum and count, a
    histogram's buckets and sum): count/sum -> int, avg -> [sum, count], min/max -> int or None,
    hist/lhist -> [bucket counts..., sum]."""
    le = lambda b, i, signed=False: int.from_bytes(b[8 * i: 8 * i + 8], "little", signed=signed)
    if func == "count":
        return sum(le(v, 0) for v in per_cpu)
    if func == "sum":
        return sum(le(v, 0, True) for v in per_cpu)
    if func == "avg":
        return [sum(le(v, 0, True) for v in per_cpu), sum(le(v, 1) for v in per_cpu)]
    if func in ("min", "max"):
        seen = [le(v, 0, True) for v in per_cpu if le(v, 1)]
        return (min(seen) if func == "min" else max(seen)) if seen else None
    counts = [sum(le(v, i) for v in per_cpu) for i in range(buckets)]
    total = sum(le(v, buckets, True) for v in per_cpu)
    return counts + [total]


class Drainer:
    """The drain of one loaded object (its map fds, by name through `obj.map_fd`)."""

    def __init__(self, obj, layout: dict, reader):
        self.obj, self.layout, self.reader = obj, layout, reader
        self.l = libbpf.lib()
        self.gen = 0  # the maps events go to now: 0 -> hq_aggN, 1 -> hq_aggN_1
        self.sync_inner = obj.map_fd("hq_sync_inner")

    def map_name(self, agg: dict, gen: int) -> str:
        return agg["map"] + ("_1" if gen else "")

    def live(self, agg: dict):
        """(key bytes, value) of what the maps events go to now hold: read, not taken."""
        return self._entries(self.obj.map_fd(self.map_name(agg, self.gen)), agg, take=False)

    def take(self, agg: dict, gen: int):
        """Take everything out of one of the two maps (no program may write it: flipped away, or detached)."""
        return self._entries(self.obj.map_fd(self.map_name(agg, gen)), agg, take=True)

    def drain(self) -> dict[str, list]:
        """Flip, wait for the programs under way, then take everything out of the old maps:
        {aggregation map name: [(key bytes, value), ...]}."""
        old = self.gen
        new = ctypes.c_uint32(1 - old)
        libbpf.check_int(self.l.bpf_map_update_elem(self.obj.map_fd("hq_gen"), ctypes.byref(ZERO),
                                                     ctypes.byref(new), 0), "bpf_map_update_elem", "hq_gen")
        self.gen = new.value
        self.wait_for_programs()
        return {agg["map"]: self.take(agg, old) for agg in self.layout["aggregations"]}

    def wait_for_programs(self) -> None:
        fd = ctypes.c_int(self.sync_inner)
        libbpf.check_int(self.l.bpf_map_update_elem(self.obj.map_fd("hq_sync"), ctypes.byref(ZERO),
                                                     ctypes.byref(fd), 0), "bpf_map_update_elem", "hq_sync")

    def _entries(self, fd: int, agg: dict, take: bool):
        r = self.reader
        vsize, buckets, per_cpu = agg["value_size"], agg["buckets"], agg["per_cpu"]
        if not agg["by"]:
            vals = r.values(fd, ctypes.byref(ZERO), vsize)
            if vals is None:
                return []
            if take:
                r.zero(fd, ctypes.byref(ZERO), vsize, agg["map"])
            return [(b"", value_of(agg["func"], vals, buckets))]
        return [(k, value_of(agg["func"], vals, buckets))
                for k, vals in r.entries(fd, agg["key_size"], vsize, per_cpu, take)]
