"""Runs inside the VM: `hookql run` and `hookql serve` as users run them, against real kprobes and
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
import tempfile
import time

HOOKQL = sys.argv[1:]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIX = "hqmix"

ENFORCE = "on lsm:socket_connect where dport == 4444 { deny }"
TYPED = ('on kprobe:tcp_connect where comm == "hqmix" { emit comm, family, daddr, dport }\n'
         'on lsm:socket_connect where comm == "hqmix" and family == AF_INET6 { count by daddr, dport }')
SCRIPTS = {"design_card": ["run", os.path.join(REPO, "examples", "design_card.hq")],
           "typed": ["run", "-e", TYPED]}

# kretprobes that read their arguments (saved at entry), and a probe list: examples/tcpconnect.hq and
# tcpaccept.hq narrowed to one comm, and tcp_sendmsg's size at its return; bpftrace 0.17 alongside.
TCP = "hqtcp"
N4, N6 = 3, 2  # connects (each accepted, each sending once) over IPv4 and IPv6
SIZES = [100, 2000, 100, 7, 30000]  # the bytes each connection sends, in one send(2)
WAIT = "hqwait"  # blocked in accept(2) before the probes attach, then accepts once more
WAIT_CONNECTS = 2  # connects to hqwait's listener, from this process


def _narrowed(example: str, where: str) -> str:
    with open(os.path.join(REPO, "examples", f"{example}.hq"), encoding="utf-8") as f:
        text = f.read()
    assert text.count(where) == 1, (example, where)
    return text.replace(where, f'{where} and comm == "{TCP}"')


def tcp_scripts() -> dict[str, str]:
    """name -> script text, run with -e (the host compiles the same texts)."""
    return {"tcpconnect": _narrowed("tcpconnect", "where retval == 0"),
            "tcpaccept": _narrowed("tcpaccept", "where retval != 0"),
            # an argument by value; and a call under way when the probes attach (its return is not seen)
            "args": f'on kretprobe:tcp_sendmsg where comm == "{TCP}" {{ sum(size); count by retval }}\n'
                    f'on kretprobe:inet_csk_accept where comm == "{WAIT}" {{ count by flags }}'}


# one block per probe: bpftrace 0.17 runs one of two blocks on the same kretprobe twice and the other never
BPFTRACE = f"""
kprobe:tcp_v4_connect, kprobe:tcp_v6_connect /comm == "{TCP}"/ {{ @sk[tid] = arg0; }}
kretprobe:tcp_v4_connect /@sk[tid]/ {{
  $p = ((struct sock *)@sk[tid])->__sk_common.skc_dport;
  @connect[4, retval] = count(); @dport[($p >> 8) | (($p & 0xff) << 8)] = count(); delete(@sk[tid]);
}}
kretprobe:tcp_v6_connect /@sk[tid]/ {{
  $p = ((struct sock *)@sk[tid])->__sk_common.skc_dport;
  @connect[6, retval] = count(); @dport[($p >> 8) | (($p & 0xff) << 8)] = count(); delete(@sk[tid]);
}}
kretprobe:inet_csk_accept /comm == "{TCP}" || comm == "{WAIT}"/ {{
  @accept[comm, ((struct sock *)retval)->__sk_common.skc_num] = count();
}}
kprobe:tcp_sendmsg /comm == "{TCP}"/ {{ @size = sum(arg2); }}
kretprobe:tcp_sendmsg /comm == "{TCP}"/ {{ @sent[retval] = count(); }}
"""


def start(args: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(HOOKQL + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line, deadline = "", time.monotonic() + 300
    while "Attached" not in line and time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            raise RuntimeError(f"hookql exited {p.returncode}: {p.stderr.read()}")
    return p


def start_all(cmds: dict[str, list[str]], flags: str) -> dict[str, subprocess.Popen]:
    """Start every command at once (their start-ups overlap), then wait until each has attached: hookql says
    `Attached` on stderr once it has; bpftrace prints `Attaching N probes...` before it attaches, so it runs
    bpftrace_child (-c), which it starts only once every probe is attached, and which says so in FLAGS."""
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in cmds.items()}
    deadline = time.monotonic() + 600

    def failed(k, p, why=None):
        for q in procs.values():
            q.kill()
        raise RuntimeError(f"{k} {why or f'exited {p.returncode}'}: {p.stderr.read()[-2000:]}")

    for k, p in procs.items():
        if cmds[k][0] == "bpftrace":
            while not os.path.exists(os.path.join(flags, "ready")) and time.monotonic() < deadline:
                if p.poll() is not None:
                    failed(k, p)
                time.sleep(0.1)
            if not os.path.exists(os.path.join(flags, "ready")):
                failed(k, p, "had not attached after 600s")
            continue
        line = ""
        while "Attached" not in line and time.monotonic() < deadline:
            line = p.stderr.readline()
            if not line and p.poll() is not None:
                failed(k, p)
    return procs


def bpftrace_child(flags: str) -> None:
    """bpftrace's -c command: says bpftrace is attached, then waits for the go to end (bpftrace ends with it)."""
    open(os.path.join(flags, "ready"), "w").close()
    while not os.path.exists(os.path.join(flags, "go")):
        time.sleep(0.1)


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


def tcp_workload(l4, l6) -> list[dict]:
    """N4 IPv4 and N6 IPv6 connects, each accepted and sending SIZES[i] bytes once, as comm hqtcp (in a
    thread-free child); what each connection was, as the sockets say."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(15, TCP.encode(), 0, 0, 0)
        conns = []
        for i, (family, lst) in enumerate([(socket.AF_INET, l4)] * N4 + [(socket.AF_INET6, l6)] * N6):
            c = socket.socket(family)
            c.connect(lst.getsockname()[:2])
            a, _ = lst.accept()
            sent = c.send(b"x" * SIZES[i])
            conns.append({"pid": os.getpid(), "family": "AF_INET" if family == socket.AF_INET else "AF_INET6",
                          "client": list(c.getsockname()[:2]), "server": list(a.getsockname()[:2]), "sent": sent})
            c.close()
            a.close()
        os.write(w, json.dumps(conns).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        conns = json.loads(f.read())
    os.waitpid(pid, 0)
    return conns


def blocked_accepter(lst) -> tuple[int, str]:
    """A child (comm hqwait) that accepts WAIT_CONNECTS times on lst; returns once it sleeps in the first: its pid
    and where it sleeps (/proc/PID/wchan)."""
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(15, WAIT.encode(), 0, 0, 0)
        for _ in range(WAIT_CONNECTS):
            lst.accept()[0].close()
        os._exit(0)
    wchan, deadline = "", time.monotonic() + 120
    while "accept" not in wchan and "wait_for_connect" not in wchan and time.monotonic() < deadline:
        time.sleep(0.1)
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    return pid, wchan


def scenario_tcp() -> dict:
    l4 = listener(socket.AF_INET, ("127.0.0.1", 0))
    l6 = listener(socket.AF_INET6, ("::1", 0))
    lw = listener(socket.AF_INET, ("127.0.0.1", 0))
    waiter, wchan = blocked_accepter(lw)
    cmds = {name: HOOKQL + ["run", "--format", "json", "-e", text] for name, text in tcp_scripts().items()}
    flags = tempfile.mkdtemp(prefix="hqbt-")
    child = f"{sys.executable} {os.path.abspath(__file__)} --bpftrace-child {flags}"  # bpftrace splits at spaces
    cmds["bpftrace"] = ["bpftrace", "-e", BPFTRACE, "-c", child]
    procs = start_all(cmds, flags)
    conns = tcp_workload(l4, l6)
    for _ in range(WAIT_CONNECTS):
        connect(socket.AF_INET, lw.getsockname())
    os.waitpid(waiter, 0)
    time.sleep(1)
    out = {"scenario": "tcp", "conns": conns, "waiter_wchan": wchan, "waiter_port": lw.getsockname()[1]}
    open(os.path.join(flags, "go"), "w").close()  # bpftrace ends with its -c command
    for name, p in procs.items():  # all stop at once, each printing its totals
        if name != "bpftrace":
            p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        o, e = p.communicate(timeout=300)
        rc = p.returncode
        out[name] = {"rc": rc, "stderr": e[-3000:], "stdout": o if name == "bpftrace" else None,
                     "output": [json.loads(l) for l in o.splitlines() if l.startswith("{")] if name != "bpftrace"
                     else []}
    l4.close(), l6.close(), lw.close()
    return out


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


# `hookql serve` with an LSM deny rule, reloaded while connects run: each reload changes the deny clause (so its
# program is replaced) and the script (so its count clause is too); the host compiles exactly these texts.
SERVE_DIR = "/tmp/hqvm-serve"
SERVE_FILE = f"{SERVE_DIR}/deny.hq"
SERVE_COUNT = "on lsm:socket_connect where dport == 4444 { count by comm }\n"
SERVE_TEXTS = ["on lsm:socket_connect where dport == 4444 { deny }\n" + SERVE_COUNT,
               "on lsm:socket_connect where dport == 4444 and family == AF_INET { deny }\n" + SERVE_COUNT]
SERVE_RELOADS = 4  # with --enforce, while the connect loop runs
SERVE_LISTEN = "127.0.0.1:19437"
LOOP = "hqloop"


def connect_loop() -> tuple[int, int, int]:
    """A child (comm hqloop) connecting to 127.0.0.1:4444 back to back until told to stop: (pid, the fd that
    tells it to stop (close it), the fd its outcomes come from as JSON {outcome: n}) once it has tried once."""
    stop_r, stop_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        import select

        os.close(stop_w), os.close(res_r)
        ctypes.CDLL(None).prctl(15, LOOP.encode(), 0, 0, 0)
        seen: dict[str, int] = {}
        while True:
            got = connect(socket.AF_INET, ("127.0.0.1", 4444))
            seen[got] = seen.get(got, 0) + 1
            if sum(seen.values()) == 1:
                os.write(res_w, b"\n")  # tried once
            if select.select([stop_r], [], [], 0)[0]:
                break
        os.write(res_w, json.dumps(seen).encode())
        os._exit(0)
    os.close(stop_r), os.close(res_w)
    assert os.read(res_r, 1) == b"\n"
    return pid, stop_w, res_r


def end_loop(loop) -> dict[str, int]:
    pid, stop_w, res_r = loop
    os.close(stop_w)
    with os.fdopen(res_r) as f:
        seen = json.loads(f.read())
    os.waitpid(pid, 0)
    return seen


def scrape() -> list:
    """/metrics as [name, labels, value] samples."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{SERVE_LISTEN}/metrics", timeout=60) as r:
        text = r.read().decode()
    return [[s.name, s.labels, s.value] for f in text_string_to_metric_families(text) for s in f.samples]


def drained_scrape() -> list:
    """A scrape after two more drains than when called: everything counted before the call is in the totals."""
    drains = lambda m: sum(v for n, _, v in m if n == "hookql_drains_total")
    first = drains(scrape())
    while True:
        time.sleep(0.5)
        m = scrape()
        if drains(m) >= first + 2:
            return m


def scenario_serve(enforce: bool) -> dict:
    """enforce: SERVE_RELOADS reloads while hqloop connects to the denied port; else: connects, one reload,
    connects (deny only counts)."""
    t0 = time.monotonic()
    subprocess.run(["rm", "-rf", SERVE_DIR], check=True)
    os.makedirs(SERVE_DIR)

    def write(i: int) -> None:
        with open(SERVE_FILE + ".tmp", "w") as f:
            f.write(SERVE_TEXTS[i % 2])
        os.rename(SERVE_FILE + ".tmp", SERVE_FILE)  # whole, as a deploy tool writes it

    write(0)
    lst = listener(socket.AF_INET, ("127.0.0.1", 4444))
    p = subprocess.Popen(HOOKQL + ["serve", "--listen", SERVE_LISTEN, "--drain-interval", "1s", SERVE_DIR]
                         + (["--enforce"] if enforce else []),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []

    def wait_log(word: str) -> str:
        while True:
            line = p.stderr.readline()
            if not line:
                raise RuntimeError(f"hookql serve exited {p.wait()}: {''.join(log)[-2000:]}")
            log.append(line)
            if word in line or "error" in line:
                return line

    out: dict = {"scenario": f"serve,enforce={enforce}", "started": wait_log("serving"), "reloads": [],
                 "seconds": {"start": round(time.monotonic() - t0, 1)}}
    if enforce:
        loop = connect_loop()
        for i in range(1, SERVE_RELOADS + 1):
            write(i)
            p.send_signal(signal.SIGHUP)
            out["reloads"].append(wait_log("reloaded"))
        seen = end_loop(loop)
    else:
        seen = {}
        for i in range(2):
            for _ in range(3):
                got = connect(socket.AF_INET, ("127.0.0.1", 4444))
                seen[got] = seen.get(got, 0) + 1
            if i == 0:
                write(1)
                p.send_signal(signal.SIGHUP)
                out["reloads"].append(wait_log("reloaded"))
    out["connects"] = seen
    out["seconds"]["reloads"] = round(time.monotonic() - t0, 1)
    m = drained_scrape()
    out["metrics"] = [s for s in m if s[0].startswith(("hookql_deny_total", "hookql_reloads_total",
                                                       "hookql_deny_lsm_socket_connect"))]
    rc, _, err = stop(p)
    time.sleep(0.5)
    out["after"] = connect(socket.AF_INET, ("127.0.0.1", 4444))
    progs = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    lst.close()
    out["seconds"]["all"] = round(time.monotonic() - t0, 1)
    out.update(rc=rc, stderr=("".join(log) + err)[-3000:], left_attached="hq_probe" in progs)
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["--bpftrace-child"]:
    bpftrace_child(sys.argv[2])
elif __name__ == "__main__":
    for fn, arg in ((scenario_mixed, ("design_card",)), (scenario_mixed, ("typed",)), (scenario_tcp, ()),
                    (scenario_enforce, (True, "term")), (scenario_enforce, (False, "term")),
                    (scenario_enforce, (True, "kill")), (scenario_enforce, (True, "exit")),
                    (scenario_serve, (True,)), (scenario_serve, (False,))):
        try:
            print(json.dumps(fn(*arg)), flush=True)
        except Exception as exc:  # one broken scenario must not hide the others' results
            print(json.dumps({"scenario": f"{fn.__name__}{arg}", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
