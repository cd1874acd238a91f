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
