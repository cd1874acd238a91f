"""`hookql repl`: explore hooks, type clauses, watch live aggregations.

Built on prompt_toolkit: history under $XDG_STATE_HOME/hookql, multi-line
clauses (Enter inserts a new line until the block closes), highlighting,
Emacs keys, and completion that knows providers, hooks, fields, constants,
actions and meta-commands.  A complete clause is checked, compiled and
attached; its aggregations redraw every second until Ctrl-C, then print and
detach.  A clause ending in `&` stays attached in the background.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.lexers import Lexer
from prompt_toolkit.styles import Style

from hookql import kernel as K
from hookql.catalog import PROVIDER_NAMES, Catalog, ProbeError
from hookql.lexer import AGGREGATIONS
from hookql.parser import needs_more

META = {
    ":hooks": "list catalog hooks [PATTERN]", ":describe": "a hook's signature, fields and description",
    ":c": "the generated BPF C of the last clause", ":list": "clauses attached in the background",
    ":detach": "detach background clause N (prints its results)", ":save": "save the session as a script",
    ":load": "run a script file", ":bg": "run the last clause again, in the background", ":help": "this help",
    ":quit": "leave (detaches everything)",
}
KEYWORDS = {"on", "where", "and", "or", "not", "in", "by", "emit", "deny", "const", "use"}
STYLE = Style.from_dict({"keyword": "bold #5f87d7", "probe": "#00af87", "action": "bold #d75f00",
                         "number": "#af87d7", "string": "#87af5f", "comment": "italic #808080"})
_TOKEN = re.compile(r"(?P<comment>#.*$|//.*$)|(?P<string>\"(?:[^\"\\]|\\.)*\"?)"
                    r"|(?P<probe>\b[a-z]+(?::[\w.*]+)+)|(?P<number>\b\d[\w.:/]*)|(?P<word>[A-Za-z_]\w*)")


def history():
    """The REPL's history file in the user's own state directory (checked as the cache is: as root,
    a user's XDG_STATE_HOME could point the history's writes at any file); in memory when refused."""
    from prompt_toolkit.history import InMemoryHistory

    from hookql.cache import dirs

    try:
        return FileHistory(os.path.join(dirs.private(dirs.state_base()), "history"))
    except dirs.CacheError as exc:
        dirs.warn(str(exc), "keeping no history")
        return InMemoryHistory()


class HookQLLexer(Lexer):
    def lex_document(self, document: Document):
        lines = document.lines

        def line(i: int):
            text, out, pos = lines[i], [], 0
            for m in _TOKEN.finditer(text):
                if m.start() > pos:
                    out.append(("", text[pos:m.start()]))
                kind = m.lastgroup
                if kind == "word":
                    kind = "keyword" if m[0] in KEYWORDS else "action" if m[0] in AGGREGATIONS else ""
                out.append((f"class:{kind}" if kind else "", m[0]))
                pos = m.end()
            out.append(("", text[pos:]))
            return out
        return line


class HookQLCompleter(Completer):
    def __init__(self, repl: "Repl"):
        self.repl = repl

    def get_completions(self, document: Document, complete_event):
        text = document.text_before_cursor
        word = re.search(r"[\w:.*]*$", text)[0]
        before = text[: len(text) - len(word)]
        if text.lstrip().startswith(":"):
            yield from self._meta(text.lstrip(), word)
            return
        prev = re.findall(r"[\w:]+|[^\s\w]", before)
        if ":" in word:
            yield from self._hooks(word)
            return
        if prev and prev[-1] == "on":
            for p in PROVIDER_NAMES:
                if p.startswith(word):
                    yield Completion(p + ":", -len(word))
            return
        hook = self.repl.hook_of(text)
        names: list[tuple[str, str]] = []
        if hook is not None:
            names += [(n, str(f.ty)) for n, f in hook.fields.items()]
        if re.search(r"[{<;\n]\s*$", before) or (prev and prev[-1] in ("{", "<", ";")):
            names += [(a, "action") for a in (*AGGREGATIONS, "emit", "deny")]
        if word[:1].isupper():
            names += [(c, "constant") for c in self.repl.constants(word)]
        for name, meta in names:
            if name.startswith(word) and name != word:
                yield Completion(name, -len(word), display_meta=meta)

    def _hooks(self, word: str):
        prov, _, partial = word.partition(":")
        if prov == "tracepoint":
            yield from self._tracepoints(partial)
            return
        for name, here in self.repl.hook_names(prov):
            if name.startswith(partial):
                yield Completion(f"{prov}:{name}", -len(word), display_meta="" if here else "not on this kernel")

    def _tracepoints(self, partial: str):
        tracefs = self.repl.kernel.tracefs() if self.repl.kernel else None
        if tracefs is None:
            return
        cat, _, ev = partial.partition(":")
        base = tracefs / "events"
        if not _:
            for d in sorted(p.name for p in base.iterdir() if p.is_dir()):
                if d.startswith(cat):
                    yield Completion(f"tracepoint:{d}:", -len("tracepoint:" + partial))
            return
        if (base / cat).is_dir():
            for d in sorted(p.name for p in (base / cat).iterdir() if p.is_dir()):
                if d.startswith(ev):
                    yield Completion(f"tracepoint:{cat}:{d}", -len("tracepoint:" + partial))

    def _meta(self, text: str, word: str):
        parts = text.split()
        if len(parts) <= 1 and not text.endswith(" "):
            for m, doc in META.items():
                if m.startswith(word):
                    yield Completion(m, -len(word), display_meta=doc)
        elif parts[0] == ":describe":
            yield from self._hooks(word) if ":" in word else (
                Completion(p + ":", -len(word)) for p in ("kprobe", "lsm", "tracepoint") if p.startswith(word))


@dataclass
class Background:
    number: int
    text: str
    obj: object
    layout: dict
    printer: object = field(default=None)


class Repl:
    def __init__(self, out=sys.stdout):
        self.out = out
        self.catalog = Catalog.load()
        try:
            self.kernel = K.running()
        except K.KernelError as exc:
            self.kernel = None
            self.say(f"note: {exc}; checking against --kernel 6.18 instead")
            self.kernel = K.reference("6.18")
        self.defs: list[str] = []  # const/use lines, prepended to every clause
        self.clauses: list[str] = []  # clauses that ran, for :save
        self.background: list[Background] = []
        self.last_c: str | None = None
        self.last_clause: str | None = None
        self._hook_cache: dict[str, list[tuple[str, bool]]] = {}

    # -- helpers for the completer --
    def hook_names(self, prov: str) -> list[tuple[str, bool]]:
        if prov not in self._hook_cache:
            base = "kprobe" if prov == "kretprobe" else prov
            names = self.catalog.hook_names(base)
            self._hook_cache[prov] = [(n, self.kernel.btf.func(f"bpf_lsm_{n}" if base == "lsm" else n) is not None)
                                      for n in names]
        return self._hook_cache.get(prov, [])

    def hook_of(self, text: str):
        m = list(re.finditer(r"\bon\s+([a-z]+):([\w.:]+)", text))
        if not m:
            return None
        prov, target = m[-1][1], m[-1][2].split(":")
        try:
            return self.catalog.resolve(prov, target, self.kernel)
        except ProbeError:
            return None

    def constants(self, prefix: str) -> list[str]:
        from hookql import constants

        return constants.names_like(prefix, self.kernel.btf)[:200]

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- the loop --
    def run(self) -> int:
        keys = KeyBindings()

        @keys.add("enter")
        def _(event):
            buf = event.current_buffer
            text = buf.text
            if text.strip().startswith(":") or not needs_more(text.rstrip().rstrip("&")):
                buf.validate_and_handle()
            else:
                buf.insert_text("\n")

        session = PromptSession(history=history(), completer=HookQLCompleter(self),
                                lexer=HookQLLexer(), style=STYLE, multiline=True, key_bindings=keys,
                                complete_while_typing=False, prompt_continuation="...  ")
        self.say(f"HookQL REPL on kernel {self.kernel.label}. :help for commands, Tab completes, Ctrl-D leaves.")
        while True:
            try:
                text = session.prompt("hq> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            text = text.strip()
            if not text:
                continue
            if text.startswith(":"):
                if self.meta(text) == "quit":
                    break
                continue
            self.enter(text)
        self.detach_all()
        return 0

    # -- clauses --
    def enter(self, text: str, background: bool = False) -> None:
        from hookql.checker import Checker
        from hookql.diagnostics import Diagnostics
        from hookql.parser import parse
        from hookql.source import Source

        if text.endswith("&"):
            text, background = text[:-1].rstrip(), True
        diags = Diagnostics()
        # earlier constants apply; the clause's own lines keep their numbers after them
        prefix = "\n".join(self.defs)
        source = Source("<repl>", (prefix + "\n" if prefix else "") + text)
        script = parse(source, diags)
        checked = Checker(self.kernel).check(script, diags)
        for d in diags.sorted():
            self.say(d.render(color=self.out.isatty()))
        if diags.errors:
            return
        if not script.clauses:  # definitions only: remember them for the clauses to come
            self.defs.append(text)
            self.say("ok")
            return
        from hookql.codegen.ir import LoweringError
        from hookql.diagnostics import Diagnostic
        from hookql.pipeline import generate_c

        try:
            self.last_c, _ = generate_c(checked, self._mode())
        except LoweringError as exc:
            self.say(Diagnostic("error", exc.span, str(exc)).render(color=self.out.isatty()))
            return
        self.last_clause = text
        self.attach(checked, text, background)

    def _mode(self) -> str:
        from hookql.runtime import features

        return features.func_mode()

    def attach(self, checked, text: str, background: bool) -> None:
        from hookql.codegen.build import BuildError
        from hookql.pipeline import compile_checked
        from hookql.runtime.libbpf import LibbpfError
        from hookql.runtime.loader import BpfObject, LoadError
        from hookql.runtime.session import RunOptions, Session

        if not self.kernel.running:
            self.say("cannot attach: the REPL is checking against a reference kernel, not this one")
            return
        try:
            compiled = compile_checked(checked, self._mode())
        except BuildError as exc:
            self.say(f"error: clang failed: {exc}")
            return
        self.clauses.append(text)
        if background:
            obj = BpfObject(compiled.object, compiled.layout)
            try:
                obj.__enter__()
                obj.configure()
                obj.load()
                obj.attach_all()
            except (LoadError, LibbpfError) as exc:
                obj.close()
                self._load_failed(exc)
                return
            n = max([b.number for b in self.background], default=0) + 1
            self.background.append(Background(n, text, obj, compiled.layout))
            self.say(f"[{n}] attached in the background; :list shows it, :detach {n} stops it")
            return
        self.say("live; Ctrl-C stops and prints the final results")
        try:
            Session(compiled.object, compiled.layout, RunOptions(every=1.0), out=self.out, redraw=True).run()
        except (LoadError, LibbpfError) as exc:
            self._load_failed(exc)

    def _load_failed(self, exc) -> None:
        self.say(f"cannot attach: {getattr(exc, 'strerror', None) or exc}")
        if getattr(exc, "hint", None):
            self.say(f"  hint: {exc.hint}")

    def detach(self, b: Background) -> None:
        from hookql.runtime.decode import MapReader
        from hookql.runtime.output import TextPrinter

        printer = TextPrinter(self.out, "<repl>")
        reader = MapReader()
        for agg in b.layout["aggregations"]:
            printer.aggregation(agg, reader.rows(b.obj.map_fd(agg["map"]), agg))
        b.obj.close()
        self.background.remove(b)
        self.say(f"[{b.number}] detached")

    def detach_all(self) -> None:
        for b in list(self.background):
            self.detach(b)

    # -- meta-commands --
    def meta(self, text: str) -> str | None:
        cmd, *args = text.split(maxsplit=1)
        arg = args[0].strip() if args else ""
        if cmd in (":quit", ":q", ":exit"):
            return "quit"
        if cmd == ":help":
            for m, doc in META.items():
                self.say(f"  {m:<10} {doc}")
            self.say("  a clause ending in & stays attached in the background")
        elif cmd == ":hooks":
            self._cli(["hooks"] + ([arg] if arg else []))
        elif cmd == ":describe":
            self._cli(["hooks", "-v", arg]) if arg else self.say(":describe HOOK, e.g. :describe lsm:socket_connect")
        elif cmd == ":c":
            self.say(self.last_c or "no clause yet")
        elif cmd == ":list":
            for b in self.background:
                self.say(f"  [{b.number}] {b.text}")
            if not self.background:
                self.say("  nothing in the background")
        elif cmd == ":detach":
            b = next((b for b in self.background if str(b.number) == arg), None)
            self.detach(b) if b else self.say(f"no background clause {arg!r}; :list shows them")
        elif cmd == ":bg":
            self.enter(self.last_clause, background=True) if self.last_clause else self.say("no clause yet")
        elif cmd == ":save":
            self.save(arg)
        elif cmd == ":load":
            self.load(arg)
        else:
            self.say(f"unknown command {cmd}; :help lists them")
        return None

    def _cli(self, argv: list[str]) -> None:
        from hookql.cli import main

        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.out
        try:
            main(argv)
        finally:
            sys.stdout, sys.stderr = stdout, stderr

    def save(self, path: str) -> None:
        if not path:
            self.say(":save FILE")
            return
        body = "\n".join(["# saved from hookql repl", *self.defs, *self.clauses]) + "\n"
        try:
            Path(path).write_text(body)
        except OSError as exc:
            self.say(f"cannot write {path}: {exc.strerror}")
            return
        self.say(f"saved {len(self.clauses)} clause{'s' * (len(self.clauses) != 1)} to {path}")

    def load(self, path: str) -> None:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            self.say(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
            return
        self.enter(text)


def main() -> int:
    return Repl().run()
