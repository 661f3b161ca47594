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
      - id: summarize
        tool: summarize
        needs: [fetch]
        with: {documents: "{{ steps.fetch.output }}"}
        on_error: skip            # fail (default) | skip | retry | {fallback: STEP}

or an LLMunix execution-trace markdown file (frontmatter, then `### Step N: Title` sections each
with a YAML tool-call block; dependencies written as "Step 1"). Every error names the file, the
step and the field.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmunix.models import LlmunixError, Priority, parse_duration
from llmunix.retry import RetryPolicy

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

    _timeout = field_validator("timeout", mode="before")(lambda v: _duration(v))

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
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise SpecError(f"{p}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                        "save the spec as UTF-8") from None
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
            data = markdown_to_data(p, text)
        else:
            raise SpecError(f"{p}: not a workflow spec (use .yaml, .yml, .toml or .md)")
        return spec_from_data(data, p)
    except RecursionError:
        raise SpecError(f"{p}: nested too deeply to be a workflow spec") from None


def spec_from_data(data: Any, path: str | Path = "<spec>") -> WorkflowSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a workflow spec is a mapping with 'name' and 'steps'")
    data = dict(data)
    data.setdefault("name", Path(str(path)).stem)
    data["source"] = str(path)
    try:
        spec = WorkflowSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SpecError(_explain(exc, data, path)) from None
    return spec


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

_STEP_HEADING = re.compile(r"^#{2,4}\s*Step\s+(\d+)\s*[:.\-–]?\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"```(?:ya?ml|json)?\s*\n(.*?)```", re.DOTALL)
_STEP_REF = re.compile(r"^\s*step[\s_-]*(\d+)\s*$", re.IGNORECASE)


def markdown_to_data(path: Path, text: str) -> dict[str, Any]:
    """An LLMunix execution trace as spec data: frontmatter (name, description, inputs...) and
    `### Step N: Title` sections, each with a YAML block `tool:` / `parameters:` and optionally
    `on_error: {action: retry|skip|fail, retry_count: 3, fallback_step: 4}` and
    `depends_on: ["Step 1"]` (or a `**Dependencies**: Step 1, Step 2` line)."""
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
    headings = list(_STEP_HEADING.finditer(body))
    if not headings:
        raise SpecError(f"{path}: no '### Step N: Title' sections found")
    steps = []
    for i, h in enumerate(headings):
        number, title = h.group(1), h.group(2)
        section = body[h.end(): headings[i + 1].start() if i + 1 < len(headings) else len(body)]
        line = text.count("\n", 0, text.find(h.group(0))) + 1
        fence = _FENCE.search(section)
        if fence is None:
            raise SpecError(f"{path}: line {line}: Step {number} has no ```yaml tool-call block")
        try:
            call = yaml.safe_load(fence.group(1)) or {}
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: line {line}: Step {number}: malformed YAML block: "
                            f"{getattr(exc, 'problem', exc)}") from None
        if not isinstance(call, dict):
            raise SpecError(f"{path}: line {line}: Step {number}: the block must be a mapping with 'tool'")
        step: dict[str, Any] = {"id": f"step{number}", "title": title or f"Step {number}"}
        for key in ("tool", "agent", "goal", "timeout", "priority", "resources", "retry"):
            if key in call:
                step[key] = call.pop(key)
        step["with"] = call.pop("parameters", call.pop("with", {})) or {}
        deps = call.pop("depends_on", call.pop("dependencies", call.pop("needs", None)))
        if deps is None:
            m = re.search(r"\*\*Dependenc(?:y|ies)\*\*\s*:?\s*(.+)", section, re.IGNORECASE)
            deps = [d for d in re.split(r",|\band\b", m.group(1)) if d.strip()] if m else []
            deps = [d for d in deps if d.strip().lower() not in ("none", "-")]
        step["needs"] = [_step_ref(path, line, number, d) for d in ([deps] if isinstance(deps, str | int) else deps)]
        on_error = call.pop("on_error", None)
        if isinstance(on_error, dict):
            action = str(on_error.get("action", "fail")).lower()
            if on_error.get("fallback_step") is not None:
                step["on_error"] = {"fallback": _step_ref(path, line, number, on_error["fallback_step"])}
            else:
                step["on_error"] = action
            if action == "retry" or on_error.get("retry_count"):
                step["retry"] = {"max_attempts": int(on_error.get("retry_count", 3)) + 1,
                                 **({"initial": on_error["backoff"]} if "backoff" in on_error else {})}
        elif on_error is not None:
            step["on_error"] = on_error
        if call:
            raise SpecError(f"{path}: line {line}: Step {number}: unknown key {next(iter(call))!r} in the "
                            "tool-call block (use tool, parameters, on_error, depends_on, timeout, retry)")
        steps.append(step)
    data = {k: v for k, v in front.items() if k in WorkflowSpec.model_fields and k != "steps"}
    if "name" not in data:
        for key in ("workflow", "title", "agent_name"):
            if key in front:
                data["name"] = str(front[key])
                break
    data["steps"] = steps
    return data


def _step_ref(path: Path, line: int, number: str, ref: Any) -> str:
    if isinstance(ref, int):
        return f"step{ref}"
    m = _STEP_REF.match(str(ref))
    if m is None:
        raise SpecError(f"{path}: line {line}: Step {number}: cannot read dependency {ref!r}; write it as \"Step 1\"")
    return f"step{m.group(1)}"


def _parse_json(name: str, text: str, want: type) -> Any:
    import json

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise LlmunixError(f"input {name!r} must be JSON ({want.__name__}), not {text[:60]!r}") from None
    if not isinstance(value, want):
        raise LlmunixError(f"input {name!r} must be a {want.__name__}, not {text!r}")
    return value
