"""The REPL, driven like a person would: tmux send-keys, capture-pane."""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import held_programs, hookql_cmd

pytestmark = pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed (bin/setup installs it)")
WORKLOAD = Path(__file__).with_name("workload.py")
TP = "tracepoint:syscalls:sys_enter_getsockopt"


class Screen:
    def __init__(self, tmp_path):
        self.name = "hq" + uuid.uuid4().hex[:8]
        env = {"XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color"}
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        cmd = f"cd {tmp_path} && env {exports} {' '.join(hookql_cmd())} repl; echo REPL-EXITED $?; sleep 600"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", cmd], check=True)
        self.wait_for("hq>")

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name, "-S", "-200"], capture_output=True,
                              text=True).stdout

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def type(self, text: str) -> None:
        self.send("-l", text)

    def wait_for(self, needle: str, timeout: float = 60, after: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.text()
            tail = screen.split(after)[-1] if after and after in screen else (screen if not after else "")
            if needle in tail:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never appeared; screen:\n{self.text()}")

    def repl_pid(self) -> int:
        """The REPL's process: the child of the pane's shell (env execs hookql)."""
        shell = subprocess.run(["tmux", "display", "-p", "-t", self.name, "#{pane_pid}"], capture_output=True,
                               text=True, check=True).stdout.strip()
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        return int(children[0])

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def screen(tmp_path):
    s = Screen(tmp_path)
    yield s
    s.close()


def gone(ids: set[int], timeout: float = 10) -> bool:
    """None of these programs is loaded any more (the kernel frees them after an RCU grace period)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(subprocess.run(["bpftool", "prog", "show", "id", str(i)], capture_output=True).returncode
               for i in ids):
            return True
        time.sleep(0.1)
    return False


def test_completion_error_recovery_and_meta(screen):
    screen.type("on lsm:socket_con")
    screen.send("Tab")
    screen.wait_for("on lsm:socket_connect")
    screen.type(" where dp")
    screen.send("Tab")
    screen.wait_for("where dport")
    screen.type(' == "x" { count }')
    screen.send("Enter")
    screen.wait_for("cannot compare dport")
    screen.wait_for("hq>", after="cannot compare dport")  # the session goes on
    screen.type(":describe lsm:socket_bind")
    screen.send("Enter")
    screen.wait_for("Signature: int socket_bind(struct socket *sock, struct sockaddr *address, int addrlen)")
    screen.type(":quit")
    screen.send("Enter")
    screen.wait_for("REPL-EXITED 0")


@pytest.mark.skipif(os.geteuid() != 0, reason="attaching needs root")
def test_live_clause_ctrl_c_save_and_ctrl_d(screen, tmp_path):
    comm = "hq" + uuid.uuid4().hex[:8]
    screen.type(f'on {TP} where comm == "{comm}" {{')
    screen.send("Enter")  # the block is open: a new line, not a submit
    screen.wait_for("...")
    screen.type("count by comm }")
    screen.send("Enter")
    screen.wait_for("Attached 1 probe")
    subprocess.run([sys.executable, str(WORKLOAD), comm, "6", "0"], check=True)
    screen.wait_for(f"{comm}      6")  # the live view redraws with the count
    repl = screen.repl_pid()
    live = held_programs(repl)
    assert live
    screen.send("C-c")
    screen.wait_for("hq>", after=f"{comm}      6")
    assert held_programs(repl) == set() and gone(live)  # Ctrl-C detached it
    saved = tmp_path / "saved.hq"
    screen.type(f":save {saved}")
    screen.send("Enter")
    screen.wait_for(f"saved 1 clause to {saved}")
    r = subprocess.run(hookql_cmd() + ["run", "--format", "json", str(saved), "-c",
                                       f"{sys.executable} {WORKLOAD} {comm} 4 0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (agg,) = [json.loads(l) for l in r.stdout.splitlines()]
    assert agg["rows"] == [{"key": {"comm": comm}, "value": 4}]
    # a background clause, then Ctrl-D leaves and detaches everything
    screen.type(f'on {TP} where comm == "{comm}" {{ count }} &')
    screen.send("Enter")
    screen.wait_for("[1] attached in the background")
    background = held_programs(repl)
    assert background
    screen.type(":list")
    screen.send("Enter")
    screen.wait_for("[1] on tracepoint")
    screen.send("C-d")
    screen.wait_for("REPL-EXITED 0")
    assert gone(background)


def test_without_root_it_checks_and_says_why_it_cannot_attach(tmp_path):
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop capabilities")
    name = "hq" + uuid.uuid4().hex[:8]
    cmd = (f"cd {tmp_path} && env XDG_STATE_HOME={tmp_path} setpriv --bounding-set=-all --inh-caps=-all "
           f"{' '.join(hookql_cmd())} repl; sleep 600")
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50", cmd], check=True)
    s = Screen.__new__(Screen)
    s.name = name
    try:
        s.wait_for("hq>")
        s.type(f"on {TP} {{ count }}")
        s.send("Enter")
        s.wait_for("cannot attach: loading the programs needs privileges")
        s.wait_for("hint: run as root")
    finally:
        s.close()
