"""Minimal CO-RE declarations of the kernel types a script touches.

Instead of a 130k-line vmlinux.h, each struct is declared with only the
members the program reads, typed from the kernel's BTF and marked
preserve_access_index: libbpf relocates every access to the running
kernel's real layout at load time.  Compiling such a file takes ~0.1 s.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hookql.btf import Btf, CType, Member

# Types whose whole value is read (addresses): declared at their real size.
_WHOLE = {"in6_addr": "__u8 hq_bytes[16];", "in_addr": "__u32 s_addr;"}


@dataclass
class Decl:
    kind: str  # struct | union
    name: str
    members: dict[str, str] = field(default_factory=dict)  # name -> C declaration
    embeds: set[str] = field(default_factory=set)  # types it holds by value (declared first)

    @property
    def body(self) -> list[str]:
        if self.name in _WHOLE:
            return [_WHOLE[self.name]]
        return list(self.members.values())


class KernelTypes:
    def __init__(self, btf: Btf):
        self.btf = btf
        self.decls: dict[str, Decl] = {}
        self.forward: set[tuple[str, str]] = set()
        self._anon = 0
        self._anon_names: dict[int, str] = {}

    def require(self, struct: str, *members: str) -> None:
        """Declare struct.member for each member, as the kernel types it."""
        st = self.btf.struct(struct) or self.btf.find(struct, "union")
        if st is None:
            raise KeyError(f"struct {struct} is not in this kernel's BTF")
        for name in members:
            path = st.find_member(name)
            if path is None:
                raise KeyError(f"struct {struct} has no member {name} in this kernel's BTF")
            self.add(st, path[-1])

    def add(self, container: CType, member: Member) -> None:
        d = self.decl(container)
        d.members[member.name] = self.spell(member.type, member.name, d)

    def add_param(self, ctype: CType) -> None:
        t = ctype.strip()
        if t.kind == "ptr":
            tgt = t.target.strip()
            if tgt.kind in ("struct", "union") and tgt.name:
                self.forward.add((tgt.kind, tgt.name))

    def decl(self, t: CType) -> Decl:
        name = self.type_name(t)
        if name not in self.decls:
            self.decls[name] = Decl("union" if t.kind == "union" else "struct", name)
        return self.decls[name]

    def type_name(self, t: CType) -> str:
        if t.name:
            return t.name
        if t.id not in self._anon_names:
            self._anon_names[t.id] = f"hq_anon{len(self._anon_names)}"
        return self._anon_names[t.id]

    def spell(self, ct: CType, var: str, owner: Decl) -> str:
        t = ct.strip()
        if t.kind in ("int", "enum", "enum64"):
            size = t.size if t.size in (1, 2, 4, 8) else 8
            return f"{'__s' if t.signed else '__u'}{size * 8} {var};"
        if t.kind == "ptr":
            tgt = t.target.strip()
            if tgt.kind in ("struct", "union"):
                self.forward.add((tgt.kind if tgt.name else "struct", self.type_name(tgt)))
                if not tgt.name:
                    self.decl(tgt)
                return f"{'union' if tgt.kind == 'union' else 'struct'} {self.type_name(tgt)} *{var};"
            if tgt.kind == "int" and tgt.size == 1:
                return f"char *{var};"
            return f"void *{var};"
        if t.kind == "array":
            el = t.target.strip()
            if el.kind == "int" and el.size == 1:
                return f"char {var}[{t.nelems}];"
            return f"__u8 {var}[{t.size}];"
        if t.kind in ("struct", "union"):
            d = self.decl(t)
            owner.embeds.add(d.name)
            return f"{d.kind} {d.name} {var};"
        return f"__u64 {var};"

    def ordered(self) -> list[Decl]:
        """Declarations with every by-value member's type before its user."""
        done: list[Decl] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            d = self.decls[name]
            for dep in sorted(d.embeds):
                visit(dep)
            done.append(d)
        for name in sorted(self.decls):
            visit(name)
        return done

    def forwards(self) -> list[str]:
        return sorted(f"{k} {n};" for k, n in self.forward if n not in self.decls)
