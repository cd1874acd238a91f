"""`hookql run`: attach, wait, print, release.

Runs until Ctrl-C, SIGTERM, --duration, the -c command's exit or the -p
process's exit; prints every aggregation (also every --every); reports what
was lost (full maps, ring-buffer drops).  The BpfObject context releases all
links and fds whatever ends the run.
"""
from __future__ import annotations

import _signal  # what `signal` wraps: that module's import (enum) is a tenth of a warm start
import os
import sys
import time

from hookql.runtime import features, libbpf
from hookql.runtime.loader import BpfObject, LoadError

# Reading and printing maps (decode, output) is imported once the probes are
# attached: nothing on the way there pays for it.

POLL_MS = 100


class RunOptions:
    def __init__(self, duration: float | None = None, every: float | None = None, command: str | None = None,
                 pid: int | None = None, format: str = "text", enforce: bool = False, verbose: bool = False,
                 map_entries: int | None = None, ringbuf_size: int | None = None):
        self.duration, self.every, self.command, self.pid, self.format = duration, every, command, pid, format
        self.enforce, self.verbose, self.map_entries, self.ringbuf_size = enforce, verbose, map_entries, ringbuf_size


class Session:
    def __init__(self, obj, layout: dict, opts: RunOptions, out=None, err=None, redraw: bool = False):
        self.obj = obj  # the object's bytes (or a path to it): BpfObject
        self.layout = layout
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._printer = None
        self.stopped_by: int | None = None  # the signal that ended the run
        self.events = None  # runtime/events.py, once loaded
        # a live view (the REPL) redraws its tables in place, unless events stream between them
        self.redraw = redraw and not layout["emits"] and opts.format == "text"

    # -- the run --
    def run(self) -> int:
        if any(p["attach"] == "tp" for p in self.layout["probes"]):
            features.ensure_tracefs()
        old = {s: _signal.signal(s, self._on_signal) for s in (_signal.SIGINT, _signal.SIGTERM)}
        child = None
        try:
            libbpf.keep_debug = self.opts.verbose
            with BpfObject(self.obj, self.layout) as obj:
                obj.configure(self.opts.pid or 0, self.opts.enforce, self.opts.map_entries, self.opts.ringbuf_size)
                obj.load()
                if self.stopped_by is not None:  # stopped before anything attached: nothing to print
                    return 128 + self.stopped_by
                links = obj.attach_all()
                self.err.write(f"Attached {len(links)} probe{'s' * (len(links) != 1)}\n")
                if self.opts.verbose:
                    for a in links:  # the program's id: `bpftool prog show id N` while it runs
                        self.err.write(f"  {a.probe} as {a.attach} (program id {a.prog_id})\n")
                self.err.flush()
                child = self._start_child()
                self._loop(obj, child)
                self._final(obj)
        finally:
            for s, h in old.items():
                _signal.signal(s, h)
            if child is not None and child.poll() is None:
                child.terminate()
                child.wait()
        return 0

    def _on_signal(self, signum, frame) -> None:
        self.stopped_by = signum

    def _start_child(self):
        if not self.opts.command:
            return None
        import shlex
        import subprocess

        try:
            return subprocess.Popen(shlex.split(self.opts.command))
        except (OSError, ValueError) as exc:
            raise LoadError(f"cannot run -c {self.opts.command!r}: {getattr(exc, 'strerror', None) or exc}")

    def _loop(self, obj: BpfObject, child) -> None:
        l = libbpf.lib()
        rb = None
        if self.layout["emits"]:
            from hookql.runtime.events import EventPrinter

            self.events = EventPrinter(self.layout["emits"], self.opts.format, self.out)
            rb = libbpf.check_ptr(l.ring_buffer__new(obj.map_fd("hq_events"), self.events.sample_fn,
                                                     self.events.ctx, None), "ring_buffer__new")
        try:
            start = time.monotonic()
            next_print = start + self.opts.every if self.opts.every else None
            while self.stopped_by is None:
                now = time.monotonic()
                if self.opts.duration is not None and now - start >= self.opts.duration:
                    break
                if child is not None and child.poll() is not None:
                    break
                if self.opts.pid and not _alive(self.opts.pid):
                    break
                if next_print is not None and now >= next_print:
                    self.print_all(obj)
                    next_print += self.opts.every
                if rb:
                    l.ring_buffer__poll(rb, POLL_MS)  # -EINTR on a signal: the loop checks why
                    self.events.flush()
                else:
                    time.sleep(POLL_MS / 1000)
            if rb:
                l.ring_buffer__consume(rb)  # what arrived before the stop still prints
                self.events.flush()
        finally:
            if rb:
                l.ring_buffer__free(rb)
                self.events.close()

    # -- printing --
    @property
    def printer(self):
        if self._printer is None:
            from hookql.runtime.output import JsonPrinter, TextPrinter

            source = os.path.basename(self.layout["source"])
            self._printer = (JsonPrinter if self.opts.format == "json" else TextPrinter)(self.out, source)
        return self._printer

    def print_all(self, obj: BpfObject) -> dict[str, int]:
        from hookql.runtime.decode import MapReader

        if self.events:
            self.events.flush()  # events before tables, as they happened
        if self.redraw:
            self.printer.erase()
        reader = MapReader()
        for agg in self.layout["aggregations"]:
            self.printer.aggregation(agg, reader.rows(obj.map_fd(agg["map"]), agg))
        stats = reader.stats(obj.map_fd("hq_stats"), self.layout["stats"])
        for p in self.layout["probes"]:
            if p["deny"]:
                i = p["index"]
                self.printer.deny(p["text"], stats[f"probe{i}_denied"], stats[f"probe{i}_would_deny"],
                                  self.opts.enforce)
        self.printer.flush()
        return stats

    def _final(self, obj: BpfObject) -> None:
        stats = self.print_all(obj)
        lost = []
        if stats.get("ringbuf_drops"):
            lost.append(f"{stats['ringbuf_drops']} emitted events lost: the ring buffer was full "
                        "(the reader fell behind)")
        for agg in self.layout["aggregations"]:
            n = stats.get(f"{agg['map']}_full")
            if n:
                lost.append(f"{n} events not counted in `{agg['text']}` (line {agg['line']}): its map is full; "
                            "raise --map-size")
        if self.events and self.events.bad:
            lost.append(f"{self.events.bad} emitted events could not be decoded (unknown record or too short): "
                        "a HookQL bug; please report it")
        for msg in lost:
            self.err.write(f"hookql: warning: {msg}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
