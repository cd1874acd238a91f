r"""Diagnostics: `file:line:col: error: ...`, the source line, a caret, a hint.

A script, a library file or its name can hold control characters; none
reaches the terminal raw.  The file name, message, hint and echoed source
line escape them as text output does (runtime/escape.py: \x1b, \n, ...),
backslashes left as they are, and the carets shift with the escapes so they
stay under the text they point at."""
from __future__ import annotations

from dataclasses import dataclass, field

from hookql.runtime.escape import escape_char, escape_text
from hookql.source import Span


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning" | "note"
    span: Span | None
    message: str
    hint: str | None = None
    notes: tuple["Diagnostic", ...] = field(default=())

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def where(self) -> str:
        s = self.span
        return f"{_esc(s.source.name)}:{s.line}:{s.col}" if s else "hookql"

    def render(self, color: bool = False) -> str:
        head = f"{self.where}: {_paint(self.severity + ':', self.severity, color)} {_esc(self.message)}"
        out = [head]
        if self.span:
            out += _excerpt(self.span, color, self.severity)
        if self.hint:
            out.append(f"  {_paint('hint:', 'hint', color)} {_esc(self.hint)}")
        for n in self.notes:
            out.append(n.render(color))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


def _esc(text: str) -> str:
    return escape_text(text, backslash=False)


def _excerpt(span: Span, color: bool, severity: str) -> list[str]:
    text = span.source.line(span.line).expandtabs(1)
    if not text.strip():
        return []
    start = max(span.col - 1, 0)
    end = span.end_col - 1 if span.end_line == span.line else len(text)
    # Each character as it prints (a control character as its escape), and
    # where each column lands once printed: the carets follow the escapes.
    shown = [escape_char(ch, backslash=False) for ch in text]
    at = [0]
    for piece in shown:
        at.append(at[-1] + len(piece))
    col = lambda c: at[c] if c < len(at) else at[-1] + c - len(text)
    width = max(col(end) - col(start), 1)
    gutter = f"{span.line:>4} | "
    return [f"{gutter}{''.join(shown)}",
            " " * (len(gutter) - 2) + "| " + " " * col(start) + _paint("^" + "~" * (width - 1), severity, color)]


_COLORS = {"error": "1;31", "warning": "1;35", "note": "1;36", "hint": "1;32"}


def _paint(text: str, kind: str, color: bool) -> str:
    return f"\x1b[{_COLORS[kind]}m{text}\x1b[0m" if color and kind in _COLORS else text


class Diagnostics(list):
    """The diagnostics of one run, in the order found.  `context` holds notes
    (e.g. "in private(...) used here") added to everything reported meanwhile."""

    def __init__(self, *args):
        super().__init__(*args)
        self.context: list[Diagnostic] = []

    def error(self, span: Span | None, message: str, hint: str | None = None, notes=()) -> Diagnostic:
        d = Diagnostic("error", span, message, hint, tuple(notes) + tuple(reversed(self.context)))
        self.append(d)
        return d

    def warning(self, span: Span | None, message: str, hint: str | None = None) -> Diagnostic:
        d = Diagnostic("warning", span, message, hint, tuple(reversed(self.context)))
        self.append(d)
        return d

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self if d.is_error]

    def sorted(self) -> list[Diagnostic]:
        """In source order, each once (an argument used twice in a `def` is checked twice)."""
        unique = list({d.render(): d for d in self}.values())
        return sorted(unique, key=lambda d: (d.span.source.name, d.span.line, d.span.col) if d.span else ("", 0, 0))


class HookQLError(Exception):
    """Raised by API entry points that cannot go on; carries the diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))
