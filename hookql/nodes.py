"""The syntax tree: what the parser builds and the checker annotates.

Each node carries its Span.  Expression nodes get a `ty` (hookql.types) and,
for names, the `symbol` they resolved to, once checked; codegen reads those.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from hookql.source import Span


@dataclass(eq=False)
class Node:
    span: Span


# -- expressions --------------------------------------------------------------
@dataclass(eq=False)
class Expr(Node):
    ty: Any = field(default=None, init=False, repr=False)


@dataclass(eq=False)
class IntLit(Expr):
    value: int


@dataclass(eq=False)
class DurationLit(Expr):
    nanoseconds: int
    text: str


@dataclass(eq=False)
class StrLit(Expr):
    value: str


@dataclass(eq=False)
class IpLit(Expr):
    """An address or a CIDR network; network is None if the text is not valid."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    is_cidr: bool
    text: str

    @property
    def version(self) -> int:
        return self.network.version


@dataclass(eq=False)
class SetLit(Expr):
    items: list[Expr]


@dataclass(eq=False)
class Name(Expr):
    id: str
    symbol: Any = field(default=None, init=False, repr=False)


@dataclass(eq=False)
class Member(Expr):
    obj: Expr
    name: str
    name_span: Span
    path: Any = field(default=None, init=False, repr=False)  # BTF members walked, set by the checker


@dataclass(eq=False)
class Unary(Expr):
    op: str  # '-', '~', 'not'
    operand: Expr


@dataclass(eq=False)
class Binary(Expr):
    op: str  # arithmetic/bit ops, comparisons, 'and', 'or', 'in', 'not in'
    left: Expr
    right: Expr
    op_span: Span


@dataclass(eq=False)
class Call(Expr):
    """f(a, b) or lib.f(a): a use of a `def`; the checker sets `expansion`."""

    func: Expr
    args: list[Expr]
    expansion: Any = field(default=None, init=False, repr=False)


@dataclass(eq=False)
class Index(Expr):
    """start[skaddr] (or m[a, b]): a read of a state map; the checker sets `state`."""

    name: str
    name_span: Span
    keys: list[Expr]
    state: Any = field(default=None, init=False, repr=False)  # checker.StateMap


# -- actions ------------------------------------------------------------------
@dataclass(eq=False)
class Action(Node):
    pass


@dataclass(eq=False)
class Aggregate(Action):
    func: str  # count, sum, avg, min, max, hist, lhist
    func_span: Span
    args: list[Expr]
    by: list[Expr]
    alias: str | None = field(default=None, init=False)  # `as NAME`: its exported name (hookql serve)
    alias_span: Span | None = field(default=None, init=False)


@dataclass(eq=False)
class Emit(Action):
    values: list[Expr]


@dataclass(eq=False)
class Deny(Action):
    errno: Expr | None
    value: int = field(default=0, init=False)  # the errno, once checked


@dataclass(eq=False)
class Store(Action):
    """start[skaddr] = ts, or who[sk] = {comm, pid} (a record: `fields` names its values)."""

    target: Index
    value: Expr | None  # one value, or None for a record
    fields: list[tuple[str, Expr]] = field(default_factory=list)


@dataclass(eq=False)
class Delete(Action):
    target: Index


# -- items --------------------------------------------------------------------
@dataclass(eq=False)
class Probe(Node):
    provider: str
    target: list[str]

    @property
    def text(self) -> str:
        return ":".join([self.provider, *self.target])


@dataclass(eq=False)
class Clause(Node):
    probe: Probe
    where: Expr | None
    actions: list[Action]
    hook: Any = field(default=None, init=False, repr=False)  # catalog.Hook, set by the checker
    # `on A, B { ... }`: every probe of the list, `probe` its first.  The checker makes one clause per probe
    # (a copy of this one, `group` set), checked against its own hook; their aggregations and emits share maps.
    probes: list[Probe] = field(default_factory=list)
    group: Any = field(default=None, init=False, repr=False)  # ProbeGroup, set by the checker


@dataclass(eq=False)
class ProbeGroup:
    """The clauses one probe list became: `texts` the hooks' names, in the list's order."""

    texts: list[str]
    written: str = ""  # the list as the script wrote it (wildcards unexpanded), for headers
    first: "Clause | None" = None  # the copy whose aggregations and emits own the maps


@dataclass(eq=False)
class Const(Node):
    name: str
    name_span: Span
    value: Expr


@dataclass(eq=False)
class Def(Node):
    name: str
    name_span: Span
    params: list[str]
    body: Expr


@dataclass(eq=False)
class Use(Node):
    """`use lib.mod` (path is None) or `use "file.hq"` (path set)."""

    name: str | None
    path: str | None
    include: bool = False  # `include`: also take the module's clauses


@dataclass(eq=False)
class Script(Node):
    items: list[Node]

    @property
    def clauses(self) -> list[Clause]:
        return [i for i in self.items if isinstance(i, Clause)]

    @property
    def consts(self) -> list[Const]:
        return [i for i in self.items if isinstance(i, Const)]

    @property
    def defs(self) -> list[Def]:
        return [i for i in self.items if isinstance(i, Def)]

    @property
    def uses(self) -> list[Use]:
        return [i for i in self.items if isinstance(i, Use)]
