"""Version resolution: every git library in the graph gets one exact commit.

A library's versions are its repo's tags vX.Y.Z.  Resolution picks, for
every library in the graph, the highest version all its requirers allow (the
locked one when it still fits), and walks the graph again with those
choices (a new version may require other things) until nothing changes; a
requirement nothing satisfies is reported with the path that made it.

Each walk visits every library and every path dependency once (path
dependencies are read once per resolution, by their real path), so a diamond
costs its nodes, not its paths, and chains have no length limit.  A cycle of
path dependencies is an error naming its members; choices that keep changing
one another (the walk returns to an earlier state) are an error naming the
libraries involved.  Path dependencies declared by a git library must stay
inside that library.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

from hookql import __version__
from hookql.libs import confine, git, store
from hookql.libs import manifest as M
from hookql.libs.errors import InstallError, ManifestError, show
from hookql.libs.lock import Locked
from hookql.libs.semver import Range, Version

Constraint = tuple[Range, str, tuple[str, ...]]  # (range, git URL, path of names to the requirer)


def _key(man: M.Manifest) -> str:
    """A manifest's identity: the real path of its directory, and its name."""
    return str(Path(confine.real(man.root)) / M.MANIFEST)


class _Reader:
    """The manifests one resolution reads, each read once."""

    def __init__(self):
        self.paths: dict[str, M.Manifest] = {}  # real path of a path dependency's hookql.toml -> it
        self.libs: dict[tuple[str, str], M.Manifest | None] = {}  # (url, commit) -> a git library's manifest
        self.state: dict[str, int] = {}  # cycle search: 1 on the stack, 2 done

    def path_dep(self, owner: M.Manifest, dep: M.Dependency, jail: str | None) -> M.Manifest:
        d = confine.real(owner.root / dep.path)
        if jail is not None and not confine.inside(d, jail):
            raise InstallError(f"{owner.path}: path dependency '{dep.name}' ({show(dep.path)}) is outside its "
                               "library; a library's path dependencies must be inside it")
        mpath = Path(d) / M.MANIFEST
        key = str(mpath)
        if key not in self.paths:
            if not mpath.is_file():
                raise InstallError(f"path dependency '{dep.name}': no {M.MANIFEST} in {d}")
            self.paths[key] = M.load(mpath, inside=Path(d))
        return self.paths[key]

    def lib(self, lib: Locked) -> M.Manifest | None:
        key = (lib.git, lib.commit)
        if key not in self.libs:
            src = lib.source
            mf = src / M.MANIFEST
            try:
                self.libs[key] = M.load(mf, inside=src) if mf.is_file() or mf.is_symlink() else None
            except ManifestError as exc:
                raise InstallError(f"library '{lib.name}' {lib.version}: {exc}") from None
        return self.libs[key]

    def check_cycles(self, start: M.Manifest, name: str, jail: str | None) -> None:
        """A cycle of path dependencies from `start` is an error naming its members."""
        key0 = _key(start)
        if self.state.get(key0):
            return
        self.state[key0] = 1
        stack = [(key0, name, start, iter(start.dependencies.values()))]
        while stack:
            key, _, man, deps = stack[-1]
            for dep in deps:
                if dep.path is None:
                    continue
                sub = self.path_dep(man, dep, jail)
                k = _key(sub)
                if self.state.get(k) == 1:
                    keys = [e[0] for e in stack]
                    members = [e[1] for e in stack[keys.index(k):]] + [dep.name]
                    raise InstallError(f"path dependencies form a cycle: {' -> '.join(members)} "
                                       f"({', '.join(str(Path(x).parent) for x in keys[keys.index(k):])}); "
                                       "a library cannot depend on itself: remove one of these dependencies")
                if k not in self.state:
                    self.state[k] = 1
                    stack.append((k, dep.name, sub, iter(sub.dependencies.values())))
                    break
            else:
                self.state[key] = 2
                stack.pop()


def resolve(root: M.Manifest, lock: dict[str, Locked] | None = None, update: set[str] | None = None
            ) -> dict[str, Locked]:
    lock = lock or {}
    update = update if update is not None else set()
    reader = _Reader()
    reader.paths.setdefault(_key(root), root)
    reader.check_cycles(root, root.name, None)
    chosen: dict[str, Locked] = {}
    available: dict[str, dict[Version, str]] = {}
    history: list[dict[str, str]] = []  # the choices (name -> commit) of every round
    while True:  # each round walks the graph with the current choices
        constraints = _constraints(root, chosen, reader)
        new = {name: _choose(name, cons, available, lock, update, chosen, reader)
               for name, cons in constraints.items()}
        state = {k: v.commit for k, v in new.items()}
        if state == {k: v.commit for k, v in chosen.items()}:
            return {k: new[k] for k in sorted(new)}
        if state in history:  # the choices go round: every later round would repeat these
            loop = history[history.index(state):]
            names = sorted({k for s in loop for k in s if len({t.get(k) for t in loop}) > 1})
            raise InstallError("dependency resolution does not settle: the versions chosen for "
                               f"{', '.join(names)} keep changing one another's requirements; pin one of them "
                               "with an exact version (e.g. version = \"=1.2.3\")")
        history.append(state)
        chosen = new


def _constraints(root: M.Manifest, chosen: dict[str, Locked], reader: _Reader) -> dict[str, list[Constraint]]:
    """Every requirement on a git library, with the path of names that made it; each node visited once."""
    constraints: dict[str, list[Constraint]] = {}
    visited = {("path", _key(root))}
    pending: deque[tuple[M.Manifest, tuple[str, ...], str | None]] = deque([(root, (root.name,), None)])
    while pending:
        man, via, jail = pending.popleft()
        for dep in man.dependencies.values():
            if dep.path is not None:
                sub = reader.path_dep(man, dep, jail)
                if ("path", _key(sub)) not in visited:
                    visited.add(("path", _key(sub)))
                    pending.append((sub, via + (dep.name,), jail))
                continue
            constraints.setdefault(dep.name, []).append((dep.version, dep.git, via))
            lib = chosen.get(dep.name)
            if lib is not None and ("git", dep.name) not in visited:
                visited.add(("git", dep.name))
                sub = reader.lib(lib)
                if sub is not None:
                    src = confine.real(lib.source)
                    reader.check_cycles(sub, dep.name, src)
                    pending.append((sub, via + (dep.name,), src))
    return constraints


def _choose(name, cons, available, lock, update, chosen, reader: _Reader) -> Locked:
    urls = {url for _, url, _ in cons}
    if len(urls) > 1:
        raise InstallError(f"library '{name}' is required from different repositories: "
                           + "; ".join(f"{' -> '.join(via)} uses {url}" for _, url, via in cons))
    url = urls.pop()
    if url not in available:
        available[url] = git.tags(url)
    versions = available[url]
    fits = sorted((v for v in versions if all(r.allows(v) for r, _, _ in cons)), reverse=True)
    if not fits:
        listed = ", ".join(f"v{v}" for v in sorted(versions)) or "none"
        if len(cons) == 1:
            r, _, via = cons[0]
            raise InstallError(f"no tag of '{name}' satisfies {r} (required by {' -> '.join(via)}); tags: {listed}")
        raise InstallError(f"conflicting requirements for '{name}': "
                           + "; ".join(f"{' -> '.join(via)} requires {r}" for r, _, via in cons)
                           + f"; tags: {listed}")
    pick = fits[0]
    old = lock.get(name)
    if old and name not in update and old.git == url and Version.parse(old.version) in fits:
        pick = Version.parse(old.version)
    prev = chosen.get(name)
    if prev and prev.version == str(pick):
        return prev
    src = store.fetch(url, versions[pick], f"library '{name}' {pick}")
    lib = Locked(name, str(pick), url, versions[pick], store.tree_hash(src))
    own = reader.lib(lib)
    if own is not None:
        if own.hookql and not own.hookql.allows(Version.parse(__version__)):
            raise InstallError(f"library '{name}' {pick} needs hookql {own.hookql}; this is hookql {__version__}")
        lib.dependencies = sorted(own.dependencies)
        lib.kernel = str(own.kernel) if own.kernel else None
    return lib

