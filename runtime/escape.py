r"""Text output, closed to terminal escape sequences.

A process name (`comm`: any user sets it with prctl(PR_SET_NAME) or by naming
an executable), a kernel string, a script's file name or a library's source
text can hold control characters; printed raw, ESC sequences recolour, retitle
or rewrite the terminal of whoever reads HookQL's output (as root).  JSON
output escapes everything already (json.dumps); text output uses this scheme,
readable and unambiguous:

  \      -> \\
  \n \t \r -> \n \t \r
  every other C0 control (U+0000-U+001F), DEL (U+007F) and C1 control
  (U+0080-U+009F) -> \xHH, two lowercase hex digits of the code point
  bidirectional overrides and isolates, U+2028/U+2029 -> \uXXXX
  a lone surrogate (a file name's undecodable byte is U+DC80-U+DCFF) -> \uXXXX
  everything else (printable ASCII, printable UTF-8: héllo, 日本) as is;
  bytes that are not UTF-8 were already U+FFFD (decode(errors="replace"))

runtime/events.c prints `emit` strings in text mode with the same scheme
(put_text_char), so tables and events agree.  Diagnostics use
escape_text(s, backslash=False): they quote source code and messages, where a
backslash is just a character, but control characters are escaped the same way.
"""
from __future__ import annotations

_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


# Not controls, yet they change what the text around them looks like: bidirectional overrides and
# isolates reorder a line (a name can show as another), line and paragraph separators break one.
_INVISIBLE = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]


def _table(backslash: bool) -> dict[int, str]:
    t = {cp: _SHORT.get(chr(cp), f"\\x{cp:02x}") for cp in [*range(0x20), *range(0x7F, 0xA0)]}
    t.update({cp: f"\\u{cp:04x}" for cp in _INVISIBLE})
    # lone surrogates: a file name's undecodable byte (os.fsdecode's surrogateescape: U+DC80-U+DCFF is the
    # byte 0x80-0xFF, which written out raw could be an 8-bit C1 control such as CSI 0x9b)
    t.update({cp: f"\\u{cp:04x}" for cp in range(0xD800, 0xE000)})
    if backslash:
        t[ord("\\")] = "\\\\"
    return t


_FULL = _table(True)
_CONTROLS = _table(False)


def escape_text(s: str, backslash: bool = True) -> str:
    """s with control characters (and backslashes, unless backslash=False)
    escaped as the module docstring says; printable text unchanged."""
    return str(s).translate(_FULL if backslash else _CONTROLS)


def escape_char(ch: str, backslash: bool = True) -> str:
    """One character, escaped as escape_text would."""
    return (_FULL if backslash else _CONTROLS).get(ord(ch), ch)
