"""`hookql run`: attach, wait, print, release.

Runs until Ctrl-C, SIGTERM, --duration, the -c command's exit or the -p
process's exit; prints every aggregation (also every --every); reports what
was lost (full maps, ring-buffer drops).  The BpfObject context releases all
links and fds whatever ends the run.
"""
from __future__ import annotations

import _signal  # what `signal` wraps: that module's import (enum) is a tenth of a warm start
import ctypes
import errno
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
                 map_entries: int | None = None, ringbuf_size: int | None = None, interval: bool = False,
                 top: int | None = None, emit_format: str = "kv", cgroup: int = 0):
        self.duration, self.every, self.command, self.pid, self.format = duration, every, command, pid, format
        self.enforce, self.verbose, self.map_entries, self.ringbuf_size = enforce, verbose, map_entries, ringbuf_size
        self.interval = interval  # print each interval's values (since the last print), not running totals
        self.top = top  # print at most this many rows of each keyed aggregation
        self.emit_format = emit_format  # emit's text form: kv (name=value) or columns
        self.cgroup = cgroup  # count only tasks in this cgroup (v2 id): `hookql test`'s workload scope


class Session:
    def __init__(self, obj, layout: dict, opts: RunOptions, out=None, err=None, redraw: bool = False,
                 pending: list[int] | None = None):
        self.obj = obj  # the object's bytes (or a path to it): BpfObject
        self.layout = layout
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._printer = None
        self.stopped_by: int | None = None  # the signal that ended the run
        self.pending = pending if pending is not None else []  # signals noted before the run (hookql/cli.py)
        self.events = None  # runtime/events.py, once loaded
        self.lost: list[str] = []  # what the exit report warned was lost (hookql test fails a case on it)
        self._deltas = None  # --interval: what was already printed (IntervalReader)
        self._intervals = 0
        self._last_print = time.time()
        # a live view (the REPL) redraws its tables in place, unless events stream between them
        self.redraw = redraw and not layout["emits"] and opts.format == "text"

    # -- the run --
    def run(self) -> int:
        if any(p["attach"] == "tp" for p in self.layout["probes"]):
            features.ensure_tracefs()
        old = {s: _signal.signal(s, self._on_signal) for s in (_signal.SIGINT, _signal.SIGTERM)}
        if self.pending and self.stopped_by is None:  # one came in before these handlers were in place
            self.stopped_by = self.pending[0]
        child = None
        try:
            libbpf.keep_debug = self.opts.verbose
            with BpfObject(self.obj, self.layout) as obj:
                obj.configure(self.opts.pid or 0, self.opts.enforce, self.opts.map_entries, self.opts.ringbuf_size,
                              cgroup=self.opts.cgroup)
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
            argv = self.opts.command if isinstance(self.opts.command, list) else shlex.split(self.opts.command)
            return subprocess.Popen(argv)
        except (OSError, ValueError) as exc:
            raise LoadError(f"cannot run -c {self.opts.command!r}: {getattr(exc, 'strerror', None) or exc}")

    def _loop(self, obj: BpfObject, child) -> None:
        l = libbpf.lib()
        rb = None
        if self.layout["emits"]:
            from hookql.runtime.events import EventPrinter

            stacks = (obj.map_fd("hq_stacks"), self.ksyms) if self.layout.get("kstack") else None  # emit kstack
            self.events = EventPrinter(self.layout["emits"], self.opts.format, self.out, self.opts.emit_format,
                                       stacks=stacks)
            rb = libbpf.check_ptr(l.ring_buffer__new(obj.map_fd("hq_events"), self.events.sample_fn,
                                                     self.events.ctx, None), "ring_buffer__new")
        wake = _Wake(child.pid if child is not None else 0, self.opts.pid or 0,
                     l.ring_buffer__epoll_fd(rb) if rb else -1)
        try:
            start = time.monotonic()
            self._last_print = time.time()
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
                # sleep until something happens: an event, the child's or -p's exit, a signal, or the next
                # print or the end of --duration (a poll tick only where a process cannot be watched by pidfd)
                timeout = wake.tick
                if self.opts.duration is not None:
                    timeout = min(timeout, start + self.opts.duration - now)
                if next_print is not None:
                    timeout = min(timeout, next_print - now)
                wake.wait(max(timeout, 0))
                if rb:
                    l.ring_buffer__consume(rb)
                    self.events.flush()
            if rb:
                l.ring_buffer__consume(rb)  # what arrived before the stop still prints
                self.events.flush()
        finally:
            wake.close()
            if rb:
                l.ring_buffer__free(rb)
                self.events.close()

    # -- printing --
    @property
    def printer(self):
        if self._printer is None:
            from hookql.runtime.output import JsonPrinter, TextPrinter

            source = os.path.basename(self.layout["source"])
            self._printer = (JsonPrinter if self.opts.format == "json" else TextPrinter)(self.out, source,
                                                                                         top=self.opts.top)
        return self._printer

    @property
    def ksyms(self):
        """/proc/kallsyms, read once per run, the first time a kernel stack prints."""
        if getattr(self, "_ksyms", None) is None:
            from hookql.runtime.ksyms import KSyms

            self._ksyms = KSyms()
        return self._ksyms

    def print_all(self, obj: BpfObject) -> dict[str, int]:
        from hookql.runtime.decode import MapReader

        if self.events:
            self.events.flush()  # events before tables, as they happened
        if self.redraw:
            self.printer.erase()
        reader = MapReader()
        rows = reader.rows
        if self.opts.interval:
            if self._deltas is None:
                self._deltas = IntervalReader(reader)
            rows = self._deltas.rows
            now = time.time()
            self._intervals += 1
            self.printer.interval(self._intervals, self._last_print, now)
            self._last_print = now
        for agg in self.layout["aggregations"]:
            got = rows(obj.map_fd(agg["map"]), agg)
            if any(f["display"] == "kstack" for f in agg["by"]):
                reader.stacks(obj.map_fd("hq_stacks"), agg, got, self.ksyms)
            self.printer.aggregation(agg, got)
        stats = reader.stats(obj.map_fd("hq_stats"), self.layout["stats"])
        for p in self.layout["probes"]:
            if p["deny"]:
                i = p["index"]
                self.printer.deny(p["text"], stats[f"probe{i}_denied"], stats[f"probe{i}_would_deny"],
                                  self.opts.enforce)
        self.printer.flush()
        if self.events and (self.layout["aggregations"] or any(p["deny"] for p in self.layout["probes"])):
            self.events.new_header()  # columns: the header again under the tables
        return stats

    def _final(self, obj: BpfObject) -> None:
        from hookql.runtime.decode import MapReader

        self.print_all(obj)  # the tables print while the probes are attached: nobody waits for the detach first
        # Then what was lost, and the state report, from the counters once no program runs (a store or take
        # between reading them and counting what is left would show as an eviction that never happened).  The
        # tracepoints' perf events close in a process of their own, out of the user's way (BpfObject.detach).
        obj.detach(wait=False)
        stats = MapReader().stats(obj.map_fd("hq_stats"), self.layout["stats"])
        lost = []
        if stats.get("ringbuf_drops"):
            lost.append(f"{stats['ringbuf_drops']} emitted events lost: the ring buffer was full "
                        "(the reader fell behind)")
        for agg in self.layout["aggregations"]:
            n = stats.get(f"{agg['map']}_full")
            if n:
                lost.append(f"{n} events not counted in `{agg['text']}` (line {agg['line']}): its map is full; "
                            "raise --map-size")
        if stats.get("kstack_failed"):
            lost.append(f"{stats['kstack_failed']} events had no kernel stack (counted under `[no stack: ...]`): "
                        "the stack map was full (raise --map-size) or its hash bucket held another stack")
        if stats.get("user_read_failed") and self.layout.get("user_sockaddr"):
            lost.append(f"{stats['user_read_failed']} user strings or sockaddrs could not be read (a NULL pointer, "
                        "or a page not in memory yet): a string reads as \"\", a sockaddr as family AF_UNSPEC, "
                        "addr and port 0")
        elif stats.get("user_read_failed"):
            lost.append(f"{stats['user_read_failed']} user strings could not be read (a NULL pointer, or a page "
                        "not in memory yet) and read as \"\"")
        if self.layout.get("kstack") and self.ksyms.note:
            lost.append(self.ksyms.note)
        if self.events and self.events.bad:
            lost.append(f"{self.events.bad} emitted events could not be decoded (unknown record or too short): "
                        "a HookQL bug; please report it")
        for msg in lost:
            self._warn(msg)
        if self.layout.get("states") or self.layout.get("entries"):
            self._state_report(obj, stats)

    def _state_report(self, obj: BpfObject, stats: dict[str, int]) -> None:
        """Each state map at exit: new keys stored, deleted, entries left (none when every clause that
        stores has a clause that deletes), and evicted.  A state map is an LRU hash: the kernel does
        not count what it evicts, so evicted = new keys stored - deleted - left at exit.  The same for
        the maps that carry a call's entry to its return (a kretprobe's arguments, a sys_exit's sys_enter
        fields), with the returns that found no entry."""
        from hookql.runtime.decode import MapReader
        from hookql.runtime.escape import escape_text

        reader = MapReader()
        for st in self.layout.get("states", []) + self.layout.get("entries", []):
            entry = "exit" in st
            stored, deleted, failed, missing = (stats.get(f"{st['map']}_{k}", 0)
                                                for k in ("inserts", "deletes", "failed", "missing"))
            left = reader.count_keys(obj.map_fd(st["map"]), st["key_size"])
            evicted = max(0, stored - deleted - left)
            what = (f"entries of {escape_text(st['text'])} for {escape_text(st['exit'])}" if entry
                    else f"state '{escape_text(st['name'])}'")
            if self.opts.format == "json":
                import json

                head = {"entry": st["text"], "exit": st["exit"]} if entry else {"state": st["name"]}
                self.out.write(json.dumps({**head, "line": st["line"], "stored": stored, "deleted": deleted,
                                           "entries": left, "evicted": evicted, "failed": failed,
                                           **({"missing": missing} if entry else {})}) + "\n")
                self.out.flush()
            else:
                self.err.write(f"hookql: {what} (line {st['line']}): {stored} stored, {deleted} "
                               f"{'taken' if entry else 'deleted'}, {left} left at exit\n")
            if evicted:
                self._warn(f"{evicted} {what} (line {st['line']}) were evicted: the map was full (its least recently "
                           "used entries made room); raise --map-size"
                           f"{'' if entry else ', or delete entries once read'}")
            if failed:
                self._warn(f"{failed} stores of {what} (line {st['line']}) were refused by the kernel (out of memory "
                           "for the map); raise --map-size")
            if missing:
                self._warn(f"{missing} returns of {escape_text(st['exit'])} (line {st['line']}) found no saved entry "
                           "(the call began before the probe attached, or its entry was evicted or refused): the "
                           "clause did not see them")

    def _warn(self, msg: str) -> None:
        self.err.write(f"hookql: warning: {msg}\n")
        self.lost.append(msg)


class IntervalReader:
    """--interval: each aggregation's values since the last print.

    Nothing is deleted from count, sum, avg and histogram maps: each print
    reads the running totals and shows what they grew by since the previous
    print (kept here, per key).  So no event is lost or counted twice: one that
    lands while a map is being read shows in this interval or the next, and
    the intervals always add up to the totals.  Keys whose value did not
    change are left out.  The maps keep every key seen, as without
    --interval: --map-size bounds them, and a full map is reported at exit.

    min and max cannot be taken apart that way, so they are reset: a keyed
    one's entries are read and removed in one step (the kernel's
    lookup-and-delete); the unkeyed one's per-CPU slot is read, then written
    back empty.  The window is there: a value a probe records between the
    read and the reset on another CPU (for a keyed map, only a probe that had
    already found the entry before it was removed) is in neither interval's
    min/max.  Counts and histograms have no such window.
    """

    def __init__(self, reader):
        self.reader = reader
        self.l = reader.l
        self.prev: dict[tuple[str, bytes], object] = {}

    def rows(self, fd: int, agg: dict) -> list:
        from hookql.runtime.decode import Row, decode_key

        out = []
        for raw_key, per_cpu in self._entries(fd, agg):
            key = decode_key(raw_key, agg["by"]) if agg["by"] else {}
            value = self._since_last(agg, raw_key, per_cpu)
            if value is not None:
                out.append(Row(key, value))
        return out

    def _entries(self, fd: int, agg: dict):
        """(key bytes, per-CPU values) of every entry; min/max entries are taken out of the map as they are read."""
        r = self.reader
        vsize, reset = agg["value_size"], agg["func"] in ("min", "max")
        if not agg["by"]:
            key = ctypes.c_uint32(0)
            vals = r.values(fd, ctypes.byref(key), vsize)
            if vals is not None and reset:
                r.zero(fd, ctypes.byref(key), vsize, agg["map"])
            return [(b"", vals)] if vals is not None else []
        ksize = agg["key_size"]
        out = []
        for k in r.keys(fd, ksize):
            kb = ctypes.create_string_buffer(k, ksize)
            vals = self._take(fd, kb, agg) if reset else r.values(fd, kb, vsize, agg["per_cpu"])
            if vals is not None:
                out.append((k, vals))
        return out

    def _take(self, fd: int, key, agg: dict):
        """Read and remove one entry at once; where the kernel cannot (before 5.14), read it, then remove it."""
        vsize = agg["value_size"]
        stride = (vsize + 7) // 8 * 8
        n = self.reader.ncpus if agg["per_cpu"] else 1
        buf = ctypes.create_string_buffer(stride * n)
        ret = self.l.bpf_map_lookup_and_delete_elem(fd, key, buf)
        if ret < 0:
            if -ret not in (errno.EINVAL, errno.EOPNOTSUPP, 524):  # 524: the kernel's ENOTSUPP
                return None  # gone already
            vals = self.reader.values(fd, key, vsize, agg["per_cpu"])
            self.l.bpf_map_delete_elem(fd, key)
            return vals
        raw = buf.raw
        return [raw[i * stride: i * stride + vsize] for i in range(n)]

    def _since_last(self, agg: dict, raw_key: bytes, per_cpu: list[bytes]):
        """This interval's value of one entry; None when nothing changed."""
        from hookql.runtime.decode import combine

        func = agg["func"]
        if func in ("min", "max"):
            return combine(func, per_cpu, True)  # None when no CPU saw a value
        if func == "avg":
            total = (sum(int.from_bytes(v[:8], "little", signed=True) for v in per_cpu),
                     sum(int.from_bytes(v[8:16], "little") for v in per_cpu))
        else:
            total = combine(func, per_cpu, agg["value_signed"])
        slot = (agg["map"], raw_key)
        before = self.prev.get(slot)
        self.prev[slot] = total
        if isinstance(total, list):
            delta = [a - b for a, b in zip(total, before)] if before else total
            return delta if any(delta) else None
        if isinstance(total, tuple):
            s, c = (total[0] - before[0], total[1] - before[1]) if before else total
            return int(s / c) if c else None  # integer mean, as decode.combine prints it
        delta = total - (before or 0)
        return delta or None


class _Wake:
    """What ends the run loop's wait at once: the -c child's or the -p process's exit (a pidfd, readable when
    it exits), a signal (Python writes its number to the wakeup fd as it arrives), an event in the ring buffer
    (its epoll fd).  Without a pidfd (before 5.3, or not allowed) the loop looks every POLL_MS."""

    def __init__(self, child: int, watched: int, ring_fd: int):
        import select

        self.poll = select.poll()
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old = _signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self.fds = [self.r, self.w]
        self.tick = 3600.0
        for pid in (child, watched):
            if pid:
                try:
                    fd = os.pidfd_open(pid)
                except (OSError, AttributeError):
                    self.tick = POLL_MS / 1000
                    continue
                self.fds.append(fd)
                self.poll.register(fd, select.POLLIN)
        self.poll.register(self.r, select.POLLIN)
        if ring_fd >= 0:
            self.poll.register(ring_fd, select.POLLIN)

    def wait(self, seconds: float) -> None:
        try:
            self.poll.poll(int(seconds * 1000) + 1)
        except InterruptedError:
            pass
        try:
            while os.read(self.r, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        _signal.set_wakeup_fd(self.old)
        for fd in self.fds:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
