"""The agent process: Thinking -> Acting -> Learning, until a final answer or out of iterations.

One `AgentRun` is the body of one agent process. Each iteration:

* **Thinking** — the backend decides (reasoning, tool calls, maybe a final answer); tokens it
  used are published as a `process.tokens` event and added to the run's totals.
* **Acting** — each call runs as a child process (`ctx.run`): the agent waits for it off-slot, and
  pause, kill and priority reach it. A call that cannot run (malformed, not granted, shell tools
  not allowed, bad parameters) is a failed step the model is told about, never a crash.
* **Learning** — each call's outcome goes to memory; a checkpoint records the phase, reasoning,
  tools used, action history, tokens and the transcript (`ps -l` shows them; `recover` resumes
  from it).

Every state change is a control point. The run ends Completed with the final answer, or Failed
("no final answer after N iterations", or the backend's error); either way the run is recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmunix.agents.backend import (
    ActionResult,
    Backend,
    Step,
    ToolSchema,
    Turn,
    Usage,
    api_model,
    make_backend,
)
from llmunix.agents.memory import RunMemory, ToolUse
from llmunix.agents.offline import call_key
from llmunix.agents.parsing import ToolCall
from llmunix.models import LlmunixError, Outcome, ProcessKilled, ProcessKind, ToolError, format_pid
from llmunix.process import ProcessContext
from llmunix.tools.markdown import MarkdownDefinition, find_tool_name
from llmunix.tools.registry import Tool

if TYPE_CHECKING:
    from llmunix.agents.service import AgentService

CHECKPOINT_OUTPUT_LIMIT = 4000  # characters of each tool output kept in the checkpointed transcript
ACTIONS_SHOWN = 20  # action history entries kept in the checkpoint's summary

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
               "dict": "object"}


class AgentRun:
    def __init__(self, ctx: ProcessContext, service: AgentService, definition: MarkdownDefinition, goal: str,
                 backend: str = "", max_iterations: int = 0, model: str = "") -> None:
        self.ctx = ctx
        self.service = service
        self.d = definition
        self.goal = goal.strip()
        if not self.goal:
            raise ToolError("an agent needs a goal: agent run NAME --goal \"what to do\"")
        settings = service.settings
        self.backend_name = backend or settings.llm.backend
        self.model = model or api_model(definition.model) or ""
        self.backend: Backend = make_backend(self.backend_name, settings.llm, model=self.model or None,
                                             backoff=service.backoff, endpoints=service.endpoints)
        self.max_iterations = max_iterations or definition.max_iterations or settings.llm.max_iterations
        self.tools, self.missing = service.granted_tools(definition)
        self.workspace = str(service.workspace_for(ctx.cwd))
        self.steps: list[Step] = []
        self._transcript: list[dict[str, Any]] = []  # the checkpointed form of `steps` (each made once)
        self.tokens = Usage()
        self.phase = "Idle"
        self.reasoning = ""
        self.learning = ""
        self.started = time.monotonic()

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        memory = self.service.memory
        self._restore()
        avoid = memory.avoid(self.d.name) if self.backend_name == "offline" else {}
        expected = memory.expected_iterations(self.d.name)
        schemas = [self._schema(t) for t in self.tools]
        total = expected or self.max_iterations
        answer: str | None = None
        error: str | None = None
        outcome = Outcome.FAILED
        try:
            if self.missing:
                self.ctx.log(f"tools not available to {self.d.name}: {', '.join(self.missing)}")
            for i in range(len(self.steps) + 1, self.max_iterations + 1):
                total = max(expected or self.max_iterations, i)
                self._enter("Thinking", f"iteration {i}/{self.max_iterations}: asking the {self.backend.name} backend")
                turn = Turn(self.d.name, self.d.description, self.d.body, self.goal, schemas, tuple(self.steps), i,
                            self.max_iterations, avoid, self.model)
                decision = self.backend.decide(turn, check=self.ctx.check, sleep=self.ctx.sleep, log=self.ctx.log,
                                               off_slot=self.ctx.off_slot)
                self._count_tokens(decision.usage)
                self.reasoning = decision.reasoning or (
                    f"call {', '.join(c.name for c in decision.calls)}" if decision.calls else "final answer")
                self.ctx.progress(i - 1, total, _first_line(self.reasoning) or f"iteration {i}")
                results: list[ActionResult] = []
                for n, call in enumerate(decision.calls, 1):
                    self._enter("Acting", f"iteration {i}: {call.name} ({n} of {len(decision.calls)})")
                    self._checkpoint(Step(decision, tuple(results)), running=call)
                    results.append(self._act(call))
                self.steps.append(Step(decision, tuple(results)))
                if results:
                    self._enter("Learning", f"iteration {i}: recording {len(results)} tool call(s)")
                    self._learn(results)
                self._checkpoint()
                self.ctx.progress(i, total, _first_line(self.reasoning) or f"iteration {i}")
                if decision.final is not None:
                    answer = decision.final
                    break
            else:
                raise ToolError(f"no final answer after {self.max_iterations} iterations "
                                f"(agent run ... --max-iterations N allows more)")
            outcome = Outcome.COMPLETED
            self._enter("Learning", "recording the run in memory")
            if total != len(self.steps):  # the estimate was off: it took what it took
                self.ctx.progress(len(self.steps), len(self.steps))
            self.learning = f"remembered this run ({len(self.steps)} iterations)"
            self._checkpoint()
        except ProcessKilled:
            outcome = Outcome.CANCELLED
            error = "killed"
            raise
        except LlmunixError as exc:  # the backend's errors too: the process fails with the reason
            error = str(exc)
            if isinstance(exc, ToolError):
                raise
            raise ToolError(error) from None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            # No control point here: a killed run is remembered too (unless llmunix itself is
            # stopping: then it is interrupted, and recover continues it).
            if not self.ctx.interrupted or outcome is not Outcome.CANCELLED:
                self._remember(outcome, error, answer or "")
        return {"answer": answer, "iterations": len(self.steps), "tools_used": self._tools_used(),
                "tokens": self.tokens.to_dict(), "backend": self.backend.name}

    def _act(self, call: ToolCall) -> ActionResult:
        """Run one call as a child process; anything that stops it is a failed result."""
        if call.error:
            return ActionResult(call, "", False, error=f"malformed tool call: {call.error}")
        names = [t.name for t in self.tools]
        name = find_tool_name(names, call.name)
        if name is None:
            granted = ", ".join(names) or "none"
            return ActionResult(call, "", False, error=f"tool {call.name!r} is not granted to {self.d.name} "
                                                       f"(its tools: {granted})")
        tool = next(t for t in self.tools if t.name == name)
        if not tool.confinable:  # it could reach outside the workspace (docs/agents.md, Confinement)
            if tool.touches is None:
                return ActionResult(call, tool.name, False, error=f"tool {tool.name} does not declare what it "
                                    "touches, so it cannot be confined to the agent's workspace; declare it "
                                    "with @tool(touches=...) to let agents use it")
            if not self.service.settings.allow_shell_tools:
                return ActionResult(call, tool.name, False, error="shell tools are not allowed; set "
                                    "allow_shell_tools = true in config.toml to let agents use them")
        if tool.kind is ProcessKind.AGENT and tool.name in self._ancestors():
            return ActionResult(call, tool.name, False, error=f"{tool.name} is already running above this agent; "
                                                              "an agent cannot call itself, even through others")
        args = {k: v for k, v in call.arguments.items() if k != "workspace"}
        if any(p.name == "workspace" for p in tool.params):
            args["workspace"] = self.workspace  # the agent's workspace, never one the model chose
        t0 = time.monotonic()
        try:
            info = self.ctx.run(tool, params=args)
        except LlmunixError as exc:
            return ActionResult(call, tool.name, False, error=str(exc), duration=time.monotonic() - t0)
        ok = info.state == Outcome.COMPLETED
        return ActionResult(call, tool.name, ok, info.output if ok else None,
                            None if ok else (info.error or info.state), info.pid, time.monotonic() - t0)

    def _ancestors(self) -> set[str]:
        """The tools (agents) of this process and every process above it."""
        names = {self.d.name}
        parent = self.ctx.parent
        while parent is not None:
            try:
                info = self.ctx.info(parent)
            except LlmunixError:
                break
            names.add(info.tool_name)
            parent = info.parent
        return names

    def _learn(self, results: list[ActionResult]) -> None:
        memory = self.service.memory
        for r in results:
            memory.record_tool_use(ToolUse(time.time(), self.d.name, self.ctx.pid, r.tool or r.call.name,
                                           call_key(r.tool or r.call.name, _public_args(r.call.arguments)),
                                           r.pid, r.ok, r.duration, r.error))
        failed = [r for r in results if not r.ok]
        if failed:
            self.learning = f"{failed[-1].tool or failed[-1].call.name} failed: {failed[-1].error}"[:200]
        else:
            self.learning = f"{', '.join(r.tool for r in results)} worked"

    def _remember(self, outcome: Outcome, error: str | None, answer: str) -> None:
        errors = [r.error for s in self.steps for r in s.results if r.error]
        if error and error != "killed":
            errors.append(error)
        self.service.memory.record_run(RunMemory(
            time.time(), self.d.name, self.ctx.pid, self.goal, outcome.value, time.monotonic() - self.started,
            len(self.steps), tuple(self._tools_used()), tuple(e for e in errors if e), self.tokens.total_tokens,
            self.backend.name, answer))

    # ------------------------------------------------------------------ what ps -l shows

    def _enter(self, phase: str, detail: str) -> None:
        self.phase = phase
        self.ctx.set_state(phase, detail)

    def _count_tokens(self, usage: Usage) -> None:
        if not usage.total_tokens:
            return
        self.tokens = self.tokens + usage
        self.service.tokens_used(self.ctx, usage, self.tokens, self.backend.name,
                                 self.model or self.service.settings.llm.model)

    def _tools_used(self) -> list[str]:
        return list(dict.fromkeys(r.tool for s in self.steps for r in s.results if r.tool))

    def _checkpoint(self, partial: Step | None = None, running: ToolCall | None = None) -> None:
        """Record where the run is (what `ps -l` shows, and what `recover` resumes from).
        `partial`: the iteration in progress; `running`: the call about to run in it."""
        steps = [*self.steps, partial] if partial is not None else self.steps
        actions = []
        for i, s in enumerate(steps, 1):
            for r in s.results:
                actions.append({"iteration": i, "tool": r.tool or r.call.name,
                                "args": _short(json.dumps(_public_args(r.call.arguments), ensure_ascii=False), 80),
                                "status": "ok" if r.ok else "failed",
                                "child": None if r.pid is None else format_pid(r.pid),
                                "result": _short(r.text(), 100)})
        if running is not None:
            actions.append({"iteration": len(steps), "tool": running.name, "status": "running",
                            "args": _short(json.dumps(_public_args(running.arguments), ensure_ascii=False), 80)})
        self.ctx.checkpoint({
            "agent": self.d.name, "phase": self.phase, "iteration": len(steps), "max_iterations": self.max_iterations,
            "reasoning": self.reasoning, "tools_used": list(dict.fromkeys(a["tool"] for a in actions)),
            "actions": actions[-ACTIONS_SHOWN:], "learning": self.learning, "tokens": self.tokens.to_dict(),
            "backend": self.backend.name, "goal": self.goal, "transcript": self._trimmed(),
        })

    def _trimmed(self) -> list[dict[str, Any]]:
        """The transcript as checkpoints keep it; a step, once taken, never changes."""
        for step in self.steps[len(self._transcript):]:
            self._transcript.append(_trim(step.to_dict()))
        return self._transcript

    def _restore(self) -> None:
        state = self.ctx.restored
        if not isinstance(state, Mapping) or not state.get("transcript"):
            return
        try:
            self.steps = [Step.from_dict(s) for s in state["transcript"]]
        except (KeyError, TypeError, ValueError):
            self.ctx.log("could not read the checkpointed transcript; starting over")
            self.steps = []
            return
        t = state.get("tokens") or {}
        self.tokens = Usage(int(t.get("prompt_tokens") or 0), int(t.get("completion_tokens") or 0))
        self.ctx.log(f"resuming after iteration {len(self.steps)}")

    def _schema(self, tool: Tool) -> ToolSchema:
        params = tuple((p.name, _JSON_TYPES.get(p.type, "string"), p.required, p.description)
                       for p in tool.params if p.name != "workspace")
        return ToolSchema(tool.name, tool.description, params)


def _public_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "workspace"}


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return _short(line, 120)


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _trim(step: dict[str, Any]) -> dict[str, Any]:
    for r in step.get("results", []):
        out = r.get("output")
        if isinstance(out, str) and len(out) > CHECKPOINT_OUTPUT_LIMIT:
            r["output"] = out[:CHECKPOINT_OUTPUT_LIMIT]
        elif out is not None and not isinstance(out, str):
            text = json.dumps(out, default=repr)
            if len(text) > CHECKPOINT_OUTPUT_LIMIT:
                r["output"] = text[:CHECKPOINT_OUTPUT_LIMIT]
    return step

