"""Text from users and tools, made safe to show on a terminal; and JSON written as it is built.

Pure functions, no I/O, imported by every view (a leaf module: it imports no other view).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from rich.text import Text
from rich.tree import Tree

# What must never reach a terminal raw from text a user or a tool supplied (a process name, a
# message, a log line): C0 controls (ESC starts sequences that recolour, move the cursor, retitle
# the window, or write to the clipboard), DEL, C1 controls (U+009B is a one-character CSI for some
# terminals), the bidirectional overrides that make text read differently from what it is, and
# lone surrogates (undecodable bytes kept by surrogateescape: printing one raises).
_UNSAFE_CHARS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_IN_FIELD = re.compile(f"[\\t\\n{_UNSAFE_CHARS}]")
_UNSAFE_IN_LINES = re.compile(f"[{_UNSAFE_CHARS}]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    return _escape_char(match.group())


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the undecodable byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object, *, lines: bool = False) -> str:
    """`text` as it may be shown on a terminal: every control character, bidirectional override
    and undecodable byte written as a visible escape (`\\x1b`, `\\u202e`, `\\xe9`), so that
    what a process calls itself or logs can never drive the terminal. A field (a name, a state,
    a message in a column) also escapes tabs and newlines; with `lines` they are kept (a log
    line, a multi-line output). `--json` keeps the real value (see `json_safe`)."""
    text = text if isinstance(text, str) else str(text)
    pattern = _UNSAFE_IN_LINES if lines else _UNSAFE_IN_FIELD
    return text if pattern.search(text) is None else pattern.sub(_escape, text)


def safe_rich(text: Text, *, lines: bool = False) -> Text:
    """A rich `Text` with `safe_text`'s escapes, its styles kept on the same characters."""
    plain = text.plain
    pattern = _UNSAFE_IN_LINES if lines else _UNSAFE_IN_FIELD
    if pattern.search(plain) is None:
        return text
    offsets = [0]
    pieces = []
    for ch in plain:
        piece = _escape_char(ch) if pattern.match(ch) else ch
        pieces.append(piece)
        offsets.append(offsets[-1] + len(piece))
    out = Text("".join(pieces), style=text.style, justify=text.justify, overflow=text.overflow,
               no_wrap=text.no_wrap, end=text.end)
    for span in text.spans:
        out.stylize(span.style, offsets[span.start], offsets[min(span.end, len(plain))])
    return out


def safe_tree(tree: Tree) -> Tree:
    """Every label of a tree made safe (`safe_text`), in place. Plain string labels become
    `Text`, so a name such as `a[b]c` is shown as it is, never read as rich markup."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node.label, str):
            node.label = Text(safe_text(node.label))
        elif isinstance(node.label, Text):
            node.label = safe_rich(node.label)
        todo.extend(node.children)
    return tree


def json_safe(encoded: str) -> str:
    """JSON text (from `json.dumps(..., ensure_ascii=False)`, which escapes only C0 controls) with
    the other characters `safe_text` escapes written as `\\uXXXX`: the same value for a JSON
    reader, and nothing raw for a terminal (or a lone surrogate that cannot be encoded)."""
    if _UNSAFE_IN_JSON.search(encoded) is None:
        return encoded
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)


def json_array_chunks(records: Iterable[Any]) -> Iterator[str]:
    """A JSON array written as it is built, one record at a time: the text `json.dumps(list(records),
    indent=2)` would give (records indented by two), without holding the list or its text."""
    first = True
    for record in records:
        body = json.dumps(record, indent=2, ensure_ascii=False).replace("\n", "\n  ")
        yield ("[\n  " if first else ",\n  ") + json_safe(body)
        first = False
    yield "[]\n" if first else "\n]\n"
