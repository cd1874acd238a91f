"""Load and attach a HookQL object with libbpf, and release everything after.

BpfObject is a context manager: whatever happens (an attach failure, an
exception, Ctrl-C), every link is destroyed and the object closed, so no
program of ours outlives `hookql run`.
"""
from __future__ import annotations

import ctypes
import errno
import os

from hookql.runtime import features, libbpf
from hookql.runtime.libbpf import LibbpfError


class LoadError(Exception):
    """Loading or attaching failed; the message says why and what to do."""

    def __init__(self, message: str, hint: str | None = None, log: str = "", refused: bool = False):
        super().__init__(message)
        self.hint = hint
        self.log = log
        self.refused = refused  # this kernel cannot run the hook this way at all (not a wrong program)


class Attached:
    # not a dataclass: its import is a tenth of a warm start
    __slots__ = ("probe", "attach", "link", "prog_fd", "func", "event")

    def __init__(self, probe: str, attach: str, link: int, prog_fd: int = -1, func: str = "", event: int = -1):
        self.probe, self.attach, self.link, self.prog_fd, self.func = probe, attach, link, prog_fd, func
        self.event = event  # a tracepoint's perf event: our own descriptor of it (-1: none), see BpfObject.detach

    @property
    def prog_id(self) -> int | None:
        """The kernel's id of the attached program (`bpftool prog show id N`), as long as it is held."""
        return program_id(self.prog_fd)


class _ProgInfoHead(ctypes.Structure):
    """The head of struct bpf_prog_info: the kernel fills as much as we ask for."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


def program_id(fd: int) -> int | None:
    if fd < 0:
        return None
    info, size = _ProgInfoHead(), ctypes.c_uint32(ctypes.sizeof(_ProgInfoHead))
    if libbpf.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        return None
    return info.id


class _OpenOpts(ctypes.Structure):
    """The head of libbpf's struct bpf_object_open_opts (sz says how much of it we pass)."""
    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p)]


class BpfObject:
    """obj: the object's bytes, opened from memory (what was verified is what loads), or a path."""

    def __init__(self, obj, layout: dict, name: str = "hookql"):
        self.l = libbpf.lib()
        self.data = obj if isinstance(obj, bytes) else None
        self.path = name if self.data is not None else str(obj)
        self.layout = layout
        self.obj = 0
        self.links: list[Attached] = []
        self.sizes: dict[str, int] = {}  # the options that resized maps: --map-size, --ringbuf-size

    # -- lifecycle --
    def __enter__(self) -> "BpfObject":
        libbpf.messages.clear()
        if self.data is None:
            ptr = self.l.bpf_object__open_file(self.path.encode(), None)
            what = "bpf_object__open_file"
        else:  # libbpf reads the buffer until load: self.data lives as long as this object
            self._opts = _OpenOpts(ctypes.sizeof(_OpenOpts), self.path.encode())
            ptr = self.l.bpf_object__open_mem(self.data, len(self.data), ctypes.byref(self._opts))
            what = "bpf_object__open_mem"
        self.obj = libbpf.check_ptr(ptr, what, self.path)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detach(self, wait: bool = True) -> None:
        """Destroy every link: once this returns, no program of ours runs.  The maps stay readable until close().

        A tracepoint's program sits on a perf event, and the kernel waits for RCU grace periods twice to take
        it off: once for the program (perf_event_detach_bpf_prog), which links closed from many threads at
        once share, and once for the event itself (perf_trace_event_unreg, under the kernel's event_mutex:
        one event after another, ~35 ms each here).  So each tracepoint's perf event has a descriptor of our
        own (Attached.event): destroying the links concurrently takes every program off in about one grace
        period, and only then do the events, inert by now (no program, disabled), close.  wait=False: they
        close in a process of their own, which outlives this one (a run about to exit: nobody waits for
        the kernel's teardown; it holds nothing else)."""
        links, self.links = self.links, []
        events = [a.event for a in links if a.event >= 0]
        _each(self.l.bpf_link__destroy, [a.link for a in links])
        if not events:
            return
        if wait or not _hand_over(events):
            _each(_close, events)

    def close(self) -> None:
        self.detach()
        if self.obj:
            self.l.bpf_object__close(self.obj)
            self.obj = 0

    # -- before load --
    def configure(self, pid: int = 0, enforce: bool = False, map_entries: int | None = None,
                  ringbuf_size: int | None = None, live: tuple[int, int, int] | None = None,
                  cgroup: int = 0) -> None:
        """Set the program's read-only config (hq_cfg) and map sizes.  live: for an object built for
        `hookql serve`, (the service's hq_epoch map fd, this script's slot, this version's epoch).
        cgroup: count only the events of tasks in this cgroup (v2 id; `hookql test`'s workload scope)."""
        cfg = self.l.bpf_object__find_map_by_name(self.obj, b".rodata.hq_cfg")
        if not cfg:
            raise LoadError(f"{self.path} is not a HookQL object (no hq_cfg)")
        data = (pid.to_bytes(4, "little") + int(enforce).to_bytes(4, "little")  # struct hq_config
                + cgroup.to_bytes(8, "little"))
        if self.layout.get("serve"):
            fd, slot, epoch = live or (-1, 0, 0)
            data += slot.to_bytes(4, "little") + epoch.to_bytes(4, "little")
            if live is not None:
                m = self.l.bpf_object__find_map_by_name(self.obj, b"hq_epoch")
                libbpf.check_int(self.l.bpf_map__reuse_fd(m, fd), "bpf_map__reuse_fd", "hq_epoch")
        buf = ctypes.create_string_buffer(data, len(data))
        libbpf.check_int(self.l.bpf_map__set_initial_value(cfg, buf, len(data)), "bpf_map__set_initial_value",
                         ".rodata.hq_cfg")
        if ringbuf_size is not None and self.layout["emits"]:
            self.sizes["--ringbuf-size"] = ringbuf_size
            m = self.l.bpf_object__find_map_by_name(self.obj, b"hq_events")
            libbpf.check_int(self.l.bpf_map__set_max_entries(m, ringbuf_size), "bpf_map__set_max_entries",
                             "hq_events (--ringbuf-size must be a power of 2 and a multiple of the page size)")
        if map_entries is not None:
            self.sizes["--map-size"] = map_entries
            for agg in self.layout["aggregations"]:
                if agg["by"]:
                    m = self.l.bpf_object__find_map_by_name(self.obj, agg["map"].encode())
                    libbpf.check_int(self.l.bpf_map__set_max_entries(m, map_entries), "bpf_map__set_max_entries")
            for st in self.layout.get("states", []) + self.layout.get("entries", []):  # state maps: the same size
                m = self.l.bpf_object__find_map_by_name(self.obj, st["map"].encode())
                libbpf.check_int(self.l.bpf_map__set_max_entries(m, map_entries), "bpf_map__set_max_entries")

    def only(self, funcs: set[str]) -> None:
        """Load only these programs (the others are not even verified)."""
        prog = self.l.bpf_object__next_program(self.obj, None)
        while prog:
            name = self.l.bpf_program__name(prog).decode()
            self.l.bpf_program__set_autoload(prog, name in funcs)
            prog = self.l.bpf_object__next_program(self.obj, prog)

    # -- load and attach --
    def load(self) -> None:
        libbpf.messages.clear()
        _enough_files(len(self.layout.get("probes", ())))
        ret = self.l.bpf_object__load(self.obj)
        if ret < 0:
            raise _map_error(-ret, self.layout, self.sizes) or _load_error(-ret, self.layout)

    def attach_all(self) -> list[Attached]:
        for p in self.layout["probes"]:
            prog = self.l.bpf_object__find_program_by_name(self.obj, p["func"].encode())
            fd = self.l.bpf_program__fd(prog) if prog else -1
            if fd < 0:
                continue
            libbpf.messages.clear()
            link, event = self._attach_tracepoint(prog, p["section"]) if p["attach"] == "tp" else (None, -1)
            if not link:  # anything else, or anything the way above did not take: libbpf's own way and errors
                link = self.l.bpf_program__attach(prog)
            if not link:
                raise _attach_error(ctypes.get_errno(), p)
            self.links.append(Attached(p["text"], p["attach"], link, fd, p["func"], event))
        return self.links

    def _attach_tracepoint(self, prog, section: str) -> tuple[int | None, int]:
        """A tracepoint's program attached as libbpf would (a perf event on CPU 0, the program on it by a BPF
        link), on a perf event this process opened: (the link, our own descriptor of the event).  (None, -1):
        not done, let libbpf try."""
        pfd = _open_tracepoint(section)
        if pfd < 0:
            return None, -1
        link = self.l.bpf_program__attach_perf_event(prog, pfd)  # libbpf owns pfd from here on, if it attached
        if not link:
            _close(pfd)
            return None, -1
        if self.l.bpf_link__fd(link) == pfd:
            # no BPF perf link (before 5.15): the program is set on the event itself and goes only with its
            # last descriptor, so none is kept
            return link, -1
        try:
            return link, os.dup(pfd)
        except OSError:
            return link, -1

    def map_fd(self, name: str) -> int:
        m = libbpf.check_ptr(self.l.bpf_object__find_map_by_name(self.obj, name.encode()),
                             "bpf_object__find_map_by_name", name)
        return self.l.bpf_map__fd(m)


def _log(layout: dict | None = None) -> str:
    """libbpf's messages; with the layout, the verifier's line-info lines carry the script's own text."""
    log = "\n".join(m for _, m in libbpf.messages)
    if layout is not None:
        log = libbpf.annotate_log(log, layout.get("source", ""), layout.get("lines", {}))
    return log


def _failed_probe(layout: dict) -> dict | None:
    import re

    for _, m in reversed(libbpf.messages):
        hit = re.search(r"prog '(hq_(?:probe|enter)\d+)'", m)  # hq_enterN: a return's entry program
        if hit:
            return next((p for p in layout["probes"] if p["func"] == hit[1]), None)
    return None


# The maps HookQL declares, what each holds, and the option that sizes it.
_MAP_OPTION = {"hq_events": "--ringbuf-size"}
_DEFAULT_SIZE = {"--map-size": "4096 entries", "--ringbuf-size": "8 MiB"}


def _failed_map() -> str | None:
    """The map libbpf could not create, from its log ("map 'hq_agg0': failed to create: ...")."""
    import re

    for _, m in reversed(libbpf.messages):
        hit = re.search(r"map '([^']+)': failed to create", m)
        if hit:
            return hit[1]
    return None


def _map_error(err: int, layout: dict, sizes: dict) -> LoadError | None:
    """Map creation refused for its size (ENOMEM, E2BIG, EINVAL): what it is, not a HookQL bug."""
    name = _failed_map()
    if name is None or err not in (errno.ENOMEM, errno.E2BIG, errno.EINVAL):
        return None
    agg = next((a for a in layout["aggregations"] if a["map"] == name), None)
    st = next((s for s in layout.get("states", []) + layout.get("entries", []) if s["map"] == name), None)
    option = _MAP_OPTION.get(name) or ("--map-size" if agg and agg["by"] or st else None)
    what = (f"the map of `{agg['text']}` (line {agg['line']}, {name})" if agg
            else f"state '{st.get('name') or st['text'] + ' entries'}' (line {st['line']}, {name})" if st
            else "the ring buffer of `emit` (hq_events)" if name == "hq_events" else f"map {name}")
    size = (f"{option} {sizes[option]}" if option in sizes
            else f"its default size ({_DEFAULT_SIZE[option]})" if option else "its size")
    why = {errno.ENOMEM: "too large for this machine's memory or memory limits",
           errno.E2BIG: "too large for this kernel's limits", errno.EINVAL: "a size this kernel refuses"}[err]
    hint = (f"lower {option}" if option else "free some memory, or raise this process's memory limit (cgroup)")
    return LoadError(f"cannot create {what} with {size}: {why} ({errno.errorcode[err]})", hint, _log())


def _load_error(err: int, layout: dict) -> LoadError:
    p = _failed_probe(layout)
    what = p["text"] if p else "the programs"
    if err in (errno.EPERM, errno.EACCES) and not features.can_load_bpf():
        return LoadError(f"loading {what} needs privileges ({errno.errorcode.get(err)})",
                         "run as root, or with CAP_BPF, CAP_PERFMON (and CAP_SYS_ADMIN for LSM hooks)", _log())
    if p and err == errno.EPERM and p["attach"] in ("lsm", "fentry", "fexit"):
        hint = features.bpf_lsm_hint() if p["attach"] == "lsm" else None
        why = f"refused to load {what} as {p['attach']} (EPERM)"
        if p["attach"] in ("fentry", "fexit"):
            why = f"has no kprobes (CONFIG_KPROBES) and {why}"
        return LoadError(f"cannot attach {what}: this kernel {why}",
                         hint or "BPF trampolines (fentry/fexit/LSM programs) need an ftrace the kernel lets BPF "
                                 "modify; this one refuses. Run it on a stock distribution kernel (or the VM "
                                 "of the kernel test tier)", _log(), refused=True)
    if err in (errno.ESRCH, errno.ENOENT):
        return LoadError(f"{what}: the hook is missing from this kernel ({errno.errorcode.get(err)})",
                         "check the script with `hookql check` on this kernel", _log())
    return LoadError(f"the kernel's verifier rejected {what}: {libbpf.strerror(err)}",
                     "this is a HookQL bug: please report it with the verifier log (-v)", _log(layout))


def _enough_files(probes: int) -> None:
    """Each probe holds up to four descriptors (its program, its link and, for a tracepoint, its perf event,
    libbpf's and ours): a probe list of a few hundred passes the usual soft limit of 1024 open files.  Raise the
    soft limit as far as needed, within the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * probes + 256  # and the maps, the ring buffer, libbpf's own
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass  # attaching says "Too many open files", with its hint


def _attach_error(err: int, p: dict) -> LoadError:
    name = errno.errorcode.get(err, str(err))
    if err == errno.EMFILE:
        return LoadError(f"cannot attach {p['text']}: {libbpf.strerror(err)}",
                         "each probe holds up to four open files (its program, link, perf event twice): raise the "
                         "limit (`ulimit -n`), or attach fewer probes", _log())
    if p["attach"] in ("kprobe", "kretprobe") and not features.has_kprobes():
        return LoadError(f"cannot attach {p['text']}: this kernel has no kprobes (CONFIG_KPROBES)",
                         "run it on a kernel with kprobes, or where BPF trampolines work (fentry)", _log())
    if p["attach"] == "lsm":
        hint = features.bpf_lsm_hint()
        if hint:
            return LoadError(f"cannot attach {p['text']}: {name}", hint, _log())
    if p["attach"] == "tp" and err == errno.ENOENT:
        return LoadError(f"cannot attach {p['text']}: no such tracepoint on this kernel", None, _log())
    return LoadError(f"cannot attach {p['text']}: {libbpf.strerror(err)}", None, _log())


# -- tracepoints' perf events, and taking many probes off at once --
# perf_event_open(2)'s number, where HookQL opens a tracepoint's event itself (elsewhere libbpf does)
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "loongarch64": 241, "ppc64le": 319,
                    "ppc64": 319, "s390x": 331}.get(os.uname().machine)
_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 8


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr as of its first version (PERF_ATTR_SIZE_VER0, 64 bytes): what a tracepoint needs."""
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]


_libc = None


def _open_tracepoint(section: str) -> int:
    """A perf event on tracepoint `tp/CATEGORY/NAME` as libbpf opens one (CPU 0, any process); -1 when this
    machine is not one HookQL knows the system call of, or anything fails (libbpf then tries, and says why)."""
    global _libc
    parts = section.split("/")
    if _PERF_EVENT_OPEN is None or len(parts) != 3 or parts[0] not in ("tp", "tracepoint"):
        return -1
    try:
        with open(f"{features.TRACEFS}/events/{parts[1]}/{parts[2]}/id", "rb") as f:
            tp_id = int(f.read())
    except (OSError, ValueError):
        return -1
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    attr = _PerfEventAttr(type=_PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr), config=tp_id)
    c_long = ctypes.c_long
    fd = _libc.syscall(c_long(_PERF_EVENT_OPEN), ctypes.byref(attr), c_long(-1), c_long(0), c_long(-1),
                       c_long(_PERF_FLAG_FD_CLOEXEC))
    return fd if fd >= 0 else -1


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _each(fn, items: list, most: int = 128) -> None:
    """fn(x) for every x, from up to `most` threads at once: what each call waits for in the kernel (an RCU
    grace period) is shared by all the calls waiting at the same time, and ctypes calls and os.close let go
    of the GIL meanwhile.  Every item is done before this returns, a KeyboardInterrupt or not."""
    todo = list(items)
    if len(todo) < 2:
        for x in todo:
            fn(x)
        return
    import _thread  # not threading: its import shows in a run's exit

    finished: list[int] = []
    wake = _thread.allocate_lock()
    wake.acquire()

    def drain() -> None:
        while True:
            try:
                x = todo.pop()
            except IndexError:
                return
            fn(x)

    def work() -> None:
        try:
            drain()
        finally:
            finished.append(1)
            try:
                wake.release()
            except RuntimeError:  # released already: the waiter has not looked yet
                pass

    started = 0
    size = _thread.stack_size()
    try:
        _thread.stack_size(256 * 1024)  # they only call into C: not 8 MiB of address space each
    except (ValueError, RuntimeError):
        pass
    try:
        for _ in range(min(most, len(todo)) - 1):
            try:
                _thread.start_new_thread(work, ())
            except RuntimeError:  # no more threads: those started and this one do the rest
                break
            started += 1
    finally:
        _thread.stack_size(size)
    interrupted = None
    while True:
        try:
            drain()
            while len(finished) < started:
                wake.acquire(timeout=1)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _hand_over(fds: list[int]) -> bool:
    """Leave these descriptors to a process of their own, which closes them as it exits, and close ours: the
    kernel's teardown of what they hold then keeps nobody waiting.  Nothing else goes with them, and the
    holder drops them only after this process has (its drop is the last, the one the kernel works on).
    False: nothing was handed over; the caller closes them itself."""
    try:
        r, w = os.pipe()
    except OSError:
        return False
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return False
    if pid == 0:  # the go-between: keeps only these, leaves a process holding them, and is gone at once
        code = 1
        try:
            low = 0
            for fd in sorted(set(fds) | {r, w}):
                os.closerange(low, fd)
                low = fd + 1
            try:  # the highest open: without close_range(2) (before 5.9) closerange tries every number
                high = max(map(int, os.listdir("/proc/self/fd"))) + 1
            except (OSError, ValueError):
                high = os.sysconf("SC_OPEN_MAX")
            os.closerange(low, max(high, low))
            os.setsid()  # out of the terminal's process group: a Ctrl-C there is not for it
            if os.fork() == 0:  # the holder
                try:
                    os.close(w)
                    while os.read(r, 1):  # EOF: this process's copies and the go-between's are gone
                        pass
                finally:
                    os._exit(0)  # its descriptors close as it exits: the last of each, the kernel's work
            code = 0
        finally:
            os._exit(code)
    os.close(r)
    handed = False
    try:
        _, status = os.waitpid(pid, 0)
        handed = status == 0
        if handed:
            for fd in fds:
                _close(fd)
    finally:
        os.close(w)
    return handed
