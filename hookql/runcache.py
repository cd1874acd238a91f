"""The warm path of `hookql run`: a script run before on this kernel skips
parsing, checking, rendering and clang, and imports none of them.

Keyed by the script's text and name, the running kernel's identity (release,
build and BTF size), the attach mode, HookQL's version and the newest change
to its own files (an edited checkout or template must not replay an old
object); it stores the object's path, its layout and the diagnostics
(warnings) to print again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import hookql
from hookql import __version__
from hookql.paths import cache_dir


_USES = re.compile(r"^\s*(use|include)\b", re.MULTILINE)


def key(source_name: str, text: str, mode: str) -> str | None:
    """None when the script cannot be cached by its text alone (it `use`s or `include`s other files)."""
    if _USES.search(text):
        return None
    u = os.uname()
    try:
        btf_size = os.stat("/sys/kernel/btf/vmlinux").st_size
    except OSError:
        btf_size = 0
    ident = "\0".join([__version__, _code_stamp(), mode, u.release, u.version, str(btf_size), source_name, text])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _code_stamp() -> str:
    """The newest modification among HookQL's own files (a few dozen stats)."""
    import hookql.codegen
    import hookql.grammar
    import hookql.runtime

    newest = 0
    dirs = [os.path.dirname(m.__file__) for m in (hookql, hookql.codegen, hookql.grammar, hookql.runtime)]
    for d in dirs + [os.path.join(dirs[1], "templates")]:
        with os.scandir(d) as it:
            newest = max([newest, *(e.stat().st_mtime_ns for e in it if e.is_file())])
    return str(newest)


def _path(k: str):
    return cache_dir() / "run" / f"{k}.json"


def load(k: str | None) -> dict | None:
    if k is None:
        return None
    try:
        entry = json.loads(_path(k).read_text())
    except (OSError, ValueError):
        return None
    return entry if os.path.exists(entry.get("object", "")) else None


def store(k: str | None, object_path, layout: dict, diagnostics: list[str]) -> None:
    if k is None:
        return
    p = _path(k)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"object": str(object_path), "layout": layout, "diagnostics": diagnostics}))
        tmp.replace(p)
    except OSError:
        pass  # without a writable cache every run takes the cold path
