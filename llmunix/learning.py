"""Learning from past runs: each tool's performance (the `ps -l` Performance line), the expected
durations the learned scheduling order uses, and deadlines (`run --deadline 10m`).

A component of the kernel (`kernel.learning`); it acts through the process table's hooks:

* `Learning.on_end`: a completed run's running time joins its tool's history
  (`Scheduler.record_duration`: the expected duration); the tool's cached performance figures
  are marked stale;
* `Deadlines` (registered at the first deadline given): `on_spawn` records a process's deadline
  here and with the scheduler (`Scheduler.deadlines`, read by the learned order) and sets a timer
  for the moment it passes; `on_end` says whether it was met, and the timer goes.

The learned order itself is the scheduler's (scheduler.py, "Learned order"); the scheduler calls
back `Deadlines.at_risk_locked` when a queued process can no longer make its deadline.

Performance figures come from the store's `tool_runs` (an index covers the query: counts, mean,
p90) and are cached per tool until a run of that tool ends; without a store, from this session's
finished processes. Runs that reused a cached result (llmunix/cache.py) are not runs of the tool
and count nowhere here; cancelled and interrupted runs say nothing of the tool either.

State (guarded by the table lock): `Deadlines._live` (pid -> Deadline of a live process),
`_ended` (those of finished ones, for `ps -l`: the newest KEEP_ENDED), `_timers`;
`Learning._performance` (tool -> ToolPerformance), `_stale` (tool -> the terminal event seq
after which its figures must be read again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmunix.lifecycle import Hooks
from llmunix.models import MAX_DURATION, LlmunixError, Outcome, Phase
from llmunix.observe.stats import percentile
from llmunix.resilience.restart import short_duration as _seconds

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process
    from llmunix.store import Store
    from llmunix.timers import TimerHandle
    from llmunix.tools.registry import Tool

KEEP_ENDED = 10_000  # deadlines of finished processes remembered for `ps -l`
STALE_WAIT = 2.0  # seconds a read waits for the store to commit the run that made figures stale


@dataclass(frozen=True, slots=True)
class ToolPerformance:
    """How a tool's runs went: completed and failed runs (cancelled and interrupted ones are not
    the tool's doing), the mean and p90 (nearest rank) running time of the completed ones."""

    tool: str
    completed: int
    failed: int
    mean: float | None
    p90: float | None

    @property
    def runs(self) -> int:
        return self.completed + self.failed

    @property
    def success_rate(self) -> float | None:
        """Completed runs as a percentage of completed and failed ones (None: no runs)."""
        return 100.0 * self.completed / self.runs if self.runs else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.success_rate
        return {"tool": self.tool, "runs": self.runs, "completed": self.completed, "failed": self.failed,
                "mean_seconds": _round(self.mean), "p90_seconds": _round(self.p90),
                "success_rate": None if rate is None else round(rate, 1)}


@dataclass(frozen=True, slots=True)
class Deadline:
    """A process's deadline: when (a time.time()), how long it was given, and what became of it:
    `at_risk` (flagged while queued: its tool's expected duration no longer fits before it),
    `missed` (it had not finished when the deadline passed), `met` (it finished in time)."""

    pid: int
    at: float
    seconds: float
    expected: float | None = None  # the expected duration when it was flagged
    at_risk: bool = False
    missed: bool = False
    met: bool | None = None  # None while it runs

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "seconds": self.seconds, "expected_seconds": _round(self.expected),
                "at_risk": self.at_risk, "missed": self.missed, "met": self.met}


class Deadlines(Hooks):
    """Processes' deadlines: recorded with the scheduler (the learned order reads them), a timer
    for the moment each passes, and what became of it. Registered with the process table at the
    first deadline given, so that until then no process pays for its hooks."""

    def __init__(self, table: ProcessTable) -> None:
        self.table = table
        self.scheduler = table.scheduler
        self._live: dict[int, Deadline] = {}
        self._ended: OrderedDict[int, Deadline] = OrderedDict()  # the newest KEEP_ENDED
        self._timers: dict[int, TimerHandle] = {}
        self.scheduler.on_deadline_risk = self.at_risk_locked

    def get(self, pid: int) -> Deadline | None:
        """Hold the lock."""
        return self._live.get(pid) or self._ended.get(pid)

    def on_spawn(self, proc: Process, options: Mapping[str, Any]) -> None:
        seconds = options.get("deadline")
        if seconds is None:
            return
        self.scheduler.deadlines[proc.pid] = time.monotonic() + seconds
        self._live[proc.pid] = Deadline(proc.pid, time.time() + seconds, seconds)
        self._timers[proc.pid] = self.table.timers.call_later(seconds, self._due, proc)
        proc.note("deadline", f"{_seconds(seconds)} from now")

    def on_end(self, proc: Process) -> None:
        if proc.pid not in self.scheduler.deadlines:
            return
        timer = self._timers.pop(proc.pid, None)
        if timer is not None:
            timer.cancel()
        d = self._live.pop(proc.pid, None)
        if d is not None:
            self._ended[proc.pid] = replace(d, met=not d.missed and proc.state == Outcome.COMPLETED)
            if len(self._ended) > KEEP_ENDED:
                self._ended.popitem(last=False)
        self.scheduler.forget(proc.pid)

    def at_risk_locked(self, proc: Process, expected: float, left: float) -> None:
        """The scheduler found `proc` can no longer make its deadline (lock held): flag it."""
        d = self._live.get(proc.pid)
        if d is not None:
            self._live[proc.pid] = replace(d, at_risk=True, expected=expected)
        why = f"expected {_seconds(expected)}, {_seconds(max(0.0, left))} left"
        proc.note("deadline at risk", why)
        self.table.set_detail_locked(proc, f"queued; deadline at risk: {why}")
        self.table.emit("process.deadline_at_risk", proc, expected=round(expected, 3), left=round(left, 3),
                        tool=proc.tool.name)

    def _due(self, proc: Process) -> None:
        """Timer: the deadline has passed; a process still live has missed it."""
        with self.table.lock:
            self._timers.pop(proc.pid, None)
            if proc.phase is Phase.DONE:
                return
            d = self._live.get(proc.pid)
            if d is not None:
                self._live[proc.pid] = replace(d, missed=True, met=False)
            proc.note("deadline missed", f"not finished {_seconds(d.seconds) if d else ''} after it was started")
            self.table.emit("process.deadline_missed", proc, tool=proc.tool.name,
                            seconds=d.seconds if d is not None else None)


class Learning(Hooks):
    """See the module docstring."""

    def __init__(self, table: ProcessTable, store: Store | None) -> None:
        self.table = table
        self.scheduler = table.scheduler
        self.store = store
        self.deadlines = Deadlines(table)
        self._watching = False  # `deadlines` is registered with the table
        self._performance: dict[str, ToolPerformance] = {}
        self._stale: dict[str, int] = {}

    # ------------------------------------------------------------------ before a spawn (no lock)

    def prepare(self, t: Tool, deadline: float | None) -> dict[str, Any]:
        """What a new process of `t` needs from here: the tool's history loaded for the learned
        order (or to judge its deadline), and the spawn option for its deadline (seconds from
        now). Call without the lock: it may read the store."""
        if deadline is None:
            if self.scheduler.policy == "learned":
                self.scheduler.learn(t.name, self.store.tool_durations if self.store is not None else None)
            return {}
        if not (0 < deadline <= MAX_DURATION):
            raise LlmunixError(f"deadline must be a positive number of seconds, at most 100 years, not {deadline!r}")
        self.scheduler.learn(t.name, self.store.tool_durations if self.store is not None else None)
        if not self._watching:
            with self.table.lock:  # (hook lists are read under it)
                if not self._watching:
                    self.table.register(self.deadlines)
                    self._watching = True
        return {"deadline": float(deadline)}

    def prepare_policy(self, tools: set[str]) -> None:
        """Before switching to the learned order: load the history of the tools now queued."""
        history = self.store.tool_durations if self.store is not None else None
        for name in tools:
            self.scheduler.learn(name, history)

    # ------------------------------------------------------------------ hooks (lock held)

    def on_end(self, proc: Process) -> None:
        # Every process ends here: kept to a few dict operations (bench/scheduler.py).
        state = proc.state
        if state == "Completed":
            if self.store is not None:
                self._stale[proc.tool.name] = proc.end_seq  # (seqs only grow)
            if proc.started is not None:  # (not a cached result)
                self.scheduler.record_duration(proc.tool.name, proc.run_accum)
        elif state == "Failed" and self.store is not None:
            self._stale[proc.tool.name] = proc.end_seq

    # ------------------------------------------------------------------ queries

    def deadline(self, pid: int) -> Deadline | None:
        """The deadline of process `pid`, if it was given one (in this session)."""
        with self.table.lock:
            return self.deadlines.get(pid)

    def performance(self, tool: str) -> ToolPerformance:
        """The tool's figures: from the store (cached until a run of it ends), else from this
        session's finished processes."""
        if self.store is None:
            return self._from_memory(tool)
        with self.table.lock:
            seq = self._stale.pop(tool, None)
            cached = self._performance.get(tool) if seq is None else None
        if cached is not None:
            return cached
        if seq is not None:
            self.store.wait_durable(seq, timeout=STALE_WAIT)  # that run's row is in tool_runs
        completed, failed, mean, p90 = self.store.tool_performance(tool)
        perf = ToolPerformance(tool, completed, failed, mean, p90)
        with self.table.lock:
            if tool not in self._stale:  # (another run ended meanwhile: read again next time)
                self._performance[tool] = perf
        return perf

    def _from_memory(self, tool: str) -> ToolPerformance:
        with self.table.lock:
            runs = [(p.state, p.runtime(0.0)) for p in self.table.procs.values()
                    if p.phase is Phase.DONE and p.tool.name == tool and p.started is not None]
        durations = [d for state, d in runs if state == Outcome.COMPLETED]
        failed = sum(1 for state, _d in runs if state == Outcome.FAILED)
        mean = sum(durations) / len(durations) if durations else None
        return ToolPerformance(tool, len(durations), failed, mean, percentile(durations, 90))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


__all__ = ["Deadline", "Deadlines", "Learning", "ToolPerformance"]
