"""The warm path of `hookql run`: a script run before on this kernel skips
parsing, checking, rendering and clang, and imports none of them.

An entry is keyed by the script's text and name, the running kernel's
identity (release, build and BTF size), the attach mode, HookQL's version and
the newest change to its own files (an edited checkout or template must not
replay an old object), and the Python that wrote it; it stores the object's
path, its layout and the diagnostics (warnings) to print again.

Cheap on purpose, since it runs before anything attaches: the file name is a
checksum of that identity and the entry holds the identity itself, compared
in full on load (so a checksum collision is a miss, never the wrong program);
entries are marshal, which needs no import, rather than json (which pulls in re).
Entries and the objects they name are blobs (blobs.py): read only from the
user's own checked cache, and only when their content hash still matches.
"""
from __future__ import annotations

import marshal
import os
import sys
import zlib

import hookql
from hookql import __version__
from hookql.cache import blobs


def key(source_name: str, text: str, mode: str) -> str | None:
    """None when the script cannot be cached by its text alone (it `use`s or `include`s other files)."""
    if _uses_files(text):
        return None
    u = os.uname()
    try:
        btf_size = os.stat("/sys/kernel/btf/vmlinux").st_size
    except OSError:
        btf_size = 0
    return "\0".join([__version__, sys.version, _code_stamp(), mode, u.release, u.version, str(btf_size),
                      source_name, text])


def _uses_files(text: str) -> bool:
    """A line starting with the word `use` or `include`."""
    for line in text.splitlines():
        word = line.lstrip()
        for kw in ("use", "include"):
            after = word[len(kw):len(kw) + 1]
            if word.startswith(kw) and not (after.isalnum() or after == "_"):  # the whole word, as regex \b
                return True
    return False


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


def _name(k: str) -> str:
    b = k.encode()
    return f"{zlib.crc32(b):08x}{zlib.adler32(b):08x}.marshal"


def load(k: str | None) -> dict | None:
    """The entry for this identity, with the object's verified bytes as "object"; None on a miss."""
    if k is None:
        return None
    data = blobs.get("run", _name(k))
    if data is None:
        return None
    try:
        entry = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != k:
        return None
    obj = blobs.get("obj", entry.get("object", ""))
    if obj is None:  # gone, or damaged: the cold path rebuilds it
        return None
    return dict(entry, object=obj, object_name=entry["object"])


def store(k: str | None, object_name: str, layout: dict, diagnostics: list[str]) -> None:
    """Remember this run: object_name is the object's entry in the cache (codegen/build.py)."""
    if k is None or object_name is None:
        return
    try:
        data = marshal.dumps({"key": k, "object": object_name, "layout": layout, "diagnostics": diagnostics})
    except ValueError:
        return  # a layout marshal can't hold: every run takes the cold path
    blobs.put("run", _name(k), data)
