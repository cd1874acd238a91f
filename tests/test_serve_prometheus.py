"""`hookql serve` scraped by a real Prometheus server (Debian's package; bin/setup installs it).

One `hookql serve` (drain interval 200 ms) and one Prometheus (scrape interval 1 s) for the module, both
started here on free ports of 127.0.0.1, with their own temporary directories, and stopped at the end.
Each test drives tracepoints it controls exactly from a thread of this process whose comm is its own
(getsid(v) for chosen v: sys_enter_getsid's `args.pid` is v; clock_nanosleep of 3 ms; connect and bind on
loopback), and each script counts only that comm.  Then the numbers are read back exactly: through
Prometheus's HTTP API (after a scrape that followed the workload), the text exposition (promtool check
metrics), the OpenMetrics exposition (prometheus_client's parser), and across many scrapes and drains
while a workload runs (every counter and bucket monotonic, the final totals exact)."""
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, hookql_cmd

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="serving needs root (tracepoints, natively)"),
    pytest.mark.skipif(not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
                       reason="needs Debian's prometheus package (bin/setup installs it)"),
]

SCRIPTS = {
    # getsid(1..8): the example (le=1:1, le=2:2, le=4:4, le=8:8, +Inf:8, sum 36)
    "counts.hq": """
on tracepoint:syscalls:sys_enter_getsid where comm == "hqp_counts" {
    count by comm as getsid_calls
    hist(args.pid) as pid_hist
    lhist(args.pid, 0, 10, 2) as pid_lhist
    avg(args.pid) as pid_avg
    min(args.pid) as pid_min
    max(args.pid) as pid_max
}
""",
    # a duration: clock_nanosleep's time in the kernel, entry to exit, by thread
    "latency.hq": """
on tracepoint:syscalls:sys_enter_clock_nanosleep where comm == "hqp_lat" { start[tid] = ts }
on tracepoint:syscalls:sys_exit_clock_nanosleep where comm == "hqp_lat" {
    hist(ts - start[tid]) as sleep_latency
    count by comm as sleeps
    delete start[tid]
}
""",
    "net.hq": """
on tracepoint:syscalls:sys_enter_connect where comm == "hqp_net" { count by comm, family, daddr, dport as connects }
on tracepoint:syscalls:sys_exit_bind where comm == "hqp_net" { count by comm, family, sport, ret as binds }
""",
    # scraped while it runs: keyed and unkeyed counters, a sum, a histogram
    "mono.hq": """
on tracepoint:syscalls:sys_enter_getsid where comm == "hqp_mono" {
    count by args.pid as mono_calls
    count as mono_events
    sum(args.pid) as mono_pid_sum
    hist(args.pid) as mono_hist
}
""",
}

LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
CLOCK_MONOTONIC = 1


def as_comm(comm: str, fn, *args):
    """fn(*args) in a new thread of this process whose comm is `comm` (prctl names the calling thread)."""
    got = {}

    def body():
        LIBC.prctl(PR_SET_NAME, comm.encode(), 0, 0, 0)
        try:
            got["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            got["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in got:
        raise got["error"]
    return got.get("value")


def wait_for(pred, what: str, timeout: float = 60.0, every: float = 0.05):
    """pred()'s first true value; a failure naming `what` past the deadline (a wait, never an assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(every)


def http_get(url: str, headers: dict | None = None, timeout: float = 10.0):
    """(status, headers, body) or None when nothing answers."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except OSError:
        return None


class Stack:
    """hookql serve and the Prometheus server scraping it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        scripts = tmp / "scripts"
        scripts.mkdir()
        for name, text in SCRIPTS.items():
            (scripts / name).write_text(text)
        self.port, self.prom_port = free_port(), free_port()
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"))
        self.serve_log = open(tmp / "serve.log", "w+")
        self.serve = subprocess.Popen(hookql_cmd() + ["serve", "--listen", f"127.0.0.1:{self.port}",
                                                      "--drain-interval", "200ms", str(scripts)],
                                      stdout=subprocess.DEVNULL, stderr=self.serve_log, env=env)
        self.prometheus = None
        self.prom_log = open(tmp / "prometheus.log", "w+")
        (tmp / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: hookql\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.port}']\n")

    def start(self) -> None:
        def healthy():
            if self.serve.poll() is not None:
                pytest.fail(f"hookql serve exited ({self.serve.returncode}):\n{self.log()}")
            got = http_get(f"{self.url}/healthz", timeout=2)
            return got is not None and got[0] == 200

        wait_for(healthy, "hookql serve's /healthz", timeout=120)
        self.prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.prom_port}",
             "--log.level=warn"],
            stdout=self.prom_log, stderr=subprocess.STDOUT, cwd=self.tmp)

        def ready():
            if self.prometheus.poll() is not None:
                self.prom_log.seek(0)
                pytest.fail(f"prometheus exited ({self.prometheus.returncode}):\n{self.prom_log.read()}")
            got = http_get(f"{self.prom_url}/-/ready", timeout=2)
            return got is not None and got[0] == 200

        wait_for(ready, "Prometheus to be ready")

    def stop(self) -> int | None:
        rc = None
        for p in (self.prometheus, self.serve):
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        rc = self.serve.returncode
        self.serve_log.close()
        self.prom_log.close()
        return rc

    def log(self) -> str:
        self.serve_log.flush()
        return (self.tmp / "serve.log").read_text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    # -- hookql serve's /metrics --
    def metrics(self, accept: str | None = None) -> tuple[str, str]:
        """(content type, body) of GET /metrics."""
        got = http_get(f"{self.url}/metrics", {"Accept": accept} if accept else None)
        assert got is not None and got[0] == 200, got
        return got[1]["Content-Type"], got[2].decode()

    def samples(self) -> dict[tuple, float]:
        """{(sample name, ((label, value), ...)): value} of one text scrape."""
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(self.metrics()[1]):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    # -- Prometheus's HTTP API --
    def api(self, path: str, **params):
        got = http_get(f"{self.prom_url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert got is not None, f"Prometheus did not answer {path}"
        body = json.loads(got[2])
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[tuple[dict, float]]:
        """An instant query: [(labels, value)]."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, promql: str) -> float:
        got = self.query(promql)
        assert len(got) == 1, (promql, got)
        return got[0][1]

    def scraped_after(self, t: float) -> None:
        """Wait until Prometheus holds a successful scrape of hookql serve that began after wall time t."""
        def done():
            got = self.query('up{job="hookql"} == 1 and timestamp(up{job="hookql"}) > %f' % t)
            return bool(got)

        wait_for(done, "a Prometheus scrape after the workload", timeout=30, every=0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("serve_prometheus"))
    try:
        s.start()
        yield s
    finally:
        rc = s.stop()
    log = (s.tmp / "serve.log").read_text()
    assert rc == 0 and "Traceback" not in log, log


# -- the workloads (each once per module; the metrics only ever grow) --

def getsids(values):
    for v in values:
        LIBC.getsid(v)


@pytest.fixture(scope="module")
def counts_run(stack):
    as_comm("hqp_counts", getsids, range(1, 9))
    t = time.time()
    stack.scraped_after(t)
    return t


SLEEPS, SLEEP_NS = 5, 3_000_000


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def sleeps():
    ts = Timespec(0, SLEEP_NS)
    for _ in range(SLEEPS):
        assert LIBC.clock_nanosleep(CLOCK_MONOTONIC, 0, ctypes.byref(ts), None) == 0


@pytest.fixture(scope="module")
def latency_run(stack):
    as_comm("hqp_lat", sleeps)
    stack.scraped_after(time.time())


def net():
    """3 connects to 127.0.0.1:P (a listener), 2 to [::1]:P6; a bind to port 0 (ok), one to P (EADDRINUSE).
    {what: port}"""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        port = lst.getsockname()[1]
        with socket.socket() as b:
            with pytest.raises(OSError) as exc:
                b.bind(("127.0.0.1", port))
            assert exc.value.errno == 98  # EADDRINUSE
        for _ in range(3):
            with socket.socket() as c:
                c.connect(("127.0.0.1", port))
            lst.accept()[0].close()
    with socket.socket(socket.AF_INET6) as lst6:
        lst6.bind(("::1", 0))
        lst6.listen(8)
        port6 = lst6.getsockname()[1]
        for _ in range(2):
            with socket.socket(socket.AF_INET6) as c:
                c.connect(("::1", port6))
            lst6.accept()[0].close()
    return {"v4": port, "v6": port6}


@pytest.fixture(scope="module")
def net_run(stack):
    ports = as_comm("hqp_net", net)
    stack.scraped_after(time.time())
    return ports


def bucket_of_rank(buckets: list[tuple[float, float]], q: float) -> tuple[float, float]:
    """(lower, upper) bounds of the bucket that holds the q-quantile's rank, from cumulative (le, count)."""
    buckets = sorted(buckets)
    rank = q * buckets[-1][1]
    lower = 0.0
    for le, n in buckets:
        if n >= rank:
            return lower, le
        lower = le
    raise AssertionError(buckets)


def buckets_of(stack, metric: str) -> list[tuple[float, float]]:
    return [(float(m["le"]), v) for m, v in stack.query(metric)]


# -- 2. the exact totals, through Prometheus --

def test_counter_by_comm(stack, counts_run):
    assert stack.query("hookql_getsid_calls_total") == [
        ({"__name__": "hookql_getsid_calls_total", "comm": "hqp_counts", "instance": f"127.0.0.1:{stack.port}",
          "job": "hookql"}, 8.0)]
    meta = stack.api("metadata")
    assert meta["hookql_getsid_calls"][0]["type"] == "counter"
    assert meta["hookql_pid_hist"][0]["type"] == "histogram"
    assert meta["hookql_pid_lhist"][0]["type"] == "histogram"
    assert meta["hookql_pid_avg"][0]["type"] == "summary"
    assert meta["hookql_pid_min"][0]["type"] == meta["hookql_pid_max"][0]["type"] == "gauge"
    assert meta["hookql_getsid_calls"][0]["help"].startswith("count by comm as getsid_calls on "
                                                              "tracepoint:syscalls:sys_enter_getsid (counts.hq:3)")


def test_log2_histogram_is_exact(stack, counts_run):
    """The issue's example: getsid(1..8) gives le=1:1, le=2:2, le=4:4, le=8:8, +Inf:8, _sum 36, _count 8."""
    got = dict(buckets_of(stack, "hookql_pid_hist_bucket"))
    assert {le: n for le, n in got.items() if le >= 1} == {1.0: 1, 2.0: 2, 4.0: 4, 8.0: 8, math.inf: 8}
    assert all(n == 0 for le, n in got.items() if le < 1)  # le=0: zero and negatives
    assert stack.value("hookql_pid_hist_sum") == 36
    assert stack.value("hookql_pid_hist_count") == 8
    # the 4th of 8 values (4) is in (2, 4]: histogram_quantile interpolates inside that bucket
    q = stack.value("histogram_quantile(0.5, hookql_pid_hist_bucket)")
    assert bucket_of_rank(list(got.items()), 0.5) == (2.0, 4.0)
    assert 2.0 < q <= 4.0


def test_linear_histogram_is_exact(stack, counts_run):
    """lhist(args.pid, 0, 10, 2): a bucket per step, `le` at each step's last integer."""
    got = dict(buckets_of(stack, "hookql_pid_lhist_bucket"))
    assert got == {1.0: 1, 3.0: 3, 5.0: 5, 7.0: 7, 9.0: 8, math.inf: 8}
    assert stack.value("hookql_pid_lhist_sum") == 36
    assert stack.value("hookql_pid_lhist_count") == 8
    q = stack.value("histogram_quantile(0.5, hookql_pid_lhist_bucket)")
    lower, upper = bucket_of_rank(list(got.items()), 0.5)
    assert (lower, upper) == (3.0, 5.0) and lower < q <= upper


def test_avg_min_max(stack, counts_run):
    assert stack.value("hookql_pid_avg_sum") == 36
    assert stack.value("hookql_pid_avg_count") == 8
    assert stack.value("hookql_pid_avg_sum / hookql_pid_avg_count") == 4.5
    assert stack.value("hookql_pid_min") == 1
    assert stack.value("hookql_pid_max") == 8


def test_duration_histogram_in_seconds(stack, latency_run):
    """Five 3 ms sleeps: a histogram named _seconds whose `le` are powers of two of nanoseconds, in seconds;
    a sleep never returns early, so nothing is at or below 2^21 ns (2.097 ms)."""
    assert stack.value("hookql_sleeps_total") == SLEEPS
    got = buckets_of(stack, "hookql_sleep_latency_seconds_bucket")
    les = [le for le, _ in got if le not in (0.0, math.inf)]
    assert les and all(le < 1 for le in les)  # seconds, not nanoseconds
    for le in les:
        ns = round(le * 1e9)
        assert ns & (ns - 1) == 0 and math.isclose(le, ns / 1e9, rel_tol=1e-12), le
    by_le = dict(got)
    assert by_le[2 ** 21 / 1e9] == 0 and by_le[math.inf] == SLEEPS
    assert stack.value("hookql_sleep_latency_seconds_count") == SLEEPS
    total = stack.value("hookql_sleep_latency_seconds_sum")
    assert SLEEPS * SLEEP_NS / 1e9 <= total < 60  # seconds
    q = stack.value("histogram_quantile(0.5, hookql_sleep_latency_seconds_bucket)")
    lower, upper = bucket_of_rank(got, 0.5)
    assert lower >= 2 ** 21 / 1e9 and lower <= q <= upper


# -- 6. labels --

def test_labels_address_port_family(stack, net_run):
    inst = {"instance": f"127.0.0.1:{stack.port}", "job": "hookql"}
    got = {tuple(sorted(m.items())): v for m, v in stack.query("hookql_connects_total")}
    want = {
        tuple(sorted({"__name__": "hookql_connects_total", "comm": "hqp_net", "family": "AF_INET",
                      "daddr": "127.0.0.1", "dport": str(net_run["v4"]), **inst}.items())): 3.0,
        tuple(sorted({"__name__": "hookql_connects_total", "comm": "hqp_net", "family": "AF_INET6",
                      "daddr": "::1", "dport": str(net_run["v6"]), **inst}.items())): 2.0,
    }
    assert got == want
    # bind to port 0 succeeded, to the listener's port failed: both counted at sys_exit_bind, by sport
    binds = {(m["family"], m["sport"]): v for m, v in stack.query("hookql_binds_total")}
    assert binds[("AF_INET", str(net_run["v4"]))] == 1
    assert binds == {("AF_INET", str(net_run["v4"])): 1, ("AF_INET", "0"): 1, ("AF_INET6", "0"): 1}


def test_errno_label_is_a_name(stack, net_run):
    rets = {(m["sport"], m["ret"]) for m, _ in stack.query("hookql_binds_total")}
    assert (str(net_run["v4"]), "-EADDRINUSE") in rets


# -- 3. promtool --

def test_promtool_check_metrics(stack, counts_run, latency_run, net_run):
    _, text = stack.metrics()
    assert "hookql_pid_hist_bucket" in text and "hookql_connects_total" in text
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr


# -- 4. OpenMetrics --

def test_openmetrics_exposition(stack, counts_run, latency_run):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    ctype, text = stack.metrics("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in text_string_to_metric_families(text)}  # raises on an invalid exposition
    f = fams["hookql_getsid_calls"]
    assert f.type == "counter"
    assert [(s.name, s.labels, s.value) for s in f.samples] == [
        ("hookql_getsid_calls_total", {"comm": "hqp_counts"}, 8)]

    def hist(name):
        f = fams[name]
        assert f.type == "histogram"
        b = {float(s.labels["le"]): s.value for s in f.samples if s.name == name + "_bucket"}
        rest = {s.name[len(name):]: s.value for s in f.samples if s.name != name + "_bucket"}
        return b, rest

    b, rest = hist("hookql_pid_hist")
    assert {le: n for le, n in b.items() if le >= 1} == {1.0: 1, 2.0: 2, 4.0: 4, 8.0: 8, math.inf: 8}
    assert rest == {"_count": 8, "_sum": 36}
    b, rest = hist("hookql_pid_lhist")
    assert b == {1.0: 1, 3.0: 3, 5.0: 5, 7.0: 7, 9.0: 8, math.inf: 8}
    assert rest == {"_count": 8, "_sum": 36}
    b, rest = hist("hookql_sleep_latency_seconds")
    assert b[2 ** 21 / 1e9] == 0 and b[math.inf] == SLEEPS and rest["_count"] == SLEEPS
    assert fams["hookql_pid_avg"].type == "summary"
    assert {s.name: s.value for s in fams["hookql_pid_avg"].samples} == {"hookql_pid_avg_count": 8,
                                                                          "hookql_pid_avg_sum": 36}
    assert fams["hookql_pid_min"].type == fams["hookql_pid_max"].type == "gauge"
    assert fams["hookql_pid_min"].samples[0].value == 1 and fams["hookql_pid_max"].samples[0].value == 8


# -- 5. monotonic across scrapes and drains, nothing lost --

MONO_KEYS = 16


def test_monotonic_across_scrapes_and_drains(stack):
    """A workload calls getsid(1..16) in rounds while this thread scrapes /metrics over and over and the
    service drains every 200 ms; it stops once five drains have happened since it began.  Every sample of
    the mono metrics (counters, buckets, _count, _sum) never decreases from one scrape to the next, no
    series disappears, and the totals at the end are exact."""
    stop = threading.Event()
    started = threading.Event()
    rounds = []

    def work():
        n = 0
        started.set()
        while not stop.is_set():
            for _ in range(20):
                for v in range(1, MONO_KEYS + 1):
                    LIBC.getsid(v)
            n += 20
        rounds.append(n)

    worker = threading.Thread(target=as_comm, args=("hqp_mono", work))
    mono = lambda samples: {k: v for k, v in samples.items() if k[0].startswith("hookql_mono_")}
    drains = lambda samples: samples[("hookql_drains_total", ())]
    first = stack.samples()
    scrapes = [mono(first)]
    worker.start()
    started.wait(10)
    try:
        def five_drains():
            s = stack.samples()
            scrapes.append(mono(s))
            return drains(s) >= drains(first) + 5

        wait_for(five_drains, "five drains while the workload runs", timeout=30, every=0.01)
    finally:
        stop.set()
        worker.join()
    scrapes.append(mono(stack.samples()))
    assert len(scrapes) >= 3
    for i, (a, b) in enumerate(zip(scrapes, scrapes[1:])):
        for key, value in a.items():
            assert key in b, f"scrape {i + 1}: {key} disappeared"
            assert b[key] >= value, f"scrape {i + 1}: {key} went from {value} to {b[key]}"
    # exact at the end (what the drains took plus what the maps hold now)
    (n,) = rounds
    final = scrapes[-1]
    calls = {dict(k[1])["args_pid"]: v for k, v in final.items() if k[0] == "hookql_mono_calls_total"}
    assert calls == {str(v): n for v in range(1, MONO_KEYS + 1)}
    assert final[("hookql_mono_events_total", ())] == n * MONO_KEYS
    assert final[("hookql_mono_pid_sum_total", ())] == n * MONO_KEYS * (MONO_KEYS + 1) // 2
    buckets = {float(dict(k[1])["le"]): v for k, v in final.items() if k[0] == "hookql_mono_hist_bucket"}
    assert {le: c for le, c in buckets.items() if le >= 1} == {1.0: n, 2.0: 2 * n, 4.0: 4 * n, 8.0: 8 * n,
                                                                16.0: 16 * n, math.inf: 16 * n}
    assert final[("hookql_mono_hist_count", ())] == n * MONO_KEYS
    # and what Prometheus scraped meanwhile: no counter reset, the same totals
    stack.scraped_after(time.time())
    assert stack.value("sum(resets(hookql_mono_calls_total[5m])) + sum(resets(hookql_mono_hist_bucket[5m]))"
                       " + sum(resets(hookql_mono_events_total[5m]))") == 0
    assert stack.value("sum(hookql_mono_calls_total)") == n * MONO_KEYS
    assert stack.value('hookql_mono_hist_bucket{le="16.0"}') == 16 * n
