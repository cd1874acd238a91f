"""What the kernel counts for a loaded program: runs and time spent (run_cnt, run_time_ns).

The kernel counts only while someone holds a bpf(BPF_ENABLE_STATS) file descriptor (or the global
sysctl kernel.bpf_stats_enabled is set, which HookQL never writes: other BPF users share it).
`hookql serve` holds one for as long as it serves; bench/ while it measures."""
from __future__ import annotations

import ctypes
import os

from hookql.runtime import libbpf

U32, U64 = ctypes.c_uint32, ctypes.c_uint64
BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type


class ProgInfo(ctypes.Structure):  # struct bpf_prog_info (linux/bpf.h), up to run_cnt
    _fields_ = [("type", U32), ("id", U32), ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", U32),
                ("xlated_prog_len", U32), ("jited_prog_insns", U64), ("xlated_prog_insns", U64),
                ("load_time", U64), ("created_by_uid", U32), ("nr_map_ids", U32), ("map_ids", U64),
                ("name", ctypes.c_char * 16), ("ifindex", U32), ("gpl_compatible", U32), ("netns_dev", U64),
                ("netns_ino", U64), ("nr_jited_ksyms", U32), ("nr_jited_func_lens", U32), ("jited_ksyms", U64),
                ("jited_func_lens", U64), ("btf_id", U32), ("func_info_rec_size", U32), ("func_info", U64),
                ("nr_func_info", U32), ("nr_line_info", U32), ("line_info", U64), ("jited_line_info", U64),
                ("nr_jited_line_info", U32), ("line_info_rec_size", U32), ("jited_line_info_rec_size", U32),
                ("nr_prog_tags", U32), ("prog_tags", U64), ("run_time_ns", U64), ("run_cnt", U64)]


def enable_stats() -> int:
    """Turn on run_time_ns / run_cnt accounting for as long as the returned fd is open."""
    fd = libbpf.lib().bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise OSError(err, f"bpf(BPF_ENABLE_STATS): {os.strerror(err)}")
    return fd


def info(fd: int) -> ProgInfo | None:
    """A program's info by its fd (one this process holds), or None."""
    out = ProgInfo()
    size = U32(ctypes.sizeof(out))
    if libbpf.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(out), ctypes.byref(size)) != 0:
        return None
    return out
