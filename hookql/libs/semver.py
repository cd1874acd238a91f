"""Versions (MAJOR.MINOR.PATCH) and ranges, as Cargo and npm spell them:
`^1.2` (>=1.2.0 <2.0.0), `~1.2` (>=1.2.0 <1.3.0), `>=1.0, <2`, `=1.2.3`,
`1.2.3` (same as ^1.2.3), `*`."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from hookql.libs.errors import show

_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


class SemverError(ValueError):
    pass


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int = 0
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = _VERSION.match(text.strip())
        if not m:
            raise SemverError(f"'{show(text)}' is not a version (MAJOR.MINOR.PATCH)")
        return cls(int(m[1]), int(m[2] or 0), int(m[3] or 0))

    def __lt__(self, other: "Version") -> bool:
        return (self.major, self.minor, self.patch) < (other.major, other.minor, other.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class Range:
    text: str
    bounds: tuple[tuple[str, Version], ...]  # (op, version), all must hold

    @classmethod
    def parse(cls, text: str) -> "Range":
        bounds: list[tuple[str, Version]] = []
        for part in (p.strip() for p in text.split(",")):
            if part in ("*", ""):
                continue
            m = re.fullmatch(r"(\^|~|>=|<=|>|<|=)?\s*(\S+)", part)
            if not m:
                raise SemverError(f"'{show(part)}' is not a version requirement (e.g. ^1.2, ~1.2, >=1.0, <2)")
            op, ver = m[1] or "^", m[2]
            v = Version.parse(ver)
            given = len(ver.lstrip("v").split("."))
            if op == "^":
                upper = (Version(v.major + 1) if v.major else Version(0, v.minor + 1) if given > 1 or v.minor
                         else Version(1))
                bounds += [(">=", v), ("<", upper)]
            elif op == "~":
                bounds += [(">=", v), ("<", Version(v.major, v.minor + 1) if given > 1 else Version(v.major + 1))]
            else:
                bounds.append((op, v))
        return cls(text, tuple(bounds))

    def allows(self, v: Version) -> bool:
        ops = {">=": v.__ge__, "<=": v.__le__, ">": v.__gt__, "<": v.__lt__, "=": v.__eq__}
        return all(ops[op](b) for op, b in self.bounds)

    def __str__(self) -> str:
        return self.text
