"""The library code's errors, and how hostile text is shown in them.

Names, URLs, versions and paths come from manifests, locks and git remotes:
anything may be in them, terminal escapes included.  `show` makes such text
safe to print (non-printable characters escaped as in JSON).
"""
from __future__ import annotations

import json


class ManifestError(Exception):
    """A hookql.toml that cannot be read or says something not allowed."""


class InstallError(Exception):
    """`hookql lib` cannot do what was asked; the message says why and what to do."""


def show(text: object) -> str:
    """text as it may be printed: itself when printable, else with escapes (\\n, \\u001b, ...)."""
    s = str(text)
    return s if s.isprintable() else json.dumps(s)[1:-1]
