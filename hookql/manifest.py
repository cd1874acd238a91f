"""hookql.toml: a package's name, version, requirements and dependencies."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hookql.semver import Range, SemverError, Version

MANIFEST = "hookql.toml"


class ManifestError(Exception):
    pass


@dataclass
class Dependency:
    name: str
    git: str | None = None
    version: Range | None = None
    path: str | None = None


@dataclass
class Manifest:
    path: Path
    name: str
    version: Version | None
    hookql: Range | None
    kernel: Version | None
    dependencies: dict[str, Dependency] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent


def find(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        if (d / MANIFEST).is_file():
            return d / MANIFEST
    return None


def load(path: Path) -> Manifest:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    pkg = data.get("package", {})
    try:
        m = Manifest(path, pkg.get("name", path.parent.name),
                     Version.parse(pkg["version"]) if "version" in pkg else None,
                     Range.parse(pkg["hookql"]) if "hookql" in pkg else None,
                     Version.parse(pkg["kernel"]) if "kernel" in pkg else None)
        for name, spec in data.get("dependencies", {}).items():
            if not isinstance(spec, dict) or not ("git" in spec or "path" in spec):
                raise ManifestError(f"{path}: dependency '{name}' needs {{ git = \"URL\", version = \"RANGE\" }} "
                                    f"or {{ path = \"DIR\" }}")
            m.dependencies[name] = Dependency(name, spec.get("git"),
                                              Range.parse(spec.get("version", "*")) if "git" in spec else None,
                                              spec.get("path"))
    except SemverError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return m
