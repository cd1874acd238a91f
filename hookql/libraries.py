"""Script libraries: `use NAME` / `use NAME.mod` resolved through hookql.toml.

A library is a folder with hookql.toml at its root; lib.hq is its root
module, mod.hq (or a/b.hq for `use NAME.a.b`) its others.  A script's
hookql.toml (found upward from the script) names its dependencies:

    [dependencies]
    netlib = { path = "../netlib" }

Path dependencies work now; git dependencies with versions and hookql.lock
come with `hookql lib install`.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from hookql import nodes as n
from hookql.checker import FileResolver
from hookql.diagnostics import Diagnostics
from hookql.source import Source

MANIFEST = "hookql.toml"


def find_manifest(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        if (d / MANIFEST).is_file():
            return d / MANIFEST
    return None


class ManifestResolver(FileResolver):
    def resolve(self, use: n.Use, diags: Diagnostics):
        if use.path is not None:
            return super().resolve(use, diags)
        script_dir = Path(use.span.source.name).resolve().parent
        manifest = find_manifest(script_dir)
        lib, *mod = use.name.split(".")
        if manifest is None:
            diags.error(use.span, f"unknown library '{lib}'",
                        f'there is no {MANIFEST} above {script_dir}; declare it in one: '
                        f'[dependencies] {lib} = {{ path = "..." }}')
            return None
        try:
            deps = tomllib.loads(manifest.read_text()).get("dependencies", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            diags.error(use.span, f"cannot read {manifest}: {exc}")
            return None
        dep = deps.get(lib)
        if not isinstance(dep, dict):
            declared = ", ".join(sorted(deps)) or "none"
            diags.error(use.span, f"unknown library '{lib}' ({manifest} declares: {declared})",
                        f'add it: [dependencies] {lib} = {{ path = "..." }}')
            return None
        if "path" not in dep:
            diags.error(use.span, f"library '{lib}' is not a path dependency; git libraries are installed with "
                        "`hookql lib install`, which this version does not have yet",
                        f'use {{ path = "..." }} for now')
            return None
        root = (manifest.parent / dep["path"]).resolve()
        module = root / ("/".join(mod) + ".hq" if mod else "lib.hq")
        try:
            return use.name, Source.from_path(module)
        except (OSError, UnicodeDecodeError) as exc:
            what = f"module '{'.'.join(mod)}'" if mod else "a root module (lib.hq)"
            diags.error(use.span, f"library '{lib}' has no {what}: {module} "
                        f"({getattr(exc, 'strerror', None) or exc})")
            return None
