"""The front end in one call: source -> parse -> check, diagnostics collected."""
from __future__ import annotations

from dataclasses import dataclass

from hookql.checker import Checker, CheckedScript, Resolver
from hookql.diagnostics import Diagnostics
from hookql.kernel import Kernel
from hookql.parser import parse
from hookql.source import Source


@dataclass
class FrontEndResult:
    checked: CheckedScript | None
    diagnostics: Diagnostics

    @property
    def ok(self) -> bool:
        return not self.diagnostics.errors


def check_source(source: Source, kernel: Kernel, resolver: Resolver | None = None) -> FrontEndResult:
    """Parse and type-check; never raises on bad input."""
    diags = Diagnostics()
    script = parse(source, diags)
    checked = Checker(kernel, resolver=resolver).check(script, diags)
    return FrontEndResult(checked, diags)


@dataclass
class Compiled:
    c_source: str
    layout: dict
    object: bytes  # the BPF object (ELF), verified
    object_name: str  # its entry in the cache (obj/NAME)
    object_path: str | None  # where that entry is (with its hash header), None when the cache is off or it was a hit
    cached: bool


def generate_c(checked: CheckedScript, func_mode: str = "kprobe", serve: bool = False) -> tuple[str, dict]:
    """Checked script -> (BPF C, the runtime's decoding layout); serve: for `hookql serve` (codegen/ir.py)."""
    from hookql.codegen.ir import lower
    from hookql.codegen.render import render

    prog = lower(checked, func_mode, serve)
    sig_params = {i: [p.type for p in c.hook.sig.params] if c.hook.sig else []
                  for i, c in enumerate(checked.clauses)}
    c_source = render(prog, checked.kernel.btf, sig_params, checked.script.span.source.name)
    return c_source, prog.layout()


def compile_checked(checked: CheckedScript, func_mode: str = "kprobe", out=None, serve: bool = False,
                    early=None) -> Compiled:
    """early: a clang already started for this object (codegen/build.py EarlyClang)."""
    from hookql.codegen.build import build

    c_source, layout = generate_c(checked, func_mode, serve)
    built = build(c_source, out, early)
    return Compiled(c_source, layout, built.object, built.name, built.path, built.cached)
