"""Secrets redaction: what llmunix writes for people to read never shows a secret.

Applied to every copy meant for reading: event data in the events table and the log file, audit
command text, and the shell's `ps -l` / `ps --json` views. Not applied where the real value is
needed: the processes table keeps real parameters, because `recover` re-runs the tool with them
(the database file is mode 0600).

What counts as a secret:
* the value of a key whose name contains one of `SECRET_WORDS` (case-insensitive; `-` and `_`
  are the same), in mappings and in text (`api_key=abc`, `"token": "abc"`, `Authorization: x`,
  `--password abc`). Names that only count tokens (`max_tokens`, `llm_tokens`, `tokenizer`) and
  `author` are not secrets;
* `Bearer <credential>` and OpenAI-style `sk-...` keys anywhere in a string;
* the password in a URL (`https://user:pw@host`).

>>> redact({"url": "https://x.org", "api_key": "abc", "headers": {"Authorization": "Bearer t0k3n"}})
{'url': 'https://x.org', 'api_key': '***', 'headers': {'Authorization': '***'}}
>>> redact_text("run fetch url=https://x.org api_key=abc max_tokens=50")
'run fetch url=https://x.org api_key=*** max_tokens=50'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password", "passwd", "authorization", "auth",
                "cookie", "private_key", "credentials")

# Key names that contain a secret word but name no secret: counts of LLM tokens, and authors.
_NOT_SECRET = re.compile(r"tokens|tokenizer|token_count|token_limit|author(?!i[sz]ation)")

_KEY = r"[A-Za-z_][\w.-]*"
# A value: an auth scheme and its credential, a quoted string, or a bare word.
_VALUE = r"""(?:(?:bearer|basic|token)[ \t]+[^\s"',;&]+|"[^"]*"|'[^']*'|[^\s"',;&)}\]]+)"""
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+(?=@)")  # https://user:pw@host
_BEARER = re.compile(r"(\bbearer[ \t]+)[^\s\"',;&]+", re.IGNORECASE)  # Bearer abc
_SK = re.compile(r"(?<![\w-])sk-[A-Za-z0-9][A-Za-z0-9_-]{7,}")  # sk-proj-abc123...
# A whole pair quoted as one shell word: "api_key=abc def".
_QUOTED_PAIR = re.compile(rf"(?P<q>[\"'])(?P<key>{_KEY})=(?P<val>[^\"']*)(?P=q)")
# Keys start a word (never mid-word: that would make long words cost quadratic time).
_PAIR = re.compile(  # --password abc | key=abc | "key": "abc" | Authorization: Basic abc
    rf"(?P<lead>--(?P<option>{_KEY})[ \t]+|(?<![\w.-])(?P<key>{_KEY})[\"']?[ \t]*[=:][ \t]*)(?P<val>{_VALUE})",
    re.IGNORECASE,
)


_SECRET_KEYS: dict[str, bool] = {}  # key name -> is_secret_key(name); key names are few
_PLAIN = frozenset({int, float, bool, type(None)})


def is_secret_key(key: str) -> bool:
    """Whether a key's name says its value is a secret."""
    secret = _SECRET_KEYS.get(key)
    if secret is None:
        name = _NOT_SECRET.sub("", key.lower().replace("-", "_"))
        secret = any(word in name for word in SECRET_WORDS)
        if len(_SECRET_KEYS) < 10_000:
            _SECRET_KEYS[key] = secret
    return secret


MAX_DEPTH = 32  # deeper nesting (or a structure that contains itself) is cut off: "..."


def redact(value: Any, _depth: int = 0) -> Any:
    """`value` (mappings, lists and strings, nested) with secrets replaced by `***`: a copy, as
    plain dicts and lists, where anything was replaced; a dict or a list with nothing to hide is
    returned itself (do not change what you get). Other values are returned as they are."""
    # The store's writer runs this on every event: exact type checks first, ABCs last, and no
    # copy of the (usual) event that holds no secret.
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN:
        return value
    if kind is list or kind is tuple or (kind is not dict and isinstance(value, list | tuple)):
        if _depth >= MAX_DEPTH:
            return "..."
        items = [redact(v, _depth + 1) for v in value]
        if kind is list and all(new is old or (type(new) is str and new == old)
                                for new, old in zip(items, value, strict=True)):
            return value
        return items
    if kind is dict or isinstance(value, Mapping):
        if _depth >= MAX_DEPTH:
            return "..."
        out: dict[Any, Any] | None = None  # the copy, made at the first value that changes
        for k, v in value.items():
            if type(k) is str and is_secret_key(k):
                new = _mask(v)
            elif type(v) in _PLAIN:
                if out is not None:
                    out[k] = v
                continue
            elif type(v) is str:
                new = redact_text(v)
            else:
                new = redact(v, _depth + 1)
            if out is None:
                if new is v or (type(new) is str and new == v):
                    continue
                out = {}
                for before, kept in value.items():  # what came before it, unchanged
                    if before is k:
                        break
                    out[before] = kept
            out[k] = new
        if out is None:
            return value if kind is dict else dict(value)
        return out
    if isinstance(value, str):  # a str subclass
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """`text` with secret values replaced by `***` (see the module docstring for what counts)."""
    if not text:
        return text
    if len(text) <= 64:  # names, tools, paths: the same short strings come again and again
        done = _SHORT.get(text)
        if done is None:
            if len(_SHORT) >= 10_000:
                _SHORT.clear()
            done = _SHORT[text] = _redact_text(text)
        return done
    return _redact_text(text)


_SHORT: dict[str, str] = {}


def _redact_text(text: str) -> str:
    # Each pass only where it could match: most text (progress messages, names) skips them all.
    if "@" in text and "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{MASK}", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
    if "sk-" in text:
        text = _SK.sub(MASK, text)
    if "=" in text and ('"' in text or "'" in text):
        text = _QUOTED_PAIR.sub(_quoted_pair, text)
    if "=" not in text and ":" not in text and "--" not in text:
        return text
    return _PAIR.sub(_pair, text)


def _mask(value: Any) -> Any:
    """The masked form of a secret value: empty values stay empty (nothing to hide)."""
    return value if value is None or value == "" else MASK


def _quoted_pair(m: re.Match[str]) -> str:
    q, key = m.group("q"), m.group("key")
    value = MASK if is_secret_key(key) else redact_text(m.group("val"))
    return f"{q}{key}={value}{q}"


def _pair(m: re.Match[str]) -> str:
    lead, value = m.group("lead"), m.group("val")
    quoted = len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]
    if is_secret_key(m.group("option") or m.group("key")):
        return lead + (value[0] + MASK + value[0] if quoted else MASK)
    # Not a secret itself, but it may hold one: `cmd="export API_KEY=abc; ..."`.
    return lead + (value[0] + redact_text(value[1:-1]) + value[0] if quoted else _PAIR.sub(_pair, value))
