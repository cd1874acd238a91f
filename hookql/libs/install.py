"""`hookql lib install`: resolve (or follow the lock), fetch, verify, write hookql.lock."""
from __future__ import annotations

from hookql.libs import lock as L
from hookql.libs import manifest as M
from hookql.libs import store
from hookql.libs.errors import InstallError
from hookql.libs.lock import LOCK, Locked
from hookql.libs.resolve import resolve


def install(root: M.Manifest, locked_only: bool = False, update: set[str] | None = None,
            write: bool = True) -> dict[str, Locked]:
    """The libraries root needs, fetched into the cache; hookql.lock written unless write=False
    (`lib add` writes it after hookql.toml)."""
    current = L.read_lock(root)
    if locked_only:
        if current is None:
            raise InstallError(f"--locked: there is no {LOCK}; run `hookql lib install` and commit it")
        libs, digest = current
        if digest != L.manifest_digest(root):
            raise InstallError(f"--locked: {LOCK} is stale ({M.MANIFEST}'s dependencies changed); "
                               "run `hookql lib install` and commit it")
        for lib in libs.values():
            store.fetch(lib.git, lib.commit, f"library '{lib.name}' {lib.version}")
            L.verify(lib)
        return libs
    libs = resolve(root, current[0] if current else None, update)
    if write:
        L.write_lock(root, libs)
    return libs
