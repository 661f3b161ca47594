"""Hedged and redundant runs: N copies of one tool call, one answer.

`run TOOL ... --replicas N --first` (`Kernel.hedge`) starts a `hedge` process whose body starts N
replicas of the call as its children (named TOOL#1 ... TOOL#N; `ps --tree` shows them under it)
and waits for them off-slot:

* `--first`: the first replica that completes wins: the others are cancelled ("replica 006
  completed first") and waited for, and the hedge process completes with the winner's output.
  A failed replica is not an answer: the others go on; if every replica fails, the hedge fails
  with the first error. This cuts the tail latency of calls whose latency varies (a model's).
* `--quorum K`: results are compared as canonical JSON; as soon as K replicas have returned the
  same result, the others are cancelled and the hedge completes with it. It fails, saying how
  the results differed, as soon as no result can reach K any more (failures count as no vote).
  `--quorum` alone is a majority: N // 2 + 1.

The hedge body is an ordinary `ctx` body; cancelling its own replicas is the one thing `ctx`
has no verb for, which `Hedging.cancel` (through `ctx.service("hedging")`) does: it stops only
children of the calling process. Each replica is a normal process of its tool: its runs count
in the tool's figures (a cancelled loser as cancelled, which the Performance line leaves out).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError, Outcome, ProcessInfo, ProcessKind, ToolError, format_pid
from llmunix.process import ProcessContext
from llmunix.tools.registry import tool

if TYPE_CHECKING:
    from llmunix.kernel import Kernel

MAX_REPLICAS = 64
SPAWN_OPTIONS = ("priority", "name", "params", "needs", "timeout", "deadline")


class Hedging:
    """Starts hedged runs and cancels their losers (`kernel.hedging`)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def start(self, tool_name: str, *, replicas: int, quorum: int | None = None, **spawn: Any) -> int:
        """Check the request (the tool, its parameters, the counts: a bad one raises before
        anything starts), then start the `hedge` process; returns its PID."""
        unknown = sorted(set(spawn) - set(SPAWN_OPTIONS))
        if unknown:
            raise LlmunixError(f"a hedged run takes no {unknown[0]!r} (it takes: {', '.join(SPAWN_OPTIONS)})")
        if not isinstance(replicas, int) or not 2 <= replicas <= MAX_REPLICAS:
            raise LlmunixError(f"--replicas must be a whole number from 2 to {MAX_REPLICAS}, not {replicas!r}")
        if quorum is not None and (not isinstance(quorum, int) or not 1 <= quorum <= replicas):
            raise LlmunixError(f"--quorum must be from 1 to the number of replicas ({replicas}), not {quorum!r}")
        t = self.kernel.registry.get(tool_name)
        if t.kind is not ProcessKind.TOOL or t.name == "hedge":
            raise LlmunixError(f"{t.name!r} cannot be replicated (a {t.kind} body, not a tool call)")
        params = t.validate(spawn.pop("params", None) or {})
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError):
            raise LlmunixError("a hedged run's parameters must be JSON data") from None
        name = spawn.pop("name", None)
        body = {"tool": t.name, "params": params, "replicas": replicas, "quorum": quorum or 0}
        for option in ("needs", "timeout", "deadline"):  # each replica's; only those given
            value = spawn.pop(option, None)
            if value:
                body[option] = value
        return self.kernel.spawn("hedge", name=name or f"{t.name}*{replicas}", params=body, **spawn)

    def cancel(self, ctx: ProcessContext, pids: Iterable[int], reason: str) -> None:
        """Stop live replicas of the calling hedge process (only its own children)."""
        for pid in pids:
            info = self.kernel.info(pid)
            if info.parent != ctx.pid:
                raise LlmunixError(f"process {format_pid(pid)} is not a child of {format_pid(ctx.pid)}")
            if not info.is_done:
                try:
                    self.kernel.kill(pid, reason=reason)
                except LlmunixError:
                    pass  # it ended meanwhile


def _canonical(output: Any) -> str:
    return json.dumps(output, sort_keys=True, separators=(",", ":"), default=repr, ensure_ascii=False)


def _shown(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@tool(name="hedge", hidden=True, touches=())
def hedge(ctx: ProcessContext, tool: str, params: dict, replicas: int, quorum: int = 0,  # noqa: B006
          needs: dict | None = None, timeout: float | None = None, deadline: float | None = None) -> Any:
    """Run `replicas` copies of a tool call and keep the first success, or a quorum of equal
    results (started by `run --replicas`).

    Args:
        tool: the tool each replica runs
        params: its parameters
        replicas: how many copies
        quorum: equal results needed (0: the first success wins)
        needs: each replica's resource needs
        timeout: each replica's timeout (seconds)
        deadline: each replica's deadline (seconds from its start)
    """
    service = ctx.service("hedging")
    mode = f"quorum {quorum} of {replicas}" if quorum else f"first of {replicas}"
    ctx.set_state("Hedging", f"{mode}: {tool}")
    extra: dict[str, Any] = {}
    if deadline is not None:
        extra["deadline"] = deadline
    live = [ctx.spawn(tool, params=params, name=f"{tool}#{i}", needs=needs, timeout=timeout, **extra)
            for i in range(1, replicas + 1)]
    ctx.log(f"replicas: {', '.join(format_pid(p) for p in live)} ({mode})")
    failed: list[ProcessInfo] = []
    votes: dict[str, list[ProcessInfo]] = {}
    pending = list(live)
    while pending:
        for info in ctx.wait(pending, any=True, ended_only=True):
            pending.remove(info.pid)
            if info.state != Outcome.COMPLETED:
                failed.append(info)
                ctx.log(f"replica {info.process_id} {info.state.lower()}: {info.error}")
                continue
            if not quorum:
                _finish(ctx, service, pending, f"replica {info.process_id} completed first")
                ctx.log(f"replica {info.process_id} won after {info.runtime:.2f}s")
                return info.output
            group = votes.setdefault(_canonical(info.output), [])
            group.append(info)
            ctx.log(f"replica {info.process_id} returned {_shown(_canonical(info.output))}")
            if len(group) >= quorum:
                _finish(ctx, service, pending, f"quorum of {quorum} reached")
                ctx.log(f"quorum of {quorum}: {', '.join(i.process_id for i in group)}")
                return info.output
        if quorum and max((len(g) for g in votes.values()), default=0) + len(pending) < quorum:
            _finish(ctx, service, pending, f"no quorum of {quorum} possible")
            raise ToolError(f"no quorum of {quorum} of {replicas}: " + _differences(votes, failed))
        ctx.progress(replicas - len(pending), replicas, mode)
    if quorum:
        raise ToolError(f"no quorum of {quorum} of {replicas}: " + _differences(votes, failed))
    first = failed[0] if failed else None
    raise ToolError(f"all {replicas} replicas failed; {first.process_id}: {first.error}" if first
                    else f"all {replicas} replicas failed")


def _finish(ctx: ProcessContext, service: Hedging, pending: list[int], reason: str) -> None:
    """Cancel the replicas still live and wait for them to end (the hedge ends after its children)."""
    if pending:
        service.cancel(ctx, pending, reason)
        ctx.wait(pending)


def _differences(votes: Mapping[str, list[ProcessInfo]], failed: list[ProcessInfo]) -> str:
    """`results differed: "a" from 004, 006; "b" from 007; 005 failed (boom)`."""
    parts = [f"{_shown(value)} from {', '.join(i.process_id for i in infos)}"
             for value, infos in sorted(votes.items(), key=lambda kv: (-len(kv[1]), kv[1][0].pid))]
    parts += [f"{i.process_id} {i.state.lower()} ({i.error})" for i in failed]
    return ("results differed: " if len(votes) > 1 else "results: ") + "; ".join(parts) if parts else "no results"
