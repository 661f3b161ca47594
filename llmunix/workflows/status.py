"""Immutable views of a workflow run, built from its spec, its last checkpoint and its steps'
process snapshots: what `workflow status` draws and `--json` prints."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from llmunix.models import ProcessInfo, format_duration, format_pid
from llmunix.workflows import dag
from llmunix.workflows.spec import WorkflowSpec


@dataclass(frozen=True, slots=True)
class StepStatus:
    id: str
    title: str
    runs: str  # "web_fetch" or "agent summarizer"
    needs: tuple[str, ...]
    state: str  # pending, running, retrying, completed, skipped, failed, cancelled
    pid: int | None
    attempts: int
    max_attempts: int
    percentage: float | None
    elapsed: float | None  # seconds it has run (running) or ran (ended)
    error: str | None
    next_retry_in: float | None
    via: str | None  # completed by this fallback step / running in place of this step
    standby: bool  # a fallback step: runs only when another fails
    phase: str | None  # the step process's phase (paused, waiting...) while it lives
    cached_from: int | None = None  # the process whose stored result it reused (cache: true)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "runs": self.runs, "needs": list(self.needs),
                "state": self.state, "pid": None if self.pid is None else format_pid(self.pid),
                "attempts": self.attempts, "max_attempts": self.max_attempts,
                "percentage": None if self.percentage is None else round(self.percentage, 1),
                "elapsed": None if self.elapsed is None else round(self.elapsed, 3), "error": self.error,
                "next_retry_in": None if self.next_retry_in is None else round(self.next_retry_in, 3),
                "via": self.via, "fallback_only": self.standby, "phase": self.phase,
                "cached_from": None if self.cached_from is None else format_pid(self.cached_from)}


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    pid: int
    name: str
    description: str
    state: str  # the workflow process's visible state
    phase: str
    detail: str
    priority: str
    attempt: int
    steps: tuple[StepStatus, ...]
    done: int
    total: int
    percentage: float
    runtime: float  # wall-clock seconds since it started (to its end)
    eta: float | None
    memory_mb: float | None
    cpu_percent: float | None
    run_dir: str
    error: str | None
    source: str
    inputs: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"pid": format_pid(self.pid), "name": self.name, "description": self.description,
                "state": self.state, "phase": self.phase, "detail": self.detail, "priority": self.priority,
                "attempt": self.attempt, "progress": {"done": self.done, "total": self.total,
                                                      "percentage": round(self.percentage, 1)},
                "runtime": round(self.runtime, 3), "eta": None if self.eta is None else format_duration(self.eta),
                "eta_seconds": None if self.eta is None else round(self.eta, 3),
                "resources": {"memory_mb": None if self.memory_mb is None else round(self.memory_mb, 1),
                              "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 1)},
                "run_dir": self.run_dir, "error": self.error, "source": self.source,
                "inputs": dict(self.inputs), "steps": [s.to_dict() for s in self.steps]}


def build_status(info: ProcessInfo, spec: WorkflowSpec, state: Mapping[str, Any] | None,
                 children: Mapping[int, ProcessInfo], estimate: Callable[[str], float | None]) -> WorkflowStatus:
    """`info`: the workflow process; `state`: its last checkpoint (None before its first);
    `children`: snapshots of its step processes by PID; `estimate(step_id)`: typical seconds."""
    now = time.time()
    steps_state: Mapping[str, Any] = (state or {}).get("steps", {})
    graph = dag.build(spec)
    standby = dag.fallbacks(spec)
    steps: list[StepStatus] = []
    memory = cpu = None
    for s in spec.steps:
        st = steps_state.get(s.id, {})
        pid = st.get("pid")
        child = children.get(pid) if pid is not None else None
        state_name = st.get("state", "pending")
        if info.is_done and state_name in ("running", "retrying"):
            state_name = "cancelled" if info.state in ("Cancelled", "Interrupted") else state_name
        pct = elapsed = None
        phase = None
        if child is not None:
            elapsed = child.runtime
            pct = child.progress.percentage
            if not child.is_done:
                phase = str(child.phase)
                if child.resources.memory_mb is not None:
                    memory = (memory or 0.0) + child.resources.memory_mb
                if child.resources.cpu_percent is not None:
                    cpu = (cpu or 0.0) + child.resources.cpu_percent
        if state_name == "completed":
            pct = 100.0
            elapsed = st.get("duration") if st.get("duration") is not None else elapsed
        next_at = st.get("next_at")
        steps.append(StepStatus(
            id=s.id, title=s.label, runs=s.runs, needs=tuple(graph.predecessors(s.id)), state=state_name, pid=pid,
            attempts=int(st.get("attempts") or 0), max_attempts=s.retry.max_attempts if s.retry else 1,
            percentage=pct, elapsed=elapsed, error=st.get("error"),
            next_retry_in=max(0.0, next_at - now) if state_name == "retrying" and next_at else None,
            via=st.get("via"), standby=s.id in standby, phase=phase, cached_from=st.get("cached_from")))
    counted = [s for s in steps if not s.standby]
    done = sum(1 for s in counted if s.state in ("completed", "skipped", "failed", "cancelled"))
    total = len(counted) or 1
    partial = sum((s.percentage or 0.0) / 100.0 for s in counted if s.state in ("running", "retrying"))
    percentage = 100.0 if info.state == "Completed" else min(100.0, 100.0 * (done + partial) / total)
    started = info.started or info.created
    runtime = ((info.finished or now) - started) if info.started else 0.0
    eta = None if info.is_done else _eta(graph, steps, estimate, runtime, done + partial, total)
    return WorkflowStatus(
        pid=info.pid, name=spec.name, description=spec.description, state=info.display_state, phase=str(info.phase),
        detail=info.detail, priority=info.priority.label, attempt=int((state or {}).get("attempt") or 1),
        steps=tuple(steps), done=done, total=total, percentage=percentage, runtime=runtime, eta=eta,
        memory_mb=memory, cpu_percent=cpu, run_dir=str((state or {}).get("run_dir") or ""), error=info.error,
        source=spec.source,
        inputs=dict((state or {}).get("inputs") or info.context.input_parameters.get("inputs") or {}))


def _eta(graph: nx.DiGraph, steps: list[StepStatus], estimate: Callable[[str], float | None], runtime: float,
         progress: float, total: int) -> float | None:
    """Seconds left: the longest chain of remaining work (each step's typical duration from its
    history, less what a running one has done) when every remaining step has a history; else
    the run's own rate so far."""
    left: dict[str, float] = {}
    for s in steps:
        if s.standby or s.state in ("completed", "skipped", "failed", "cancelled"):
            continue
        typical = estimate(s.id)
        if typical is None:
            left = {}
            break
        done_part = (s.elapsed or 0.0) if s.state == "running" else 0.0
        left[s.id] = max(0.0, typical - done_part)
    remaining = [s for s in steps if not s.standby and s.state not in ("completed", "skipped", "failed", "cancelled")]
    if remaining and len(left) == len(remaining):
        sub = graph.subgraph(left)
        longest: dict[str, float] = {}
        for n in nx.topological_sort(sub):
            longest[n] = left[n] + max((longest[p] for p in sub.predecessors(n)), default=0.0)
        return max(longest.values(), default=0.0)
    if progress > 0 and runtime > 0:
        return runtime * (total - progress) / progress
    return None


def typical(durations: list[float]) -> float | None:
    return statistics.median(durations) if durations else None
