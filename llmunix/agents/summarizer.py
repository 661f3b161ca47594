"""An extractive summariser: picks a text's most representative sentences, in their order.

Pure and deterministic (the offline backend depends on it), documented exactly in
docs/agents.md:

1. The text is split into sentences: prose is split after `.`, `!` or `?` followed by a space;
   every list item and every paragraph line that ends without punctuation is a unit of its own.
   Headings, code blocks, tables and units of fewer than 4 words are not candidates.
2. Each word (lower-cased letters and digits, stop words and words of 1-2 letters removed) is
   weighted by its count in the whole text divided by the largest count.
3. A sentence scores the sum of its words' weights divided by the square root of its word count,
   times 1 + 0.5 for each distinct word it shares with the focus (the goal), plus 0.3 for the first sentence.
   With `only_focus`, sentences sharing no word with the focus are dropped first (if any share one).
4. The `count` best (ties: the earlier) are returned in their original order. By default
   `count` is a quarter of the sentences, at least 1 and at most 7.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_STOPWORDS_TEXT = """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either few for from further
had has have having he her here hers herself him himself his how however i if in into is it its
itself just let like many may me might more most must my myself no nor not now of off on once only
or other our ours ourselves out over own per same shall she should so some such than that the their
theirs them themselves then there these they this those through thus to too under until up upon us
very was we were what when where which while who whom why will with within without would yet you
your yours yourself yourselves summarize summarise summary research report write read file files
into using use
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def words(text: str) -> list[str]:
    """Content words of `text`: lower-cased, stop words and words shorter than 3 letters removed."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in STOPWORDS]


def sentences(text: str) -> list[str]:
    """The candidate sentences of `text`, in order (see the module docstring, step 1)."""
    out: list[str] = []
    in_code = False
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            joined = " ".join(paragraph)
            out.extend(s.strip() for s in _SENTENCE_END.split(joined) if s.strip())
            paragraph.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            flush()
            in_code = not in_code
            continue
        if in_code:
            continue
        if not line or line.startswith(("#", "|", ">")) or set(line) <= set("-=*_ "):
            flush()
            continue
        item = re.match(r"^(?:[-*+]|\d+[.)])\s+(.*)$", line)
        if item:
            flush()
            out.append(item.group(1).strip())
            continue
        paragraph.append(line)
        if not line.endswith((".", "!", "?", ",", ";", ":")) and len(paragraph) == 1 and len(line) < 80:
            # A short line without punctuation stands alone (a caption, a title-like line).
            flush()
    flush()
    return [s for s in out if len(s.split()) >= 4]


def summarize(text: str, count: int | None = None, focus: str = "", only_focus: bool = False) -> list[str]:
    """The `count` most representative sentences of `text`, in their original order. With
    `only_focus`, sentences that share no word with `focus` are left out when any share one."""
    units = sentences(text)
    if not units:
        return []
    focus_words = set(words(focus))
    if only_focus and focus_words:
        focused = [s for s in units if focus_words & set(words(s))]
        units = focused or units
    if count is None:
        count = min(7, max(1, round(len(units) / 4)))
    count = max(1, min(count, len(units)))
    freq = Counter(w for s in units for w in words(s))
    if not freq:
        return units[:count]
    top = max(freq.values())
    scored = []
    for i, s in enumerate(units):
        ws = words(s)
        score = sum(freq[w] / top for w in ws) / math.sqrt(len(ws)) if ws else 0.0
        score *= 1 + 0.5 * len(focus_words & set(ws))
        if i == 0:
            score += 0.3
        scored.append((-round(score, 9), i))
    chosen = sorted(i for _score, i in sorted(scored)[:count])
    return [units[i] for i in chosen]


def keywords(text: str, limit: int = 5) -> list[str]:
    """The most frequent content words of `text` (ties: first seen), for titles and searches."""
    ws = words(text)
    counts = Counter(ws)
    first = {w: i for i, w in reversed(list(enumerate(ws)))}
    return sorted(counts, key=lambda w: (-counts[w], first[w]))[:limit]
