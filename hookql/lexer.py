"""Lexing: the grammar's own terminals (Lark's basic lexer), then two passes
the LALR parser cannot do by itself:

* split the token stream into top-level items (at `on`, `const`, `use` outside
  any brace), so each item parses alone and errors in one never hide another;
* shape each item: decide which `<`/`>` delimit a `< ... >` block (a `<` that
  opens one is followed by an action word; its `>` ends the clause), and keep
  newlines only where they separate actions.
"""
from __future__ import annotations

from functools import cache

from hookql.diagnostics import Diagnostics
from hookql.grammar.lalr import Lark, Token, UnexpectedCharacters
from hookql.source import Source, Span

AGGREGATIONS = ("count", "sum", "avg", "min", "max", "hist", "lhist")
ITEM_KEYWORDS = {"ON", "CONST", "USE", "DEF", "INCLUDE"}
_OPENERS = {"LPAR": "RPAR", "LBRACE": "RBRACE", "LANGLE": "RANGLE"}
# A newline after one of these continues the line (`count by comm,` + newline).
_CONTINUES = {
    "COMMA", "LPAR", "LBRACE", "LANGLE", "SEMICOLON", "_NL", "COMP_OP", "PLUS", "MINUS", "STAR", "SLASH",
    "PERCENT", "PIPE", "CARET", "AMP", "LSHIFT", "RSHIFT", "TILDE", "AND", "OR", "NOT", "BANG", "IN",
    "BY", "WHERE", "EQUAL", "DOT", "EMIT", "ANDAND", "OROR",
}
# A `{` after one of these opens a set literal, not a block.
_SET_BEFORE = _CONTINUES - {"_NL", "SEMICOLON", "LBRACE", "LANGLE"} | {"DENY"}


@cache
def lark_parser() -> Lark:
    """The one Lark instance: its basic lexer tokenizes, its LALR tables parse.

    grammar/lalr.py is Lark's standalone parser for grammar/hookql.lark, its
    tables built ahead of time (tools/gen_parser.py): nothing of Lark is
    imported, no tables are built or read from any cache at run time (Lark's
    `cache=True` would unpickle a file of a predictable name in the shared
    temporary directory, which any local user can plant)."""
    from hookql.grammar.lalr import Lark_StandAlone

    return Lark_StandAlone()


def tokenize(source: Source, diags: Diagnostics) -> list[Token]:
    """All tokens of the source; a character no token starts with is reported
    and skipped, so lexing always finishes."""
    text = source.text
    tokens: list[Token] = []
    lark = lark_parser()
    offset, line, col = 0, 1, 1
    while True:
        try:
            for tok in lark.lex(text[offset:], dont_ignore=False):
                tokens.append(_shift(tok, offset, line, col))
            return tokens
        except UnexpectedCharacters as exc:
            # lark reports positions relative to the slice it lexed
            pos = offset + exc.pos_in_stream
            eline = line + exc.line - 1
            ecol = exc.column + (col - 1 if exc.line == 1 else 0)
            bad = text[pos]
            tokens = [t for t in tokens if t.start_pos < pos]
            diags.error(Span(source, eline, ecol, eline, ecol + 1), _bad_char_message(bad, text, pos),
                        _bad_char_hint(bad))
            tokens += _relex_prefix(lark, text, offset, pos, line, col)
            offset, line, col = pos + 1, eline, ecol + 1


def _relex_prefix(lark: Lark, text: str, offset: int, pos: int, line: int, col: int) -> list[Token]:
    """Tokens of text[offset:pos] that lark produced before the bad character."""
    out = []
    try:
        for tok in lark.lex(text[offset:pos], dont_ignore=False):
            out.append(_shift(tok, offset, line, col))
    except UnexpectedCharacters:
        pass  # a token cut at the bad character; the error is already reported
    return out


def _shift(tok: Token, offset: int, line: int, col: int) -> Token:
    if offset == 0:
        return tok
    first_line = tok.line == 1
    return Token(
        tok.type, tok.value, tok.start_pos + offset, tok.line + line - 1,
        tok.column + (col - 1 if first_line else 0), tok.end_line + line - 1,
        tok.end_column + (col - 1 if tok.end_line == 1 else 0), tok.end_pos + offset,
    )


def _bad_char_message(ch: str, text: str, pos: int) -> str:
    if ch == '"':
        return "unterminated string"
    if ch == "@":
        return "unexpected '@': HookQL has no @maps; aggregations are actions such as `count by comm`"
    if ch == "$":
        return "unexpected '$': HookQL has no variables; name fields directly (e.g. `dport`)"
    return f"unexpected character {ch!r}"


def _bad_char_hint(ch: str) -> str | None:
    if ch == '"':
        return 'close the string on the same line: "..."'
    if ch == "'":
        return 'strings use double quotes: "curl"'
    return None


def split_items(tokens: list[Token]) -> list[list[Token]]:
    """Cut the stream before each `on`/`const`/`use` that is outside braces."""
    items: list[list[Token]] = []
    depth = 0
    cur: list[Token] = []
    for tok in tokens:
        if tok.type in ITEM_KEYWORDS and depth == 0 and _has_content(cur):
            items.append(cur)
            cur = []
        if tok.type in ("LBRACE", "LPAR"):
            depth += 1
        elif tok.type in ("RBRACE", "RPAR"):
            depth = max(depth - 1, 0)
        elif tok.type in ITEM_KEYWORDS and depth > 0:
            # `on`/`const` inside an unclosed brace: the brace was never
            # closed, so start a fresh item rather than swallow the rest.
            items.append(cur)
            cur, depth = [], 0
        cur.append(tok)
    if _has_content(cur):
        items.append(cur)
    return items


def _has_content(tokens: list[Token]) -> bool:
    return any(t.type not in ("_NL", "SEMICOLON") for t in tokens)


def shape(tokens: list[Token]) -> list[Token]:
    """Retype angle-block delimiters and drop newlines that separate nothing."""
    out: list[Token] = []
    stack: list[str] = []  # open brackets: LPAR, LBRACE (block), SET, LANGLE
    sig = [t for t in tokens if t.type != "_NL"]
    nxt = {id(a): b for a, b in zip(sig, sig[1:])}
    for tok in tokens:
        typ = tok.type
        after = nxt.get(id(tok))
        if typ == "COMP_OP" and tok.value == "<" and not stack and out and out[0].type == "ON" \
                and after is not None and _starts_action(after):
            tok = Token.new_borrow_pos("LANGLE", tok.value, tok)
            stack.append("LANGLE")
        elif typ == "COMP_OP" and tok.value == ">" and stack == ["LANGLE"] and _closes_angle(after):
            tok = Token.new_borrow_pos("RANGLE", tok.value, tok)
            stack.pop()
        elif typ == "LPAR":
            stack.append("LPAR")
        elif typ == "LBRACE":
            is_set = bool(out) and out[-1].type in _SET_BEFORE
            stack.append("SET" if is_set else "LBRACE")
        elif typ in ("RPAR", "RBRACE") and stack:
            stack.pop()
        elif typ == "_NL":
            in_block = bool(stack) and stack[-1] in ("LBRACE", "LANGLE")
            if not in_block or not out or out[-1].type in _CONTINUES:
                continue
        out.append(tok)
    return out


def _starts_action(tok: Token) -> bool:
    return tok.type in ("EMIT", "DENY", "RANGLE") or (tok.type == "NAME" and tok.value in AGGREGATIONS)


def _closes_angle(after: Token | None) -> bool:
    return after is None or after.type in ("SEMICOLON", "RBRACE") or (after.type in ITEM_KEYWORDS)
