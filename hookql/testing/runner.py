"""`hookql test`, end to end: discover, plan (check, compile, check expectations), execute here or in the
VM (one boot for every case), compare, report."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hookql.testing import expect as X
from hookql.testing.cases import CaseError
from hookql.testing.plan import (Outcome, Planned, Target, _Rendered, compile_case, discover, load_file, plan_entry,
                                 selected, unmet)
from hookql.testing.report import Console, junit

RESULT_MARK = "HOOKQL-TEST-RESULTS "


class Stop(Exception):
    """The whole run cannot go on; the message says why and what to do."""


@dataclass
class Options:
    paths: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    accept: bool = False
    junit: str | None = None
    kernel: str | None = None  # "6.1": Debian's stock kernel in the VM
    kernel_image: str | None = None
    kernel_modules: str | None = None
    deps: bool = False
    verbose: bool = False


# -- where the cases run ----------------------------------------------------------------------
def native_target() -> Target:
    from hookql import kernel as K
    from hookql.runtime import features

    kern = K.running()
    return Target(kern, os.uname().release, features.func_mode(), f"kernel {os.uname().release}, here",
                  os.uname().machine)


def vm_target(opts: Options):
    """(the Target, the VM's kernel) for --kernel / --kernel-image; Stop when the VM cannot be had."""
    from hookql import kernel as K
    from hookql.testing import vm

    missing = vm.missing_tools()
    if missing:
        raise Stop(f"running cases in a VM needs qemu: apt-get install {' '.join(missing)}")
    try:
        if opts.kernel_image:
            vmk = vm.custom_kernel(Path(opts.kernel_image), Path(opts.kernel_modules) if opts.kernel_modules else None)
        else:
            vmk = vm.kernel()
            if opts.kernel and not vmk.release.startswith(opts.kernel + ".") and vmk.version != opts.kernel:
                raise Stop(f"--kernel {opts.kernel}: the VM runner fetches Debian's stock kernel, which is "
                           f"{vmk.release} here; give --kernel {vmk.version}, or --kernel-image PATH for another")
        if vmk.btf_path is None:
            raise Stop(f"the BTF of {opts.kernel_image} could not be read out of it (its payload is compressed in a "
                       "way Python cannot open: lz4 or lzo); give its uncompressed vmlinux instead")
        kern = K.from_btf(str(vmk.btf_path))
    except vm.VMError as exc:
        raise Stop(str(exc)) from None
    except K.KernelError as exc:
        raise Stop(f"the VM's kernel has no BTF HookQL can read: {exc}") from None
    return Target(kern, vmk.release, "kprobe", f"kernel {vmk.release}, in a VM"), vmk


# -- the run ----------------------------------------------------------------------------------
def default_paths() -> list[Path]:
    """The project (or library) root: the nearest directory up from here with a hookql.toml; else here."""
    from hookql.libs import manifest as M

    found = M.find(Path.cwd())
    return [found.parent if found is not None else Path.cwd()]


def dependency_paths(roots: list[Path]) -> list[Path]:
    """--deps: the locked libraries' trees (and path dependencies) of each root's project."""
    from hookql.libs import lock, manifest as M
    from hookql.libs.errors import InstallError, ManifestError

    out = []
    for r in roots:
        found = M.find(r if r.is_dir() else r.parent)
        if found is None:
            continue
        try:
            man = M.load_project(found)
            got = lock.read_lock(man)
            for lib in (got[0].values() if got else []):
                out.append(lib.source)
            for dep in man.dependencies.values():
                if dep.path:
                    out.append((man.root / dep.path).resolve())
        except (InstallError, ManifestError, OSError) as exc:
            raise Stop(f"--deps: {exc}") from None
    return out


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: everything attached is released, every workload killed


def run(opts: Options, out=None) -> int:
    import signal

    console = Console(out)
    started = time.monotonic()
    old = signal.signal(signal.SIGTERM, _stop)
    try:
        if opts.kernel_modules and not opts.kernel_image:
            raise Stop("--kernel-modules goes with --kernel-image (Debian's kernel brings its own)")
        return _run(opts, console, started)
    except Stop as exc:
        print(f"hookql test: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hookql test: interrupted; nothing is left attached", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


def _run(opts: Options, console: Console, started: float) -> int:
    from hookql.runtime import features

    in_vm = bool(opts.kernel or opts.kernel_image)
    if not in_vm and not features.can_load_bpf():
        raise Stop("the cases load BPF programs: run hookql test as root (or with CAP_BPF and CAP_PERFMON), "
                   "or in a VM with --kernel 6.1")
    roots = [Path(p) for p in opts.paths] or default_paths()
    if opts.deps:
        roots += dependency_paths(roots)
    files, missing = discover(roots)
    files = [_shown_path(f) for f in files]
    if missing:
        raise Stop(f"no such file or directory: {', '.join(missing)}")
    if in_vm:
        target, vmk = vm_target(opts)
    else:
        target, vmk = native_target(), None
    outcomes: list[Outcome] = []
    planned: list[Planned] = []
    scratch = Path(tempfile.mkdtemp(prefix="hookql-test-"))
    try:
        for f in files:
            cases, bad = load_file(f)
            if bad:
                outcomes.append(bad)
                console.line(bad)
                continue
            for c in cases:
                if not selected(c.id, opts.patterns):
                    continue
                t0 = time.monotonic()
                o = _plan_one(c, target, scratch, planned)
                if o is not None:
                    o.seconds = time.monotonic() - t0
                    outcomes.append(o)
                    console.line(o)
                else:
                    planned[-1].seconds = time.monotonic() - t0
        if not outcomes and not planned:
            raise Stop(f"no test cases (*.hqt) under {', '.join(str(r) for r in roots)}"
                       + (f" match -k {' '.join(opts.patterns)}" if opts.patterns else ""))
        if in_vm:
            results = _in_vm(planned, vmk, scratch)
            for p, r in zip(planned, results):
                outcomes.append(_judge(p, r, opts, console))
        else:
            from hookql.testing.executor import run_plan

            for i, p in enumerate(planned):
                outcomes.append(_judge(p, run_plan([plan_entry(i, p)])[0], opts, console))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - started
    console.summary(outcomes, took, target.label)
    if opts.junit:
        try:
            junit(outcomes, took, opts.junit)
        except OSError as exc:
            print(f"hookql test: error: cannot write --junit {opts.junit}: {exc.strerror}", file=sys.stderr)
            return 2
    return 1 if any(o.status in ("fail", "error") for o in outcomes) else 0


def _shown_path(f: Path) -> Path:
    """A case file as messages name it: relative to here when it is below here."""
    rel = os.path.relpath(f)
    return Path(rel) if not rel.startswith("..") else f


def _plan_one(case, target: Target, scratch: Path, planned: list[Planned]) -> Outcome | None:
    """None once the case is in the plan; else its outcome (skipped, or an error)."""
    why = unmet(case, target)
    if why:
        return Outcome(case.file, case.name, "skip", [why], case=case)
    try:
        planned.append(compile_case(case, target, scratch))
    except CaseError as exc:
        return Outcome(case.file, case.name, "error", [exc.diagnostic.render()], case=case)
    except _Rendered as exc:
        return Outcome(case.file, case.name, "error", exc.lines, case=case)
    return None


def _judge(p: Planned, r: dict, opts: Options, console: Console) -> Outcome:
    case = p.case
    o = Outcome(case.file, case.name, "pass", case=case, seconds=p.seconds + r.get("seconds", 0))
    if r["status"] == "skipped":
        o.status, o.details = "skip", [r["reason"]]
        if not (opts.kernel or opts.kernel_image) and r.get("refused"):
            o.details = [f"{r['reason']}; `hookql test --kernel 6.1` runs it in a VM"]
    elif r["status"] == "error":
        o.status, o.details = "error", [X.escape_text(r["reason"], backslash=False)]
    else:
        o.details, notes = X.evaluate(p, r)
        if case.golden:
            o.details += _golden(p, r, opts, o, others_failed=bool(o.details))
        o.status = "fail" if o.details else "pass"
        if opts.verbose:
            o.details += notes
    console.line(o)
    return o


def _golden(p: Planned, r: dict, opts: Options, o: Outcome, others_failed: bool = False) -> list[str]:
    from hookql.cache.dirs import CacheError, trusted_path
    from hookql.libs import confine

    path, span = p.case.golden
    where = f"{X.escape_text(span.source.name, backslash=False)}:{span.line}:{span.col}"
    actual = X.golden_text(p, r)
    root = p.case.file.parent
    try:
        real = confine.check(path, root)
        # what it says is the truth, and --accept writes there: no one else may change the way to it
        trusted_path(real, os.geteuid(), str(path), leaf=True, hint="keep golden files where only you can write")
    except confine.Outside:
        return [f"{where}: the golden file {path} leads outside {root} (a symbolic link); HookQL does not follow it"]
    except CacheError as exc:
        return [f"{where}: the golden file is not safe to use: {exc}"]
    try:
        expected = confine.read_text(path, root)
    except FileNotFoundError:
        expected = None
    except (OSError, UnicodeDecodeError, confine.Outside) as exc:
        return [f"{where}: cannot read the golden file {path}: {getattr(exc, 'strerror', None) or exc}"]
    if opts.accept:
        if others_failed and expected != actual:  # results of a case that fails otherwise are not the truth
            return [f"{where}: the golden file {path} was not written: the case fails otherwise (above)"]
        if expected is not None and expected != actual and \
                not expected.split("\n", 1)[0].endswith(": written by `hookql test --accept`"):
            return [f"{where}: {path} is not a golden file `hookql test --accept` wrote (its first line says so); "
                    "it was not overwritten: name a new file, or remove that one"]
        if expected != actual:
            try:
                _write_golden(real, actual)
            except OSError as exc:
                return [f"{where}: cannot write the golden file {path}: {exc.strerror}"]
            o.note = f"accepted: wrote {path}"
        return []
    if expected is None:
        return [f"{where}: the golden file {path} does not exist: run `hookql test --accept` to write it from "
                "these results"]
    if expected != actual:
        return [f"{where}: the results differ from the golden file {path} (`hookql test --accept` takes these):",
                *X.golden_diff(expected, actual, str(path))]
    return []


def _write_golden(real: str, text: str) -> None:
    """Next to the case file, never through a symbolic link: a temporary file, then a rename; an existing
    file keeps its owner and mode."""
    d = os.path.dirname(real)
    try:
        old = os.lstat(real)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=".golden-", dir=d)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, old.st_mode & 0o777 if old else 0o644)
        if old:
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, real)
    except BaseException:
        os.unlink(tmp)
        raise


# -- in the VM ---------------------------------------------------------------------------------
def _in_vm(planned: list[Planned], vmk, scratch: Path) -> list[dict]:
    """Every planned case in one boot; their results as the executor gives them."""
    from hookql.cache import dirs
    from hookql.testing import vm

    if not planned:
        return []
    if any(p.layout["emits"] for p in planned):
        from hookql.runtime import events

        events._library()  # built here (clang in the VM is ~50x slower): the guest finds it in the cache
    plan = scratch / "plan.json"
    plan.write_text(json.dumps([plan_entry(i, p) for i, p in enumerate(planned)]))
    py = sys.executable
    script = (f"export HOME={_sh(os.path.expanduser('~'))} XDG_CACHE_HOME={_sh(dirs.base())} "
              f"PATH={_sh(str(Path(py).parent))}:$PATH\n"
              f"cd {_sh(str(Path.cwd()))}\n"
              f"{_sh(py)} -m hookql.testing.executor {_sh(str(plan))} -\n")
    budget = 180 + sum(30 + sum(w.timeout for w in p.case.workloads) for p in planned)
    try:
        r = vm.run(script, timeout=budget, kernel=vmk)
    except vm.VMError as exc:
        raise Stop(str(exc)) from None
    line = next((l for l in reversed(r.stdout.splitlines()) if l.startswith(RESULT_MARK)), None)
    if r.status is None or line is None:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        if r.status is None:
            tail = [l for l in r.console.splitlines() if l.strip()][-3:]
            raise Stop(f"the VM did not finish in {budget:.0f}s ({vmk.release}): " + " | ".join(tail or ["no console output"]))
        raise Stop(f"the cases did not run in the VM (exit {r.status}): {why}")
    return json.loads(line[len(RESULT_MARK):])


def _sh(text: str) -> str:
    import shlex

    return shlex.quote(text)
