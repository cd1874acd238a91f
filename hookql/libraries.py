"""Script libraries: `use NAME` / `use NAME.mod` resolved through hookql.toml.

A library is a folder or git repo with hookql.toml at its root; lib.hq is its
root module, mod.hq (or a/b.hq for `use NAME.a.b`) its others.  A script's
hookql.toml (found upward from the script) names its dependencies:

    [dependencies]
    netlib = { git = "https://...", version = "^1.2" }   # resolved through hookql.lock
    local = { path = "../local" }                          # used in place

Git libraries come from the cache `hookql lib install` fills, checked
against the lock's hashes; a library's own `use`s resolve through the same
(the script's) lock.
"""
from __future__ import annotations

import re
from pathlib import Path

from hookql import install as I
from hookql import manifest as M
from hookql import nodes as n
from hookql.checker import FileResolver
from hookql.diagnostics import Diagnostics
from hookql.semver import Version
from hookql.source import Source

MANIFEST = M.MANIFEST


class ManifestResolver(FileResolver):
    def __init__(self):
        self.root: M.Manifest | None = None  # the using script's manifest: its lock serves the whole graph
        self.kernel = None  # set by the checker: libraries may need a minimum kernel
        self._verified: set[str] = set()

    def resolve(self, use: n.Use, diags: Diagnostics):
        if use.path is not None:
            return super().resolve(use, diags)
        script_dir = Path(use.span.source.name).resolve().parent
        mpath = M.find(script_dir)
        lib, *mod = use.name.split(".")
        if mpath is None:
            diags.error(use.span, f"unknown library '{lib}'",
                        f'there is no {MANIFEST} above {script_dir}; declare it in one: '
                        f'[dependencies] {lib} = {{ path = "..." }}')
            return None
        try:
            man = M.load(mpath)
        except M.ManifestError as exc:
            diags.error(use.span, str(exc))
            return None
        self.root = self.root or man
        dep = man.dependencies.get(lib)
        if dep is None:
            declared = ", ".join(sorted(man.dependencies)) or "none"
            diags.error(use.span, f"unknown library '{lib}' ({mpath} declares: {declared})",
                        f'add it: `hookql lib add {lib} --git URL`, or [dependencies] {lib} = {{ path = "..." }}')
            return None
        if dep.path is not None:
            root = (man.root / dep.path).resolve()
        else:
            root = self._locked_source(lib, use, diags)
            if root is None:
                return None
        module = root / ("/".join(mod) + ".hq" if mod else "lib.hq")
        try:
            return use.name, Source.from_path(module)
        except (OSError, UnicodeDecodeError) as exc:
            what = f"module '{'.'.join(mod)}'" if mod else "a root module (lib.hq)"
            diags.error(use.span, f"library '{lib}' has no {what}: {module} "
                        f"({getattr(exc, 'strerror', None) or exc})")
            return None

    def _locked_source(self, lib: str, use: n.Use, diags: Diagnostics) -> Path | None:
        try:
            current = I.read_lock(self.root)
        except I.InstallError as exc:
            diags.error(use.span, str(exc))
            return None
        locked = current[0].get(lib) if current else None
        if locked is None:
            diags.error(use.span, f"library '{lib}' is not installed ({self.root.root / I.LOCK} "
                        f"{'has no entry for it' if current else 'does not exist'})", "run `hookql lib install`")
            return None
        if not locked.source.is_dir():
            diags.error(use.span, f"library '{lib}' {locked.version} is locked but not in the cache",
                        "run `hookql lib install --locked`")
            return None
        if lib not in self._verified:
            try:
                I.verify(locked)
            except I.InstallError as exc:
                diags.error(use.span, str(exc))
                return None
            self._verified.add(lib)
        if locked.kernel and self.kernel is not None:
            have = _kernel_version(self.kernel.version)
            if have is not None and have < Version.parse(locked.kernel):
                diags.error(use.span, f"library '{lib}' {locked.version} needs kernel {locked.kernel} or newer; "
                            f"this is {self.kernel.label}", "check with --kernel for a newer kernel, or pick an "
                            "older version of the library")
                return None
        return locked.source


def _kernel_version(release: str) -> Version | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return Version(int(m[1]), int(m[2]), int(m[3] or 0)) if m else None
