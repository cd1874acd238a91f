import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hookql import kernel as K
from hookql.diagnostics import Diagnostics
from hookql.pipeline import check_source
from hookql.source import Source

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.hq"))
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def k61():
    return K.reference("6.1")


@pytest.fixture(scope="session")
def k618():
    return K.reference("6.18")


@pytest.fixture(scope="session")
def running():
    if not K.RUNNING_BTF.exists():
        pytest.skip("this kernel exposes no BTF")
    return K.running()


@pytest.fixture(scope="session")
def tracefs(running):
    """The running kernel's tracefs, mounted if we are root and it is not."""
    if running.tracefs() is None and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
    path = running.tracefs()
    if path is None:
        pytest.skip("tracefs is not available (needs root)")
    return path


def check(text: str, kernel, name: str = "t.hq") -> Diagnostics:
    """Parse and check text; the diagnostics, in source order."""
    result = check_source(Source(name, text), kernel)
    return Diagnostics(result.diagnostics.sorted())


def errors(text: str, kernel) -> list:
    return [d for d in check(text, kernel) if d.is_error]


def one_error(text: str, kernel):
    errs = errors(text, kernel)
    assert len(errs) == 1, "\n".join(d.render() for d in errs) or "no error"
    return errs[0]


def hookql_cmd() -> list[str]:
    """The hookql command of the Python running the tests (bin/setup's .venv), whatever PATH holds."""
    beside = Path(sys.executable).with_name("hookql")
    if beside.is_file():
        return [str(beside)]
    return [sys.executable, "-m", "hookql"]


def held_programs(pid: int) -> set[int]:
    """The ids of the BPF programs process `pid` holds (program and link descriptors): its own, never
    anything else on the host that happens to share a name."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for f in fdinfo.iterdir() if fdinfo.is_dir() else ():
        try:
            text = f.read_text()
        except OSError:
            continue  # closed meanwhile
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return ids


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bpftrace_attached(program: str, env=None) -> subprocess.Popen:
    """bpftrace running `program`, returned once every probe is attached: a BEGIN block runs only then, and
    bpftrace 0.17 prints "Attaching N probes..." before it attaches.  The test fails when it does not start."""
    bt = subprocess.Popen(["bpftrace", "-e", 'BEGIN { printf("hq-ready\\n"); }\n' + program],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = [bt.stdout.readline() for _ in range(2)]  # "Attaching N probes...", then BEGIN's line
    if "hq-ready" not in seen[-1]:
        bt.kill()
        pytest.fail(f"bpftrace did not attach: {''.join(seen)}{bt.stderr.read()}")
    return bt


class BpftracePrinting:
    """bpftrace running a program that prints per event (printf), attached (its BEGIN ran), its lines
    collected as it prints them.  It reads its perf buffer in rounds, and a SIGINT can end it before it read
    the last events: wait `until` the lines a workload made are all there, then `stop`."""

    def __init__(self, program: str):
        import threading

        self.proc = bpftrace_attached(program)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    def until(self, done, timeout: float = 30) -> None:
        """Wait until done(the lines so far) (or timeout seconds: the test's own assertion then says what is
        missing)."""
        import time

        deadline = time.monotonic() + timeout
        while not done(list(self.lines)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> str:
        import signal

        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=60)
        return "".join(self.lines)
