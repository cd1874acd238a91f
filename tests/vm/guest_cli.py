"""Runs inside the VM: `hookql run` as users run it, against real kprobes and
LSM hooks.  Prints one JSON object per scenario.

    guest_cli.py HOOKQL_CMD...
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

HOOKQL = sys.argv[1:]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIX = "hqmix"

ENFORCE = "on lsm:socket_connect where dport == 4444 { deny }"
TYPED = ('on kprobe:tcp_connect where comm == "hqmix" { emit comm, family, daddr, dport }\n'
         'on lsm:socket_connect where comm == "hqmix" and family == AF_INET6 { count by daddr, dport }')
SCRIPTS = {"design_card": ["run", os.path.join(REPO, "examples", "design_card.hq")],
           "typed": ["run", "-e", TYPED]}


def start(args: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(HOOKQL + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line, deadline = "", time.monotonic() + 300
    while "Attached" not in line and time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            raise RuntimeError(f"hookql exited {p.returncode}: {p.stderr.read()}")
    return p


def stop(p: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str, str]:
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def listener(family, addr):
    s = socket.socket(family)
    s.bind(addr)
    s.listen()
    return s


def connect(family, addr) -> str:
    """'ok' or the errno name connect() failed with."""
    s = socket.socket(family)
    try:
        s.connect(addr)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()


def mixed_workload(l4, l6) -> None:
    """2 IPv4 and 3 IPv6 connects, as comm hqmix (in a thread-free child)."""
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(15, MIX.encode(), 0, 0, 0)
        for _ in range(2):
            connect(socket.AF_INET, l4.getsockname())
        for _ in range(3):
            connect(socket.AF_INET6, l6.getsockname()[:2])
        os._exit(0)
    os.waitpid(pid, 0)


def scenario_mixed(name: str) -> dict:
    l4 = listener(socket.AF_INET, ("127.0.0.1", 0))
    l6 = listener(socket.AF_INET6, ("::1", 0))
    p = start(SCRIPTS[name] + ["--format", "json"])
    mixed_workload(l4, l6)
    time.sleep(1)
    rc, out, err = stop(p)
    return {"scenario": name, "rc": rc, "stderr": err[-2000:], "ports": [l4.getsockname()[1], l6.getsockname()[1]],
            "output": [json.loads(l) for l in out.splitlines() if l.startswith("{")]}


def scenario_enforce(enforce: bool, how: str) -> dict:
    """how: term (SIGTERM), kill (SIGKILL) or exit (the run ends by itself when -c's command does)."""
    l4 = listener(socket.AF_INET, ("127.0.0.1", 4444))
    l5 = listener(socket.AF_INET, ("127.0.0.1", 4445))
    extra = ["-c", "sleep 5"] if how == "exit" else []
    p = start(["run", "-e", ENFORCE] + (["--enforce"] if enforce else []) + extra)
    during = {"4444": connect(socket.AF_INET, ("127.0.0.1", 4444)),
              "4445": connect(socket.AF_INET, ("127.0.0.1", 4445))}
    if how == "exit":
        out, err = p.communicate(timeout=300)
        rc = p.returncode
    else:
        rc, out, err = stop(p, signal.SIGKILL if how == "kill" else signal.SIGTERM)
    time.sleep(0.5)
    after = connect(socket.AF_INET, ("127.0.0.1", 4444))
    progs = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    l4.close(), l5.close()
    return {"scenario": f"enforce={enforce},{how}", "rc": rc, "during": during, "after": after, "output": out,
            "stderr": err[-2000:], "left_attached": "hq_probe" in progs}


if __name__ == "__main__":
    for fn, arg in ((scenario_mixed, ("design_card",)), (scenario_mixed, ("typed",)),
                    (scenario_enforce, (True, "term")), (scenario_enforce, (False, "term")),
                    (scenario_enforce, (True, "kill")), (scenario_enforce, (True, "exit"))):
        try:
            print(json.dumps(fn(*arg)), flush=True)
        except Exception as exc:  # one broken scenario must not hide the others' results
            print(json.dumps({"scenario": f"{fn.__name__}{arg}", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
