"""The options of `hookql run`, in one table read two ways.

argparse builds the full command line from it (help, usage, errors).  A warm
start never imports argparse: it and `re`, which it pulls in, cost about a
quarter of a cached run's time to attach.  `parse` below reads the common
spellings straight from the same table and gives up (None) on anything else
-- help, a typo, an abbreviated long option, a bad value -- so argparse then
parses the same argv and says what is wrong.
"""
from __future__ import annotations

import os  # imported by Python's startup anyway: free

UNITS = (("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def duration(text: str) -> float:
    """10s, 500ms, 2m, 1.5h; plain numbers are seconds."""
    t = text.strip()
    scale = 1.0
    for unit, s in sorted(UNITS, key=lambda u: -len(u[0])):  # "ms" before "m" and "s"
        if t.endswith(unit):
            t, scale = t[: -len(unit)], s
            break
    whole, dot, frac = t.partition(".")
    if not (whole.isdigit() and whole.isascii() and (not dot or (frac.isdigit() and frac.isascii()))):
        raise ValueError(f"'{text}' is not a duration (e.g. 10s, 500ms, 2m)")
    return float(t) * scale


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_MAP_SIZE = 1 << 28  # the kernel's ceiling for a hash map (2**28 buckets of 16 bytes: 4 GiB)
MAX_RINGBUF_SIZE = 1 << 31  # 2 GiB: the largest power of 2 under the kernel's ceiling (just under 4 GiB)
MAX_PID = 1 << 22  # PID_MAX_LIMIT on 64-bit kernels: no process id is larger


def pid(text: str) -> int:
    """-p: a process id, a positive integer."""
    n = _integer(text)
    if n is None or not 1 <= n <= MAX_PID:
        raise ValueError(f"'{text}' is not a process id (a positive integer, at most {MAX_PID})")
    return n


def map_size(text: str) -> int:
    """--map-size: entries per keyed aggregation, 1 .. MAX_MAP_SIZE."""
    n = _integer(text)
    if n is None or not 1 <= n <= MAX_MAP_SIZE:
        raise ValueError(f"'{text}' is not a map size: give a number of entries from 1 to {MAX_MAP_SIZE} "
                         "(2**28, the kernel's limit for a hash map; the default is 4096)")
    return n


def ringbuf_size(text: str) -> int:
    """--ringbuf-size: bytes, a power of 2 and a multiple of the page size, up to MAX_RINGBUF_SIZE."""
    n = _integer(text)
    if n is None or not PAGE_SIZE <= n <= MAX_RINGBUF_SIZE or n & (n - 1):
        raise ValueError(f"'{text}' is not a ring buffer size: give a power of 2 from the page size ({PAGE_SIZE}) "
                         f"to {MAX_RINGBUF_SIZE} (2 GiB), e.g. 8388608 (8 MiB, the default)")
    return n


def top(text: str) -> int:
    """--top: how many rows of each keyed aggregation to print, 1 .. MAX_MAP_SIZE."""
    n = _integer(text)
    if n is None or not 1 <= n <= MAX_MAP_SIZE:
        raise ValueError(f"'{text}' is not a row count: give a number from 1 to {MAX_MAP_SIZE}, e.g. --top 10")
    return n


def _integer(text: str) -> int | None:
    """A decimal integer as int() reads it (sign, spaces, underscores), or None."""
    try:
        return int(text)
    except ValueError:
        return None


# (flags, dest, how: "value" | "flag", convert, choices, metavar, help)
OPTIONS = (
    (("-e",), "expr", "value", str, None, "SCRIPT", "run this script text instead of a file"),
    (("-d", "--duration"), "duration", "value", duration, None, "TIME", "stop after TIME (10s, 500ms, 2m)"),
    (("-c",), "command", "value", str, None, "CMD", "run CMD once attached; stop when it exits"),
    (("-p",), "pid", "value", pid, None, "PID", "only events of process PID; stop when it exits"),
    (("--every",), "every", "value", duration, None, "TIME", "also print the aggregations every TIME"),
    (("--interval",), "interval", "flag", None, None, None,
     "with --every: print each interval's values only (counts since the last print), not running totals"),
    (("--top",), "top", "value", top, None, "N",
     "print only the N largest rows of each keyed aggregation, and how many were left out"),
    (("--format",), "format", "value", str, ("text", "json"), None, None),
    (("--emit-format",), "emit_format", "value", str, ("kv", "columns"), None,
     "text form of emit: kv (name=value, the default) or columns (a header, then aligned columns)"),
    (("--enforce",), "enforce", "flag", None, None, None, "let `deny` block; without it, deny only counts"),
    (("--map-size",), "map_size", "value", map_size, None, "N",
     f"entries per keyed aggregation, 1 to {MAX_MAP_SIZE} (default 4096, as bpftrace)"),
    (("--ringbuf-size",), "ringbuf_size", "value", ringbuf_size, None, "BYTES",
     f"ring buffer for emit, a power of 2 from the page size to {MAX_RINGBUF_SIZE} (default 8 MiB); "
     "drops are counted and reported"),
    (("-v", "--verbose"), "verbose", "flag", None, None, None, "say how each probe attached; show libbpf's log"),
)
DEFAULTS = {"file": None, "format": "text", "emit_format": "kv",
            **{o[1]: None for o in OPTIONS if o[2] == "value" and o[1] not in ("format", "emit_format")},
            **{o[1]: False for o in OPTIONS if o[2] == "flag"}}


def add_to(p) -> None:
    """Declare the options on an argparse (sub)parser."""
    import argparse

    def typed(convert):
        def conv(text):
            try:
                return convert(text)
            except ValueError as exc:  # argparse shows this message rather than "invalid value"
                raise argparse.ArgumentTypeError(str(exc)) from None
        conv.__name__ = convert.__name__
        return conv

    p.add_argument("file", nargs="?", metavar="FILE")
    for flags, dest, how, convert, choices, metavar, help in OPTIONS:
        if how == "flag":
            p.add_argument(*flags, dest=dest, action="store_true", help=help)
        else:
            p.add_argument(*flags, dest=dest, type=convert if convert in (str, int) else typed(convert),
                           choices=choices, metavar=metavar, help=help, default=DEFAULTS[dest])


class Args:
    """What argparse's Namespace would hold for the same argv."""

    def __init__(self, values: dict):
        self.__dict__.update(values)


_BY_FLAG = {f: o for o in OPTIONS for f in o[0]}


def parse(argv: list[str]) -> Args | None:
    """argv after `run`, read as argparse would; None when argparse must take over."""
    values = dict(DEFAULTS)
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a.startswith("-") and a != "-":
            flag, eq, inline = a.partition("=") if a.startswith("--") else (a[:2], "", a[2:])
            opt = _BY_FLAG.get(flag)
            if opt is None or a == "--" or inline.startswith("="):  # argparse reads `-d=1s` as `-d 1s`
                return None
            _, dest, how, convert, choices, _, _ = opt
            if how == "flag":
                if eq or inline:
                    return None  # `-vv`, `--enforce=1`: argparse's business
                values[dest] = True
                continue
            if eq or inline:
                text = inline
            elif i < len(argv) and not (argv[i].startswith("-") and argv[i] != "-"):
                text = argv[i]
                i += 1
            else:
                return None  # a missing value
            try:
                value = convert(text)
            except ValueError:
                return None
            if choices and value not in choices:
                return None
            values[dest] = value
        elif values["file"] is None:
            values["file"] = a
        else:
            return None  # a second positional
    return Args(values)
