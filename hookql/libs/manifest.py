"""hookql.toml: a package's name, version, requirements and dependencies.

Every manifest is hostile input, the project's and each library's (so the
checks cover transitive dependencies): a dependency's name must be an
identifier, its git URL one git may safely be given (git.check_url), its
version a semver range.  `lib add` edits the file atomically, with values
quoted as TOML strings, never pasted in.
"""
from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hookql.libs import confine
from hookql.libs.errors import ManifestError, show
from hookql.libs.git import ACCEPTED, check_url
from hookql.libs.semver import Range, SemverError, Version

MANIFEST = "hookql.toml"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

__all__ = ["MANIFEST", "NAME", "Dependency", "Manifest", "ManifestError", "find", "load", "loads",
           "check_name", "add_dependency", "write_atomic", "load_project"]


@dataclass
class Dependency:
    name: str
    git: str | None = None
    version: Range | None = None
    path: str | None = None


@dataclass
class Manifest:
    path: Path
    name: str
    version: Version | None
    hookql: Range | None
    kernel: Version | None
    dependencies: dict[str, Dependency] = field(default_factory=dict)
    text: str = field(default="", repr=False)  # as it was read
    dir_fd: int | None = field(default=None, repr=False)  # its directory, opened when it was read (load_project)

    @property
    def root(self) -> Path:
        return self.path.parent


def find(start: Path, owner: int | None = None) -> Path | None:
    """The nearest hookql.toml in start or above that may speak for a script owned by `owner`."""
    for d in [start, *start.parents]:
        if trusted(d / MANIFEST, owner):
            return d / MANIFEST
    return None


def owner(path: str | None) -> int | None:
    """Who owns the script at path (None when it is not a file: `<-e>`, standard input)."""
    try:
        return os.stat(path).st_uid if path else None
    except OSError:
        return None


def trusted(path: Path | str, owner: int | None = None) -> bool:
    """A hookql.toml may make a project of the directories below it only if it is a regular file of
    root's, of the running user's or of the script's owner: a /tmp/hookql.toml another user left must
    not turn a root script in /tmp/dir into their project (its `use` paths and dependencies)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid in (0, os.geteuid(), owner)


def check_name(name: object) -> str | None:
    """Why `name` cannot name a dependency, or None."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return "is not a library name (letters, digits, _ and -, not starting with a digit or -)"
    return None


def load(path: Path, inside: Path | None = None) -> Manifest:
    """Read and check a hookql.toml; with `inside`, its real path must be in that directory (a library's
    manifest may not be a link to a file elsewhere)."""
    try:
        text = confine.read_text(path, inside if inside is not None else path.parent)
    except confine.Outside as exc:
        where = f"its library {exc.root}" if inside is not None else "its directory"
        raise ManifestError(f"cannot read {path}: it is a symbolic link to outside {where}; "
                            "make it a regular file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return loads(text, path)


def load_project(path: Path) -> Manifest:
    """The project's own hookql.toml, which `hookql lib` may rewrite (with hookql.lock beside it): its
    directory is opened once, here, and everything after reads and writes through that descriptor, so
    a directory swapped for a link meanwhile (another user's project, while git runs) changes nothing."""
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = read_in(dfd, path)
    except ManifestError:
        os.close(dfd)
        raise
    m = loads(text, path)
    m.dir_fd = dfd  # kept for the life of the command
    return m


def read_in(dfd: int, path: Path) -> str:
    """The text of the regular file path.name in the directory dfd: never through a link, never a FIFO."""
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(22, "not a regular file")
            return confine.read_all(fd).decode("utf-8")
        finally:
            os.close(fd)
    except (OSError, UnicodeDecodeError) as exc:
        why = "it is a symbolic link, which HookQL does not follow here" if getattr(exc, "errno", 0) == 40 else \
            getattr(exc, "strerror", None) or exc
        raise ManifestError(f"cannot read {path}: {why}") from None


def loads(text: str, path: Path) -> Manifest:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    pkg = data.get("package", {})
    deps = data.get("dependencies", {})
    if not isinstance(pkg, dict) or not isinstance(deps, dict):
        raise ManifestError(f"{path}: [package] and [dependencies] must be tables")
    for key in ("name", "version", "hookql", "kernel"):
        if key in pkg and (not isinstance(pkg[key], str) or not pkg[key].isprintable()):
            raise ManifestError(f"{path}: [package] {key} must be a string of printable characters")
    try:
        m = Manifest(path, pkg.get("name", path.parent.name),
                     Version.parse(pkg["version"]) if "version" in pkg else None,
                     Range.parse(pkg["hookql"]) if "hookql" in pkg else None,
                     Version.parse(pkg["kernel"]) if "kernel" in pkg else None, text=text)
        for name, spec in deps.items():
            why = check_name(name)
            if why:
                raise ManifestError(f"{path}: dependency '{show(name)}' {why}; rename it")
            if not isinstance(spec, dict) or not ("git" in spec or "path" in spec):
                raise ManifestError(f"{path}: dependency '{name}' needs {{ git = \"URL\", version = \"RANGE\" }} "
                                    f"or {{ path = \"DIR\" }}")
            if "git" in spec:
                why = check_url(spec["git"])
                if why:
                    raise ManifestError(f"{path}: dependency '{name}': git URL '{show(spec['git'])}' {why}; "
                                        f"write {ACCEPTED}")
            version = spec.get("version", "*")
            if not isinstance(version, str):
                raise ManifestError(f"{path}: dependency '{name}': version must be a string, e.g. \"^1.2\"")
            dpath = spec.get("path")
            if dpath is not None and (not isinstance(dpath, str) or not dpath or not dpath.isprintable()):
                raise ManifestError(f"{path}: dependency '{name}': path must be a directory name, e.g. \"../netlib\"")
            m.dependencies[name] = Dependency(name, spec.get("git"),
                                              Range.parse(version) if "git" in spec else None, dpath)
    except SemverError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return m


# -- editing (lib add) ----------------------------------------------------------------------
_SECTION = re.compile(r"^\[dependencies\][ \t]*(?:#.*)?$", re.MULTILINE)


def add_dependency(path: Path, text: str, name: str, git: str, version: str) -> tuple[str, Manifest]:
    """text with `name = { git = ..., version = ... }` added under [dependencies], and the manifest it
    makes; ManifestError when the values are not allowed or the result would not say exactly that."""
    why = check_name(name)
    if why:
        raise ManifestError(f"cannot add '{show(name)}' to {path}: '{show(name)}' {why}")
    why = check_url(git)
    if why:
        raise ManifestError(f"cannot add '{name}' to {path}: git URL '{show(git)}' {why}; write {ACCEPTED}")
    try:
        if not version.isprintable():
            raise SemverError(f"'{show(version)}' contains control characters")
        Range.parse(version)
    except SemverError as exc:
        raise ManifestError(f"cannot add '{name}' to {path}: --version: {exc}") from None
    line = f"{name} = {{ git = {json.dumps(git)}, version = {json.dumps(version)} }}"  # TOML basic strings
    m = _SECTION.search(text)
    if m:
        new = text[:m.end()] + "\n" + line + text[m.end():]
    else:
        new = text.rstrip("\n") + f"\n\n[dependencies]\n{line}\n"
    try:
        got = tomllib.loads(new).get("dependencies", {}).get(name)
    except (tomllib.TOMLDecodeError, AttributeError):
        got = None
    if got != {"git": git, "version": version}:
        raise ManifestError(f"cannot add '{name}' to {path} automatically (its [dependencies] is not a plain "
                            f"table); add this line under [dependencies] by hand: {line}")
    return new, loads(new, path)


def write_atomic(path: Path, text: str, dir_fd: int | None = None) -> None:
    """Replace the file at `path` with `text` at once: a temporary file in the same directory, then rename,
    both through `dir_fd` (the directory as it was when the manifest was read; opened now if None).
    A symbolic link is not written through (it would write wherever the link points)."""
    own = dir_fd is None
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if own else dir_fd
    except OSError as exc:
        raise ManifestError(f"cannot write {path}: {exc.strerror}") from None
    try:
        _write_in(dfd, path, text)
    finally:
        if own:
            os.close(dfd)


def _write_in(dfd: int, path: Path, text: str) -> None:
    name = path.name
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ManifestError(f"cannot write {path}: {exc.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ManifestError(f"cannot write {path}: it is {what}, which HookQL does not write through; "
                            "make it a regular file")
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as exc:
        raise ManifestError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            # on the descriptor, never by name: another user who can write this directory could have put
            # a symbolic link in the temporary file's place, and root would chmod/chown its target
            if st is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)  # root editing a user's project leaves it theirs
            else:
                os.fchmod(f.fileno(), 0o644 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ManifestError(f"cannot write {path}: {exc.strerror}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
