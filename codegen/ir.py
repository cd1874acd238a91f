"""Lowering: a checked script -> a small typed IR the Jinja templates render.

Python decides everything here (which values each probe reads, map and
record layouts, constant folding of addresses and sets); the templates only
spell it in C.  The same IR gives the runtime its decoding layout
(`Layout`), so C and Python can never disagree about a key's bytes.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hookql import nodes as n
from hookql import types as T
from hookql.checker import CheckedScript, ConstSymbol, StateMap, _shape, probe_type
from hookql.fields import BUILTINS, CGROUP_VIEWS, Field
from hookql.source import utf8

# Keyed aggregations are preallocated per-CPU hashes: lookups stay as fast as a
# hand-written program's at 100k keys (allocated on demand they cost 2x there),
# but creating one costs time and memory per entry and per CPU, so the default
# is bpftrace's (BPFTRACE_MAP_KEYS_MAX); a full map is counted and reported.
DEFAULT_MAP_ENTRIES = 4096
HIST_BUCKETS = 66  # [neg], [0], then 2 + floor(log2(v)) for v >= 1
STR_READ = 64  # bytes read for kernel strings (char *, __data_loc)


# -- expressions ------------------------------------------------------------------
class Expr:
    kind = ""  # which template branch spells it


@dataclass(eq=False)
class Lit(Expr):
    value: int
    kind = "lit"


@dataclass(eq=False)
class Ref(Expr):
    local: "Local"
    kind = "ref"


@dataclass(eq=False)
class Bin(Expr):
    op: str
    left: Expr
    right: Expr
    signed: bool = False  # / % >> and mixed comparisons: computed as signed (HookQL's type), else unsigned
    kind = "bin"


@dataclass(eq=False)
class Chain(Expr):
    """a && b && c ... (or ||): long chains stay flat, never nested."""

    op: str  # "&&" or "||"
    items: list[Expr]
    kind = "chain"


@dataclass(eq=False)
class Un(Expr):
    op: str  # "!", "-", "~"
    operand: Expr
    kind = "un"


@dataclass(eq=False)
class StrEq(Expr):
    local: "Local"
    data: list[int]  # bytes of the literal, then the NUL
    kind = "streq"


@dataclass(eq=False)
class StrEqVar(Expr):
    left: "Local"
    right: "Local"
    size: int
    kind = "streqvar"


@dataclass(eq=False)
class AddrMatch(Expr):
    """addr == literal (masks all ones) or addr in CIDR: four 32-bit words,
    network order, IPv4 as v4-mapped IPv6."""

    local: "Local"
    words: list[int]
    masks: list[int]
    kind = "addrmatch"


@dataclass(eq=False)
class AddrEqVar(Expr):
    left: "Local"
    right: "Local"
    kind = "addreqvar"


@dataclass(eq=False)
class AnyOf(Expr):
    items: list[Expr]
    kind = "anyof"


# -- values read per event ------------------------------------------------------------
@dataclass(eq=False)
class Local:
    """A value computed once per event (only those the clause uses)."""

    name: str
    ty: T.Type
    how: str  # comm pid tid uid gid cpu cgroup ts param sk_of sock_field sa_field pkt pkt_field member tp
    args: dict = field(default_factory=dict)
    deps: list["Local"] = field(default_factory=list)

    @property
    def is_int(self) -> bool:
        return self.ty.kind in ("int", "bool", "ptr")

    @property
    def c_type(self) -> str:
        k = self.ty.kind
        if k == "str":
            return "char"
        if k == "addr":
            return "struct hq_addr"
        if k == "ptr":
            return "__u64"
        return "__s64" if self.ty.signed else "__u64"

    @property
    def c_array(self) -> str:
        return f"[{self.ty.size}]" if self.ty.kind == "str" else ""

    scratch: bool = False  # lives in the probe's per-CPU scratch value, not on the 512-byte stack

    @property
    def ref(self) -> str:
        """How C names it: a stack variable, or its member of the scratch value."""
        return f"hq_s->{self.name}" if self.scratch else self.name


# -- layouts shared with the runtime ----------------------------------------------------
@dataclass
class Slot:
    """One field of a key struct or event record."""

    name: str  # as the user wrote it: comm, daddr, sk.sk_rcvbuf
    c_name: str
    kind: str  # int str addr
    size: int
    offset: int
    signed: bool = False
    display: str | None = None
    expr: Expr | None = None  # for int slots
    local: Local | None = None  # for str/addr slots
    copy: int = 0  # str slots: bytes copied from the local, when fewer than the slot holds

    def layout(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": self.size, "offset": self.offset,
                "signed": self.signed, "display": self.display}

    @property
    def c_decl(self) -> str:
        if self.kind == "str":
            return f"char {self.c_name}[{self.size}]"
        if self.kind == "addr":
            return f"struct hq_addr {self.c_name}"
        return f"{'__s' if self.signed else '__u'}{self.size * 8} {self.c_name}"


def pack(slots: list[Slot]) -> int:
    """Lay slots out in C's natural alignment, largest first; returns the size
    (a multiple of 8, padded explicitly so no byte of a key is undefined)."""
    align = lambda s: 4 if s.kind == "addr" else (1 if s.kind == "str" else s.size)
    off = 0
    for s in sorted(slots, key=lambda s: -align(s)):  # slots keep the user's order
        a = align(s)
        off = (off + a - 1) // a * a
        s.offset = off
        off += s.size
    return (off + 7) // 8 * 8 or 8


@dataclass
class Aggregation:
    index: int
    probe: str
    func: str
    text: str  # the action as written
    line: int
    keys: list[Slot]
    key_size: int
    value: Expr | None
    value_signed: bool
    value_display: str | None
    lhist: tuple[int, int, int] | None = None  # min, max, step
    drop_stat: int = 0
    key_scratch: bool = False  # the key is built in the probe's per-CPU scratch value
    alias: str | None = None  # `as NAME`
    value_name: str | None = None  # the aggregated value as written (`size` in sum(size))
    value_is_signed: bool = False  # the value's own type (value_signed is also set for sum/avg/min/max)
    serve: bool = False  # Program.serve: a histogram's value ends with the sum of the values counted

    @property
    def map_name(self) -> str:
        return f"hq_agg{self.index}"

    @property
    def keyed(self) -> bool:
        return bool(self.keys)

    @property
    def per_cpu(self) -> bool:
        """Keyed counters live in one shared hash updated with atomic adds, as
        libbpf-tools do: a per-CPU hash preallocates every entry's value on every
        CPU one allocation at a time (1.5-5 ms per 4096-entry map, the bulk of a
        20-probe start) for no gain on the hot path. min/max keep per-CPU values:
        a compare-then-store is not atomic. Unkeyed ones are one per-CPU slot."""
        return not self.keyed or self.func in ("min", "max")

    @property
    def buckets(self) -> int:
        if self.func == "hist":
            return HIST_BUCKETS
        if self.func == "lhist":
            lo, hi, step = self.lhist
            return -(-(hi - lo) // step) + 2  # below MIN, the steps, at or above MAX
        return 0

    @property
    def value_size(self) -> int:
        return {"count": 8, "sum": 8, "avg": 16, "min": 16, "max": 16}.get(self.func,
                                                                           8 * (self.buckets + self.serve))

    def layout(self) -> dict:
        return {"map": self.map_name, "probe": self.probe, "func": self.func, "text": self.text,
                "line": self.line, "by": [k.layout() for k in self.keys], "key_size": self.key_size,
                "value_size": self.value_size, "value_signed": self.value_signed, "per_cpu": self.per_cpu,
                "value_display": self.value_display, "lhist": self.lhist, "buckets": self.buckets,
                "drop_stat": self.drop_stat, "name": self.alias, "serve": self.serve,
                "value_name": self.value_name, "value_is_signed": self.value_is_signed}


@dataclass
class StateMapIR:
    """A state map: an LRU hash (a full map evicts its least recently used entry rather than refuse
    a new one); key and value structs laid out once for every clause that uses it."""

    index: int
    name: str  # as the script names it
    line: int  # its first store
    keys: list[Slot]
    key_size: int
    values: list[Slot]  # one slot "v", or a record's fields by name
    value_size: int
    record: bool
    inserts_stat: int = 0  # stores of a key the map did not hold
    deletes_stat: int = 0  # deletes of a key it held
    failed_stat: int = 0  # stores the kernel refused

    @property
    def map_name(self) -> str:
        return f"hq_st{self.index}"

    def layout(self) -> dict:
        return {"map": self.map_name, "name": self.name, "line": self.line, "key_size": self.key_size,
                "value_size": self.value_size, "keys": [k.layout() for k in self.keys],
                "values": [v.layout() for v in self.values],
                "stats": {"inserts": self.inserts_stat, "deletes": self.deletes_stat, "failed": self.failed_stat}}


@dataclass
class StateStore:
    map: StateMapIR
    keys: list[Slot]
    values: list[Slot]
    line: int
    kind: str = "store"


@dataclass
class StateDelete:
    map: StateMapIR
    keys: list[Slot]
    line: int
    kind: str = "delete"


def _state_slot(name: str, c_name: str, t: T.Type) -> Slot:
    if t.kind == "str":
        return Slot(name, c_name, "str", t.size, 0)
    if t.kind == "addr":
        return Slot(name, c_name, "addr", 16, 0)
    signed = t.kind == "int" and t.signed
    display = T.HEX if t.kind == "ptr" else t.display if t.kind == "int" else None
    return Slot(name, c_name, "int", 8, 0, signed, display)


def _state_ir(st: StateMap, index: int) -> StateMapIR:
    keys = [_state_slot(f"key{i}", f"k{i}", t) for i, t in enumerate(st.keys)]
    key_size = pack(keys)
    if st.fields:
        values = [_state_slot(name, f"f{i}", t) for i, (name, t) in enumerate(st.fields.items())]
    else:
        values = [_state_slot(st.name, "v", st.value)]
    value_size = pack(values)
    return StateMapIR(index, st.name, st.span.line, keys, key_size, values, value_size, bool(st.fields))


@dataclass
class EmitRecord:
    index: int
    probe: str
    line: int
    slots: list[Slot]
    size: int

    def layout(self) -> dict:
        return {"id": self.index, "probe": self.probe, "line": self.line, "size": self.size,
                "fields": [s.layout() for s in self.slots]}


@dataclass
class Deny:
    errno: int
    line: int
    denied_stat: int
    would_stat: int


@dataclass
class EntrySave:
    """A return that reads what its call was entered with: a kretprobe's arguments (kprobe mode), a sys_exit_X
    tracepoint's sys_enter_X fields.  A program on the entry saves them in an LRU hash keyed by thread
    (bpf_get_current_pid_tgid); the exit's program takes them out (a missing entry: the clause does not fire,
    counted).  Stores, deletes and refusals are counted as a state map's are."""

    index: int  # the exit probe's
    text: str  # the hook entered: kprobe:tcp_v4_connect, tracepoint:syscalls:sys_enter_bind
    exit_text: str
    attach: str  # kprobe | tp
    section: str
    line: int
    params: list[tuple[str, str]] = field(default_factory=list)  # kprobe: the entry program's signature
    saved: list[str] = field(default_factory=list)  # kprobe: the params saved (the ones the clause reads)
    raw_size: int = 0  # tp: bytes of the sys_enter record saved (its head, up to the last field read)
    inserts_stat: int = 0
    deletes_stat: int = 0
    failed_stat: int = 0
    missing_stat: int = 0

    @property
    def map_name(self) -> str:
        return f"hq_entry{self.index}"

    @property
    def func(self) -> str:
        return f"hq_enter{self.index}"

    def layout(self) -> dict:
        return {"map": self.map_name, "func": self.func, "text": self.text, "exit": self.exit_text,
                "line": self.line, "key_size": 8,
                "stats": {"inserts": self.inserts_stat, "deletes": self.deletes_stat, "failed": self.failed_stat,
                          "missing": self.missing_stat}}


@dataclass
class Probe:
    index: int
    text: str  # lsm:socket_connect
    provider: str
    attach: str  # kprobe fentry kretprobe fexit lsm tp
    section: str
    line: int
    params: list[tuple[str, str]]  # (C type, name) in the program's signature
    ret_param: tuple[str, str] | None
    pre: list[Local]  # read before the filter
    post: list[Local]  # read only when the filter passes
    where: Expr | None
    where_line: int
    actions: list  # Aggregation | EmitRecord
    deny: Deny | None
    scratch_locals: list[Local] = field(default_factory=list)  # strings too large for the stack
    scratch_keys: list["Aggregation"] = field(default_factory=list)  # keys too large for the stack
    entry: EntrySave | None = None  # what the call was entered with, saved by a program on its entry

    @property
    def func(self) -> str:
        return f"hq_probe{self.index}"

    @property
    def scratch(self) -> bool:
        return bool(self.scratch_locals or self.scratch_keys)


@dataclass
class Program:
    source_name: str
    probes: list[Probe]
    aggregations: list[Aggregation]
    emits: list[EmitRecord]
    stats: list[str]  # names of the per-CPU counters, by index
    helpers: set[str]
    zero_size: int
    lines: dict[str, str] = field(default_factory=dict)  # script line -> its text, for the verifier's log
    states: list[StateMapIR] = field(default_factory=list)
    kstack_stat: int = -1  # kstack used: the counter of stacks the kernel could not take (hq_stacks); else -1
    # `hookql serve`: each aggregation is two maps, written by turns (hq_gen says which), so the service drains
    # one while events go to the other; histograms count values <= 2^k, as Prometheus's `le` buckets do
    serve: bool = False

    def layout(self) -> dict:
        return {"source": self.source_name, "lines": self.lines, "states": [st.layout() for st in self.states],
                "serve": self.serve,
                "kstack": self.kstack_stat >= 0, "user_sockaddr": "usa" in self.helpers,
                "entries": [p.entry.layout() for p in self.probes if p.entry],
                "aggregations": [a.layout() for a in self.aggregations],
                "emits": [e.layout() for e in self.emits], "stats": self.stats,
                "probes": [x for p in self.probes for x in [
                    {"index": p.index, "text": p.text, "func": p.func, "attach": p.attach, "section": p.section,
                     "deny": bool(p.deny), "line": p.line}] + (
                    # the exit's program attaches before its entry's: every entry saved has its return seen (a
                    # kretprobe sees only returns of calls entered after it attached), none is left behind by the
                    # attach; a call entered between the two is counted missing at its return
                    [{"index": p.index, "text": f"{p.entry.text} (entry of {p.entry.exit_text})", "func": p.entry.func,
                      "attach": p.entry.attach, "section": p.entry.section, "deny": False}] if p.entry else [])]}


# -- lowering ------------------------------------------------------------------------------
class LoweringError(Exception):
    """Something the checker accepts but codegen cannot express yet."""

    def __init__(self, span, message: str):
        super().__init__(message)
        self.span = span


ATTACH = {  # provider -> {func_mode: attach type, which is also the SEC() prefix}
    "kprobe": {"kprobe": "kprobe", "fentry": "fentry"},
    "kretprobe": {"kprobe": "kretprobe", "fentry": "fexit"},
}


def lower(checked: CheckedScript, func_mode: str = "kprobe", serve: bool = False) -> Program:
    """func_mode: how kprobe/kretprobe attach: "kprobe" (kprobe/kretprobe) or
    "fentry" (fentry/fexit, BPF trampolines).  serve: for `hookql serve` (Program.serve)."""
    prog = Program(checked.script.span.source.name, [], [], [], ["ringbuf_drops"], set(), 8, serve=serve)
    prog.state_of = {}
    prog.shared = {}  # (probe list, action index) -> the aggregation or emit record the list's probes share
    for st in checked.states.values():
        if st.typed and st.stores:
            ir = _state_ir(st, len(prog.states))
            ir.inserts_stat, ir.deletes_stat, ir.failed_stat = range(len(prog.stats), len(prog.stats) + 3)
            prog.stats += [f"{ir.map_name}_inserts", f"{ir.map_name}_deletes", f"{ir.map_name}_failed"]
            prog.states.append(ir)
            prog.state_of[st.name] = ir
    for i, clause in enumerate(checked.clauses):
        probe = _ProbeLowering(prog, clause, i, func_mode).run()
        prog.probes.append(probe)
        src = clause.span.source
        if src is checked.script.span.source:  # the lines the #line directives name
            for line in {probe.line, probe.where_line, *(a.line for a in probe.actions),
                         *([probe.deny.line] if probe.deny else [])}:
                text = src.line(line).strip()
                prog.lines[str(line)] = text if len(text) <= 160 else text[:157] + "..."
    prog.zero_size = max([8] + [a.value_size for a in prog.aggregations])
    return prog


class _ProbeLowering:
    def __init__(self, prog: Program, clause: n.Clause, index: int, func_mode: str):
        self.prog = prog
        self.clause = clause
        self.hook = clause.hook
        self.index = index
        self.func_mode = func_mode
        self.locals: dict[tuple, Local] = {}
        self.order: list[Local] = []

    def run(self) -> Probe:
        h, c = self.hook, self.clause
        attach, section = self.attach()
        params, ret = self.signature(attach)
        # kretprobe (kprobe mode): the arguments come from the entry's save, at most 5 as a kprobe reads them
        self.entry_params = self.signature("kprobe")[0] if attach == "kretprobe" else []
        self.params = {name for _, name in params + self.entry_params} | ({ret[1]} if ret else set())
        where = self.expr(c.where) if c.where is not None else None
        pre = list(self.order)
        actions, deny = [], None
        for j, a in enumerate(c.actions):
            if isinstance(a, n.Aggregate):
                actions.append(self.aggregate(a, j))
            elif isinstance(a, n.Emit):
                actions.append(self.emit(a, j))
            elif isinstance(a, n.Deny):
                deny = self.deny(a)
            elif isinstance(a, n.Store):
                ir = self.prog.state_of[a.target.name]
                keys = self.state_slots(ir, a.target.keys)
                if a.value is not None and not isinstance(a.value, n.SetLit):
                    exprs = [a.value]
                else:
                    exprs = [v for _, v in a.fields]
                values = self.fill_slots(ir.values, exprs)
                actions.append(StateStore(ir, keys, values, a.span.line))
            elif isinstance(a, n.Delete):
                ir = self.prog.state_of[a.target.name]
                actions.append(StateDelete(ir, self.state_slots(ir, a.target.keys), a.span.line))
        post = [l for l in self.order if l not in pre]
        probe = Probe(self.index, h.probe, h.provider, attach, section,
                      c.span.line, params, ret, pre, post, where, c.where.span.line if c.where else c.span.line,
                      actions, deny)
        probe.entry = self.entry_save()
        _place_large(probe)
        return probe

    def entry_save(self) -> EntrySave | None:
        """The entry program this probe needs, if it reads what its call was entered with."""
        h, c = self.hook, self.clause
        if self.entry_params:
            used = {l.args["param"] for l in self.order if l.how == "param"}
            saved = [name for _, name in self.entry_params if name in used]
            if not saved:
                return None
            last = max(i for i, (_, name) in enumerate(self.entry_params) if name in used)
            e = EntrySave(self.index, f"kprobe:{h.name}", h.probe, "kprobe", f"kprobe/{h.name}", c.span.line,
                          self.entry_params[:last + 1], saved)
        else:
            offsets = [l.args["offset"] for l in self.order if l.args.get("entry")]
            if not offsets:
                return None
            enter = h.name.replace("sys_exit_", "sys_enter_", 1)
            e = EntrySave(self.index, f"tracepoint:{enter}", h.probe, "tp", f"tp/{enter.replace(':', '/')}",
                          c.span.line, raw_size=max(offsets) + 8)
        base = len(self.prog.stats)
        e.inserts_stat, e.deletes_stat, e.failed_stat, e.missing_stat = range(base, base + 4)
        self.prog.stats += [f"{e.map_name}_{k}" for k in ("inserts", "deletes", "failed", "missing")]
        return e

    # -- attach and signature --
    def attach(self) -> tuple[str, str]:
        h = self.hook
        if h.provider == "tracepoint":
            return "tp", f"tp/{h.name.replace(':', '/')}"
        if h.provider == "lsm":
            return "lsm", f"lsm/{h.name}"
        mode = ATTACH[h.provider][self.func_mode]
        return mode, f"{mode}/{h.name}"

    def signature(self, attach: str):
        h = self.hook
        if h.sig is None:
            return [], None
        params = [(_c_param_type(p.type), p.name or f"arg{i}") for i, p in enumerate(h.sig.params)]
        ret = (_c_param_type(h.sig.ret), "ret") if h.sig.ret.strip().kind != "void" else None
        if attach in ("kprobe", "fentry", "lsm"):
            if attach == "kprobe" and len(params) > 5:
                params = params[:5]  # BPF_KPROBE reads at most 5 register arguments
            # An LSM program sees the verdict so far as a last argument, but only
            # for hooks that return int; void hooks have no such slot.
            return params, ("int", "ret") if attach == "lsm" and ret else None
        if attach == "kretprobe":
            return [], ret
        return params, ret  # fexit sees the arguments and the return value

    # -- locals --
    def local(self, key: tuple, ty: T.Type, how: str, deps=(), **args) -> Local:
        if key in self.locals:
            return self.locals[key]
        for d in deps:  # dependencies first, in order
            if d not in self.order:
                self.order.append(d)
        loc = Local(f"v{len(self.locals)}", ty, how, args, list(deps))
        self.locals[key] = loc
        self.order.append(loc)
        return loc

    def field(self, f: Field, span) -> Local:
        if f.kind == "builtin":
            if f.name == "kstack" and self.prog.kstack_stat < 0:  # one stack map for the program
                self.prog.kstack_stat = len(self.prog.stats)
                self.prog.stats.append("kstack_failed")
            if f.name == "probe":
                return self.local(("builtin", f.name), probe_type(self.clause), f.name, text=self.hook.probe)
            if f.name in CGROUP_VIEWS:  # the cgroup id; the runtime prints the container or pod its path names
                f = BUILTINS["cgroup"]
            return self.local(("builtin", f.name), f.ty, f.name,
                              **({"stat": self.prog.kstack_stat} if f.name == "kstack" else {}))
        if f.kind == "arg":
            name = f.name
            if name not in self.params:
                raise LoweringError(span, f"argument '{name}' is beyond the 5 a kprobe can read; "
                                    "kprobes pass arguments in registers")
            return self.local(("param", name), f.ty, "param", param=name)
        if f.kind == "retval":
            return self.local(("param", "ret"), f.ty, "param", param="ret")
        if f.kind == "tp":
            user = f.ty.kind == "str" and f.ty.user
            if user and "user_read_failed" not in self.prog.stats:  # one counter for the program
                self.prog.stats.append("user_read_failed")
            return self.local(("tp", f.name), f.ty, "tp", offset=f.offset,
                              stat=self.prog.stats.index("user_read_failed") if user else -1,
                              data_loc=f.ty.cname.startswith("__data_loc"), raw_bits=f.ty.bits,
                              user=user, entry=f.entry, exec_ret=self.exec_ret(f) if user else None)
        if f.kind == "derived":
            return self.derived(f, span)
        raise AssertionError(f.kind)

    def exec_ret(self, f: Field) -> int | None:
        """At sys_exit_execve(at), `ret`'s offset: the entry's user pointers are read only when the exec failed
        (a successful one replaced the memory they point to: reading would give the new program's bytes)."""
        if f.entry and self.hook.name in ("syscalls:sys_exit_execve", "syscalls:sys_exit_execveat"):
            return self.hook.fields["ret"].offset
        return None

    def source_ptr(self, f: Field, span) -> tuple[str, Local]:
        """(source kind, local holding the pointer) of a derived field."""
        if f.index == -1:
            base = self.local(("param", "ret"), T.Type("ptr"), "param", param="ret")
        else:
            name = self.hook.sig.params[f.index].name
            if name not in self.params:
                raise LoweringError(span, f"'{f.name}' comes from argument '{name}', beyond the 5 a kprobe can read")
            base = self.local(("param", name), T.Type("ptr"), "param", param=name)
        if f.source == "socket":
            return "sock", self.local(("sk_of", base.name), T.Type("ptr"), "sk_of", deps=[base], sock=base)
        return f.source, base

    def derived(self, f: Field, span) -> Local:
        if f.source == "usockaddr":  # a syscall's struct sockaddr *: copied once from user memory, never kernel
            if "user_read_failed" not in self.prog.stats:
                self.prog.stats.append("user_read_failed")
            self.prog.helpers.add("usa")
            usa = self.local(("usa", f.offset), T.Type("usa"), "usa", offset=f.offset, entry=f.entry,
                             stat=self.prog.stats.index("user_read_failed"),
                             null_ok=self.hook.name.endswith(("_sendto")))  # send(2): NULL, no address
            return self.local(("usa_field", f.offset, f.recipe), f.ty, "usa_field", deps=[usa], usa=usa,
                              recipe=f.recipe)
        src, base = self.source_ptr(f, span)
        if src == "skb":
            pkt = self.local(("pkt", base.name), T.Type("pkt"), "pkt", deps=[base], skb=base)
            self.prog.helpers.add("pkt")
            return self.local(("pkt_field", base.name, f.recipe), f.ty, "pkt_field", deps=[pkt], pkt=pkt,
                              recipe=f.recipe)
        helper = "sock" if src == "sock" else "sockaddr"
        self.prog.helpers.add(helper)
        return self.local((helper, base.name, f.recipe), f.ty, f"{helper}_field", deps=[base], ptr=base,
                          recipe=f.recipe)

    def member(self, e: n.Member) -> Local:
        """sk.sk_rcvbuf, sock.sk.__sk_common.skc_family: one BPF_CORE_READ chain.

        Named members are read by name; anonymous unions on the way are left
        to CO-RE, which finds a member inside them in the running kernel.
        """
        steps = []
        root = e
        while isinstance(root, n.Member):
            steps.append(root)
            root = root.obj
        if not isinstance(root, n.Name) or not isinstance(root.symbol, Field):
            raise LoweringError(e.span, "member access starts at a pointer argument or field")
        base = self.field(root.symbol, root.span)
        container = T.struct_of(root.ty)
        chain: list[list[str]] = [[]]
        pairs = []  # (containing struct, member): what the minimal CO-RE types declare
        for step in reversed(steps):
            for m in step.path:
                if not m.name:
                    continue  # anonymous: CO-RE looks inside it
                pairs.append((container, m))
                chain[-1].append(m.name)
                mt = m.type.strip()
                container = mt.target.strip() if mt.kind == "ptr" else mt
            if step is not steps[0] and step.path[-1].type.strip().kind == "ptr":
                chain.append([])  # the next member is read through this pointer
        last = e.path[-1]
        if last.bitfield_size:
            raise LoweringError(e.name_span, f"'{e.name}' is a bitfield; reading bitfields is not supported yet")
        swap = {"__be16": "bpf_ntohs", "__be32": "bpf_ntohl", "__be64": "bpf_be64_to_cpu"}
        conv = next((swap[t] for t in last.type.typedef_names() if t in swap), None)
        segs = [".".join(c) for c in chain if c]
        return self.local(("member", base.name, tuple(segs)), e.ty, "member", deps=[base], base=base,
                          chain=segs, conv=conv, pairs=pairs,
                          char_ptr=e.ty.kind == "str" and last.type.strip().kind == "ptr",
                          in4=e.ty.kind == "addr" and e.ty.version == 4)

    # -- expressions --
    def expr(self, root: n.Expr) -> Expr:
        """Lower an expression tree with an explicit stack: chains of thousands
        of `and`s or nested `not`s must not hit Python's recursion limit."""
        done: dict[int, Expr] = {}
        stack: list[tuple[n.Expr, bool]] = [(root, False)]
        while stack:
            e, ready = stack.pop()
            inner = _unwrap(e)
            kids = self.children(inner)
            if kids is None:  # a leaf: lowered directly
                done[id(e)] = self.leaf(inner)
            elif not ready:
                stack.append((e, True))
                stack.extend((k, False) for k in reversed(kids))
            else:
                done[id(e)] = self.compound(inner, [done[id(k)] for k in kids])
        return done[id(root)]

    def children(self, e: n.Expr) -> list[n.Expr] | None:
        """The subexpressions lowered before e, or None when e is lowered as a whole."""
        if isinstance(e, n.Unary):
            return [e.operand]
        if isinstance(e, n.Binary) and e.op not in ("in", "not in"):
            lt, rt = e.left.ty, e.right.ty
            if e.op in ("==", "!=") and (_kind(lt) in ("str", "addr") or _kind(rt) in ("str", "addr")):
                return None
            return [e.left, e.right]
        return None

    def compound(self, e: n.Expr, kids: list[Expr]) -> Expr:
        if isinstance(e, n.Unary):
            op = {"not": "!", "!": "!"}.get(e.op, e.op)
            x = kids[0]
            if op == "!" and isinstance(x, Un) and x.op == "!":
                return x.operand  # not not c == c: conditions are 0 or 1
            if op == "!" and isinstance(x, Lit):
                return Lit(int(not x.value))
            return Un(op, x)
        op, (l, r) = e.op, kids
        if op in ("and", "or"):
            c = "&&" if op == "and" else "||"
            items = []
            for x in (l, r):
                items.extend(x.items if isinstance(x, Chain) and x.op == c else [x])
            return Chain(c, items)
        signed = bool(e.ty is not None and e.ty.signed)
        if op in _COMPARE:
            if isinstance(l, Lit) and isinstance(r, Lit):  # 1 == 1: known now (as 64-bit values)
                a, b = _s64(l.value), _s64(r.value)
                return Lit(int({"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
                                ">=": a >= b}[op]))
            signed = _signed_compare(e.left.ty, e.right.ty)
        return Bin(op, l, r, signed)

    def leaf(self, e: n.Expr) -> Expr:
        if isinstance(e, n.IntLit):
            return Lit(e.value)
        if isinstance(e, n.DurationLit):
            return Lit(e.nanoseconds)
        if isinstance(e, n.Name):
            sym = e.symbol
            if isinstance(sym, ConstSymbol):
                return self.const(sym, e)
            return Ref(self.field(sym, e.span))
        if isinstance(e, n.Index):
            return Ref(self.state_field(e, "v"))
        if isinstance(e, n.Member):
            if isinstance(e.path, ConstSymbol):
                return self.const(e.path, e)
            if isinstance(e.path, tuple) and e.path[0] == "state":
                return Ref(self.state_field(_unwrap(e.obj), e.path[1]))
            return Ref(self.member(e))
        if isinstance(e, n.Binary) and e.op in ("in", "not in"):
            m = self.membership(e.left, e.right)
            return _negate(m) if e.op == "not in" else m
        if isinstance(e, n.Binary) and e.op in ("==", "!="):
            m = self.equal(e.left, e.right)
            return _negate(m) if e.op == "!=" else m
        raise LoweringError(e.span, "this value must be compared or grouped, not used on its own")

    def const(self, sym: ConstSymbol, e: n.Expr) -> Expr:
        if isinstance(sym.value, bool):
            return Lit(int(sym.value))
        if isinstance(sym.value, int):
            return Lit(sym.value)
        raise LoweringError(e.span, f"{sym.name} is {sym.ty}; use it with == or `in`")

    def value_local(self, e: n.Expr) -> Local:
        e = _unwrap(e)
        r = self.expr(e)
        if not isinstance(r, Ref):
            raise LoweringError(e.span, "compare a field here, not an expression")
        return r.local

    def probe_name(self, e: n.Expr) -> str | None:
        """The `probe` builtin is a constant in each program: the name of the hook it is for."""
        if isinstance(e, n.Name) and getattr(e.symbol, "kind", None) == "builtin" and e.symbol.name == "probe":
            return self.hook.probe
        return None

    def equal(self, left: n.Expr, right: n.Expr) -> Expr:
        left, right = _unwrap(left), _unwrap(right)
        pl, pr = self.probe_name(left), self.probe_name(right)
        if pl is not None or pr is not None:  # compared as the constant it is in this program
            other, text = (right, pl) if pl is not None else (left, pr)
            if pl is not None and pr is not None:
                return Lit(1)
            if _is_const(other):
                return Lit(int(_const_equal(text, _const_value(other))))
            return StrEq(self.value_local(other), list(utf8(text)) + [0])
        if _is_const(left) and _is_const(right):  # "a" != "b": known now
            return Lit(int(_const_equal(_const_value(left), _const_value(right))))
        lit, other = (right, left) if _is_const(right) else (left, right)
        if _is_const(lit):
            val = _const_value(lit)
            loc = self.value_local(other)
            if isinstance(val, str):
                return StrEq(loc, list(utf8(val)) + [0])
            return _addr_match(loc, ipaddress.ip_network(val))
        l, r = self.value_local(left), self.value_local(right)
        if left.ty.kind == "str":
            return StrEqVar(l, r, min(left.ty.size, right.ty.size))
        return AddrEqVar(l, r)

    def membership(self, left: n.Expr, right: n.Expr) -> Expr:
        left, right = _unwrap(left), _unwrap(right)
        if isinstance(right, n.Name) and isinstance(right.symbol, StateMap):
            ptr = self.state_ptr(self.prog.state_of[right.id], [left])
            return Ref(self.local(("state_has", ptr.name), T.BOOL, "state_has", deps=[ptr], src=ptr))
        val = _const_value(right)
        if _is_const(left) or isinstance(left, n.IntLit):  # "a" in {"a", "b"}: known now
            return Lit(int(_const_in(_const_value(left), val)))
        if self.probe_name(left) is not None:
            return Lit(int(_const_in(self.probe_name(left), val)))
        if right.ty.kind == "cidr" or right.ty.kind == "addr":
            return _addr_match(self.value_local(left), ipaddress.ip_network(val))
        items = sorted(val, key=str)
        if left.ty.kind == "str":
            loc = self.value_local(left)
            return AnyOf([StrEq(loc, list(utf8(s)) + [0]) for s in items])
        if left.ty.kind == "addr":
            loc = self.value_local(left)
            return AnyOf([_addr_match(loc, ipaddress.ip_network(v)) for v in items])
        x = self.expr(left)
        return AnyOf([Bin("==", x, Lit(v)) for v in sorted(items)])

    # -- state --
    def fill_slots(self, layout: list[Slot], exprs: list[n.Expr]) -> list[Slot]:
        """The map's slots (same names, offsets, sizes), filled from this clause's expressions."""
        out = []
        for s, k in zip(layout, exprs):
            k = _unwrap(k)
            use = Slot(s.name, s.c_name, s.kind, s.size, s.offset, s.signed, s.display)
            if s.kind == "int":
                use.expr = self.expr(k)
            else:
                use.local = self.value_local(k)
                if s.kind == "str":
                    use.copy = min(s.size, use.local.ty.size)
            out.append(use)
        return out

    def state_slots(self, ir: StateMapIR, keys: list[n.Expr]) -> list[Slot]:
        return self.fill_slots(ir.keys, keys)

    def state_ptr(self, ir: StateMapIR, keys: list[n.Expr]) -> Local:
        """The map's value for these keys (a pointer, NULL when absent): looked up once per clause and
        key, whether `k in m` (in the where) or `m[k]` (anywhere) asks, as hand-written C would."""
        shape = tuple(_shape(_unwrap(k)) for k in keys)
        known = self.locals.get(("state_ptr", ir.index, shape))
        if known is not None:
            return known
        return self.local(("state_ptr", ir.index, shape), T.Type("ptr"), "state_ptr", st=ir,
                          keys=self.state_slots(ir, keys))

    def state_field(self, e: n.Index, name: str) -> Local:
        """A value read from a state map; a key the map does not hold ends the probe there (the clause
        does not fire)."""
        ir = self.prog.state_of[e.name]
        ptr = self.state_ptr(ir, e.keys)
        need = self.local(("state_need", ptr.name), T.Type("ptr"), "state_need", deps=[ptr], src=ptr,
                          ret="ret" if self.hook.provider == "lsm" and self.hook.retval else "0")
        slot = next(s for s in ir.values if s.c_name == "v" and name == "v" or s.name == name and ir.record)
        ty = _slot_type(slot)
        return self.local(("state_field", ptr.name, slot.c_name), ty, "state_field", deps=[need], src=ptr,
                          slot=slot)

    # -- actions --
    def slots(self, exprs: list[n.Expr], prefix: str) -> tuple[list[Slot], int]:
        slots = []
        for i, k in enumerate(exprs):
            t = k.ty
            name = k.span.text if k.span.line == k.span.end_line else f"{prefix}{i}"
            if t.kind == "str":
                loc = self.value_local(k)  # in a probe list the slot may be wider than this probe's string
                slots.append(Slot(name, f"{prefix}{i}", "str", t.size, 0, local=loc,
                                  copy=min(t.size, loc.ty.size) if loc.ty.kind == "str" else 0))
            elif t.kind == "addr":
                slots.append(Slot(name, f"{prefix}{i}", "addr", 16, 0, local=self.value_local(k)))
            else:
                size = 8 if t.kind in ("ptr", "kstack", "walltime") else max(1, min(t.bits, 64) // 8) if t.kind == "int" else 1
                size = size if size in (1, 2, 4, 8) else 8
                display = T.HEX if t.kind == "ptr" else t.display
                slots.append(Slot(name, f"{prefix}{i}", "int", size, 0, t.signed, display, expr=self.expr(k)))
        size = pack(slots)
        return slots, size

    def shared(self, j: int):
        """In a probe list, what the first probe's program made for action j (its map, its record), which the
        others' programs fill too (the checker gave them the same types); None for the first or a lone probe."""
        g = self.clause.group
        if g is None or self.clause is g.first:
            return None
        return self.prog.shared[(id(g), j)]

    def share(self, j: int, made) -> None:
        if self.clause.group is not None:
            self.prog.shared[(id(self.clause.group), j)] = made

    @property
    def probe_text(self) -> str:
        """Whose aggregation or record it is: the hook, or every hook of the probe list."""
        return self.clause.group.written if self.clause.group else self.hook.probe

    def aggregate(self, a: n.Aggregate, j: int) -> Aggregation:
        keys, key_size = self.slots(a.by, "k")
        value = self.expr(a.args[0]) if a.func != "count" else None
        vt = a.args[0].ty if a.args else None
        lh = None
        if a.func == "lhist":
            lh = tuple(_const_value(x) for x in a.args[1:])
        owner = self.shared(j)
        agg = Aggregation(owner.index if owner else len(self.prog.aggregations), self.probe_text, a.func,
                          a.span.text, a.span.line, keys, key_size, value,
                          bool(vt and vt.signed) or a.func in ("sum", "avg", "min", "max"),
                          vt.display if vt and vt.display != "cgroup" else None,  # max(cgroup): a number, no path
                          lh)
        agg.alias, agg.serve = a.alias, self.prog.serve
        agg.value_name = " ".join(a.args[0].span.text.split()) if a.args else None
        agg.value_is_signed = bool(vt and vt.signed)
        if owner is not None:
            agg.drop_stat = owner.drop_stat
            return agg
        agg.drop_stat = len(self.prog.stats)
        self.prog.stats.append(f"{agg.map_name}_full")
        self.prog.aggregations.append(agg)
        self.share(j, agg)
        if a.func == "hist":
            self.prog.helpers.add("log2")
        return agg

    def emit(self, a: n.Emit, j: int) -> EmitRecord:
        slots, size = self.slots(a.values, "f")
        size = max(size, 8)
        owner = self.shared(j)
        rec = EmitRecord(owner.index if owner else len(self.prog.emits), self.probe_text, a.span.line, slots,
                         size + 8)
        for s in slots:
            s.offset += 8  # after the record's header (u32 id, u32 pad)
        if owner is None:
            self.prog.emits.append(rec)
            self.share(j, rec)
        return rec

    def deny(self, a: n.Deny) -> Deny:
        d = Deny(a.value, a.span.line, len(self.prog.stats), len(self.prog.stats) + 1)
        self.prog.stats += [f"probe{self.index}_denied", f"probe{self.index}_would_deny"]
        return d


def _slot_type(s: Slot) -> T.Type:
    if s.kind == "str":
        return T.string(s.size)
    if s.kind == "addr":
        return T.addr()
    return T.INT(64, s.signed, s.display)


def _c_param_type(ct) -> str:
    """How a kernel argument is declared in the program's signature."""
    t = ct.strip()
    if t.kind == "ptr":
        tgt = t.target.strip()
        if tgt.kind in ("struct", "union") and tgt.name:
            return f"{tgt.kind} {tgt.name} *"
        return "void *"
    if t.kind in ("int", "enum", "enum64"):
        size = t.size
        signed = t.signed
        return f"{'__s' if signed else '__u'}{size * 8 if size in (1, 2, 4, 8) else 64}"
    return "__u64"


def _is_const(e: n.Expr) -> bool:
    return isinstance(e, (n.StrLit, n.IpLit, n.SetLit)) or isinstance(getattr(e, "symbol", None), ConstSymbol) \
        or isinstance(getattr(e, "path", None), ConstSymbol)


def _const_value(e: n.Expr):
    if isinstance(e, n.StrLit):
        return e.value
    if isinstance(e, n.IntLit):
        return e.value
    if isinstance(e, n.IpLit):
        return e.network
    if isinstance(e, n.SetLit):
        return frozenset(_const_value(i) for i in e.items)
    if isinstance(e, n.DurationLit):
        return e.nanoseconds
    if isinstance(e, n.Call) and e.expansion is not None:
        return _const_value(_unwrap(e))
    if isinstance(e, n.Unary) and e.op in ("-", "~"):
        v = _const_value(e.operand)
        return -v if e.op == "-" else ~v
    if isinstance(e, n.Binary) and e.op in _ARITH:
        return _fold_int(e.op, _const_value(e.left), _const_value(e.right))
    sym = e.symbol if isinstance(e, n.Name) else e.path
    return sym.value


_ARITH = ("+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>")


def _fold_int(op: str, a: int, b: int) -> int:
    """What the BPF side computes (codegen/render.py CExprs): / and % truncate
    toward zero, x / 0 == 0, x % 0 == x, shifts by 64 or more give 0 (or -1)."""
    if op in ("/", "%"):
        if b == 0:
            return 0 if op == "/" else a
        q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
        return q if op == "/" else a - b * q
    if op in ("<<", ">>"):
        if not 0 <= b < 64:
            return 0 if op == "<<" or a >= 0 else -1
        return a << b if op == "<<" else a >> b
    return {"+": a + b, "-": a - b, "*": a * b, "&": a & b, "|": a | b, "^": a ^ b}[op]


def _addr_match(loc: Local, net) -> AddrMatch:
    """Words and masks of a v4-mapped/v6 network, in network byte order as the
    BPF side stores addresses."""
    if net.version == 4:
        net = ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    addr = int(net.network_address)
    mask = int(net.netmask)
    words = [(addr >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)]
    masks = [(mask >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)]
    return AddrMatch(loc, words, masks)


_COMPARE = ("==", "!=", "<", "<=", ">", ">=")


def _kind(t) -> str | None:
    return t.kind if t is not None else None


def _unwrap(e: n.Expr) -> n.Expr:
    """A use of a `def` is its expansion (a chain of them, iteratively)."""
    while isinstance(e, n.Call) and e.expansion is not None:
        e = e.expansion
    return e


def _s64(v: int) -> int:
    return ((v + (1 << 63)) % (1 << 64)) - (1 << 63)


def _negate(x: Expr) -> Expr:
    if isinstance(x, Lit):
        return Lit(int(not x.value))
    return Un("!", x)


def _signed_compare(lt, rt) -> bool:
    """Compare as signed 64-bit when either side is signed and the other fits
    (fewer than 64 bits): `pid > -1` is then what it says. A signed value
    against an unsigned 64-bit one compares as C does (unsigned)."""
    if lt is None or rt is None or not (lt.is_int and rt.is_int):
        return False
    if lt.signed == rt.signed:
        return lt.signed
    unsigned = rt if lt.signed else lt
    return unsigned.bits < 64


def _as_network(v):
    """A constant address or network as a v6 network; IPv4 v4-mapped, as the
    BPF side stores addresses."""
    net = v if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else ipaddress.ip_network(v)
    if net.version == 4:
        net = ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    return net


def _const_equal(a, b) -> bool:
    if isinstance(a, (str, int)) or isinstance(b, (str, int)):
        return a == b
    return _as_network(a) == _as_network(b)


def _const_in(a, container) -> bool:
    if isinstance(container, frozenset):
        return any(_const_equal(a, x) if not isinstance(x, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                   or not isinstance(a, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                   else _const_in(a, x) for x in container)
    if isinstance(a, (str, int)):
        return False
    return _as_network(a).subnet_of(_as_network(container))


# -- the 512-byte stack -----------------------------------------------------------------------
STACK_BUDGET = 192  # bytes of strings and keys a probe keeps on its stack; clang needs the rest
LARGE = 64  # a string or key larger than this never goes on the stack


def _place_large(p: Probe) -> None:
    """Move the largest strings and keys of a probe to its per-CPU scratch value
    (as libbpf-tools do) until what stays on the stack fits STACK_BUDGET.

    One scratch value per probe and CPU: a probe does not run nested in
    itself on one CPU (kprobes and tracepoints never nest; trampolines have a
    recursion guard). LSM programs have none: an LSM hook in an interrupt that
    lands inside the same probe's run would reuse its scratch value.
    """
    items = [(l.ty.size, l) for l in p.pre + p.post if l.ty.kind == "str"]
    items += [(a.key_size, a) for a in p.actions if isinstance(a, Aggregation) and a.keyed]
    total = sum(size for size, _ in items) + 16 * sum(1 for l in p.pre + p.post if l.ty.kind == "addr")
    # state keys and values stay on the stack: what else fits is what is left
    total += sum(l.args["st"].key_size for l in p.pre + p.post if l.how == "state_ptr")
    total += max([a.map.key_size + (a.map.value_size if a.kind == "store" else 0)
                  for a in p.actions if isinstance(a, (StateStore, StateDelete))] or [0])
    for size, x in sorted(items, key=lambda t: -t[0]):
        if total <= STACK_BUDGET and size <= LARGE:
            break
        total -= size
        if isinstance(x, Local):
            x.scratch = True
            p.scratch_locals.append(x)
        else:
            x.key_scratch = True
            p.scratch_keys.append(x)
