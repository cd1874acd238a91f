"""deploy/: the systemd unit, the Containerfile and the Kubernetes manifests, checked without a container
runtime or a cluster.

- The unit passes `systemd-analyze verify` (with ExecStart pointing at this checkout's hookql: verify fails
  on a missing binary), alone and with the enforce drop-in, and the merged properties systemd computes hold
  the capabilities we mean; the account from hookql.sysusers has the home StateDirectory= makes.
- Every `hookql serve` command line (the unit's, the drop-in's, the image's ENTRYPOINT + CMD, the
  DaemonSet's args after that ENTRYPOINT) parses with the real CLI parser (hookql.cli._parser).
- The ConfigMap's scripts pass `hookql check --kernel 6.1` (the CLI, as a user would run it).
- As root: the unit's capabilities, given to an unprivileged uid the way setpriv does in the image, are
  enough to attach the ConfigMap's scripts, and each of them is needed; what that run calls is inside the
  unit's SystemCallFilter= (traced with strace).
"""
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from conftest import REPO, free_port, hookql_cmd  # noqa: E402

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "hookql.service"
ENFORCE = DEPLOY / "hookql.service.d" / "enforce.conf"
SYSUSERS = DEPLOY / "hookql.sysusers"
CONTAINERFILE = DEPLOY / "Containerfile"
K8S = DEPLOY / "kubernetes"
INSTALLED = "/opt/hookql/venv/bin/hookql"  # where the unit and the image run hookql from
BASE_CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"}

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to run with chosen capabilities")


# -- reading the files -------------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """A unit file's [Service] settings, every assignment of each key in order (systemd's lists merge)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def merged_caps(*values: str) -> set[str]:
    caps: set[str] = set()
    for v in values:
        if v == "":
            caps.clear()
        else:
            caps |= set(v.split())
    return caps


def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None] for p in sorted(K8S.glob("*.yaml"))}


def one(kind: str) -> dict:
    found = [d for docs in manifests().values() for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, cur = [], ""
    for raw in CONTAINERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def instr(name: str) -> list[str]:
    return [args for i, args in containerfile() if i == name]


def exec_form(name: str) -> list[str]:
    (args,) = instr(name)
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), f"{name} is not in exec form"
    return value


def entrypoint_parts() -> tuple[list[str], list[str]]:
    """The image's ENTRYPOINT split at the hookql binary: (setpriv's part, hookql's arguments)."""
    ep = exec_form("ENTRYPOINT")
    assert INSTALLED in ep, ep
    i = ep.index(INSTALLED)
    return ep[:i], ep[i + 1:]


def setpriv_caps(prefix: list[str], flag: str) -> set[str]:
    (value,) = [a.split("=", 1)[1] for a in prefix if a.startswith(flag + "=")]
    return {"CAP_" + c[1:].upper() for c in value.split(",") if c.startswith("+")}


def parse_cli(argv: list[str]):
    """argv (after `hookql`) through the real CLI parser; a failure shows argparse's message."""
    import contextlib
    import io

    from hookql import cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = cli._parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"hookql {shlex.join(argv)}: the CLI refuses it (exit {exc.code}):\n{err.getvalue()}")
    assert getattr(ns, "func", None) is not None, argv
    return ns


def has_serve() -> bool:
    import contextlib
    import io

    from hookql import cli

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            cli._parser().parse_args(["serve", "--help"])
    except SystemExit as exc:
        return exc.code == 0
    return True


def configmap_scripts() -> dict[str, str]:
    return one("ConfigMap")["data"]


# -- systemd -----------------------------------------------------------------------------------------------


def unit_copy(tmp_path: Path, with_dropin: bool) -> Path:
    """The unit (and drop-in) with ExecStart on this checkout's hookql, which exists; verify checks that."""
    exe = hookql_cmd()[0]
    assert os.path.isabs(exe) and os.access(exe, os.X_OK), exe
    (tmp_path / "hookql.service").write_text(UNIT.read_text().replace(INSTALLED, exe))
    if with_dropin:
        (tmp_path / "hookql.service.d").mkdir()
        (tmp_path / "hookql.service.d" / "enforce.conf").write_text(ENFORCE.read_text().replace(INSTALLED, exe))
    return tmp_path / "hookql.service"


def verify(unit: Path, debug: bool = False) -> subprocess.CompletedProcess:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_LOG_LEVEL="debug" if debug else "notice")
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          env=env, timeout=120)


def verify_clean(unit: Path) -> subprocess.CompletedProcess:
    """verify passes and says nothing about our files (unknown keys and bad values are only warnings)."""
    r = verify(unit)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "hookql" in ln]
    assert not ours, "\n".join(ours)
    return verify(unit, debug=True)


def dumped(r: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """The properties systemd computed for hookql.service (its debug dump: drop-ins merged)."""
    text = r.stdout + r.stderr
    start = text.find("-> Unit hookql.service:")
    if start < 0:
        pytest.skip("this systemd-analyze prints no unit dump")
    props: dict[str, list[str]] = {}
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("\t\t") and not line.startswith("\t\t\t"):
            break
        key, sep, value = line.strip().partition(": ")
        if sep:
            props.setdefault(key, []).append(value)
    return props


def test_unit_verifies_and_its_capabilities_are_the_base_set(tmp_path):
    props = dumped(verify_clean(unit_copy(tmp_path, with_dropin=False)))
    assert {"CAP_" + c.upper()[4:] for c in props["CapabilityBoundingSet"][0].split()} == BASE_CAPS
    assert {"CAP_" + c.upper()[4:] for c in props["AmbientCapabilities"][0].split()} == BASE_CAPS
    assert props["User"] == ["hookql"]
    assert props["ProtectSystem"] == ["strict"] and props["ProtectHome"] == ["yes"]
    assert props["PrivateTmp"] == ["yes"] and props["ProtectKernelTunables"] == ["yes"]
    assert props["CacheDirectory"] == ["hookql"] and props["Environment"] == ["XDG_CACHE_HOME=/var/cache"]
    assert "bpf" in props["SystemCallFilter"][0].split() and "perf_event_open" in props["SystemCallFilter"][0].split()
    assert any("/bin/kill -HUP" in v for v in props["Command Line"])


def test_unit_with_the_enforce_dropin_adds_sys_admin_and_enforce(tmp_path):
    props = dumped(verify_clean(unit_copy(tmp_path, with_dropin=True)))
    assert any(p.endswith("enforce.conf") for p in props["DropIn Path"])
    assert {"CAP_" + c.upper()[4:] for c in props["CapabilityBoundingSet"][0].split()} == BASE_CAPS | {"CAP_SYS_ADMIN"}
    assert {"CAP_" + c.upper()[4:] for c in props["AmbientCapabilities"][0].split()} == BASE_CAPS | {"CAP_SYS_ADMIN"}
    (start,) = [v for v in props["Command Line"] if " serve " in v]
    assert "--enforce" in start.split()


def test_unit_settings():
    s = unit_settings(UNIT)
    assert s["User"] == ["hookql"] and s["Group"] == ["hookql"]
    assert merged_caps(*s["AmbientCapabilities"]) == BASE_CAPS
    assert merged_caps(*s["CapabilityBoundingSet"]) == BASE_CAPS  # so no CAP_SYS_ADMIN by default
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                       ("ProtectControlGroups", "yes"), ("CacheDirectory", "hookql"), ("CacheDirectoryMode", "0700"),
                       ("StateDirectory", "hookql"), ("Restart", "on-failure"), ("LimitMEMLOCK", "infinity"),
                       ("ExecReload", "/bin/kill -HUP $MAINPID"), ("Environment", "XDG_CACHE_HOME=%C")]:
        assert s.get(key) == [value], key
    assert "DynamicUser" not in s  # the cache key lives in the account's home: a fixed account
    (start,) = s["ExecStart"]
    argv = shlex.split(start)
    assert argv[0] == INSTALLED
    assert argv[1:] == ["serve", "--listen", "127.0.0.1:9437", "/etc/hookql/scripts"]
    parse_cli(argv[1:])


def test_enforce_dropin_settings():
    s = unit_settings(ENFORCE)
    assert merged_caps(*s["AmbientCapabilities"]) == {"CAP_SYS_ADMIN"}
    assert merged_caps(*s["CapabilityBoundingSet"]) == {"CAP_SYS_ADMIN"}
    assert s["ExecStart"][0] == ""  # resets the unit's, else systemd refuses two for Type=exec
    argv = shlex.split(s["ExecStart"][1])
    assert argv[0] == INSTALLED and argv[1] == "serve" and "--enforce" in argv
    parse_cli(argv[1:])


def test_sysusers_account_has_the_state_directory_as_home(tmp_path):
    if not shutil.which("systemd-sysusers"):
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    (entry,) = [ln.split(":") for ln in (tmp_path / "etc" / "passwd").read_text().splitlines()
                if ln.startswith("hookql:")]
    assert entry[0] == "hookql" and int(entry[2]) != 0
    # HookQL keeps its cache key under the home the password database gives (README "Security")
    assert entry[5] == "/var/lib/" + unit_settings(UNIT)["StateDirectory"][0]
    assert entry[6] == "/usr/sbin/nologin"


# -- Containerfile -----------------------------------------------------------------------------------------


def setup_packages() -> set[str]:
    m = re.search(r"APT_PACKAGES=\(([^)]*)\)", (REPO / "bin" / "setup").read_text())
    return set(m.group(1).split())


RUNTIME_PACKAGES = {"libbpf1", "libbpf-dev", "clang", "llvm", "bpftool", "python3-venv"}
TEST_ONLY_PACKAGES = {"qemu-system-x86", "busybox-static", "cpio", "bpftrace", "tmux"}


def test_containerfile_base_and_packages():
    (base,) = instr("FROM")
    assert re.fullmatch(r"debian:12(-slim)?|debian:bookworm(-slim)?", base), base
    assert RUNTIME_PACKAGES <= setup_packages()  # still what bin/setup installs
    installs = [a for a in instr("RUN") if "apt-get install" in a]
    assert installs
    words = set(" ".join(installs).split())
    assert RUNTIME_PACKAGES <= words
    assert not (TEST_ONLY_PACKAGES & words)


def test_containerfile_installs_the_project_without_test_extras():
    copied = set()
    for args in instr("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            copied.add(src.rstrip("/"))
    import tomllib

    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = set(py["tool"]["setuptools"]["package-dir"].values()) | {"pyproject.toml", py["project"]["readme"]}
    needed |= {f.split("/")[0] for f in py["tool"]["setuptools"]["script-files"]}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    (pip,) = [a for a in instr("RUN") if "pip install" in a]
    assert "venv" in pip and not re.search(r"\[[^\]]*test", pip) and " -e " not in pip


def test_containerfile_entrypoint_is_hookql_serve_as_an_unprivileged_user():
    prefix, hq_args = entrypoint_parts()
    assert prefix[0] == "setpriv" and prefix[-1] == "--"
    assert "--reuid=hookql" in prefix and "--regid=hookql" in prefix and "--no-new-privs" in prefix
    assert any("useradd" in a and a.split()[-1] == "hookql" for a in instr("RUN"))
    for flag in ("--inh-caps", "--ambient-caps", "--bounding-set"):
        assert setpriv_caps(prefix, flag) == BASE_CAPS, flag  # the unit's set, no CAP_SYS_ADMIN
    assert hq_args == ["serve"]
    cmd = exec_form("CMD")
    assert cmd == ["--listen", "0.0.0.0:9437", "/etc/hookql/scripts"]
    parse_cli(hq_args + cmd)
    (expose,) = instr("EXPOSE")
    assert expose.split() == ["9437"]
    (env,) = [a for a in instr("ENV") if a.startswith("XDG_CACHE_HOME")]
    assert env.split("=", 1)[1] == "/var/cache/hookql"
    assert any("-o hookql" in a and "-m 0700 /var/cache/hookql/hookql" in a for a in instr("RUN"))


# -- Kubernetes --------------------------------------------------------------------------------------------


def test_manifests_parse_and_kustomization_lists_them():
    ms = manifests()
    kust = ms.pop("kustomization.yaml")[0]
    assert sorted(kust["resources"]) == sorted(ms)
    for name, docs in ms.items():
        assert docs, name
        for d in docs:
            assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], name
            if d["kind"] != "Namespace":
                assert d["metadata"]["namespace"] == "hookql", name


def daemonset_container(name="hookql") -> dict:
    (c,) = [c for c in one("DaemonSet")["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def test_daemonset_args_run_hookql_serve_with_the_real_cli():
    c = daemonset_container()
    assert "command" not in c  # the image's ENTRYPOINT (setpriv, then hookql serve) stays
    _, hq_args = entrypoint_parts()
    argv = hq_args + c["args"]
    parse_cli(argv)
    assert argv[:3] == ["serve", "--listen", "0.0.0.0:9437"]
    port = int(argv[2].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert argv[-1] in mounts and mounts[argv[-1]].get("readOnly")
    vols = {v["name"]: v for v in one("DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    assert vols[mounts[argv[-1]]["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]


def test_daemonset_security_and_host_mounts():
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    c = daemonset_container()
    sc = c["securityContext"]
    assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = {"CAP_" + a for a in sc["capabilities"]["add"]}
    # the setpriv switch needs SETUID/SETGID; hookql itself gets the image's bounding set only
    prefix, _ = entrypoint_parts()
    assert added == setpriv_caps(prefix, "--bounding-set") | {"CAP_SETUID", "CAP_SETGID"}
    assert "CAP_SYS_ADMIN" not in added
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")
    vols = {v["name"]: v for v in pod["volumes"]}
    host = {m["mountPath"]: vols[m["name"]]["hostPath"]["path"] for m in c["volumeMounts"] if "hostPath" in vols[m["name"]]}
    assert host == {p: p for p in ("/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup")}
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] in host)
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz" and c[probe]["httpGet"]["port"] == "metrics", probe


def test_daemonset_cache_is_an_emptydir_made_safe_for_hookql():
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    (env,) = [a for a in instr("ENV") if a.startswith("XDG_CACHE_HOME")]
    cache = env.split("=", 1)[1]
    vols = {v["name"]: v for v in pod["volumes"]}
    (m,) = [m for m in daemonset_container()["volumeMounts"] if m["mountPath"] == cache]
    assert "emptyDir" in vols[m["name"]]
    (init,) = pod["initContainers"]
    assert [im["mountPath"] for im in init["volumeMounts"]] == [cache]
    script = init["command"][-1]
    assert f"chmod 0755 {cache}" in script and f"-o hookql -g hookql -m 0700 {cache}/hookql" in script
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}


def test_scrape_annotations_service_and_servicemonitor_agree():
    tmpl = one("DaemonSet")["spec"]["template"]
    labels = tmpl["metadata"]["labels"]
    ann = tmpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == daemonset_container()["ports"][0]["containerPort"]
    svc = one("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["port"] == int(ann["prometheus.io/port"]) and port["targetPort"] == "metrics"
    sm = one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == port["name"] and ep["path"] == "/metrics"


def test_configmap_scripts_pass_check_on_kernel_6_1(tmp_path):
    scripts = configmap_scripts()
    assert len(scripts) >= 2
    for name, text in scripts.items():
        assert name.endswith(".hq"), name
        (tmp_path / name).write_text(text)
    r = subprocess.run(hookql_cmd() + ["check", "--kernel", "6.1", *sorted(str(p) for p in tmp_path.glob("*.hq"))],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in (r.stdout + r.stderr)
    # tracepoints only: the DaemonSet's capabilities have no CAP_SYS_ADMIN for lsm: hooks
    assert not any(re.search(r"\bon\s+(lsm|kprobe|kretprobe|fentry|fexit):", t) for t in scripts.values())


# -- running with the deployed capabilities (root only) ----------------------------------------------------


@pytest.fixture
def nobody_dir(tmp_path):
    """A directory the unprivileged uid owns (its cache, the scripts), under root-owned parents."""
    nobody = pwd.getpwnam("nobody")
    d = tmp_path / "svc"
    d.mkdir(mode=0o700)
    for name, text in configmap_scripts().items():
        (d / name).write_text(text)
        (d / name).chmod(0o644)
    (d / "cache").mkdir(mode=0o700)
    for p in (d, d / "cache", *d.glob("*.hq")):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    for p in (tmp_path, *tmp_path.parents):  # pytest's tmp dirs are 0700: let the uid reach its directory
        mode = os.stat(p).st_mode
        if mode & 0o005 != 0o005:
            os.chmod(p, mode | 0o005)
    return d


def as_service(caps: set[str]) -> list[str]:
    """setpriv as the image's ENTRYPOINT runs it, for uid nobody and these capabilities."""
    prefix, _ = entrypoint_parts()
    lst = ",".join("+" + c[4:].lower() for c in sorted(caps))
    out = []
    for a in prefix:
        if a.startswith("--reuid="):
            a = "--reuid=nobody"
        elif a.startswith("--regid="):
            a = "--regid=nogroup"
        elif a.startswith("--inh-caps="):
            a = "--inh-caps=-all" + ("," + lst if lst else "")
        elif a.startswith("--ambient-caps="):
            a = "--ambient-caps=" + (lst or "-all")
        elif a.startswith("--bounding-set="):
            a = "--bounding-set=-all" + ("," + lst if lst else "")
        out.append(a)
    return out


def run_scripts(prefix: list[str], d: Path, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    """Each of the ConfigMap's scripts attached for a moment (`hookql run -d 1s`), one process per script."""
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(d / "cache"), "LANG": "C.UTF-8"}
    script = " && ".join(shlex.join([*wrap, *hookql_cmd(), "run", "-d", "1s", str(p)]) for p in sorted(d.glob("*.hq")))
    return subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, env=env, timeout=600)


@needs_root
def test_the_deployed_capabilities_attach_the_scripts_and_each_is_needed(nobody_dir):
    caps = merged_caps(*unit_settings(UNIT)["AmbientCapabilities"])
    r = run_scripts(as_service(caps), nobody_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Attached") == len(configmap_scripts()), r.stderr
    for missing in sorted(caps):
        r = run_scripts(as_service(caps - {missing}), nobody_dir)
        assert r.returncode != 0, f"attached without {missing}: it should not be in the unit"
        assert "Traceback" not in r.stderr


def filter_allows() -> set[str]:
    """The system calls the unit's SystemCallFilter= allows, its groups expanded by systemd-analyze."""
    allowed: set[str] = set()
    todo = " ".join(unit_settings(UNIT)["SystemCallFilter"]).split()
    assert not any(e.startswith("~") for e in todo)
    while todo:
        entry = todo.pop()
        if entry.startswith("@"):  # a group; groups name groups
            r = subprocess.run(["systemd-analyze", "syscall-filter", entry], capture_output=True, text=True, check=True)
            todo += [ln.strip() for ln in r.stdout.splitlines()[1:] if ln.strip() and not ln.strip().startswith("#")]
        else:
            allowed.add(entry)
    return allowed


def traced_calls(trace: Path) -> set[str]:
    return {m.group(1) for line in trace.read_text().splitlines() if (m := re.match(r"^\d+\s+([a-z_0-9]+)\(", line))}


needs_strace = pytest.mark.skipif(not shutil.which("strace") or not shutil.which("systemd-analyze"),
                                  reason="needs strace and systemd-analyze")


@needs_root
@needs_strace
def test_what_run_calls_is_inside_the_units_syscall_filter(nobody_dir):
    trace = nobody_dir / "trace"
    caps = merged_caps(*unit_settings(UNIT)["AmbientCapabilities"])
    # strace runs inside setpriv (as the service's uid), so setpriv's own uid and capability calls, which
    # systemd makes for the unit before the filter applies, are not counted; clang, a child, is.
    r = run_scripts(as_service(caps), nobody_dir, wrap=["strace", "-f", "-qq", "-A", "-o", str(trace)])
    assert r.returncode == 0, r.stderr
    used = traced_calls(trace)
    assert {"bpf", "perf_event_open"} <= used  # the trace saw the run
    assert used <= filter_allows(), f"outside SystemCallFilter=: {sorted(used - filter_allows())}"


# -- hookql serve with the deployed capabilities -----------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()


@needs_root
@needs_strace
def test_serve_with_the_images_entrypoint_as_an_unprivileged_uid(nobody_dir):
    """The image's ENTRYPOINT (setpriv, uid nobody here) runs `hookql serve` on the ConfigMap's scripts: it
    answers /healthz and /metrics, reloads on SIGHUP and stops cleanly on SIGTERM; everything it called on
    the way is inside the unit's SystemCallFilter=."""
    if not has_serve():
        pytest.fail("`hookql serve` is not in hookql/cli.py yet")
    caps = merged_caps(*unit_settings(UNIT)["AmbientCapabilities"])
    port = free_port()
    _, hq_args = entrypoint_parts()
    trace = nobody_dir / "trace"
    argv = [*as_service(caps), "strace", "-f", "-qq", "-o", str(trace),
            *hookql_cmd(), *hq_args, "--listen", f"127.0.0.1:{port}", str(nobody_dir)]
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(nobody_dir / "cache"), "LANG": "C.UTF-8"}
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        health = None
        deadline = time.monotonic() + 600  # a bound on the wait (clang compiles both scripts first), not a check
        while health is None and p.poll() is None and time.monotonic() < deadline:
            try:
                health = get(base + "/healthz")[0]
            except OSError:
                time.sleep(0.2)
        assert health == 200, p.stderr.read() if p.poll() is not None else "no /healthz answer"
        status, text = get(base + "/metrics")
        assert status == 200 and "hookql_" in text
        # hookql is strace's child: signal it, not strace
        (pid,) = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        os.kill(int(pid), signal.SIGHUP)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # the reload is counted in /metrics once done
            text = get(base + "/metrics")[1]
            if re.search(r'^hookql_reloads_total\{[^}]*result="ok"[^}]*\} [1-9]', text, re.M):
                break
            time.sleep(0.2)
        assert re.search(r'^hookql_reloads_total\{[^}]*result="ok"[^}]*\} 1(\.0)?$', text, re.M), \
            "\n".join(ln for ln in text.splitlines() if "reload" in ln)
        assert get(base + "/healthz")[0] == 200
        os.kill(int(pid), signal.SIGTERM)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    used = traced_calls(trace)
    assert {"bpf", "perf_event_open"} <= used  # the trace saw the service
    assert used <= filter_allows(), f"outside SystemCallFilter=: {sorted(used - filter_allows())}"
