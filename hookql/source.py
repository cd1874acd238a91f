"""Source text and spans: every node and diagnostic points back here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def utf8(s: str) -> bytes:
    """Text as the bytes a program compares and copies: UTF-8, with a name's or argument's undecodable bytes
    (surrogateescape) back as they were, and any other lone surrogate (a `\\ud800` escape) as itself."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Source:
    """A script's text and the name errors print for it (a path, `<stdin>`, `<repl>`)."""

    name: str
    text: str
    _lines: list[str] = field(default_factory=list, compare=False, repr=False)
    real: str | None = field(default=None, compare=False, repr=False)  # the real path of the file read, if one

    def __deepcopy__(self, memo) -> "Source":
        return self  # immutable: a copied clause (a probe list's) points at the same text

    @classmethod
    def from_path(cls, path: str | Path) -> "Source":
        return cls(str(path), Path(path).read_text(encoding="utf-8"))

    def line(self, lineno: int) -> str:
        if not self._lines:  # lines end at \n only, as the lexer counts them (not at \f, \x85, U+2028...)
            self._lines.extend(l[:-1] if l.endswith("\r") else l for l in self.text.split("\n"))
        if 1 <= lineno <= len(self._lines):
            return self._lines[lineno - 1]
        return ""


@dataclass(frozen=True)
class Span:
    """1-based line/column of the first character, and of the end (exclusive)."""

    source: Source
    line: int
    col: int
    end_line: int
    end_col: int

    def __deepcopy__(self, memo) -> "Span":
        return self

    def __repr__(self) -> str:
        return f"Span({self.source.name}:{self.line}:{self.col}-{self.end_line}:{self.end_col})"

    def to(self, other: "Span") -> "Span":
        """The span from the start of self to the end of other."""
        return Span(self.source, self.line, self.col, other.end_line, other.end_col)

    @property
    def text(self) -> str:
        if self.line == self.end_line:
            return self.source.line(self.line)[self.col - 1: self.end_col - 1]
        return self.source.line(self.line)[self.col - 1:]

    @classmethod
    def of_token(cls, source: Source, tok) -> "Span":
        return cls(source, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))
