"""The LLM backend protocol, and the records an agent run is made of.

A backend decides one Thinking phase: it sees a `Turn` (the agent, its goal, the tools it may
use, and the transcript of earlier steps) and returns a `Decision` (reasoning, tool calls, maybe
a final answer, token usage). The agent loop (loop.py) runs the calls as child processes and
appends a `Step` to the transcript. The transcript is plain data so it can be checkpointed and a
recovered agent can continue where it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmunix.agents.parsing import ToolCall
from llmunix.config import Config, LlmConfig
from llmunix.models import LlmunixError

if TYPE_CHECKING:
    from llmunix.agents.endpoints import Endpoints

RESULT_LIMIT = 8000  # characters of a tool's output shown to the model


class BackendError(LlmunixError):
    """The model could not be asked (unreachable, refused, out of retries): the agent fails."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class ToolSchema:
    """A tool as the model is told about it."""

    name: str
    description: str
    parameters: tuple[tuple[str, str, bool, str], ...]  # (name, json type, required, description)

    def to_openai(self, api_name: str) -> dict[str, Any]:
        props = {p: {"type": t, **({"description": d} if d else {})} for p, t, _r, d in self.parameters}
        return {"type": "function", "function": {
            "name": api_name, "description": self.description[:1000],
            "parameters": {"type": "object", "properties": props,
                           "required": [p for p, _t, r, _d in self.parameters if r]}}}

    def signature(self) -> str:
        return ", ".join(f"{p}: {t}" + ("" if r else " (optional)") for p, t, r, _d in self.parameters)


@dataclass(frozen=True)
class Decision:
    reasoning: str
    calls: tuple[ToolCall, ...] = ()
    final: str | None = None
    usage: Usage = field(default_factory=Usage)
    message: Any = None  # what the model said, kept to replay the conversation (JSON-able)
    # How the reply came: {"seconds": wall time of the request that answered, "stream": bool,
    # "ttft": seconds to the first token (streamed replies only)}. None for offline decisions.
    timing: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"reasoning": self.reasoning, "calls": [c.to_dict() for c in self.calls], "final": self.final,
             "usage": self.usage.to_dict(), "message": self.message}
        if self.timing:
            d["timing"] = dict(self.timing)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        u = d.get("usage") or {}
        return cls(str(d.get("reasoning") or ""), tuple(ToolCall.from_dict(c) for c in d.get("calls") or ()),
                   d.get("final"), Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)),
                   d.get("message"), d.get("timing"))


@dataclass(frozen=True)
class ActionResult:
    """One tool call carried out (or refused)."""

    call: ToolCall
    tool: str  # the tool that ran ("" when none could)
    ok: bool
    output: Any = None
    error: str | None = None
    pid: int | None = None
    duration: float = 0.0

    def text(self) -> str:
        """What the model is told about it."""
        if not self.ok:
            return f"error: {self.error}"
        out = self.output
        if out is None:
            return "(no output)"
        text = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, default=repr)
        return text if len(text) <= RESULT_LIMIT else text[:RESULT_LIMIT] + f"\n... ({len(text)} characters in all)"

    def to_dict(self) -> dict[str, Any]:
        return {"call": self.call.to_dict(), "tool": self.tool, "ok": self.ok, "output": self.output,
                "error": self.error, "pid": self.pid, "duration": round(self.duration, 3)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActionResult:
        return cls(ToolCall.from_dict(d["call"]), str(d.get("tool") or ""), bool(d.get("ok")), d.get("output"),
                   d.get("error"), d.get("pid"), float(d.get("duration") or 0.0))


@dataclass(frozen=True)
class Step:
    decision: Decision
    results: tuple[ActionResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision.to_dict(), "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step:
        return cls(Decision.from_dict(d["decision"]), tuple(ActionResult.from_dict(r) for r in d.get("results") or ()))


@dataclass(frozen=True)
class Turn:
    """What a backend sees when it decides."""

    agent: str
    description: str
    instructions: str  # the definition's markdown body
    goal: str
    tools: Sequence[ToolSchema]
    steps: Sequence[Step]
    iteration: int
    max_iterations: int
    avoid: Mapping[str, str] = field(default_factory=dict)  # call key -> error, from memory (see memory.py)
    model: str = ""


Check = Callable[[], None]
Sleep = Callable[[float], None]
Log = Callable[[str], None]
# ctx.off_slot: `with off_slot("the model: NAME", wake):` waits without holding a slot.
OffSlot = Callable[..., AbstractContextManager[None]]


def stay_on_slot(what: str, wake: Callable[[], None] | None = None) -> AbstractContextManager[None]:
    """An `off_slot` for callers that are not a process (or keep their slot): does nothing."""
    return nullcontext()


class Backend(Protocol):
    name: str

    def decide(self, turn: Turn, *, check: Check, sleep: Sleep, log: Log,
               off_slot: OffSlot = stay_on_slot) -> Decision:
        """One Thinking phase. `check` is a control point (call it while waiting), `sleep` a
        pausable sleep for backoff, `log` a line in the process log, `off_slot` the process's
        way to wait for the model without holding a slot (ctx.off_slot). Raises BackendError."""
        ...


@dataclass(frozen=True)
class BackendSettings:
    """What a backend needs from the configuration, after the environment has had its say."""

    backend: str = "offline"
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    tool_format: str = "native"
    max_iterations: int = 10
    stream: bool = False

    @classmethod
    def from_config(cls, config: Config | LlmConfig, env: Mapping[str, str] | None = None) -> BackendSettings:
        """Config values, overridden by LLMUNIX_LLM_BACKEND / _BASE_URL / _MODEL / _STREAM and the key's
        variable."""
        llm = config.llm if isinstance(config, Config) else config
        env = os.environ if env is None else env
        return cls(
            backend=env.get("LLMUNIX_LLM_BACKEND") or llm.backend,
            base_url=(env.get("LLMUNIX_LLM_BASE_URL") or llm.base_url).rstrip("/"),
            model=env.get("LLMUNIX_LLM_MODEL") or llm.model,
            api_key=env.get(llm.api_key_env) or None,
            api_key_env=llm.api_key_env,
            timeout=llm.timeout,
            retries=llm.retries,
            backoff=llm.backoff,
            tool_format=llm.tool_format,
            max_iterations=llm.max_iterations,
            stream=_flag(env.get("LLMUNIX_LLM_STREAM"), llm.stream),
        )


def _flag(value: str | None, default: bool) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off; anything else keeps the default."""
    text = (value or "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    return default


BACKENDS = ("offline", "openai")


def api_model(name: str | None) -> str | None:
    """A definition's model as an API model name, or None: Claude Code files name models by
    family (`sonnet`, `opus`, `haiku`, `inherit`), which no OpenAI-compatible server serves."""
    return name if name and name not in ("sonnet", "opus", "haiku", "inherit") else None


def make_backend(name: str, settings: BackendSettings, *, model: str | None = None,
                 backoff: float | None = None, endpoints: Endpoints | None = None) -> Backend:
    """A backend by name: `offline` or `openai` (limited by `endpoints`, the kernel's, if given)."""
    from dataclasses import replace

    if model:
        settings = replace(settings, model=model)
    if backoff is not None:
        settings = replace(settings, backoff=backoff)
    if name == "offline":
        from llmunix.agents.offline import OfflineBackend

        return OfflineBackend()
    if name == "openai":
        from llmunix.agents.openai_backend import OpenAIBackend

        return OpenAIBackend(settings, endpoints)
    raise LlmunixError(f"unknown backend {name!r}; use one of: {', '.join(BACKENDS)}")
