"""Installing libraries: resolve git dependencies to exact commits, cache
their sources outside the repo, and write hookql.lock.

A library's versions are its repo's tags vX.Y.Z.  Resolution picks, for
every library in the graph, the highest version all its requirers allow
(the locked one when it still fits), repeating until nothing changes; a
requirement nothing satisfies is reported with the path that made it.
Sources live in $XDG_CACHE_HOME/hookql/libs/<url hash>/<commit>, and the
lock records each tree's sha256 so a tampered cache is caught.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hookql import __version__
from hookql import manifest as M
from hookql.paths import cache_dir
from hookql.semver import Range, Version

LOCK = "hookql.lock"


class InstallError(Exception):
    pass


@dataclass
class Locked:
    name: str
    version: str
    git: str
    commit: str
    hash: str
    dependencies: list[str] = field(default_factory=list)
    kernel: str | None = None

    @property
    def source(self) -> Path:
        return cache_dir() / "libs" / hashlib.sha256(self.git.encode()).hexdigest()[:16] / self.commit


# -- git ---------------------------------------------------------------------------
def _git(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise InstallError(f"git {' '.join(args[:2])}: {r.stderr.strip() or 'failed'}")
    return r.stdout


def tags(url: str) -> dict[Version, str]:
    """Version -> commit, from the repo's vX.Y.Z tags (annotated tags peeled)."""
    out: dict[Version, str] = {}
    for line in _git("ls-remote", "--tags", url).splitlines():
        sha, ref = line.split("\t")
        name = ref.removeprefix("refs/tags/")
        peeled = name.endswith("^{}")
        try:
            v = Version.parse(name.removesuffix("^{}"))
        except ValueError:
            continue
        if peeled or v not in out:
            out[v] = sha
    return out


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


def fetch(url: str, commit: str) -> Path:
    dest = Locked("", "", url, commit, "").source
    if dest.is_dir():
        return dest
    with tempfile.TemporaryDirectory(prefix="hookql-lib-") as tmp:
        work = Path(tmp) / "repo"
        _git("clone", "-q", url, str(work))
        _git("checkout", "-q", commit, cwd=work)
        staged = Path(tmp) / "tree"
        shutil.copytree(work, staged, ignore=shutil.ignore_patterns(".git"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(dest))
    return dest


# -- resolution -----------------------------------------------------------------------
def resolve(root: M.Manifest, lock: dict[str, Locked] | None = None, update: set[str] | None = None
            ) -> dict[str, Locked]:
    lock = lock or {}
    update = update if update is not None else set()
    chosen: dict[str, Locked] = {}
    available: dict[str, dict[Version, str]] = {}
    for _ in range(20):  # each round walks the graph with the current choices
        constraints: dict[str, list[tuple[Range, str, tuple[str, ...]]]] = {}
        pending = [(d, (root.name,)) for d in root.dependencies.values()]
        seen: set[tuple[str, tuple[str, ...]]] = set()
        while pending:
            dep, via = pending.pop(0)
            if (dep.name, via) in seen or len(via) > 20:
                continue
            seen.add((dep.name, via))
            if dep.path is not None:
                sub = M.load(_path_manifest(root, dep))
                pending += [(d, via + (dep.name,)) for d in sub.dependencies.values()]
                continue
            constraints.setdefault(dep.name, []).append((dep.version, dep.git, via))
            if dep.name in chosen:
                pending += [(d, via + (dep.name,)) for d in _deps_of(chosen[dep.name])]
        new = {name: _choose(name, cons, available, lock, update, chosen) for name, cons in constraints.items()}
        if {k: v.commit for k, v in new.items()} == {k: v.commit for k, v in chosen.items()}:
            return {k: new[k] for k in sorted(new)}
        chosen = new
    raise InstallError("dependency resolution does not settle (a cycle of changing requirements)")


def _path_manifest(root: M.Manifest, dep: M.Dependency) -> Path:
    p = (root.root / dep.path / M.MANIFEST).resolve()
    if not p.is_file():
        raise InstallError(f"path dependency '{dep.name}': no {M.MANIFEST} in {p.parent}")
    return p


def _deps_of(lib: Locked) -> list[M.Dependency]:
    mf = lib.source / M.MANIFEST
    return list(M.load(mf).dependencies.values()) if mf.is_file() else []


def _choose(name, cons, available, lock, update, chosen) -> Locked:
    urls = {url for _, url, _ in cons}
    if len(urls) > 1:
        raise InstallError(f"library '{name}' is required from different repositories: "
                           + "; ".join(f"{' -> '.join(via)} uses {url}" for _, url, via in cons))
    url = urls.pop()
    if url not in available:
        available[url] = tags(url)
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
    src = fetch(url, versions[pick])
    lib = Locked(name, str(pick), url, versions[pick], tree_hash(src))
    mf = src / M.MANIFEST
    if mf.is_file():
        own = M.load(mf)
        if own.hookql and not own.hookql.allows(Version.parse(__version__)):
            raise InstallError(f"library '{name}' {pick} needs hookql {own.hookql}; this is hookql {__version__}")
        lib.dependencies = sorted(own.dependencies)
        lib.kernel = str(own.kernel) if own.kernel else None
    return lib


# -- the lock file ----------------------------------------------------------------------------
def manifest_digest(root: M.Manifest) -> str:
    deps = {d.name: [d.git, str(d.version) if d.version else None, d.path] for d in root.dependencies.values()}
    return "sha256:" + hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()


def write_lock(root: M.Manifest, libs: dict[str, Locked]) -> Path:
    q = lambda s: json.dumps(s)  # a TOML basic string is a JSON string
    lines = ["# hookql.lock: written by `hookql lib install`; commit it, do not edit it.", "version = 1",
             f"manifest = {q(manifest_digest(root))}"]
    for lib in libs.values():
        lines += ["", "[[library]]", f"name = {q(lib.name)}", f"version = {q(lib.version)}", f"git = {q(lib.git)}",
                  f"commit = {q(lib.commit)}", f"hash = {q(lib.hash)}",
                  f"dependencies = [{', '.join(q(d) for d in lib.dependencies)}]"]
        if lib.kernel:
            lines.append(f"kernel = {q(lib.kernel)}")
    path = root.root / LOCK
    path.write_text("\n".join(lines) + "\n")
    return path


def read_lock(root: M.Manifest) -> tuple[dict[str, Locked], str] | None:
    import tomllib

    path = root.root / LOCK
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
        libs = {d["name"]: Locked(d["name"], d["version"], d["git"], d["commit"], d["hash"],
                                  list(d.get("dependencies", [])), d.get("kernel"))
                for d in data.get("library", [])}
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise InstallError(f"{path} is damaged ({exc}); run `hookql lib install` to write it again") from None
    return libs, data.get("manifest", "")


def install(root: M.Manifest, locked_only: bool = False, update: set[str] | None = None) -> dict[str, Locked]:
    current = read_lock(root)
    if locked_only:
        if current is None:
            raise InstallError(f"--locked: there is no {LOCK}; run `hookql lib install` and commit it")
        libs, digest = current
        if digest != manifest_digest(root):
            raise InstallError(f"--locked: {LOCK} is stale ({M.MANIFEST}'s dependencies changed); "
                               "run `hookql lib install` and commit it")
        for lib in libs.values():
            fetch(lib.git, lib.commit)
            verify(lib)
        return libs
    libs = resolve(root, current[0] if current else None, update)
    write_lock(root, libs)
    return libs


def verify(lib: Locked) -> None:
    got = tree_hash(lib.source)
    if got != lib.hash:
        raise InstallError(f"library '{lib.name}' {lib.version}: its cached source {lib.source} does not match "
                           f"{LOCK} (hash {got}, locked {lib.hash}); it was modified. Delete it and run "
                           "`hookql lib install --locked`")
