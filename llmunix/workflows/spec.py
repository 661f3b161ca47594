"""Workflow specs: the pydantic models and the three file formats that produce them.

A spec is YAML or TOML::

    name: research-pipeline
    inputs:
      urls: {type: list, default: [...]}
    steps:
      - id: fetch
        tool: web_fetch
        with: {urls: "{{ inputs.urls }}"}
        retry: {max_attempts: 3, initial: 1s, factor: 2, max: 30s, retry_on: ["HTTP 5*"]}
        timeout: 2m
        cache: true               # reuse a stored result of the same tool, version, parameters, inputs
        cache_ttl: 1d             # ... at most a day old (default: any age)
      - id: summarize
        tool: summarize
        needs: [fetch]
        with: {documents: "{{ steps.fetch.output }}"}
        on_error: skip            # fail (default) | skip | retry | {fallback: STEP}
        max_tokens: 20000         # this step's LLM budget (max_cost: USD); the spec may have one too

or an LLMunix execution-trace markdown file (frontmatter, then `### Step N: Title` sections each
with a YAML tool-call block, or the "pure markdown" era's `**Tool**:` line and `**Parameters**:`
table; dependencies written as "Step 1", "None (first step)" or a list). Every error names the
file, the step and the field. Steps written for Claude Code's tools (`Write` with `file_path`,
`WebFetch` with `url`, `Bash` with `command`, `Task` with `subagent_type`) are read in
llmunix's terms (`write_file` with `path`, ..., an agent step), in every format, by the same
mapping agents use (`claude_call` in tools/markdown.py); `read_spec` also returns warnings for
what was left out or read with a guess.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmunix.models import LlmunixError, Priority, parse_duration
from llmunix.retry import RetryPolicy
from llmunix.tools.markdown import LOADED, REFUSED, SKIPPED, WARNINGS, FileCheck, claude_call, markdown_files, tool_key

STEP_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
INPUT_TYPES = {"str": str, "string": str, "int": int, "integer": int, "float": float, "number": float,
               "bool": bool, "boolean": bool, "list": list, "array": list, "dict": dict, "object": dict,
               "any": object}


class SpecError(LlmunixError):
    """A workflow spec that cannot run: the message names the file, the step and the field."""


def _duration(value: Any) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except LlmunixError as exc:  # pydantic reports ValueErrors with their field
        raise ValueError(str(exc)) from None


class RetrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1)
    initial: float = 1.0
    factor: float = Field(2.0, ge=1)
    max: float = 60.0
    jitter: Literal["full", "none"] | float = "full"
    # error patterns (glob or substring) worth another attempt; empty: any error. (Not `on`: YAML reads
    # that key as the boolean true.)
    retry_on: list[str] = Field(default_factory=list)

    _durations = field_validator("initial", "max", mode="before")(lambda v: _duration(v))

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.initial, self.factor, self.max, self.jitter, tuple(self.retry_on))


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = "any"
    default: Any = None
    required: bool | None = None  # default: required when there is no default
    description: str = ""

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in INPUT_TYPES:
            raise ValueError(f"unknown type {v!r}; use one of: {', '.join(sorted(INPUT_TYPES))}")
        return v

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else "default" not in self.model_fields_set

    def coerce(self, name: str, value: Any) -> Any:
        """A value given on the command line (text) or in an API call, as this input's type."""
        want = INPUT_TYPES[self.type]
        if want is object or isinstance(value, want) and not (want is int and isinstance(value, bool)):
            return value
        if isinstance(value, str):
            if want is str:
                return value
            if want is list:
                text = value.strip()
                if text.startswith("["):
                    return _parse_json(name, text, list)
                return [v.strip() for v in text.split(",") if v.strip()]
            if want is dict:
                return _parse_json(name, value, dict)
            if want is bool and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            try:
                return want(value)
            except ValueError:
                pass
        elif want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        elif want is list and isinstance(value, tuple):
            return list(value)
        raise LlmunixError(f"input {name!r} must be {self.type}, not {value!r}")


class Fallback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fallback: str


OnError = Literal["fail", "skip", "retry"] | Fallback


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    title: str = ""
    tool: str | None = None
    agent: str | None = None
    goal: str | None = None  # an agent step's goal (may use {{ }} references)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    needs: list[str] = Field(default_factory=list)
    retry: RetrySpec | None = None
    timeout: float | None = None
    on_error: OnError = "fail"
    priority: str | None = None
    resources: dict[str, Any] = Field(default_factory=dict)  # admission needs: memory_mb, cpu, gpu, ...
    cache: bool = False  # reuse a stored result (llmunix/cache.py); `workflow run --no-cache` refreshes
    cache_ttl: float | None = None  # seconds a stored result stays good (default: any age)
    # The step's LLM budget, its children's use included (agents/usage.py): past it, the step fails.
    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)

    _timeout = field_validator("timeout", "cache_ttl", mode="before")(lambda v: _duration(v))

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not STEP_ID.match(v):
            raise ValueError("a step id is letters, digits, '_' and '-', not starting with '-'")
        return v

    @field_validator("needs", mode="before")
    @classmethod
    def _needs(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: str | None) -> str | None:
        return None if v is None else Priority.parse(v).label

    @field_validator("on_error", mode="before")
    @classmethod
    def _on_error(cls, v: Any) -> Any:
        if isinstance(v, str) and v.startswith("fallback:"):
            return {"fallback": v.split(":", 1)[1].strip()}
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if (self.tool is None) == (self.agent is None):
            raise ValueError("a step names exactly one of 'tool' or 'agent'")
        if self.cache and self.agent is not None:
            raise ValueError("cache is for tool steps: an agent's run is not repeatable")
        if self.cache_ttl is not None and not self.cache:
            raise ValueError("cache_ttl needs cache: true")
        if self.cache_ttl is not None and self.cache_ttl <= 0:
            raise ValueError("cache_ttl must be more than 0")
        if self.on_error == "retry" and self.retry is None:
            self.retry = RetrySpec()
        return self

    @property
    def label(self) -> str:
        return self.title or self.id

    @property
    def runs(self) -> str:
        return f"agent {self.agent}" if self.agent else str(self.tool)

    @property
    def fallback(self) -> str | None:
        return self.on_error.fallback if isinstance(self.on_error, Fallback) else None


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    version: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    steps: list[StepSpec]
    priority: str | None = None
    # The whole run's LLM budget, every step's use included: past it, the workflow fails.
    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)
    source: str = ""  # the file it came from (set by the loader)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        # `urls: [a, b]` is shorthand for `urls: {default: [a, b]}`
        if isinstance(v, dict):
            return {k: s if isinstance(s, dict) and set(s) <= set(InputSpec.model_fields) else {"default": s}
                    for k, s in v.items()}
        return v

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, v: list[StepSpec]) -> list[StepSpec]:
        if not v:
            raise ValueError("a workflow needs at least one step")
        return v

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise LlmunixError(f"workflow {self.name!r} has no step {step_id!r} (its steps: {self.step_ids()})")

    def step_ids(self) -> str:
        return ", ".join(s.id for s in self.steps)

    def resolve_inputs(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, values coerced to their types; unknown or missing ones refused."""
        unknown = [k for k in given if k not in self.inputs]
        if unknown:
            names = ", ".join(self.inputs) or "none"
            raise LlmunixError(f"workflow {self.name!r} has no input {unknown[0]!r} (its inputs: {names})")
        out: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            if name in given:
                out[name] = spec.coerce(name, given[name])
            elif spec.is_required:
                raise LlmunixError(f"workflow {self.name!r} needs input {name!r} "
                                   f"(workflow run {self.name} --input {name}=...)")
            else:
                out[name] = spec.default
        return out


# ---------------------------------------------------------------------------------------- loading


def load_spec(path: str | Path) -> WorkflowSpec:
    """Read a spec from a .yaml/.yml, .toml or .md file. Raises SpecError naming what is wrong."""
    return read_spec(path)[0]


def read_spec(path: str | Path) -> tuple[WorkflowSpec, list[str]]:
    """`load_spec`, with the warnings: what the file says that llmunix leaves out or reads with
    a guess (a Claude parameter with no counterpart, validation checks, a human escalation)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise SpecError(f"{p}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                        "save the spec as UTF-8") from None
    warnings: list[str] = []
    suffix = p.suffix.lower()
    # The parsers recurse once per level of nesting: a spec nested thousands deep (never a real
    # one) would end in RecursionError, so it is refused with one line instead.
    try:
        if suffix in (".yaml", ".yml"):
            data = _yaml(p, text)
        elif suffix == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise SpecError(f"{p}: malformed TOML: {exc}") from None
        elif suffix in (".md", ".markdown"):
            data = markdown_to_data(p, text, warnings)
        else:
            raise SpecError(f"{p}: not a workflow spec (use .yaml, .yml, .toml or .md)")
        return spec_from_data(data, p, warnings), warnings
    except RecursionError:
        raise SpecError(f"{p}: nested too deeply to be a workflow spec") from None


def spec_from_data(data: Any, path: str | Path = "<spec>", warnings: list[str] | None = None) -> WorkflowSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a workflow spec is a mapping with 'name' and 'steps'")
    data = dict(data)
    data.setdefault("name", Path(str(path)).stem)
    data["source"] = str(path)
    if isinstance(data.get("steps"), list):
        data["steps"] = [claude_step(s, warnings) if isinstance(s, dict) else s for s in data["steps"]]
    try:
        spec = WorkflowSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SpecError(_explain(exc, data, path)) from None
    return spec


def claude_step(step: dict[str, Any], warnings: list[str] | None = None) -> dict[str, Any]:
    """A step written for a Claude Code tool, in llmunix's terms: `Write` {file_path} becomes
    `write_file` {path}, Bash's `timeout` (ms) the step's timeout, `Task` {subagent_type, prompt}
    an agent step. Parameters with no counterpart are left out, with a warning."""
    tool = step.get("tool")
    if not isinstance(tool, str):
        return step
    out = dict(step)
    key = "with" if "with" in out or "with_" not in out else "with_"
    args = out.get(key) or {}
    if not isinstance(args, dict):
        return step
    label = f"step {out.get('id', '?')!r} ({tool})"
    if tool_key(tool) in ("task", "tasktool", "agent"):
        agent = args.get("subagent_type") or args.get("agent")
        if agent and "agent" not in out:
            out.pop("tool")
            out.pop(key, None)
            out["agent"] = str(agent)
            out["goal"] = str(args.get("prompt") or args.get("goal") or args.get("description") or "")
            out.setdefault("title", str(args.get("description") or ""))
            rest = sorted(set(args) - {"subagent_type", "agent", "prompt", "goal", "description"})
            if rest and warnings is not None:
                warnings.append(f"{label}: {', '.join(rest)} left out (an agent step takes a goal)")
        return out
    mapped = claude_call(tool, args)
    out["tool"] = mapped.tool
    out[key] = mapped.arguments
    if mapped.timeout is not None:
        out.setdefault("timeout", mapped.timeout)
    if mapped.dropped and warnings is not None:
        names = ", ".join(repr(d) for d in mapped.dropped)
        warnings.append(f"{label}: {names} {'has' if len(mapped.dropped) == 1 else 'have'} no counterpart in "
                        f"{mapped.tool}; left out")
    return out


def _explain(exc: pydantic.ValidationError, data: dict[str, Any], path: str | Path) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = data.get("steps") or []
        sid = steps[loc[1]].get("id") if loc[1] < len(steps) and isinstance(steps[loc[1]], dict) else None
        where = f"step {sid!r}" if sid else f"step {loc[1] + 1}"
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "inputs":
        where = f"input {loc[1]!r}"
        loc = loc[2:]
    # pydantic names union members ("function-after[...]", "Fallback"); keep the user's field names
    fields = [str(x) for x in loc if not str(x).startswith(("function-", "literal[", "Fallback", "float",
                                                            "str", "int"))]
    field_name = ".".join(fields)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "extra_forbidden":
        msg = "is not a known field"
    elif err["type"].startswith("literal_error") and field_name.startswith("on_error"):
        msg = "must be fail, skip, retry or {fallback: STEP}"
    parts = [str(path)] + [p for p in (where, f"field {field_name!r}" if field_name else "") if p]
    return ": ".join(parts[:1] + [", ".join(parts[1:])] if len(parts) > 1 else parts) + f": {msg}"


def _yaml(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}:{where} malformed YAML: {problem}") from None


# LLMunix execution-trace markdown ---------------------------------------------------------------

_STEP_HEADING = re.compile(r"^#{2,4}\s*Step\s+(\d+)\s*[:.\-–—]?\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_FENCE_LINE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_BOLD_LINE = re.compile(r"^\s*(?:[-*+]\s+)?\*\*([^*]+?)\*\*\s*:?\s*(?:\*\*)?\s*(.*?)\s*$")
_STEP_NUMBERS = re.compile(r"\bsteps?[\s_-]*((?:\d+\s*(?:,|and|&)?\s*)+)", re.IGNORECASE)
_NONE = re.compile(r"^\s*(none|n/?a|-|—|nothing|no dependencies)\b", re.IGNORECASE)
_OLD_PLACEHOLDER = re.compile(r"(?<!\{)\{step_?(\d+)_output\}(?!\})")
_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_]\w*)\}(?!\})")
ON_ERROR_ACTIONS = ("fail", "skip", "retry")
TRACE_KEYS = ("tool", "parameters", "on_error", "depends_on", "timeout", "retry", "cache", "cache_ttl")


def markdown_to_data(path: Path, text: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """An LLMunix execution trace as spec data: frontmatter (name or trace_id, description or
    goal_signature, inputs...) or bold header lines (`**Trace ID**:`, `**Goal**:`), then
    `### Step N: Title` sections. A step is a YAML block `tool:` / `parameters:` (and optionally
    `on_error: {action: retry|skip|fail, retry_count: 3, fallback_step: 4}` and `depends_on:
    ["Step 1"]`), or `**Tool**: NAME` with a `**Parameters**:` table or list; its error handling
    may be its own block or bullets, its dependencies a `**Dependencies**:` line or list."""
    warnings = warnings if warnings is not None else []
    front: dict[str, Any] = {}
    body = text
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end == -1:
            raise SpecError(f"{path}: line 1: frontmatter starts with '---' but never ends")
        try:
            front = yaml.safe_load(text[3:end]) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}:" if mark is not None else ""  # the text starts on line 1's end
            raise SpecError(f"{path}:{line} malformed frontmatter: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(front, dict):
            raise SpecError(f"{path}: line 2: frontmatter must be key: value pairs")
        body = text[end + 4:]
    headings = [h for h in _STEP_HEADING.finditer(body) if not _in_fence(body, h.start())]
    if not headings:
        raise SpecError(f"{path}: no '### Step N: Title' sections found")
    steps = []
    unchecked: list[str] = []
    for i, h in enumerate(headings):
        number, title = h.group(1), h.group(2)
        section = body[h.end(): headings[i + 1].start() if i + 1 < len(headings) else len(body)]
        line = text.count("\n", 0, text.find(h.group(0))) + 1
        here = f"line {line}: Step {number}"  # warnings are reported per file already
        where = f"{path}: {here}"
        call, error_block, validates = _step_blocks(section, where)
        if call is None:
            call = _markdown_call(section)
            if call is None:
                raise SpecError(f"{where} has no ```yaml tool-call block (or **Tool**: line)")
        if validates:
            unchecked.append(number)
        step: dict[str, Any] = {"id": f"step{number}", "title": _plain(title) or f"Step {number}"}
        for key in ("tool", "agent", "goal", "timeout", "priority", "resources", "retry", "cache", "cache_ttl",
                    "max_tokens", "max_cost"):
            if key in call:
                step[key] = call.pop(key)
        step["with"] = call.pop("parameters", call.pop("with", {})) or {}
        if not isinstance(step["with"], dict):
            raise SpecError(f"{where}: 'parameters' must be a mapping of name: value")
        step["with"] = _placeholders(step["with"], here, warnings)
        deps = call.pop("depends_on", call.pop("dependencies", call.pop("needs", None)))
        if deps is None:
            deps = _dependencies_line(section)
        step["needs"] = _step_refs(where, deps)
        on_error = call.pop("on_error", None)
        if on_error is None:
            on_error = error_block if error_block is not None else _error_bullets(section)
        _on_error(step, on_error, where, here, warnings)
        if call:
            raise SpecError(f"{where}: unknown key {next(iter(call))!r} in the "
                            "tool-call block (use tool, parameters, on_error, depends_on, timeout, retry, cache, "
                            "cache_ttl)")
        steps.append(step)
    if unchecked:
        warnings.append(f"the validation checks of step{'s' if len(unchecked) > 1 else ''} "
                        f"{', '.join(unchecked)} are not run (llmunix checks that each step completes)")
    data = {k: v for k, v in front.items() if k in WorkflowSpec.model_fields and k != "steps"}
    header = _header_lines(body[: headings[0].start()])
    if "name" not in data:
        for key in ("workflow", "trace_id", "title", "agent_name"):
            if front.get(key):
                data["name"] = str(front[key])
                break
        else:
            if header.get("trace id") or header.get("name"):
                data["name"] = header.get("trace id") or header.get("name")
    if "description" not in data:
        described = front.get("goal_signature") or front.get("goal") or header.get("goal") or header.get("purpose")
        if described:
            data["description"] = str(described)
    if data.get("version") is not None:
        data["version"] = str(data["version"])  # YAML reads 1.2 as a number
    data["steps"] = steps
    return data


def _in_fence(text: str, pos: int) -> bool:
    """Whether `pos` is inside a ``` block (a schema's example of a step is not a step)."""
    inside = False
    for line in text[:pos].splitlines():
        if _FENCE_LINE.match(line):
            inside = not inside
    return inside


def _fences(section: str) -> list[tuple[str, str]]:
    """The fenced blocks of a section: (language, text)."""
    out: list[tuple[str, str]] = []
    lang, buf, opener = None, [], ""
    for line in section.splitlines():
        m = _FENCE_LINE.match(line)
        if lang is None and m:
            lang, buf, opener = m.group(2).lower(), [], m.group(1)
        elif lang is not None and m and m.group(1).startswith(opener[:3]) and not m.group(2):
            out.append((lang, "\n".join(buf)))
            lang = None
        elif lang is not None:
            buf.append(line)
    return out


def _step_blocks(section: str, where: str) -> tuple[dict[str, Any] | None, Any, bool]:
    """(the tool-call mapping, an error-handling block's `on_error`, whether there are
    validation blocks). Blocks in other languages, and YAML that is not about the call, are
    the trace's documentation."""
    call: dict[str, Any] | None = None
    on_error: Any = None
    validates = False
    for lang, block in _fences(section):
        if lang not in ("", "yaml", "yml", "json"):
            continue
        try:
            value = yaml.safe_load(block)
        except yaml.YAMLError as exc:
            if call is None and re.search(r"^\s*(tool|agent)\s*:", block, re.MULTILINE):
                raise SpecError(f"{where}: malformed YAML block: {getattr(exc, 'problem', exc)}") from None
            continue
        if isinstance(value, dict) and call is None and ("tool" in value or "agent" in value):
            call = value
        elif isinstance(value, dict) and set(value) == {"on_error"}:
            on_error = value["on_error"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) and ("check" in v or "type" in v)
                                                       for v in value):
            validates = True
        elif isinstance(value, dict) and call is None and set(value) & {"parameters", "depends_on"}:
            raise SpecError(f"{where}: the block must be a mapping with 'tool' (it has parameters but no tool)")
    return call, on_error, validates


def _header_lines(text: str) -> dict[str, str]:
    """The bold-key lines of a section (`**Tool**: Write`), keys lower-cased, first one wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _BOLD_LINE.match(line)
        if m:
            out.setdefault(" ".join(m.group(1).strip().rstrip(":").lower().split()), m.group(2).strip())
    return out


def _markdown_call(section: str) -> dict[str, Any] | None:
    """A step of the "pure markdown" era: `**Tool**: Write`, `**Parameters**:` with a
    `| Parameter | Value |` table or `- key: value` lines, `**Timeout**: 30s`."""
    header = _header_lines(section)
    tool = _plain(header.get("tool") or "")
    agent = _plain(header.get("agent") or "")
    if not tool and not agent:
        return None
    call: dict[str, Any] = {"agent": agent, "goal": header.get("goal") or header.get("task") or ""} if (
        agent and not tool) else {"tool": tool}
    params = _parameter_lines(section)
    if params:
        call["parameters"] = params
    if header.get("timeout"):
        call["timeout"] = header["timeout"]
    return call


def _lines_after(section: str, key: str) -> list[str]:
    """The lines under a `**Key**:` line, up to the next bold key line or heading."""
    lines = section.splitlines()
    for i, line in enumerate(lines):
        m = _BOLD_LINE.match(line)
        if m and m.group(1).strip().rstrip(":").lower() == key:
            out = []
            for nxt in lines[i + 1:]:
                if nxt.lstrip().startswith("**") or nxt.startswith("#") or nxt.strip() == "---":
                    break  # the next **Key**: line, a heading or a rule ends the list
                out.append(nxt)
            return out
    return []


def _parameter_lines(section: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in _lines_after(section, "parameters"):
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0].lower() in ("parameter", "name", "key"):
                continue
            out[_plain(cells[0])] = _cell("|".join(cells[1:]))
            continue
        m = re.match(r"^[-*+]\s+(?:\*\*|`)?([A-Za-z_][\w\-]*)(?:\*\*|`)?\s*:\s*(.*)$", stripped)
        if m:
            out[m.group(1)] = _cell(m.group(2))
    return out


def _cell(text: str) -> Any:
    """A parameter value written in markdown: code marks off; numbers and true/false as such."""
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] == "`":
        text = text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _plain(text: str) -> str:
    return str(text).strip().strip("`*_ ").strip()


def _dependencies_line(section: str) -> list[str]:
    """`**Dependencies**: Step 1, Step 2` (or "None (first step)"), or a list under it."""
    m = re.search(r"^[ \t]*(?:[-*+][ \t]+)?\*\*(?:Dependenc(?:y|ies)|Depends on)[ \t]*:?[ \t]*\*\*[ \t]*:?[ \t]*(.*)$",
                  section, re.IGNORECASE | re.MULTILINE)
    if m is None:
        return []
    first = m.group(1).strip()
    if first:
        return [first]
    items = []
    for line in section[m.end():].splitlines()[1:]:
        item = re.match(r"^\s*(?:[-*+]|\d+\.)\s+(.*)$", line)
        if item:
            items.append(item.group(1))
        elif line.strip():
            break
    return items


def _step_refs(where: str, deps: Any) -> list[str]:
    """Step ids from dependencies written as "Step 1", 1, "Steps 1 and 2", "Step 2 (its output)",
    or "None (first step)" / "None (can run in parallel with Step 1)" (no dependency)."""
    if deps is None:
        return []
    items = [deps] if isinstance(deps, str | int) else list(deps)
    out: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(f"step{item}")
            continue
        text = str(item).strip()
        if not text or _NONE.match(text):
            continue
        found = []
        for part in re.split(r",|;|\band\b|&", re.sub(r"\([^)]*\)", "", text)):
            part = part.strip()
            if not part or _NONE.match(part):
                continue
            m = _STEP_NUMBERS.search(part) or re.fullmatch(r"(\d+)", part)
            if m is None:
                raise SpecError(f"{where}: cannot read dependency {part!r}; write it as \"Step 1\"")
            found += re.findall(r"\d+", m.group(1))
        if not found:
            continue
        out += [f"step{n}" for n in found]
    return list(dict.fromkeys(out))


def _error_bullets(section: str) -> dict[str, Any] | None:
    """`**Error Handling**:` with `- Action: retry` / `- Retry Count: 2` bullets."""
    out: dict[str, Any] = {}
    for line in _lines_after(section, "error handling"):
        m = re.match(r"^\s*[-*+]\s+(?:\*\*)?([A-Za-z][\w ]*?)(?:\*\*)?\s*:\s*(.*)$", line)
        if m:
            out[m.group(1).strip().lower().replace(" ", "_")] = _cell(m.group(2))
    return out or None


def _on_error(step: dict[str, Any], on_error: Any, where: str, here: str, warnings: list[str]) -> None:
    if isinstance(on_error, dict):
        action = str(on_error.get("action", "fail")).strip().lower()
        if action not in ON_ERROR_ACTIONS:
            warnings.append(f"{here}: on_error action {action!r} is read as 'fail' "
                            f"(llmunix knows {', '.join(ON_ERROR_ACTIONS)} and fallback_step)")
            action = "fail"
        if on_error.get("fallback_step") is not None:
            step["on_error"] = {"fallback": _fallback_ref(where, on_error["fallback_step"])}
        else:
            step["on_error"] = action
        if action == "retry" or on_error.get("retry_count"):
            try:
                attempts = int(on_error.get("retry_count", 3)) + 1
            except (TypeError, ValueError):
                raise SpecError(f"{where}: retry_count must be a whole number, not "
                                f"{on_error.get('retry_count')!r}") from None
            backoff = on_error.get("backoff", on_error.get("delay_seconds"))
            step["retry"] = {"max_attempts": attempts, **({"initial": backoff} if backoff is not None else {})}
    elif on_error is not None:
        step["on_error"] = on_error


def _fallback_ref(where: str, ref: Any) -> str:
    refs = _step_refs(where, [ref])
    if len(refs) != 1:
        raise SpecError(f"{where}: cannot read fallback_step {ref!r}; write it as \"Step 4\"")
    return refs[0]


def _placeholders(value: Any, where: str, warnings: list[str]) -> Any:
    """LLMunix's `{step_1_output}` as `{{ steps.step1.output }}`; other `{name}` placeholders
    stay as written, with a warning (they are not llmunix references)."""
    if isinstance(value, dict):
        return {k: _placeholders(v, where, warnings) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, where, warnings) for v in value]
    if not isinstance(value, str):
        return value
    value = _OLD_PLACEHOLDER.sub(lambda m: f"{{{{ steps.step{m.group(1)}.output }}}}", value)
    left = sorted(set(_PLACEHOLDER.findall(value)))
    if left:
        warnings.append(f"{where}: {', '.join('{' + x + '}' for x in left)} "
                        f"{'is' if len(left) == 1 else 'are'} not a reference; written as it is")
    return value


def _parse_json(name: str, text: str, want: type) -> Any:
    import json

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise LlmunixError(f"input {name!r} must be JSON ({want.__name__}), not {text[:60]!r}") from None
    if not isinstance(value, want):
        raise LlmunixError(f"input {name!r} must be a {want.__name__}, not {text!r}")
    return value


# Checking a folder of specs ---------------------------------------------------------------------


def check_spec_files(root: str | Path, load: Callable[[str], WorkflowSpec]) -> list[FileCheck]:
    """`workflow check DIR`: every markdown file under `root` (or `root` itself, of any spec
    suffix) read as a workflow, with its warnings. `load` runs the checks that need the kernel
    (the DAG, the tools and agents the steps name): `Kernel.workflow_spec`."""
    out: list[FileCheck] = []
    for path in markdown_files(Path(root)) if Path(root).is_dir() else [Path(root)]:
        if path.name.lower() in ("readme.md", "index.md"):
            out.append(FileCheck(str(path), SKIPPED, reason="a README or index is documentation, never a workflow"))
            continue
        try:
            spec, warnings = read_spec(path)
            load(str(path))
        except LlmunixError as exc:
            reason = str(exc)
            if reason.startswith(str(path)):
                reason = reason[len(str(path)):].lstrip(":").strip()
            out.append(FileCheck(str(path), REFUSED, reason=reason))
            continue
        out.append(FileCheck(str(path), WARNINGS if warnings else LOADED, "workflow", spec.name,
                             path.suffix.lower().lstrip("."), tuple(warnings)))
    return out
