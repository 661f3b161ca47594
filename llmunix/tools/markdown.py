"""LLMunix markdown definitions of agents and tools, from every era of the format.

LLMunix described its components in markdown, and the header changed with each runtime:

* **prose** files (the first era): a `# CEO Agent` heading and a system prompt in prose ("You
  are the CEO Agent of ..."). In an agents folder such a file is an agent named from its title,
  its body the instructions, granted no tools (a warning says so, and names the tools the text
  mentions).
* **component** files: no frontmatter; a `# Component: X` (or plain `# X`) heading and bold-key
  header lines, with or without a leading `- `: `**Name**: X` (or `**Agent Name**`), `**Type**`
  / `**Component Type**: Agent|Tool`, `**Description**`, `**Tools**` / `**Claude Tools**` /
  `**Claude Tool Mapping**: Read, Write`, and an `### Inputs` list of `` `name` (type): what``.
* **frontmatter** files (Claude Code sub-agents and later): a `---` header with `name` (or
  `agent_name`, `agent_id`, `tool_name`), `description`, `tools` as a comma string or a list,
  `claude_tools`, `model`, `version`, `capabilities`, `parameters` (a mapping of name:
  description, a list of `name: description` strings, or a list of mappings with `name`,
  `type`, `description`, `required`, `default`), and whatever else the author added.
  Many files carry both: a frontmatter header over a component body.

`parse_definition` reads one file into a `MarkdownDefinition` whatever its era, with `warnings`
for what it read with a guess; a file it cannot read raises `DefinitionError`, one line naming
the file (and line) and why. The frontmatter parser reads the YAML subset these files use
(scalars, quoted strings, inline `[a, b]` lists, `- item` lists and lists of mappings, two
levels of nested mapping, `|` / `>` blocks) and names the file and line of anything else. Tool
lists may carry notes (`Bash (for testing code)`): the note is dropped.

Tool names are compared by `tool_key` so that `Read`, `read_file` and `read-file` are one tool
(`canonical_tool_name` maps Claude Code's tool names to llmunix's built-ins), and `claude_call`
maps a call written for a Claude Code tool (`Write` with `file_path`) to the built-in and its
parameter names (`write_file` with `path`): one mapping for agents, workflows and `tools NAME`.
`discover` walks directories; `check_directory` reports on every markdown file under one;
`markdown_tool` turns a tool definition into a runnable `Tool` (a shell block runs as a
subprocess tool, only when `allow_shell_tools` is set).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmunix.models import LlmunixError, ToolError

AGENT = "agent"
TOOL = "tool"

NAME_KEYS = ("name", "agent_name", "agent_id", "tool_name", "id")
TOOLS_KEYS = ("tools", "claude_tools", "allowed_tools")


class DefinitionError(LlmunixError):
    """A markdown definition that cannot be read; the message names the file and line."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class InputSpec:
    """A parameter a markdown tool or agent declares (from an `Inputs` list or `parameters`).
    `type` is a JSON schema type: string, integer, number, boolean, array or object."""

    name: str
    type: str = "string"
    description: str = ""
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class MarkdownDefinition:
    kind: str  # AGENT or TOOL
    name: str  # as the file writes it
    description: str
    tools: tuple[str, ...]  # granted tools, as written
    path: Path
    format: str  # "component", "frontmatter" or "frontmatter+component"
    body: str  # the markdown after the frontmatter: the instructions
    model: str | None = None
    version: str | None = None
    capabilities: tuple[str, ...] = ()
    inputs: tuple[InputSpec, ...] = ()
    shell: str | None = None  # a tool's script: its first ```bash / ```sh / ```shell block
    max_iterations: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # every other frontmatter key
    warnings: tuple[str, ...] = ()  # what was read with a guess (`agents --check` shows them)

    @property
    def key(self) -> str:
        return tool_key(self.name)


# ---------------------------------------------------------------------------- tool names

# Claude Code's tool names (and other spellings LLMunix files use) for llmunix's built-ins,
# including the framework names of LLMunix's ClaudeCodeToolMap (FileReaderTool -> Read, ...).
_ALIASES = {
    "read": "read_file", "readfile": "read_file", "fileread": "read_file", "cat": "read_file",
    "filereader": "read_file",
    "write": "write_file", "writefile": "write_file", "filewrite": "write_file", "filewriter": "write_file",
    "edit": "edit_file", "editfile": "edit_file", "fileedit": "edit_file",
    "ls": "list_files", "list": "list_files", "listfiles": "list_files", "listdir": "list_files",
    "glob": "list_files", "filesearch": "list_files",
    "grep": "grep", "search": "grep", "grepfiles": "grep", "searchfiles": "grep",
    "bash": "shell", "sh": "shell", "shell": "shell", "executebash": "shell",
    "webfetch": "web_fetch", "webfetcher": "web_fetch",
}

# A call written for a Claude Code tool, in llmunix's terms: its parameters renamed to the
# built-in's (None: the built-in has nothing like it; the value is dropped and said so).
# `Task` is not a tool here: a workflow step that calls it becomes an agent step.
_CLAUDE_PARAMETERS: dict[str, dict[str, str | None]] = {
    "read_file": {"file_path": "path", "filepath": "path", "file": "path", "offset": None, "limit": None},
    "write_file": {"file_path": "path", "filepath": "path", "file": "path", "text": "content"},
    "edit_file": {"file_path": "path", "filepath": "path", "file": "path", "old": "old_string",
                  "new": "new_string"},
    "list_files": {"directory": "path", "dir": "path", "glob": "pattern"},
    "grep": {"regex": "pattern", "query": "pattern", "-i": "ignore_case", "case_insensitive": "ignore_case",
             "head_limit": "max_matches", "output_mode": None, "glob": None, "type": None, "-n": None,
             "-A": None, "-B": None, "-C": None, "multiline": None},
    "shell": {"command": "cmd", "script": "cmd", "description": None, "timeout": None,
              "run_in_background": None},
    "web_fetch": {"url": "urls", "prompt": None},
}


@dataclass(frozen=True)
class MappedCall:
    """A call in llmunix's terms (see `claude_call`)."""

    tool: str
    arguments: dict[str, Any]
    dropped: tuple[str, ...] = ()  # parameters with no counterpart, left out
    timeout: float | None = None  # Bash's `timeout` (milliseconds there), in seconds


# Claude Code's own tool names (and LLMunix's framework names for them), spelling-free: only
# these are rewritten, so a user's tool called `search` or `cat` stays the user's.
_CLAUDE_KEYS = {"read", "write", "edit", "bash", "grep", "glob", "ls", "webfetch", "filereader",
                "filewriter", "webfetcher"}


def claude_call(name: str, arguments: Mapping[str, Any]) -> MappedCall:
    """The built-in a Claude Code tool name means, with the call's parameters renamed to the
    built-in's (`Write` {file_path, content} -> `write_file` {path, content}; `write_file`
    {file_path} too). Any other name, and parameters that are already ours, pass through
    unchanged."""
    key = tool_key(name)
    base = key[:-4] if key.endswith("tool") and key[:-4] in _CLAUDE_KEYS else key
    if base in _CLAUDE_KEYS:
        tool = _ALIASES[base]
    elif name in _CLAUDE_PARAMETERS:
        tool = name
    else:
        return MappedCall(name, dict(arguments))
    mapping = _CLAUDE_PARAMETERS[tool]
    args = dict(arguments)
    out: dict[str, Any] = {}
    dropped: list[str] = []
    timeout: float | None = None
    for key, value in args.items():
        if key not in mapping:
            out.setdefault(key, value)
            continue
        target = mapping[key]
        if tool == "shell" and key == "timeout":
            try:
                timeout = float(value) / 1000  # Claude's Bash takes milliseconds
            except (TypeError, ValueError):
                dropped.append(key)
            continue
        if target is None:
            dropped.append(key)
        elif target not in args:  # a parameter given under our own name wins
            out[target] = [value] if tool == "web_fetch" and target == "urls" and isinstance(value, str) else value
    return MappedCall(tool, out, tuple(dropped), timeout)


def tool_key(name: str) -> str:
    """The spelling-free identity of a tool name: `Read`, `read_file`, `read-file` -> `readfile`."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_tool_name(name: str) -> str:
    """llmunix's name for a tool an LLMunix file grants (`Read` -> `read_file`); others unchanged."""
    key = tool_key(name)
    if key in _ALIASES:
        return _ALIASES[key]
    if key.endswith("tool") and key[:-4] in _ALIASES:
        return _ALIASES[key[:-4]]
    return str(name).strip()


def find_tool_name(names: Iterable[str], wanted: str) -> str | None:
    """The name among `names` that `wanted` means (exact, alias, then spelling-free), else None."""
    pool = list(names)
    if wanted in pool:
        return wanted
    canonical = canonical_tool_name(wanted)
    if canonical in pool:
        return canonical
    by_key = {tool_key(n): n for n in pool}
    for key in (tool_key(wanted), tool_key(canonical)):
        if key in by_key:
            return by_key[key]
        if key.endswith("tool") and key[:-4] in by_key:
            return by_key[key[:-4]]
    return None


# ---------------------------------------------------------------------------- frontmatter


def split_frontmatter(text: str, path: Path | str) -> tuple[dict[str, Any] | None, str, int]:
    """(frontmatter mapping or None, body, line number where the body starts)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None, text, 1
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            data = parse_frontmatter(lines[1:i], path, first_line=2)
            return data, "\n".join(lines[i + 1:]), i + 2
    raise DefinitionError(path, 1, "frontmatter starts with '---' but has no closing '---' line")


_KEY = re.compile(r"^([A-Za-z_][\w\-. ]*?)\s*:(?:\s+(.*))?$")
_LIST_ITEM = re.compile(r"^-(?:\s+(.*))?$")


def parse_frontmatter(lines: list[str], path: Path | str, first_line: int = 1) -> dict[str, Any]:
    """Parse the YAML subset LLMunix headers use; DefinitionError names the line of anything else."""
    data: dict[str, Any] = {}
    i = 0
    n = len(lines)

    def fail(idx: int, problem: str) -> DefinitionError:
        return DefinitionError(path, first_line + idx, problem)

    while i < n:
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        if raw[0] in " \t":
            raise fail(i, f"unexpected indentation: {stripped!r} (a value must follow a 'key:' line)")
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise fail(i, "tabs are not allowed for indentation")
        m = _KEY.match(raw.rstrip())
        if not m:
            raise fail(i, f"expected 'key: value', got {stripped!r}")
        key, value = m.group(1).strip(), (m.group(2) or "").strip()
        if key in data:
            raise fail(i, f"key {key!r} appears twice")
        i += 1
        if value in ("|", ">", "|-", ">-", "|+", ">+"):
            block, i = _indented(lines, i)
            texts = [b[1] for b in block]
            indent = min((len(t) - len(t.lstrip()) for t in texts if t.strip()), default=0)
            body = [t[indent:] for t in texts]
            data[key] = ("\n" if value.startswith("|") else " ").join(body).strip()
            continue
        if value and not value.startswith("#"):
            data[key] = _scalar(value, lambda p, idx=i - 1: fail(idx, p))
            continue
        block, i = _indented(lines, i)
        if not block and i < n and _LIST_ITEM.match(lines[i].rstrip()):
            block, i = _indented(lines, i, dash=True)  # `key:` then `- item` lines at its own indentation
        block = [(idx, t) for idx, t in block if t.strip() and not t.strip().startswith("#")]
        if not block:
            data[key] = None
            continue
        if _LIST_ITEM.match(block[0][1].strip()):
            data[key] = _list_block(block, key, fail)
        else:
            data[key] = _mapping_block(block, key, fail)
    return data


_ITEM_KEY = re.compile(r"^([A-Za-z_][\w\-.]*)\s*:(?:\s+(.*))?$")


def _list_block(block: list[tuple[int, str]], key: str, fail: Any) -> list[Any]:
    """`- item` lines. An item `- name: code` starts a mapping, and the lines indented under it
    (`type: string`) are its other keys: a list of mappings, as YAML reads it. Other items are
    scalars; an indented line after one continues it (a long string wrapped)."""
    items: list[Any] = []
    dash = len(block[0][1]) - len(block[0][1].lstrip())
    for idx, t in block:
        depth = len(t) - len(t.lstrip())
        item = _LIST_ITEM.match(t.strip())
        if item and depth <= dash:
            text = (item.group(1) or "").strip()
            km = _ITEM_KEY.match(text)
            if km and not text.startswith(("http:", "https:")):
                items.append({km.group(1): _scalar((km.group(2) or "").strip(), lambda p, idx=idx: fail(idx, p))})
            else:
                items.append(_scalar(text, lambda p, idx=idx: fail(idx, p)))
            continue
        if depth <= dash or not items:
            raise fail(idx, f"expected a '- item' line in the list {key!r}, got {t.strip()!r}")
        last = items[-1]
        km = _KEY.match(t.strip())
        if isinstance(last, dict) and km:
            last[km.group(1).strip()] = _scalar((km.group(2) or "").strip(), lambda p, idx=idx: fail(idx, p))
        elif isinstance(last, dict):  # a wrapped value of the mapping's last key
            k = next(reversed(last))
            last[k] = f"{last[k]} {t.strip()}".strip()
        elif isinstance(last, str):
            items[-1] = f"{last} {t.strip()}"
        else:
            raise fail(idx, f"expected a '- item' line in the list {key!r}, got {t.strip()!r}")
    return items


def _mapping_block(block: list[tuple[int, str]], key: str, fail: Any) -> dict[str, Any]:
    """`key: value` lines indented under `key:`. A key with no value and lines indented under it
    holds a mapping of its own (two levels: `parameters:` / `code:` / `type: string`); other
    deeper lines continue the last value (a long string wrapped)."""
    nested: dict[str, Any] = {}
    base = len(block[0][1]) - len(block[0][1].lstrip())
    for idx, t in block:
        depth = len(t) - len(t.lstrip())
        if depth > base:
            last = next(reversed(nested), None)
            if last is None:
                raise fail(idx, f"unexpected indentation: {t.strip()!r}")
            prev = nested[last]
            km = _KEY.match(t.strip())
            if km and (prev == "" or isinstance(prev, dict)):
                sub = prev if isinstance(prev, dict) else {}
                sub[km.group(1).strip()] = _scalar((km.group(2) or "").strip(), lambda p, idx=idx: fail(idx, p))
                nested[last] = sub
            elif isinstance(prev, dict) and prev:
                k = next(reversed(prev))
                prev[k] = f"{prev[k]} {t.strip()}".strip()
            else:
                nested[last] = (f"{prev} " if prev else "") + t.strip()
            continue
        nm = _KEY.match(t.strip())
        if not nm:
            raise fail(idx, f"expected 'key: value' under {key!r}, got {t.strip()!r}")
        nested[nm.group(1).strip()] = _scalar((nm.group(2) or "").strip(), lambda p, idx=idx: fail(idx, p))
    return nested


def _indented(lines: list[str], i: int, *, dash: bool = False) -> tuple[list[tuple[int, str]], int]:
    """The lines from `i` that are indented (or blank), with their indexes; with `dash`, lines
    starting with `-` too (a list written at its key's own indentation)."""
    block = []
    while i < len(lines) and (not lines[i].strip() or lines[i][0] in " \t" or (dash and lines[i][0] == "-")):
        block.append((i, lines[i]))
        i += 1
    while block and not block[-1][1].strip():
        block.pop()
    return block, i


def _scalar(value: str, fail: Any) -> Any:
    if not value:
        return ""
    if value[0] in "\"'":
        q = value[0]
        end = _closing_quote(value, q)
        if end < 0:
            raise fail(f"unterminated {q}quoted{q} value: {value}")
        rest = value[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise fail(f"text after the closing quote: {value}")
        inner = value[1:end]
        if q == '"':
            try:
                return json.loads(value[: end + 1])
            except ValueError:
                return inner
        return inner.replace("''", "'")
    if value.startswith("["):
        if not value.rstrip().endswith("]"):
            raise fail(f"unterminated inline list (no closing ']'): {value}")
        return [_scalar(p, fail) for p in split_top_level(value.rstrip()[1:-1], ",") if p.strip()]
    if value.startswith("{"):
        if not value.rstrip().endswith("}"):
            raise fail(f"unterminated inline mapping (no closing '}}'): {value}")
        out = {}
        for part in split_top_level(value.rstrip()[1:-1], ","):
            k, sep, v = part.partition(":")
            if not sep:
                raise fail(f"expected 'key: value' inside {{...}}: {part.strip()!r}")
            out[k.strip().strip("\"'")] = _scalar(v.strip(), fail)
        return out
    value = re.sub(r"\s+#.*$", "", value)  # a trailing comment
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("null", "~"):
        return None
    return value


def _closing_quote(text: str, q: str) -> int:
    i = 1
    while i < len(text):
        c = text[i]
        if q == '"' and c == "\\":
            i += 2
            continue
        if c == q:
            if q == "'" and i + 1 < len(text) and text[i + 1] == "'":
                i += 2
                continue
            return i
        i += 1
    return -1


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes and brackets."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    parts.append(text[start:].strip())
    return parts


# ---------------------------------------------------------------------------- definitions

_COMPONENT = re.compile(r"^#\s*Component:\s*(.+?)\s*$", re.MULTILINE)
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
# A bold-key header line, as a bullet or not: `- **Name**: X`, `**Agent Name**: X`, `**Name:** X`.
_BULLET = re.compile(r"^\s*(?:[-*+]\s+)?\*\*([^*]+?)\*\*\s*:?\s*(?:\*\*)?\s*(.*?)\s*$")
_INPUT = re.compile(r"^\s*[-*]\s+`([A-Za-z_][\w\-]*)`\s*(?:\(([^)]*)\))?\s*:?\s*(.*)$")
_SHELL = re.compile(r"^```(?:bash|sh|shell|zsh)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)

BULLET_NAME_KEYS = ("name", "agent name", "tool name", "agent id", "component name")
BULLET_TYPE_KEYS = ("type", "component type", "agent type", "tool type")
BULLET_TOOLS_KEYS = ("claude tools", "tools", "claude tool mapping", "allowed tools", "tools used")
# The bold keys that make a file without frontmatter a definition (others, such as **Purpose**,
# appear in any markdown).
DEFINING_KEYS = (*BULLET_NAME_KEYS, *BULLET_TYPE_KEYS, *BULLET_TOOLS_KEYS)

JSON_TYPES = {"string": "string", "str": "string", "text": "string", "integer": "integer", "int": "integer",
              "number": "number", "float": "number", "boolean": "boolean", "bool": "boolean", "array": "array",
              "list": "array", "object": "object", "dict": "object", "mapping": "object"}
# Tools a prose agent's text may name (in backticks, or as "the X tool"); the warning lists them.
_PROSE_TOOLS = re.compile(r"`(Read|Write|Edit|MultiEdit|Bash|Grep|Glob|LS|WebFetch|WebSearch|Task|TodoWrite)`"
                          r"|\b(Read|Write|Edit|MultiEdit|Bash|Grep|Glob|WebFetch|WebSearch|Task)\s+tool\b"
                          r"|\b(WebFetch|WebSearch|MultiEdit|TodoWrite)\b")


def parse_definition(path: Path, *, default_kind: str | None = None, text: str | None = None,
                     allow_prose: bool | None = None) -> MarkdownDefinition:
    """Read one LLMunix markdown file. `default_kind` (AGENT or TOOL) decides when the file does
    not say (by a `type`, a name key or its name); a file with no header at all is a prose agent
    when it may be one (`allow_prose`; by default: read as an agent, or in an `agents` folder).
    Raises DefinitionError, one line saying why, for a file that is not a definition."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DefinitionError(path, None, f"not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise DefinitionError(path, None, exc.strerror or str(exc)) from None
    front, body, _body_line = split_frontmatter(text, path)
    bullets = _component_bullets(body)
    component = _COMPONENT.search(body)
    headed = any(k in bullets for k in DEFINING_KEYS)
    title = _title(body)
    warnings: list[str] = []
    prose = front is None and component is None and not headed
    if prose:
        if not (allow_prose if allow_prose is not None else _reads_as_agent(path, default_kind)):
            raise DefinitionError(path, 1, "not an LLMunix definition: no '---' frontmatter, no '# Component: NAME' "
                                           "heading and no '**Name**:' header line (a prose agent loads only from an "
                                           "agents folder)")
        if title is None:
            raise DefinitionError(path, 1, "not an LLMunix definition: no '---' frontmatter, no '**Name**:' header "
                                           "line and no '# Title' heading to name a prose agent by")
    fm = dict(front or {})
    fmt = "prose" if prose else "frontmatter+component" if front is not None and (component or headed) else (
        "frontmatter" if front is not None else "component")

    name = next((str(fm[k]) for k in NAME_KEYS if fm.get(k)), None)
    if name is None:
        name = next((bullets[k] for k in BULLET_NAME_KEYS if bullets.get(k)), None)
    if name is None and component is not None:
        name = component.group(1)
    if name is None and title is not None and front is None:
        name = _title_name(title)  # `# RealSummarizationAgent` over `**Component Type**: Agent`
    if not name or not _plain(name):
        raise DefinitionError(path, 2 if front is not None else 1,
                              "no name: add 'name: ...' to the frontmatter (or a '**Name**:' header line)")
    name = _plain(name)
    description = str(fm.get("description") or bullets.get("description") or "").strip()
    if not description:
        description = _first_paragraph(body)

    tools: list[str] = []
    for key in TOOLS_KEYS:
        tools.extend(_as_names(fm.get(key)))
    if not tools:
        tools.extend(_as_names(next((bullets[k] for k in BULLET_TOOLS_KEYS if bullets.get(k)), None)))
    seen: set[str] = set()
    unique = []
    for t in tools:
        if tool_key(t) and tool_key(t) not in seen:
            seen.add(tool_key(t))
            unique.append(t)

    kind = AGENT if prose else _kind(fm, bullets, path, name, default_kind)
    if prose:
        named = sorted({next(g for g in m.groups() if g) for m in _PROSE_TOOLS.finditer(body)})
        hint = f"; its text names {', '.join(named)}: grant them with a 'tools: ...' line" if named else ""
        warnings.append(f"no LLMunix header: read as a prose agent named {name!r} from its title; "
                        f"it is granted no tools{hint}")
    inputs = _inputs(fm.get("parameters") or fm.get("inputs"), body, path, warnings)
    shell = None
    if kind == TOOL:
        m = _SHELL.search(body)
        shell = m.group(1).strip() if m else None
    max_iter = fm.get("max_iterations")
    try:
        max_iterations = int(max_iter) if max_iter not in (None, "") else None
    except (TypeError, ValueError):
        raise DefinitionError(path, None, f"max_iterations must be a whole number, not {max_iter!r}") from None
    known = {*NAME_KEYS, *TOOLS_KEYS, "description", "model", "version", "capabilities", "parameters",
             "inputs", "max_iterations", "type", "kind"}
    return MarkdownDefinition(
        kind=kind,
        name=name,
        description=description,
        tools=tuple(unique),
        path=path,
        format=fmt,
        body=(text if prose else body).strip(),
        model=str(fm["model"]) if fm.get("model") else None,
        version=str(fm.get("version") or bullets.get("version") or "") or None,
        capabilities=tuple(_as_list(fm.get("capabilities") or bullets.get("capabilities"))),
        inputs=inputs,
        shell=shell,
        max_iterations=max_iterations,
        extra={k: v for k, v in fm.items() if k not in known},
        warnings=tuple(warnings),
    )


def _reads_as_agent(path: Path, default_kind: str | None) -> bool:
    if default_kind is not None:
        return default_kind == AGENT
    return path.parent.name.lower() == "agents"


def _component_bullets(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    fence = False
    for line in body.splitlines()[:40]:  # the header lines sit under the heading
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        m = None if fence else _BULLET.match(line)
        if m:
            key = " ".join(m.group(1).strip().rstrip(":").lower().split())
            if key not in out:
                out[key] = m.group(2).strip()
    return out


def _title(body: str) -> str | None:
    """The first `# Title` outside code blocks."""
    fence = False
    for line in body.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            m = _TITLE.match(line)
            if m:
                return m.group(1)
    return None


def _plain(text: str) -> str:
    """Markdown emphasis and code marks off a name: `**X**`, `` `x` ``."""
    return str(text).strip().strip("`*_ ").strip()


def _title_name(title: str) -> str:
    """A name from a heading: kept as it is when it is one word (`RealSummarizationAgent`),
    else lower-case words joined by hyphens (`CEO Agent` -> `ceo-agent`), which is how
    LLMunix names agents and how they are typed at the prompt."""
    text = _plain(re.sub(r"^(agent|tool|component)\s*(specification)?\s*:\s*", "", _plain(title), flags=re.I))
    words = re.findall(r"[A-Za-z0-9]+", text)
    if len(words) == 1:
        return words[0]
    return "-".join(w.lower() for w in words)


def _as_list(value: Any) -> list[str]:
    """A list as text items: a YAML list, or a comma-separated string (`[a, b]` too)."""
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list | tuple):
        return [_item_text(v) for v in value if _item_text(v)]
    return [p.strip().strip("\"'`") for p in split_top_level(str(value).strip().strip("[]"), ",") if p.strip()]


def _item_text(item: Any) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{k}: {v}" for k, v in item.items())
    return str(item).strip()


def _as_names(value: Any) -> list[str]:
    """Tool names out of a tools list. Notes written beside a name are dropped: `Bash (for
    testing code)`, `Read - the notes`, `Read: the notes`, `` `Read` ``; a mapping item gives its
    `name` (or its only key)."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list | tuple) else [value] if isinstance(value, dict) else _as_list(value)
    names = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("name") or (next(iter(item)) if len(item) == 1 else "")
        text = re.sub(r"\s*\(.*\)\s*$", "", str(item)).strip()  # a parenthetical note
        text = re.split(r"\s+[-–—]\s+|:\s", text)[0]  # a note after a dash or a colon
        text = _plain(text.strip("\"'"))
        if text:
            names.append(text)
    return names


def _kind(fm: dict[str, Any], bullets: dict[str, str], path: Path, name: str, default: str | None) -> str:
    declared = str(fm.get("type") or fm.get("kind") or next((bullets[k] for k in BULLET_TYPE_KEYS if bullets.get(k)),
                                                            "")).lower()
    if "agent" in declared:
        return AGENT
    if "tool" in declared:
        return TOOL
    if fm.get("agent_name") or fm.get("agent_id") or bullets.get("agent name"):
        return AGENT
    if fm.get("tool_name") or bullets.get("tool name"):
        return TOOL
    key = tool_key(name)
    if key.endswith("agent"):
        return AGENT
    if key.endswith("tool"):
        return TOOL
    if default is not None:
        return default
    parts = {p.lower() for p in path.parts[:-1]}
    return TOOL if "tools" in parts else AGENT


def _inputs(declared: Any, body: str, path: Path, warnings: list[str]) -> tuple[InputSpec, ...]:
    """The parameters a definition declares: frontmatter `parameters` (or `inputs`) in any of
    its shapes, else an `### Inputs` list in the body."""
    specs: list[InputSpec] = []
    if isinstance(declared, dict):
        for k, v in declared.items():
            specs.append(_input(str(k), v, warnings) if isinstance(v, dict)
                         else InputSpec(str(k), description="" if v is None else str(v)))
    elif isinstance(declared, list):
        for n, v in enumerate(declared, 1):
            if isinstance(v, dict):
                if v.get("name"):
                    specs.append(_input(str(v["name"]), v, warnings))
                elif len(v) == 1 and next(iter(v)) not in _SPEC_FIELDS:  # `- text: what it is`
                    k, d = next(iter(v.items()))
                    specs.append(_input(str(k), d, warnings) if isinstance(d, dict)
                                 else InputSpec(str(k), description="" if d is None else str(d)))
                else:
                    warnings.append(f"parameter {n} has no name; it is left out")
            else:
                pname, _sep, desc = str(v).partition(":")
                if pname.strip():
                    specs.append(InputSpec(pname.strip(), description=desc.strip()))
    elif declared:
        raise DefinitionError(path, None, "parameters must be a list or a mapping of name: description")
    for spec in specs:
        if not re.fullmatch(r"[A-Za-z][\w\-]*", spec.name):
            raise DefinitionError(path, None, f"parameter {spec.name!r}: a parameter name is letters, digits, "
                                              "'_' and '-', starting with a letter")
    if specs:
        names = [s.name for s in specs]
        twice = sorted({x for x in names if names.count(x) > 1})
        if twice:
            raise DefinitionError(path, None, f"parameter {twice[0]!r} is declared twice")
        return tuple(specs)
    section = re.search(r"^#{2,4}\s*Inputs?\b.*?$(.*?)(?=^#{1,4}\s|\Z)", body, re.MULTILINE | re.DOTALL | re.IGNORECASE)
    if section:
        for line in section.group(1).splitlines():
            m = _INPUT.match(line)
            if m:
                typ = (m.group(2) or "string").strip()
                optional = "optional" in typ.lower()
                typ = typ.split(",")[0].strip() or "string"
                specs.append(InputSpec(m.group(1), typ, m.group(3).strip(), required=not optional))
    return tuple(specs)


_SPEC_FIELDS = ("name", "type", "description", "required", "default")


def _input(name: str, spec: Mapping[str, Any], warnings: list[str]) -> InputSpec:
    """One parameter from its mapping: type, description, required, default."""
    written = str(spec.get("type") or "string").strip()
    typ = JSON_TYPES.get(written.lower())
    if typ is None:
        warnings.append(f"parameter {name!r} has type {written!r}, read as string")
        typ = "string"
    has_default = "default" in spec and spec.get("default") is not None
    required = spec.get("required")
    if isinstance(required, str):
        required = required.strip().lower() in ("true", "yes", "1")
    default = spec.get("default") if has_default else None
    if default is not None:
        default = _typed(default, typ, name, warnings)
    return InputSpec(name, typ, str(spec.get("description") or "").strip(),
                     bool(required) if required is not None else not has_default, default)


def _typed(value: Any, typ: str, name: str, warnings: list[str]) -> Any:
    """A default written in the frontmatter (text) as the parameter's type: `default: 1` of an
    integer is 1."""
    if not isinstance(value, str) or typ == "string":
        return value
    try:
        if typ == "integer":
            return int(value)
        if typ == "number":
            return float(value)
        if typ == "boolean" and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        if typ in ("array", "object"):
            return json.loads(value)
    except ValueError:
        pass
    warnings.append(f"the default {value!r} of parameter {name!r} is not {typ}; kept as text")
    return value


def _first_paragraph(body: str) -> str:
    for block in re.split(r"\n\s*\n", body):
        text = " ".join(line.strip() for line in block.splitlines() if not line.strip().startswith("#"))
        if text.strip() and not text.strip().startswith(("-", "*", "```", "|", ">")):
            return text.strip()[:200]
    return ""


# ---------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Discovery:
    definitions: tuple[MarkdownDefinition, ...]
    errors: tuple[DefinitionError, ...]

    def of_kind(self, kind: str) -> list[MarkdownDefinition]:
        return [d for d in self.definitions if d.kind == kind]


def skipped(path: Path) -> str | None:
    """Why discovery passes over a markdown file (READMEs, `_drafts.md`, `.hidden.md`), or None."""
    if path.name.lower() in ("readme.md", "index.md"):
        return "a README or index is documentation, never a definition"
    if path.name.startswith(("_", ".")):
        return "names starting with '_' or '.' are passed over"
    return None


def discover(directories: Iterable[tuple[Path, str | None]]) -> Discovery:
    """Read every `*.md` file in each (directory, default kind), in order; a later definition of
    the same name (spelling-free) replaces an earlier one, so a user's `./agents/x.md` overrides a
    built-in. Unreadable files are reported in `errors`; the rest still load. README files skip."""
    found: dict[tuple[str, str], MarkdownDefinition] = {}
    errors: list[DefinitionError] = []
    seen: set[Path] = set()
    for directory, default_kind in directories:
        directory = Path(directory).expanduser()
        try:
            resolved = directory.resolve()
        except OSError:
            continue
        if resolved in seen or not directory.is_dir():
            continue
        seen.add(resolved)
        for path in sorted(directory.glob("*.md")):
            if skipped(path):
                continue
            try:
                d = parse_definition(path, default_kind=default_kind)
            except DefinitionError as exc:
                errors.append(exc)
                continue
            found[(d.kind, d.key)] = d
    return Discovery(tuple(found.values()), tuple(errors))


# ---------------------------------------------------------------------------- checking a folder

LOADED, WARNINGS, REFUSED, SKIPPED = "loaded", "warnings", "refused", "skipped"
_NOT_SEARCHED = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", "site-packages"}


@dataclass(frozen=True)
class FileCheck:
    """What `agents --check`, `tools --check` and `workflow check` say of one file: loaded,
    loaded with warnings (what), refused (why, one line) or skipped (why)."""

    path: str
    status: str  # LOADED, WARNINGS, REFUSED or SKIPPED
    kind: str | None = None  # agent, tool, workflow
    name: str | None = None
    format: str | None = None
    warnings: tuple[str, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "kind": self.kind, "name": self.name,
                "format": self.format, "warnings": list(self.warnings), "reason": self.reason}


def markdown_files(root: Path) -> list[Path]:
    """Every markdown file under `root` (or `root` itself), sorted; version-control and
    virtual-environment folders are not searched."""
    root = Path(root).expanduser()
    if root.is_file():
        return [root]
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).parts
        if any(part in _NOT_SEARCHED for part in rel[:-1]):
            continue
        if path.suffix.lower() in (".md", ".markdown") and path.is_file():
            out.append(path)
    return sorted(out)


def folder_kind(path: Path, root: Path) -> str | None:
    """AGENT or TOOL when the file sits in an `agents` or `tools` folder (the nearest one, under
    `root` or `root` itself), else None."""
    root = Path(root)
    base = root if root.is_dir() else root.parent
    try:
        rel = path.parent.relative_to(base).parts
    except ValueError:
        rel = ()
    for part in reversed((base.name, *rel)):
        if part.lower() == "agents":
            return AGENT
        if part.lower() == "tools":
            return TOOL
    return None


def check_directory(root: Path, kind: str | None = None, *,
                    more_warnings: Any = None) -> list[FileCheck]:
    """Read every markdown file under `root` as a definition. `kind` (AGENT or TOOL) is what a
    file is when neither it nor its folder says; a prose file loads only from an `agents`
    folder. `more_warnings(definition)` may add warnings (tools that are not available). A name
    defined by two files is a warning on the second."""
    out: list[FileCheck] = []
    first_by_name: dict[tuple[str, str], str] = {}
    for path in markdown_files(root):
        why = skipped(path)
        if why:
            out.append(FileCheck(str(path), SKIPPED, reason=why))
            continue
        folder = folder_kind(path, root)
        try:
            d = parse_definition(path, default_kind=folder or kind, allow_prose=folder == AGENT)
        except DefinitionError as exc:
            out.append(FileCheck(str(path), REFUSED, reason=_refusal(exc)))
            continue
        warnings = list(d.warnings)
        if more_warnings is not None:
            warnings += more_warnings(d)
        earlier = first_by_name.setdefault((d.kind, d.key), str(path))
        if earlier != str(path):
            warnings.append(f"{d.kind} {d.name!r} is also defined by {earlier}; the one found later wins")
        out.append(FileCheck(str(path), WARNINGS if warnings else LOADED, d.kind, d.name, d.format, tuple(warnings)))
    return out


def _refusal(exc: DefinitionError) -> str:
    where = f"line {exc.line}: " if exc.line else ""
    return f"{where}{exc.problem}"


# ---------------------------------------------------------------------------- markdown tools


def markdown_tool(d: MarkdownDefinition, *, allow_shell: Any) -> Any:
    """A runnable Tool for a tool definition. `allow_shell()` is asked at run time (the setting
    can change after loading). A shell block runs in its own process group with each parameter
    in the environment (upper-cased name); without a shell block the tool is a prompt for an LLM
    and runs through the agents' backend (see docs/agents.md)."""
    import pydantic

    from llmunix.tools.registry import ParamSpec, Tool

    def default(i: InputSpec) -> Any:
        return None if i.required else i.default if i.default is not None else ""

    params = tuple(ParamSpec(i.name, _PY_TYPES.get(i.type, str).__name__, i.required, default(i), i.description)
                   for i in d.inputs)
    # Defaults are not validated: an optional parameter left out is "" (its environment variable
    # empty) whatever its type.
    fields: dict[str, Any] = {i.name: (_PY_TYPES.get(i.type, str), ... if i.required else default(i))
                              for i in d.inputs}
    try:
        model = pydantic.create_model(f"md_{tool_key(d.name)}_params",
                                      __config__=pydantic.ConfigDict(extra="forbid" if d.inputs else "allow"),
                                      **fields)
    except (TypeError, ValueError, NameError, pydantic.PydanticUserError) as exc:
        raise DefinitionError(d.path, None, f"its parameters cannot be used: {exc}") from None
    name = d.name

    if d.shell is not None:
        script = d.shell

        def run_script(ctx: Any, **params: Any) -> str:
            if not allow_shell():
                raise ToolError(f"{name} is a shell tool ({d.path}) and shell tools are not allowed; set "
                                "allow_shell_tools = true in config.toml to run it")
            return _run_script(ctx, script, params)

        func = run_script
        subprocess_tool = True
    else:
        def run_prompt(ctx: Any, **params: Any) -> str:
            # A prompt for a language model: the agents component runs it (tools/ knows no agents).
            return ctx.service("agents").run_prompt(ctx, d, params)

        func = run_prompt
        subprocess_tool = False
    # What it touches, for confinement under an agent: a script anything, a prompt nothing.
    return Tool(name=name, func=func, description=d.description, subprocess=subprocess_tool,
                source=str(d.path), params=params, _model=model, _open=not d.inputs,
                touches=("anything",) if subprocess_tool else ())


_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list,
                              "object": dict}


def _run_script(ctx: Any, script: str, params: Mapping[str, Any]) -> str:
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict) else str(v)

    env = {**os.environ, **{re.sub(r"\W", "_", k).upper(): text(v) for k, v in params.items()}}
    child = ctx.popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    from llmunix.tools.builtin import collect_output

    return collect_output(ctx, child)
