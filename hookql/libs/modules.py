"""Script libraries: `use NAME` / `use NAME.mod` resolved through hookql.toml.

A library is a folder or git repo with hookql.toml at its root; lib.hq is its
root module, mod.hq (or a/b.hq for `use NAME.a.b`) its others.  A script's
hookql.toml (found upward from the script) names its dependencies:

    [dependencies]
    netlib = { git = "https://...", version = "^1.2" }   # resolved through hookql.lock
    local = { path = "../local" }                          # used in place

Inside a library, `use NAME` with the library's own name is the library itself (its test cases use it as
its users do).

Git libraries come from the cache `hookql lib install` fills, checked
against the lock's hashes; a library's own `use`s resolve through the same
(the script's) lock.  A module is read only when its real path is inside
its library's real root: a `lib.hq` that is a symbolic link to a file
elsewhere is an error at the `use`, and the file is not read.  A git
library's hookql.toml is its own (the search does not go above the
library), and its path dependencies must be inside it.
"""
from __future__ import annotations

import re
from pathlib import Path

from hookql import nodes as n
from hookql.checker import FileResolver
from hookql.diagnostics import Diagnostics
from hookql.libs import confine
from hookql.libs import lock as L
from hookql.libs import manifest as M
from hookql.libs.errors import InstallError, show
from hookql.libs.semver import Version
from hookql.source import Source

MANIFEST = M.MANIFEST


class ManifestResolver(FileResolver):
    def __init__(self):
        super().__init__()
        self.root: M.Manifest | None = None  # the using script's manifest: its lock serves the whole graph
        self.kernel = None  # set by the checker: libraries may need a minimum kernel
        self._verified: set[str] = set()
        self._git_roots: set[str] = set()  # real roots of cached git libraries

    def resolve(self, use: n.Use, diags: Diagnostics):
        if use.path is not None:
            return super().resolve(use, diags)
        using = use.span.source.name
        real = use.span.source.real  # where the script really was when it was read (hookql/cli.py _source)
        script_dir = Path(real).parent if real else Path(using).resolve().parent
        owner = M.owner(real or using)
        owner = self._roots.get(using)  # the library the using module belongs to, if it is one
        in_git = owner in self._git_roots
        lib, *mod = use.name.split(".")
        if in_git:
            mpath = Path(owner) / MANIFEST if (Path(owner) / MANIFEST).is_file() else None
        else:
            mpath = M.find(script_dir, owner)
        if mpath is None:
            diags.error(use.span, f"unknown library '{lib}'",
                        f'there is no {MANIFEST} above {script_dir}; declare it in one: '
                        f'[dependencies] {lib} = {{ path = "..." }}')
            return None
        try:
            man = M.load(mpath, inside=Path(owner) if in_git else None)
        except M.ManifestError as exc:
            diags.error(use.span, str(exc))
            return None
        self.root = self.root or man
        dep = man.dependencies.get(lib)
        if dep is None and lib == man.name:  # the library's own modules: its tests `use` it as its users do
            dep = M.Dependency(lib, path=".")
        if dep is None:
            declared = ", ".join(sorted(man.dependencies)) or "none"
            diags.error(use.span, f"unknown library '{lib}' ({mpath} declares: {declared})",
                        f'add it: `hookql lib add {lib} --git URL`, or [dependencies] {lib} = {{ path = "..." }}')
            return None
        if dep.path is not None:
            root = confine.real(man.root / dep.path)
            if in_git and not confine.inside(root, owner):
                diags.error(use.span, f"library '{lib}': {mpath} declares it at {show(dep.path)}, outside that "
                            "library; a git library's path dependencies must be inside it")
                return None
        else:
            found = self._locked_source(lib, use, diags)
            if found is None:
                return None
            root = confine.real(found)
            self._git_roots.add(root)
        self._libraries.setdefault(root, lib)
        module = Path(root) / ("/".join(mod) + ".hq" if mod else "lib.hq")
        what = f"module '{'.'.join(mod)}'" if mod else "a root module (lib.hq)"
        try:
            text = confine.read_text(module, root)
        except confine.Outside:
            diags.error(use.span, f"library '{lib}': {module} is (or passes through) a symbolic link to outside "
                        f"the library ({root}); it was not read",
                        "a library's modules must be files inside it: replace the link with the file")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            diags.error(use.span, f"library '{lib}' has no {what}: {module} "
                        f"({getattr(exc, 'strerror', None) or exc})")
            return None
        self._roots[str(module)] = root
        return use.name, Source(str(module), text)

    def _locked_source(self, lib: str, use: n.Use, diags: Diagnostics) -> Path | None:
        try:
            current = L.read_lock(self.root)
            locked = current[0].get(lib) if current else None
            if locked is None:
                diags.error(use.span, f"library '{lib}' is not installed ({self.root.root / L.LOCK} "
                            f"{'has no entry for it' if current else 'does not exist'})", "run `hookql lib install`")
                return None
            source = locked.source
            if not source.is_dir():
                diags.error(use.span, f"library '{lib}' {locked.version} is locked but not in the cache",
                            "run `hookql lib install --locked`")
                return None
            if lib not in self._verified:
                L.verify(locked)
                self._verified.add(lib)
        except InstallError as exc:
            diags.error(use.span, str(exc))
            return None
        if locked.kernel and self.kernel is not None:
            have = _kernel_version(self.kernel.version)
            if have is not None and have < Version.parse(locked.kernel):
                diags.error(use.span, f"library '{lib}' {locked.version} needs kernel {locked.kernel} or newer; "
                            f"this is {self.kernel.label}", "check with --kernel for a newer kernel, or pick an "
                            "older version of the library")
                return None
        return source


def _kernel_version(release: str) -> Version | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return Version(int(m[1]), int(m[2]), int(m[3] or 0)) if m else None
