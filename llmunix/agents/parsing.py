"""Tool calls out of a model's reply: native function calls and LLMunix's text formats.

Three ways a model asks for a tool, all read into `ToolCall`s:

* native (OpenAI function calling): the assistant message's `tool_calls`, each with its
  arguments as a JSON string or an object (`parse_native`);
* the LLMunix runtime's text blocks (`parse_text`)::

      TOOL_CALL: read_file
      PARAMETERS: {"path": "notes.txt"}          (or: path="notes, v2.txt", limit=3)
      REASONING: the notes hold the answer

* the tag format of the Qwen/OpenRouter runtime::

      <tool_call name="read_file">{"path": "notes.txt"}</tool_call>
      <final_answer>...</final_answer>

A call whose arguments cannot be read is still returned, with `error` set, so the agent records a
failed step and tells the model what was wrong instead of guessing.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    error: str | None = None  # why the call could not be read (it is then not run)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "arguments": dict(self.arguments), "id": self.id}
        if self.error:
            d["error"] = self.error
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToolCall:
        return cls(str(d.get("name", "")), dict(d.get("arguments") or {}), str(d.get("id") or ""), d.get("error"))


@dataclass(frozen=True)
class ParsedReply:
    calls: tuple[ToolCall, ...] = ()
    final: str | None = None
    reasoning: str = ""


# ---------------------------------------------------------------------------- native


def parse_native(message: Mapping[str, Any]) -> ParsedReply:
    """An OpenAI chat-completions assistant message: `tool_calls` (or the older `function_call`),
    with the text formats also read from `content` (some servers put calls there).

    Liberal in what it accepts, because the servers people run differ: llama.cpp's server sends
    the deprecated `function_call` as a copy of the first of `tool_calls` (sometimes with an empty
    or `"name:"` name), so `function_call` is read only when there are no `tool_calls`, and an
    empty one is no call at all; a call repeated under the same id is one call; `arguments` may
    be a JSON string, an object, or a JSON string of a JSON string; a call may come without the
    `function` wrapper (`{"name": ..., "arguments": ...}`)."""
    content = message.get("content") or ""
    if not isinstance(content, str):  # a list of content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    raw_calls = [c for c in (message.get("tool_calls") or []) if c]
    legacy = message.get("function_call")
    if not raw_calls and isinstance(legacy, Mapping) and (_usable_name(legacy.get("name")) or legacy.get("arguments")):
        raw_calls.append({"id": "", "function": legacy})
    calls: list[ToolCall] = []
    seen_ids: set[str] = set()
    for i, raw in enumerate(raw_calls):
        fn = native_function(raw)
        call_id = str(raw.get("id") or "") if isinstance(raw, Mapping) else ""
        if call_id and call_id in seen_ids:
            continue  # the same call sent twice: it must run once
        seen_ids.add(call_id)
        call_id = call_id or f"call_{i}"
        name = _usable_name(fn.get("name")) if fn is not None else ""
        if not name:
            calls.append(ToolCall("?", {}, call_id, "a tool call without a function name"))
            continue
        args, error = _json_arguments(fn.get("arguments"), name)
        calls.append(ToolCall(name, args, call_id, error))
    text = parse_text(content)
    if not calls:
        return text
    # Beside native calls, prose is the model thinking aloud, not its final answer: only an
    # explicit <final_answer> / FINAL_ANSWER: ends the run.
    prose = not text.calls and text.final == content.strip()
    return ParsedReply(tuple(calls), None if prose else text.final, text.reasoning or content.strip())


def native_function(raw: Any) -> Mapping[str, Any] | None:
    """The `function` of one entry of `tool_calls` (or the entry itself when a server left the
    wrapper out), or None."""
    if not isinstance(raw, Mapping):
        return None
    fn = raw.get("function")
    if isinstance(fn, Mapping):
        return fn
    return raw if "name" in raw else None


def _usable_name(name: Any) -> str:
    """A function name, or "" for the empty placeholders some servers send (`""`, `"name:"`)."""
    text = str(name or "").strip()
    return "" if not text or text.rstrip(":").strip().lower() in ("", "name") else text


def _json_arguments(raw: Any, name: str) -> tuple[dict[str, Any], str | None]:
    if raw is None or raw == "":
        return {}, None
    if isinstance(raw, Mapping):
        return dict(raw), None
    try:
        value = json.loads(raw)
        if isinstance(value, str) and value.strip().startswith("{"):
            value = json.loads(value)  # encoded twice by the server
    except (TypeError, ValueError) as exc:
        return {}, f"arguments of {name!r} are not valid JSON ({exc}): {_clip(str(raw))}"
    if not isinstance(value, dict):
        return {}, f"arguments of {name!r} must be a JSON object, not {type(value).__name__}: {_clip(str(raw))}"
    return value, None


# ---------------------------------------------------------------------------- text formats

_TAG_CALL = re.compile(r"<tool_call(?P<attrs>[^>]*)>(?P<body>.*?)(?:</tool_call>|(?=<tool_call\b)|\Z)", re.DOTALL)
_ATTR_NAME = re.compile(r"""name\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")
_FINAL_TAG = re.compile(r"<final_answer>(.*?)(?:</final_answer>|\Z)", re.DOTALL)
_REASONING_TAG = re.compile(r"<(reasoning|thinking|think)>(.*?)</\1>", re.DOTALL)
_KEYWORD = re.compile(r"^[ \t]*(TOOL_CALL|PARAMETERS|REASONING|FINAL_ANSWER|FINAL ANSWER)[ \t]*:[ \t]*",
                      re.MULTILINE | re.IGNORECASE)


def parse_text(text: str) -> ParsedReply:
    """Calls, final answer and reasoning written in the LLMunix text formats."""
    text = text or ""
    calls: list[ToolCall] = []
    reasoning_parts = [m.group(2).strip() for m in _REASONING_TAG.finditer(text)]
    for m in _TAG_CALL.finditer(text):
        calls.append(_tag_call(m, len(calls)))
    final_match = _FINAL_TAG.search(text)
    final = final_match.group(1).strip() if final_match else None
    # The TOOL_CALL / PARAMETERS / REASONING blocks, outside any tags.
    plain = _FINAL_TAG.sub("", _TAG_CALL.sub("", _REASONING_TAG.sub("", text)))
    sections = _sections(plain)
    current: dict[str, Any] | None = None
    for keyword, value in sections:
        if keyword == "TOOL_CALL":
            if current is not None:
                calls.append(_block_call(current, len(calls)))
            current = {"name": value.strip().splitlines()[0].strip() if value.strip() else ""}
        elif keyword == "PARAMETERS":
            if current is None:
                calls.append(ToolCall("?", {}, f"call_{len(calls)}", "PARAMETERS without a TOOL_CALL line before it"))
            else:
                current["parameters"] = value
        elif keyword == "REASONING":
            reasoning_parts.append(value.strip())
        elif keyword in ("FINAL_ANSWER", "FINAL ANSWER") and final is None:
            final = value.strip()
    if current is not None:
        calls.append(_block_call(current, len(calls)))
    if not reasoning_parts:
        first = min([m.start() for m in _TAG_CALL.finditer(text)] + [m.start() for m in _KEYWORD.finditer(text)]
                    + [m.start() for m in _FINAL_TAG.finditer(text)] + [len(text)])
        lead = text[:first].strip()
        if lead and (calls or final is not None):
            reasoning_parts.append(lead)
    if not calls and final is None and text.strip():
        final = text.strip()  # plain prose: the model has answered
    return ParsedReply(tuple(calls), final, "\n".join(p for p in reasoning_parts if p))


def _sections(text: str) -> list[tuple[str, str]]:
    marks = list(_KEYWORD.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append((m.group(1).upper().replace(" ", "_"), text[m.end():end]))
    return out


def _tag_call(m: re.Match[str], index: int) -> ToolCall:
    call_id = f"call_{index}"
    attrs, body = m.group("attrs"), m.group("body")
    closed = m.group(0).rstrip().endswith("</tool_call>")
    name_match = _ATTR_NAME.search(attrs)
    name = next((g for g in name_match.groups() if g is not None), "") if name_match else ""
    body = _strip_fence(body.strip())
    if not name:
        # The Hermes/Qwen style: <tool_call>{"name": "x", "arguments": {...}}</tool_call>
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("name"):
            args, error = _json_arguments(obj.get("arguments", obj.get("parameters", {})), str(obj["name"]))
            return ToolCall(str(obj["name"]), args, call_id, error)
        return ToolCall("?", {}, call_id, f"<tool_call> without a name attribute: {_clip(m.group(0))}")
    if not closed:
        return ToolCall(name, {}, call_id, f"<tool_call name=\"{name}\"> is not closed with </tool_call>")
    args, error = _loose_arguments(body, name)
    return ToolCall(name, args, call_id, error)


def _block_call(block: dict[str, Any], index: int) -> ToolCall:
    name = block.get("name", "").strip().strip("`\"'")
    call_id = f"call_{index}"
    if not name:
        return ToolCall("?", {}, call_id, "TOOL_CALL: without a tool name")
    raw = block.get("parameters")
    if raw is None:
        return ToolCall(name, {}, call_id, None)
    args, error = _loose_arguments(_strip_fence(raw.strip()), name)
    return ToolCall(name, args, call_id, error)


def _strip_fence(text: str) -> str:
    m = re.match(r"^```[\w-]*\s*\n?(.*?)\n?```$", text.strip(), re.DOTALL)
    return m.group(1).strip() if m else text


def _loose_arguments(text: str, name: str) -> tuple[dict[str, Any], str | None]:
    """Arguments written as a JSON object, a Python dict, `key=value, ...` pairs or
    `key: value` lines. A value may be quoted (with backslash escapes) to hold commas."""
    text = text.strip()
    if not text or text in ("{}", "none", "None"):
        return {}, None
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return {}, f"arguments of {name!r} are not valid JSON ({exc}): {_clip(text)}"
        if not isinstance(value, dict):
            return {}, f"arguments of {name!r} must be an object: {_clip(text)}"
        return {str(k): v for k, v in value.items()}, None
    try:
        return parse_pairs(text), None
    except ValueError as exc:
        return {}, f"arguments of {name!r} cannot be read ({exc}): {_clip(text)}"


_PAIR_KEY = re.compile(r"\s*([A-Za-z_][\w\-]*)\s*(=|:)\s*")
_NEXT_KEY = re.compile(r"(?:,|\n)\s*[A-Za-z_][\w\-]*\s*(?:=|:)(?!//)")


def parse_pairs(text: str) -> dict[str, Any]:
    """`key=value` / `key: value` pairs separated by commas or newlines. A quoted value may hold
    commas, quotes (escaped with a backslash) and newlines; an unquoted value runs up to the next
    `, key=` (so `text=a, b, c` is one value) and is read as JSON when it is a number, true/false,
    null, a list or an object."""
    out: dict[str, Any] = {}
    i = 0
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            break
        m = _PAIR_KEY.match(text, i)
        if not m:
            raise ValueError(f"expected key=value at {_clip(text[i:], 30)!r}")
        key = m.group(1)
        i = m.end()
        if i < n and text[i] in "\"'":
            value, i = _quoted(text, i)
            rest = _NEXT_KEY.match(text, i)
            trailing = text[i:rest.start() if rest else n].strip()
            if trailing:
                raise ValueError(f"text after the quoted value of {key!r}: {_clip(trailing, 30)!r}")
        else:
            nxt = _NEXT_KEY.search(text, i)
            end = nxt.start() if nxt else n
            raw = text[i:end].strip()
            value = _bare(raw)
            i = end
        out[key] = value
    return out


def _quoted(text: str, i: int) -> tuple[str, int]:
    q = text[i]
    j = i + 1
    buf = []
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text):
            buf.append(escapes.get(text[j + 1], "\\" + text[j + 1]))
            j += 2
            continue
        if c == q:
            return "".join(buf), j + 1
        buf.append(c)
        j += 1
    raise ValueError(f"unterminated {q}quoted{q} value")


def _bare(raw: str) -> Any:
    if raw[:1] in "[{" or raw in ("true", "false", "null") or re.fullmatch(r"-?\d+(\.\d+)?", raw):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
