"""LLMunix markdown definitions of agents and tools, from every era of the format.

LLMunix described its components in markdown, and the header changed with each runtime:

* **component** files (the first era): no frontmatter; a `# Component: X` heading and bullets
  `- **Name**: X`, `- **Type**: AGENT|TOOL`, `- **Description**: ...`, sometimes
  `- **Claude Tools**: Read, Write`, and an `### Inputs` list of `` `name` (type): what``.
* **frontmatter** files (Claude Code sub-agents and later): a `---` header with `name` (or
  `agent_name`, `agent_id`, `tool_name`), `description`, `tools` as a comma string or a list,
  `claude_tools`, `model`, `version`, `capabilities`, and whatever else the author added.
  Many files carry both: a frontmatter header over a component body.

`parse_definition` reads one file into a `MarkdownDefinition` whatever its era; the frontmatter
parser reads the YAML subset these files use (scalars, quoted strings, inline `[a, b]` lists,
`- item` lists, one level of nested mapping, `|` / `>` blocks) and names the file and line of
anything else. Tool names are compared by `tool_key` so that `Read`, `read_file` and
`read-file` are one tool (`canonical_tool_name` maps Claude Code's tool names to llmunix's
built-ins). `discover` walks directories; `markdown_tool` turns a tool definition into a
runnable `Tool` (a shell block runs as a subprocess tool, only when `allow_shell_tools` is set).
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
    """A parameter a markdown tool or agent declares (from an `Inputs` list or `parameters`)."""

    name: str
    type: str = "string"
    description: str = ""
    required: bool = True


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

    @property
    def key(self) -> str:
        return tool_key(self.name)


# ---------------------------------------------------------------------------- tool names

# Claude Code's tool names (and other spellings LLMunix files use) for llmunix's built-ins.
_ALIASES = {
    "read": "read_file", "readfile": "read_file", "fileread": "read_file", "cat": "read_file",
    "write": "write_file", "writefile": "write_file", "filewrite": "write_file",
    "ls": "list_files", "list": "list_files", "listfiles": "list_files", "listdir": "list_files",
    "glob": "list_files", "filesearch": "list_files",
    "grep": "grep", "search": "grep", "grepfiles": "grep", "searchfiles": "grep",
    "bash": "shell", "sh": "shell", "shell": "shell", "executebash": "shell",
}


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
        block = [(idx, t) for idx, t in block if t.strip() and not t.strip().startswith("#")]
        if not block:
            data[key] = None
            continue
        if _LIST_ITEM.match(block[0][1].strip()):
            items = []
            for idx, t in block:
                item = _LIST_ITEM.match(t.strip())
                if not item:
                    # A continuation line of the previous item (a long string wrapped).
                    if items and isinstance(items[-1], str) and t.startswith("  "):
                        items[-1] = f"{items[-1]} {t.strip()}"
                        continue
                    raise fail(idx, f"expected a '- item' line in the list {key!r}, got {t.strip()!r}")
                items.append(_scalar((item.group(1) or "").strip(), lambda p, idx=idx: fail(idx, p)))
            data[key] = items
        else:
            nested: dict[str, Any] = {}
            base = len(block[0][1]) - len(block[0][1].lstrip())
            for idx, t in block:
                depth = len(t) - len(t.lstrip())
                if depth > base:  # deeper levels are kept as text on the last key
                    last = next(reversed(nested), None)
                    if last is None:
                        raise fail(idx, f"unexpected indentation: {t.strip()!r}")
                    prev = nested[last]
                    nested[last] = (f"{prev} " if prev else "") + t.strip()
                    continue
                nm = _KEY.match(t.strip())
                if not nm:
                    raise fail(idx, f"expected 'key: value' under {key!r}, got {t.strip()!r}")
                nested[nm.group(1).strip()] = _scalar((nm.group(2) or "").strip(), lambda p, idx=idx: fail(idx, p))
            data[key] = nested
    return data


def _indented(lines: list[str], i: int) -> tuple[list[tuple[int, str]], int]:
    """The lines from `i` that are indented (or blank), with their indexes."""
    block = []
    while i < len(lines) and (not lines[i].strip() or lines[i][0] in " \t"):
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
_BULLET = re.compile(r"^\s*[-*]\s+\*\*([^*]+?)\*\*\s*:?\s*(?:\*\*)?\s*(.*?)\s*$")
_INPUT = re.compile(r"^\s*[-*]\s+`([A-Za-z_][\w\-]*)`\s*(?:\(([^)]*)\))?\s*:?\s*(.*)$")
_SHELL = re.compile(r"^```(?:bash|sh|shell|zsh)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def parse_definition(path: Path, *, default_kind: str | None = None, text: str | None = None) -> MarkdownDefinition:
    """Read one LLMunix markdown file. `default_kind` (AGENT or TOOL) decides when the file does
    not say (by a `type`, a name key or its name); raises DefinitionError for a malformed file."""
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
    if front is None and component is None and not bullets:
        raise DefinitionError(path, 1, "not an LLMunix definition: no '---' frontmatter and no "
                                       "'# Component: NAME' heading")
    fm = dict(front or {})
    fmt = "frontmatter+component" if front is not None and (component or bullets) else (
        "frontmatter" if front is not None else "component")

    name = next((str(fm[k]) for k in NAME_KEYS if fm.get(k)), None)
    if name is None:
        name = bullets.get("name") or (component.group(1) if component else None)
    if not name:
        raise DefinitionError(path, 2 if front is not None else 1,
                              "no name: add 'name: ...' to the frontmatter (or a '- **Name**:' bullet)")
    description = str(fm.get("description") or bullets.get("description") or "").strip()
    if not description:
        description = _first_paragraph(body)

    tools: list[str] = []
    for key in TOOLS_KEYS:
        tools.extend(_as_list(fm.get(key)))
    if not tools:
        tools.extend(_as_list(bullets.get("claude tools") or bullets.get("tools")))
    seen: set[str] = set()
    unique = []
    for t in tools:
        if tool_key(t) and tool_key(t) not in seen:
            seen.add(tool_key(t))
            unique.append(t)

    kind = _kind(fm, bullets, path, name, default_kind)
    inputs = _inputs(fm.get("parameters") or fm.get("inputs"), body, path)
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
        name=name.strip(),
        description=description,
        tools=tuple(unique),
        path=path,
        format=fmt,
        body=body.strip(),
        model=str(fm["model"]) if fm.get("model") else None,
        version=str(fm.get("version") or bullets.get("version") or "") or None,
        capabilities=tuple(_as_list(fm.get("capabilities"))),
        inputs=inputs,
        shell=shell,
        max_iterations=max_iterations,
        extra={k: v for k, v in fm.items() if k not in known},
    )


def _component_bullets(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.splitlines()[:40]:  # the bullets sit under the heading
        m = _BULLET.match(line)
        if m:
            key = m.group(1).strip().rstrip(":").lower()
            if key not in out:
                out[key] = m.group(2).strip()
    return out


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip().strip("\"'") for p in split_top_level(str(value).strip("[]"), ",") if p.strip()]


def _kind(fm: dict[str, Any], bullets: dict[str, str], path: Path, name: str, default: str | None) -> str:
    declared = str(fm.get("type") or fm.get("kind") or bullets.get("type") or "").lower()
    if "agent" in declared:
        return AGENT
    if "tool" in declared:
        return TOOL
    if fm.get("agent_name") or fm.get("agent_id"):
        return AGENT
    if fm.get("tool_name"):
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


def _inputs(declared: Any, body: str, path: Path) -> tuple[InputSpec, ...]:
    specs: list[InputSpec] = []
    if isinstance(declared, dict):
        for k, v in declared.items():
            specs.append(InputSpec(str(k), description="" if v is None else str(v)))
    elif isinstance(declared, list):
        for v in declared:
            name, _sep, desc = str(v).partition(":")
            specs.append(InputSpec(name.strip(), description=desc.strip()))
    elif declared:
        raise DefinitionError(path, None, "parameters must be a list or a mapping of name: description")
    if specs:
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


def _first_paragraph(body: str) -> str:
    for block in re.split(r"\n\s*\n", body):
        text = " ".join(line.strip() for line in block.splitlines() if not line.strip().startswith("#"))
        if text.strip() and not text.strip().startswith(("-", "*", "```", "|")):
            return text.strip()[:200]
    return ""


# ---------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Discovery:
    definitions: tuple[MarkdownDefinition, ...]
    errors: tuple[DefinitionError, ...]

    def of_kind(self, kind: str) -> list[MarkdownDefinition]:
        return [d for d in self.definitions if d.kind == kind]


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
            if path.name.lower() in ("readme.md", "index.md") or path.name.startswith(("_", ".")):
                continue
            try:
                d = parse_definition(path, default_kind=default_kind)
            except DefinitionError as exc:
                errors.append(exc)
                continue
            found[(d.kind, d.key)] = d
    return Discovery(tuple(found.values()), tuple(errors))


# ---------------------------------------------------------------------------- markdown tools


def markdown_tool(d: MarkdownDefinition, *, allow_shell: Any) -> Any:
    """A runnable Tool for a tool definition. `allow_shell()` is asked at run time (the setting
    can change after loading). A shell block runs in its own process group with each parameter
    in the environment (upper-cased name); without a shell block the tool is a prompt for an LLM
    and runs through the agents' backend (see docs/agents.md)."""
    import pydantic

    from llmunix.tools.registry import ParamSpec, Tool

    params = tuple(ParamSpec(i.name, "str", i.required, None if i.required else "", i.description) for i in d.inputs)
    fields: dict[str, Any] = {i.name: (str, ... if i.required else "") for i in d.inputs}
    model = pydantic.create_model(f"md_{tool_key(d.name)}_params",
                                  __config__=pydantic.ConfigDict(extra="forbid" if d.inputs else "allow"),
                                  **fields)
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
            from llmunix.agents.prompt_tool import run_prompt_tool

            return run_prompt_tool(ctx, d, params)

        func = run_prompt
        subprocess_tool = False
    return Tool(name=name, func=func, description=d.description, subprocess=subprocess_tool,
                source=str(d.path), params=params, _model=model)


def _run_script(ctx: Any, script: str, params: Mapping[str, Any]) -> str:
    env = {**os.environ, **{re.sub(r"\W", "_", k).upper(): str(v) for k, v in params.items()}}
    child = ctx.popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    from llmunix.tools.builtin import collect_output

    return collect_output(ctx, child)
