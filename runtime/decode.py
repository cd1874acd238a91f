"""Reading maps back into Python values (emitted records print in C: runtime/events.py).

Layouts come from the IR (hookql.codegen.ir), the same description the C was
generated from.  Per-CPU values are combined here: counts and sums add up,
min/max take the extreme of the CPUs that saw a value.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import ipaddress
import itertools

from hookql.runtime import libbpf

# Neither dataclasses nor hookql.constants (the type system) here: this module is imported as a run's tables
# print, and those imports were a fifth of a whole `hookql run -c /bin/true`.
_PROTO = {0: "IPPROTO_IP", 1: "IPPROTO_ICMP", 2: "IPPROTO_IGMP", 4: "IPPROTO_IPIP", 6: "IPPROTO_TCP",
          17: "IPPROTO_UDP", 41: "IPPROTO_IPV6", 47: "IPPROTO_GRE", 50: "IPPROTO_ESP", 51: "IPPROTO_AH",
          58: "IPPROTO_ICMPV6", 132: "IPPROTO_SCTP", 136: "IPPROTO_UDPLITE", 255: "IPPROTO_RAW",
          262: "IPPROTO_MPTCP"}
_TCP_STATE = {1: "TCP_ESTABLISHED", 2: "TCP_SYN_SENT", 3: "TCP_SYN_RECV", 4: "TCP_FIN_WAIT1", 5: "TCP_FIN_WAIT2",
              6: "TCP_TIME_WAIT", 7: "TCP_CLOSE", 8: "TCP_CLOSE_WAIT", 9: "TCP_LAST_ACK", 10: "TCP_LISTEN",
              11: "TCP_CLOSING", 12: "TCP_NEW_SYN_RECV"}
_SOCK_TYPE = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET",
              6: "SOCK_DCCP", 10: "SOCK_PACKET"}


class _Families(dict):
    """AF_* by value, read from hookql.constants the first time it is looked at."""

    def _load(self) -> "_Families":
        if not dict.__len__(self):
            from hookql.constants import ADDRESS_FAMILIES

            self.update({v: k for k, v in reversed(list(ADDRESS_FAMILIES.items()))})
        return self

    def get(self, key, default=None):
        return dict.get(self._load(), key, default)

    def __getitem__(self, key):
        return dict.__getitem__(self._load(), key)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self._load(), key)

    def __iter__(self):
        return dict.__iter__(self._load())

    def __len__(self) -> int:
        return dict.__len__(self._load())

    def items(self):
        return dict.items(self._load())

    def keys(self):
        return dict.keys(self._load())

    def values(self):
        return dict.values(self._load())


NAMES = {"af": _Families(), "proto": _PROTO, "tcp_state": _TCP_STATE, "sock_type": _SOCK_TYPE}


def _families() -> dict:
    """AF_* by value."""
    return NAMES["af"]._load()


def field_value(buf: bytes, f: dict):
    """One key/record field as a Python value: int, str or ip_address."""
    raw = buf[f["offset"]: f["offset"] + f["size"]]
    if f["kind"] == "str":
        return _str(raw)
    if f["kind"] == "addr":
        return _addr(raw)
    return int.from_bytes(raw, "little", signed=f["signed"])


_UNITS = ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us"))


def duration_text(ns: int) -> str:
    """A duration in nanoseconds as text: 950ns, 1.5us, 12.345ms, 2s (three decimals at most,
    truncated, trailing zeros dropped); runtime/events.c prints emitted durations the same way."""
    sign, v = ("-", -ns) if ns < 0 else ("", ns)
    for size, unit in _UNITS:
        if v >= size:
            whole, frac = divmod(v, size)
            frac = frac * 1000 // size
            return f"{sign}{whole}{('.' + f'{frac:03d}'.rstrip('0')) if frac else ''}{unit}"
    return f"{sign}{v}ns"


def display(value, kind: str | None):
    """How a value prints: names for families, protocols, TCP states, errnos; a cgroup id as its path, the
    container or the pod (runtime/cgroups.py)."""
    if isinstance(value, int):
        if kind in ("cgroup", "container", "pod"):
            from hookql.runtime import cgroups

            return cgroups.display(value, kind)
        if kind in NAMES:
            return NAMES[kind].get(value, value)
        if kind == "errno" and value < 0 and -value in _errno.errorcode:
            return f"-{_errno.errorcode[-value]}"
        if kind == "hex":
            return hex(value)
        return value
    return str(value)


def decode_key(buf: bytes, fields: list[dict]) -> dict:
    return {f["name"]: field_value(buf, f) for f in fields}


def _str(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace")


def _addr(b: bytes):
    a = ipaddress.IPv6Address(b)
    return a.ipv4_mapped or a


class Row:
    __slots__ = ("key", "value")  # not a dataclass: see the imports

    def __init__(self, key: dict, value: object):
        self.key = key
        self.value = value  # int, float (avg), None (min/max never set), or list of bucket counts

    def __eq__(self, other) -> bool:
        return isinstance(other, Row) and (self.key, self.value) == (other.key, other.value)

    def __repr__(self) -> str:
        return f"Row(key={self.key!r}, value={self.value!r})"


def combine(func: str, per_cpu: list[bytes], signed: bool):
    """Fold one key's per-CPU values."""
    if func in ("count", "sum"):
        return sum(int.from_bytes(v[:8], "little", signed=func == "sum") for v in per_cpu)
    if func == "avg":
        total = sum(int.from_bytes(v[:8], "little", signed=True) for v in per_cpu)
        count = sum(int.from_bytes(v[8:16], "little") for v in per_cpu)
        return int(total / count) if count else 0  # integer mean, as bpftrace prints it
    if func in ("min", "max"):
        seen = [int.from_bytes(v[:8], "little", signed=True) for v in per_cpu if int.from_bytes(v[8:16], "little")]
        return (min(seen) if func == "min" else max(seen)) if seen else None
    n = len(per_cpu[0]) // 8
    return [sum(int.from_bytes(v[8 * i: 8 * i + 8], "little") for v in per_cpu) for i in range(n)]


class MapReader:
    def __init__(self):
        self.l = libbpf.lib()
        self.ncpus = libbpf.check_int(self.l.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")

    def values(self, fd: int, key, value_size: int, per_cpu: bool = True) -> list[bytes] | None:
        """A key's value: one per CPU from a per-CPU map (each 8-byte aligned), else one."""
        stride = (value_size + 7) // 8 * 8
        n = self.ncpus if per_cpu else 1
        buf = ctypes.create_string_buffer(stride * n)
        if self.l.bpf_map_lookup_elem(fd, key, buf) < 0:
            return None  # deleted since get_next_key
        raw = buf.raw
        return [raw[i * stride: i * stride + value_size] for i in range(n)]

    def rows(self, fd: int, agg: dict) -> list[Row]:
        func, vsize, per_cpu = agg["func"], agg["value_size"], agg["per_cpu"]
        out = []
        if not agg["by"]:
            key = ctypes.c_uint32(0)
            vals = self.values(fd, ctypes.byref(key), vsize)
            if vals is not None:
                out.append(Row({}, combine(func, vals, agg["value_signed"])))
            return out
        ksize = agg["key_size"]
        cur = ctypes.create_string_buffer(ksize)
        nxt = ctypes.create_string_buffer(ksize)
        prev = None
        while self.l.bpf_map_get_next_key(fd, prev, nxt) == 0:
            ctypes.memmove(cur, nxt, ksize)
            prev = cur
            vals = self.values(fd, cur, vsize, per_cpu)
            if vals is not None:
                out.append(Row(decode_key(cur.raw, agg["by"]), combine(func, vals, agg["value_signed"])))
        return out

    STACK_DEPTH = 127  # the stack map's value: this many addresses, unused ones 0 (codegen/templates/maps.c.j2)

    def stacks(self, fd: int, agg: dict, rows: list[Row], ksyms) -> None:
        """Replace each kstack key (a stack id, or -errno) of `rows` by its symbolised KStack (runtime/ksyms.py).
        Ids are looked up once per print; the kernel never removes a stack from the map."""
        from hookql.runtime.ksyms import KStack, stack_error

        names = [f["name"] for f in agg["by"] if f["display"] == "kstack"]
        seen: dict[int, KStack] = {}
        for row in rows:
            for name in names:
                sid = row.key[name]
                if sid not in seen:
                    seen[sid] = KStack(sid, error=stack_error(-sid)) if sid < 0 else self._stack(fd, sid, ksyms)
                row.key[name] = seen[sid]

    def _stack(self, fd: int, sid: int, ksyms):
        from hookql.runtime.ksyms import KStack, stack_error

        key = ctypes.c_uint32(sid)
        buf = (ctypes.c_uint64 * self.STACK_DEPTH)()
        if self.l.bpf_map_lookup_elem(fd, ctypes.byref(key), buf) < 0:
            return KStack(sid, error=stack_error(_errno.ENOENT))
        return ksyms.stack(sid, list(itertools.takewhile(bool, buf)))  # frames end at the first 0

    def keys(self, fd: int, key_size: int) -> list[bytes]:
        """Every key of a hash map, all read before any is used: deleting while walking restarts the walk."""
        keys, nxt, prev = [], ctypes.create_string_buffer(key_size), None
        while self.l.bpf_map_get_next_key(fd, prev, nxt) == 0:
            keys.append(nxt.raw)
            prev = ctypes.create_string_buffer(nxt.raw, key_size)
        return keys

    BATCH = 4096  # entries a batch call moves

    def entries(self, fd: int, key_size: int, value_size: int, per_cpu: bool, take: bool = False):
        """(key bytes, per-CPU values) of every entry of a hash map, read (or, take=True, read and removed) a
        batch of entries a system call (BPF_MAP_LOOKUP_BATCH, 5.6); a kernel or map without batches is read
        a key at a time.  Only for maps no program writes meanwhile when take is set."""
        stride = (value_size + 7) // 8 * 8
        n = self.ncpus if per_cpu else 1
        keys = ctypes.create_string_buffer(key_size * self.BATCH)
        vals = ctypes.create_string_buffer(stride * n * self.BATCH)
        token_in, token_out = ctypes.create_string_buffer(max(key_size, 8)), ctypes.create_string_buffer(max(key_size, 8))
        call = self.l.bpf_map_lookup_and_delete_batch if take else self.l.bpf_map_lookup_batch
        out, first = [], True
        while True:
            count = ctypes.c_uint32(self.BATCH)
            ret = call(fd, None if first else token_in, token_out, keys, vals, ctypes.byref(count), None)
            err = -ret if ret < 0 else 0
            if err and err != _errno.ENOENT:
                if first and err in (_errno.EINVAL, _errno.EOPNOTSUPP, _errno.ENOTSUP, 524):
                    return self._entries_one_by_one(fd, key_size, value_size, per_cpu, take)
                raise libbpf.LibbpfError(err, "bpf_map_lookup_batch")
            kr, vr = keys.raw, vals.raw
            for i in range(count.value):
                v = vr[i * stride * n: (i + 1) * stride * n]
                out.append((kr[i * key_size: (i + 1) * key_size],
                            [v[c * stride: c * stride + value_size] for c in range(n)]))
            if err == _errno.ENOENT:  # the last batch (possibly with entries)
                return out
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def _entries_one_by_one(self, fd: int, key_size: int, value_size: int, per_cpu: bool, take: bool):
        out = []
        for k in self.keys(fd, key_size):
            kb = ctypes.create_string_buffer(k, key_size)
            vals = self.values(fd, kb, value_size, per_cpu)
            if vals is None:
                continue
            if take:
                self.l.bpf_map_delete_elem(fd, kb)
            out.append((k, vals))
        return out

    def zero(self, fd: int, key, value_size: int, name: str) -> None:
        """Zero a per-CPU array's value on every CPU (an unkeyed aggregation taken or reset)."""
        stride = (value_size + 7) // 8 * 8
        zero = ctypes.create_string_buffer(stride * self.ncpus)
        libbpf.check_int(self.l.bpf_map_update_elem(fd, key, zero, 0), "bpf_map_update_elem", name)

    def count_keys(self, fd: int, key_size: int) -> int:
        """How many entries a hash map holds now (a state map's leftovers at exit)."""
        return len(self.keys(fd, key_size))

    def stats(self, fd: int, names: list[str]) -> dict[str, int]:
        out = {}
        for i, name in enumerate(names):
            key = ctypes.c_uint32(i)
            vals = self.values(fd, ctypes.byref(key), 8)
            out[name] = sum(int.from_bytes(v, "little") for v in vals) if vals else 0
        return out
