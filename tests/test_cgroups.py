"""Containers without Kubernetes: `cgroup` (printed as its path), `container` and `pod` (issue 14, item 5).

The path parsers on real-world cgroup paths of docker, containerd, CRI-O and podman (systemd and cgroupfs
drivers, kubepods slices, nesting); the cgroup2 mount from mountinfo; the resolver (walk, cache, rescan at most
once a second, removed cgroups, bounds, no symlinks) on a directory tree built here; the checker's rules; the C
event printer with a resolver given here.  As root: real cgroup v2 directories named as the runtimes name them,
a workload moved into each, `hookql run` natively on tracepoint:syscalls:sys_enter_getppid, the labels checked
exactly and the paths next to bpftrace 0.17's cgroup_path(); and `hookql serve`'s /metrics labels of the same.
"""
import ctypes
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import BpftracePrinting, errors, hookql_cmd, one_error
from test_serve import Serve, wait_for
from hookql.runtime import cgroups as C

TP = "tracepoint:syscalls:sys_enter_getppid"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and BPF programs need root")

ID = "4f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060f5e4d"  # 64 hex digits
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
UID = "6e0b9c1e-2f3a-4b5c-8d7e-9f0a1b2c3d4e"
UID_ = UID.replace("-", "_")
STATIC_UID = "8d5b2b0a6d1e1a1b2c3d4e5f6a7b8c9d"  # a static pod's uid: its config's hash


# -- the path parsers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path, container, pod", [
    # docker: systemd driver (cgroup v2's default), cgroupfs driver
    (f"/system.slice/docker-{ID}.scope", ID, None),
    (f"/docker/{ID}", ID, None),
    (f"/system.slice/docker-{ID}.scope/init.scope", ID, None),  # a sub-cgroup inside the container
    (f"/system.slice/docker-{ID}.scope/system.slice/nginx.service", ID, None),  # systemd inside
    # containerd: CRI under kubepods, systemd driver (each QoS class) and cgroupfs driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope",
     ID, UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope",
     ID, UID),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope", ID, UID),  # guaranteed
    (f"/kubepods/burstable/pod{UID}/{ID}", ID, UID),
    (f"/kubepods/besteffort/pod{UID}/{ID}", ID, UID),
    (f"/kubepods/pod{UID}/{ID}", ID, UID),
    (f"/kubepods/burstable/pod{UID}", None, UID),  # the pod's own cgroup
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice", None, UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope",
     ID, STATIC_UID),
    (f"/kubepods/burstable/pod{STATIC_UID}/{ID}", ID, STATIC_UID),
    ("/kubepods.slice/kubepods-burstable.slice", None, None),
    ("/kubepods.slice", None, None),
    # CRI-O: the container, and conmon (its monitor, charged to the pod: no container)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope", ID, UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope",
     None, UID),
    (f"/kubepods/burstable/pod{UID}/crio-{ID}", ID, UID),
    (f"/kubepods/burstable/pod{UID}/crio-conmon-{ID}", None, UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container",
     ID, UID),
    # podman: rootful (machine.slice), rootless (a user's systemd instance), conmon, a payload sub-cgroup
    (f"/machine.slice/libpod-{ID}.scope", ID, None),
    (f"/machine.slice/libpod-{ID}.scope/container", ID, None),
    (f"/machine.slice/libpod-conmon-{ID}.scope", None, None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", ID, None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container", ID, None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope", None, None),
    (f"/libpod_parent/libpod-{ID}", ID, None),  # cgroupfs driver
    # nesting: the innermost container (kind: a node is a docker container running kubelet; docker in docker)
    (f"/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope", ID, UID),
    (f"/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice", ID2, UID),
    (f"/docker/{ID2}/docker/{ID}", ID, None),
    (f"/actions_job/{ID}", ID, None),  # docker with --cgroup-parent
    # not containers
    ("/", None, None),
    ("", None, None),
    ("/init.scope", None, None),
    ("/system.slice/sshd.service", None, None),
    ("/system.slice/docker.service", None, None),
    ("/system.slice/containerd.service", None, None),
    ("/user.slice/user-1000.slice/session-3.scope", None, None),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope", None, None),
    ("/machine.slice/machine-qemu\\x2d1\\x2dvm.scope", None, None),
    (f"/system.slice/docker-{ID[:63]}.scope", None, None),  # 63 digits
    (f"/system.slice/docker-{ID}0.scope", None, None),  # 65
    (f"/system.slice/docker-{ID.upper()}.scope", None, None),  # ids are lowercase
    (f"/system.slice/docker-{ID}.service", None, None),
    (f"/pod{UID}/{ID}", ID, None),  # a pod<uid> directory not below kubepods: not a pod
    (f"/system.slice/pod{UID_}.slice", None, None),
])
def test_parsers_on_real_world_paths(path, container, pod):
    assert C.parse_container(path) == container
    assert C.parse_pod(path) == pod
    assert C.container_text(path) == (container[:12] if container else "")
    assert C.pod_text(path) == (pod or "")


def test_short_id_is_what_docker_ps_shows():
    assert C.container_text(f"/system.slice/docker-{ID}.scope") == "4f1c0a9b8e7d" == ID[:12]
    assert C.fallback(1234) == "cgroup:1234"


# -- the cgroup2 mount ----------------------------------------------------------------------------------
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize("text, want", [
    (HYBRID, "/sys/fs/cgroup/unified"),
    (PURE, "/sys/fs/cgroup"),
    # a container's own view first (its namespace's root), the host's bind mount after: the host's wins
    ("50 40 0:26 /../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
     "51 40 0:26 / /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw\n", "/host/sys/fs/cgroup"),
    ("51 40 0:26 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n", "/mnt/my cgroups"),  # mountinfo's escapes
    ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", None),  # v1 only
    ("", None),
])
def test_cgroup2_mount_from_mountinfo(tmp_path, text, want):
    mi = tmp_path / "mountinfo"
    mi.write_text(text)
    assert C.cgroup2_mount(str(mi)) == want


def test_cgroup2_mount_of_this_machine():
    got = C.cgroup2_mount()
    if got is None:
        pytest.skip("no cgroup2 mount")
    with open("/proc/self/mountinfo") as f:
        assert any(f" {got} " in line and " - cgroup2 " in line for line in f)


# -- the resolver, on a tree built here ---------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _tree(root: Path, rels: list[str]) -> dict[str, int]:
    for r in rels:
        (root / r.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return {r: os.stat(root / r.lstrip("/")).st_ino for r in rels}


def test_resolver_walks_once_and_prints_each_display(tmp_path):
    docker = f"/system.slice/docker-{ID}.scope"
    pod = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID2}.scope"
    ids = _tree(tmp_path, [docker, pod, "/system.slice/sshd.service"])
    (tmp_path / "cgroup.procs").write_text("")  # files are not cgroups
    r = C.Resolver(str(tmp_path), clock=Clock(), by_handle=False)
    assert r.path(os.stat(tmp_path).st_ino) == "/"
    assert r.walks == 1
    assert r.cgroup(ids[docker]) == docker and r.container(ids[docker]) == ID[:12] and r.pod(ids[docker]) == ""
    assert (r.cgroup(ids[pod]), r.container(ids[pod]), r.pod(ids[pod])) == (pod, ID2[:12], UID)
    assert (r.container(ids["/system.slice/sshd.service"]), r.pod(ids["/system.slice/sshd.service"])) == ("", "")
    assert r.walks == 1  # one walk found them all
    assert r.path(os.stat(tmp_path / "cgroup.procs").st_ino) is None


def test_a_miss_walks_again_at_most_once_a_second(tmp_path):
    clock = Clock()
    r = C.Resolver(str(tmp_path), clock=clock, by_handle=False)
    assert r.path(999_999_999) is None and r.walks == 1
    new = _tree(tmp_path, ["/system.slice/new.service"])["/system.slice/new.service"]
    clock.t += 0.5
    assert r.cgroup(new) == f"cgroup:{new}" and r.walks == 1  # within the second: no walk
    clock.t += 0.5
    assert r.cgroup(new) == "/system.slice/new.service" and r.walks == 2
    for _ in range(100):
        assert r.cgroup(new) == "/system.slice/new.service"
    assert r.walks == 2  # a hit costs no walk


def test_a_removed_cgroup_keeps_its_path_and_an_unknown_id_its_fallback(tmp_path):
    clock = Clock()
    ids = _tree(tmp_path, [f"/docker/{ID}"])
    r = C.Resolver(str(tmp_path), clock=clock, by_handle=False)
    assert r.container(ids[f"/docker/{ID}"]) == ID[:12]
    (tmp_path / "docker" / ID).rmdir()
    clock.t += 5  # (no directory made after: tmpfs, unlike cgroupfs, reuses inode numbers)
    r.path(123_456_789)  # a miss: walks again; the removed one stays known
    assert r.walks == 2
    assert r.container(ids[f"/docker/{ID}"]) == ID[:12] and r.cgroup(ids[f"/docker/{ID}"]) == f"/docker/{ID}"
    # never seen: cgroup:<id> for every display, the same every time; once a walk that began after the first
    # question missed it, it is known gone and asking again walks no more
    for kind in ("cgroup", "container", "pod"):
        assert r.display(123_456_789, kind) == "cgroup:123456789"
    clock.t += 5
    assert r.display(123_456_789, "cgroup") == "cgroup:123456789"
    walks = r.walks
    clock.t += 5
    assert r.display(123_456_789, "container") == "cgroup:123456789" and r.walks == walks
    assert r.display(0, "cgroup") == "cgroup:0"


def test_the_walk_stays_in_the_mount_and_follows_no_symlink(tmp_path):
    outside = tmp_path / "outside"
    _tree(outside, [f"/docker/{ID}"])
    mount = tmp_path / "cg"
    ids = _tree(mount, ["/system.slice"])
    (mount / "system.slice" / "link").symlink_to(outside)
    r = C.Resolver(str(mount), clock=Clock(), by_handle=False)
    assert r.path(ids["/system.slice"]) == "/system.slice"
    assert r.path(os.stat(outside / "docker" / ID).st_ino) is None
    assert r.path(os.stat(outside).st_ino) is None
    assert all(not p.startswith("/system.slice/link") for p in r._paths.values())


@needs_root
def test_another_file_system_mounted_inside_is_not_entered(tmp_path):
    mount = tmp_path / "cg"
    ids = _tree(mount, ["/system.slice", "/other"])
    r = subprocess.run(["mount", "-t", "tmpfs", "hqtest", str(mount / "other")], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        inner = _tree(mount / "other", [f"/docker/{ID}"])
        res = C.Resolver(str(mount), clock=Clock(), by_handle=False)
        assert res.path(ids["/system.slice"]) == "/system.slice"
        assert res.path(inner[f"/docker/{ID}"]) is None
        assert sorted(res._paths.values()) == ["/", "/system.slice"]
    finally:
        subprocess.run(["umount", str(mount / "other")], check=True)


def test_the_table_is_bounded(tmp_path):
    ids = _tree(tmp_path, [f"/s{i}" for i in range(20)])
    r = C.Resolver(str(tmp_path), max_entries=8, clock=Clock(), by_handle=False)
    r.path(ids["/s0"])
    assert len(r._paths) <= 8 and r.truncated
    r2 = C.Resolver(str(tmp_path), max_entries=1000, clock=Clock(), by_handle=False)
    assert all(r2.path(v) == k for k, v in ids.items()) and len(r2._paths) == 21 and not r2.truncated


def test_names_are_text_with_invalid_bytes_replaced(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/bad\xff\x1bname"
    os.mkdir(raw)
    r = C.Resolver(str(tmp_path), clock=Clock(), by_handle=False)
    assert r.cgroup(os.stat(raw).st_ino) == "/bad\ufffd\x1bname"  # the printers escape the \x1b


def test_no_mount_means_the_fallback(tmp_path):
    r = C.Resolver("", clock=Clock())
    r.mount = None
    assert r.display(42, "container") == "cgroup:42"


# -- the checker --------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [
    f"on {TP} {{ count by container }}",
    f"on {TP} {{ count by container, pod, cgroup }}",
    f"on {TP} {{ count by current.container, current.pod }}",
    f"on {TP} {{ emit comm, container, pod, cgroup }}",
    f"on {TP} where cgroup == 4242 {{ count by container; hist(ts - ts) by pod }}",
    f"on {TP} where cgroup != 1 and comm == \"x\" {{ sum(cgroup) by cgroup; max(cgroup) }}",
    f"on {TP}, tracepoint:syscalls:sys_enter_getpid {{ count by probe, container }}",
])
def test_container_and_pod_as_keys_and_values_check(running, k61, script):
    assert not errors(script, running)
    assert not errors(script, k61)


@pytest.mark.parametrize("script, where", [
    (f"on {TP} where container == 3 {{ count }}", True),
    (f"on {TP} where pod != 0 {{ count }}", True),
    (f"on {TP} where current.container in {{1, 2}} {{ count }}", True),
    (f"def mine(c) = c == 7\non {TP} where mine(container) {{ count }}", True),
    (f"on {TP} {{ count by container + 1 }}", False),
    (f"on {TP} {{ max(pod) }}", False),
    (f"on {TP} {{ hist(container) by comm }}", False),
    (f"on {TP} {{ st[pid] = container }}", False),
    (f"on {TP} {{ st[pod] = 1 }}", False),
    (f"on {TP} {{ emit pod * 2 }}", False),
])
def test_container_and_pod_are_for_by_and_emit_only(running, script, where):
    e = one_error(script, running)
    word = "current.container" if "current.container" in script else "container" if "container" in script else "pod"
    name = word.rpartition(".")[2]
    assert e.message == (f"{name} is found from the cgroup's path, in user space when the results print: it can only "
                         "be a `by` key of an aggregation or an `emit` value")
    at = script.index(word, script.index("on "))
    line = script.count("\n", 0, at) + 1
    assert (e.span.line, e.span.col) == (line, at - (script.rfind("\n", 0, at) + 1) + 1)
    if where:
        assert "`where cgroup == N`" in e.hint and f"count by {name}" in e.hint
    else:
        assert f"count by {name}" in e.hint and "cannot be compared" in e.hint


def test_builtins_are_listed_with_their_docs():
    from hookql import fields as F
    assert F.BUILTINS["cgroup"].ty.display == "cgroup" and F.BUILTINS["cgroup"].ty.is_int
    assert F.BUILTINS["container"].ty.display == "container" and "12 hex" in F.BUILTINS["container"].doc
    assert F.BUILTINS["pod"].ty.display == "pod" and "pod uid" in F.BUILTINS["pod"].doc
    r = subprocess.run(hookql_cmd() + ["hooks", "-v", "--kernel", "6.18", TP], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\s*container\b", r.stdout, re.M) and re.search(r"^\s*pod\b", r.stdout, re.M), r.stdout


def test_one_cgroup_id_read_for_all_three(tmp_path):
    src = f"on {TP} {{ count by container, pod, cgroup; emit cgroup, container }}"
    r = subprocess.run(hookql_cmd() + ["compile", "--emit-c", "-e", src], capture_output=True, text=True,
                       env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("bpf_get_current_cgroup_id()") == 1


def test_layout_marks_the_displays(running):
    from hookql.codegen.ir import lower
    from hookql.pipeline import check_source
    from hookql.source import Source

    prog = lower(check_source(Source("t.hq", f"on {TP} {{ count by container, pod, cgroup; max(cgroup); "
                                     "emit container }"), running).checked)
    lay = prog.layout()
    assert [(f["name"], f["display"], f["size"]) for f in lay["aggregations"][0]["by"]] == \
        [("container", "container", 8), ("pod", "pod", 8), ("cgroup", "cgroup", 8)]
    assert lay["aggregations"][1]["value_display"] is None  # max(cgroup) is a number
    assert lay["emits"][0]["fields"][0]["display"] == "container"


# -- printing: tables (Python) and emitted events (C), with a resolver given here ----------------------
class FakeResolver:
    def __init__(self, paths):
        self.paths = paths
        self.asked = []

    def display(self, cid, kind):
        self.asked.append((cid, kind))
        if cid == 666:
            raise RuntimeError("a resolver that fails")
        p = self.paths.get(cid)
        if p is None:
            return C.fallback(cid)
        return {"cgroup": p, "container": C.container_text(p), "pod": C.pod_text(p)}[kind]


KPOD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
PATHS = {7: KPOD, 8: "/system.slice/evil\x1b]0;x\x07.service", 9: "/"}


def _field(name, offset, display, kind="int", size=8):
    return {"name": name, "kind": kind, "size": size, "offset": offset, "signed": False, "display": display}


FIELDS = [_field("comm", 8, None, "str", 16), _field("cgroup", 24, "cgroup"), _field("container", 32, "container"),
          _field("pod", 40, "pod")]


def _emit(ids, fmt, emit_format="kv", resolver=None):
    from hookql.runtime.events import EventPrinter

    res = resolver or FakeResolver(PATHS)
    rec = {"id": 0, "probe": TP, "line": 1, "size": 48, "fields": FIELDS}
    out = io.StringIO()
    p = EventPrinter([rec], fmt, out, emit_format, resolver=res)
    try:
        for cid in ids:
            raw = bytes(8) + b"curl".ljust(16, b"\0") + struct.pack("<QQQ", cid, cid, cid)
            buf = (ctypes.c_char * len(raw)).from_buffer_copy(raw)
            p.lib.hq_ev_sample(p.ctx, buf, len(buf))
        p.flush()
        assert p.bad == 0
    finally:
        p.close()
    return out.getvalue(), res


def test_emit_prints_path_container_and_pod_in_text(tmp_path):
    text, res = _emit([7, 8, 9, 12345, 666], "text")
    assert text.splitlines() == [
        f"comm=curl cgroup={KPOD} container={ID[:12]} pod={UID}",
        "comm=curl cgroup=/system.slice/evil\\x1b]0;x\\x07.service container= pod=",  # escaped, never raw
        "comm=curl cgroup=/ container= pod=",
        "comm=curl cgroup=cgroup:12345 container=cgroup:12345 pod=cgroup:12345",
        "comm=curl cgroup=cgroup:666 container=cgroup:666 pod=cgroup:666",  # the resolver failed: the fallback
    ]
    assert res.asked[:3] == [(7, "cgroup"), (7, "container"), (7, "pod")]


def test_emit_prints_them_as_strings_in_json_and_columns(tmp_path):
    text, _ = _emit([7, 8], "json")
    evs = [json.loads(l)["event"] for l in text.splitlines()]
    assert evs == [{"comm": "curl", "cgroup": KPOD, "container": ID[:12], "pod": UID},
                   {"comm": "curl", "cgroup": "/system.slice/evil\x1b]0;x\x07.service", "container": "", "pod": ""}]
    assert "\x1b" not in text and "\\u001b" in text
    cols, _ = _emit([9, 7], "text", "columns")
    lines = cols.splitlines()
    assert lines[0].split() == ["COMM", "CGROUP", "CONTAINER", "POD"]
    assert lines[1].split() == ["curl", "/"] and lines[2].split() == ["curl", KPOD, ID[:12], UID]
    assert lines[0].index("CONTAINER") == lines[1].index("/") + 25  # a path column 24 wide


def test_a_long_path_is_printed_whole(tmp_path):
    long = "/" + "/".join(["d" * 200] * 40) + f"/docker-{ID}.scope"  # deeper than PATH_MAX
    text, _ = _emit([1] * 3, "json", resolver=FakeResolver({1: long}))
    assert [json.loads(l)["event"]["cgroup"] for l in text.splitlines()] == [long] * 3


def test_tables_print_paths_and_fallbacks(monkeypatch):
    from hookql.runtime.decode import Row
    from hookql.runtime.output import JsonPrinter, TextPrinter

    monkeypatch.setattr(C, "_DEFAULT", FakeResolver(PATHS))
    agg = {"probe": TP, "func": "count", "text": "count by container, pod, cgroup", "line": 1,
           "by": [FIELDS[2], FIELDS[3], FIELDS[1]], "value_display": None}
    rows = [Row({"container": 7, "pod": 7, "cgroup": 7}, 3), Row({"container": 8, "pod": 8, "cgroup": 8}, 2),
            Row({"container": 5, "pod": 5, "cgroup": 5}, 1)]
    out = io.StringIO()
    JsonPrinter(out).aggregation(agg, rows)
    got = json.loads(out.getvalue())["rows"]
    assert got == [{"key": {"container": ID[:12], "pod": UID, "cgroup": KPOD}, "value": 3},
                   {"key": {"container": "", "pod": "", "cgroup": PATHS[8]}, "value": 2},
                   {"key": {"container": "cgroup:5", "pod": "cgroup:5", "cgroup": "cgroup:5"}, "value": 1}]
    out = io.StringIO()
    TextPrinter(out).aggregation(agg, rows)
    text = out.getvalue()
    assert "\x1b" not in text and "evil\\x1b]0;x\\x07.service" in text
    assert re.search(rf"^  {ID[:12]}\s+{UID}\s+{re.escape(KPOD)}\s+3$", text, re.M), text


# -- as root: real cgroups named as the runtimes name them, a workload moved into each -----------------
MOVER = r'''
import json, os, sys
mount, plan, done = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
home = next(l[3:] for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::"))
def move(rel):
    with open(os.path.join(mount + rel, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
made = {}
for comm, rel, n, short_lived in plan:
    open("/proc/self/comm", "w").write(comm)
    if short_lived:  # made here and removed before anything reads it: its id is all that is left
        os.mkdir(mount + rel)
        made[rel] = os.stat(mount + rel).st_ino
    move(rel)
    for _ in range(n):
        os.getppid()
    move(home)
    if short_lived:
        os.rmdir(mount + rel)
open(done, "w").write(json.dumps(made))
'''


def _runtime_paths(top: str) -> list[tuple[str, str, str]]:
    """(cgroup path, container, pod) as the runtimes name their cgroups, each under `top`."""
    ids = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(9)]
    uid = str(uuid.uuid4())
    u_ = uid.replace("-", "_")
    kp = f"{top}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u_}.slice"
    return [
        (f"{top}/system.slice/docker-{ids[0]}.scope", ids[0][:12], ""),
        (f"{top}/docker/{ids[1]}", ids[1][:12], ""),
        (f"{kp}/cri-containerd-{ids[2]}.scope", ids[2][:12], uid),
        (f"{top}/kubepods/besteffort/pod{uid}/{ids[3]}", ids[3][:12], uid),
        (f"{kp}/crio-{ids[4]}.scope", ids[4][:12], uid),
        (f"{kp}/crio-conmon-{ids[4]}.scope", "", uid),
        (f"{top}/machine.slice/libpod-{ids[5]}.scope/container", ids[5][:12], ""),
        (f"{top}/machine.slice/libpod-conmon-{ids[5]}.scope", "", ""),
        (f"{top}/user.slice/user-0.slice/user@0.service/user.slice/libpod-{ids[6]}.scope", ids[6][:12], ""),
        (f"{top}/system.slice/hq-evil\x1b[31m.service", "", ""),
    ]


@pytest.fixture
def cgroup_top():
    """A fresh directory under the cgroup2 mount; removed after, deepest first."""
    mount = C.cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount")
    top = f"/hqtest-{uuid.uuid4()}"
    try:
        os.mkdir(mount + top)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {mount}: {exc.strerror}")
    # a process must be able to join a cgroup here: not when the cgroup2 mount is read-only to us (a
    # container without its own cgroup namespace), nor across delegation boundaries we do not own
    os.mkdir(mount + top + "/probe")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open(mount + top + "/probe/cgroup.procs", "w") as f:
            f.write(str(sleeper.pid))
        moved = None
    except OSError as exc:
        moved = exc.strerror
    finally:
        sleeper.kill()
        sleeper.wait()
    if moved is not None:
        os.rmdir(mount + top + "/probe")
        os.rmdir(mount + top)
        pytest.skip(f"cannot move a process into a cgroup under {mount}: {moved}")
    yield mount, top
    dirs = sorted((d for d, _, _ in os.walk(mount + top)), key=lambda d: d.count("/"), reverse=True)
    for d in dirs:
        for _ in range(100):  # the workload moved itself out before exiting: these are empty
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                import time
                time.sleep(0.05)
    assert not os.path.exists(mount + top), f"{mount + top} could not be removed"


@needs_root
@pytest.mark.skipif(not shutil.which("bpftrace"), reason="bpftrace is the oracle for the paths")
def test_labels_of_real_cgroups(tmp_path, cgroup_top):
    mount, top = cgroup_top
    cases = _runtime_paths(top)
    for rel, _, _ in cases:
        os.makedirs(mount + rel)
    # first a container that lives for 20 getppid calls, its cgroup gone before anything is printed or resolved
    gone = f"{top}/system.slice/docker-{uuid.uuid4().hex * 2}.scope"
    docker_id = os.stat(mount + cases[0][0]).st_ino
    comm, comm_gone = "hq" + uuid.uuid4().hex[:10], "hq" + uuid.uuid4().hex[:10]
    plan = [(comm_gone, gone, 20, True)] + [(comm, rel, i + 1, False) for i, (rel, _, _) in enumerate(cases)]
    script = (f'on {TP} where comm == "{comm}" {{ count by container, pod, cgroup; emit cgroup, container, pod }}\n'
              f'on {TP} where comm == "{comm_gone}" {{ count by container, pod, cgroup }}\n'
              f'on {TP} where cgroup == {docker_id} {{ count by container }}\n')
    wl = tmp_path / "mover.py"
    wl.write_text(MOVER)
    done = tmp_path / "done"
    bt = BpftracePrinting(f'{TP} /comm == "{comm}"/ {{ printf("<%llu %s>\\n", cgroup, cgroup_path(cgroup)); }}')
    try:
        r = subprocess.run(hookql_cmd() + ["run", "--format", "json", "-e", script, "-c",
                                           f"{sys.executable} {wl} {mount} '{json.dumps(plan)}' {done}"],
                           capture_output=True, text=True, timeout=120)
        bt.until(lambda lines: sum(l.startswith("<") for l in lines) >= sum(i + 1 for i in range(len(cases))))
    finally:
        bt_out = bt.stop()
    assert r.returncode == 0 and done.exists(), r.stderr
    gone_id = json.loads(done.read_text())[gone]
    objs = [json.loads(l) for l in r.stdout.splitlines()]
    aggs = [o for o in objs if o.get("aggregation") == "count"]
    events = [o["event"] for o in objs if "event" in o]
    want = {(c, p, rel): i + 1 for i, (rel, c, p) in enumerate(cases)}
    got = {(row["key"]["container"], row["key"]["pod"], row["key"]["cgroup"]): row["value"] for row in aggs[0]["rows"]}
    assert got == want
    # the one removed before the end: its id, the same for all three, nothing dropped
    assert aggs[1]["rows"] == [{"key": {"container": f"cgroup:{gone_id}", "pod": f"cgroup:{gone_id}",
                                        "cgroup": f"cgroup:{gone_id}"}, "value": 20}]
    assert aggs[2]["rows"] == [{"key": {"container": cases[0][1]}, "value": 1}]  # where cgroup == N: the id
    # emit, through the C printer: each event labelled as its cgroup
    assert sorted((e["container"], e["pod"], e["cgroup"]) for e in events) == \
        sorted(k for k, n in want.items() for _ in range(n))
    # bpftrace's cgroup_path of the same ids: the same paths (its "unified:" part)
    theirs = re.findall(r"^<(\d+) (.*)>$", bt_out, re.M)
    assert len(theirs) == sum(want.values()), bt_out
    by_id = {}
    for cid, paths in theirs:
        unified = next(p[len("unified:"):] for p in paths.split(",") if p.startswith("unified:"))
        by_id[int(cid)] = unified
    assert {os.stat(mount + rel).st_ino: rel for rel, _, _ in cases} == by_id


@needs_root
def test_text_table_of_real_cgroups(tmp_path, cgroup_top):
    mount, top = cgroup_top
    rel = f"{top}/system.slice/docker-{ID}.scope"
    os.makedirs(mount + rel)
    comm = "hq" + uuid.uuid4().hex[:10]
    wl = tmp_path / "mover.py"
    wl.write_text(MOVER)
    done = tmp_path / "done"
    r = subprocess.run(hookql_cmd() + ["run", "-e", f'on {TP} where comm == "{comm}" {{ count by container, cgroup; '
                                       "emit container, pod }", "-c",
                                       f"{sys.executable} {wl} {mount} '{json.dumps([(comm, rel, 3, False)])}' {done}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and done.exists(), r.stderr
    assert r.stdout.count(f"container={ID[:12]} pod=\n") == 3, r.stdout
    assert re.search(rf"^  CONTAINER\s+CGROUP\s+COUNT\n  {ID[:12]}\s+{re.escape(rel)}\s+3$", r.stdout, re.M), r.stdout


@needs_root
def test_serve_labels_of_real_cgroups(tmp_path, cgroup_top):
    """`hookql serve`: the /metrics labels of a docker container (systemd driver), a kubepods containerd one
    and a host service, exactly; a cgroup removed before any scrape resolved it: `cgroup:ID` in all three
    labels, every event counted; one resolved, then removed: its labels stay."""
    mount, top = cgroup_top
    paths = _runtime_paths(top)
    docker, kpod, host = paths[0], paths[2], (f"{top}/system.slice/hq-test.service", "", "")
    cases = [docker, kpod, host]
    for rel, _, _ in cases:
        os.makedirs(mount + rel)
    gone = f"{top}/system.slice/docker-{uuid.uuid4().hex * 2}.scope"
    comm = "hq" + uuid.uuid4().hex[:10]
    plan = [(comm, rel, n, False) for (rel, _, _), n in zip(cases, (3, 5, 7))] + [(comm, gone, 11, True)]
    (tmp_path / "c.hq").write_text(f'on {TP} where comm == "{comm}" '
                                   '{ count by container, pod, cgroup as by_container }\n')
    wl = tmp_path / "mover.py"
    wl.write_text(MOVER)
    done = tmp_path / "done"
    s = Serve(tmp_path, "--drain-interval", "200ms", str(tmp_path / "c.hq"))
    try:
        r = subprocess.run([sys.executable, str(wl), mount, json.dumps(plan), str(done)], capture_output=True,
                           text=True, timeout=60)  # no scrape meanwhile: nothing resolved the short-lived one
        assert r.returncode == 0, r.stderr
        gone_id = json.loads(done.read_text())[gone]
        name = "hookql_by_container_total"

        def got():
            return {(l["container"], l["pod"], l["cgroup"]): v for n, l, v in s.samples() if n == name}

        wait_for(lambda: sum(got().values()) >= 26, "every call drained")
        fb = f"cgroup:{gone_id}"
        want = {(c, p, rel): float(n) for (rel, c, p), n in zip(cases, (3, 5, 7))} | {(fb, fb, fb): 11.0}
        assert got() == want
        assert re.fullmatch(r"[0-9a-f]{12}", docker[1]) and re.fullmatch(r"[0-9a-f]{12}", kpod[1])
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", kpod[2]) and docker[2] == ""
        # resolved once, then removed: the labels stay; the unknown one keeps its fallback
        os.rmdir(mount + docker[0])
        assert got() == want
        kernel = [(l, v) for n, l, v in s.samples() if n == "hookql_kernel_events_total" and v]
        assert kernel == []  # nothing lost in the kernel
        assert s.stop() == 0
        assert "Traceback" not in s.log()
    finally:
        s.stop()
