"""Text utilities for research tools and agents: pure functions, no process context, no I/O.

    from llmunix.tools.text import summarize_text, keywords, text_stats

    summarize_text(article, sentences=3)   # the 3 most representative sentences, in their order
    keywords(article, top=5)               # [("scheduler", 12), ("process", 9), ...]
    text_stats(article).reading_minutes    # 2.4

Everything here is deterministic: the same text gives the same result on every run and machine.

How the extractive summary chooses sentences
--------------------------------------------
1. The text is split into blocks (blank lines, markdown headings and list items start new ones)
   and blocks into sentences (after `.`, `!` or `?` followed by a capital, digit or quote, but not
   after abbreviations such as "e.g." or "Dr.").
2. Content words are the words that are not stopwords, not numbers and at least three letters
   long; a plural folds into its singular when the singular also occurs ("queues" counts as
   "queue"). Each content word's weight is its count in the document divided by the largest
   count (so 0 < w <= 1).
3. A sentence scores the sum of the weights of its distinct content words divided by the square
   root of their number (long sentences do not win by length alone, nor by repeating the top
   word), times a position bonus that falls from 1.2 for the first sentence to 1.0 for the last
   (openings tend to state the topic).
4. Only sentences of at least five words that end in `.`, `!` or `?` compete (headings and
   fragments do not, unless nothing else does). The best are taken in score order, earlier first
   on ties, skipping any that repeats an already chosen one (more than 70 % of its content words
   shared) while others remain; the chosen ones are returned in text order.

Across several documents (`summarize_corpus`) each sentence keeps its score within its own
document, each document's best sentence is taken first (so every document is heard), then the
rest by score.

An LLM can replace the extractive step: pass `backend=`, a callable `(text, sentences) -> str`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from typing import Any, NamedTuple

Summarizer = Callable[[str, int], str]
"""An abstractive summary backend: takes the text and the number of sentences wanted, returns the
summary. `summarize_text(..., backend=fn)` hands the work to it instead of extracting sentences."""

READING_WPM = 200  # words a minute for reading time: a common figure for screen reading
MIN_SENTENCE_WORDS = 5  # shorter units (headings, fragments) never make a summary
POSITION_BONUS = 0.2  # the first sentence of a document scores up to 20 % more than the last
REDUNDANCY = 0.7  # a candidate sharing more than this share of its content words with a chosen one is skipped

_STOPWORD_LIST = """
a about above across after again against all almost along already also although always am among an and
another any anyone anything are around as at be became because become becomes been before being below
between both but by can cannot could did do does doing done down during each either else enough even ever
every few for from further get gets getting give given gives go goes going got had has have having he her
here hers herself him himself his how however i if in into is it its itself just least less let like
likely made make makes many may me might more most much must my myself need needs neither never no nor
not now of off often on once one ones only onto or other others otherwise our ours ourselves out over own
per perhaps put rather really same see seem seems several shall she should since so some something
sometimes still such than that the their theirs them themselves then there therefore these they thing
things this those though through thus to together too toward towards under until up upon us use used
uses using very via was way ways we well were what whatever when where whether which while who whom whose
why will with within without would yet you your yours yourself yourselves
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_LIST.split())

_ABBREVIATION_LIST = "e.g i.e etc vs mr mrs ms dr prof fig cf al approx no st jr sr inc ltd co"
_ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_BOUNDARY = re.compile(r"[.!?]+[\"')\]’”]*\s+")
_OPENER = re.compile(r"[\"'(\[‘“]?[A-Z0-9]")
_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]’”]*$")
_CLAUSE = re.compile(r"[,;:()\[\]\"“”—–]|\s-\s|[.!?](?=\s|$)")
_BLOCK_START = re.compile(r"^\s*(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+)")


# ---------------------------------------------------------------------------------- splitting


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, in order, whitespace collapsed.

    Blank lines, markdown headings (`# ...`, markers removed) and list items end a sentence even
    without punctuation, so a heading is a unit of its own rather than glued to what follows.
    """
    sentences: list[str] = []
    for block in _blocks(text):
        start = 0
        for m in _BOUNDARY.finditer(block):
            end = m.end()
            if not _OPENER.match(block, end):
                continue
            last = block[start:m.start() + 1].rsplit(None, 1)[-1].rstrip(".").lower()
            if last in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last):  # "e.g. Foo", "J. Smith"
                continue
            sentences.append(block[start:end].strip())
            start = end
        tail = block[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def _blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        starts = _BLOCK_START.match(line)
        if not line.strip() or starts:
            if current:
                blocks.append(" ".join(current))
                current = []
            if not line.strip():
                continue
            if line.lstrip().startswith("#"):  # a heading: markers dropped, a block of its own
                blocks.append(line.strip().lstrip("#").strip())
                continue
            line = line[starts.end():]  # a list item: its marker dropped
        current.append(line.strip())
    if current:
        blocks.append(" ".join(current))
    return [re.sub(r"\s+", " ", b) for b in blocks if b]


def word_tokens(text: str) -> list[str]:
    """The words of `text`, lower-cased; hyphenated words and contractions stay whole and a
    possessive "'s" is dropped ("kernel's" -> "kernel")."""
    out = []
    for w in _WORD.findall(text):
        w = w.lower().replace("’", "'")
        if w.endswith("'s"):
            w = w[:-2]
        out.append(w)
    return out


def is_content_word(word: str) -> bool:
    """Whether a (lower-case) word carries topic: not a stopword, not a number, 3+ characters."""
    return len(word) >= 3 and word not in STOPWORDS and not word.replace("-", "").isdigit()


def _fold_map(words: Iterable[str]) -> dict[str, str]:
    """Map plurals onto their singular when the singular occurs too ("queues" -> "queue")."""
    vocab = set(words)
    fold: dict[str, str] = {}
    for w in vocab:
        if not w.endswith("s") or w.endswith("ss"):
            continue
        for singular in (w[:-3] + "y" if w.endswith("ies") else "", w[:-2] if w.endswith("es") else "", w[:-1]):
            if singular and singular in vocab:
                fold[w] = singular
                break
    return fold


def _terms(tokens: Sequence[str], fold: dict[str, str]) -> list[str]:
    return [fold.get(t, t) for t in tokens if is_content_word(t)]


# ---------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class _Sentence:
    doc: int
    index: int
    text: str
    terms: frozenset[str]  # its distinct content words (plurals folded)
    score: float
    candidate: bool  # long enough and ending like a sentence: may be chosen


def _scored(text: str, doc: int = 0) -> list[_Sentence]:
    """The sentences of one text, each scored against that text's own word weights."""
    split = [(s, word_tokens(s)) for s in split_sentences(text)]
    fold = _fold_map(t for _, toks in split for t in toks if is_content_word(t))
    terms = [_terms(toks, fold) for _, toks in split]
    counts = Counter(t for ts in terms for t in ts)
    top = max(counts.values(), default=1)
    n = len(split)
    out = []
    for i, ((sentence, toks), ts) in enumerate(zip(split, terms, strict=True)):
        distinct = frozenset(ts)
        # Distinct words only: repeating the top word does not make a sentence more representative.
        base = sum(counts[t] / top for t in distinct) / math.sqrt(len(distinct)) if distinct else 0.0
        position = 1.0 + POSITION_BONUS * (1 - i / (n - 1) if n > 1 else 1.0)
        candidate = len(toks) >= MIN_SENTENCE_WORDS and _ENDS_SENTENCE.search(sentence) is not None
        out.append(_Sentence(doc, i, sentence, distinct, base * position, candidate))
    return out


def _ranked(sentences: list[_Sentence]) -> list[_Sentence]:
    """Candidates best first (earlier first on ties); every sentence when none qualifies."""
    pool = [s for s in sentences if s.candidate] or sentences
    return sorted(pool, key=_rank_key)


def _rank_key(s: _Sentence) -> tuple[float, int, int]:
    return (-s.score, s.doc, s.index)


def _redundant(s: _Sentence, chosen: list[_Sentence]) -> bool:
    if not s.terms:
        return False
    return any(len(s.terms & c.terms) / len(s.terms) > REDUNDANCY for c in chosen)


def _pick(ranked: Iterable[_Sentence], n: int, chosen: list[_Sentence]) -> list[_Sentence]:
    """Add sentences from `ranked` to `chosen` until it holds `n`, skipping repeats of chosen ones
    unless nothing else is left."""
    skipped = []
    for s in ranked:
        if len(chosen) >= n:
            break
        if s in chosen:
            continue
        if _redundant(s, chosen):
            skipped.append(s)
            continue
        chosen.append(s)
    for s in skipped:  # only when too few distinct sentences exist
        if len(chosen) >= n:
            break
        chosen.append(s)
    return chosen


def select_sentences(text: str, sentences: int = 5) -> list[str]:
    """The `sentences` most representative sentences of `text`, in their original order (all of
    them when it has no more). See the module docstring for how they are scored."""
    _check_count(sentences)
    chosen = _pick(_ranked(_scored(text)), sentences, [])
    return [s.text for s in sorted(chosen, key=lambda s: s.index)]


def summarize_text(text: str, sentences: int = 5, *, backend: Summarizer | None = None) -> str:
    """A summary of `text` of at most `sentences` sentences: extractive by default (deterministic,
    offline); with `backend`, whatever the backend writes for `(text, sentences)`."""
    _check_count(sentences)
    if backend is not None:
        return backend(text, sentences).strip()
    return " ".join(select_sentences(text, sentences))


def summarize_corpus(texts: Sequence[str], sentences: int = 5, *, backend: Summarizer | None = None) -> str:
    """One summary of several documents, at most `sentences` long. Each sentence is scored within
    its own document (so a long or repetitive document does not drown the others); each document's
    best sentence comes first (so none goes unheard while `sentences` allows), then the rest by
    score; the result is ordered by document, then position. With `backend`, the documents are
    joined by blank lines and handed to it."""
    _check_count(sentences)
    if backend is not None:
        return backend("\n\n".join(texts), sentences).strip()
    ranked = [r for r in (_ranked(_scored(t, d)) for d, t in enumerate(texts)) if r]
    chosen = _pick(sorted((r[0] for r in ranked), key=_rank_key), sentences, [])
    chosen = _pick(sorted((s for r in ranked for s in r), key=_rank_key), sentences, chosen)
    return " ".join(s.text for s in sorted(chosen, key=lambda s: (s.doc, s.index)))


def _check_count(sentences: int) -> None:
    if sentences < 1:
        raise ValueError(f"sentences must be at least 1, not {sentences}")


# ---------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TextStats:
    """Counts for a text. `lexical_diversity` is distinct words / words (0..1; it falls as texts
    grow longer, so compare texts of similar length)."""

    words: int
    sentences: int
    characters: int
    avg_sentence_words: float
    reading_minutes: float
    lexical_diversity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_stats(text: str | Sequence[str]) -> TextStats:
    """Word, sentence and character counts, average sentence length in words, reading time at
    READING_WPM words a minute, and lexical diversity. A sequence of texts counts as one corpus.

    Headings are words but not sentences: a unit without closing punctuation counts as a
    sentence only when it has at least MIN_SENTENCE_WORDS words."""
    texts = [text] if isinstance(text, str) else list(text)
    tokens = [t for x in texts for t in word_tokens(x)]
    sentences = sum(1 for x in texts for s in split_sentences(x)
                    if _ENDS_SENTENCE.search(s) or len(word_tokens(s)) >= MIN_SENTENCE_WORDS)
    words = len(tokens)
    return TextStats(
        words=words,
        sentences=sentences,
        characters=sum(len(x) for x in texts),
        avg_sentence_words=round(words / sentences, 1) if sentences else 0.0,
        reading_minutes=round(words / READING_WPM, 1),
        lexical_diversity=round(len(set(tokens)) / words, 3) if words else 0.0,
    )


def keywords(text: str | Sequence[str], top: int = 10) -> list[tuple[str, int]]:
    """The `top` most frequent content words with their counts, most frequent first (ties: the
    one that appears first). Plurals count towards their singular when it occurs. A sequence of
    texts is counted as one corpus."""
    tokens = [t for s in _all_sentences(text) for t in word_tokens(s)]
    fold = _fold_map(t for t in tokens if is_content_word(t))
    return _top(_terms(tokens, fold), top)


def bigrams(text: str | Sequence[str], top: int = 10, min_count: int = 2) -> list[tuple[str, int]]:
    """The `top` most frequent two-word phrases of adjacent content words within a clause
    ("ready queue", "time slice"; never across punctuation), seen at least `min_count` times,
    most frequent first."""
    sentences = [word_tokens(c) for s in _all_sentences(text) for c in _CLAUSE.split(s)]
    fold = _fold_map(t for toks in sentences for t in toks if is_content_word(t))
    pairs = []
    for toks in sentences:
        for a, b in zip(toks, toks[1:], strict=False):
            if is_content_word(a) and is_content_word(b):
                pairs.append(f"{fold.get(a, a)} {fold.get(b, b)}")
    return [(p, c) for p, c in _top(pairs, top * 4) if c >= min_count][:top]


def _all_sentences(text: str | Sequence[str]) -> list[str]:
    texts = [text] if isinstance(text, str) else list(text)
    return [s for t in texts for s in split_sentences(t)]


def _top(items: Sequence[str], n: int) -> list[tuple[str, int]]:
    counts = Counter(items)
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item, i)
    return sorted(counts.items(), key=lambda kv: (-kv[1], first[kv[0]]))[:max(0, n)]


# ---------------------------------------------------------------------------------- HTML


class HtmlText(NamedTuple):
    title: str
    text: str


_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
    "pre", "section", "table", "td", "th", "tr", "ul",
})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.first_h1: list[str] = []
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.skip: list[str] = []  # open skipped elements (nested); their text is dropped
        self.in_title = False
        self.in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _SKIP:
            self.skip.append(tag)
        elif tag in _BLOCKS:
            self._end_block()
            self.in_h1 = tag == "h1" and not self.first_h1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self._end_block()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _SKIP:
            if tag in self.skip:
                del self.skip[len(self.skip) - 1 - self.skip[::-1].index(tag):]
        elif tag in _BLOCKS:
            if tag in _HEADINGS and self.current:
                self.current.append("\n")  # marks the block as a heading (see _end_block)
            self._end_block()
            if tag == "h1":
                self.in_h1 = False

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skip:
            self.current.append(data)
            if self.in_h1:
                self.first_h1.append(data)

    def _end_block(self) -> None:
        heading = bool(self.current) and self.current[-1] == "\n"
        text = re.sub(r"\s+", " ", "".join(self.current)).strip()
        self.current = []
        if text:
            self.blocks.append(f"# {text}" if heading else text)


def html_to_text(html: str) -> HtmlText:
    """Readable text of an HTML page and its title (`<title>`, else the first `<h1>`).

    Scripts and styles are dropped; block elements become paragraphs separated by
    blank lines and headings become markdown `# ` lines, so `split_sentences` keeps them apart.
    """
    reader = _Reader()
    reader.feed(html)
    reader.close()
    reader._end_block()
    title = re.sub(r"\s+", " ", "".join(reader.title)).strip() or re.sub(r"\s+", " ", "".join(reader.first_h1)).strip()
    return HtmlText(title, "\n\n".join(reader.blocks))


def text_title(text: str) -> str:
    """A plain or markdown text's title: its first line when that looks like a heading (a `# `
    line, or a short line without closing punctuation), else ""."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if len(line.split()) <= 12 and not line.endswith((".", "!", "?", ":", ";", ",")):
            return line
        return ""
    return ""
