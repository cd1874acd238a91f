"""A case's workloads, run one after another in a cgroup of their own.

    python3 -m hookql.testing.workloads SPEC.json

`hookql test` starts this once every probe is attached (it is the run's -c
command), so the run ends when the last workload has.  Each command runs
with /bin/sh in the case file's directory, inside the case's cgroup: the
programs count only that cgroup's tasks (scope workload), and at a timeout
(or when a command leaves processes behind) everything in it is killed,
so nothing a case started outlives it.  The results go to SPEC's "out" file,
in a directory only HookQL can write; stdout and stderr are kept to their
last 16 KiB.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

KEEP = 16 * 1024
NOT_FOUND = 127  # sh: the command was not found


class Cgroup:
    """A cgroup v2 directory of this run's, made under the hierarchy's root (which may hold processes)."""

    def __init__(self, path: str):
        self.path = path
        self.id = os.stat(path).st_ino  # a cgroup v2 id is its directory's inode (bpf_get_current_cgroup_id)

    @classmethod
    def create(cls, tag: str) -> "Cgroup | None":
        root = mount_point()
        if root is None:
            return None
        path = os.path.join(root, f"hookql-test.{os.getpid()}.{tag}")
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            cls(path).remove()
            os.mkdir(path, 0o755)
        except OSError:
            return None
        return cls(path)

    def enter(self) -> None:
        """In a child before exec: move it here."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write("0")

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def kill_all(self) -> int:
        """SIGKILL everything in it (cgroup.kill where the kernel has it, 5.14+); how many there were."""
        pids = self.pids()
        if not pids:
            return 0
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            for _ in range(50):  # forks racing the kill: again until it is empty
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if not self.pids():
                    break
                time.sleep(0.01)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(pids)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def mount_point() -> str | None:
    """Where the cgroup v2 hierarchy is mounted, if it is."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                if post.split(" ", 1)[0] == "cgroup2":
                    return pre.split(" ")[4].replace("\\040", " ")
    except OSError:
        pass
    return None


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - KEEP))
        data = f.read()
    return ("[...]" if size > KEEP else "") + data.decode("utf-8", "replace")


def run_one(w: dict, cg: Cgroup | None, scratch: str) -> dict:
    out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        p = subprocess.Popen(["/bin/sh", "-c", w["command"]], cwd=w["cwd"], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=err, start_new_session=True, preexec_fn=cg.enter if cg else None)
        timed_out = False
        try:
            status = p.wait(timeout=w["timeout"])
        except subprocess.TimeoutExpired:
            timed_out = True
            if cg:
                cg.kill_all()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = p.wait()
        left = cg.kill_all() if cg else 0  # what it left running (a daemon, a `cmd &`): killed too
        took = time.monotonic() - start
    stderr = _tail(err_path)
    return {"status": status, "timed_out": timed_out, "seconds": round(took, 3), "left_running": left,
            "not_found": status == NOT_FOUND and "not found" in stderr, "stdout": _tail(out_path),
            "stderr": stderr}


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    cg = Cgroup(spec["cgroup"]) if spec.get("cgroup") else None
    results = []
    scratch = tempfile.mkdtemp(prefix="hookql-wl-")
    try:
        for w in spec["workloads"]:
            results.append(run_one(w, cg, scratch))
    finally:
        for n in ("stdout", "stderr"):
            try:
                os.unlink(os.path.join(scratch, n))
            except OSError:
                pass
        os.rmdir(scratch)
        with open(spec["out"], "w") as f:
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
