"""hookql.lock: the exact commit and tree hash of every git library.

Written by `hookql lib install` (atomically: a temporary file, then rename;
never through a symbolic link), read by installs and by `use NAME`.  The lock
is input like any other: its names, URLs and commits are checked when read.
"""
from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hookql.libs import confine, git, store
from hookql.libs import manifest as M
from hookql.libs.errors import InstallError
from hookql.libs.semver import Version

LOCK = "hookql.lock"


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
        """Where its tree is cached (InstallError when the cache may not be used)."""
        return store.source_dir(self.git, self.commit)


def manifest_digest(root: M.Manifest) -> str:
    deps = {d.name: [d.git, str(d.version) if d.version else None, d.path] for d in root.dependencies.values()}
    return "sha256:" + hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()


def render(root: M.Manifest, libs: dict[str, Locked]) -> str:
    q = lambda s: json.dumps(s)  # a TOML basic string is a JSON string
    lines = ["# hookql.lock: written by `hookql lib install`; commit it, do not edit it.", "version = 1",
             f"manifest = {q(manifest_digest(root))}"]
    for lib in libs.values():
        lines += ["", "[[library]]", f"name = {q(lib.name)}", f"version = {q(lib.version)}", f"git = {q(lib.git)}",
                  f"commit = {q(lib.commit)}", f"hash = {q(lib.hash)}",
                  f"dependencies = [{', '.join(q(d) for d in lib.dependencies)}]"]
        if lib.kernel:
            lines.append(f"kernel = {q(lib.kernel)}")
    return "\n".join(lines) + "\n"


def write_lock(root: M.Manifest, libs: dict[str, Locked]) -> Path:
    path = root.root / LOCK
    M.write_atomic(path, render(root, libs), root.dir_fd)
    return path


def read_lock(root: M.Manifest) -> tuple[dict[str, Locked], str] | None:
    path = root.root / LOCK
    if root.dir_fd is not None:  # the project's directory as it was when hookql.toml was read
        try:
            os.stat(LOCK, dir_fd=root.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError:
            pass  # read_in says why
        text_of = lambda: M.read_in(root.dir_fd, path)  # noqa: E731
    else:
        if not path.is_file():
            return None
        text_of = lambda: confine.read_text(path, path.parent)  # noqa: E731  never through a link to elsewhere
    try:
        data = tomllib.loads(text_of())
        libs = {}
        for d in data.get("library", []):
            lib = Locked(d["name"], d["version"], d["git"], d["commit"], d["hash"],
                         list(d.get("dependencies", [])), d.get("kernel"))
            _check(lib)
            libs[lib.name] = lib
    except confine.Outside:
        raise InstallError(f"{path} is a symbolic link to outside the project; HookQL does not read through it: "
                           "make it a regular file (`hookql lib install` writes it)") from None
    except M.ManifestError as exc:
        raise InstallError(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # TOMLDecodeError is a ValueError
        raise InstallError(f"{path} is damaged ({exc}); run `hookql lib install` to write it again") from None
    return libs, data.get("manifest", "")


def _check(lib: Locked) -> None:
    """A lock entry's values are what install writes: anything else was not written by HookQL."""
    if M.check_name(lib.name):
        raise ValueError("a library name is not a name")
    if git.check_url(lib.git):
        raise ValueError(f"library {lib.name}: its git URL {git.check_url(lib.git)}")
    if not git.check_commit(lib.commit):
        raise ValueError(f"library {lib.name}: its commit is not a commit id")
    if str(Version.parse(lib.version)) != lib.version:  # exactly as install writes it (no stray characters)
        raise ValueError(f"library {lib.name}: its version is not MAJOR.MINOR.PATCH")
    if lib.kernel is not None and str(Version.parse(lib.kernel)) != lib.kernel:
        raise ValueError(f"library {lib.name}: its kernel is not MAJOR.MINOR.PATCH")
    if not isinstance(lib.hash, str) or not all(isinstance(d, str) for d in lib.dependencies):
        raise ValueError(f"library {lib.name}: hash and dependencies must be strings")


def verify(lib: Locked) -> None:
    """The cached tree of a locked library is what the lock says."""
    src = lib.source
    try:
        if os.path.islink(src):
            raise OSError(40, "it is a symbolic link")
        got = store.tree_hash(src)
    except OSError as exc:
        raise InstallError(f"library '{lib.name}' {lib.version}: cannot read its cached source {src} "
                           f"({exc.strerror or exc}); delete it and run `hookql lib install --locked`") from None
    if got != lib.hash:
        raise InstallError(f"library '{lib.name}' {lib.version}: its cached source {lib.source} does not match "
                           f"{LOCK} (hash {got}, locked {lib.hash}); it was modified. Delete it and run "
                           "`hookql lib install --locked`")
