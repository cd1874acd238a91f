r"""Text into generated C, closed to injection.

Everything that reaches the BPF C from outside HookQL's own code is hostile
until it passes through here: script file names (header comment, `#line`),
probe and action text echoed in comments, string constants of the script
(`comm == "curl"`, set elements), section names, and names read from BTF.
The templates (codegen/templates/*.j2) apply these as Jinja filters
(registered in codegen/render.py):

  c_string   "..." literal: the UTF-8 bytes of the text; printable ASCII as
             is, except `"` -> `\"`, `\` -> `\\` and a `?` after a `?` ->
             `\?` (no trigraph); every other byte (newline, CR, other control
             characters, DEL, non-ASCII) as a three-digit octal escape `\ooo`,
             so a following digit never extends it.  Byte-exact.
  c_char     '...' literal of one byte (0-255), the same way (`'` -> `\'`).
  c_comment  text safe inside /* */ on one line: printable ASCII as is;
             control characters as `\xHH` (C0, DEL, C1), other non-ASCII as
             `\uXXXX` / `\UXXXXXXXX`, a backslash as `\x5c` (so no
             backslash is ever followed by anything but `x`/`u`/`U`, and no
             line can be spliced); `*/` and `/*` are split by a space, `??` by
             a space (no trigraph).  For readers only: lossy by design.
  c_ident    a C identifier, checked (names from BTF): anything else raises.
  c_tokens   a declaration HookQL spelled from BTF (`struct sock *`,
             `char comm[16];`), checked to hold only identifier characters,
             digits, spaces and `*[];.,`: nothing that opens a comment,
             literal, directive or line splice.

The generated C is therefore pure ASCII, with no control character but
newline and tab, whatever the script, its file name or the kernel's BTF hold.
"""
from __future__ import annotations

import re

from hookql.source import utf8

__all__ = ["UnsafeCText", "c_string_literal", "c_char_literal", "c_comment", "c_ident", "c_tokens", "FILTERS"]


class UnsafeCText(ValueError):
    """A name that must be spelled as C code (an identifier) is not one."""


def _utf8(s: str | bytes) -> bytes:
    if isinstance(s, bytes):
        return s
    return utf8(s)  # a file name's undecodable bytes, back as they were


def _byte(b: int, quote: int, prev: int | None) -> str:
    if b == quote or b == 0x5C:
        return "\\" + chr(b)
    if b == 0x3F and prev == 0x3F:  # ??x would be a trigraph under -trigraphs
        return "\\?"
    if 0x20 <= b < 0x7F:
        return chr(b)
    return f"\\{b:03o}"


def c_string_literal(s: str | bytes) -> str:
    """A C string literal (quotes included) holding exactly s's UTF-8 bytes."""
    data = _utf8(s)
    out = []
    prev = None
    for b in data:
        out.append(_byte(b, 0x22, prev))
        prev = b
    return '"' + "".join(out) + '"'


def c_char_literal(b: int) -> str:
    r"""A C character literal of one byte: 'a', '\'', '\303'.  With char
    signed (as on BPF), '\303' is (char)0xc3, equal to a char array element
    holding that byte, where the integer 195 never is."""
    if not 0 <= b <= 255:
        raise ValueError(f"not a byte: {b}")
    return "'" + _byte(b, 0x27, None) + "'"


def _comment_char(ch: str) -> str:
    cp = ord(ch)
    if 0x20 <= cp < 0x7F and ch != "\\":
        return ch
    if cp < 0xA0:  # C0, DEL, C1, and the backslash itself
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def c_comment(s: str) -> str:
    """s made safe to stand inside a /* */ comment, on one line (see the module docstring)."""
    text = "".join(_comment_char(ch) for ch in str(s))
    text = re.sub(r"\*(?=/)", "* ", text)  # no */ ends the comment early
    text = re.sub(r"/(?=\*)", "/ ", text)  # no /* (clang -Wcomment)
    return re.sub(r"\?(?=\?)", "? ", text)  # no ??/ trigraph (a backslash)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKENS = re.compile(r"[A-Za-z0-9_ *\[\];.,]*\Z")


def c_ident(s: str) -> str:
    """s itself when it is a C identifier; otherwise UnsafeCText."""
    if not isinstance(s, str) or not _IDENT.match(s):
        raise UnsafeCText(f"not a C identifier: {s!r}")
    return s


def c_tokens(s: str) -> str:
    """s itself when it holds only identifier characters, digits, spaces and
    `*[];.,` (a declaration or member chain spelled from BTF names); otherwise UnsafeCText."""
    if not isinstance(s, str) or not _TOKENS.match(s):
        raise UnsafeCText(f"unexpected characters in generated C: {s!r}")
    return s


FILTERS = {"c_string": c_string_literal, "c_char": c_char_literal, "c_comment": c_comment, "c_ident": c_ident,
           "c_tokens": c_tokens}
