"""The hook catalog: the seed documentation (hookql/data/catalog.json, made by
tools/gen_catalog.py) reconciled with a kernel's BTF.  BTF is the truth for
signatures; the seeds add descriptions, use cases, seed argument names that
still fit, and suggestions for hooks the kernel does not have.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from functools import cache

from hookql import fields as F
from hookql import types as T
from hookql.btf import FuncSig
from hookql.kernel import Kernel

PROVIDERS = {"kprobe": "kprobe", "k": "kprobe", "kretprobe": "kretprobe", "kr": "kretprobe",
             "lsm": "lsm", "tracepoint": "tracepoint", "t": "tracepoint", "tp": "tracepoint"}
PROVIDER_NAMES = ("kprobe", "kretprobe", "lsm", "tracepoint")


@dataclass(frozen=True)
class SeedEntry:
    seed_file: str
    seed_name: str
    provider: str  # kprobe | lsm
    hook: str  # the kernel's name
    title: str
    description_ko: str
    use_case: str
    source: str
    actual_source: str | None
    seed_args: tuple[tuple[str, str], ...]
    returns: tuple[str, ...]
    in_kernels: tuple[str, ...]
    suggest: str | None
    caveat: dict | None = None  # {"why": ..., "use": better hook or None}

    def seed_decl(self) -> str:
        args = ", ".join(f"{t}{'' if t.endswith('*') else ' '}{n}" for t, n in self.seed_args)
        return f"{self.seed_name}({args})"


class ProbeError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass
class Hook:
    """A probe resolved on one kernel: what the checker and codegen need."""

    provider: str  # kprobe | kretprobe | lsm | tracepoint
    name: str  # socket_connect, tcp_sendmsg, syscalls:sys_enter_getsockopt
    kernel: Kernel
    btf_func: str | None = None  # tcp_sendmsg, bpf_lsm_socket_connect
    sig: FuncSig | None = None
    fields: dict[str, F.Field] = field(default_factory=dict)
    seeds: list[SeedEntry] = field(default_factory=list)
    seed_only: dict[str, str] = field(default_factory=dict)  # seed arg the kernel lacks -> seed decl
    aliases: dict[str, str] = field(default_factory=dict)  # seed arg name -> kernel arg name
    tp_fields_known: bool = True
    tp_source: str = ""  # tracepoint: where its fields came from ("tracefs", "BTF struct trace_event_raw_X", ...)

    @property
    def probe(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def retval(self) -> F.Field | None:
        return self.fields.get("retval")

    @property
    def caveat(self) -> dict | None:
        return next((e.caveat for e in self.seeds if e.caveat), None)

    @property
    def can_deny(self) -> bool:
        return self.provider == "lsm" and self.sig is not None and self.sig.ret.strip().kind != "void"

    def signature(self) -> str:
        if self.sig is None:
            return self.probe
        return self.sig.c_decl().replace(self.sig.name, self.name, 1) if self.provider == "lsm" else self.sig.c_decl()

    def field_names(self) -> list[str]:
        return list(self.fields)


class Catalog:
    def __init__(self, entries: list[SeedEntry], kernels: dict[str, str]):
        self.entries = entries
        self.kernels = kernels
        self.by_seed_name: dict[tuple[str, str], SeedEntry] = {}
        self.by_hook: dict[tuple[str, str], list[SeedEntry]] = {}
        for e in entries:
            self.by_seed_name.setdefault((e.provider, e.seed_name), e)
            self.by_hook.setdefault((e.provider, e.hook), []).append(e)

    @classmethod
    @cache
    def load(cls) -> "Catalog":
        data = json.loads(_data_text("catalog.json"))
        entries = []
        for e in data["entries"]:
            entries.append(SeedEntry(
                e["seed_file"], e["seed_name"], e["provider"], e["hook"], e["title"], e["description_ko"],
                e["use_case"], e["source"], e["actual_source"], tuple(tuple(a) for a in e["seed_args"]),
                tuple(e["returns"]), tuple(e["in_kernels"]), e["suggest"], e.get("caveat")))
        return cls(entries, data["kernels"])

    def hook_names(self, provider: str) -> list[str]:
        base = "kprobe" if provider == "kretprobe" else provider
        return sorted({h for (p, h) in self.by_hook if p == base})

    def canonical(self, provider: str, name: str) -> str:
        """The kernel's name for a hook spelled as in the seeds."""
        base = "kprobe" if provider == "kretprobe" else provider
        e = self.by_seed_name.get((base, name))
        if e:
            return e.hook
        if base == "lsm":
            return name.removeprefix("security_").removeprefix("bpf_lsm_")
        return name

    # -- resolution ----------------------------------------------------------
    def resolve(self, provider: str, target: list[str], kernel: Kernel) -> Hook:
        prov = PROVIDERS.get(provider)
        if prov is None:
            close = difflib.get_close_matches(provider, PROVIDER_NAMES, n=1, cutoff=0.5)
            raise ProbeError(f"unknown probe type '{provider}'; expected kprobe, kretprobe, lsm or tracepoint",
                             f"did you mean {close[0]}:{':'.join(target)}?" if close else None)
        if prov == "tracepoint":
            return self._tracepoint(target, kernel)
        if len(target) != 1 or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", target[0]):
            raise ProbeError(f"{prov} probes name one kernel function: {prov}:NAME, not {prov}:{':'.join(target)}")
        name = self.canonical(prov, target[0])
        btf_func = f"bpf_lsm_{name}" if prov == "lsm" else name
        sig = kernel.btf.func(btf_func)
        if sig is None:
            raise self._missing(prov, target[0], name, kernel)
        hook = Hook(prov, name, kernel, btf_func, sig, seeds=self.by_hook.get(("kprobe" if prov == "kretprobe" else prov, name), []))
        self._fill_fields(hook)
        return hook

    def _fill_fields(self, hook: Hook) -> None:
        sig = hook.sig
        params = [(i, p.name or f"arg{i}", p.type) for i, p in enumerate(sig.params)]
        sources: list[tuple[int, str, str]] = []
        ret_kind = sig.ret.strip().kind
        if hook.provider == "kretprobe":
            if ret_kind != "void":
                hook.fields["retval"] = F.Field("retval", _retval_type(sig.ret), "retval", F.RETVAL_DOC["kretprobe"], index=-1)
                src = F.classify(sig.ret)
                if src:  # a returned sock (inet_csk_accept) is what the typed fields describe
                    sources.append((-1, "retval", src))
        for i, name, ct in params:
            # a kretprobe reads its arguments as they were passed: fexit has them; a kretprobe's program gets
            # them saved at entry, per thread (codegen)
            f = F.arg_field(i, name, ct)
            hook.fields[name] = replace(f, entry=True, doc=f.doc + " (as passed at entry)") \
                if hook.provider == "kretprobe" else f
            src = F.classify(ct)
            if src:
                sources.append((i, name, src))
        if hook.provider == "lsm" and ret_kind != "void":
            hook.fields["retval"] = F.Field("retval", T.INT(32, True, T.ERRNO, "int"), "retval", F.RETVAL_DOC["lsm"])
        for name, f in F.derived_fields(hook.name, sources).items():
            hook.fields.setdefault(name, f)
        for name, f in F.BUILTINS.items():
            hook.fields.setdefault(name, f)
        self._seed_names(hook, params)

    def _seed_names(self, hook: Hook, params) -> None:
        """Accept a seed's argument name where position and type agree with the
        kernel (tcp_sendmsg `len` is the kernel's `size`); remember the ones
        the kernel lacks, to name the real signature when they are used."""
        kernel_names = {name for _, name, _ in params}
        for seed in hook.seeds:
            for i, (stype, sname) in enumerate(seed.seed_args):
                if not sname or sname in kernel_names:
                    continue
                if i < len(params) and _same_type(stype, params[i][2].c_decl()):
                    hook.aliases.setdefault(sname, params[i][1])
                else:
                    hook.seed_only.setdefault(sname, f"{stype}{'' if stype.endswith('*') else ' '}{sname}")

    def _missing(self, prov: str, spelled: str, name: str, kernel: Kernel) -> ProbeError:
        base = "kprobe" if prov == "kretprobe" else prov
        entries = self.by_hook.get((base, name)) or ([self.by_seed_name[(base, spelled)]]
                                                      if (base, spelled) in self.by_seed_name else [])
        what = "LSM hook" if prov == "lsm" else "kernel function"
        msg = f"{prov}:{spelled}: no {what} '{name}' on kernel {kernel.label}"
        for e in entries:
            if e.suggest:
                return ProbeError(msg + f"; the seed documents it, but no kernel has it",
                                  f"use {prov}:{e.suggest} instead")
            if e.in_kernels:
                return ProbeError(msg, f"it exists on kernel {', '.join(e.in_kernels)}; check with --kernel {e.in_kernels[-1]}")
        close = difflib.get_close_matches(name, self.hook_names(prov), n=3, cutoff=0.6)
        if not close:
            close = _close_btf_funcs(kernel, name, lsm=prov == "lsm")
        return ProbeError(msg, f"did you mean {', '.join(f'{prov}:{c}' for c in close)}?" if close else
                          f"`hookql hooks` lists the catalog's {what}s")

    def _tracepoint(self, target: list[str], kernel: Kernel) -> Hook:
        if len(target) != 2:
            raise ProbeError(f"tracepoints are tracepoint:CATEGORY:NAME, not tracepoint:{':'.join(target)}")
        cat, name = target
        hook = Hook("tracepoint", f"{cat}:{name}", kernel)
        text, hook.tp_source = _tp_format(kernel, cat, name)
        if text is None:
            hook.tp_fields_known = False
        else:
            _add_tp_fields(hook, f"{cat}:{name}", parse_tp_format(text, syscall=cat == "syscalls"))
            ret = hook.fields.get("ret")
            if cat == "syscalls" and name.startswith("sys_exit_") and ret is not None and ret.ty.kind == "int" \
                    and ret.ty.signed and ret.ty.display is None:
                # a syscall's result: -errno on failure, printed by name (-EADDRINUSE); counts and sizes as numbers
                hook.fields["ret"] = replace(ret, ty=ret.ty.with_display(T.ERRNO))
            if cat == "syscalls" and name.startswith("sys_exit_"):
                # the syscall's arguments at its exit: the sys_enter_X fields, saved per thread at entry (codegen)
                enter = name.replace("sys_exit_", "sys_enter_", 1)
                try:
                    etext, _ = _tp_format(kernel, cat, enter)
                except ProbeError:
                    etext = None
                if etext is not None:
                    fields = [replace(f, entry=True, doc=f"{f.doc} (at {enter}, saved per thread until the exit)")
                              for f in parse_tp_format(etext, syscall=True) if f.name != "__syscall_nr"]
                    _add_tp_fields(hook, f"{cat}:{enter}", fields, entry=True)
        for n, f in F.BUILTINS.items():
            hook.fields.setdefault(n, f)
        return hook


def _tp_format(kernel: Kernel, cat: str, name: str) -> tuple[str | None, str]:
    """A tracepoint's format text (tracefs, else BTF; None when neither knows it) and where it came from."""
    tracefs = kernel.tracefs()
    if tracefs is not None:
        fmt = tracefs / "events" / cat / name / "format"
        try:
            return fmt.read_text(), f"tracefs ({fmt})"
        except FileNotFoundError:
            raise _tp_missing(tracefs, cat, name) from None
        except OSError:
            pass  # unreadable (not root): BTF knows the fields too
    return btf_tp_format(kernel, cat, name), _btf_source(kernel, cat, name)


def _add_tp_fields(hook: Hook, name: str, fields: list[F.Field], entry: bool = False) -> None:
    """A tracepoint's fields, and the typed address fields of its user sockaddr pointers; fields the hook
    has already (a sys_exit's own `ret`) stay."""
    for f in fields:
        hook.fields.setdefault(f.name, f)
    for n, f in F.user_sockaddr_fields(name, fields).items():
        f = replace(f, entry=True) if entry else f
        old = hook.fields.get(n)  # sendto's pointer is named `addr`: the typed address replaces it
        if old is None or old.kind == "tp" and old.offset == f.offset and old.entry == f.entry:
            hook.fields[n] = f


def _retval_type(ret) -> T.Type:
    ty = T.from_ctype(ret)
    if ty.kind == "int" and ty.signed and not ty.display:
        ty = ty.with_display(T.ERRNO)
    return ty


def _same_type(seed_type: str, kernel_decl: str) -> bool:
    norm = lambda s: re.sub(r"\s+", " ", s.replace("const ", "")).replace(" *", "*").strip()
    return norm(seed_type) == norm(kernel_decl)


def _close_btf_funcs(kernel: Kernel, name: str, lsm: bool) -> list[str]:
    """Closest function names in BTF; prefiltered so difflib sees a few hundred."""
    prefix = "bpf_lsm_" if lsm else ""
    key = name[:4]
    cands = []
    for t in kernel.btf.iter_types():
        if t.kind == "func" and t.name.startswith(prefix):
            short = t.name[len(prefix):]
            if key in short or name in short:
                cands.append(short)
    contains = sorted((c for c in cands if name in c), key=len)[:2]
    close = difflib.get_close_matches(name, cands, n=3, cutoff=0.6)
    return list(dict.fromkeys(contains + close))[:3]


_TP_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d)")


def parse_tp_format(text: str, syscall: bool | None = None) -> list[F.Field]:
    """Fields of a tracefs `format` file, without the common_* header.

    `syscall`: a syscalls:sys_enter_* tracepoint, whose `char *` arguments are user strings
    (None: told by the format's `name: sys_enter_...` line)."""
    if syscall is None:
        syscall = re.search(r"^name: sys_(enter|exit)_", text, re.M) is not None
    out = []
    for m in _TP_FIELD.finditer(text):
        decl = m["decl"].strip()
        dm = re.match(r"^(?P<type>.*?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<arr>\[\d*\])?$", decl)
        if not dm:
            continue
        name = dm["name"]
        if name.startswith("common_"):
            continue
        ctype = dm["type"].strip() + (dm["arr"] or "")
        ty = F.with_name_display(name, T.tp_field_type(ctype, int(m["size"]), m["signed"] == "1", name + (dm["arr"] or ""),
                                                         syscall=syscall))
        out.append(F.Field(name, ty, "tp", f"tracepoint field: {decl}", offset=int(m["off"])))
    return out


def _tp_missing(tracefs, cat: str, name: str) -> ProbeError:
    cat_dir = tracefs / "events" / cat
    if not cat_dir.is_dir():
        cats = [p.name for p in (tracefs / "events").iterdir() if p.is_dir()]
        close = difflib.get_close_matches(cat, cats, n=3)
        return ProbeError(f"no tracepoint category '{cat}' on this kernel",
                          f"did you mean {', '.join(close)}?" if close else f"categories are listed in {tracefs}/events")
    names = [p.name for p in cat_dir.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(name, names, n=3)
    return ProbeError(f"no tracepoint '{cat}:{name}' on this kernel",
                      f"did you mean {', '.join(f'tracepoint:{cat}:{c}' for c in close)}?" if close else None)


# -- tracepoints from BTF (no tracefs: not root, or a reference kernel) ------------
_SYS_EVENT = re.compile(r"sys_(enter|exit)_(\w+)")


def btf_tp_format(kernel: Kernel, cat: str, name: str) -> str | None:
    """A tracefs-style `format` text of tracepoint cat:name, made from BTF.

    Raises ProbeError when BTF shows there is no such tracepoint; None when
    the tracepoint exists but BTF cannot give its record.  BTF does not know
    categories, so only `syscalls` is told apart from the rest."""
    idx = kernel.btf.tracepoints()
    m = _SYS_EVENT.fullmatch(name)
    known = _syscalls(idx)
    if cat == "syscalls":
        if not m or m[2] not in known:
            raise _tp_missing_btf(kernel, cat, name, idx)
        return _syscall_format(kernel, m[1], m[2], idx.syscalls[m[2]])
    if m and m[2] in known and name not in idx.events:
        raise ProbeError(f"no tracepoint '{cat}:{name}' on kernel {kernel.label}",
                         f"syscall tracepoints are in category syscalls: tracepoint:syscalls:{name}")
    if name not in idx.events:
        raise _tp_missing_btf(kernel, cat, name, idx)
    cls = idx.events[name]
    rec = kernel.btf.struct(f"trace_event_raw_{cls}") if cls else None
    if rec is None:  # no class prototype fits (or a raw-only tracepoint): fields unknown, tracefs has them
        return None
    return _record_format(rec)


_COMMON = ("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
           "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
           "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
           "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n")


_DWARF_INTS = re.compile(r"\b(long long unsigned int|long unsigned int|short unsigned int|long long int|long int|short int)\b")
_C_INTS = {"long long unsigned int": "unsigned long long", "long unsigned int": "unsigned long",
           "short unsigned int": "unsigned short", "long long int": "long long", "long int": "long",
           "short int": "short"}


def _line(decl: str, off: int, size: int, signed: bool) -> str:
    decl = _DWARF_INTS.sub(lambda m: _C_INTS[m[1]], decl)  # BTF spells ints as DWARF does
    return f"\tfield:{decl};\toffset:{off};\tsize:{size};\tsigned:{int(signed)};\n"


def _syscall_format(kernel: Kernel, way: str, sysname: str, func: str) -> str:
    """struct syscall_trace_enter {ent; int nr; unsigned long args[6]} / _exit {ent; int nr; long ret}:
    every argument is an unsigned long slot, named and typed by the syscall's definition."""
    out = [f"name: sys_{way}_{sysname}\nformat:\n", _COMMON, _line("int __syscall_nr", 8, 4, True)]
    if way == "exit":
        out.append(_line("long ret", 16, 8, True))
        return "".join(out)
    sig = kernel.btf.func(func) if func else None
    if sig is not None:
        params = [(p.type.c_decl(), p.name or f"arg{i}") for i, p in enumerate(sig.params)]
        if len(params) == 1 and params[0][0] == "const struct pt_regs *":
            params = []  # SYSCALL_DEFINE0's stub: no arguments
    else:
        params = shipped_syscalls().get(sysname, [])
    for i, (ctype, pname) in enumerate(params):
        out.append(_line(f"{ctype}{'' if ctype.endswith('*') else ' '}{pname}", 16 + 8 * i, 8, False))
    return "".join(out)


def _data_text(name: str) -> str:
    """hookql/data/NAME, a file of the package (read as a file: importlib.resources costs a cold run ~5 ms)."""
    import os

    with open(os.path.join(os.path.dirname(__file__), "data", name), encoding="utf-8") as f:
        return f.read()


@cache
def shipped_syscalls() -> dict[str, list[list[str]]]:
    """Syscall arguments as tracefs names them (hookql/data/syscalls.json, tools/gen_syscalls.py):
    syscall ABI, the same on every kernel that has the syscall.  Used where BTF has no
    __do_sys_X/__se_sys_X prototype, which is most syscalls (those functions are inlined)."""
    data = json.loads(_data_text("syscalls.json"))
    return data["syscalls"]


def _syscalls(idx) -> set[str]:
    """Syscalls with tracepoints on this kernel: those BTF has a __do_sys_/__se_sys_ prototype for,
    and entry stubs (__x64_sys_X) of syscalls known to have tracepoints (a stub alone may be
    cond_syscall's placeholder for one the kernel was built without)."""
    table = shipped_syscalls()
    return {s for s, f in idx.syscalls.items() if f or s in table}


def _record_format(rec) -> str:
    out = [f"name: {rec.name}\nformat:\n", _COMMON]
    for m in rec.members:
        if m.name in ("ent", "__data") or not m.name:
            continue
        off, ty = m.bit_offset // 8, m.type
        for loc in ("__data_loc", "__rel_loc"):
            if m.name.startswith(loc + "_"):
                out.append(_line(f"{loc} char[] {m.name[len(loc) + 1:]}", off, 4, False))
                break
        else:
            layout = ty.strip()
            elem = layout
            while elem.kind == "array":
                elem = elem.target.strip()
            out.append(_line(ty.c_decl(m.name), off, ty.size, elem.signed))
    return "".join(out)


def _tp_missing_btf(kernel: Kernel, cat: str, name: str, idx) -> ProbeError:
    if cat == "syscalls":
        names = [f"sys_{w}_{s}" for s in _syscalls(idx) for w in ("enter", "exit")]
    else:
        names = [e for e, c in idx.events.items() if c]
    close = difflib.get_close_matches(name, names, n=3)
    return ProbeError(f"no tracepoint '{cat}:{name}' on kernel {kernel.label}",
                      f"did you mean {', '.join(f'tracepoint:{cat}:{c}' for c in close)}?" if close
                      else "`hookql hooks 'tracepoint:*'` lists them")


def _btf_source(kernel: Kernel, cat: str, name: str) -> str:
    idx = kernel.btf.tracepoints()
    m = _SYS_EVENT.fullmatch(name)
    if cat == "syscalls" and m:
        func = idx.syscalls.get(m[2], "")
        how = "struct syscall_trace_exit" if m[1] == "exit" else (
            f"struct syscall_trace_enter, arguments named by {func}()" if func
            else "struct syscall_trace_enter, arguments named by hookql/data/syscalls.json")
        return f"BTF of kernel {kernel.label} ({how})"
    return (f"BTF of kernel {kernel.label} (struct trace_event_raw_{idx.events.get(name, '?')}; "
            "BTF does not record the category, so it is not checked)")


def tracepoint_list(kernel: Kernel) -> tuple[list[tuple[str, str]], str]:
    """Every tracepoint (category, name) of a kernel, and where the list came from.

    tracefs when readable (the running kernel, as root); else BTF: events with a record
    (category "?", BTF does not record it) and syscalls:sys_enter_X/sys_exit_X."""
    tracefs = kernel.tracefs()
    if tracefs is not None:
        try:
            out = [(c.name, e.name) for c in (tracefs / "events").iterdir() if c.is_dir() and c.name != "ftrace"
                   for e in c.iterdir() if e.is_dir()]
            return sorted(out), f"tracefs ({tracefs}/events)"
        except OSError:
            pass
    idx = kernel.btf.tracepoints()
    out = [("syscalls", f"sys_{w}_{s}") for s in sorted(_syscalls(idx)) for w in ("enter", "exit")]
    out += [("?", e) for e, c in idx.events.items() if c]
    return out, f"BTF of kernel {kernel.label}"
