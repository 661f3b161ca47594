"""How the shell reads a command line before cmd2 sees it.

cmd2 splits lines itself, but honours a quote only at the start of a word (`text='a b'` arrives
in pieces), takes `;` as the end of the command and silently drops the rest, reads `>` with no
file as "copy to the clipboard", and takes time quadratic in the length of a word. So each line
is read here first, once, in linear time, the way a POSIX shell reads it:

- words are split on blanks; `'...'` quotes literally, `"..."` quotes with `\\"`, `\\\\`, `\\$`
  and `` \\` `` as escapes, and `\\` outside quotes escapes the next character — anywhere in a word;
- a `#` that starts a word begins a comment (`run sleep seconds=1   # why`); inside a word or a
  quote it is an ordinary character;
- `|` pipes the output to a system command (the rest of the line is that command's, as typed),
  `>` and `>>` redirect it to one file;
- everything else that a shell would take as an operator (`;`, `||`, `>>>`...) is refused, as
  are unclosed quotes, a trailing backslash, NUL characters and lines over MAX_LINE characters:
  each is a LineError, one line that names the command.

The result is an equivalent line in the one form cmd2 splits the same way: each word that was
quoted or escaped is re-quoted whole (`text='a b'` becomes `'text=a b'`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cmd2.parsing import shlex_split

MAX_LINE = 64 * 1024  # characters; a longer line is refused before any parsing

BLANKS = " \t\r\n"
OPERATORS = "|>;"
_PLAIN = re.compile(r"[^ \t\r\n|>;'\"\\]+")  # a run of characters with no special meaning
_BLANK = re.compile(r"[ \t\r\n]+")
_DOUBLE = re.compile(r'[^"\\]+')  # inside "...": up to the next quote or backslash
_NEEDS_QUOTES = re.compile(r"[ \t\r\n|>;'\"\\]")
_SHORT = 40  # characters of a word shown in an error


class LineError(Exception):
    """A command line that cannot be run as typed: `command: what is wrong; what to do`."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"{command}: {message}")
        self.command = command


@dataclass(frozen=True, slots=True)
class Word:
    text: str  # the word's value, quotes and escapes removed
    raw: str  # as typed
    start: int  # where it starts in the line
    quoted: bool = False  # it had quotes or escapes
    op: bool = False  # an operator (|, >, >>, or one refused later)


class _Unclosed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


def prepare_line(line: str) -> str:
    """The line as cmd2 should read it: "" for a blank or comment-only line. Raises LineError."""
    if len(line) > MAX_LINE:
        raise LineError(command_word(line), f"the command line is too long ({len(line):,} characters; "
                                            f"the limit is {MAX_LINE:,}); pass large values in a file")
    if "\0" in line:
        raise LineError(command_word(line), "the line contains a NUL character (\\0), which no command can take")
    words: list[Word] = []
    try:
        comment = _split(line, words)
    except _Unclosed as exc:
        raise LineError(_name(words), str(exc)) from None
    if not words:
        return ""
    first = words[0]
    if first.op:
        raise LineError("llmunix", f"a command line cannot start with {first.text!r}")
    command = _name(words)
    token = cmd2_token(first)
    out, check = [token or first.raw], token is None
    for k in range(1, len(words)):
        w = words[k]
        if not w.op:
            token = cmd2_token(w)
            check = check or token is None
            out.append(token or w.raw)
            continue
        rest = words[k + 1:]
        if w.text == "|":
            if not rest:
                raise LineError(command, f"'|' needs a command to pipe to, e.g. `{command} | grep Running`")
            # The rest of the line is a system command: it goes to /bin/sh as typed.
            out.append("|")
            out.append(line[rest[0].start:comment].strip())
            check = True
            break
        if w.text in (">", ">>"):
            if not rest or rest[0].op:
                raise LineError(command, f"{w.text!r} needs a file name, e.g. `{command} {w.text} out.txt`")
            if len(rest) > 1:
                raise LineError(command, f"unexpected {_short(rest[1].text)!r} after `{w.text} {_short(rest[0].text)}`;"
                                         f" {w.text} takes one file name (quote a name with spaces)")
            token = cmd2_token(rest[0])
            check = check or token is None
            out += [w.text, token or rest[0].raw]
            break
        if w.text == ";":
            raise LineError(command, "';' would end the command here, and llmunix takes one command per line: "
                                     "put the next command on its own line, or quote the ; to pass it on "
                                     "(e.g. \"cmd=make; make install\")")
        raise LineError(command, f"{w.text!r} is not something llmunix understands here: | pipes the output to a "
                                 "command, > and >> write it to a file; quote it to pass it on")
    prepared = " ".join(out)
    if check:  # a word cmd2 may not split as we did (both kinds of quote in it), or a pipe command
        try:
            shlex_split(prepared)
        except ValueError:
            raise LineError(command, "cannot pass a word that holds both ' and \" on to this command: quote "
                                     "the whole word with one kind of quote and escape the other") from None
    return prepared


_COMMAND = re.compile(r"[\w.!?@-]+")  # what a command's name can be (shortcuts such as ! and @ too)


def command_word(line: str) -> str:
    """The command a line starts with, for an error message (cheap, whatever the line's length);
    "llmunix" when it does not start with a command's name (a quote, an operator, a control character)."""
    head = line.lstrip(BLANKS)[:_SHORT * 2]
    word = _COMMAND.match(head)
    return word.group(0) if word and head[word.end():word.end() + 1] in ("", *BLANKS, *OPERATORS) else "llmunix"


def cmd2_token(w: Word) -> str | None:
    """`w` as one token that cmd2's splitter (quotes honoured only around a whole word, no
    escapes) reads back as `w.text`; None when there is no such form."""
    v = w.text
    if not w.quoted:
        return w.raw
    if v and not _NEEDS_QUOTES.search(v) and not v.startswith("#"):
        return v
    if "'" not in v:
        return f"'{v}'"
    if '"' not in v and "\\" not in v:
        return f'"{v}"'
    return None


def _name(words: list[Word]) -> str:
    return words[0].text if words and not words[0].op and _COMMAND.fullmatch(words[0].text) else "llmunix"


def _short(text: str) -> str:
    return text if len(text) <= _SHORT else text[:_SHORT] + "..."


def _split(line: str, words: list[Word]) -> int:
    """Append the line's words and operators to `words`; return where a comment starts (or the
    line's length). Linear in the line's length."""
    n = len(line)
    i = 0
    while i < n:
        blank = _BLANK.match(line, i)
        if blank:
            i = blank.end()
            continue
        c = line[i]
        if c == "#":
            return i
        if c in OPERATORS:
            j = i + 1
            while j < n and line[j] == c:
                j += 1
            words.append(Word(line[i:j], line[i:j], i, op=True))
            i = j
            continue
        start, parts, quoted = i, [], False
        while i < n and line[i] not in BLANKS and line[i] not in OPERATORS:
            c = line[i]
            if c == "'":
                end = line.find("'", i + 1)
                if end < 0:
                    raise _Unclosed(_unclosed("'", line[start:]))
                parts.append(line[i + 1:end])
                i, quoted = end + 1, True
            elif c == '"':
                i = _double(line, i, parts, start)
                quoted = True
            elif c == "\\":
                if i + 1 >= n:
                    raise _Unclosed("the line ends with a backslash (\\); a command is one line "
                                    "(write \\\\ for a backslash itself)")
                parts.append(line[i + 1])
                i, quoted = i + 2, True
            else:
                plain = _PLAIN.match(line, i)
                assert plain is not None
                parts.append(plain.group(0))
                i = plain.end()
        words.append(Word("".join(parts), line[start:i], start, quoted))
    return n


def _double(line: str, i: int, parts: list[str], start: int) -> int:
    """Read a "..." quote opening at `i` into `parts`; return the index after it."""
    n = len(line)
    i += 1
    while i < n:
        run = _DOUBLE.match(line, i)
        if run:
            parts.append(run.group(0))
            i = run.end()
            continue
        if line[i] == '"':
            return i + 1
        # a backslash: it escapes only what POSIX says it does inside double quotes
        if i + 1 < n and line[i + 1] in '"\\$`':
            parts.append(line[i + 1])
            i += 2
        else:
            parts.append("\\")
            i += 1
    raise _Unclosed(_unclosed('"', line[start:]))


def _unclosed(quote: str, rest: str) -> str:
    word = rest.split(None, 1)[0] if rest.strip() else rest
    return (f"unclosed {quote} in {_short(word)!r}: close the quote, or escape a quote that is part of "
            f"the value (\\{quote})")
