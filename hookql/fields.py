"""The fields a hook offers: its arguments, the builtins every probe has, and
the typed network fields derived from a sock, socket, sockaddr or sk_buff
argument (or return value).  Codegen reads `Field.kind`/`source`/`recipe`.
"""
from __future__ import annotations

from dataclasses import dataclass

from hookql import types as T
from hookql.types import Type


@dataclass(frozen=True)
class Field:
    name: str
    ty: Type
    kind: str  # arg | builtin | derived | retval | tp
    doc: str = ""
    index: int | None = None  # arg: position; derived: position of its source arg (-1: retval)
    source: str | None = None  # derived: sock | socket | sockaddr | skb
    recipe: str | None = None  # derived: family | saddr | daddr | sport | dport | addr | port | protocol | state
    offset: int | None = None  # tp: byte offset in the tracepoint record
    # read when the function or syscall was entered, saved per thread until it returns: a kretprobe's arguments
    # (under kprobes; fexit has them), a sys_exit_X tracepoint's sys_enter_X fields (offset: in that record)
    entry: bool = False


# The kernel stack of an event: a `by` key or an `emit` value, nothing else.  The key holds the stack's id in a
# BPF_MAP_TYPE_STACK_TRACE map (or, when the kernel could not take it, -errno); the runtime prints the
# frames symbolised (runtime/ksyms.py).  Not an integer: it cannot be compared, computed with or stored.
KSTACK = Type("kstack", bits=64, signed=True, display="kstack", cname="kernel stack")
# Providers whose programs may call bpf_get_stackid: kprobe/kretprobe (also fentry/fexit), tracepoint
# (also raw), and LSM (a tracing program).  Every provider HookQL has, today; a new one (XDP, tc, cgroup
# hooks: no kernel stack to speak of) must be added here explicitly.
STACK_PROVIDERS = {"kprobe", "kretprobe", "tracepoint", "lsm"}
# The wall-clock time of an event, for display only: an `emit` value and nothing else.  The record holds
# bpf_ktime_get_boot_ns(); the runtime adds REALTIME - BOOTTIME, taken once at start (runtime/events.py), and
# prints HH:MM:SS (local time, as bcc's tools' TIME column) in text, seconds since the epoch in JSON.  Not an
# integer: it cannot be compared, computed with, stored or be a key (`ts` is the time to compute with).
WALLTIME = Type("walltime", bits=64, display="walltime", cname="wall-clock time")

# The task's cgroup v2 id (bpf_get_current_cgroup_id), printed by the runtime (runtime/cgroups.py) as the
# cgroup's path, the container id or the pod uid the path names.  `cgroup` is an integer (`where cgroup == N`);
# container and pod only print: a `by` key or an `emit` value, as themselves (the checker says so elsewhere).
CGROUP = T.INT(64, display="cgroup")
CONTAINER = T.INT(64, display="container")
POD = T.INT(64, display="pod")
CGROUP_VIEWS = ("container", "pod")  # builtins that are the cgroup id, resolved in user space only

BUILTINS: dict[str, Field] = {
    f.name: f for f in (
        Field("comm", T.string(16), "builtin", "name of the current task (bpf_get_current_comm)"),
        Field("pid", T.INT(32), "builtin", "process id (tgid) of the current task"),
        Field("tid", T.INT(32), "builtin", "thread id of the current task"),
        Field("uid", T.INT(32), "builtin", "real user id of the current task"),
        Field("gid", T.INT(32), "builtin", "real group id of the current task"),
        Field("cpu", T.INT(32), "builtin", "CPU the probe runs on"),
        Field("cgroup", CGROUP, "builtin", "cgroup v2 id of the current task: compares as the id, prints as its path "
              "(/system.slice/docker-<id>.scope)"),
        Field("container", CONTAINER, "builtin", "container of the current task (docker, containerd, CRI-O, podman: "
              "its id's first 12 hex digits; \"\" on the host), from the cgroup path: a `by` key or an `emit` value"),
        Field("pod", POD, "builtin", "Kubernetes pod uid of the current task (\"\" outside a pod), from the cgroup "
              "path: a `by` key or an `emit` value"),
        Field("ts", T.TIMESTAMP, "builtin", "monotonic time in nanoseconds (bpf_ktime_get_ns); ts - ts is a duration"),
        Field("kstack", KSTACK, "builtin", "kernel stack of the event (bpf_get_stackid): a `by` key or an `emit` "
              "value, printed symbolised from /proc/kallsyms"),
        Field("walltime", WALLTIME, "builtin", "wall-clock time of the event, for `emit` only: HH:MM:SS (local "
              "time) in text, seconds since the epoch in JSON (bpf_ktime_get_boot_ns + the clock's offset)"),
        Field("probe", T.string(64), "builtin", "name of the hook that fired (kprobe:tcp_v4_connect): tells the "
              "probes of a list (`on A, B`) apart; a constant string in each program"),
    )
}

# Explicit spellings, for where a hook's own field has a builtin's name (tracepoint:syscalls:sys_enter_kill's
# `pid` is the target's; the builtin `pid` the caller's): `args.pid` is the hook's field, `current.pid` the
# builtin.  A bare name that could be either means the hook's field, with a warning.
ARGS, CURRENT = "args", "current"


def shadowed_builtins(fields: dict[str, Field]) -> dict[str, Field]:
    """The builtins a hook's own fields hide by name: reachable as current.NAME only."""
    return {name: BUILTINS[name] for name, f in fields.items() if name in BUILTINS and f.kind != "builtin"}


RETVAL_DOC = {"kretprobe": "the value the function returns",
              "lsm": "verdict of the LSM programs before this one (0 = allowed)"}

# Typed network fields: type, and the doc for a socket source / a packet source
# (a packet has no TCP state).
_NET_FIELDS = {
    "family": (T.INT(16, display=T.AF), "address family (AF_INET, AF_INET6, ...)", "address family of the packet"),
    "saddr": (T.addr(), "local address", "source address of the packet"),
    "daddr": (T.addr(), "remote address", "destination address of the packet"),
    "sport": (T.INT(16, display=T.PORT), "local port, host order", "source port (TCP/UDP), host order"),
    "dport": (T.INT(16, display=T.PORT), "remote port, host order", "destination port (TCP/UDP), host order"),
    "protocol": (T.INT(16, display=T.PROTO), "IP protocol (IPPROTO_TCP, ...)", "IP protocol of the packet"),
    "state": (T.INT(8, display=T.TCP_STATE), "TCP state (TCP_ESTABLISHED, ...)", None),
}
_SOCK_FIELDS = {k: (ty, doc) for k, (ty, doc, _) in _NET_FIELDS.items()}
_SKB_FIELDS = {k: (ty, doc) for k, (ty, _, doc) in _NET_FIELDS.items() if doc}
_SOCKADDR_FIELDS = {
    "family": (T.INT(16, display=T.AF), "address family of the sockaddr"),
    "addr": (T.addr(), "address in the sockaddr"),
    "port": (T.INT(16, display=T.PORT), "port in the sockaddr, host order"),
}
# Integer arguments and tracepoint fields whose name says how to print them.
_NAME_DISPLAY = {"family": T.AF, "protocol": T.PROTO, "proto": T.PROTO, "type": T.SOCK_TYPE, "state": T.TCP_STATE,
                 "oldstate": T.TCP_STATE, "newstate": T.TCP_STATE, "sport": T.PORT, "dport": T.PORT}


def with_name_display(name: str, ty: Type) -> Type:
    if ty.kind == "int" and not ty.display and name in _NAME_DISPLAY:
        return ty.with_display(_NAME_DISPLAY[name])
    return ty


def classify(ctype) -> str | None:
    """Which network source a BTF type is: sock, socket, sockaddr, skb or None."""
    t = ctype.strip()
    if t.kind != "ptr":
        return None
    name = t.target.strip().name
    return {"sock": "sock", "socket": "socket", "sockaddr": "sockaddr", "sk_buff": "skb",
            "sockaddr_in": "sockaddr", "sockaddr_in6": "sockaddr"}.get(name)


def arg_field(index: int, name: str, ctype) -> Field:
    ty = with_name_display(name, T.from_ctype(ctype))
    return Field(name, ty, "arg", f"argument {index + 1}: {ctype.c_decl(name)}", index=index)


def derived_fields(hook_name: str, sources: list[tuple[int, str, str]]) -> dict[str, Field]:
    """Network fields from (index, arg name, source kind) sources, first source wins.

    A sockaddr gives family/addr/port; on a connect hook these are also
    daddr/dport (the peer being connected to), on a bind hook saddr/sport.
    The sockaddr's family wins over the socket's: it is the one being asked for.
    """
    out: dict[str, Field] = {}

    def add(name, spec, idx, arg, src, recipe):
        if name not in out:
            ty, doc = spec
            if src == USOCKADDR:  # idx: the pointer's offset in the tracepoint record
                out[name] = Field(name, ty, "derived", f"{doc} (from {arg}, read from user memory)", offset=idx,
                                  source=src, recipe=recipe)
            else:
                out[name] = Field(name, ty, "derived", f"{doc} (from {arg})", index=idx, source=src, recipe=recipe)

    role = "dst" if "connect" in hook_name or "sendto" in hook_name else "src" if "bind" in hook_name else None
    for idx, arg, src in sources:
        if src not in ("sockaddr", USOCKADDR):
            continue
        for name, spec in _SOCKADDR_FIELDS.items():
            add(name, spec, idx, arg, src, name)
        if role == "dst":
            add("daddr", _SOCKADDR_FIELDS["addr"], idx, arg, src, "addr")
            add("dport", _SOCKADDR_FIELDS["port"], idx, arg, src, "port")
        elif role == "src":
            add("saddr", _SOCKADDR_FIELDS["addr"], idx, arg, src, "addr")
            add("sport", _SOCKADDR_FIELDS["port"], idx, arg, src, "port")
    for idx, arg, src in sources:
        if src in ("sock", "socket"):
            for name, spec in _SOCK_FIELDS.items():
                add(name, spec, idx, arg, src, name)
    for idx, arg, src in sources:
        if src == "skb":
            for name, spec in _SKB_FIELDS.items():
                add(name, spec, idx, arg, src, name)
    return out


# -- a syscall's struct sockaddr *: user memory ------------------------------------------------------------
# tracepoint:syscalls:sys_enter_{bind,connect,sendto}'s `struct sockaddr *` argument points into the calling
# process: its family/addr/port (and daddr dport, saddr sport) are read with bpf_probe_read_user, never as
# kernel memory; the pointer's own members are not offered.  accept, getsockname, getpeername and recvfrom
# pass a buffer the kernel fills on the way out: at their entry it holds nothing to read, so no fields.
USOCKADDR = "usockaddr"
_USER_SOCKADDR_IN = {"sys_enter_bind", "sys_enter_connect", "sys_enter_sendto"}


def _user_ptr(f: Field) -> bool:
    return f.kind == "tp" and f.ty.kind == "int" and "*" in f.ty.cname


def user_sockaddr_fields(hook_name: str, fields: list[Field]) -> dict[str, Field]:
    """The typed fields of a syscall tracepoint's `struct sockaddr *` arguments (hook_name: "syscalls:NAME")."""
    cat, _, name = hook_name.partition(":")
    if cat != "syscalls" or name not in _USER_SOCKADDR_IN:
        return {}
    sources = [(f.offset, f.name, USOCKADDR) for f in fields
               if _user_ptr(f) and f.ty.cname.replace(" ", "") in ("structsockaddr*", "conststructsockaddr*")]
    return derived_fields(name, sources)


def user_member_error(hook, sym) -> tuple[str, str] | None:
    """(message, hint) for `.` on a syscall tracepoint's user pointer (`umyaddr.sa_family`) or on a field read
    from one: its members are in the process's memory, never read as kernel memory."""
    if hook.provider != "tracepoint" or not hook.name.startswith("syscalls:") or not isinstance(sym, Field):
        return None
    if sym.kind == "derived" and sym.source == USOCKADDR:
        return (f"'{sym.name}' ({sym.ty}) is read from a sockaddr in user memory: it has no members",
                f"use it as it is (`emit {sym.name}`, `count by {sym.name}`)")
    if not _user_ptr(sym):
        return None
    typed = [f.name for f in hook.fields.values() if f.kind == "derived" and f.source == USOCKADDR
             and f.offset == sym.offset]
    msg = (f"'{sym.name}' ({sym.ty.cname.strip()}) points into the process's memory: its members are not read "
           "(a user pointer is never dereferenced as kernel memory)")
    if typed:
        return msg, f"use the typed fields read from it with bpf_probe_read_user: {', '.join(typed)}"
    if "sockaddr" in sym.ty.cname:
        return msg, ("the kernel fills this sockaddr on the syscall's way out: at entry it holds nothing to read; "
                     "family, addr and port are read from the sockaddr of " +
                     ", ".join(f"tracepoint:syscalls:{n}" for n in sorted(_USER_SOCKADDR_IN)))
    return msg, f"`hookql hooks -v tracepoint:{hook.name}` lists what this hook offers"
