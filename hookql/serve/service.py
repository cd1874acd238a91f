"""The service: every script loaded and attached, its aggregations drained on a tick into running totals,
scraped over HTTP, reloaded on SIGHUP, stopped on SIGTERM or SIGINT.

Threads: the main one owns the kernel objects (attach, drain, reload, events); the HTTP server's threads
only read, under `lock`, the same lock a drain and a reload hold.  A reload builds every changed script
first; if any fails to check or build, or to load, the running set stays as it was (logged, counted).
Otherwise the new programs attach before the old ones detach, so a `deny` rule never has a gap, and an
old script's maps are drained once more after its programs detached (nothing counted is lost).
"""
from __future__ import annotations

import _signal
import os
import sys
import threading
import time

from hookql.serve import naming
from hookql.serve.series import Series
from hookql.serve.units import BuildFailed, Unit, script_paths


EPOCH_SLOTS = 4096  # scripts one service can have served (codegen/templates/maps.c.j2 hq_epoch)


class ServeOptions:
    def __init__(self, paths: list[str], listen: str, enforce: bool = False, series_cap: int = 1000,
                 drain_interval: float = 10.0, map_entries: int | None = None):
        self.paths, self.listen, self.enforce = paths, listen, enforce
        self.series_cap, self.drain_interval, self.map_entries = series_cap, drain_interval, map_entries


class Service:
    def __init__(self, opts: ServeOptions, out=None, err=None):
        self.opts = opts
        self.out = out or sys.stdout  # emit lines, JSON
        self.err = err or sys.stderr  # the log
        self.lock = threading.RLock()
        self.units: list[Unit] = []
        self.series: dict[str, Series] = {}
        self.reloads = {"ok": 0, "error": 0}
        self.drains = 0
        self.retired: dict[tuple, float] = {}  # kernel-kept counters of units a reload stopped (selfmetrics.py)
        self.epoch_fd = -1  # hq_epoch: which version of each script is live, shared by every unit's object
        self.slots: dict[str, int] = {}  # script path -> its slot in hq_epoch
        self.epochs: dict[str, int] = {}  # script path -> its live version's epoch
        self.stats_fd = -1
        self.signals: list[int] = []
        self._ksyms = None
        self._events = []  # (unit, ring buffer, printer)

    # -- logging --
    def log(self, msg: str) -> None:
        from hookql.runtime.escape import escape_text

        self.err.write("hookql serve: " + "\n  ".join(escape_text(l, backslash=False) for l in msg.split("\n"))
                       + "\n")
        self.err.flush()

    @property
    def ksyms(self):
        if self._ksyms is None:
            from hookql.runtime.ksyms import KSyms

            self._ksyms = KSyms()
        return self._ksyms

    # -- start --
    def run(self) -> int:
        from hookql import kernel as K
        from hookql.runtime import features
        from hookql.runtime.libbpf import LibbpfError
        from hookql.runtime.loader import LoadError

        from hookql.serve.http import Listener, ListenError, make_app

        if not features.can_load_bpf():
            self.log("error: serving needs root, or CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN for LSM hooks "
                     "and --enforce); nothing was loaded")
            return 1
        try:
            units = [self._read(p) for p in script_paths(self.opts.paths)]
            if not units:
                raise BuildFailed(f"no *.hq script in {', '.join(self.opts.paths)}")
            self.kernel, self.mode = K.running(), features.func_mode()
            for u in units:
                u.build(self.kernel, self.mode, self.opts.series_cap)
                for w in u.warnings:
                    self.log(w)
        except BuildFailed as exc:
            self.log(f"error: {exc}\nnothing was loaded")
            return 1
        from prometheus_client.core import CollectorRegistry

        from hookql.serve.exporter import Collector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(self))
        try:
            http = Listener(self.opts.listen, make_app(registry, self.healthy))
        except (ListenError, ValueError) as exc:
            self.log(f"error: {exc}; nothing was loaded")
            return 1
        old = {s: _signal.signal(s, self._on_signal) for s in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)}
        try:
            if any(p["attach"] == "tp" for u in units for p in u.layout["probes"]):
                features.ensure_tracefs()
            try:
                self._start(units)
            except (LoadError, LibbpfError, BuildFailed) as exc:
                self.log(f"error: {exc}" + (f"\n  hint: {exc.hint}" if getattr(exc, "hint", None) else "")
                         + "\nnothing was loaded")
                return 1
            try:
                from hookql.runtime import progstats

                self.stats_fd = progstats.enable_stats()  # per program run counts and time, while we hold it
            except OSError as exc:
                self.log(f"warning: no per-clause kernel time ({exc.strerror}); run counts read 0")
            http.start()
            n = sum(len(u.links) for u in self.units)
            self.log(f"serving {len(self.units)} script{'s' * (len(self.units) != 1)}, {n} probe{'s' * (n != 1)} attached, "
                     f"on http://{http.address}/metrics")
            self._loop()
            return 0
        finally:
            http.stop()
            for s, h in old.items():
                _signal.signal(s, h)
            with self.lock:
                self._stop_events()
                for u in self.units:
                    u.stop()
                self.units = []
            for fd in (self.stats_fd, self.epoch_fd):
                if fd >= 0:
                    os.close(fd)

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _read(self, path: str) -> Unit:
        import contextlib
        import io

        from hookql.cache.dirs import CacheError, trusted_file_path
        from hookql.cli import _read_text

        try:  # a service that loads every *.hq of a directory must not load one another user put there
            real = trusted_file_path(path)
        except (CacheError, OSError) as exc:
            raise BuildFailed(f"{path}: refused: {getattr(exc, 'strerror', None) or exc}") from None
        why = io.StringIO()
        with contextlib.redirect_stderr(why):  # it says why it cannot: into the log, with the rest
            got = _read_text(real)  # the path checked, every directory on it root's or ours: nobody swaps it
        if got is None:
            raise BuildFailed(why.getvalue().strip() or f"{path}: cannot read it")
        return Unit(path, got[1])

    # -- versions: one write hands a script over from its old programs to its new ones --
    def _epochs(self) -> int:
        if self.epoch_fd < 0:
            from hookql.runtime import libbpf

            self.epoch_fd = libbpf.check_int(libbpf.lib().bpf_map_create(2, b"hq_epoch", 4, 4, EPOCH_SLOTS, None),
                                             "bpf_map_create", "hq_epoch")  # 2: BPF_MAP_TYPE_ARRAY
        return self.epoch_fd

    def _version(self, u: Unit) -> None:
        """Give u its script's slot and the next epoch (not live yet)."""
        if u.path not in self.slots:
            if len(self.slots) >= EPOCH_SLOTS:
                raise BuildFailed(f"{u.path}: at most {EPOCH_SLOTS} scripts are served")
            self.slots[u.path] = len(self.slots)
        u.slot, u.epoch = self.slots[u.path], self.epochs.get(u.path, 0) + 1

    def _make_live(self, u: Unit | None, path: str) -> None:
        """hq_epoch[slot] = u's epoch (None: 0, no version live): from the next event on, only u's programs
        act for the script; one already under way in an old program finishes as it began."""
        import ctypes

        from hookql.runtime import libbpf

        key, value = ctypes.c_uint32(self.slots[path]), ctypes.c_uint32(u.epoch if u else 0)
        libbpf.check_int(libbpf.lib().bpf_map_update_elem(self._epochs(), ctypes.byref(key), ctypes.byref(value), 0),
                         "bpf_map_update_elem", "hq_epoch")
        if u is not None:
            self.epochs[path] = u.epoch

    def _start(self, units: list[Unit]) -> None:
        started = []
        try:
            for u in units:
                self._version(u)
                self._make_live(u, u.path)  # nothing to hand over from: live from its first event
                u.start(self.opts.enforce, self.opts.map_entries, self._epochs())
                started.append(u)
        except BaseException:
            for u in started:
                u.stop()
            raise
        with self.lock:
            self.units = units
            self._name_metrics()
            self._start_events()

    # -- the loop --
    def _loop(self) -> None:
        next_drain = time.monotonic() + self.opts.drain_interval
        while True:
            while self.signals:
                sig = self.signals.pop(0)
                if sig == _signal.SIGHUP:
                    self.reload()
                else:
                    import signal

                    self.log(f"stopping ({signal.Signals(sig).name})")
                    return
            if time.monotonic() >= next_drain:
                self.drain()
                next_drain = time.monotonic() + self.opts.drain_interval
            self._poll_events()

    def drain(self) -> None:
        with self.lock:
            for u in self.units:
                self._add(u, u.drainer.drain())
            self.drains += 1

    def _add(self, unit: Unit, drained: dict) -> None:
        from hookql.serve.exporter import labels_of

        for agg in unit.layout["aggregations"]:
            series = self.series[unit.metric_names[agg["map"]]]
            for raw, value in drained.get(agg["map"], []):
                series.add(labels_of(self, unit, agg, raw), value)

    # -- reload --
    def reload(self) -> None:
        from hookql.runtime.libbpf import LibbpfError
        from hookql.runtime.loader import LoadError

        self.log("reloading (SIGHUP)")
        old = {u.path: u for u in self.units}
        try:
            units = []
            for path in script_paths(self.opts.paths):
                u = self._read(path)
                same = old.get(u.path)
                if same is not None and same.digest == u.digest:
                    units.append(same)  # unchanged: its programs, maps and counts stay
                    continue
                u.build(self.kernel, self.mode, self.opts.series_cap)
                for w in u.warnings:
                    self.log(w)
                units.append(u)
            if not units:
                raise BuildFailed(f"no *.hq script in {', '.join(self.opts.paths)}")
        except (BuildFailed, OSError) as exc:  # OSError: out of descriptors, memory...: the set stays too
            self.reloads["error"] += 1
            self.log(f"error: reload failed, the running scripts stay as they were:\n{exc}")
            return
        fresh = [u for u in units if u not in old.values()]
        started = []
        try:
            for u in fresh:  # attached, not live yet: the old version of the script still acts alone
                self._version(u)
                u.start(self.opts.enforce, self.opts.map_entries, self._epochs())
                started.append(u)
        except (LoadError, LibbpfError, BuildFailed, OSError) as exc:
            with self.lock:
                for u in started:  # never live: nothing of theirs to keep
                    u.stop()
            self.reloads["error"] += 1
            self.log(f"error: reload failed, the running scripts stay as they were: {exc}")
            return
        gone = [u for u in old.values() if u not in units]
        with self.lock:
            # the handover: one write per script, the new programs attached before it and the old ones
            # detached after it, so `deny` has no gap and no event is counted by both versions
            for u in fresh:
                self._make_live(u, u.path)
            for u in gone:
                if u.path not in {f.path for f in fresh}:
                    self._make_live(None, u.path)  # removed: no version of it acts from now on
            self._stop_events()
            for u in gone:
                self._retire(u)
                for gen in (0, 1):  # both maps: the one events went to, and the other (empty, drained)
                    self._add(u, {a["map"]: u.drainer.take(a, gen) for a in u.layout["aggregations"]})
                u.stop()
            self.units = units
            self._name_metrics()
            self._start_events()
        self.reloads["ok"] += 1
        self.log(f"reloaded: {len(fresh)} script{'s' * (len(fresh) != 1)} new or changed, {len(gone)} "
                 f"replaced or removed, {len(units) - len(fresh)} unchanged")

    def _retire(self, u: Unit) -> None:
        """Detach u, wait for its programs under way, and keep its kernel-kept counters (deny decisions,
        runs, kernel events): they live in its object, and the service's counters must stay monotonic."""
        from hookql.serve.selfmetrics import counters

        prog_fds = {a.func: a.prog_fd for a in u.links}  # detach empties u.links; the fds live until stop
        u.obj.detach()
        u.drainer.wait_for_programs()
        for key, n in counters(u, prog_fds).items():
            self.retired[key] = self.retired.get(key, 0) + n

    def _name_metrics(self) -> None:
        """Every aggregation's metric name (unique across the scripts, in their order); its Series, kept when
        the name, function and labels are the same as before (a reload), else new."""
        pairs = [(u, a) for u in self.units for a in u.layout["aggregations"]]
        names = naming.unique([naming.base_name(u.path, a) for u, a in pairs])
        live = set()
        for (u, a), name in zip(pairs, names):
            u.metric_names[a["map"]] = name
            labels = naming.label_names(a)
            s = self.series.get(name)
            if s is None or s.signature() != (a["func"], tuple(labels)):
                self.series[name] = Series(a["func"], labels, self.opts.series_cap)
            live.add(name)
        for name in list(self.series):
            if name not in live:
                del self.series[name]

    # -- emit: JSON lines on standard output --
    def _start_events(self) -> None:
        from hookql.runtime import libbpf
        from hookql.runtime.events import EventPrinter

        l = libbpf.lib()
        for u in self.units:
            if u.layout["emits"]:
                stacks = (u.obj.map_fd("hq_stacks"), self.ksyms) if u.layout.get("kstack") else None
                printer = EventPrinter(u.layout["emits"], "json", self.out, stacks=stacks)
                rb = libbpf.check_ptr(l.ring_buffer__new(u.obj.map_fd("hq_events"), printer.sample_fn,
                                                         printer.ctx, None), "ring_buffer__new")
                self._events.append((u, rb, printer))

    def _poll_events(self) -> None:
        from hookql.runtime import libbpf

        if not self._events:
            time.sleep(0.1)
            return
        l = libbpf.lib()
        timeout = max(1, 100 // len(self._events))
        for _, rb, printer in self._events:
            l.ring_buffer__poll(rb, timeout)
            printer.flush()

    def _stop_events(self) -> None:
        from hookql.runtime import libbpf

        l = libbpf.lib()
        for _, rb, printer in self._events:
            l.ring_buffer__consume(rb)
            printer.flush()
            l.ring_buffer__free(rb)
            printer.close()
        self._events = []

    # -- health and self-metrics --
    def healthy(self) -> tuple[bool, str]:
        with self.lock:
            n = sum(len(u.links) for u in self.units)
        return (n > 0, f"ok: {len(self.units)} script{'s' * (len(self.units) != 1)}, {n} probes attached" if n
                else "no probe attached")

    def self_metrics(self):
        from hookql.serve.selfmetrics import families

        return families(self)
