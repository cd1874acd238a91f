"""Rendering: IR -> BPF C source, through the Jinja templates beside this file."""
from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import jinja2

from hookql import __version__
from hookql.btf import Btf
from hookql.cache.templates import VerifiedBytecodeCache
from hookql.codegen.escape import FILTERS as C_FILTERS, c_char_literal, c_ident
from hookql.codegen.ir import DEFAULT_MAP_ENTRIES, Chain, Expr, Local, Program, StrEqVar
from hookql.codegen.kernel_types import KernelTypes

RINGBUF_SIZE = 8 << 20  # 8 MiB absorbs bursts; --ringbuf-size changes it at load

# What each typed-field helper reads from the kernel (declared from BTF).
_HELPER_TYPES = {
    "sock": [("sock", ("__sk_common", "sk_protocol")),
             ("sock_common", ("skc_family", "skc_num", "skc_dport", "skc_state", "skc_rcv_saddr", "skc_daddr",
                              "skc_v6_rcv_saddr", "skc_v6_daddr"))],
    "sockaddr": [("sockaddr", ("sa_family",)), ("sockaddr_in", ("sin_port", "sin_addr")),
                 ("sockaddr_in6", ("sin6_port", "sin6_addr"))],
    "pkt": [("sk_buff", ("head", "network_header", "transport_header"))],
}
# bpf_tracing.h reads kprobe arguments and return values from these registers (x86-64).
_PT_REGS = ("di", "si", "dx", "cx", "r8", "ax", "sp", "ip")


@cache
def _env() -> jinja2.Environment:
    # Compiling the templates costs ~0.3 s; the bytecode cache makes it ~10 ms.
    # Verified entries in the user's own cache, never Jinja's pickled files (hookql/cache/templates.py).
    bcc = VerifiedBytecodeCache(f"{__version__}-py{sys.hexversion:x}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        bytecode_cache=bcc,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False,
    )
    # every piece of outside text passes through these on its way into the C (codegen/escape.py)
    env.filters.update(C_FILTERS)
    return env


def kernel_types(prog: Program, btf: Btf, sig_params) -> KernelTypes:
    """The minimal kernel declarations this program needs."""
    kt = KernelTypes(btf)
    for helper in sorted(prog.helpers):
        for struct, members in _HELPER_TYPES.get(helper, ()):
            kt.require(struct, *members)
    for p in prog.probes:
        if p.attach in ("kprobe", "kretprobe"):
            kt.require("pt_regs", *_PT_REGS)
        for ct in sig_params.get(p.index, ()):
            kt.add_param(ct)
        for l in p.pre + p.post:
            if l.how == "sk_of":
                kt.require("socket", "sk")
            for container, member in l.args.get("pairs", ()):
                kt.add(container, member)
    return kt


def render(prog: Program, btf: Btf, sig_params: dict, source_name: str) -> str:
    if any(isinstance(x, StrEqVar) for x in _walk(prog)):
        prog.helpers.add("streq")
    types = kernel_types(prog, btf, sig_params)
    return _pin_lines(_env().get_template("program.bpf.c.j2").render(
        prog=prog, types=types, version=__version__, source=source_name,
        map_entries=DEFAULT_MAP_ENTRIES, ringbuf_size=RINGBUF_SIZE, cx=CExprs(),
    ))


def _pin_lines(c: str) -> str:
    """After `#line N "t.hq"`, C counts on (N+1, N+2...) into lines the script
    does not have; restating the directive before each C line keeps every
    instruction of an action at the action's line, which the verifier's log
    shows (`; count by comm @ t.hq:3`)."""
    out = []
    current = None
    for line in c.split("\n"):
        if line.startswith("#line "):
            current = line
            continue
        if current is not None and line.strip():
            out.append(current)
        out.append(line)
    return "\n".join(out)


def _walk(prog: Program):
    """Every expression node of the program, without recursion."""
    stack = []
    for p in prog.probes:
        if p.where is not None:
            stack.append(p.where)
        for a in p.actions:
            if getattr(a, "value", None) is not None:
                stack.append(a.value)
            for s in [*(getattr(a, "keys", None) or getattr(a, "slots", None) or ()), *getattr(a, "values", ())]:
                if s.expr is not None:
                    stack.append(s.expr)
        for l in p.pre + p.post:  # state lookups' keys
            for s in l.args.get("keys", ()):
                if s.expr is not None:
                    stack.append(s.expr)
    while stack:
        e = stack.pop()
        yield e
        for attr in ("left", "right", "operand"):
            sub = getattr(e, attr, None)
            if sub is not None and not isinstance(sub, Local):
                stack.append(sub)
        stack.extend(getattr(e, "items", ()))


# -- expressions: spelled in Python, with an explicit stack --------------------------------------
MAX_DEPTH = 48  # parentheses a C expression may nest before a part is bound to a temporary (clang: 256)
MAX_CHAIN = 64  # terms of one && / || before the rest continues in the next temporary
_U64 = (1 << 64) - 1


class Spelled:
    """An expression's C: statements to run first (temporaries), then the value."""

    def __init__(self, pre: list[str], text: str):
        self.pre = pre
        self.text = text

    def lines(self, indent: str = "") -> str:
        return "".join(f"{indent}{line}\n" for line in self.pre)

    def __str__(self) -> str:
        return self.text


def c_lit(v: int) -> str:
    """A 64-bit C literal of v (wrapped to 64 bits as the BPF side computes)."""
    v &= _U64
    if v > (1 << 63) - 1:
        if v == 1 << 63:
            return "(-9223372036854775807LL - 1)"
        return f"({v - (1 << 64)}LL)"
    return f"{v}LL"


class CExprs:
    """Spells IR expressions as C. Called from the templates as cx(e); the
    temporaries it introduces are numbered across the whole program.

    Types follow C: every value is a 64-bit __s64 or __u64. HookQL's own rules
    are spelled out where C's differ or are undefined: / and % truncate toward
    zero on signed values, x / 0 == 0 and x % 0 == x (as BPF defines them), a
    shift by 64 or more (or a negative amount) gives 0 (-1 for a negative value
    shifted right), and a signed value compared with a narrower unsigned one
    compares as signed.
    """

    def __init__(self):
        self.n = 0

    def __call__(self, e: Expr) -> Spelled:
        pre: list[str] = []
        text, _, _ = self._spell(e, pre)
        return Spelled(pre, text)

    def temp(self, pre: list[str], text: str, signed: bool) -> str:
        self.n += 1
        name = f"hq_t{self.n}"
        pre.append(f"{'__s64' if signed else '__u64'} {name} = {text};")
        return name

    def _spell(self, root: Expr, pre: list[str]):
        """(text, depth, signed) of root; post-order over an explicit stack."""
        done: dict[int, tuple[str, int, bool]] = {}
        stack = [(root, False)]
        while stack:
            e, ready = stack.pop()
            if id(e) in done:  # a part used twice (x in {1, 2, 3}) is spelled once
                continue
            kids = _kids(e)
            if kids and not ready:
                stack.append((e, True))
                stack.extend((k, False) for k in reversed(kids))
                continue
            for k in kids:
                text, depth, signed = done[id(k)]
                if depth > MAX_DEPTH:  # too deep for clang: bound to a temporary, once
                    done[id(k)] = (self.temp(pre, text, signed), 0, signed)
            done[id(e)] = self.node(e, [done[id(k)] for k in kids], pre)
        return done[id(root)]

    def node(self, e: Expr, parts, pre: list[str]) -> tuple[str, int, bool]:
        k = e.kind
        if k == "lit":
            return c_lit(e.value), 1, True
        if k == "ref":
            return _val(e.local), 1, e.local.ty.kind != "ptr" and bool(e.local.ty.signed)
        if k == "un":
            (x, d, sg), = parts
            return f"({e.op}{x})", d + 1, sg if e.op != "!" else True
        if k == "bin":
            return self.binary(e, parts)
        if k in ("chain", "anyof"):
            op = e.op if k == "chain" else "||"
            if not parts:
                return ("1" if op == "&&" else "0"), 0, True
            depth = max(d for _, d, _ in parts) + 1
            texts = [t for t, _, _ in parts]
            while len(texts) > MAX_CHAIN:  # long chains: short-circuited in steps of MAX_CHAIN
                head = self.temp(pre, "(" + f" {op} ".join(texts[:MAX_CHAIN]) + ")", True)
                texts = [head] + texts[MAX_CHAIN:]
            return "(" + f" {op} ".join(texts) + ")", depth, True
        if k == "streq":
            if len(e.data) > e.local.ty.size:
                return f"0 /* longer than {e.local.name} can hold */", 0, True
            ref = e.local.ref
            # one test of all the bytes, not a branch per byte: the verifier walks every path of a chain of them
            diff = " | ".join(f"({ref}[{i}] ^ {c_char_literal(b)})" for i, b in enumerate(e.data))
            return f"(({diff}) == 0)", 3, True
        if k == "streqvar":
            return f"hq_streq({e.left.ref}, {e.right.ref}, {int(e.size)})", 1, True
        if k == "addrmatch":
            terms = []
            for i, (w, m) in enumerate(zip(e.words, e.masks)):
                if not m:
                    continue
                lhs = f"{e.local.ref}.w[{i}]" if m == 0xFFFFFFFF else f"({e.local.ref}.w[{i}] & bpf_htonl({int(m)}U))"
                terms.append(f"{lhs} == bpf_htonl({int(w)}U)")
            return "(" + (" && ".join(terms) or "1") + ")", 2, True
        if k == "addreqvar":
            return "(" + " && ".join(f"{e.left.ref}.w[{i}] == {e.right.ref}.w[{i}]" for i in range(4)) + ")", 1, True
        raise AssertionError(k)

    def binary(self, e, parts) -> tuple[str, int, bool]:
        (l, dl, sl), (r, dr, sr) = parts
        d = max(dl, dr)
        op = e.op
        lit = e.right.value & _U64 if e.right.kind == "lit" else None
        if op in ("/", "%"):
            if e.signed:
                fn = "hq_sdiv" if op == "/" else "hq_smod"
                return f"{fn}((__s64)({l}), (__s64)({r}))", d + 3, True
            if lit:  # a nonzero constant: C's own unsigned / and %
                return f"((__u64)({l}) {op} {lit}ULL)", d + 2, False
            fn = "hq_udiv" if op == "/" else "hq_umod"
            return f"{fn}((__u64)({l}), (__u64)({r}))", d + 3, False
        if op in ("<<", ">>"):
            if lit is not None and lit < 64:
                return f"({l} {op} {lit})", d + 1, sl
            fn = "hq_shl" if op == "<<" else ("hq_sar" if sl else "hq_shr")
            cast = "(__s64)" if sl else ""
            return f"{cast}{fn}((__u64)({l}), (__u64)({r}))", d + 3, sl
        if op in ("==", "!=", "<", "<=", ">", ">="):
            if e.signed:
                return f"((__s64)({l}) {op} (__s64)({r}))", d + 2, True
            return f"({l} {op} {r})", d + 1, True
        if op in ("&&", "||"):
            return f"({l} {op} {r})", d + 1, True
        return f"({l} {op} {r})", d + 1, sl and sr


def _kids(e: Expr) -> list[Expr]:
    k = e.kind
    if k == "bin":
        return [e.left, e.right]
    if k == "un":
        return [e.operand]
    if k in ("chain", "anyof"):
        return list(e.items)
    return []


def _val(l: Local) -> str:
    """The scalar value of a local, as a 64-bit integer."""
    if l.how == "param":
        return f"(({'__s64' if l.ty.signed else '__u64'}){c_ident(l.args['param'])})"
    return l.name
