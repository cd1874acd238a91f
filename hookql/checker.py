"""Type checking: resolve every probe against the catalog and the kernel's
BTF, every name to a field or constant, and give every expression a type.

All errors are collected (one bad clause does not stop the others) and a
failed sub-expression types as None so it is reported once, not cascaded.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hookql import constants as C
from hookql import nodes as n
from hookql import types as T
from hookql.catalog import Catalog, Hook, ProbeError
from hookql.diagnostics import Diagnostics
from hookql.fields import Field
from hookql.kernel import Kernel
from hookql.lexer import AGGREGATIONS
from hookql.source import Source, Span
from hookql.types import Type

_ARITH = {"+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"}
_ORDER = {"<", "<=", ">", ">="}
_ONE_VALUE = {"sum", "avg", "min", "max", "hist"}
MAX_LHIST_BUCKETS = 1000


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
        d = start
        while True:
            if os.path.isfile(os.path.join(d, "hookql.toml")):
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


@dataclass
class CheckedScript:
    script: n.Script
    kernel: Kernel
    consts: dict[str, ConstSymbol] = field(default_factory=dict)

    @property
    def clauses(self) -> list[n.Clause]:
        return [c for c in self.script.clauses if c.hook is not None]


class Checker:
    def __init__(self, kernel: Kernel, catalog: Catalog | None = None, resolver: Resolver | None = None):
        self.kernel = kernel
        self.catalog = catalog or Catalog.load()
        if resolver is None:
            from hookql.libs.modules import ManifestResolver  # libraries build on the checker

            resolver = ManifestResolver()
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
        for clause in script.clauses:
            _ClauseChecker(self, clause, consts, diags).run()
        return out


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
                clauses.append(n.Clause(item.span, item.probe, where, [_qualify_action(a, ns, local)
                                                                       for a in item.actions]))
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
        if isinstance(e, n.IntLit):
            return T.LITERAL_INT, e.value
        if isinstance(e, n.DurationLit):
            return T.INT(64, False, T.NS, "duration"), e.nanoseconds
        if isinstance(e, n.StrLit):
            return T.string(len(e.value.encode()) + 1), e.value
        if isinstance(e, n.IpLit):
            return _ip_lit(e, self.diags)
        if isinstance(e, n.SetLit):
            items = [self.eval(i) for i in e.items]
            if any(i is None for i in items):
                return None
            elem = _set_elem_type(e, items, self.diags)
            return (T.set_of(elem), frozenset(v for _, v in items)) if elem else None
        if isinstance(e, n.Name):
            sym = self.consts.get(e.id, e.span)
            if sym is None and e.id not in self.consts.decls:
                kc = C.lookup(e.id, self.consts.checker.kernel.btf)
                if kc is not None:
                    return kc.ty, kc.value
                self.diags.error(e.span, f"unknown constant '{e.id}'",
                                 _did_you_mean(e.id, list(self.consts.decls)) or
                                 "a constant's value must be known before anything loads: literals, "
                                 "other constants and kernel constants (AF_INET, IPPROTO_TCP...)")
                return None
            return (sym.ty, sym.value) if sym else None
        qual = _qualified(e)
        if isinstance(e, n.Member) and qual in self.consts.decls:
            sym = self.consts.get(qual, e.span)
            return (sym.ty, sym.value) if sym else None
        if isinstance(e, n.Unary) and e.op in ("-", "~"):
            v = self.eval(e.operand)
            if v is None:
                return None
            if not v[0].is_int:
                self.diags.error(e.span, f"'{e.op}' needs an integer, not {v[0]}")
                return None
            return T.LITERAL_INT, (-v[1] if e.op == "-" else ~v[1])
        if isinstance(e, n.Binary) and e.op in _ARITH:
            l, r = self.eval(e.left), self.eval(e.right)
            if l is None or r is None:
                return None
            if not (l[0].is_int and r[0].is_int):
                self.diags.error(e.op_span, f"'{e.op}' needs integers, not {l[0]} and {r[0]}")
                return None
            if e.op in ("/", "%") and r[1] == 0:
                self.diags.error(e.right.span, "division by zero")
                return None
            return T.LITERAL_INT, _fold(e.op, l[1], r[1])
        self.diags.error(e.span, "a constant must be a value known before anything loads",
                         "use literals, other constants and + - * / % & | ^ << >> on them")
        return None


def _fold(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": int(a / b) if b else 0, "%": a % b if b else 0,
            "&": a & b, "|": a | b, "^": a ^ b, "<<": a << min(b, 64), ">>": a >> min(b, 64)}[op]


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
    def __init__(self, checker: Checker, clause: n.Clause, consts: _Consts, diags: Diagnostics):
        self.checker = checker
        self.clause = clause
        self.consts = consts
        self.diags = diags
        self.hook: Hook | None = None
        self.expanding: list[str] = []

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
            t = self.expr(c.where)
            if t is not None and t.kind != "bool":
                self.diags.error(c.where.span, f"a filter must be true or false, but {_is(c.where, t)}",
                                 "compare it, e.g. `... != 0`")
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

    def scalar(self, e: n.Expr, where: str) -> None:
        t = self.expr(e)
        if t is None:
            return
        if t.kind in ("struct", "opaque"):
            self.diags.error(e.span, f"cannot use {_describe(e, t)} as {'a key' if where == 'by' else 'a value'}",
                             _struct_hint(t))
        elif t.kind in ("set", "cidr"):
            self.diags.error(e.span, f"cannot {'group by' if where == 'by' else 'emit'} {_describe(e, t)}")

    # -- expressions --
    def expr(self, e: n.Expr) -> Type | None:
        t = self._expr(e)
        e.ty = t
        return t

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
        e.expansion = _substitute(d.body, dict(zip(d.params, e.args)))
        self.diags.context.append(Diagnostic("note", e.span, f"in {qual}(...), used here"))
        self.expanding.append(qual)
        try:
            return self.expr(e.expansion)
        finally:
            self.expanding.pop()
            self.diags.context.pop()

    def name(self, e: n.Name) -> Type | None:
        h = self.hook
        f = h.fields.get(e.id) or (h.fields.get(h.aliases[e.id]) if e.id in h.aliases else None)
        if f is not None:
            if e.id in self.consts.decls:
                self.diags.error(e.span, f"'{e.id}' is both a constant and a field of {h.probe}",
                                 "rename the constant")
                return None
            e.symbol = f
            return f.ty
        sym = self.consts.get(e.id, e.span)
        if sym is not None:
            e.symbol = sym
            return sym.ty
        if e.id in self.consts.decls:
            return None  # its definition's error is already reported
        if e.id == "retval":
            self.diags.error(e.span, f"retval is not available in {h.probe}", _retval_hint(h))
            return None
        if e.id in h.entry_args:
            self.diags.error(e.span, f"arguments are not available in {h.probe}: '{e.id}' is read at entry "
                             f"({h.entry_args[e.id]})", f"use kprobe:{h.name} to read arguments; a kretprobe sees retval")
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
        self.unknown_name(e)
        return None

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
        qual = _qualified(e)
        if qual in self.consts.decls:  # lib.WEB_PORTS: a library's constant
            sym = self.consts.get(qual, e.span)
            e.path = sym
            return sym.ty if sym else None
        ot = self.expr(e.obj)
        if ot is None:
            return None
        st = T.struct_of(ot)
        if st is None:
            self.diags.error(e.name_span, f"{_describe(e.obj, ot)} has no members; '.' reads a field of a struct",
                             None)
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
        if e.op in ("not", "!"):
            if t.kind != "bool":
                self.diags.error(e.operand.span, f"'not' needs a condition, but {_is(e.operand, t)}",
                                 "compare it first, e.g. `not (x == 0)`")
                return None
            return T.BOOL
        if not t.is_int:
            self.diags.error(e.operand.span, f"'{e.op}' needs an integer, but {_is(e.operand, t)}")
            return None
        return T.INT(64, True) if e.op == "-" else T.INT(t.bits, t.signed)

    def binary(self, e: n.Binary) -> Type | None:
        lt, rt = self.expr(e.left), self.expr(e.right)
        if lt is None or rt is None:
            return None
        op = e.op
        if op in ("and", "or"):
            for side, t in ((e.left, lt), (e.right, rt)):
                if t.kind != "bool":
                    self.diags.error(side.span, f"'{op}' joins conditions, but {_is(side, t)}",
                                     "compare it, e.g. `x != 0`")
                    return None
            return T.BOOL
        if op in ("in", "not in"):
            return self.membership(e, lt, rt)
        if op in ("==", "!="):
            return self.equality(e, lt, rt)
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
            if op in ("/", "%") and isinstance(e.right, n.IntLit) and e.right.value == 0:
                self.diags.error(e.right.span, "division by zero")
                return None
            return T.INT(64, lt.signed or rt.signed)
        bad, bt = (e.left, lt) if not lt.is_int else (e.right, rt)
        self.diags.error(e.op_span, f"'{op}' needs integers, but {_is(bad, bt)}", _int_hint(bt))
        return None

    def equality(self, e: n.Binary, lt: Type, rt: Type) -> Type | None:
        if lt.is_int and rt.is_int or lt.kind == rt.kind == "bool":
            self.range_check(e, lt, rt)
            return T.BOOL
        if lt.kind == rt.kind == "str":
            self.string_length_check(e, lt, rt)
            return T.BOOL
        if lt.kind == rt.kind == "addr":
            if lt.version and rt.version and lt.version != rt.version:
                self.diags.warning(e.op_span, f"an {lt} is never equal to an {rt}")
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
        if rt.kind == "cidr":
            ok = lt.kind == "addr"
            if ok and lt.version and rt.version and lt.version != rt.version:
                self.diags.warning(e.op_span, f"an {lt} is never in an {rt}")
        elif rt.kind == "set":
            el = rt.elem
            ok = (lt.is_int and el.is_int) or (lt.kind == el.kind == "str") or (lt.kind == "addr" and el.kind == "cidr")
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
        """Warn when a literal cannot fit the field it is compared with."""
        for field_t, lit in ((lt, e.right), (rt, e.left)):
            if isinstance(lit, n.IntLit) and field_t is not T.LITERAL_INT and field_t.kind == "int":
                lo = -(1 << (field_t.bits - 1)) if field_t.signed else 0
                hi = (1 << (field_t.bits - (1 if field_t.signed else 0))) - 1
                if not lo <= lit.value <= hi:
                    other = e.left if lit is e.right else e.right
                    self.diags.warning(lit.span, f"{lit.value} is out of range for {_text(other)}, a {field_t.bits}-bit "
                                       f"{'signed' if field_t.signed else 'unsigned'} value ({lo}..{hi}): this comparison is constant")

    def string_length_check(self, e: n.Binary, lt: Type, rt: Type) -> None:
        for field_t, lit in ((lt, e.right), (rt, e.left)):
            if isinstance(lit, n.StrLit) and field_t.size and len(lit.value.encode()) >= field_t.size \
                    and not isinstance(e.left if lit is e.right else e.right, n.StrLit):
                other = e.left if lit is e.right else e.right
                self.diags.warning(lit.span, f"{other.span.text} holds at most {field_t.size - 1} bytes; "
                                   f"\"{lit.value}\" never matches", "the kernel truncates comm to 15 characters")


# -- helpers -------------------------------------------------------------------
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
    and one `def` is expanded in many clauses."""
    rec = lambda x: _rebuild(x, leaf)
    if isinstance(e, n.Name):
        return leaf(e)
    if isinstance(e, n.Binary):
        return n.Binary(e.span, e.op, rec(e.left), rec(e.right), e.op_span)
    if isinstance(e, n.Unary):
        return n.Unary(e.span, e.op, rec(e.operand))
    if isinstance(e, n.Member):
        return n.Member(e.span, rec(e.obj), e.name, e.name_span)
    if isinstance(e, n.SetLit):
        return n.SetLit(e.span, [rec(i) for i in e.items])
    if isinstance(e, n.Call):
        return n.Call(e.span, rec(e.func), [rec(a) for a in e.args])
    return e  # literals are never annotated differently per use


def _substitute(body: n.Expr, args: dict[str, n.Expr]) -> n.Expr:
    return _rebuild(body, lambda name: args.get(name.id) or n.Name(name.span, name.id))


def _qualify_action(a: n.Action, ns: str, local: set[str]) -> n.Action:
    q = lambda e: _qualify(e, ns, local)
    if isinstance(a, n.Aggregate):
        return n.Aggregate(a.span, a.func, a.func_span, [q(x) for x in a.args], [q(x) for x in a.by])
    if isinstance(a, n.Emit):
        return n.Emit(a.span, [q(x) for x in a.values])
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
