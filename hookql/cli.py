"""`hookql` command line: check, hooks (run, compile and repl come with their stages)."""
from __future__ import annotations

import os
import sys

from hookql import __version__, runargs

# Everything else (argparse, the front end, lark, jinja, BTF, diagnostics) is
# imported where used, so a warm `hookql run` never loads it (see hookql/cache/runs.py).


_PENDING: list[int] = []  # signals that arrived while `run` was getting ready, in order


def _defer(signum, frame) -> None:
    _PENDING.append(signum)


def _defer_signals() -> None:
    """For `run`: Ctrl-C and SIGTERM are noted, not raised, and the run stops at its next step (before
    loading, or at once once attached: runtime/session.py). An exception raised wherever Python happens
    to be (inside an import, a class body, clang's wait) could surface as something else entirely."""
    import _signal

    for s in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(s) != _signal.SIG_IGN:
            _signal.signal(s, _defer)


def main(argv: list[str] | None = None) -> int:
    try:  # Ctrl-C while the options are read, too: quietly 130 (hookql/__main__.py covers the imports before)
        args = sys.argv[1:] if argv is None else argv
        if args[:1] == ["run"]:
            _defer_signals()
            fast = runargs.parse(args[1:])  # the common spellings, without argparse
            if fast is not None:
                fast.func = cmd_run
                return _dispatch(fast)
        ap = _parser()
        args = ap.parse_args(argv)
        if not getattr(args, "func", None):
            if argv is None and sys.stdin.isatty() and sys.stdout.isatty():
                args.func = cmd_repl  # plain `hookql` on a terminal
            else:
                ap.print_help()
                return 2
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last resort: never a bare traceback for users
        kernel = sys.modules.get("hookql.kernel")  # its errors exist only once it is imported
        if kernel and isinstance(exc, kernel.KernelError):
            print(f"hookql: error: {_shown(exc)}", file=sys.stderr)
            return 1
        if os.environ.get("HOOKQL_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"hookql: internal error: {type(exc).__name__}: {_shown(exc)}\n"
              "  this is a bug in HookQL; rerun with HOOKQL_DEBUG=1 for details and report it", file=sys.stderr)
        return 70


def _parser():
    import argparse

    ap = argparse.ArgumentParser(prog="hookql", description="HookQL: a small declarative language for Linux eBPF.")
    ap.add_argument("--version", action="version", version=f"hookql {__version__}")
    sub = ap.add_subparsers(metavar="COMMAND")

    def kernel_opts(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--kernel", metavar="VERSION",
                       help="check against a shipped reference kernel (6.1, 6.18) instead of the running one")
        g.add_argument("--btf", metavar="PATH", help="check against this BTF (raw, or a vmlinux ELF with .BTF)")

    p = sub.add_parser("check", help="parse and type-check scripts; nothing is loaded",
                       description="Parse and type-check scripts against a kernel's BTF. Exit 0 when clean, "
                                   "1 when there are errors (all of them are printed).")
    p.add_argument("files", nargs="*", metavar="FILE", help="scripts to check ('-' reads standard input)")
    p.add_argument("-e", dest="expr", metavar="SCRIPT", help="check this script text instead of files")
    kernel_opts(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when clean")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--serve", action="store_true",
                   help="also warn about what `hookql serve` would fold: `by` keys with unbounded values (pid, "
                        "tid, addresses, sport, cgroup, timestamps)")
    p.add_argument("--series-cap", type=_serve_arg("series_cap"), default=None, metavar="N",
                   help="the series cap the --serve warnings name (implies --serve; default: serve's)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="compile, load and attach a script; print its aggregations",
                       description="Attach a script's probes and print its aggregations when it stops: on "
                                   "Ctrl-C, SIGTERM, --duration, or when the -c command or -p process exits.")
    runargs.add_to(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile a script to a BPF object (no root needed)")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("-e", dest="expr", metavar="SCRIPT", help="compile this script text instead of a file")
    p.add_argument("-o", dest="output", metavar="OUT", help="write the object here (default: FILE.bpf.o)")
    p.add_argument("--emit-c", action="store_true", help="print the generated C instead of building")
    p.add_argument("--attach", choices=("auto", "kprobe", "fentry"), default="auto",
                   help="how kprobe:/kretprobe: attach (auto: kprobes if this kernel has them, else fentry)")
    kernel_opts(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("lib", help="script libraries: add, install, update, list (hookql.toml, hookql.lock)")
    lib = p.add_subparsers(dest="lib_cmd", metavar="ACTION", required=True)
    q = lib.add_parser("add", help="add a git library to hookql.toml and install it")
    q.add_argument("name")
    q.add_argument("--git", required=True, metavar="URL")
    q.add_argument("--version", default="*", metavar="RANGE", help="semver range, e.g. ^1.2 (default: any)")
    q = lib.add_parser("install", help="resolve, fetch and lock (keeps locked versions that still fit)")
    q.add_argument("--locked", action="store_true", help="for CI: install exactly the lock; fail if missing or stale")
    q = lib.add_parser("update", help="move libraries to the newest versions their ranges allow")
    q.add_argument("names", nargs="*", metavar="NAME")
    lib.add_parser("list", help="the locked libraries")
    p.set_defaults(func=cmd_lib)

    p = sub.add_parser("repl", help="explore hooks, type clauses, watch live aggregations")
    p.set_defaults(func=cmd_repl)

    p = sub.add_parser("serve", help="run scripts as a service; their aggregations as Prometheus metrics",
                       description="Load and attach every script and serve their aggregations as Prometheus "
                                   "metrics on /metrics (and /healthz) until SIGTERM; SIGHUP reloads the scripts "
                                   "(unchanged ones keep their counts; new programs attach before old ones "
                                   "detach); `emit` lines go to standard output as JSON.")
    from hookql.serve import cli as serve_cli

    serve_cli.add_to(p)
    p.set_defaults(func=cmd_serve)

    from hookql.testing import cli as test_cli

    p = sub.add_parser("test", help="run test cases (*.hqt) of scripts and libraries, here or in a VM",
                       description="Run the test cases under PATHs: each case's script is checked, built, "
                                   "loaded and attached, its workloads run, and its aggregations and events are "
                                   "compared with what the case expects.", epilog=test_cli.FORMAT,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    test_cli.add_to(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("hooks", help="list the hook catalog, or describe one hook",
                       description="List catalog hooks matching PATTERN (a substring or glob of PROVIDER:NAME), "
                                   "or with -v describe one hook on this kernel.")
    p.add_argument("pattern", nargs="?", metavar="PATTERN|HOOK")
    p.add_argument("-v", "--verbose", action="store_true", help="describe HOOK: signature, fields, seed text")
    kernel_opts(p)
    p.set_defaults(func=cmd_hooks)
    return ap


def _unsafe_btf(exc) -> int:
    print(f"hookql: error: the kernel's BTF has a name HookQL cannot write as C ({_shown(exc)}); "
          "is this BTF damaged?", file=sys.stderr)
    return 1


def _shown(text) -> str:
    """Outside text (a file name, clang's messages) as it may reach a terminal: control characters escaped."""
    from hookql.runtime.escape import escape_text

    return escape_text(str(text), backslash=False)


def _diagnostic(*args):
    from hookql.diagnostics import Diagnostic

    return Diagnostic(*args)


def _read_sources(files: list[str], expr: str | None) -> list[Source] | None:
    """Scripts named on the command line; None after saying why one can't be read."""
    texts = [_read_text(f) for f in files]
    if any(t is None for t in texts):
        return None
    return [_source(name, text) for name, text in ([("<-e>", expr)] if expr is not None else []) + texts]


_REAL: dict[str, str] = {}  # a FILE argument -> the real path of the file that was read


def _source(name: str, text: str):
    """The Source of a script read by _read_text: with the real path of what was read, so that its
    `use "PATH"`s resolve from there (hookql/checker.py FileResolver), whatever the name points at later."""
    from hookql.source import Source

    return Source(name, text, real=_REAL.get(name))


def _read_text(f: str) -> tuple[str, str] | None:
    """(the name errors print, the text) of a FILE argument; None after saying why it can't be read."""
    if f == "-":
        return "<stdin>", sys.stdin.read()
    try:
        # O_NONBLOCK: a FIFO put where the script was would otherwise hang the open; only a file is read
        fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, encoding="utf-8") as fh:
            if not _is_file(fd):
                raise IsADirectoryError(21, "not a regular file")
            try:
                _REAL[f] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                _REAL[f] = os.path.realpath(f)
            return f, fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{_shown(f)}: error: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return None


def _is_file(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _checked_or_report(src: Source, kern: K.Kernel):
    """(checked script or None, its diagnostics as text), after printing them."""
    from hookql.pipeline import check_source

    result = check_source(src, kern)
    color = sys.stderr.isatty()
    diags = result.diagnostics.sorted()
    for d in diags:
        print(d.render(color), file=sys.stderr)
    if not result.ok:
        n = len(result.diagnostics.errors)
        print(f"{n} error{'s' * (n != 1)} (kernel {kern.label}); nothing was loaded", file=sys.stderr)
        return None, []
    return result.checked, [d.render() for d in diags]


def _single_script(args, cmd: str) -> tuple[str, str] | int:
    """(name, text) of the one script `run`/`compile` take; or the exit code after saying why not."""
    if (args.file is None) == (args.expr is None):
        print(f"hookql {cmd}: give one FILE or -e SCRIPT", file=sys.stderr)
        return 2
    got = ("<-e>", args.expr) if args.expr is not None else _read_text(args.file)
    return 1 if got is None else got


def _early_clang():
    """A clang started now, for the object the front end is about to make (codegen/build.py EarlyClang);
    None where it cannot start (the build says why, in its turn)."""
    from hookql.codegen.build import BuildError, EarlyClang

    try:
        return EarlyClang(meanwhile=_printing_imports)
    except BuildError:
        return None


def _printing_imports() -> None:
    """While clang compiles (on the other core), import what `run` prints with once attached: a warm run
    imports it after attaching, this one has the time now."""
    import shlex  # noqa: F401 - runtime/session.py: -c COMMAND

    import hookql.runtime.decode  # noqa: F401
    import hookql.runtime.output  # noqa: F401


def _in_background(fn):
    """Call fn() on a thread of its own; what is returned waits for it and gives fn's result (or raises what
    it raised).  For work that spends its time outside the GIL (libbpf parsing BTF)."""
    import _thread  # not threading: its import costs more than the work it would overlap

    done = _thread.allocate_lock()
    done.acquire()
    out: list = []

    def work():
        try:
            out.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            out.append((False, exc))
        finally:
            done.release()

    _thread.start_new_thread(work, ())

    def result():
        with done:
            ok, value = out[0]
        if not ok:
            raise value
        return value

    return result


def _build(checked, mode: str, out=None, early=None):
    """Compile to an object; or the exit code after reporting a lowering or clang failure."""
    from hookql.codegen.build import BuildError
    from hookql.codegen.escape import UnsafeCText
    from hookql.codegen.ir import LoweringError
    from hookql.pipeline import compile_checked

    try:
        return compile_checked(checked, mode, out, early=early)
    except LoweringError as exc:
        print(_diagnostic("error", exc.span, str(exc)).render(sys.stderr.isatty()), file=sys.stderr)
    except BuildError as exc:
        if _PENDING:  # clang stopped by the Ctrl-C (SIGINT goes to the whole group) that stops this run: quiet
            pass
        elif not exc.bug:
            print(f"hookql: error: {_shown(exc)}", file=sys.stderr)
        else:
            print(f"hookql: error: clang could not build the generated program:\n{_shown(exc)}\n"
                  "  this is a bug in HookQL; `hookql compile --emit-c` shows the C", file=sys.stderr)
    except UnsafeCText as exc:
        _unsafe_btf(exc)
    return 1


# -- run and compile --------------------------------------------------------------
def _no_clauses(src, cmd: str) -> int:
    """A script with no `on` clause (empty, comments, only consts and defs): nothing to attach.
    `hookql check` accepts it: a library of consts and defs checks on its own."""
    from hookql.source import Span

    print(_diagnostic("error", Span(src, 1, 1, 1, 2), f"no clauses: nothing for `hookql {cmd}` to attach",
                      "add a clause, e.g. `on tracepoint:syscalls:sys_enter_getsockopt { count }`; "
                      "a file of only consts and defs is a library: `use` it from a script").render(
        sys.stderr.isatty()), file=sys.stderr)
    return 1

def cmd_compile(args) -> int:
    from hookql.codegen.escape import UnsafeCText
    from hookql.codegen.ir import LoweringError
    from hookql.pipeline import generate_c
    from hookql.runtime import features

    from hookql import kernel as K

    script = _single_script(args, "compile")
    if isinstance(script, int):
        return script
    src = _source(*script)
    checked, _ = _checked_or_report(src, K.select(args.kernel, args.btf))
    if checked is None:
        return 1
    if not checked.clauses:
        return _no_clauses(src, "compile")
    mode = features.func_mode() if args.attach == "auto" else args.attach
    if args.emit_c:
        try:
            sys.stdout.write(generate_c(checked, mode)[0])
        except LoweringError as exc:
            print(_diagnostic("error", exc.span, str(exc)).render(sys.stderr.isatty()), file=sys.stderr)
            return 1
        except UnsafeCText as exc:
            return _unsafe_btf(exc)
        return 0
    out = args.output or (os.path.splitext(args.file)[0] + ".bpf.o" if args.file else "out.bpf.o")
    compiled = _build(checked, mode, out)
    if isinstance(compiled, int):
        return compiled
    how = f"; kprobes attach as {mode}" if {c.hook.provider for c in checked.clauses} & {"kprobe", "kretprobe"} else ""
    print(f"wrote {_shown(out)} ({'cached' if compiled.cached else 'built'}{how})", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from hookql.cache import runs
    from hookql.runtime import features
    from hookql.runtime.libbpf import LibbpfError
    from hookql.runtime.loader import LoadError
    from hookql.runtime.session import RunOptions, Session, _alive

    script = _single_script(args, "run")
    if isinstance(script, int):
        return script
    if args.interval and args.every is None:
        print("hookql run: --interval prints each interval's values: give the interval with --every, "
              "e.g. --every 1s --interval", file=sys.stderr)
        return 2
    if args.pid is not None and not _alive(args.pid):
        print(f"hookql: error: -p {args.pid}: no such process; give the id of a running process", file=sys.stderr)
        return 1
    mode = features.func_mode()
    key = runs.key(*script, mode)
    hit = runs.load(key)
    if hit and not hit["layout"]["probes"]:
        hit = None  # nothing to attach: the cold path says so, at the script's line and column
    if hit:  # run before on this kernel: no parse, check, render or clang
        for d in hit["diagnostics"]:
            print(d, file=sys.stderr)
        obj, name, layout, how = hit["object"], hit["object_name"], hit["layout"], "cached run"
    else:
        early = _early_clang()  # clang loads on another core while the front end runs
        try:
            from hookql import kernel as K

            kernel = _in_background(K.running)  # libbpf parses the kernel's BTF (no GIL) while the front end
            import hookql.pipeline  # noqa: F401 - is imported here

            src = _source(*script)
            checked, diagnostics = _checked_or_report(src, kernel())
            if checked is None:
                return 1
            if not checked.clauses:
                return _no_clauses(src, "run")
            if _PENDING:
                return 128 + _PENDING[0]
            compiled = _build(checked, mode, early=early)
        finally:
            if early is not None:
                early.close()
        if _PENDING:  # clang may have been interrupted too: not an error of the script's
            return 128 + _PENDING[0]
        if isinstance(compiled, int):
            return compiled
        obj, name, layout = compiled.object, compiled.object_name, compiled.layout
        how = "cached" if compiled.cached else "built"
        runs.store(key, name, layout, diagnostics)
    if args.verbose:
        print(f"hookql: object {name} ({how}); kprobes attach as {mode}", file=sys.stderr)
    opts = RunOptions(args.duration, args.every, args.command, args.pid, args.format, args.enforce,
                      args.verbose, args.map_size, args.ringbuf_size, interval=args.interval, top=args.top,
                      emit_format=args.emit_format)
    if _PENDING:
        return 128 + _PENDING[0]
    try:
        return Session(obj, layout, opts, pending=_PENDING).run()
    except (LoadError, LibbpfError) as exc:
        hint = getattr(exc, "hint", None)
        print(f"hookql: error: {exc.strerror if isinstance(exc, LibbpfError) else exc}", file=sys.stderr)
        if hint:
            print(f"  hint: {hint}", file=sys.stderr)
        log = getattr(exc, "log", "")
        if log and args.verbose:
            print(_shown(log), file=sys.stderr)
        elif log:
            print("  (-v shows libbpf's log)", file=sys.stderr)
        return 1


def cmd_lib(args) -> int:
    from hookql.libs import cli as libcli

    return libcli.run(args)


def cmd_test(args) -> int:
    from hookql.testing import cli as test_cli

    return test_cli.run(args)


def cmd_serve(args) -> int:
    from hookql.serve import cli as serve_cli

    return serve_cli.run(args)


def cmd_repl(args) -> int:
    from hookql.repl import main as repl_main

    return repl_main()


# -- check ---------------------------------------------------------------------
def _serve_arg(name: str):
    """An argparse type from hookql/serve/cli.py's converter NAME, imported when an argument is converted."""
    def typed(text: str):
        from hookql.serve import cli as serve_cli

        return serve_cli._arg(getattr(serve_cli, name))(text)

    typed.__name__ = name
    return typed


def cmd_check(args) -> int:
    sources = _read_sources(args.files, args.expr)
    if sources is None:
        return 1
    if not sources:
        print("hookql check: give a FILE or -e SCRIPT", file=sys.stderr)
        return 2
    from hookql import kernel as K

    kern = K.select(args.kernel, args.btf)
    color = args.color == "always" or (args.color == "auto" and sys.stderr.isatty())
    errors = warnings = 0
    from hookql.pipeline import check_source

    for src in sources:
        result = check_source(src, kern)
        if (args.serve or args.series_cap) and result.checked is not None:
            from hookql.serve import cli as serve_cli
            from hookql.serve.lint import warn_unbounded_keys

            warn_unbounded_keys(result.checked, result.diagnostics, args.series_cap or serve_cli.DEFAULT_SERIES_CAP)
        for d in result.diagnostics.sorted():
            print(d.render(color), file=sys.stderr)
        errors += len(result.diagnostics.errors)
        warnings += len(result.diagnostics) - len(result.diagnostics.errors)
    if errors:
        print(f"{errors} error{'s' * (errors != 1)}"
              + (f", {warnings} warning{'s' * (warnings != 1)}" if warnings else "")
              + f" (kernel {kern.label})", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"ok: {len(sources)} script{'s' * (len(sources) != 1)} checked against kernel {kern.label}"
              + (f", {warnings} warning{'s' * (warnings != 1)}" if warnings else ""), file=sys.stderr)
    return 0


# -- hooks ---------------------------------------------------------------------
def cmd_hooks(args) -> int:
    from hookql import kernel as K
    from hookql.catalog import Catalog

    kern = K.select(args.kernel, args.btf)
    cat = Catalog.load()
    if args.verbose:
        if not args.pattern:
            print("hookql hooks -v: name a hook, e.g. lsm:socket_connect", file=sys.stderr)
            return 2
        return _describe_hook(cat, kern, args.pattern)
    if args.pattern and args.pattern.split(":", 1)[0] in ("tracepoint", "t", "tp"):
        return _list_tracepoints(kern, args.pattern)
    rows = []
    reasons: dict[str, K.Attach] = {}
    for (prov, name), entries in sorted(cat.by_hook.items()):
        probe = f"{prov}:{name}"
        spellings = [probe] + [f"{prov}:{e.seed_name}" for e in entries]
        if args.pattern and not any(_matches(args.pattern, s) for s in spellings):
            continue
        here = kern.btf.func(f"bpf_lsm_{name}" if prov == "lsm" else name) is not None
        att = reasons.setdefault(prov, K.attach_support(kern, prov))
        rows.append((probe, "yes" if here else "NO", att.shown if here else "-",
                     ",".join(entries[0].in_kernels) or "-", entries[0].title))
    if not rows:
        print(f"no catalog hook matches '{_shown(args.pattern)}'", file=sys.stderr)
        return 1
    w = max(len(r[0]) for r in rows)
    aw = max(6, *(len(r[2]) for r in rows))
    print(f"{'HOOK':<{w}}  {'BTF':<3}  {'ATTACH':<{aw}}  {'REFERENCE':<9}  DESCRIPTION")
    for probe, here, att, refs, title in rows:
        print(_shown(f"{probe:<{w}}  {here:<3}  {att:<{aw}}  {refs:<9}  {title}"))
    print(f"\n{len(rows)} hooks; BTF: the hook exists on kernel {kern.label}; ATTACH: it can attach here.",
          file=sys.stderr)
    for prov, att in reasons.items():
        if att.verdict != "-":
            print(f"  ATTACH {prov}: {att.shown}: {att.reason}", file=sys.stderr)
    print("`hookql hooks -v HOOK` describes one; `hookql hooks 'tracepoint:*'` lists tracepoints.", file=sys.stderr)
    return 0


def _list_tracepoints(kern, pattern: str) -> int:
    from hookql.catalog import tracepoint_list

    from hookql import kernel as K

    tps, source = tracepoint_list(kern)
    rest = pattern.partition(":")[2] or "*"
    cat_pat, sep, ev_pat = rest.partition(":")
    from fnmatch import fnmatchcase

    glob = any(c in rest for c in "*?[")
    part = (lambda pat, v: fnmatchcase(v, pat or "*")) if glob else (lambda pat, v: pat in v)
    if sep:  # CATEGORY:NAME; BTF's unknown category (?) matches any
        rows = [f"tracepoint:{c}:{e}" for c, e in tps if (c == "?" or part(cat_pat, c)) and part(ev_pat, e)]
    else:  # one word: the category or the name
        rows = [f"tracepoint:{c}:{e}" for c, e in tps if part(rest, e) or (c != "?" and part(rest, c))]
    if not rows:
        print(f"no tracepoint matches '{_shown(pattern)}' (from {source})", file=sys.stderr)
        return 1
    att = K.attach_support(kern, "tracepoint")
    for r in rows:
        print(_shown(r))  # names from BTF, which --btf can make anything
    print(f"\n{len(rows)} tracepoints, from {source}; ATTACH: {att.shown} ({att.reason}). "
          "`hookql hooks -v tracepoint:CATEGORY:NAME` shows one's fields.", file=sys.stderr)
    if any(r.startswith("tracepoint:?:") for r in rows):
        print("  ?: BTF does not record tracepoint categories (tracefs does; it needs root); "
              "offline, a script's category is not checked.", file=sys.stderr)
    return 0


def _matches(pattern: str, name: str) -> bool:
    if any(c in pattern for c in "*?["):
        from fnmatch import fnmatchcase

        return fnmatchcase(name, pattern) or fnmatchcase(name.split(":", 1)[1], pattern)
    return pattern in name


def _describe_hook(cat: Catalog, kern: K.Kernel, spec: str) -> int:
    from hookql.catalog import ProbeError

    if ":" in spec:
        provider, *target = spec.split(":")
    else:
        hits = [e for e in cat.entries if spec in (e.seed_name, e.hook)]
        provider, target = (hits[0].provider if hits else "kprobe"), [spec]
    try:
        hook = cat.resolve(provider, target, kern)
    except ProbeError as exc:
        print(_diagnostic("error", None, str(exc), exc.hint).render(), file=sys.stderr)
        return 1
    _print_hook(hook, cat)
    return 0


def _print_hook(h: Hook, cat: Catalog) -> None:
    out = lambda text: print(_shown(text))  # noqa: E731  names and types from BTF, which --btf can make anything
    spellings = sorted({e.seed_name for e in h.seeds} - {h.name})
    out(h.probe + (f"   (seed: {', '.join(spellings)})" if spellings else ""))
    for e in h.seeds[:1]:
        out(f"  {e.title}")
        out(f"  {e.description_ko}")
        out(f"  Use case: {e.use_case}")
        src = e.source + (f" (in the kernel: {e.actual_source})" if e.actual_source and e.actual_source != e.source else "")
        out(f"  Source:   {src}")
    out(f"  Kernel:   {h.kernel.label}")
    out(f"  Signature: {h.signature()}")
    for e in h.seeds:
        out(f"  Seed ({e.seed_file}): {e.seed_decl()}")
    if h.seeds:
        refs = ", ".join(h.seeds[0].in_kernels) or "none"
        out(f"  Reference kernels with it: {refs}")
    if h.caveat:
        out(f"  Caveat: {h.caveat['why']}" + (f"; use {h.provider}:{h.caveat['use']}" if h.caveat["use"] else ""))
    if h.aliases:
        out("  Seed names accepted: " + ", ".join(f"{a} = {k}" for a, k in h.aliases.items()))
    if h.seed_only:
        out("  Seed arguments this kernel lacks: " + ", ".join(h.seed_only.values()))
    groups = {"arg": "Arguments", "retval": "Return value", "tp": "Tracepoint fields", "derived": "Network fields",
              "builtin": "Builtins"}
    from hookql.fields import ARGS, CURRENT, shadowed_builtins

    hidden = shadowed_builtins(h.fields)  # builtins a field of the hook has the name of: both are shown
    shown = [*h.fields.values(), *hidden.values()]
    w = max(len(f.name) for f in shown) + (len(CURRENT) + 1 if hidden else 0)
    tw = max(len(str(f.ty)) for f in shown)
    for kind, title in groups.items():
        fs = [f for f in shown if f.kind == kind]
        if not fs:
            continue
        out(f"  {title}:")
        for f in fs:
            if f.name not in hidden:
                out(f"    {f.name:<{w}}  {str(f.ty):<{tw}}  {f.doc}")
            elif kind == "builtin":
                out(f"    {CURRENT + '.' + f.name:<{w}}  {str(f.ty):<{tw}}  {f.doc} (the builtin; bare `{f.name}` "
                    f"is the hook's field)")
            else:
                out(f"    {f.name:<{w}}  {str(f.ty):<{tw}}  {f.doc} (also {ARGS}.{f.name}; not the builtin "
                    f"{f.name}, which is {CURRENT}.{f.name}: a bare `{f.name}` is this field, with a warning)")
    if any(f.entry for f in h.fields.values()):
        out("  (arguments and entry fields are read when the call began, saved per thread until it returns"
            + ("; the user memory a saved pointer names (a string, a sockaddr) is read at the return"
               if any(f.entry and (f.ty.user or f.source == "usockaddr") for f in h.fields.values()) else "")
            + ")")
    if h.provider == "lsm":
        out(f"  Can deny: {'yes (with --enforce)' if h.can_deny else 'no, the hook returns void'}")
    if h.provider == "tracepoint":
        out(f"  Fields from: {h.tp_source or 'nowhere'}")
    if not h.tp_fields_known:
        out("  (BTF does not give this tracepoint's fields; tracefs of the running kernel does, as root)")
    from hookql import kernel as K

    att = K.attach_support(h.kernel, h.provider)
    if att.verdict != "-":
        out(f"  Attach here: {att.shown}: {att.reason}")


if __name__ == "__main__":
    sys.exit(main())
