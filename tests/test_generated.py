"""A script that checks always builds and loads: a property over generated scripts.

The generator writes well-typed HookQL (README "The language",
grammar/hookql.lark) against tracepoints this kernel really has, with their
real fields: where filters (comparisons, and/or/not, arithmetic with
/ % << >> & | ^, `in` sets and networks, strings, addresses, consts, defs),
every aggregation with and without `by` keys, emit, several clauses. Every
script the checker accepts must build with clang and load in the verifier
(as root), and nothing may raise but a Diagnostic.

CI runs a bounded sample. A long run:

    python3 tests/test_generated.py --long 10000 [--seed S] [--out DIR]

prints "N generated, C checked, B built, L loaded, F failures" and saves each
failing script (with what went wrong) under DIR.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import traceback
from functools import cache
from pathlib import Path

from hookql.fields import ARGS, CGROUP_VIEWS, CURRENT, shadowed_builtins

HOOKS = ["syscalls:sys_enter_getsockopt", "syscalls:sys_enter_connect", "syscalls:sys_enter_kill",
         "syscalls:sys_exit_read", "sched:sched_process_exec", "sock:inet_sock_set_state",
         "tcp:tcp_retransmit_skb", "net:netif_receive_skb", "skb:kfree_skb",
         "syscalls:sys_enter_openat",  # filename: a user string (bpf_probe_read_user_str)
         # family addr port, saddr sport / daddr dport: a struct sockaddr * read from user memory
         "syscalls:sys_enter_bind", "syscalls:sys_enter_sendto",
         # a sys_exit_X sees sys_enter_X's fields, saved per thread at entry: integers (sys_exit_read's fd,
         # count; sys_exit_kill's pid, a builtin's name), a user string and user sockaddrs read at the exit
         "syscalls:sys_exit_kill", "syscalls:sys_exit_openat", "syscalls:sys_exit_bind", "syscalls:sys_exit_connect"]
AGGS = ["count", "sum", "avg", "min", "max", "hist", "lhist"]
INT_OPS = ["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]
CMP_OPS = ["==", "!=", "<", "<=", ">", ">="]
STRINGS = ["", "curl", "a", "python3", "sh", "/bin/true", 'q"uote', "back\\\\slash", "tab\\t", "caf\u00e9",
           "x" * 15, "y" * 16, "z" * 40, "??/", "*/", "%s%n"]
ADDRS = ["10.0.0.1", "127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "fe80::1", "::ffff:10.0.0.1",
         "2001:db8::1"]
NETS = ["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8", "0.0.0.0/0", "fe80::/10", "::/0", "::ffff:0:0/96",
        "10.1.2.3/32", "2001:db8::/32"]
INTS = [0, 1, 2, 3, 7, 10, 255, 256, 1000, 4444, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -1,
        -2, -1000, -(2**31), -(2**63)]
# Probe lists (`on A, B { ... }`, tracepoint wildcards): tracepoints that share fields, as README's "Probe lists"
# says (a field of every probe, typed alike; the `probe` builtin tells them apart).  Wildcards are expanded here
# too, to know the fields their matches share.
GROUPS = [["syscalls:sys_enter_getpgid", "syscalls:sys_enter_getsid"],  # pid
          ["syscalls:sys_enter_getsockopt", "syscalls:sys_enter_setsockopt"],  # fd level optname
          ["syscalls:sys_enter_connect", "syscalls:sys_enter_bind"],  # fd addrlen, family addr port (user sockaddr)
          ["syscalls:sys_enter_read", "syscalls:sys_enter_write", "syscalls:sys_enter_pread64"],  # fd buf count
          ["syscalls:sys_exit_bind", "syscalls:sys_exit_connect"],  # ret, and the entry's fields saved per thread
          ["syscalls:sys_enter_openat", "sched:sched_process_exec"],  # filename: a user string, a __data_loc one
          ["sock:inet_sock_set_state", "tcp:tcp_retransmit_skb"],  # skaddr saddr daddr sport dport family
          ["syscalls:sys_enter_getp*"], ["syscalls:sys_enter_get*id", "syscalls:sys_exit_getppid"], ["sock:*"],
          ["syscalls:sys_enter_kill", "syscalls:sys_enter_tkill", "syscalls:sys_enter_tgkill"]]  # sig; pid: some
STATE_KEYS = [("pid", "one"), ("tid", "one"), ("comm", "one"), ("cpu", "one"), ("pid, comm", "two"),
              ("uid, tid", "two")]
KCONSTS = ["AF_INET", "AF_INET6", "EPERM", "IPPROTO_TCP", "SOCK_STREAM", "TCP_ESTABLISHED", "SO_RCVBUF"]


# -- the hooks and fields of this kernel ---------------------------------------------------------------
@cache
def hooks() -> dict[str, dict[str, tuple]]:
    """hook -> {field: (kind, bits, signed, size)} for the tracepoints this kernel has."""
    from hookql import kernel as K
    from hookql.catalog import Catalog

    kern, cat = K.running(), Catalog.load()
    out = {}
    for name in HOOKS:
        try:
            h = cat.resolve("tracepoint", name.split(":"), kern)
        except Exception:
            continue
        shape = lambda f: (f.ty.kind, f.ty.bits, f.ty.signed, f.ty.size)  # noqa: E731
        fields = {f.name: shape(f) for f in h.fields.values() if f.ty.kind in ("int", "str", "addr")}
        # the explicit spellings too: args.X for the hook's own field, current.X for the builtin
        fields.update({f"{CURRENT if f.kind == 'builtin' else ARGS}.{f.name}": shape(f)
                       for f in [*h.fields.values(), *shadowed_builtins(h.fields).values()]
                       if f.ty.kind in ("int", "str", "addr")})
        if fields:
            out[name] = fields
    return out


@cache
def groups() -> list[tuple[list[str], dict[str, tuple]]]:
    """(the probes as written, the fields every probe of the group has alike) for the GROUPS of this kernel."""
    from fnmatch import fnmatchcase

    from hookql import kernel as K
    from hookql.catalog import Catalog, tracepoint_list

    kern, cat = K.running(), Catalog.load()
    tps = [f"{c}:{e}" for c, e in tracepoint_list(kern)[0]]
    out = []
    for group in GROUPS:
        names = [t for g in group for t in (sorted(x for x in tps if fnmatchcase(x, g)) if "*" in g else [g])]
        try:
            hs = [cat.resolve("tracepoint", name.split(":"), kern) for name in names]
        except Exception:
            continue
        if not hs or len(names) > 64 or len(set(names)) < len(names):
            continue
        per = []
        for h in hs:  # name -> (shape, is the builtin): a bare name must mean the same on every probe
            fs = {}
            for f in [*h.fields.values(), *shadowed_builtins(h.fields).values()]:
                if f.ty.kind in ("int", "str", "addr"):
                    shape = ((f.ty.kind, f.ty.bits, f.ty.signed, f.ty.size), f.ty.display, f.kind == "builtin")
                    fs.setdefault(f.name, shape)
                    fs[f"{CURRENT if f.kind == 'builtin' else ARGS}.{f.name}"] = shape
            per.append(fs)

        def alike(shapes) -> bool:  # what the checker unifies: strings of any size, integers of one display
            (k0, *_), d0, b0 = shapes[0]
            if any(k != k0 or d != d0 or b != b0 for (k, *_), d, b in shapes):
                return False
            ints = [sh for sh, _, _ in shapes if sh[0] == "int"]
            return not (any(sh[2] for sh in ints) and any(sh[1] == 64 and not sh[2] for sh in ints))

        common = {n: per[0][n][0] for n in per[0] if all(n in fs for fs in per) and alike([fs[n] for fs in per])}
        if common:
            out.append((group, common))
    return out


# -- randomness: hypothesis's data or a seeded Random, behind one small interface -------------------------
class Rand:
    def __init__(self, source):
        self.r = source if isinstance(source, random.Random) else None
        self.data = None if self.r else source

    def int(self, lo: int, hi: int) -> int:
        if self.r:
            return self.r.randint(lo, hi)
        from hypothesis import strategies as st
        return self.data.draw(st.integers(lo, hi))

    def choice(self, seq):
        seq = list(seq)
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        return self.int(0, 999) < int(p * 1000)


# -- the generator ---------------------------------------------------------------------------------------
class _Gen:
    def __init__(self, rng: Rand):
        self.r = rng
        self.lines: list[str] = []
        self.int_consts: list[str] = []
        self.str_consts: list[str] = []
        self.set_consts: list[str] = []  # int sets
        self.strset_consts: list[str] = []
        self.net_consts: list[str] = []
        self.int_defs: list[tuple[str, int]] = []  # name, arity: int -> int
        self.pred_defs: list[tuple[str, int]] = []  # name, arity: int -> bool
        self.addr_defs: list[str] = []  # addr -> bool
        self.fields: dict[str, tuple] = {}
        self.states: list[str] = []
        self.probe_names: list[str] = []  # a probe list's hooks, for `probe == "tracepoint:..."`
        self.ts_states: list[tuple[str, str]] = []

    # -- pieces --
    def string(self) -> str:
        return '"' + self.r.choice(STRINGS).replace('"', '\\"') + '"'

    def int_lit(self) -> str:
        r = self.r
        k = r.int(0, 9)
        if k <= 4:
            return str(r.int(0, 100))
        if k == 5:
            v = r.choice(INTS)
            return str(v) if v >= 0 else f"({v})"
        if k == 6:
            return hex(r.int(0, 2**32))
        if k == 7:
            return r.choice(["0x10", "3", "1000000"])  # durations have their own expressions (dur_expr)
        if k == 8 and self.int_consts:
            return r.choice(self.int_consts)
        return r.choice(KCONSTS)

    def fields_of(self, kind: str) -> list[str]:
        # ts is a timestamp, not a plain integer: it appears in dur_expr; container and pod only print (a `by`
        # key or an `emit` value, as themselves: by_key, emit_value)
        return [f for f, (k, *_) in self.fields.items() if k == kind and f != "ts"
                and f.rpartition(".")[2] not in CGROUP_VIEWS]

    # -- time and state across probes --
    def dur_lit(self) -> str:
        return self.r.choice(["1ms", "10s", "5us", "3ns", "2m", "1h", "0ns", "250us"])

    def dur_expr(self, depth: int = 1) -> str:
        """A duration: a literal, ts - a stored timestamp, sums and scalings of those."""
        r = self.r
        k = r.int(0, 5)
        if depth <= 0 or k == 0:
            return self.dur_lit()
        if k <= 2 and self.ts_states:
            name, key = r.choice(self.ts_states)
            return f"(ts - {name}[{key}])"
        if k == 3:
            return f"({self.dur_expr(depth - 1)} {r.choice(['+', '-'])} {self.dur_expr(depth - 1)})"
        if k == 4:
            return f"({self.dur_expr(depth - 1)} {r.choice(['*', '/'])} {r.int(1, 1000)})"
        return "(ts - ts)"

    def dur_cond(self) -> str:
        r = self.r
        if r.chance(0.2):
            return f"ts {r.choice(CMP_OPS)} ts"
        return f"{self.dur_expr()} {r.choice(CMP_OPS)} {r.choice([self.dur_lit(), self.dur_expr(), '0'])}"

    def state_key(self) -> str:
        return self.r.choice(STATE_KEYS)

    def state_pair(self) -> list[str]:
        """A clause storing into a state map and one reading it (with `in` guards, durations, hist of
        durations, where on durations) and deleting, on this kernel's tracepoints."""
        r = self.r
        name = f"st{len(self.states)}"
        key, kind = r.choice(STATE_KEYS)
        self.states.append(name)
        value = r.int(0, 3)
        h1, h2 = r.choice(sorted(hooks())), r.choice(sorted(hooks()))
        self.fields = hooks()[h1]
        head = f"tracepoint:{h1}"
        if groups() and r.chance(0.25):  # the store in a probe list; the read in another clause
            head = self.probe_list()
            if "pid" not in self.fields:  # a field on some of its probes: the builtin, spelled out
                key = key.replace("pid", "current.pid")
        where = f" where {self.cond(1)}" if r.chance(0.5) else ""
        if value == 0:
            store, read = f"{name}[{key}] = ts", None
        elif value == 1:
            store, read = f"{name}[{key}] = {{comm, pid}}", r.choice([f"{name}[{key}].comm", f"{name}[{key}].pid"])
        elif value == 2:
            store, read = f"{name}[{key}] = {self.int_expr(1)}", f"{name}[{key}]"
        else:
            store, read = f"{name}[{key}] = comm", f"{name}[{key}]"
        first = f"on {head}{where} {{ {store}; {self.action()} }}"
        self.probe_names = []
        self.fields = hooks()[h2]
        if value == 0:
            self.ts_states.append((name, key))
        acts = []
        guard = r.chance(0.6)
        conds = [f"{key} in {name}"] if guard and kind == "one" else []
        if value == 0 and r.chance(0.5):
            conds.append(self.dur_cond())
        if r.chance(0.3):
            conds.append(self.cond(1))
        if value == 0:
            d = self.dur_expr()
            acts.append(r.choice([f"hist({d})", f"avg({d}) by comm", f"lhist({d}, 0, 100ms, 10ms)", f"max({d})",
                                  f"emit comm, {d}", f"sum({d}) by {self.by_key()}", "count"]))
        else:
            acts.append(r.choice([f"count by {read}", f"emit {read}, pid"]))
        if r.chance(0.8):
            acts.append(f"delete {name}[{key}]")
        if r.chance(0.3):
            acts.append(self.action())
        where2 = f" where {' and '.join(conds)}" if conds else ""
        second = f"on tracepoint:{h2}{where2} {{ {'; '.join(acts)} }}"
        if value == 0:
            self.ts_states.remove((name, key))
        return [first, second]

    def int_expr(self, depth: int) -> str:
        r = self.r
        ints = self.fields_of("int")
        if depth <= 0 or r.chance(0.35):
            return r.choice(ints) if ints and r.chance(0.7) else self.int_lit()
        k = r.int(0, 9)
        if k <= 5:
            return f"({self.int_expr(depth - 1)} {r.choice(INT_OPS)} {self.int_expr(depth - 1)})"
        if k == 6:
            return f"{r.choice(['-', '~'])}{self.int_expr(depth - 1)}"
        if k == 7 and self.int_defs:
            name, arity = r.choice(self.int_defs)
            return f"{name}({', '.join(self.int_expr(depth - 1) for _ in range(arity))})"
        return f"({self.int_expr(depth - 1)})"

    def cond(self, depth: int) -> str:
        r = self.r
        if depth <= 0 or r.chance(0.3):
            return self.atom_cond(depth)
        k = r.int(0, 5)
        if k <= 1:
            return f"({self.cond(depth - 1)} {r.choice(['and', 'or', '&&', '||'])} {self.cond(depth - 1)})"
        if k == 2:
            return f"{r.choice(['not ', '!'])}({self.cond(depth - 1)})"
        if k == 3:
            n = r.int(2, 6)
            return "(" + f" {r.choice(['and', 'or'])} ".join(self.atom_cond(0) for _ in range(n)) + ")"
        return self.atom_cond(depth)

    def atom_cond(self, depth: int) -> str:
        r = self.r
        strs, addrs = self.fields_of("str"), self.fields_of("addr")
        if self.probe_names and r.chance(0.15):  # which probe of the list fired
            names = [f'"tracepoint:{n}"' for n in self.probe_names] + ['"kprobe:x"', '""']
            if r.chance(0.5):
                return f"{r.choice(['probe', 'current.probe'])} {r.choice(['==', '!='])} {r.choice(names)}"
            return f"probe {r.choice(['in', 'not in'])} {{{', '.join(r.choice(names) for _ in range(r.int(1, 3)))}}}"
        k = r.int(0, 11)
        if k == 0 and strs:
            rhs = r.choice(self.str_consts) if self.str_consts and r.chance(0.3) else self.string()
            return f"{r.choice(strs)} {r.choice(['==', '!='])} {rhs}"
        if k == 1 and len(strs) >= 2 or k == 1 and strs and r.chance(0.5):
            return f"{r.choice(strs)} {r.choice(['==', '!='])} {r.choice(strs)}"
        if k == 2 and strs:
            items = r.choice(self.strset_consts) if self.strset_consts and r.chance(0.4) else \
                "{" + ", ".join(self.string() for _ in range(r.int(1, 4))) + "}"
            return f"{r.choice(strs)} {r.choice(['in', 'not in'])} {items}"
        if k == 3 and addrs:
            a = r.choice(addrs)
            j = r.int(0, 4)
            if j == 0:
                return f"{a} {r.choice(['==', '!='])} {r.choice(ADDRS)}"
            if j == 1:
                net = r.choice(self.net_consts) if self.net_consts and r.chance(0.4) else r.choice(NETS)
                return f"{a} {r.choice(['in', 'not in'])} {net}"
            if j == 2:
                return f"{a} in {{{', '.join(r.choice(NETS + ADDRS) for _ in range(r.int(1, 4)))}}}"
            if j == 3 and self.addr_defs:
                return f"{r.choice(self.addr_defs)}({a})"
            return f"{a} {r.choice(['==', '!='])} {r.choice(addrs)}"
        if k == 4:
            items = r.choice(self.set_consts) if self.set_consts and r.chance(0.4) else \
                "{" + ", ".join(self.int_lit() for _ in range(r.int(1, 5))) + "}"
            return f"{self.int_expr(depth)} {r.choice(['in', 'not in'])} {items}"
        if k == 5 and self.pred_defs:
            name, arity = r.choice(self.pred_defs)
            return f"{name}({', '.join(self.int_expr(depth) for _ in range(arity))})"
        if k == 6:  # two constants
            return r.choice(['"a" != "b"', '"a" == "a"', "1 == 2", "AF_INET != AF_INET6", '"x" in {"x", "y"}',
                             "10.0.0.1 in 10.0.0.0/8", "::1 == ::1", "3 in {1, 2}", "2 < 3"])
        return f"{self.int_expr(depth)} {r.choice(CMP_OPS)} {self.int_expr(depth)}"

    def key(self) -> str:
        r = self.r
        strs, addrs = self.fields_of("str"), self.fields_of("addr")
        k = r.int(0, 5)
        if k == 0 and strs:
            return r.choice(strs)
        if k == 1 and addrs:
            return r.choice(addrs)
        return self.int_expr(r.int(0, 2))

    def action(self) -> str:
        r = self.r
        k = r.int(0, 9)
        if k == 9:
            return "emit " + ", ".join(self.emit_value() for _ in range(r.int(1, 5)))
        f = r.choice(AGGS)
        if f == "count":
            text = "count"
        elif f == "lhist":
            lo = r.choice([0, 0, -100, 1, -(2**40), 10])
            step = r.choice([1, 2, 10, 1000, 7, 2**30])
            n = r.int(1, 40)
            text = f"lhist({self.int_expr(2)}, {lo}, {lo + step * n - r.int(0, step - 1)}, {step})"
        else:
            text = f"{f}({self.int_expr(r.int(0, 3))})"
        if r.chance(0.5):
            text += " by " + ", ".join(self.by_key() for _ in range(r.int(1, 3)))
        if r.chance(0.3):  # its name where it is exported (hookql serve) and where a test case names it
            self.aliases = getattr(self, "aliases", 0) + 1
            text += f" as g{self.aliases}"
        return text

    def by_key(self) -> str:
        """A `by` key: a key, or the event's kernel stack (kstack, current.kstack: a by key or an emit value);
        now and then walltime, which a person might try (an error: it is for `emit` only)."""
        r = self.r
        if r.chance(0.12):
            return r.choice(["kstack", "kstack", "current.kstack"])
        if r.chance(0.01):
            return "walltime"
        if r.chance(0.06):  # the cgroup id, printed as its path or as the container or pod the path names
            return r.choice(["container", "pod", "current.container", "cgroup", "current.pod"])
        return self.key()

    def emit_value(self) -> str:
        """An `emit` value: a key, the wall-clock time (walltime, current.walltime) or the kernel stack."""
        r = self.r
        if r.chance(0.15):
            return r.choice(["walltime", "walltime", "current.walltime", "kstack", "current.kstack"])
        if r.chance(0.06):
            return r.choice(["container", "pod", "cgroup", "current.container"])
        return self.key()

    # -- items --
    def preamble(self) -> None:
        r = self.r
        for i in range(r.int(0, 3)):
            k = r.int(0, 5)
            name = f"C{i}"
            if k == 0:
                self.lines.append(f"const {name} = {self.int_lit()}")
                self.int_consts.append(name)
            elif k == 1:
                self.lines.append(f"const {name} = {self.string()}")
                self.str_consts.append(name)
            elif k == 2:
                self.lines.append(f"const {name} = {{{', '.join(str(r.choice(INTS[:12])) for _ in range(r.int(1, 5)))}}}")
                self.set_consts.append(name)
            elif k == 3:
                self.lines.append(f"const {name} = {{{', '.join(self.string() for _ in range(r.int(1, 4)))}}}")
                self.strset_consts.append(name)
            elif k == 4:
                self.lines.append(f"const {name} = {r.choice(NETS)}")
                self.net_consts.append(name)
            else:
                self.lines.append(f"const {name} = ({self.int_lit()} {r.choice(['+', '*', '|', '<<'])} 3)")
                self.int_consts.append(name)
        self.fields = {}
        if r.chance(0.5):
            self.lines.append("def scale(x) = x * 3 + 1")
            self.int_defs.append(("scale", 1))
        if r.chance(0.5):
            self.lines.append("def within(a, lo, hi) = a >= lo and a <= hi")
            self.pred_defs.append(("within", 3))
        if r.chance(0.3):
            self.lines.append("def big(x) = x > 1000 or x < -1000")
            self.pred_defs.append(("big", 1))
        if r.chance(0.3):
            self.lines.append("def private(a) = a in 10.0.0.0/8 or a in 192.168.0.0/16 or a == ::1")
            self.addr_defs.append("private")

    def probe_list(self) -> str:
        """A probe list (`tracepoint:A, t:B`, wildcards as they are), self.fields what its probes share."""
        r = self.r
        group, self.fields = r.choice(groups())
        self.probe_names = [g for g in group if "*" not in g]
        return ", ".join(f"{r.choice(['tracepoint', 't'])}:{g}" for g in group)

    def clause(self) -> str:
        r = self.r
        hook = r.choice(sorted(hooks()))
        self.fields = hooks()[hook]
        provider = r.choice(["tracepoint", "t"])
        self.probe_names = []
        if groups() and r.chance(0.25):
            provider, hook = self.probe_list().split(":", 1)
        where = f" where {self.cond(r.int(0, 3))}" if r.chance(0.7) else ""
        acts = [self.action() for _ in range(r.int(1, 4))]
        sep = r.choice(["; ", "\n    "])
        if r.chance(0.2):
            return f"on {provider}:{hook}{where} < {sep.join(acts)} >"
        return f"on {provider}:{hook}{where} {{ {sep.join(acts)} }}"

    def script(self) -> str:
        self.preamble()
        for _ in range(self.r.int(1, 3)):
            self.lines.append(self.clause())
        for _ in range(self.r.choice([0, 0, 1, 1, 2])):
            self.lines += self.state_pair()
        return "\n".join(self.lines) + "\n"


def generate(source) -> str:
    """One well-typed-looking script: source is hypothesis's `data` or a random.Random."""
    return _Gen(Rand(source)).script()


# -- the property ----------------------------------------------------------------------------------------
class Failure(Exception):
    def __init__(self, message: str, checked: bool = True):
        super().__init__(message)
        self.checked = checked  # the checker had accepted the script


def run_one(text: str, kernel, load: bool) -> str:
    """'rejected' | 'built' | 'loaded'; Failure says what went wrong otherwise."""
    from hookql.pipeline import check_source, compile_checked
    from hookql.runtime.loader import BpfObject, LoadError
    from hookql.source import Source

    try:
        result = check_source(Source("gen.hq", text), kernel)
        for d in result.diagnostics:
            d.render()
    except Exception:
        raise Failure("the front end raised:\n" + traceback.format_exc(), checked=False)
    if not result.ok:
        return "rejected"
    try:
        compiled = compile_checked(result.checked, "kprobe")
    except Exception as exc:
        raise Failure(f"checked, but did not build ({type(exc).__name__}):\n{exc}\n"
                      + ("" if type(exc).__name__ in ("BuildError", "LoweringError") else traceback.format_exc()))
    if not load:
        return "built"
    try:
        with BpfObject(compiled.object, compiled.layout) as obj:
            obj.configure()
            obj.load()
    except LoadError as exc:
        raise Failure(f"built, but the verifier refused it: {exc}\n{exc.log[-6000:]}")
    return "loaded"


def test_generated_scripts_that_check_build_and_load(running):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    if not hooks():
        import pytest
        pytest.skip("none of the generator's tracepoints exist on this kernel")
    can_load = os.geteuid() == 0
    seen = {"rejected": 0, "built": 0, "loaded": 0}

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def prop(data):
        text = generate(data)
        try:
            seen[run_one(text, running, can_load)] += 1
        except Failure as f:
            raise AssertionError(f"{f}\n--- script ---\n{text}") from None

    prop()
    assert seen["built"] + seen["loaded"] > 0, seen  # the generator writes scripts that check


# -- generated test cases: a case that plans, runs ----------------------------------------------------------
CASE_NAMES = ["plain", "caf\u00e9 \u65e5\u672c", "q\\\"uote", "esc \\x1b[2J", "tab\\t", "x" * 200]


def case_for(text: str, layout: dict, name: str) -> str:
    """A case file around a generated script (inline): a workload, and expectations that hold whatever the
    events were (a count or sum of all rows, `*`, is >= 0), on each aggregation that has a name."""
    lines = [f'test "{name}" {{', *(f"    {l}" for l in text.splitlines() if l.strip()), '    run "true"',
             "    allow loss"]
    for a in layout["aggregations"]:
        if not a.get("name") or a["func"] in ("min", "max", "avg"):
            continue
        key = f"[{', '.join('*' for _ in a['by'])}]" if a["by"] else ""  # every row, added up
        bucket = " bucket 0" if a["func"] in ("hist", "lhist") else ""
        lines.append(f"    expect {a['name']}{key}{bucket} >= 0")
    lines.append("    expect emits >= 0" if layout["emits"] else "    expect denied >= 0" if
                 any(p["deny"] for p in layout["probes"]) else f"    expect emits >= 0")
    return "\n".join(lines) + "\n}\n"


def test_generated_cases_that_plan_run(running, tmp_path):
    """Every generated script that checks, put in a case file (hookql test): the case plans and runs, and its
    expectations resolve to the script's aggregations; no case errs."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from hookql.pipeline import check_source, generate_c
    from hookql.source import Source
    from hookql.testing.runner import Options, run

    if os.geteuid() != 0 or not hooks():
        import pytest
        pytest.skip("loading needs root and the generator's tracepoints")
    import io

    ran = {"n": 0}

    @settings(max_examples=12, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def prop(data):
        text = generate(data)
        result = check_source(Source("gen.hq", text), running)
        if not result.ok or "use " in text:
            return
        layout = generate_c(result.checked)[1]
        if not layout["emits"]:
            text = text  # `expect emits` needs an emit: the case then says so, as an error; keep to what fits
        case = tmp_path / "gen.hqt"
        body = case_for(text, layout, data.draw(st.sampled_from(CASE_NAMES)))
        if not layout["emits"] and not any(p["deny"] for p in layout["probes"]):
            body = body.replace("    expect emits >= 0\n", "")
            if "expect " not in body:
                return
        case.write_text(body)
        out = io.StringIO()
        code = run(Options([str(case)]), out=out)
        assert code == 0 and "PASS " in out.getvalue(), f"{out.getvalue()}\n--- case ---\n{body}"
        ran["n"] += 1

    prop()
    assert ran["n"] > 0


def test_generator_is_seeded_and_varied():
    a = [generate(random.Random(s)) for s in range(20)]
    assert a == [generate(random.Random(s)) for s in range(20)]
    assert len(set(a)) == 20


# -- the long run ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="generate N scripts; check, build and load each")
    ap.add_argument("--long", type=int, default=1000, metavar="N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="gen-failures", help="directory for the failing scripts")
    ap.add_argument("--no-load", action="store_true")
    args = ap.parse_args(argv)
    from hookql import kernel as K

    kern = K.running()
    load = os.geteuid() == 0 and not args.no_load
    out = Path(args.out)
    counts = {"rejected": 0, "built": 0, "loaded": 0}
    failures = failed_checked = 0
    for i in range(args.long):
        text = generate(random.Random(args.seed * 1_000_003 + i))
        try:
            counts[run_one(text, kern, load)] += 1
        except Failure as f:
            failures += 1
            failed_checked += f.checked
            out.mkdir(parents=True, exist_ok=True)
            (out / f"fail{i:05d}.hq").write_text(text)
            (out / f"fail{i:05d}.txt").write_text(str(f))
        if (i + 1) % 100 == 0:
            print(f"  {i + 1} ...", file=sys.stderr, flush=True)
    built = counts["built"] + counts["loaded"]
    loaded = counts["loaded"]
    print(f"{args.long} generated, {built + failed_checked} checked, {built} built, {loaded} loaded, {failures} failures"
          + (f" (scripts in {out}/)" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
