"""Type checking: resolve every probe against the catalog and the kernel's
BTF, every name to a field or constant, and give every expression a type.

All errors are collected (one bad clause does not stop the others) and a
failed sub-expression types as None so it is reported once, not cascaded.
"""
from __future__ import annotations

import copy
import difflib
import ipaddress
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hookql import constants as C
from hookql import nodes as n
from hookql import types as T
from hookql.catalog import Catalog, Hook, ProbeError
from hookql.diagnostics import Diagnostics
from hookql import fields as F
from hookql.fields import Field
from hookql.kernel import Kernel
from hookql.lexer import AGGREGATIONS
from hookql.source import Source, Span, utf8
from hookql.types import Type

_ARITH = {"+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"}
_ORDER = {"<", "<=", ">", ">="}
_ONE_VALUE = {"sum", "avg", "min", "max", "hist"}
MAX_LHIST_BUCKETS = 1000
# Limits the README ("The language") documents; past each one the checker reports an error naming it.
MAX_SET_ELEMENTS = 1024  # `x in {...}` becomes one comparison per element; 1024 addresses build in ~12 s
MAX_DEF_DEPTH = 32  # a def using a def using a def ...
MAX_INLINED = 100_000  # terms the defs used in one clause put into it (each use inlines its def's body)
MAX_CONST_DEPTH = 64  # a constant defined through a constant defined through ...
MAX_CHECK_DEPTH = 150  # nesting levels once defs are expanded (the parser allows 64 in the text)
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # integers are 64-bit; above 2**63 - 1 they are unsigned
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # IPv4 as the program stores it: ::ffff:a.b.c.d


@dataclass(frozen=True)
class ConstSymbol:
    """A named constant, user-defined or from the kernel; value is a Python
    int/str/ip network or frozenset of those."""

    name: str
    ty: Type
    value: object
    origin: str
    span: Span | None = None


class Resolver(Protocol):
    """Finds the script a `use` names; script libraries (hookql.lock) plug in here."""

    def resolve(self, use: n.Use, diags: Diagnostics) -> tuple[str, Source] | None:
        """(namespace, source) of the module, or None after reporting why not."""


class FileResolver:
    """`use "path.hq"`, relative to the using script and only inside its project: the directory of the
    nearest hookql.toml above the script, else the script's own directory (the current directory for
    `-e` and standard input); a library's files only inside that library.  Absolute paths, `..` past the
    root and symbolic links leading out are errors, and nothing of such a file is read.  Named libraries
    need a lock (ManifestResolver)."""

    def __init__(self):
        self._roots: dict[str, str] = {}  # a module this resolver opened (its source name) -> its real root
        self._libraries: dict[str, str] = {}  # real root of a library -> its name

    def root_of(self, source: Source) -> str:
        """The real directory the file of `source` may use files from.  Worked out from the real path of
        the file as it was read (source.real), once: a name that points elsewhere later (a link another
        user swaps) changes nothing."""
        import os

        if source.name in self._roots:
            return self._roots[source.name]
        if source.real:
            start = os.path.dirname(source.real)
        else:
            start = os.getcwd() if source.name.startswith("<") else os.path.realpath(os.path.dirname(
                os.path.abspath(source.name)))
        from hookql.libs.manifest import owner as owner_of, trusted

        owner = owner_of(source.real or source.name)
        d = start
        while True:
            if trusted(os.path.join(d, "hookql.toml"), owner):  # not a manifest another user left above
                root = d
                break
            if os.path.dirname(d) == d:
                root = start
                break
            d = os.path.dirname(d)
        self._roots[source.name] = root
        return root

    def resolve(self, use: n.Use, diags: Diagnostics):
        import os

        from hookql.libs import confine
        from hookql.libs.errors import show

        if use.path is None:
            diags.error(use.span, f"unknown library '{use.name}'",
                        "libraries are installed with `hookql lib install` and resolved through hookql.lock")
            return None
        using = use.span.source.name
        root = self.root_of(use.span.source)
        lib = self._libraries.get(root)
        where = f"library '{lib}' ({root})" if lib else f"the project ({root})"
        hint = ("a library uses only its own files: put the file in the library" if lib else
                "move the file into the project (the directory of its hookql.toml, or the script's own), "
                "or make it a library: [dependencies] NAME = { path = \"DIR\" } in hookql.toml, then `use NAME`")
        if Path(use.path).is_absolute():
            diags.error(use.span, f'use "{show(use.path)}": an absolute path; a script uses only files inside '
                        f"{where}", hint)
            return None
        path = Path(using).parent / use.path  # as the user wrote it, for messages
        real_using = use.span.source.real  # resolved from where the using file really was when it was read
        try:
            data, real = confine.read_real(os.path.join(os.path.dirname(real_using), use.path) if real_using
                                           else path, root, root_is_real=True)
            text = data.decode("utf-8")
        except confine.Outside as exc:
            what = "is (or passes through) a symbolic link to outside" if exc.link else "is outside"
            diags.error(use.span, f'use "{show(use.path)}": {show(path)} {what} {where}; it was not read', hint)
            return None
        except (OSError, UnicodeDecodeError) as exc:
            diags.error(use.span, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
            return None
        self._roots[str(path)] = root
        return Path(use.path).stem, Source(str(path), text, real=real)


def _left_spine(e: n.Binary) -> tuple[n.Expr, list[n.Binary]]:
    """A chain of operators along the left operands (`a + b + c`): its leftmost operand, and the
    operators from the innermost out, found without recursion."""
    spine = []
    x: n.Expr = e
    while isinstance(x, n.Binary):
        spine.append(x)
        x = x.left
    spine.reverse()
    return x, spine


MAX_STATE_BYTES = 128  # bytes of a state map's key, and of its value
MAX_STATE_STR = 64  # bytes of a string a state map's key or value holds (keys and values live on the stack)
_STATE_KINDS = ("int", "bool", "ptr", "str", "addr")


@dataclass(eq=False)
class StateMap:
    """A map clauses store into (`start[sk] = ts`) and others read (`start[sk]`, `sk in start`, `delete`).
    Its key and value types are those of its first store (in source order) that checks; every other
    store, read and delete must agree."""

    name: str
    index: int
    span: Span | None = None  # the first store that typed it
    keys: list[Type] | None = None
    value: Type | None = None  # one value, or None for a record
    fields: dict[str, Type] | None = None  # a record's fields, in order
    stores: int = 0
    deletes: int = 0
    reads: int = 0
    written: bool = False  # some clause stores into it (whether or not that store checks)

    @property
    def typed(self) -> bool:
        return self.keys is not None

    def describe(self) -> str:
        keys = ", ".join(str(k) for k in self.keys)
        val = "{" + ", ".join(f"{k}: {t}" for k, t in self.fields.items()) + "}" if self.fields else str(self.value)
        return f"{self.name}[{keys}] = {val}"


@dataclass
class CheckedScript:
    script: n.Script
    kernel: Kernel
    consts: dict[str, ConstSymbol] = field(default_factory=dict)
    states: dict[str, StateMap] = field(default_factory=dict)

    @property
    def clauses(self) -> list[n.Clause]:
        return [c for c in self.script.clauses if c.hook is not None]


class _Libraries:
    """The default resolver, hookql.libs.modules.ManifestResolver, made at the first `use`: the
    libraries' code (tomllib, git, locks) costs a cold `hookql run` ~15 ms, and most scripts use nothing."""

    def __init__(self):
        self.kernel = None
        self._resolver = None

    def resolve(self, use: n.Use, diags: Diagnostics):
        if self._resolver is None:
            from hookql.libs.modules import ManifestResolver  # libraries build on the checker

            self._resolver = ManifestResolver()
            self._resolver.kernel = self.kernel
        return self._resolver.resolve(use, diags)


class Checker:
    def __init__(self, kernel: Kernel, catalog: Catalog | None = None, resolver: Resolver | None = None):
        self.kernel = kernel
        self.catalog = catalog or Catalog.load()
        if resolver is None:
            resolver = _Libraries()
        if hasattr(resolver, "kernel"):
            resolver.kernel = kernel
        self.resolver = resolver

    def check(self, script: n.Script, diags: Diagnostics) -> CheckedScript:
        out = CheckedScript(script, self.kernel)
        consts = _Consts(self, diags)
        for use in script.uses:
            # `include` adds the module's clauses to this script (checked with its other clauses)
            script.items += consts.add_module(use)
        for item in script.items:
            if isinstance(item, (n.Const, n.Def)):
                consts.declare(item)
        consts.evaluate_all()
        out.consts = consts.values
        script.items = self.expand_probe_lists(script.items, diags)
        out.states = states = self.infer_states(script, consts)
        groups: dict[int, list[n.Clause]] = {}
        for clause in script.clauses:
            if clause.group is None or clause is clause.group.first:
                _ClauseChecker(self, clause, consts, diags, states).run()
                continue
            # another probe of a list: what every probe reports alike is said once (for the first)
            quiet = Diagnostics()
            _ClauseChecker(self, clause, consts, quiet, states).run()
            said = {(d.severity, d.span, d.message) for d in diags}
            diags.extend(d for d in quiet if (d.severity, d.span, d.message) not in said)
            groups.setdefault(id(clause.group), [clause.group.first]).append(clause)
        for members in groups.values():
            _unify_group(members, diags)
        names: dict[str, n.Aggregate] = {}
        for clause in script.clauses:  # `as NAME`: one aggregation per name (a probe list's copies are one)
            if clause.group is not None and clause is not clause.group.first:
                continue
            for a in clause.actions:
                if isinstance(a, n.Aggregate) and a.alias is not None:
                    first = names.setdefault(a.alias, a)
                    if first is not a:
                        diags.error(a.alias_span, f"'{a.alias}' already names the aggregation at line "
                                    f"{first.span.line} (`{first.span.text}`)",
                                    "give each aggregation its own name: it is the metric's name in `hookql serve`")
        for st in states.values():
            if not st.stores or st.span is None:
                continue
            if not st.reads:
                diags.warning(st.span, f"state '{st.name}' is stored but never read",
                              f"read it in another clause, e.g. `where KEY in {st.name}` or `{st.name}[KEY]`")
            elif not st.deletes:
                diags.warning(st.span, f"state '{st.name}' is stored but never deleted: its entries stay until "
                              "the map is full, then the least recently used are evicted",
                              f"delete each entry once read: `delete {st.name}[KEY]`")
        return out

    def expand_probe_lists(self, items: list[n.Node], diags: Diagnostics) -> list[n.Node]:
        """`on A, B { ... }` becomes one clause per probe, each a copy checked against its own hook (so it
        sees only what its hook has: fields every probe of the list has, by the same name), one ProbeGroup
        tying them together for codegen (shared maps) and the `probe` builtin."""
        out: list[n.Node] = []
        for item in items:
            if not isinstance(item, n.Clause) or len(item.probes) < 2 and "*" not in item.probe.text:
                out.append(item)
                continue
            probes, seen, again = [], {}, {}
            for p in self.expand_wildcards(item.probes, diags):
                try:
                    text = self.catalog.resolve(p.provider, p.target, self.kernel).probe
                except ProbeError:
                    text = p.text  # its error is reported when the copy is checked
                if text in seen:
                    again.setdefault(p.span, []).append(text)  # a wildcard's matches share its span
                    continue
                seen[text] = p
                probes.append(p)
            for span, texts in again.items():  # once per written probe, a wildcard's repeats together
                if "*" in span.text:
                    more = f" and {len(texts) - 3} more" if len(texts) > 3 else ""
                    diags.error(span, f"{span.text} matches {', '.join(texts[:3])}{more}, already in this probe "
                                "list", "name each probe once: narrow the pattern, or drop what it repeats")
                else:
                    diags.error(span, f"{texts[0]} is already in this probe list", "name each probe once")
            if len(probes) > MAX_PROBES:
                diags.error(item.probe.span, f"this probe list attaches {len(probes)} probes; a clause attaches at "
                            f"most {MAX_PROBES}", "narrow the patterns, or split the clause")
                continue
            if not probes:
                continue  # every probe refused, each with its error
            group = n.ProbeGroup(list(seen), ", ".join(p.text for p in item.probes))
            copies = [item] + [copy.deepcopy(item) for _ in probes[1:]]
            for c, p in zip(copies, probes):
                c.probe, c.group = p, group
            group.first = item
            out += copies
        return out

    def expand_wildcards(self, probes: list[n.Probe], diags: Diagnostics) -> list[n.Probe]:
        """tracepoint:CATEGORY:NAME with `*` in either part: every tracepoint of the kernel that matches, in
        name order (tracefs, or BTF offline)."""
        from fnmatch import fnmatchcase

        from hookql.catalog import PROVIDERS, tracepoint_list

        out: list[n.Probe] = []
        for p in probes:
            if "*" not in p.text:
                out.append(p)
                continue
            if PROVIDERS.get(p.provider) != "tracepoint" or len(p.target) != 2:
                prov = PROVIDERS.get(p.provider)
                diags.error(p.span, f"wildcards name tracepoints (tracepoint:sock:*, "
                            f"tracepoint:syscalls:sys_enter_*), not {p.text}",
                            "a tracepoint is CATEGORY:NAME, either part a pattern: tracepoint:sock:*, "
                            "tracepoint:*:sys_enter_getp*" if prov == "tracepoint" else
                            "list the hooks one by one: on lsm:socket_connect, lsm:socket_bind" if prov == "lsm" else
                            "list the functions one by one: on kprobe:tcp_v4_connect, kprobe:tcp_v6_connect")
                continue
            tps, where = tracepoint_list(self.kernel)
            cat, name = p.target
            found = [n.Probe(p.span, "tracepoint", [c, e]) for c, e in tps
                     if c != "?" and fnmatchcase(c, cat) and fnmatchcase(e, name)]
            if not found:
                offline = any(c == "?" for c, _ in tps)  # BTF records no categories but syscalls'
                diags.error(p.span, f"no tracepoint matches {p.text} (from {where})",
                            f"`hookql hooks '{p.text}'` lists what there is" + (
                                "; checked offline, only tracepoint:syscalls:* patterns can match: name the "
                                "tracepoints one by one, or check against the running kernel" if offline else ""))
            elif len(found) > MAX_PROBES:
                diags.error(p.span, f"{p.text} matches {len(found)} tracepoints; a clause attaches at most "
                            f"{MAX_PROBES} probes", "narrow the pattern")
            else:
                out += found
        return out

    def infer_states(self, script: n.Script, consts: "_Consts") -> dict[str, StateMap]:
        """Every state map the clauses name, typed from its first store that checks: the stores'
        keys and values are checked (on copies, quietly) in source order until nothing changes, so a
        store may read another state map stored further down."""
        states: dict[str, StateMap] = {}
        stores = []
        for clause in script.clauses:
            for a in clause.actions:
                if isinstance(a, (n.Store, n.Delete)):
                    states.setdefault(a.target.name, StateMap(a.target.name, len(states)))
                if isinstance(a, n.Store):
                    stores.append((clause, a))
                    states[a.target.name].written = True
        changed = True
        while changed and stores:
            changed = False
            for clause, a in stores:
                st = states[a.target.name]
                if st.typed:
                    continue
                cc = _ClauseChecker(self, clause, consts, Diagnostics(), states)
                try:
                    cc.hook = self.catalog.resolve(clause.probe.provider, clause.probe.target, self.kernel)
                except ProbeError:
                    continue
                copy = lambda e: _rebuild(e, lambda name: n.Name(name.span, name.id))
                keys = [cc.expr(copy(k)) for k in a.target.keys]
                value = a.value
                if isinstance(value, n.SetLit):
                    fields = {}
                    for item in value.items:
                        fname = _field_name(item)
                        if fname is None or fname in fields:
                            break
                        fields[fname] = cc.expr(copy(item))
                    else:
                        if all(t is not None and t.kind in _STATE_KINDS for t in [*keys, *fields.values()]):
                            st.keys, st.fields, st.span = keys, fields, a.target.name_span
                            changed = True
                    continue
                vt = cc.expr(copy(value))
                if all(t is not None and t.kind in _STATE_KINDS for t in [*keys, vt]):
                    st.keys, st.value, st.span = keys, vt, a.target.name_span
                    changed = True
        for st in states.values():  # the quiet checks above counted nothing
            st.reads = 0
        return states


MAX_PROBES = 512  # probes one clause's list (wildcards expanded) attaches: each is a program
_EXEC_EXITS = ("syscalls:sys_exit_execve", "syscalls:sys_exit_execveat")


# -- constants -----------------------------------------------------------------
class _Consts:
    """User constants: declared first, evaluated on demand (so order does not
    matter), with cycles and duplicates reported."""

    def __init__(self, checker: Checker, diags: Diagnostics):
        self.checker = checker
        self.diags = diags
        self.decls: dict[str, n.Const] = {}
        self.defs: dict[str, n.Def] = {}
        self.values: dict[str, ConstSymbol] = {}
        self.failed: set[str] = set()
        self._active: list[str] = []
        self._loaded: set[str] = set()

    def add_module(self, use: n.Use) -> list[n.Clause]:
        """Declare a module's constants and defs under its namespace; return
        its clauses when the script `include`s it."""
        from hookql.parser import parse  # the checker is the only stage that reaches back to parse modules

        key = use.path or use.name
        if key in self._loaded and not use.include:
            return []
        self._loaded.add(key)
        found = self.checker.resolver.resolve(use, self.diags)
        if found is None:
            return []
        ns, source = found
        module = parse(source, self.diags)
        for inner in module.uses:  # a library's own libraries, in the one namespace
            self.add_module(inner)
        local = {i.name for i in module.items if isinstance(i, (n.Const, n.Def))}
        clauses: list[n.Clause] = []
        for item in module.items:
            if isinstance(item, n.Const):
                self.declare(n.Const(item.span, f"{ns}.{item.name}", item.name_span, _qualify(item.value, ns, local)))
            elif isinstance(item, n.Def):
                body = _qualify(item.body, ns, local - set(item.params))
                self.declare(n.Def(item.span, f"{ns}.{item.name}", item.name_span, item.params, body))
            elif isinstance(item, n.Clause) and use.include:
                where = _qualify(item.where, ns, local) if item.where is not None else None
                clause = n.Clause(item.span, item.probe, where, [_qualify_action(a, ns, local) for a in item.actions])
                clause.probes = item.probes
                clauses.append(clause)
            elif isinstance(item, n.Clause):
                self.diags.error(item.span, "clauses belong in the scripts that use it: a library module's "
                                 "clauses run only where a script `include`s it; `use` takes constants and defs",
                                 f"write `include {use.name or use.path}` to run its clauses")
        return clauses

    def declare(self, c: n.Const | n.Def) -> None:
        if c.name in self.decls or c.name in self.defs:
            first = self.decls.get(c.name) or self.defs[c.name]
            what = "constant" if isinstance(first, n.Const) else "def"
            self.diags.error(c.name_span, f"{what} '{c.name}' is defined twice",
                             f"the first definition is at line {first.name_span.line}, column {first.name_span.col}; "
                             "rename or remove one")
            return
        if c.name in _builtin_field_names():
            self.diags.error(c.name_span, f"'{c.name}' is a builtin field and cannot be a constant's name",
                             "constants are conventionally UPPER_CASE")
            return
        kc = C.lookup(c.name, self.checker.kernel.btf) if c.name[:1].isupper() else None
        if kc is not None:
            self.diags.error(c.name_span, f"'{c.name}' is already a kernel constant ({kc.origin}, = {kc.value})",
                             "use the kernel's constant, or pick another name")
            return
        if isinstance(c, n.Def):
            self.defs[c.name] = c
        else:
            self.decls[c.name] = c

    def evaluate_all(self) -> None:
        for name in list(self.decls):
            self.get(name, None)

    def get(self, name: str, use_span: Span | None) -> ConstSymbol | None:
        if name in self.values:
            return self.values[name]
        if name in self.failed or name not in self.decls:
            return None
        if name in self._active:
            cycle = " -> ".join(self._active[self._active.index(name):] + [name])
            self.diags.error(use_span or self.decls[name].name_span, f"constant '{name}' is defined in terms of itself ({cycle})")
            self.failed.add(name)
            return None
        if len(self._active) >= MAX_CONST_DEPTH:
            self.diags.error(use_span or self.decls[name].name_span,
                             f"constant '{name}' is defined through more than {MAX_CONST_DEPTH} other constants",
                             f"at most {MAX_CONST_DEPTH} constants deep: write some of them as literals")
            self.failed.add(name)
            return None
        self._active.append(name)
        decl = self.decls[name]
        value = _ConstEval(self).eval(decl.value)
        self._active.pop()
        if value is None:
            self.failed.add(name)
            return None
        ty, val = value
        sym = self.values[name] = ConstSymbol(name, ty, val, "const", decl.name_span)
        return sym


class _ConstEval:
    """Evaluates constant expressions at check time."""

    def __init__(self, consts: _Consts):
        self.consts = consts
        self.diags = consts.diags

    def eval(self, e: n.Expr) -> tuple[Type, object] | None:
        r = self._eval(e)
        if r is not None:
            e.ty = r[0]
        return r

    def _eval(self, e: n.Expr):
        if isinstance(e, n.Binary) and isinstance(e.left, n.Binary):
            return self._chain(e)
        return self._eval1(e)

    def _chain(self, e: n.Binary):
        """`1 + 2 + 3 ...`: the chain along the left operands, without recursion."""
        x, spine = _left_spine(e)
        left = self.eval(x)
        for b in spine:
            left = self._binary(b, left)
            if left is not None:
                b.ty = left[0]
        return left

    def _binary(self, e: n.Binary, l):
        if l is None and isinstance(e.left, n.Binary):
            return None  # a chain already reported where it went wrong
        if e.op not in _ARITH:
            self.diags.error(e.span, "a constant must be a value known before anything loads",
                             "use literals, other constants and + - * / % & | ^ << >> on them")
            return None
        r = self.eval(e.right)
        if l is None or r is None:
            return None
        if not (l[0].is_int and r[0].is_int):
            self.diags.error(e.op_span, f"'{e.op}' needs integers, not {l[0]} and {r[0]}")
            return None
        v = _fold_checked(e, l[1], r[1], self.diags)
        units = {_unit(l[0]), _unit(r[0])}
        dur = "ns" in units and (e.op in ("+", "-", "*") and units <= {"ns", None}
                                 or e.op == "/" and _unit(l[0]) == "ns" and _unit(r[0]) is None)
        return None if v is None else (T.DURATION if dur else T.LITERAL_INT, v)

    def _eval1(self, e: n.Expr):
        if isinstance(e, n.IntLit):
            return T.LITERAL_INT, e.value
        if isinstance(e, n.DurationLit):
            return T.DURATION, e.nanoseconds
        if isinstance(e, n.StrLit):
            return T.string(len(utf8(e.value)) + 1), e.value
        if isinstance(e, n.IpLit):
            return _ip_lit(e, self.diags)
        if isinstance(e, n.SetLit):
            items = [self.eval(i) for i in e.items]
            if any(i is None for i in items):
                return None
            elem = _set_elem_type(e, items, self.diags)
            if elem is None:
                return None
            values = frozenset(v for _, v in items)
            if len(values) > MAX_SET_ELEMENTS:
                self.diags.error(e.span, f"a set holds at most {MAX_SET_ELEMENTS} elements; this one has {len(values)}",
                                 "each element is one comparison in the program: split the set, or use a network "
                                 "(`daddr in 10.0.0.0/8`) or a range (`dport >= 1000 and dport < 2000`)")
                return None
            return T.set_of(elem), values
        if isinstance(e, n.Name):
            sym = self.consts.get(e.id, e.span)
            if sym is None and e.id not in self.consts.decls:
                kc = C.lookup(e.id, self.consts.checker.kernel.btf)
                if kc is not None:
                    e.symbol = ConstSymbol(kc.name, kc.ty, kc.value, kc.origin)  # what the lowering reads
                    return kc.ty, kc.value
                self.diags.error(e.span, f"unknown constant '{e.id}'",
                                 _did_you_mean(e.id, list(self.consts.decls)) or
                                 "a constant's value must be known before anything loads: literals, "
                                 "other constants and kernel constants (AF_INET, IPPROTO_TCP...)")
                return None
            if sym is not None:
                e.symbol = sym
            return (sym.ty, sym.value) if sym else None
        qual = _qualified(e)
        if isinstance(e, n.Member) and qual in self.consts.decls:
            sym = self.consts.get(qual, e.span)
            if sym is not None:
                e.path = sym  # as the clause checker resolves a qualified constant
            return (sym.ty, sym.value) if sym else None
        if isinstance(e, n.Unary) and e.op in ("-", "~"):
            v = self.eval(e.operand)
            if v is None:
                return None
            if not v[0].is_int:
                self.diags.error(e.span, f"'{e.op}' needs an integer, not {v[0]}")
                return None
            value = _fits(e, -v[1] if e.op == "-" else ~v[1], self.diags)
            return None if value is None else (T.LITERAL_INT, value)
        if isinstance(e, n.Binary) and e.op in _ARITH:
            return self._binary(e, self.eval(e.left))
        self.diags.error(e.span, "a constant must be a value known before anything loads",
                         "use literals, other constants and + - * / % & | ^ << >> on them")
        return None


def _fold_checked(e: n.Binary, a: int, b: int, diags: Diagnostics) -> int | None:
    """e's value from its operands' (a op b, as C computes it), or None after reporting at the operator
    why it has none: a division by zero, a shift by a negative count or by 64 or more, a result wider
    than 64 bits."""
    op = e.op
    if op in ("/", "%") and b == 0:
        diags.error(e.op_span, f"{'division' if op == '/' else 'remainder'} by zero: {_text(e.right)} is 0",
                    "the right side of '/' and '%' must not be 0")
        return None
    if op in ("<<", ">>") and not 0 <= b < 64:
        diags.error(e.op_span, f"shift by {b}: {'a negative count' if b < 0 else 'integers are 64-bit'}",
                    "shift by 0 to 63")
        return None
    if op in ("/", "%"):
        q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)  # C truncates toward zero
        v = q if op == "/" else a - b * q
    else:
        v = _INT_OPS[op](a, b)
    return _fits(e, v, diags)


_INT_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "&": operator.and_, "|": operator.or_,
            "^": operator.xor, "<<": operator.lshift, ">>": operator.rshift}


def _fits(e: n.Expr, v: int, diags: Diagnostics) -> int | None:
    if INT_MIN <= v <= INT_MAX:
        return v
    shown = str(v) if len(str(v)) <= 40 else f"about 2**{v.bit_length()}"
    span = e.op_span if isinstance(e, n.Binary) else e.span
    diags.error(span, f"{_text(e)} is {shown}, which does not fit in 64 bits",
                f"integers are 64-bit: from {INT_MIN} to {INT_MAX}")
    return None


def _ip_lit(e: n.IpLit, diags: Diagnostics):
    if e.network is None:
        diags.error(e.span, f"'{e.text}' is not a valid IP address or network",
                    "write IPv4 as 10.0.0.1 or 10.0.0.0/8, IPv6 as ::1 or fe80::/10")
        return None
    if e.is_cidr:
        return T.cidr(e.version), e.network
    return T.addr(e.version), e.network.network_address


def _set_elem_type(e: n.SetLit, items, diags: Diagnostics) -> Type | None:
    kinds = {t.kind for t, _ in items}
    if kinds <= {"int"}:
        return T.LITERAL_INT
    if kinds <= {"str"}:
        return T.string(max(t.size for t, _ in items))
    if kinds <= {"addr", "cidr"}:
        return T.cidr(None)
    diags.error(e.span, f"a set holds integers, strings or addresses of one kind, not a mix of {', '.join(sorted(kinds))}")
    return None


# -- clauses -------------------------------------------------------------------
class _ClauseChecker:
    def __init__(self, checker: Checker, clause: n.Clause, consts: _Consts, diags: Diagnostics,
                 states: dict[str, StateMap] | None = None):
        self.states = states if states is not None else {}
        self.checker = checker
        self.clause = clause
        self.consts = consts
        self.diags = diags
        self.hook: Hook | None = None
        self.expanding: list[str] = []
        self.depth = 0  # expr() levels open now
        self.known: dict[int, object] = {}  # id(expression) -> its value, for expressions known at check time
        # a def's expansion per (def, arguments' shape): a def used twice with the same arguments is
        # expanded and checked once, and both uses share it
        self.expansions: dict[tuple, n.Expr] = {}
        self.inlined: dict[int, int] = {}  # id(expansion) -> terms it puts into the program once inlined
        self.total_inlined = 0
        self.inline_reported = False
        self._hold: list[n.Expr] = []
        self.warned: set[int] = set()  # comparisons already reported as constant

    def run(self) -> None:
        c = self.clause
        try:
            self.hook = self.checker.catalog.resolve(c.probe.provider, c.probe.target, self.checker.kernel)
        except ProbeError as exc:
            self.diags.error(c.probe.span, str(exc), exc.hint)
            return
        c.hook = self.hook
        if self.hook.caveat and self.hook.provider in ("kprobe", "kretprobe"):
            cv = self.hook.caveat
            self.diags.warning(c.probe.span, f"{self.hook.probe}: {cv['why']}",
                               f"use {self.hook.provider}:{cv['use']}" if cv["use"] else None)
        if c.where is not None:
            self.in_where = True  # for the hints of what a filter cannot read (container, pod)
            t = self.expr(c.where)
            self.in_where = False
            if t is not None and t.kind != "bool":
                self.diags.error(c.where.span, f"a filter must be true or false, but {_is(c.where, t)}",
                                 "compare it, e.g. `... != 0`")
            elif t is not None and isinstance(self.known.get(id(c.where)), bool) and id(c.where) not in self.warned:
                fires = "true: the clause always fires" if self.known[id(c.where)] else "false: the clause never fires"
                self.diags.warning(c.where.span, f"this filter is known before anything runs: it is always {fires}",
                                   "filter on fields, e.g. `where comm == \"curl\"`")
        if not c.actions:
            self.diags.warning(c.span, f"{c.probe.text} has no actions: it would attach and record nothing",
                               "add an action such as `count by comm`")
        for a in c.actions:
            self.action(a)

    # -- actions --
    def action(self, a: n.Action) -> None:
        if isinstance(a, n.Aggregate):
            self.aggregate(a)
        elif isinstance(a, n.Emit):
            for v in a.values:
                self.scalar(v, "emit")
        elif isinstance(a, n.Deny):
            self.deny(a)
        elif isinstance(a, n.Store):
            self.store(a)
        elif isinstance(a, n.Delete):
            self.delete(a)

    # -- state across probes --
    def state_keys(self, e: n.Index, st: StateMap, what: str) -> bool:
        """Check e's keys against the map's; False after reporting why not."""
        if len(e.keys) != len(st.keys):
            self.diags.error(e.span, f"'{st.name}' takes {len(st.keys)} key{'s' * (len(st.keys) != 1)}, "
                             f"but {what} gives {len(e.keys)}", _first_store(st))
            return False
        ok = True
        for k, want in zip(e.keys, st.keys):
            t = self.expr(k)
            if t is None:
                ok = False
            elif not _state_compatible(t, want):
                self.diags.error(k.span, f"'{st.name}' is keyed by {_a(want)}, but {_is(k, t)}", _first_store(st))
                ok = False
            elif self.value_not_constant(k, t, "a state key"):
                ok = False
        return ok

    def store(self, a: n.Store) -> None:
        e = a.target
        st = self.states[e.name]
        st.stores += 1
        self.state_name_check(e)
        items = a.value.items if isinstance(a.value, n.SetLit) else None
        if items is not None:
            a.fields = []
            for item in items:
                fname = _field_name(item)
                if fname is None:
                    self.diags.error(item.span, f"a record stored in '{st.name}' holds fields by name, but "
                                     f"{_text(item)} has none", "store fields or members, e.g. "
                                     f"`{st.name}[KEY] = {{comm, pid}}`, read back as `{st.name}[KEY].comm`")
                    return
                if any(f == fname for f, _ in a.fields):
                    self.diags.error(item.span, f"the record stores '{fname}' twice", "name each field once")
                    return
                a.fields.append((fname, item))
        values = a.fields if items is not None else [(None, a.value)]
        types = []
        for _, v in values:
            t = self.expr(v)
            if t is not None and self.state_value_ok(v, t, st):
                types.append(t)
        if len(types) != len(values) or not st.typed:
            for k in e.keys:  # still report what is wrong in the keys
                self.expr(k)
            return
        if not self.state_keys(e, st, "this store"):
            return
        for what, ts in (("key", st.keys), ("value", list(st.fields.values()) if st.fields else [st.value])):
            size = sum(_state_bytes(t) for t in ts)
            if size > MAX_STATE_BYTES:
                self.diags.error(e.span, f"'{st.name}''s {what} takes {size} bytes; a state map's key and value "
                                 f"take at most {MAX_STATE_BYTES} each (they are built on the 512-byte stack)",
                                 "store fewer or shorter strings")
                return
        if (items is None) != (st.fields is None):
            have = "a record" if st.fields else f"{_a(st.value)}"
            self.diags.error(a.value.span, f"'{st.name}' holds {have}, but this store gives "
                             f"{'a record' if items is not None else _a(types[0])}", _first_store(st))
            return
        if items is None:
            if not _state_compatible(types[0], st.value):
                self.diags.error(a.value.span, f"'{st.name}' holds {_a(st.value)}, but {_is(a.value, types[0])}",
                                 _first_store(st))
                return
            st.value = _widest(st.value, types[0])
            return
        if [f for f, _ in a.fields] != list(st.fields):
            self.diags.error(a.value.span, f"'{st.name}' holds the record {{{', '.join(st.fields)}}}, but this "
                             f"store gives {{{', '.join(f for f, _ in a.fields)}}}", _first_store(st))
            return
        for (fname, v), t in zip(a.fields, types):
            if not _state_compatible(t, st.fields[fname]):
                self.diags.error(v.span, f"'{st.name}'s field '{fname}' holds {_a(st.fields[fname])}, but "
                                 f"{_is(v, t)}", _first_store(st))
                return
            st.fields[fname] = _widest(st.fields[fname], t)
        e.state = st

    def state_value_ok(self, v: n.Expr, t: Type, st: StateMap) -> bool:
        if self.value_not_constant(v, t, "a state value"):
            return False
        if t.kind not in _STATE_KINDS:
            self.diags.error(v.span, f"cannot store {_describe(v, t)} in '{st.name}'",
                             "state holds integers, durations, timestamps, pointers, strings and addresses"
                             + ("; " + _struct_hint(t) if t.kind in ("ptr", "struct") else ""))
            return False
        if t.kind == "str" and t.size > MAX_STATE_STR:
            self.diags.error(v.span, f"{_text(v)} is a string of up to {t.size} bytes; state holds strings of "
                             f"at most {MAX_STATE_STR}", "store a shorter string (comm is 16 bytes)")
            return False
        return True

    def state_name_check(self, e: n.Index) -> None:
        if e.name in _builtin_field_names() or e.name in self.consts.decls:
            self.diags.error(e.name_span, f"'{e.name}' is already a {'builtin field' if e.name in _builtin_field_names() else 'constant'}; "
                             "a state map needs a name of its own", "e.g. `start[skaddr] = ts`")

    def delete(self, a: n.Delete) -> None:
        e = a.target
        st = self.states[e.name]
        st.deletes += 1
        if not st.written:
            self.diags.error(e.name_span, f"delete from '{e.name}', which no clause stores",
                             _did_you_mean(e.name, [s for s in self.states if self.states[s].written]) or
                             f"store into it first: `on PROBE {{ {e.name}[KEY] = VALUE }}`")
            return
        if st.typed and self.state_keys(e, st, "this delete"):
            e.state = st

    def read_state(self, e: n.Index) -> Type | None:
        st = self.states.get(e.name)
        if st is None or st.span is None:
            self.unstored(e.name, e.name_span)
            for k in e.keys:
                self.expr(k)
            return None
        st.reads += 1
        if not self.state_keys(e, st, "this read"):
            return None
        e.state = st
        return T.RECORD if st.fields else st.value

    def unstored(self, name: str, span: Span) -> None:
        st = self.states.get(name)
        if st is not None and st.written:
            return  # its stores did not check: their errors say why
        stored = [s for s in self.states if self.states[s].written]
        self.diags.error(span, f"state '{name}' is read, but no clause stores it",
                         _did_you_mean(name, stored) or
                         f"store it in the clause that starts what you measure, e.g. "
                         f"`on PROBE {{ {name}[KEY] = ts }}`")

    def aggregate(self, a: n.Aggregate) -> None:
        if a.func not in AGGREGATIONS:
            self.diags.error(a.func_span, f"unknown action '{a.func}'",
                             _did_you_mean(a.func, [*AGGREGATIONS, "emit", "deny"]) or
                             f"actions are {', '.join(AGGREGATIONS)}, emit and deny")
            return
        want = {"count": 0, "lhist": 4}.get(a.func, 1)
        if len(a.args) != want:
            usage = {"count": "count [by KEYS]", "lhist": "lhist(VALUE, MIN, MAX, STEP)"}.get(a.func, f"{a.func}(VALUE)")
            self.diags.error(a.func_span, f"{a.func} takes {want or 'no'} argument{'s' if want != 1 else ''}, "
                             f"got {len(a.args)}", f"write {usage}")
        elif want:
            t = self.expr(a.args[0])
            if t is not None and not t.is_int:
                self.diags.error(a.args[0].span, f"{a.func}() needs an integer value, but {_is(a.args[0], t)}", _int_hint(t))
            if a.func == "lhist":
                self.lhist_bounds(a)
        for k in a.by:
            self.scalar(k, "by")

    def lhist_bounds(self, a: n.Aggregate) -> None:
        vals = []
        for arg, what in zip(a.args[1:], ("MIN", "MAX", "STEP")):
            r = _ConstEval(self.consts).eval(arg)
            if r is None:
                return
            if not r[0].is_int:
                self.diags.error(arg.span, f"lhist {what} must be an integer constant, not {r[0]}")
                return
            vals.append(r[1])
        for i, v in enumerate(vals, 1):  # the program takes the values themselves
            a.args[i] = lit = n.IntLit(a.args[i].span, v)
            lit.ty = T.LITERAL_INT
        lo, hi, step = vals
        if step <= 0:
            self.diags.error(a.args[3].span, f"lhist STEP must be positive, got {step}")
        elif hi <= lo:
            self.diags.error(a.args[2].span, f"lhist MAX ({hi}) must be greater than MIN ({lo})")
        elif (hi - lo) // step > MAX_LHIST_BUCKETS:
            self.diags.error(a.args[3].span, f"lhist({lo}, {hi}, {step}) makes {(hi - lo) // step} buckets; "
                             f"at most {MAX_LHIST_BUCKETS}", "raise STEP or narrow MIN..MAX")

    def deny(self, a: n.Deny) -> None:
        h = self.hook
        if h.provider != "lsm":
            self.diags.error(a.span, f"deny works only on LSM hooks; {h.probe} can observe but not block",
                             _lsm_hint(h))
            return
        if not h.can_deny:
            self.diags.error(a.span, f"{h.probe} returns void in the kernel: it cannot deny",
                             "deny on a hook that returns int, e.g. lsm:socket_connect")
            return
        a.value = C.ERRNOS["EPERM"]
        if a.errno is None:
            return
        r = _ConstEval(self.consts).eval(a.errno)
        if r is None:
            return
        ty, v = r
        if not ty.is_int or not (1 <= v <= 4095):
            self.diags.error(a.errno.span, f"deny takes an errno such as EPERM or EACCES, not {_const_text(a.errno, ty, v)}",
                             "the program returns -ERRNO; give the positive name, e.g. `deny EACCES`")
            return
        a.value = v

    def value_not_constant(self, e: n.Expr, t: Type | None, where: str) -> bool:
        """Strings and addresses are read from the event: a constant one as a key or value is an error."""
        if t is not None and t.kind in ("str", "addr") and self.constant(e) is not None:
            self.diags.error(e.span, f"cannot use the constant {_describe(e, t)} in {where}: every event would "
                             "have the same value", "use a field, e.g. `count by comm` or `emit daddr`")
            return True
        return False

    def scalar(self, e: n.Expr, where: str) -> None:
        self.kstack_key = (e, where)  # kstack: a `by` key or `emit` value, walltime an `emit` value, as themselves
        try:
            t = self.expr(e)
        finally:
            self.kstack_key = None
        if t is None or self.value_not_constant(e, t, "`by`" if where == "by" else "emit"):
            return
        if t.kind in ("struct", "opaque"):
            self.diags.error(e.span, f"cannot use {_describe(e, t)} as {'a key' if where == 'by' else 'a value'}",
                             _struct_hint(t))
        elif t.kind in ("set", "cidr"):
            self.diags.error(e.span, f"cannot {'group by' if where == 'by' else 'emit'} {_describe(e, t)}")
        elif t.kind == "record":
            self.diags.error(e.span, f"{_text(e)} is a record: {'group by' if where == 'by' else 'emit'} one of its "
                             "fields", _record_hint(e))
        elif t.kind == "statemap":
            self.diags.error(e.span, f"'{_text(e)}' is a state map: read one entry", f"e.g. `{_text(e)}[KEY]`")

    # -- expressions --
    def expr(self, e: n.Expr) -> Type | None:
        if self.depth >= MAX_CHECK_DEPTH:
            self.diags.error(e.span, f"expression nested too deeply: more than {MAX_CHECK_DEPTH} levels "
                             "once defs are expanded", "nest less: a def's body is checked where it is used")
            e.ty = None
            return None
        self.depth += 1
        try:
            t = self.chain(e) if isinstance(e, n.Binary) else self._expr(e)
        finally:
            self.depth -= 1
        e.ty = t
        return t

    def chain(self, e: n.Binary) -> Type | None:
        """A binary operator and the chain along its left operands (`a or b or c ...`, `x + y + z ...`):
        walked without recursion, so a chain of 10,000 terms is one level."""
        x, spine = _left_spine(e)
        lt = self.expr(x)
        for b in spine:
            rt = self.expr(b.right)
            lt = self.binary(b, lt, rt)
            b.ty = lt
        return lt

    def remember(self, e: n.Expr, value) -> None:
        self.known[id(e)] = value
        self._hold.append(e)  # known is keyed by id: the node must outlive the check

    def constant(self, e: n.Expr):
        """e's value if it is known at check time (literals, constants and what is computed from them
        only), else None.  Addresses are ipaddress objects, networks ip_network, sets frozensets."""
        if id(e) in self.known:
            return self.known[id(e)]
        if isinstance(e, n.IntLit):
            return e.value
        if isinstance(e, n.DurationLit):
            return e.nanoseconds
        if isinstance(e, n.StrLit):
            return e.value
        if isinstance(e, n.IpLit) and e.network is not None:
            return e.network if e.is_cidr else e.network.network_address
        sym = e.symbol if isinstance(e, n.Name) else e.path if isinstance(e, n.Member) else None
        if isinstance(sym, ConstSymbol):
            return sym.value
        if isinstance(e, n.SetLit):
            values = [self.constant(i) for i in e.items]
            if any(v is None for v in values):  # items such as -1 are folded only with the whole set
                r = _ConstEval(self.consts).eval(e)
                return r[1] if r is not None and isinstance(r[1], frozenset) else None
            return frozenset(values)
        return None

    def _expr(self, e: n.Expr) -> Type | None:
        if isinstance(e, (n.IntLit, n.DurationLit, n.StrLit, n.IpLit, n.SetLit)):
            r = _ConstEval(self.consts).eval(e)
            return r[0] if r else None
        if isinstance(e, n.Name):
            return self.name(e)
        if isinstance(e, n.Member):
            return self.member(e)
        if isinstance(e, n.Unary):
            return self.unary(e)
        if isinstance(e, n.Binary):
            return self.binary(e)
        if isinstance(e, n.Call):
            return self.call(e)
        if isinstance(e, n.Index):
            return self.read_state(e)
        raise AssertionError(f"unhandled node {type(e).__name__}")  # the parser makes no other kind

    def call(self, e: n.Call) -> Type | None:
        """A `def` used here: its body, with the arguments in place of the
        parameters, is checked in this clause (so fields are this hook's)."""
        from hookql.diagnostics import Diagnostic

        qual = _qualified(e.func)
        d = self.consts.defs.get(qual) if qual else None
        if d is None:
            known = list(self.consts.defs)
            self.diags.error(e.func.span, f"unknown predicate '{qual or e.func.span.text}'",
                             _did_you_mean(qual or "", known) or
                             ("define one with `def NAME(PARAMS) = EXPR`" if not known else f"defined: {', '.join(known)}"))
            return None
        if len(e.args) != len(d.params):
            self.diags.error(e.span, f"{qual}() takes {len(d.params)} argument{'s' * (len(d.params) != 1)} "
                             f"({', '.join(d.params) or 'none'}), got {len(e.args)}",
                             f"defined at {d.name_span.source.name}:{d.name_span.line}:{d.name_span.col}")
            return None
        if qual in self.expanding:
            self.diags.error(e.span, f"{qual}() uses itself ({' -> '.join(self.expanding + [qual])})")
            return None
        if len(self.expanding) >= MAX_DEF_DEPTH:
            self.diags.error(e.span, f"defs nested more than {MAX_DEF_DEPTH} deep "
                             f"({' -> '.join(self.expanding[:3] + ['...'] + self.expanding[-2:] + [qual])})",
                             f"at most {MAX_DEF_DEPTH} defs, each used in the next")
            return None
        key = (qual, tuple(_shape(a) for a in e.args))
        shared = self.expansions.get(key)
        if shared is not None:  # the same def with the same arguments: one expansion, checked once
            e.expansion = shared
            t = shared.ty
        else:
            e.expansion = _substitute(d.body, dict(zip(d.params, e.args)))
            self.expansions[key] = e.expansion
            self.diags.context.append(Diagnostic("note", e.span, f"in {qual}(...), used here"))
            self.expanding.append(qual)
            try:
                t = self.expr(e.expansion)
            finally:
                self.expanding.pop()
                self.diags.context.pop()
            self.inlined[id(e.expansion)] = _inlined_size(e.expansion, self.inlined)
        if id(e.expansion) in self.known:
            self.remember(e, self.known[id(e.expansion)])
        if t is None:
            return None
        size = self.inlined.get(id(e.expansion), 0)
        if not self.expanding:  # a use in the clause itself: it puts the whole expansion in
            self.total_inlined += size
        if (size > MAX_INLINED or self.total_inlined > MAX_INLINED) and not self.inline_reported:
            self.inline_reported = True
            what = f"{qual}(...) inlines {size} terms" if size > MAX_INLINED else \
                f"the defs used in this clause inline {self.total_inlined} terms in all"
            self.diags.error(e.span, f"{what}; at most {MAX_INLINED}",
                             "each use of a def inlines its body, so a def that uses another twice doubles it: "
                             "use fewer levels of such defs")
            return None
        return t

    def name(self, e: n.Name) -> Type | None:
        h = self.hook
        f = h.fields.get(e.id) or (h.fields.get(h.aliases[e.id]) if e.id in h.aliases else None)
        if f is not None:
            if e.id in self.consts.decls:
                self.diags.error(e.span, f"'{e.id}' is both a constant and a field of {h.probe}",
                                 "rename the constant")
                return None
            if f.kind != "builtin" and e.id in F.BUILTINS:  # a field hides a builtin: say which this is
                b = F.BUILTINS[e.id]
                self.diags.warning(e.span, f"'{e.id}' is {h.probe}'s field ({f.doc or f.ty}), not the builtin "
                                   f"{e.id} ({b.doc})",
                                   f"write {F.ARGS}.{e.id} for the field, {F.CURRENT}.{e.id} for the builtin; "
                                   "either spelling silences this warning")
            e.symbol = f
            if f.kind == "builtin" and f.name == "probe":
                return probe_type(self.clause, self.hook)
            if f.entry and f.ty.kind == "str" and f.ty.user and h.name in _EXEC_EXITS and id(e) not in self.warned \
                    and not _only_failures(self.clause.where):
                self.warned.add(id(e))
                self.diags.warning(e.span, f"'{e.id}' at {h.probe} is read only when the exec failed (ret < 0): a "
                                   "successful exec has replaced the memory it points to, and it reads as \"\"",
                                   f"read it at tracepoint:{h.name.replace('sys_exit_', 'sys_enter_')}, or add "
                                   "`where ret < 0`")
            if f.kind == "builtin" and f.name in F.CGROUP_VIEWS and not self.cgroup_view_ok(e):
                return None
            return f.ty if f.ty.kind not in ("kstack", "walltime") or self.kstack_ok(e) else None
        sym = self.consts.get(e.id, e.span)
        if sym is not None:
            e.symbol = sym
            return sym.ty
        if e.id in self.consts.decls:
            return None  # its definition's error is already reported
        if e.id == "retval":
            self.diags.error(e.span, f"retval is not available in {h.probe}", _retval_hint(h))
            return None
        if e.id in h.seed_only:
            self.diags.error(e.span, f"{h.probe} has no argument '{e.id}' on kernel {h.kernel.label}: the seed "
                             f"documents `{h.seed_only[e.id]}`, but the real signature is `{h.signature()}`",
                             f"fields: {', '.join(h.field_names())}")
            return None
        if e.id[:1].isupper():
            kc = C.lookup(e.id, self.checker.kernel.btf)
            if kc is not None:
                e.symbol = ConstSymbol(kc.name, kc.ty, kc.value, kc.origin)
                return kc.ty
        st = self.states.get(e.id)
        if st is not None:
            e.symbol = st
            return T.Type("statemap", cname="state map")
        self.unknown_name(e)
        return None

    def explicit_name(self, e: n.Member) -> Type | None:
        """args.NAME (the hook's own field: argument, tracepoint field, network field, retval) or current.NAME
        (a builtin), whichever a bare NAME would mean.  The node becomes the Name it spells, resolved."""
        h, ns = self.hook, e.obj.id
        if ns == F.CURRENT:
            f = F.BUILTINS.get(e.name)
            if f is None:
                self.diags.error(e.name_span, f"no builtin '{e.name}'; the builtins are: {', '.join(F.BUILTINS)}",
                                 _did_you_mean(e.name, list(F.BUILTINS)) or
                                 f"{F.ARGS}.NAME reads {h.probe}'s own fields")
                return None
        else:
            f = h.fields.get(e.name) or (h.fields.get(h.aliases[e.name]) if e.name in h.aliases else None)
            if f is None or f.kind == "builtin":
                own = [k for k, v in h.fields.items() if v.kind != "builtin"]
                if f is None and not h.tp_fields_known:
                    self.unknown_name(n.Name(e.name_span, e.name))
                    return None
                self.diags.error(e.name_span, f"{h.probe} has no field '{e.name}'" +
                                 (f"; its fields are: {', '.join(own)}" if own else "; it has no fields of its own"),
                                 f"{e.name} is a builtin: write {F.CURRENT}.{e.name} or {e.name}"
                                 if f is not None else _did_you_mean(e.name, own + list(h.aliases))
                                 or f"`hookql hooks -v {h.probe}` describes them")
                return None
        e.__class__ = n.Name  # from here on (codegen too) it is the field it names, as a bare name would be
        e.id, e.symbol = e.name, f
        if f.kind == "builtin" and f.name == "probe":
            return probe_type(self.clause, self.hook)
        if f.kind == "builtin" and f.name in F.CGROUP_VIEWS and not self.cgroup_view_ok(e):
            return None
        return f.ty if f.ty.kind not in ("kstack", "walltime") or self.kstack_ok(e) else None

    def cgroup_view_ok(self, e: n.Name) -> bool:
        """container and pod are the cgroup id, printed as the container id or pod uid its cgroup path names
        (runtime/cgroups.py, in user space): a `by` key of an aggregation or an `emit` value, as themselves.
        Anywhere else (a filter: the program cannot know the path) an error."""
        here, where = getattr(self, "kstack_key", None) or (None, None)
        if e is here:
            return True
        name = e.symbol.name
        msg = (f"{name} is found from the cgroup's path, in user space when the results print: it can only be a "
               "`by` key of an aggregation or an `emit` value")
        if getattr(self, "in_where", False):
            self.diags.error(e.span, msg, f"a filter runs in the kernel, which has only the cgroup id: compare that, "
                             "`where cgroup == N` (N: the inode number of the container's cgroup directory, `stat "
                             "-c %i /sys/fs/cgroup/system.slice/docker-ID.scope`), or group by it: "
                             f"`count by {name}`")
        else:
            self.diags.error(e.span, msg, f"write e.g. `count by {name}` or `emit comm, {name}`; it cannot be "
                             "compared, computed with, stored or aggregated")
        return False

    def kstack_ok(self, e: n.Name) -> bool:
        """kstack (the event's kernel stack) is a `by` key of an aggregation or an `emit` value, written as itself,
        on a hook whose programs can take a stack; walltime (wall-clock time, for display) only an `emit` value,
        as itself.  Anywhere else an error."""
        h = self.hook
        here, where = getattr(self, "kstack_key", None) or (None, None)
        if e.symbol.ty.kind == "walltime":
            if e is here and where == "emit":
                return True
            self.diags.error(e.span, "walltime is the wall-clock time of the event, for display: it can only be an "
                             "`emit` value",
                             "write e.g. `emit walltime, comm, pid`; for counts per second run with "
                             "`--every 1s --interval`" if e is here else
                             "write e.g. `emit walltime, comm, pid`; to compare or measure time use ts (monotonic "
                             "nanoseconds), e.g. `ts - start[tid] > 10ms`")
            return False
        if e is not here:
            self.diags.error(e.span, "kstack is a kernel stack: it can only be a `by` key of an aggregation or an "
                             "`emit` value",
                             "write e.g. `count by kstack` (or `count by reason, kstack`) or `emit comm, kstack`; a "
                             "stack cannot be compared, computed with, stored or aggregated")
            return False
        if h.provider not in F.STACK_PROVIDERS:
            self.diags.error(e.span, f"{h.probe} cannot take a kernel stack",
                             f"kstack is available on {', '.join(sorted(F.STACK_PROVIDERS))} probes")
            return False
        return True

    def unknown_name(self, e: n.Name) -> None:
        h = self.hook
        names = h.field_names() + list(h.aliases) + list(self.consts.decls)
        hint = _did_you_mean(e.id, names)
        if e.id[:1].isupper() and not hint:
            self.diags.error(e.span, f"unknown constant '{e.id}'",
                             _did_you_mean(e.id, _const_candidates(e.id, self.checker.kernel.btf))
                             or "define it with `const NAME = VALUE`")
            return
        if not h.tp_fields_known:
            self.diags.error(e.span, f"unknown field '{e.id}': the fields of {h.probe} are read from tracefs, "
                             "which is not available for this kernel",
                             "check on the running kernel with tracefs mounted "
                             "(mount -t tracefs nodev /sys/kernel/tracing)")
            return
        listing = ", ".join(n for n in h.field_names())
        self.diags.error(e.span, f"unknown field '{e.id}' in {h.probe}; its fields are: {listing}",
                         hint or f"`hookql hooks -v {h.probe}` describes them")

    def member(self, e: n.Member) -> Type | None:
        if isinstance(e.obj, n.Index):
            ot = self.expr(e.obj)
            if ot is None:
                return None
            st = e.obj.state
            if ot.kind != "record":
                self.diags.error(e.name_span, f"{_describe(e.obj, ot)} has no fields; '.' reads a field of a "
                                 "record stored as `{a, b}`", _first_store(st))
                return None
            if e.name not in st.fields:
                self.diags.error(e.name_span, f"'{st.name}' holds no field '{e.name}'; its fields are: "
                                 f"{', '.join(st.fields)}", _did_you_mean(e.name, st.fields) or _first_store(st))
                return None
            e.path = ("state", e.name)
            return st.fields[e.name]
        qual = _qualified(e)
        if qual in self.consts.decls:  # lib.WEB_PORTS: a library's constant
            sym = self.consts.get(qual, e.span)
            e.path = sym
            return sym.ty if sym else None
        if isinstance(e.obj, n.Name) and e.obj.id in (F.ARGS, F.CURRENT) and e.obj.id not in self.hook.fields \
                and e.obj.id not in self.consts.decls:
            return self.explicit_name(e)  # args.pid, current.pid
        ot = self.expr(e.obj)
        if ot is None:
            return None
        st = T.struct_of(ot)
        if st is None:
            user = F.user_member_error(self.hook, getattr(e.obj, "symbol", None))  # umyaddr.sa_family
            self.diags.error(e.name_span, user[0] if user else
                             f"{_describe(e.obj, ot)} has no members; '.' reads a field of a struct",
                             user[1] if user else None)
            return None
        path = st.find_member(e.name)
        if path is None and st.name == "sock" and e.name.startswith(("sk_", "skc_")):
            # struct sock's sk_* names are macros for __sk_common.skc_* (include/net/sock.h)
            common = st.find_member("__sk_common")
            inner = common[-1].type.find_member("skc_" + e.name.split("_", 1)[1]) if common else None
            path = common + inner if inner else None
        if path is None:
            members = st.member_names()
            close = difflib.get_close_matches(e.name, members, n=3, cutoff=0.6)
            shown = ", ".join(members[:25]) + (f", ... ({len(members)} in all)" if len(members) > 25 else "")
            self.diags.error(e.name_span, f"struct {st.name} has no member '{e.name}'; its members are: {shown}",
                             f"did you mean {', '.join(close)}?" if close else None)
            return None
        e.path = path
        last = path[-1]
        t = T.from_ctype(last.type)
        if last.bitfield_size:
            t = T.INT(last.bitfield_size, False, cname=f"{last.type.c_decl()}:{last.bitfield_size}")
        return t

    def unary(self, e: n.Unary) -> Type | None:
        t = self.expr(e.operand)
        if t is None:
            return None
        v = self.known.get(id(e.operand))
        if e.op in ("not", "!"):
            if t.kind != "bool":
                self.diags.error(e.operand.span, f"'not' needs a condition, but {_is(e.operand, t)}",
                                 "compare it first, e.g. `not (x == 0)`")
                return None
            if isinstance(v, bool):
                self.remember(e, not v)
            return T.BOOL
        if not t.is_int:
            self.diags.error(e.operand.span, f"'{e.op}' needs an integer, but {_is(e.operand, t)}")
            return None
        v = self.constant(e.operand)
        if isinstance(v, int):
            folded = _fits(e, -v if e.op == "-" else ~v, self.diags)
            if folded is None:
                return None
            self.remember(e, folded)
        return T.INT(64, True) if e.op == "-" else T.INT(t.bits, t.signed)

    def binary(self, e: n.Binary, lt: Type | None, rt: Type | None) -> Type | None:
        """The type of e from its operands' (already checked)."""
        if lt is None or rt is None:
            return None
        op = e.op
        if op in ("and", "or"):
            for side, t in ((e.left, lt), (e.right, rt)):
                if t.kind != "bool":
                    self.diags.error(side.span, f"'{op}' joins conditions, but {_is(side, t)}",
                                     "compare it, e.g. `x != 0`")
                    return None
            a, b = self.known.get(id(e.left)), self.known.get(id(e.right))
            if isinstance(a, bool) and isinstance(b, bool):
                self.remember(e, (a and b) if op == "and" else (a or b))
            return T.BOOL
        if op in ("in", "not in") and rt.kind == "statemap":
            return self.state_test(e, lt)
        if (op in ("==", "!=") or op in _ORDER) and lt.is_int and rt.is_int and not self.units_compare(e, lt, rt):
            return None
        if op in ("in", "not in", "==", "!=") or op in _ORDER and lt.is_int and rt.is_int:
            t = self.membership(e, lt, rt) if op in ("in", "not in") else \
                self.equality(e, lt, rt) if op in ("==", "!=") else self.range_check(e, lt, rt) or T.BOOL
            if t is not None:
                self.fold_comparison(e, lt, rt)
            return t
        if op in _ORDER:
            if lt.is_int and rt.is_int:
                self.range_check(e, lt, rt)
                return T.BOOL
            bad, bt = (e.left, lt) if not lt.is_int else (e.right, rt)
            self.diags.error(e.op_span, f"'{op}' compares integers, but {_is(bad, bt)}",
                             "strings and addresses only compare with == and != (addresses also with `in`)")
            return None
        # arithmetic and bit operators
        if lt.is_int and rt.is_int:
            a, b = self.constant(e.left), self.constant(e.right)
            if isinstance(a, int) and isinstance(b, int):
                v = _fold_checked(e, a, b, self.diags)
                if v is None:
                    return None
                self.remember(e, v)
            elif isinstance(b, int) and (op in ("/", "%") and b == 0 or op in ("<<", ">>") and not 0 <= b < 64):
                _fold_checked(e, 0, b, self.diags)  # reports why
                return None
            return self.units_arith(e, lt, rt)
        bad, bt = (e.left, lt) if not lt.is_int else (e.right, rt)
        self.diags.error(e.op_span, f"'{op}' needs integers, but {_is(bad, bt)}", _int_hint(bt))
        return None

    def state_test(self, e: n.Binary, lt: Type) -> Type | None:
        """`sk in start`: whether the map holds the key (a test; it never stops the clause)."""
        st: StateMap = e.right.symbol
        if st.span is None:
            self.unstored(st.name, e.right.span)
            return None
        st.reads += 1
        if len(st.keys) != 1:
            self.diags.error(e.right.span, f"'{st.name}' takes {len(st.keys)} keys: `in` tests a map of one key",
                             f"read it instead, `{st.name}[A, B]`: a clause that reads a key no clause stored "
                             "does not fire")
            return None
        if not _state_compatible(lt, st.keys[0]):
            self.diags.error(e.left.span, f"'{st.name}' is keyed by {_a(st.keys[0])}, but {_is(e.left, lt)}",
                             _first_store(st))
            return None
        if self.value_not_constant(e.left, lt, "`in`"):
            return None
        return T.BOOL

    def units_compare(self, e: n.Binary, lt: Type, rt: Type) -> bool:
        """Durations compare with durations, timestamps with timestamps; False after reporting why not."""
        lu, ru = _unit(lt), _unit(rt)
        if lu == ru:
            return True
        if lu and ru:
            self.diags.error(e.op_span, f"cannot compare {_describe(e.left, lt)} with {_describe(e.right, rt)}",
                             "a timestamp minus a timestamp is a duration: e.g. `ts - start[sk] > 10ms`")
            return False
        unit, plain, pt = (lu, e.right, rt) if lu else (ru, e.left, lt)
        v = self.constant(plain)
        if isinstance(v, int):
            if unit == "ns" and v != 0:
                self.diags.warning(plain.span, f"{_text(plain)} is a plain number compared with a duration: it "
                                   "is read as nanoseconds", f"write the unit, e.g. `{v}ns` or `10ms`")
            return True
        self.diags.error(e.op_span, f"cannot compare {_describe(e.left, lt)} with {_describe(e.right, rt)}",
                         f"{_text(plain)} is a plain {pt}, not a {unit == 'ns' and 'duration' or 'timestamp'}: "
                         "compare durations with durations (`10ms`, `ts - start[k]`) and timestamps with "
                         "timestamps (`ts`)")
        return False

    def units_arith(self, e: n.Binary, lt: Type, rt: Type) -> Type | None:
        """What arithmetic does to time: ts - ts is a duration, ts ± duration a timestamp, a duration
        times or divided by a number a duration; a plain integer field added to either is an error."""
        op, lu, ru = e.op, _unit(lt), _unit(rt)
        plain = T.INT(64, lt.signed or rt.signed)
        if not lu and not ru:
            return plain
        if op in ("+", "-"):
            if lu == ru == "ts":
                if op == "-":
                    return T.DURATION
                self.diags.error(e.op_span, "two timestamps cannot be added", "subtract them: `ts - start[k]`")
                return None
            if lu == ru == "ns":
                return T.DURATION
            if lu == "ts" and ru == "ns" or op == "+" and lu == "ns" and ru == "ts":
                return T.TIMESTAMP
            if lu and ru:
                self.diags.error(e.op_span, f"cannot subtract {_describe(e.right, rt)} from a duration",
                                 "subtract timestamps from timestamps: `ts - start[k]`")
                return None
            unit_t, other, ot = (lt, e.right, rt) if lu else (rt, e.left, lt)
            if self.constant(other) is not None:
                return T.DURATION if _unit(unit_t) == "ns" else T.TIMESTAMP
            self.diags.error(e.op_span, f"'{op}' mixes {_describe(e.left, lt)} and {_describe(e.right, rt)}",
                             f"{_text(other)} is a plain integer: add durations (`10ms`) to durations and timestamps")
            return None
        if op == "*" and {lu, ru} == {"ns", None} or op == "/" and lu == "ns" and not ru:
            return T.DURATION
        return plain

    def equality(self, e: n.Binary, lt: Type, rt: Type) -> Type | None:
        if lt.is_int and rt.is_int or lt.kind == rt.kind == "bool":
            self.range_check(e, lt, rt)
            return T.BOOL
        if lt.kind == rt.kind == "str":
            self.string_length_check(e, lt, rt)
            return T.BOOL
        if lt.kind == rt.kind == "addr":
            # IPv4 is stored v4-mapped (::ffff:a.b.c.d): an IPv4 value equals its mapped IPv6 form
            for side, t, other in ((e.left, lt, rt), (e.right, rt, lt)):
                v = self.constant(side)
                if t.version == 6 and other.version == 4 and v is not None and v not in _MAPPED:
                    self.diags.warning(e.op_span, f"an {other} is never equal to {_text(side)}, an IPv6 address "
                                       "outside ::ffff:0:0/96", "IPv4 addresses compare as ::ffff:a.b.c.d")
            return T.BOOL
        if lt.kind == "ptr" and (rt.kind == "ptr" or _is_zero(e.right)) or rt.kind == "ptr" and _is_zero(e.left):
            return T.BOOL
        if "cidr" in (lt.kind, rt.kind) and "addr" in (lt.kind, rt.kind):
            self.diags.error(e.op_span, f"'{e.op}' compares single addresses; a network needs `in`",
                             f"write `{e.left.span.text} {'in' if e.op == '==' else 'not in'} {e.right.span.text}`")
            return None
        self.diags.error(e.op_span, f"cannot compare {_describe(e.left, lt)} with {_describe(e.right, rt)}",
                         _compare_hint(lt, rt))
        return None

    def membership(self, e: n.Binary, lt: Type, rt: Type) -> Type | None:
        ok = False
        if rt.kind in ("cidr", "set", "addr") and self.constant(e.right) is None:
            self.diags.error(e.right.span, f"`{e.op}` needs a constant on its right, but {_text(e.right)} is read "
                             "from the event", "compare two fields with ==, e.g. `saddr == daddr`")
            return None
        if rt.kind == "cidr":
            ok = lt.kind == "addr"
            net = self.constant(e.right)
            if ok and lt.version == 4 and rt.version == 6 and not net.overlaps(_MAPPED):
                self.diags.warning(e.op_span, f"an {lt} is never in {_text(e.right)}, an IPv6 network outside "
                                   "::ffff:0:0/96", "IPv4 addresses compare as ::ffff:a.b.c.d")
        elif rt.kind == "set":
            el = rt.elem
            ok = (lt.is_int and el.is_int) or (lt.kind == el.kind == "str") or (lt.kind == "addr" and el.kind == "cidr")
            if ok and lt.kind == "str" and lt.size:
                long = sorted(v for v in self.constant(e.right) if len(utf8(v)) >= lt.size)
                if long:
                    self.diags.warning(e.right.span, f"{_text(e.left)} holds at most {lt.size - 1} bytes; "
                                       f"{', '.join(repr(v) for v in long[:3])}{' ...' if len(long) > 3 else ''} "
                                       "never match", _truncation_hint(e.left))
        elif rt.kind == "addr":
            ok = lt.kind == "addr"
        else:
            self.diags.error(e.right.span, f"`{e.op}` needs a network or a set on its right, but {_is(e.right, rt)}", "e.g. `daddr in 10.0.0.0/8` or `dport in {80, 443}`")
            return None
        if not ok:
            self.diags.error(e.op_span, f"{_describe(e.left, lt)} cannot be in {_describe(e.right, rt)}")
            return None
        return T.BOOL

    def range_check(self, e: n.Binary, lt: Type, rt: Type) -> None:
        """Warn when a constant cannot fit the (narrower than 64-bit) field it is compared with."""
        for field_t, lit, other in ((lt, e.right, e.left), (rt, e.left, e.right)):
            value = self.constant(lit)
            if not isinstance(value, int) or self.constant(other) is not None or field_t.kind != "int" \
                    or field_t.bits >= 64 or field_t.signed and value > (1 << 63) - 1:
                continue
            lo = -(1 << (field_t.bits - 1)) if field_t.signed else 0
            hi = (1 << (field_t.bits - (1 if field_t.signed else 0))) - 1
            if not lo <= value <= hi:
                self.diags.warning(lit.span, f"{value} is out of range for {_text(other)}, a {field_t.bits}-bit "
                                   f"{'signed' if field_t.signed else 'unsigned'} value ({lo}..{hi}): this comparison is constant")

    def string_length_check(self, e: n.Binary, lt: Type, rt: Type) -> None:
        """Warn when a string constant is longer (in UTF-8 bytes) than the field it is compared with holds."""
        for field_t, lit, other in ((lt, e.right, e.left), (rt, e.left, e.right)):
            value = self.constant(lit)
            if isinstance(value, str) and field_t.size and len(utf8(value)) >= field_t.size \
                    and self.constant(other) is None:
                self.diags.warning(lit.span, f"{_text(other)} holds at most {field_t.size - 1} bytes; "
                                   f"{_text(lit)} ({len(utf8(value))} bytes) never matches", _truncation_hint(other))

    def fold_comparison(self, e: n.Binary, lt: Type, rt: Type) -> None:
        """A comparison of two constants is decided here: a warning says which way, and the program
        gets the answer (1 == 1 or 1 == 0) instead of two values it cannot compare at run time."""
        a, b = self.constant(e.left), self.constant(e.right)
        if a is None or b is None:
            return
        result = _compare(e.op, a, b)
        self.remember(e, result)
        self.warned.add(id(e))
        whole = " the clause always fires" if result else " the clause never fires"
        self.diags.warning(e.op_span, f"{_text(e)} compares two constants: it is always {str(result).lower()}"
                           + (f";{whole}" if e is self.clause.where else ""),
                           "compare a field with a constant, e.g. `comm == \"curl\"`")
        if lt.is_int and rt.is_int:
            return  # the program compares integers as the checker does
        self._hold += [e.left, e.right]
        e.op, e.left, e.right = "==", n.IntLit(e.left.span, 1), n.IntLit(e.right.span, int(result))
        e.left.ty = e.right.ty = T.LITERAL_INT


# -- helpers -------------------------------------------------------------------
def _only_failures(where: n.Expr | None) -> bool:
    """Does the filter require `ret < 0` (`ret < 0`, `ret <= -1`, `ret == -2`...) in its top-level `and`s?"""
    stack = [where] if where is not None else []
    while stack:
        e = stack.pop()
        if isinstance(e, n.Binary) and e.op == "and":
            stack += [e.left, e.right]
        elif isinstance(e, n.Binary) and isinstance(e.left, n.Name) and e.left.id == "ret":
            v = e.right.value if isinstance(e.right, n.IntLit) else \
                -e.right.operand.value if isinstance(e.right, n.Unary) and e.right.op == "-" and \
                isinstance(e.right.operand, n.IntLit) else None
            if v is not None and (e.op == "<" and v <= 0 or e.op in ("<=", "==") and v < 0):
                return True
    return False


def probe_type(clause: n.Clause, hook=None) -> Type:
    """The `probe` builtin: the name of the hook that fired (`kprobe:tcp_v4_connect`), a string as long as
    the longest name in the clause's probe list: one constant per program, never read from the kernel.
    hook: the clause's, where clause.hook is not set yet (a state store's quiet check)."""
    texts = clause.group.texts if clause.group else [(hook or clause.hook).probe]
    return T.string(max(len(utf8(t)) for t in texts) + 1)


def _unify_group(clauses: list[n.Clause], diags: Diagnostics) -> None:
    """The copies of a probe list share each aggregation's map and each emit's record: a key, value or
    emitted field must have one type on every probe (integers widen, strings take the longest size), and a
    name means the same on every probe: a hook's own field on all, or the builtin on all."""
    said = set()
    for c in clauses[1:]:
        for e0, ei in zip(_clause_names(clauses[0]), _clause_names(c)):
            builtin = [getattr(x.symbol, "kind", None) == "builtin" for x in (e0, ei)]
            if builtin[0] != builtin[1] and id(e0) not in said:
                said.add(id(e0))
                field_on, builtin_on = (c, clauses[0]) if builtin[0] else (clauses[0], c)
                diags.error(e0.span, f"'{e0.id}' is {field_on.hook.probe}'s own field but the builtin {e0.id} on "
                            f"{builtin_on.hook.probe}: in a probe list a name means one thing on every probe",
                            f"write {F.ARGS}.{e0.id} (where every probe has that field) or {F.CURRENT}.{e0.id} "
                            "(the builtin)")
    for j, first in enumerate(clauses[0].actions):
        if isinstance(first, n.Aggregate):
            cols = zip(*[[*c.actions[j].by, *c.actions[j].args[:1]] for c in clauses])
        elif isinstance(first, n.Emit):
            cols = zip(*[c.actions[j].values for c in clauses])
        else:
            continue
        for col in cols:
            tys = [e.ty for e in col]
            if any(t is None for t in tys):
                continue  # reported already
            u = _unified(tys)
            if u is None:
                i = next(i for i in range(1, len(tys)) if _unified(tys[:i + 1]) is None)
                j = 0 if _unified([tys[0], tys[i]]) is None else next(  # else a signed one before it, with a u64
                    (j for j in range(i) if _unified([tys[j], tys[i]]) is None or tys[j].signed != tys[i].signed), 0)
                if j:
                    diags.error(col[0].span, f"'{_text(col[0])}' is {_a(tys[j])} on {clauses[j].hook.probe} but "
                                f"{_a(tys[i])} on {clauses[i].hook.probe}: no integer type holds every value of "
                                "both, and in a probe list each key, value and emitted field has one type on "
                                "every probe", "split the clause, one per probe, or use a field both probes type alike")
                    continue
                diags.error(col[0].span, f"'{_text(col[0])}' is {_a(tys[0])} on {clauses[0].hook.probe} but "
                            f"{_a(tys[i])} on {clauses[i].hook.probe}: in a probe list, each key, value and "
                            "emitted field has one type on every probe",
                            "split the clause, one per probe, or use a field both probes type alike")
                continue
            for e in col:
                e.ty = u


def _clause_names(c: n.Clause):
    """Every name a clause reads (defs expanded), in one order for every copy of it."""
    roots = [c.where] if c.where is not None else []
    for a in c.actions:
        if isinstance(a, n.Aggregate):
            roots += [*a.args, *a.by]
        elif isinstance(a, n.Emit):
            roots += a.values
        elif isinstance(a, n.Store):
            roots += [a.target, *([a.value] if a.value is not None else []), *(v for _, v in a.fields)]
        elif isinstance(a, n.Delete):
            roots.append(a.target)
    stack = list(reversed(roots))
    while stack:
        e = stack.pop()
        if isinstance(e, n.Name):
            yield e
        expansion = getattr(e, "expansion", None)
        stack += reversed(_children(e) + ([expansion] if expansion is not None else []))


def _unified(tys: list[Type]) -> Type | None:
    t0 = tys[0]
    if all(t == t0 for t in tys):
        return t0  # as it is (a __be16 stays one)
    if any(t.kind != t0.kind for t in tys):
        return None
    if t0.kind == "int":
        if len({t.display for t in tys}) > 1 and any(t.display in (T.NS, T.TS, T.HEX) for t in tys):
            return None  # a duration, a timestamp or a pointer value is not another probe's plain integer
        display = t0.display if len({t.display for t in tys}) == 1 else None
        bits, signed = max(t.bits for t in tys), any(t.signed for t in tys)
        if signed:  # one that holds every value of each: u32 and s32 make s64; u64 and a signed one, none
            need = max([t.bits for t in tys if t.signed] + [t.bits + 1 for t in tys if not t.signed])
            bits = next((b for b in (8, 16, 32, 64) if b >= need), 0)
            if not bits:
                return None
        return T.INT(bits, signed, display, t0.cname if len({t.cname for t in tys}) == 1 else "")
    if t0.kind == "str":
        return T.string(max(t.size for t in tys))
    if t0.kind == "addr":
        return T.addr() if len({t.version for t in tys}) > 1 else t0
    if t0.kind == "ptr" and len({t.cname for t in tys}) > 1:
        return Type("ptr", cname="pointer")
    return t0


def _unit(t: Type) -> str | None:
    """'ns' for a duration, 'ts' for a timestamp, None for any other value."""
    return t.display if t.kind == "int" and t.display in (T.NS, T.TS) else None


def _state_compatible(t: Type, want: Type) -> bool:
    """A value stored or looked up under a state map's type: integers (and pointers, and booleans) of
    the same unit, strings, addresses."""
    num = ("int", "bool", "ptr")
    if t.kind in num and want.kind in num:
        return (_unit(t) if t.kind == "int" else None) == (_unit(want) if want.kind == "int" else None)
    return t.kind == want.kind and t.kind in ("str", "addr")


def _state_bytes(t: Type) -> int:
    return t.size if t.kind == "str" else 16 if t.kind == "addr" else 8


def _widest(have: Type, t: Type) -> Type:
    """The map's type once t is stored or looked up too: a string as long as the longest."""
    if have.kind == t.kind == "str" and t.size > have.size:
        return T.string(t.size)
    return have


def _field_name(e: n.Expr) -> str | None:
    """The name a record field takes from what is stored: comm -> comm, sk.sk_rcvbuf -> sk_rcvbuf."""
    if isinstance(e, n.Name):
        return e.id
    if isinstance(e, n.Member):
        return e.name
    return None


def _first_store(st: StateMap | None) -> str | None:
    if st is None or st.span is None:
        return None
    return f"'{st.name}' is {st.describe()}, from its first store at line {st.span.line}, column {st.span.col}"


def _a(t: Type) -> str:
    s = str(t)
    return f"{'an' if s[:1] in 'aeiouAEIOU' else 'a'} {s}"


def _record_hint(e: n.Expr) -> str | None:
    st = getattr(_unwrap_index(e), "state", None)
    if st is None or not st.fields:
        return None
    return f"e.g. `{_text(e)}.{next(iter(st.fields))}`; its fields are: {', '.join(st.fields)}"


def _unwrap_index(e: n.Expr):
    while isinstance(e, n.Call) and e.expansion is not None:
        e = e.expansion
    return e


def _truncation_hint(e: n.Expr) -> str | None:
    if isinstance(e, n.Name) and e.id == "comm":
        return "the kernel truncates comm to 15 bytes (UTF-8: fewer characters when they are not ASCII)"
    return None


def _mapped(v):
    """An address or network as the program holds it: IPv4 as ::ffff:a.b.c.d."""
    if isinstance(v, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(int(_MAPPED.network_address) | int(v))
    if isinstance(v, ipaddress.IPv4Network):
        return ipaddress.IPv6Network((int(_MAPPED.network_address) | int(v.network_address), 96 + v.prefixlen))
    return v


def _compare(op: str, a, b) -> bool:
    """a op b for two constants, as the program would decide it."""
    if op in ("in", "not in"):
        if isinstance(b, frozenset):
            a = _mapped(a)
            hit = any(a in _mapped(x) if isinstance(x, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                      else _mapped(x) == a for x in b)
        elif isinstance(b, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            hit = _mapped(a) in _mapped(b)
        else:
            hit = _mapped(a) == _mapped(b)
        return hit if op == "in" else not hit
    if isinstance(a, int) and isinstance(b, int):
        if a > (1 << 63) - 1 or b > (1 << 63) - 1:  # C compares an unsigned 64-bit operand as unsigned
            a, b = a % (1 << 64), b % (1 << 64)
    else:
        a, b = _mapped(a), _mapped(b)
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _shape(e: n.Expr) -> tuple:
    """The structure of an expression (kinds, operators, names, values), without positions, as a key."""
    out: list = []
    todo = [e]
    while todo:
        x = todo.pop()
        if isinstance(x, n.Binary):
            out.append(("b", x.op))
            todo += [x.right, x.left]
        elif isinstance(x, n.Unary):
            out.append(("u", x.op))
            todo.append(x.operand)
        elif isinstance(x, n.Member):
            out.append(("m", x.name))
            todo.append(x.obj)
        elif isinstance(x, n.Call):
            out.append(("c", len(x.args)))
            todo += [*reversed(x.args), x.func]
        elif isinstance(x, n.SetLit):
            out.append(("s", len(x.items)))
            todo += reversed(x.items)
        elif isinstance(x, n.Name):
            out.append(("n", x.id))
        elif isinstance(x, n.IpLit):
            out.append(("ip", x.text))
        elif isinstance(x, n.DurationLit):
            out.append(("d", x.nanoseconds))
        elif isinstance(x, n.Index):
            out.append(("i", x.name, len(x.keys)))
            todo += reversed(x.keys)
        else:
            out.append((type(x).__name__, getattr(x, "value", None)))
    return tuple(out)


def _children(e: n.Expr) -> list[n.Expr]:
    if isinstance(e, n.Binary):
        return [e.left, e.right]
    if isinstance(e, n.Unary):
        return [e.operand]
    if isinstance(e, n.Member):
        return [e.obj]
    if isinstance(e, n.SetLit):
        return list(e.items)
    if isinstance(e, n.Call):
        return [e.func, *e.args]
    if isinstance(e, n.Index):
        return list(e.keys)
    return []


def _inlined_size(e: n.Expr, inlined: dict[int, int]) -> int:
    """Terms e puts into the program once every def in it is inlined (inner expansions already known)."""
    size = 0
    todo = [e]
    while todo:
        x = todo.pop()
        size += 1
        if isinstance(x, n.Call) and x.expansion is not None:
            size += inlined.get(id(x.expansion), 0)
        else:
            todo += _children(x)
    return size


def _qualified(e: n.Expr) -> str | None:
    """`lib.mod.name` for a chain of names joined by '.', else None."""
    if isinstance(e, n.Name):
        return e.id
    if isinstance(e, n.Member):
        base = _qualified(e.obj)
        return f"{base}.{e.name}" if base else None
    return None


def _rebuild(e: n.Expr, leaf) -> n.Expr:
    """A fresh copy of an expression tree; `leaf` maps each Name (and call
    target) to its replacement.  Fresh nodes, because checking annotates them
    and one `def` is expanded in many clauses.  Literals are shared: they are
    never annotated differently per use.  Bottom-up without recursion (a body
    can be a chain of 10,000 terms)."""
    todo: list[tuple[n.Expr, bool]] = [(e, False)]
    done: list[n.Expr] = []
    while todo:
        x, ready = todo.pop()
        kids = _children(x)
        if isinstance(x, n.Name):
            done.append(leaf(x))
        elif not kids and not isinstance(x, (n.SetLit, n.Call, n.Index)):
            done.append(x)
        elif not ready:
            todo.append((x, True))
            todo += [(k, False) for k in reversed(kids)]
        else:
            new = done[len(done) - len(kids):]
            del done[len(done) - len(kids):]
            if isinstance(x, n.Binary):
                done.append(n.Binary(x.span, x.op, new[0], new[1], x.op_span))
            elif isinstance(x, n.Unary):
                done.append(n.Unary(x.span, x.op, new[0]))
            elif isinstance(x, n.Member):
                done.append(n.Member(x.span, new[0], x.name, x.name_span))
            elif isinstance(x, n.SetLit):
                done.append(n.SetLit(x.span, new))
            elif isinstance(x, n.Index):
                done.append(n.Index(x.span, x.name, x.name_span, new))
            else:
                done.append(n.Call(x.span, new[0], new[1:]))
    return done[0]


def _substitute(body: n.Expr, args: dict[str, n.Expr]) -> n.Expr:
    return _rebuild(body, lambda name: args.get(name.id) or n.Name(name.span, name.id))


def _qualify_action(a: n.Action, ns: str, local: set[str]) -> n.Action:
    q = lambda e: _qualify(e, ns, local)
    if isinstance(a, n.Aggregate):
        return n.Aggregate(a.span, a.func, a.func_span, [q(x) for x in a.args], [q(x) for x in a.by])
    if isinstance(a, n.Emit):
        return n.Emit(a.span, [q(x) for x in a.values])
    if isinstance(a, n.Store):
        return n.Store(a.span, q(a.target), q(a.value))
    if isinstance(a, n.Delete):
        return n.Delete(a.span, q(a.target))
    return n.Deny(a.span, q(a.errno) if a.errno is not None else None)


def _qualify(body: n.Expr, ns: str, local: set[str]) -> n.Expr:
    """A module's names for its own constants and defs, as the using script sees them."""
    return _rebuild(body, lambda name: n.Name(name.span, f"{ns}.{name.id}" if name.id in local else name.id))


def _builtin_field_names() -> set[str]:
    from hookql.fields import BUILTINS

    return set(BUILTINS) | {"retval"}


def _describe(e: n.Expr, t: Type) -> str:
    """`comm (string)`, `5 (integer)`: an expression as error messages show it."""
    return f"{_text(e)} ({t})"


def _is(e: n.Expr, t: Type) -> str:
    """`comm is a string`: for messages that go on with 'but ...'."""
    s = str(t)
    return f"{_text(e)} is {'an' if s[:1] in 'aeiouAEIOU' else 'a'} {s}"


def _text(e: n.Expr) -> str:
    text = e.span.text if e.span.line == e.span.end_line else "this expression"
    return text if len(text) <= 40 else text[:37] + "..."


def _did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    close.sort(key=lambda c: sorted(c) != sorted(name))  # the same letters (pdi: pid, not pod) first
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None


def _const_candidates(name: str, btf) -> list[str]:
    prefix = name.split("_", 1)[0] + "_" if "_" in name else name[:2]
    return C.names_like(prefix, btf)


def _int_hint(t: Type) -> str | None:
    if t.kind == "str":
        return "strings cannot be summed or bucketed; count them instead: `count by comm`"
    if t.kind == "addr":
        return "addresses cannot be summed; group by them instead: `count by daddr`"
    if t.kind in ("ptr", "struct"):
        return _struct_hint(t)
    return None


def _struct_hint(t: Type) -> str:
    st = T.struct_of(t)
    if st is None:
        return "pick an integer, string or address field"
    members = st.member_names()[:6]
    return f"pick a member with '.', e.g. {', '.join('.' + m for m in members)}"


def _compare_hint(lt: Type, rt: Type) -> str | None:
    kinds = {lt.kind, rt.kind}
    if kinds == {"str", "int"}:
        return 'strings compare with strings: write the value in double quotes, e.g. comm == "curl"'
    if kinds == {"addr", "int"}:
        return "write the address as an address literal, e.g. daddr == 10.0.0.1 or daddr == ::1"
    if kinds == {"addr", "str"}:
        return "addresses are written without quotes, e.g. daddr == 10.0.0.1"
    return None


def _is_zero(e: n.Expr) -> bool:
    return isinstance(e, n.IntLit) and e.value == 0


def _const_text(e: n.Expr, ty: Type, v) -> str:
    return f"{e.span.text} ({ty}, = {v})" if ty.is_int else f"{e.span.text} ({ty})"


def _retval_hint(h: Hook) -> str:
    if h.provider == "kprobe":
        return f"retval is read when the function returns: use kretprobe:{h.name}"
    if h.provider == "tracepoint":
        return "tracepoints have no return value; sys_exit_* tracepoints carry the syscall's result as `ret`"
    return f"{h.probe} returns void"


def _lsm_hint(h: Hook) -> str:
    name = h.name.split(":")[-1]
    for cand in (name, name.removeprefix("tcp_v4_").removeprefix("tcp_v6_"), f"socket_{name.split('_')[-1]}"):
        try:
            hook = Catalog.load().resolve("lsm", [cand], h.kernel)
        except ProbeError:
            continue
        return f"to block, use the LSM hook: on {hook.probe} ... {{ deny }} (and run with --enforce)"
    return "to block, use an LSM hook (`hookql hooks lsm:` lists them) and run with --enforce"
