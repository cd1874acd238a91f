"""A case's workloads, run one after another in a cgroup of their own.

    python3 -m hookql.testing.workloads SPEC.json

`hookql test` starts this once every probe is attached (it is the run's -c
command), so the run ends when the last workload has.  Each command runs
with /bin/sh in the case file's directory, inside the case's cgroup: the
programs count only that cgroup's tasks (scope workload), and at a timeout
(or when a command leaves processes behind) everything in it is killed,
so nothing a case started outlives it (a cgroup the workload made inside
its own goes too).  The results go to SPEC's "out" file, in a directory only
HookQL can write; stdout and stderr are read through pipes and only their
last 16 KiB are kept: a workload cannot fill a disk with its output.  A
command that cannot even start is a result too (its error), never a gap.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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
        """Every process in it, in the cgroups below it too."""
        out = []
        for root, _, _ in os.walk(self.path):
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return out

    def kill_all(self) -> int:
        """SIGKILL everything in it and below it (cgroup.kill where the kernel has it, 5.14+); how many there
        were."""
        pids = self.pids()
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                f.write("1")  # the cgroups below it too
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

    def remove(self) -> str | None:
        """Kill what is in it, remove it and the cgroups made below it; why it could not, if it could not."""
        self.kill_all()
        for _ in range(100):
            for root, dirs, _ in os.walk(self.path, topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except OSError:
                        pass
            try:
                os.rmdir(self.path)
                return None
            except FileNotFoundError:
                return None
            except OSError as exc:
                why = exc.strerror
                time.sleep(0.02)
        return f"the cgroup {self.path} could not be removed ({why}): something the workload left is in it"


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


class _Tail:
    """The last KEEP bytes of a pipe, read by a thread until it closes."""

    def __init__(self, pipe):
        self.pipe, self.data, self.size = pipe, bytearray(), 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := self.pipe.read1(65536):
            self.size += len(chunk)
            self.data += chunk
            if len(self.data) > 2 * KEEP:
                del self.data[:-KEEP]

    def text(self) -> tuple[str, bool]:
        """(the tail, decoded; whether earlier output was left out)."""
        self.thread.join(2)  # a process that left the cgroup may still hold the pipe: not waited for
        return bytes(self.data[-KEEP:]).decode("utf-8", "replace"), self.size > KEEP


def run_one(w: dict, cg: Cgroup | None) -> dict:
    start = time.monotonic()
    try:
        p = subprocess.Popen(["/bin/sh", "-c", w["command"]], cwd=w["cwd"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=cg.enter if cg else None)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return {"error": f"it could not be started: {exc}"}
    out, err = _Tail(p.stdout), _Tail(p.stderr)
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
    (stdout, cut_out), (stderr, cut_err) = out.text(), err.text()
    p.stdout.close(), p.stderr.close()
    return {"status": status, "timed_out": timed_out, "seconds": round(took, 3), "left_running": left,
            "not_found": status == NOT_FOUND and "not found" in stderr, "stdout": stdout, "stderr": stderr,
            "cut": cut_out or cut_err}


def main(spec_path: str) -> int:
    # Ctrl-C is hookql's to handle (it ends the run, then this); a workload's `kill -INT $PPID` changes nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(spec_path) as f:
        spec = json.load(f)
    cg = Cgroup(spec["cgroup"]) if spec.get("cgroup") else None
    results = []
    try:
        for w in spec["workloads"]:
            try:
                results.append(run_one(w, cg))
            except Exception as exc:  # recorded as this workload's result: the case errs, it does not pass
                results.append({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        with open(spec["out"], "w") as f:
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
