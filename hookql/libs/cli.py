"""`hookql lib add|install|update|list`: the project's hookql.toml and hookql.lock."""
from __future__ import annotations

import sys
from pathlib import Path

from hookql.libs import lock as L
from hookql.libs import manifest as M
from hookql.libs.errors import InstallError, ManifestError, show
from hookql.libs.install import install as _install
from hookql.runtime.escape import escape_text


def _root() -> M.Manifest:
    cwd = Path.cwd()
    path = M.find(cwd, cwd.stat().st_uid)  # the project you stand in, also another user's
    if path is None:
        raise InstallError(f"no {M.MANIFEST} here or above; create one with a [package] name and version")
    return M.load_project(path)


def run(args) -> int:
    try:
        return {"add": add, "install": install, "update": update, "list": list_}[args.lib_cmd](args)
    except (InstallError, ManifestError) as exc:
        print(f"hookql lib: error: {escape_text(str(exc), backslash=False)}", file=sys.stderr)
        return 1


def add(args) -> int:
    """Add a git dependency: hookql.toml changes only once it installed, and then at once."""
    root = _root()
    if args.name in root.dependencies:
        raise InstallError(f"'{args.name}' is already a dependency in {root.path}")
    new_text, new_root = M.add_dependency(root.path, root.text, args.name, args.git, args.version)
    new_root.dir_fd = root.dir_fd
    libs = _install(new_root, write=False)
    M.write_atomic(root.path, new_text, root.dir_fd)
    print(f"added {args.name} ({show(args.version)}) to {show(root.path)}", file=sys.stderr)
    L.write_lock(new_root, libs)
    _report(libs, new_root)
    return 0


def install(args) -> int:
    root = _root()
    libs = _install(root, locked_only=getattr(args, "locked", False))
    _report(libs, root)
    return 0


def update(args) -> int:
    root = _root()
    names = set(args.names) or set(root.dependencies) | {n for n in (L.read_lock(root) or ({}, ""))[0]}
    libs = _install(root, update=names)
    _report(libs, root)
    return 0


def list_(args) -> int:
    root = _root()
    current = L.read_lock(root)
    if current is None:
        print(f"no {L.LOCK}: run `hookql lib install`", file=sys.stderr)
        return 1
    for lib in current[0].values():
        print(f"{show(lib.name)} {show(lib.version)}  {show(lib.git)}@{show(lib.commit[:12])}")
    return 0


def _report(libs, root) -> None:
    for lib in libs.values():
        print(f"  {show(lib.name)} {show(lib.version)} ({show(lib.commit[:12])})", file=sys.stderr)
    print(f"{len(libs)} librar{'y' if len(libs) == 1 else 'ies'} locked in {show(root.root / L.LOCK)}", file=sys.stderr)
