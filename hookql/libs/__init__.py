"""Script libraries: `use NAME`, hookql.toml, hookql.lock and `hookql lib`.

One file per stage:

manifest.py  hookql.toml: read and check (names, git URLs, ranges), `lib add`'s atomic edit
semver.py    versions and ranges
git.py       every git command (`--` before URLs, a protocol allowlist), which URLs are accepted
resolve.py   version resolution over the dependency graph
store.py     the cached library trees: clone, copy without following links, tree hash
lock.py      hookql.lock: read, write, verify a cached tree against it
install.py   `hookql lib install`: resolve or follow the lock, fetch, lock
modules.py   ManifestResolver: the checker's `use NAME` / `use NAME.mod`
confine.py   reading a file only when its real path is inside a given directory
cli.py       `hookql lib add|install|update|list`
errors.py    InstallError, ManifestError, and printing hostile text safely

Everything a manifest, a lock, a script or a git remote says is treated as
hostile: HookQL runs as root.
"""
