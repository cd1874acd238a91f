"""Kernel stacks as text: addresses symbolised from /proc/kallsyms, as bpftrace and tcpdrop print them.

`count by kstack` keys (and `emit kstack` values) hold a stack id in the program's BPF_MAP_TYPE_STACK_TRACE map (hq_stacks), or -errno
when the kernel could not take the stack; runtime/decode.py reads the addresses of each id and this module
turns each into `func+offset` (decimal offset, as bpftrace prints kstack).  /proc/kallsyms is read once per
run, the first time a stack is printed (for `emit kstack`, when the run starts: runtime/events.c prints
those frames, from table()).  An address no symbol covers prints as hex.

/proc/kallsyms is kernel text, and names in it come from modules anyone with the right to load one chose:
the printers escape every frame (runtime/escape.py) like any other text.  Without root (kptr_restrict) the
file lists every address as 0: then stacks print as hex addresses and `note` says why.
"""
from __future__ import annotations

import bisect
import errno as _errno
from dataclasses import dataclass

KALLSYMS = "/proc/kallsyms"


@dataclass(frozen=True)
class KStack:
    """One kernel stack, innermost frame first; or why there is none (`error`, an errno name)."""

    id: int
    frames: tuple[str, ...] = ()
    error: str | None = None

    def lines(self) -> list[str]:
        if self.error:
            return [f"[no stack: {self.error}]"]
        return list(self.frames) or ["[empty stack]"]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def json(self):
        """A list of frames; None when the kernel could not take the stack."""
        return None if self.error else list(self.frames)


_ERRORS = {_errno.EEXIST: "EEXIST (its hash bucket held another stack)", _errno.ENOENT: "ENOENT (not in the stack map)",
           _errno.ENOMEM: "ENOMEM (the stack map is full)", _errno.EFAULT: "EFAULT (the stack could not be walked)"}


def stack_error(err: int) -> str:
    return _ERRORS.get(err) or _errno.errorcode.get(err, str(err))


class KSyms:
    def __init__(self, path: str = KALLSYMS):
        self.path = path
        self._addrs: list[int] | None = None
        self._names: list[str] = []
        self.note: str | None = None  # why stacks print unsymbolised, once

    def _load(self) -> None:
        syms: list[tuple[int, str]] = []
        zero = True
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3 or parts[1] not in (b"t", b"T", b"w", b"W"):
                        continue
                    try:
                        addr = int(parts[0], 16)
                    except ValueError:
                        continue
                    zero = zero and addr == 0
                    syms.append((addr, parts[2].decode(errors="replace")))
        except OSError as e:
            self.note = f"cannot read {self.path} ({e.strerror}): kernel stacks print as addresses"
            syms = []
        if syms and zero:
            self.note = (f"{self.path} lists no addresses (kernel.kptr_restrict hides them from non-root users): "
                         "kernel stacks print as addresses; run as root to see function names")
            syms = []
        syms.sort()
        self._addrs = [a for a, _ in syms]
        self._names = [n for _, n in syms]

    def table(self) -> tuple[list[int], list[str]]:
        """The symbols (addresses sorted, names), for the C event printer (runtime/events.c put_frame, which
        writes a frame as frame() does)."""
        if self._addrs is None:
            self._load()
        return self._addrs, self._names

    def frame(self, addr: int) -> str:
        if self._addrs is None:
            self._load()
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return f"0x{addr:x}"
        return f"{self._names[i]}+{addr - self._addrs[i]}"

    def stack(self, stack_id: int, addrs: list[int]) -> KStack:
        return KStack(stack_id, tuple(self.frame(a) for a in addrs))
