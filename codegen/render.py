"""Rendering: IR -> BPF C source, through the Jinja templates beside this file."""
from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import jinja2

from hookql import __version__
from hookql.btf import Btf
from hookql.cache.templates import VerifiedBytecodeCache
from hookql.codegen.escape import FILTERS as C_FILTERS
from hookql.codegen.ir import DEFAULT_MAP_ENTRIES, Local, Program, StrEqVar
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
    return _env().get_template("program.bpf.c.j2").render(
        prog=prog, types=types, version=__version__, source=source_name,
        map_entries=DEFAULT_MAP_ENTRIES, ringbuf_size=RINGBUF_SIZE,
    )


def _walk(prog: Program):
    def rec(e):
        yield e
        for attr in ("left", "right", "operand"):
            sub = getattr(e, attr, None)
            if sub is not None and not isinstance(sub, Local):
                yield from rec(sub)
        for sub in getattr(e, "items", ()):
            yield from rec(sub)
    for p in prog.probes:
        if p.where is not None:
            yield from rec(p.where)
