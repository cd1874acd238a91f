"""`hookql lib add|install|update|list`: the project's hookql.toml and hookql.lock."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from hookql import install as I
from hookql import manifest as M


def _root() -> M.Manifest:
    path = M.find(Path.cwd())
    if path is None:
        raise I.InstallError(f"no {M.MANIFEST} here or above; create one with a [package] name and version")
    return M.load(path)


def run(args) -> int:
    try:
        return {"add": add, "install": install, "update": update, "list": list_}[args.lib_cmd](args)
    except (I.InstallError, M.ManifestError) as exc:
        print(f"hookql lib: error: {exc}", file=sys.stderr)
        return 1


def add(args) -> int:
    root = _root()
    if args.name in root.dependencies:
        raise I.InstallError(f"'{args.name}' is already a dependency in {root.path}")
    line = f'{args.name} = {{ git = "{args.git}", version = "{args.version}" }}'
    text = root.path.read_text()
    if re.search(r"^\[dependencies\]\s*$", text, re.MULTILINE):
        text = re.sub(r"^\[dependencies\]\s*$", f"[dependencies]\n{line}", text, count=1, flags=re.MULTILINE)
    else:
        text = text.rstrip("\n") + f"\n\n[dependencies]\n{line}\n"
    root.path.write_text(text)
    print(f"added {args.name} ({args.version}) to {root.path}", file=sys.stderr)
    return install(args)


def install(args) -> int:
    root = _root()
    libs = I.install(root, locked_only=getattr(args, "locked", False))
    _report(libs, root)
    return 0


def update(args) -> int:
    root = _root()
    names = set(args.names) or set(root.dependencies) | {n for n in (I.read_lock(root) or ({}, ""))[0]}
    libs = I.install(root, update=names)
    _report(libs, root)
    return 0


def list_(args) -> int:
    root = _root()
    current = I.read_lock(root)
    if current is None:
        print(f"no {I.LOCK}: run `hookql lib install`", file=sys.stderr)
        return 1
    for lib in current[0].values():
        print(f"{lib.name} {lib.version}  {lib.git}@{lib.commit[:12]}")
    return 0


def _report(libs, root) -> None:
    for lib in libs.values():
        print(f"  {lib.name} {lib.version} ({lib.commit[:12]})", file=sys.stderr)
    print(f"{len(libs)} librar{'y' if len(libs) == 1 else 'ies'} locked in {root.root / I.LOCK}", file=sys.stderr)
