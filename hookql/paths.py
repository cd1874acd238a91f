"""Where HookQL keeps its caches (XDG)."""
from __future__ import annotations

import os


def cache_path(*parts: str) -> str:
    """A path under the cache, as a string: the warm path of `run` never imports pathlib (it pulls in `re`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hookql", *parts)


def cache_dir():
    from pathlib import Path

    return Path(cache_path())
