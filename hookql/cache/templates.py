"""The Jinja templates' compiled bytecode, kept as verified cache entries.

Jinja's own FileSystemBytecodeCache unpickles a header from each file and
runs the code it holds: a planted file there is code run as root.  Here a
bucket is a blob (blobs.py) holding the template's source checksum and the
marshalled code, with no pickle: loaded only from the user's own checked
cache and only when its content hash matches what was written.
"""
from __future__ import annotations

import marshal

import jinja2

from hookql.cache import blobs

_KIND = "jinja"


class VerifiedBytecodeCache(jinja2.BytecodeCache):
    def __init__(self, tag: str):
        self.tag = tag  # HookQL's and Python's versions: bytecode is per interpreter

    def _name(self, bucket) -> str:
        return f"{bucket.key}-{self.tag}.code"

    def load_bytecode(self, bucket) -> None:
        data = blobs.get(_KIND, self._name(bucket))
        if data is None:
            return
        checksum, _, code = data.partition(b"\n")
        if checksum.decode("ascii", "replace") != bucket.checksum:
            return  # the template changed since: compiled again, and stored over it
        try:
            bucket.code = marshal.loads(code)
        except (EOFError, ValueError, TypeError):
            bucket.reset()

    def dump_bytecode(self, bucket) -> None:
        if bucket.code is not None:
            blobs.put(_KIND, self._name(bucket), bucket.checksum.encode("ascii") + b"\n" + marshal.dumps(bucket.code))
