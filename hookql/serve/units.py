"""One script as the service runs it: checked, built for serving, loaded and attached.

Building never touches what runs: a script that does not check or build is an error (logged by the
caller, counted), and the running set is left as it was.  Loading and attaching is separate, so a
reload attaches every new program before it detaches an old one.
"""
from __future__ import annotations

import hashlib
import os

from hookql.diagnostics import HookQLError


class BuildFailed(Exception):
    """A script that cannot be served: the message is what to log (diagnostics, file:line:col)."""


def script_paths(args: list[str]) -> list[str]:
    """The scripts the arguments name: files as given, directories' *.hq files (not recursive), sorted.
    A path that is neither is an error (a reload that lost a directory must not silently serve nothing)."""
    out: list[str] = []
    for a in args:
        if os.path.isdir(a):
            try:  # gone since, or no descriptor left: an error to log, never the service's end
                names = os.listdir(a)
            except OSError as exc:
                raise BuildFailed(f"{a}: cannot list it: {exc.strerror}") from None
            out += sorted(os.path.join(a, f) for f in names
                          if f.endswith(".hq") and not f.startswith(".") and os.path.isfile(os.path.join(a, f)))
        elif os.path.isfile(a):
            out.append(a)
        else:
            raise BuildFailed(f"{a}: no such script or directory")
    return list(dict.fromkeys(out))


class Unit:
    """A script built for serving (`build`), then loaded and attached (`start`), and released (`stop`)."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text
        self.digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
        self.layout: dict | None = None
        self.object: bytes | None = None
        self.obj = None  # runtime/loader.py BpfObject, once started
        self.links = []
        self.drainer = None
        self.metric_names: dict[str, str] = {}  # aggregation map -> metric name (exporter.py)
        self.label_cache: dict[str, dict[bytes, tuple]] = {}  # aggregation map -> key bytes -> label values
        self.warnings: list[str] = []

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def build(self, kernel, func_mode: str, series_cap: int | None = None) -> None:
        from hookql.cli import _source
        from hookql.codegen.build import BuildError
        from hookql.codegen.escape import UnsafeCText
        from hookql.codegen.ir import LoweringError
        from hookql.pipeline import check_source, compile_checked

        result = check_source(_source(self.path, self.text), kernel)
        if result.ok and series_cap is not None:  # what `hookql check --serve` says: keys the cap will fold
            from hookql.serve.lint import warn_unbounded_keys

            warn_unbounded_keys(result.checked, result.diagnostics, series_cap)
        diags = result.diagnostics.sorted()
        if not result.ok:
            raise BuildFailed("\n".join(d.render() for d in diags))
        if not result.checked.clauses:
            raise BuildFailed(f"{self.path}: no clause to attach (only definitions)")
        self.warnings = [d.render() for d in diags]
        try:
            compiled = compile_checked(result.checked, func_mode, serve=True)
        except (LoweringError, BuildError, UnsafeCText, HookQLError) as exc:
            raise BuildFailed(f"{self.path}: {exc}") from None
        self.layout, self.object = compiled.layout, compiled.object

    slot = 0  # the script's slot in the service's hq_epoch map (one per path, kept across reloads)
    epoch = 0  # this version's: its programs run only while hq_epoch[slot] holds it

    def start(self, enforce: bool, map_entries: int | None, epoch_fd: int = -1) -> None:
        """Load and attach; on any failure nothing of this unit stays loaded.  Its programs do nothing until
        the service makes this version live (hq_epoch[slot] = epoch)."""
        from hookql.runtime.decode import MapReader
        from hookql.runtime.loader import BpfObject

        from hookql.serve.drain import Drainer

        obj = BpfObject(self.object, self.layout, name=self.name)
        obj.__enter__()
        try:
            obj.configure(0, enforce, map_entries, None,
                          live=(epoch_fd, self.slot, self.epoch) if epoch_fd >= 0 else None)
            obj.load()
            self.links = obj.attach_all()
            self.drainer = Drainer(obj, self.layout, MapReader())
        except BaseException:
            obj.close()
            raise
        self.obj = obj

    def stop(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None
            self.links = []
