"""What the kernel says about loaded BPF programs, asked directly through
libbpf (ctypes) rather than by running bpftool: the startup clock polls this
every millisecond, and a bpftool process per poll would be coarse and would
compete with the tool being timed for the machine's two cores."""
from __future__ import annotations

import ctypes
import os

from hookql.runtime.progstats import ProgInfo, enable_stats  # noqa: F401 - one definition, shared with serve

U32, U64 = ctypes.c_uint32, ctypes.c_uint64
PROBE_TYPES = {2: "kprobe", 5: "tracepoint", 17: "raw_tracepoint", 26: "tracing", 29: "lsm"}  # enum bpf_prog_type


_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_lib.bpf_prog_get_next_id.argtypes = [U32, ctypes.POINTER(U32)]
_lib.bpf_link_get_next_id.argtypes = [U32, ctypes.POINTER(U32)]
_lib.bpf_link_get_fd_by_id.argtypes = [U32]
_lib.bpf_prog_get_fd_by_id.argtypes = [U32]
_lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(U32)]
_lib.bpf_task_fd_query.argtypes = [ctypes.c_int, ctypes.c_int, U32, ctypes.c_char_p, ctypes.POINTER(U32),
                                   ctypes.POINTER(U32), ctypes.POINTER(U32), ctypes.POINTER(U64),
                                   ctypes.POINTER(U64)]


def _info(fd: int, info: ctypes.Structure) -> bool:
    size = U32(ctypes.sizeof(info))
    return _lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) == 0


def progs() -> dict[int, dict]:
    """Every loaded probe program (the kinds the tools attach): id -> its counters and sizes."""
    out, cur = {}, U32(0)
    while _lib.bpf_prog_get_next_id(cur.value, ctypes.byref(cur)) == 0:
        fd = _lib.bpf_prog_get_fd_by_id(cur.value)
        if fd < 0:
            continue  # gone since it was listed
        try:
            info = ProgInfo()
            if not _info(fd, info):
                continue
        finally:
            os.close(fd)
        if info.type in PROBE_TYPES:
            out[cur.value] = {"type": PROBE_TYPES[info.type], "run_time_ns": info.run_time_ns,
                              "run_cnt": info.run_cnt, "bytes_xlated": info.xlated_prog_len,
                              "bytes_jited": info.jited_prog_len}
    return out


class LinkInfo(ctypes.Structure):  # struct bpf_link_info (linux/bpf.h), its common head
    _fields_ = [("type", U32), ("id", U32), ("prog_id", U32), ("rest", ctypes.c_uint8 * 100)]


def linked_programs() -> set[int]:
    """Programs attached through a BPF link (LSM, fentry, and libbpf's kprobes and tracepoints)."""
    out, cur = set(), U32(0)
    while _lib.bpf_link_get_next_id(cur.value, ctypes.byref(cur)) == 0:
        fd = _lib.bpf_link_get_fd_by_id(cur.value)
        if fd < 0:
            continue
        try:
            info = LinkInfo()
            if _info(fd, info):
                out.add(info.prog_id)
        finally:
            os.close(fd)
    return out


def held_links(pid: int) -> set[int]:
    """Programs on the BPF links process `pid` holds (libbpf's tracepoints, kprobes, LSM, fentry), read from
    /proc/PID/fdinfo: only this process's, where linked_programs() sees every link on the host -- another
    tool loading at the same moment would pass for the one being timed."""
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf_link":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        out.add(int(line.split()[1]))
        except (OSError, ValueError):
            continue  # closed since it was listed
    return out


def perf_programs(pid: int) -> set[int]:
    """Programs process `pid` set on perf events or raw tracepoints it holds (how bpftrace 0.17
    attaches tracepoints and kprobes, with no link)."""
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    buf = ctypes.create_string_buffer(256)
    for fd in fds:
        size, prog, kind, off, addr = U32(256), U32(), U32(), U64(), U64()
        if _lib.bpf_task_fd_query(pid, int(fd), 0, buf, ctypes.byref(size), ctypes.byref(prog), ctypes.byref(kind),
                                  ctypes.byref(off), ctypes.byref(addr)) == 0:
            out.add(prog.value)
    return out


def attached(pid: int, before: set[int]) -> set[int]:
    """The programs loaded since `before` (a progs() snapshot) that are attached: the tool's
    probes that fire, however it attached them."""
    new = set(progs()) - before
    return new & (held_links(pid) | perf_programs(pid))


# -- the processes HookQL leaves behind: a run hands its tracepoints' perf events (no program on them any more)
# to a process of its own that closes them as it exits (runtime/loader.py BpfObject.detach), the kernel's slow
# part.  A measurement that starts meanwhile would queue behind that work in the kernel (event_mutex), so the
# benchmarks adopt such processes and wait for them between measurements.
PR_SET_CHILD_SUBREAPER = 36


_lib_c = ctypes.CDLL(None, use_errno=True)


def subreaper() -> None:
    """Adopt orphaned descendants (HookQL's holder of perf events): they can be waited for, and timed."""
    if _lib_c.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _children() -> set[int]:
    me = os.getpid()
    try:
        out = set()
        for t in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{t}/children") as f:
                out |= {int(p) for p in f.read().split()}
        return out
    except OSError:  # no CONFIG_PROC_CHILDREN: every process's parent
        out = set()
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{p}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(p))
        return out


def reap() -> None:
    """Wait for every child left: call it once the tool a measurement started has been waited for, so the
    children left are adopted ones."""
    while kids := _children():
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
