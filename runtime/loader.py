"""Load and attach a HookQL object with libbpf, and release everything after.

BpfObject is a context manager: whatever happens (an attach failure, an
exception, Ctrl-C), every link is destroyed and the object closed, so no
program of ours outlives `hookql run`.
"""
from __future__ import annotations

import ctypes
import errno

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
    __slots__ = ("probe", "attach", "link", "prog_fd", "func")  # not a dataclass: its import is a tenth of a warm start

    def __init__(self, probe: str, attach: str, link: int, prog_fd: int = -1, func: str = ""):
        self.probe, self.attach, self.link, self.prog_fd, self.func = probe, attach, link, prog_fd, func

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

    def detach(self) -> None:
        """Destroy every link; the maps stay readable until close()."""
        while self.links:
            self.l.bpf_link__destroy(self.links.pop().link)

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
            link = self.l.bpf_program__attach(prog)
            if not link:
                raise _attach_error(ctypes.get_errno(), p)
            self.links.append(Attached(p["text"], p["attach"], link, fd, p["func"]))
        return self.links

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
    """Each probe holds up to three descriptors (its program, its link and, for a tracepoint, a perf event): a
    probe list of a few hundred passes the usual soft limit of 1024 open files.  Raise the soft limit as far as
    needed, within the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * probes + 256  # and the maps, the ring buffer, libbpf's own
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
                         "each probe holds up to three open files (its program, link, perf event): raise the limit "
                         "(`ulimit -n`), or attach fewer probes", _log())
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
