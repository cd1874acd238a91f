"""Cgroup ids as text: the cgroup v2 path, and the container and Kubernetes pod a path names.

`cgroup`, `container` and `pod` keys and emit values hold bpf_get_current_cgroup_id(): the id of the task's
cgroup on the cgroup v2 (unified) hierarchy, which is the inode number of that cgroup's directory (its kernfs
id: 64 bits, never reused while the machine runs).  This module turns an id into
- its path relative to the cgroup2 mount, "/system.slice/docker-<id>.scope" (the root is "/");
- the container the path names (parse_container): docker, containerd (CRI or not), CRI-O and podman scopes
  under the systemd cgroup driver (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
  `libpod-<id>.scope`) and their directories under the cgroupfs driver (`/docker/<id>`,
  `/kubepods/burstable/pod<uid>/<id>`, `crio-<id>`), the innermost one when containers nest (kind, docker in
  docker).  The id prints as its first 12 hex digits, as `docker ps`, `podman ps` and `nerdctl ps` show it
  (the full id is in the cgroup path).  A conmon scope (`crio-conmon-<id>.scope`, `libpod-conmon-...`) is the
  runtime's monitor, not the container: no container;
- the Kubernetes pod uid of a kubepods path (parse_pod): `kubepods-burstable-pod<uid>.slice` (systemd: the
  uid's dashes are underscores there, restored) or `/kubepods/burstable/pod<uid>` (cgroupfs).
Not in a container (a host service, a user session) or not in a pod: "" (Prometheus drops an empty label, as
cAdvisor's `container` label is empty for the host's cgroups).  An id no cgroup has any more (the cgroup was
removed before it was ever looked up): `cgroup:<id>`, for all three, stable; the event is never dropped.

Resolution: the hierarchy is walked once (os.scandir, lstat; never across into another mount, never through a
symlink) into a table id -> path; a miss walks it again, at most once a second, and in between asks the kernel
for that one directory by its id (open_by_handle_at with the kernfs file handle, when this process may: root
or CAP_DAC_READ_SEARCH).  An id once resolved keeps its path after the cgroup is removed (cgroup v2 cgroups
are never renamed and ids never reused), so a key prints the same at every print; the table is bounded
(MAX_ENTRIES: removed cgroups are forgotten first).

On a hybrid machine (v1 controllers, cgroup2 at /sys/fs/cgroup/unified) the ids are still the unified
hierarchy's; a container runtime using the cgroupfs driver there creates its cgroups in the v1 hierarchies
only, so its containers' processes sit in the unified cgroup of whatever started them (no container).
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os
import re
import struct
import threading
import time
from functools import lru_cache

MOUNTINFO = "/proc/self/mountinfo"
MAX_ENTRIES = 100_000  # ids remembered (live cgroups first); a walk stops there too
RESCAN_SECONDS = 1.0  # a miss walks the hierarchy again at most this often
DISPLAYS = ("cgroup", "container", "pod")  # the display hints whose ids this module prints
SHORT_ID = 12  # hex digits of a container id, as `docker ps` prints it

# A container's cgroup: `[prefix-]<64 hex>[.scope]`, the prefix naming the runtime (docker, cri-containerd,
# crio, libpod, ...) under the systemd driver, or none (docker, containerd under cgroupfs: `/docker/<id>`).
_CONTAINER = re.compile(r"(?:(?P<prefix>[A-Za-z0-9_.:@-]*?)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?")
# A pod's: `...kubepods...-pod<uid>.slice` (systemd: dashes of the uid as underscores) or `pod<uid>` below a
# kubepods directory (cgroupfs).  A uid is a UUID, or for a static pod 32 hex digits (its config's hash).
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_POD_SLICE = re.compile(rf"(?P<parent>[A-Za-z0-9_.:@-]*kubepods[A-Za-z0-9_.:@-]*)-pod(?P<uid>{_UID})\.slice")
_POD_DIR = re.compile(rf"pod(?P<uid>{_UID})")


# -- paths ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def parse_container(path: str) -> str | None:
    """The full (64 hex digit) id of the container a cgroup path is in, the innermost; None: not a container."""
    for part in reversed(path.split("/")):
        m = _CONTAINER.fullmatch(part)
        if m and not (m["prefix"] or "").endswith("conmon"):
            return m["id"]
    return None


@lru_cache(maxsize=65536)
def parse_pod(path: str) -> str | None:
    """The uid of the Kubernetes pod a cgroup path is in (with its dashes), the innermost; None: no pod."""
    parts = path.split("/")
    for i in range(len(parts) - 1, -1, -1):
        m = _POD_SLICE.fullmatch(parts[i])
        if m is None:
            m = _POD_DIR.fullmatch(parts[i])
            if m is None or not any("kubepods" in p for p in parts[:i]):
                continue
        return m["uid"].replace("_", "-")
    return None


def container_text(path: str) -> str:
    """How `container` prints for a cgroup path: the short id, or "" when the path is not a container's."""
    cid = parse_container(path)
    return cid[:SHORT_ID] if cid else ""


def pod_text(path: str) -> str:
    return parse_pod(path) or ""


def fallback(cid: int) -> str:
    """What an id no cgroup has prints as (cgroup, container and pod alike)."""
    return f"cgroup:{cid}"


# -- the mount --------------------------------------------------------------------------------------------
def _unescape(field: str) -> str:
    """A mountinfo field: spaces, tabs, newlines and backslashes are written as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> str | None:
    """Where the cgroup2 (unified) hierarchy is mounted: /sys/fs/cgroup on a pure v2 machine,
    /sys/fs/cgroup/unified on a hybrid one; None when it is not mounted.  A mount of the hierarchy's root is
    preferred (inside a cgroup namespace the mount's root is the namespace's)."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        pre, sep, post = line.partition(" - ")
        fields = pre.split()
        if not sep or len(fields) < 5 or post.split()[:1] != ["cgroup2"]:
            continue
        found.append((fields[3] != "/", _unescape(fields[4])))
    return min(found)[1] if found else None


# -- ids to paths -----------------------------------------------------------------------------------------
_FILEID_KERNFS = 0xFE  # a kernfs node's file handle: its 64-bit id (include/linux/exportfs.h)


class Resolver:
    """Cgroup ids to paths (relative to the cgroup2 mount) and to what they print as; thread-safe."""

    def __init__(self, mount: str | None = None, max_entries: int = MAX_ENTRIES,
                 rescan: float = RESCAN_SECONDS, clock=time.monotonic, by_handle: bool = True):
        self.mount = cgroup2_mount() if mount is None else mount
        self.max_entries = max(1, max_entries)
        self.rescan = rescan
        self.clock = clock
        self._paths: dict[int, str] = {}  # id -> path; live cgroups of the last walk last (dict order)
        self._gone: dict[int, None] = {}  # ids known to have no cgroup any more (bounded)
        self._asked: dict[int, float] = {}  # missed ids: when first asked about (bounded)
        self._scanned: float | None = None  # when the last walk started
        self._lock = threading.Lock()
        self._handle = by_handle
        self._mount_fd = -1
        self.walks = 0  # how many times the hierarchy was walked
        self.truncated = False  # a walk stopped at max_entries

    # what each display prints
    def display(self, cid: int, kind: str) -> str:
        path = self.path(cid)
        if path is None:
            return fallback(cid)
        if kind == "container":
            return container_text(path)
        if kind == "pod":
            return pod_text(path)
        return path

    def cgroup(self, cid: int) -> str:
        return self.display(cid, "cgroup")

    def container(self, cid: int) -> str:
        return self.display(cid, "container")

    def pod(self, cid: int) -> str:
        return self.display(cid, "pod")

    def path(self, cid: int) -> str | None:
        """The cgroup's path ("/" the root), or None when no cgroup has this id (any more)."""
        if self.mount is None or not isinstance(cid, int) or cid <= 0:
            return None
        with self._lock:
            p = self._paths.get(cid)
            if p is not None or cid in self._gone:
                return p
            now = self.clock()
            first = self._asked.setdefault(cid, now)
            _bound(self._asked, self.max_entries)
            if self._scanned is None or now - self._scanned >= self.rescan:
                self._walk(now)
                p = self._paths.get(cid)
                if p is not None:
                    self._asked.pop(cid, None)
                    return p
            p, stale = self._by_handle(cid)
            if p is not None:
                self._remember(cid, p)
                self._asked.pop(cid, None)
                return p
            if stale or (self._scanned is not None and self._scanned >= first):
                # the kernel says so, or a walk that began after the event (which had the id) did not see it
                self._asked.pop(cid, None)
                self._gone[cid] = None
                _bound(self._gone, self.max_entries)
            return None

    def _remember(self, cid: int, path: str) -> None:
        self._paths[cid] = path
        _bound(self._paths, self.max_entries)

    def _walk(self, now: float) -> None:
        """Walk the hierarchy: every cgroup's id and path; ids no longer there keep their paths (oldest
        dropped first past max_entries)."""
        self._scanned = now
        self.walks += 1
        live = _walk(self.mount, self.max_entries)
        self.truncated = len(live) >= self.max_entries
        if not live:
            return
        old = [(k, v) for k, v in self._paths.items() if k not in live]
        keep = old[max(0, len(old) - (self.max_entries - len(live))):] if len(live) < self.max_entries else []
        self._paths = dict(keep)
        self._paths.update(live)

    def _by_handle(self, cid: int) -> tuple[str | None, bool]:
        """Open the cgroup's directory by its id (open_by_handle_at, kernfs file handle): (its path, False);
        (None, True) when the kernel says no such cgroup (ESTALE); (None, False) when this cannot be asked
        (no permission: CAP_DAC_READ_SEARCH; no such call)."""
        if not self._handle:
            return None, False
        try:
            fn = _libc().open_by_handle_at
            if self._mount_fd < 0:
                self._mount_fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (AttributeError, OSError):
            self._handle = False
            return None, False
        buf = ctypes.create_string_buffer(struct.pack("<IiQ", 8, _FILEID_KERNFS, cid))
        fd = fn(self._mount_fd, buf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", 0))
        if fd < 0:
            err = ctypes.get_errno()
            if err in (_errno.EPERM, _errno.EACCES, _errno.ENOSYS, _errno.EOPNOTSUPP):
                self._handle = False
            return None, err == _errno.ESTALE
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        except OSError:
            return None, False
        finally:
            os.close(fd)
        mount = self.mount.rstrip("/")
        rel = target[len(mount):] if target == mount or target.startswith(mount + "/") else None
        if rel is None or st.st_ino != cid:
            return None, False
        # the link's text is the path as the kernel prints it; check it names this very directory
        try:
            if os.stat(mount + rel, follow_symlinks=False).st_ino != cid:
                return None, False
        except OSError:
            return None, False
        return _text(os.fsencode(rel)) or "/", False

    def close(self) -> None:
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1


def _text(b: bytes) -> str:
    """A path's bytes as text: UTF-8, an invalid byte as U+FFFD (as runtime/events.c decodes)."""
    return b.decode("utf-8", "replace")


def _walk(mount: str, limit: int) -> dict[int, str]:
    """id -> path of every cgroup under `mount` (the mount's root is "/"), at most `limit`; directories only,
    lstat'ed, on the mount's own device (another file system mounted inside is not entered)."""
    base = os.fsencode(mount.rstrip("/") or "/")
    try:
        top = os.stat(base, follow_symlinks=False)
    except OSError:
        return {}
    out = {top.st_ino: "/"}
    stack = [(base, b"")]
    while stack and len(out) < limit:
        d, rel = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue  # removed meanwhile, or not readable
        with it:
            for e in it:
                try:
                    if not e.is_dir(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != top.st_dev:
                    continue
                r = rel + b"/" + e.name
                out[st.st_ino] = _text(r)
                if len(out) >= limit:
                    break
                stack.append((e.path, r))
    return out


def _bound(d: dict, limit: int) -> None:
    """Drop a dict's oldest entries past `limit`."""
    while len(d) > limit:
        del d[next(iter(d))]


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        _LIBC.open_by_handle_at.restype = ctypes.c_int
    return _LIBC


_DEFAULT: Resolver | None = None
_DEFAULT_LOCK = threading.Lock()


def default() -> Resolver:
    """The process's resolver (the cgroup2 mount found once), shared by the printers and `serve`."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Resolver()
        return _DEFAULT


def display(cid: int, kind: str) -> str:
    """How an id under display `kind` ("cgroup", "container", "pod") prints, with the default resolver."""
    return default().display(cid, kind)
