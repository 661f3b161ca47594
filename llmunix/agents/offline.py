"""The `offline` backend: a deterministic planner that needs no model and no network.

Each Thinking phase it works out, from the goal and the outputs so far, every call the agent's
granted tools should make, and returns the first one not made yet; when none is left it writes the
final answer with the extractive summariser. The rules (docs/agents.md has them in full):

* Calls run in four phases, and in the agent's declared tool order within a phase:
  gather (`list_files`, `grep`), read (`read_file`), process (any other tool), write (`write_file`).
* `list_files` once, on the first directory the goal names (a word ending in `/`), else `.`.
* `grep` once, for the goal's quoted phrases, else its content words (up to 5), joined with `|`.
* `read_file` for each file the goal names (words with an extension, except the output file);
  if it names none: the 3 files with the most grep matches, else the first 3 text files listed.
* `write_file` once, to the output file (the file after "into", "to", "as", "write" or "save"
  in the goal; else `<agent name>-output.md`), with the report.
* any other tool once, when each required parameter can be filled: text-like parameters (`text`,
  `content`, `input`, `prompt`, `query`, `goal`, `question`, `topic`) get the report if files were
  read, else the goal; `path`/`file` the first file named; `url` the first URL. `shell` is never
  called offline.
* A call that failed is not repeated, nor a call memory says failed the last two times (`avoid`).

The report: "summary" mode (the agent's name or the goal says summar...) gives each file's
summary as prose; otherwise "findings" give each file's key sentences (among those with a search
term) as bullets and the top 10 grep matches. Sentences are chosen by the extractive summariser
of `llmunix.tools.text` (the `summarize` tool's).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from llmunix.agents.backend import (
    ActionResult,
    Check,
    Decision,
    Log,
    OffSlot,
    Sleep,
    ToolSchema,
    Turn,
    Usage,
    stay_on_slot,
)
from llmunix.agents.parsing import ToolCall
from llmunix.tools.markdown import canonical_tool_name, tool_key
from llmunix.tools.text import is_content_word, select_sentences, split_sentences, word_tokens

GATHER, READ, PROCESS, WRITE = "Gathering", "Reading", "Analysis", "Writing"
PHASES = (GATHER, READ, PROCESS, WRITE)
TEXT_PARAMS = ("text", "content", "input", "prompt", "query", "goal", "question", "topic", "task")
TEXT_EXTENSIONS = (".md", ".txt", ".rst", ".markdown", ".text", ".csv", ".json", ".yaml", ".yml", ".html", ".log")
READ_LIMIT = 3
# Words of a goal that say what to do, not what about: never search terms.
_GOAL_VERBS = """
summarize summarise summary summaries research report write read file files find search look check
list save output document documents text notes sentence sentences point points bullet bullets
"""
GOAL_VERBS = frozenset(_GOAL_VERBS.split())

_FILE = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)*[\w-][\w.-]*\.[A-Za-z][A-Za-z0-9]{0,5})(?![\w/-])")
_URL = re.compile(r"https?://[^\s\"'<>]+")
_OUTPUT = re.compile(r"\b(?:into|to|as|write|save|saving|writing|output)\s+(?:(?:a|the|new)\s+)?(?:file\s+)?"
                     r"[`\"']?((?:[\w.-]+/)*[\w-][\w.-]*\.[A-Za-z][A-Za-z0-9]{0,5})", re.IGNORECASE)
_DIR = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)+)(?=\s|$|[,.;:)])")
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']{2,})'")
_COUNT = re.compile(r"\b(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten)\s+"
                    r"(?:key\s+)?(?:sentences?|points?|bullets?|bullet points?)\b", re.IGNORECASE)
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
            "ten": 10}


class OfflineBackend:
    name = "offline"

    def decide(self, turn: Turn, *, check: Check, sleep: Sleep, log: Log,
               off_slot: OffSlot = stay_on_slot) -> Decision:
        check()
        plan = Planner(turn)
        pending = plan.pending()
        made = len(plan.made)
        total = made + len(pending) + plan.later + 1
        if pending:
            call, phase, why = pending[0]
            return Decision(f"{phase} phase {made + 1}/{total}: {why}", (call,), None, Usage(), None)
        answer = plan.report()
        note = "; ".join(plan.skipped) if plan.skipped else ""
        reasoning = f"Answer phase {total}/{total}: all planned calls made; composing the answer"
        return Decision(reasoning + (f" ({note})" if note else ""), (), answer, Usage(), None)


def call_key(name: str, arguments: Mapping[str, Any]) -> str:
    """The identity of a call: the tool's spelling-free name and its arguments."""
    return f"{tool_key(name)}:{json.dumps(dict(arguments), sort_keys=True, default=str)}"


class Planner:
    """The rules of the module docstring, over one turn."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.goal = turn.goal
        self.results: list[ActionResult] = [r for s in turn.steps for r in s.results]
        self.made = {call_key(r.tool or r.call.name, r.call.arguments) for r in self.results}
        self.used = {tool_key(r.tool or r.call.name) for r in self.results}
        self.skipped: list[str] = []
        self.later = 0  # calls expected in later phases (an estimate: one per tool not used yet)
        named = [m for m in _FILE.findall(self.goal) if not _URL.search(m)]
        out = _OUTPUT.search(self.goal)
        self.output = out.group(1) if out else None
        self.inputs = [f for f in dict.fromkeys(named) if f != self.output and not f.startswith(("http:", "https:"))]
        dirs = _DIR.findall(self.goal)
        self.directory = dirs[0].rstrip("/") if dirs else "."
        quoted = [next(g for g in m if g) for m in _QUOTED.findall(self.goal)]
        if quoted:
            self.terms = quoted[:5]
        else:  # the goal's words, without the files and directories it names
            prose = _DIR.sub(" ", _FILE.sub(" ", _URL.sub(" ", self.goal)))
            self.terms = [w for w in dict.fromkeys(content_words(prose)) if w not in _agent_words(turn.agent)][:5]
        count = _COUNT.search(self.goal)
        self.count = None
        if count:
            raw = count.group(1).lower()
            self.count = _NUMBERS.get(raw) or int(raw)
        self.summary_mode = "summar" in tool_key(turn.agent) or "summar" in self.goal.lower()

    # ------------------------------------------------------------------ what is left to do

    def pending(self) -> list[tuple[ToolCall, str, str]]:
        out: list[tuple[ToolCall, str, str]] = []
        by_phase: dict[str, list[ToolSchema]] = {p: [] for p in PHASES}
        for t in self.turn.tools:
            by_phase[_phase(t)].append(t)
        for phase in PHASES:
            for t in by_phase[phase]:
                for args, why in self._calls_for(t):
                    key = call_key(t.name, args)
                    if key in self.made:
                        continue
                    if key in self.turn.avoid:
                        note = f"not repeating {t.name} {_short_args(args)}: it failed the last two times " \
                               f"({self.turn.avoid[key]})"
                        if note not in self.skipped:
                            self.skipped.append(note)
                        continue
                    out.append((ToolCall(t.name, args, f"call_{len(self.results) + len(out)}"), phase, why))
            if out:
                # A later phase waits for this one: its parameters come from these outputs.
                self.later = sum(1 for p in PHASES[PHASES.index(phase) + 1:] for t in by_phase[p]
                                 if tool_key(t.name) not in self.used)
                return out
        return out

    def _calls_for(self, t: ToolSchema) -> list[tuple[dict[str, Any], str]]:
        kind = canonical_tool_name(t.name)
        params = {p for p, _t, _r, _d in t.parameters}
        if kind == "list_files":
            if self._used(t):
                return []
            return [({"path": self.directory}, f"list {self.directory} to see what there is to work with")]
        if kind == "grep":
            if self._used(t) or not self.terms:
                return []
            pattern = "|".join(re.escape(w) for w in self.terms)
            args: dict[str, Any] = {"pattern": pattern}
            if self.directory != "." and "path" in params:
                args["path"] = self.directory
            return [(args, f"search the files for {' or '.join(self.terms)}")]
        if kind == "read_file":
            return [({"path": p}, why) for p, why in self._to_read()]
        if kind == "write_file":
            if self._used(t):
                return []
            path = self.output or f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.turn.agent).strip('-') or 'agent'}-output.md"
            return [({"path": path, "content": self.report()}, f"write the {self._what()} to {path}")]
        if kind == "shell":
            self._skip(f"{t.name} is not called offline (it would need a model to choose a command)")
            return []
        if self._used(t):
            return []
        args = {}
        for p, _typ, required, _d in t.parameters:
            value = self._fill(p)
            if value is not None:
                args[p] = value
            elif required:
                self._skip(f"{t.name} skipped: no way to fill its parameter {p!r} offline")
                return []
        return [(args, f"run {t.name} on the {'material read so far' if self._texts() else 'goal'}")]

    def _used(self, t: ToolSchema) -> bool:
        return tool_key(t.name) in self.used

    def _skip(self, note: str) -> None:
        if note not in self.skipped:
            self.skipped.append(note)

    def _fill(self, param: str) -> Any:
        p = param.lower()
        if p in TEXT_PARAMS:
            return self.report() if self._texts() and p in ("text", "content", "input") else self.goal
        if p in ("path", "file", "file_path", "input_file_path", "filename"):
            return self.inputs[0] if self.inputs else None
        if p in ("url", "urls"):
            m = _URL.search(self.goal)
            return m.group(0) if m else None
        return None

    def _to_read(self) -> list[tuple[str, str]]:
        if self.inputs:
            return [(f, f"read {f}, named in the goal") for f in self.inputs]
        hits: Counter[str] = Counter()
        for r in self._outputs("grep"):
            for m in r if isinstance(r, list) else []:
                if isinstance(m, Mapping) and m.get("file") and m.get("file") != self.output:
                    hits[str(m["file"])] += 1
        if hits:
            first = {}
            for r in self._outputs("grep"):
                for i, m in enumerate(r if isinstance(r, list) else []):
                    if isinstance(m, Mapping):
                        first.setdefault(str(m.get("file")), i)
            ranked = sorted(hits, key=lambda f: (-hits[f], first.get(f, 0)))[:READ_LIMIT]
            return [(f, f"read {f} ({hits[f]} match{'es' if hits[f] > 1 else ''} for "
                        f"{' or '.join(self.terms)})") for f in ranked]
        listed = [str(f) for r in self._outputs("list_files") for f in (r if isinstance(r, list) else [])
                  if str(f).lower().endswith(TEXT_EXTENSIONS) and str(f) != self.output]
        return [(f, f"read {f}, listed in {self.directory}") for f in listed[:READ_LIMIT]]

    def _outputs(self, kind: str) -> list[Any]:
        return [r.output for r in self.results if r.ok and canonical_tool_name(r.tool or r.call.name) == kind]

    def _texts(self) -> list[tuple[str, str]]:
        """(path, text) of every file read successfully, in the order read."""
        out = []
        for r in self.results:
            if r.ok and canonical_tool_name(r.tool or r.call.name) == "read_file" and isinstance(r.output, str):
                out.append((str(r.call.arguments.get("path", "?")), r.output))
        return out

    def _what(self) -> str:
        return "summary" if self.summary_mode else "findings"

    # ------------------------------------------------------------------ the answer

    def report(self) -> str:
        texts = self._texts()
        lines: list[str] = []
        if self.summary_mode and texts:
            names = ", ".join(p for p, _t in texts)
            lines.append(f"# Summary of {names}")
            for path, text in texts:
                chosen = select_sentences(text, self.count or default_count(text)) if text.strip() else []
                if len(texts) > 1:
                    lines += ["", f"## {path}"]
                lines += ["", " ".join(chosen) if chosen else "(nothing to summarise)"]
        else:
            topic = " ".join(self.terms) if self.terms else self.goal
            lines.append(f"# Findings: {topic}")
            for path, text in texts:
                chosen = focused_sentences(text, self.terms, self.count or 3)
                lines += ["", f"## {path}", ""] + [f"- {s}" for s in chosen or ["(nothing to summarise)"]]
            matches = [m for r in self._outputs("grep") for m in (r if isinstance(r, list) else [])
                       if isinstance(m, Mapping)]
            if matches:
                lines += ["", f"## Matches ({len(matches)})", ""]
                lines += [f"- {m.get('file')}:{m.get('line')}: {m.get('text')}" for m in matches[:10]]
            listed = [f for r in self._outputs("list_files") for f in (r if isinstance(r, list) else [])]
            if not texts and not matches and listed:
                lines += ["", f"## Files in {self.directory}", ""] + [f"- {f}" for f in listed[:20]]
            if not texts and not matches and not listed:
                others = [r for r in self.results if r.ok]
                if others:
                    lines += ["", "## Results", ""] + [f"- {r.tool}: {r.text()[:300]}" for r in others]
                else:
                    lines += ["", "Nothing was found to work on."]
        failures = [r for r in self.results if not r.ok]
        if failures:
            lines += ["", "## Problems", ""] + [f"- {r.tool or r.call.name}: {r.error}" for r in failures]
        written = [r for r in self.results if r.ok and canonical_tool_name(r.tool or r.call.name) == "write_file"]
        if written:
            out = written[-1].output
            where = out.get("path") if isinstance(out, Mapping) else written[-1].call.arguments.get("path")
            lines += ["", f"Written to {where}."]
        return "\n".join(lines).strip()


def _phase(t: ToolSchema) -> str:
    kind = canonical_tool_name(t.name)
    if kind in ("list_files", "grep"):
        return GATHER
    if kind == "read_file":
        return READ
    if kind == "write_file":
        return WRITE
    return PROCESS


def _agent_words(agent: str) -> set[str]:
    return set(content_words(re.sub(r"[-_]", " ", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", agent)))) | {"agent"}


def content_words(text: str) -> list[str]:
    """The words of a goal that can be search terms: content words (llmunix.tools.text), less GOAL_VERBS."""
    return [w for w in word_tokens(text) if is_content_word(w) and w not in GOAL_VERBS]


def default_count(text: str) -> int:
    """A summary's length when the goal does not say: a quarter of the sentences, 1 to 7."""
    return min(7, max(1, round(len(split_sentences(text)) / 4)))


def focused_sentences(text: str, terms: list[str], count: int) -> list[str]:
    """The `count` most representative sentences of `text` among those that contain a term (all
    of its sentences when none does), in their order."""
    wanted = {t.lower() for t in terms}
    sentences = split_sentences(text)
    focused = [s for s in sentences if wanted & set(word_tokens(s))]
    if not sentences:
        return []
    return select_sentences("\n\n".join(focused) if focused else text, count)


def _short_args(args: Mapping[str, Any]) -> str:
    text = json.dumps(dict(args), ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:59] + "…"

