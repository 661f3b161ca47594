"""Agents' learning memory: what each run set out to do, how it went, and each tool call's fate.

Kept in the store (tables `agent_runs` and `agent_tool_uses`, schema version 4), or in memory
for a kernel without a home. Writes are queued to the store's writer thread like events; reads
flush first so a run that has just ended is found. Used in three places:

* ETA: an agent's progress total is the median number of iterations of its completed runs;
* the offline planner: `avoid()` lists calls (tool and parameters) that failed the last two
  times this agent made them, and the planner does not repeat them;
* the `memory [search TEXT]` command.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmunix.models import format_pid, iso_time
from llmunix.observe.redact import redact_text
from llmunix.store import Store

ANSWER_LIMIT = 500
ETA_RUNS = 20  # completed runs the ETA looks at


@dataclass(frozen=True, slots=True)
class RunMemory:
    """One agent run, as remembered."""

    time: float
    agent: str
    pid: int | None
    goal: str
    outcome: str  # Completed, Failed, Cancelled
    duration: float
    iterations: int
    tools: tuple[str, ...]  # in the order first used
    errors: tuple[str, ...]
    tokens: int
    backend: str
    answer: str

    def to_dict(self) -> dict[str, Any]:
        return {"time": iso_time(self.time), "agent": self.agent,
                "pid": None if self.pid is None else format_pid(self.pid), "goal": self.goal,
                "outcome": self.outcome, "duration": round(self.duration, 3), "iterations": self.iterations,
                "tools": list(self.tools), "errors": list(self.errors), "tokens": self.tokens,
                "backend": self.backend, "answer": self.answer}


@dataclass(frozen=True, slots=True)
class ToolUse:
    """One tool call an agent made."""

    time: float
    agent: str
    pid: int | None
    tool: str
    call: str  # the call's identity: tool and parameters (offline.call_key)
    child: int | None
    ok: bool
    duration: float
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"time": iso_time(self.time), "agent": self.agent,
                "pid": None if self.pid is None else format_pid(self.pid), "tool": self.tool,
                "child": None if self.child is None else format_pid(self.child), "ok": self.ok,
                "duration": round(self.duration, 3), "error": self.error}


class AgentMemory:
    def __init__(self, store: Store | None) -> None:
        self.store = store
        self._runs: list[RunMemory] = []  # without a store
        self._uses: list[ToolUse] = []
        self._lock = threading.Lock()
        # Per agent: the iterations of its last completed runs (the ETA), read from the store once
        # and kept up to date here: every agent start asks, and a thousand starts must not each
        # flush the store and read every run.
        self._recent: dict[str, deque[int]] = {}

    # ------------------------------------------------------------------ learning

    def record_run(self, run: RunMemory) -> None:
        run = RunMemory(run.time, run.agent, run.pid, redact_text(run.goal), run.outcome, run.duration,
                        run.iterations, run.tools, tuple(redact_text(e) for e in run.errors), run.tokens,
                        run.backend, redact_text(run.answer[:ANSWER_LIMIT]))
        if run.outcome == "Completed" and run.iterations:
            with self._lock:
                recent = self._recent.get(run.agent)
                if recent is not None:
                    recent.append(run.iterations)
        if self._writable():
            assert self.store is not None
            self.store.execute(
                "INSERT INTO agent_runs (time, agent, pid, goal, outcome, duration, iterations, tools, errors, "
                "tokens, backend, answer) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.time, run.agent, run.pid, run.goal, run.outcome, run.duration, run.iterations,
                 json.dumps(list(run.tools)), json.dumps(list(run.errors)), run.tokens, run.backend, run.answer))
        else:
            with self._lock:
                self._runs.append(run)

    def record_tool_use(self, use: ToolUse) -> None:
        use = ToolUse(use.time, use.agent, use.pid, use.tool, use.call, use.child, use.ok, use.duration,
                      redact_text(use.error) if use.error else None)
        if self._writable():
            assert self.store is not None
            self.store.execute(
                "INSERT INTO agent_tool_uses (time, agent, pid, tool, call, child, ok, duration, error) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (use.time, use.agent, use.pid, use.tool, use.call, use.child, int(use.ok), use.duration, use.error))
        else:
            with self._lock:
                self._uses.append(use)

    def _writable(self) -> bool:
        return self.store is not None and not self.store.read_only

    # ------------------------------------------------------------------ remembering

    def runs(self, agent: str | None = None, search: str | None = None, limit: int | None = 50) -> list[RunMemory]:
        """Runs, oldest first (the last `limit`), of one agent or all; `search` matches the words
        of the goal, answer, errors, tools and agent (every word must appear, any case)."""
        rows = self._all_runs(agent)
        if search:
            terms = search.lower().split()
            rows = [r for r in rows if all(t in _haystack(r) for t in terms)]
        return rows[-limit:] if limit else rows

    def tool_uses(self, agent: str | None = None, tool: str | None = None, limit: int | None = 200) -> list[ToolUse]:
        if self.store is not None:
            self.store.flush()
            sql = "SELECT * FROM agent_tool_uses WHERE 1=1"
            args: list[Any] = []
            if agent is not None:
                sql += " AND agent=?"
                args.append(agent)
            if tool is not None:
                sql += " AND tool=?"
                args.append(tool)
            sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
            uses = [ToolUse(r["time"], r["agent"], r["pid"], r["tool"], r["call"] or "", r["child"], bool(r["ok"]),
                            r["duration"] or 0.0, r["error"]) for r in self._query(sql, tuple(args))]
            return list(reversed(uses))
        with self._lock:
            uses = [u for u in self._uses if (agent is None or u.agent == agent) and (tool is None or u.tool == tool)]
        return uses[-limit:] if limit else uses

    def expected_iterations(self, agent: str) -> int | None:
        """The median iterations of the agent's last 20 completed runs (None without any)."""
        with self._lock:
            recent = self._recent.get(agent)
        if recent is None:
            if self.store is not None:
                rows = self._query("SELECT iterations FROM agent_runs WHERE agent=? AND outcome='Completed' "
                                   "AND iterations > 0 ORDER BY id DESC LIMIT ?", (agent, ETA_RUNS))
                found = [r[0] for r in reversed(rows)]
            else:
                with self._lock:
                    found = [r.iterations for r in self._runs if r.agent == agent and r.outcome == "Completed"
                             and r.iterations]
            with self._lock:
                recent = self._recent.setdefault(agent, deque(found, maxlen=ETA_RUNS))
        with self._lock:
            done = list(recent)
        return round(statistics.median(done)) if done else None

    def avoid(self, agent: str) -> dict[str, str]:
        """Calls (their identity) that failed the last two times this agent made them -> last error."""
        by_call: dict[str, list[ToolUse]] = {}
        for u in self.tool_uses(agent, limit=500):
            if u.call:
                by_call.setdefault(u.call, []).append(u)
        return {call: uses[-1].error or "failed" for call, uses in by_call.items()
                if len(uses) >= 2 and not uses[-1].ok and not uses[-2].ok}

    def tool_summary(self, agent: str | None = None) -> list[tuple[str, int, int, str | None]]:
        """(tool, calls, failures, last error) per tool, by tool name."""
        stats: dict[str, list[Any]] = {}
        for u in self.tool_uses(agent, limit=None):
            s = stats.setdefault(u.tool, [0, 0, None])
            s[0] += 1
            if not u.ok:
                s[1] += 1
                s[2] = u.error
        return [(t, s[0], s[1], s[2]) for t, s in sorted(stats.items())]

    # ------------------------------------------------------------------ reading

    def _all_runs(self, agent: str | None) -> list[RunMemory]:
        if self.store is None:
            with self._lock:
                return [r for r in self._runs if agent is None or r.agent == agent]
        self.store.flush()
        if agent is None:
            rows = self._query("SELECT * FROM agent_runs ORDER BY id")
        else:
            rows = self._query("SELECT * FROM agent_runs WHERE agent=? ORDER BY id", (agent,))
        return [RunMemory(r["time"], r["agent"], r["pid"], r["goal"] or "", r["outcome"] or "", r["duration"] or 0.0,
                          r["iterations"] or 0, tuple(_loads(r["tools"])), tuple(_loads(r["errors"])),
                          r["tokens"] or 0, r["backend"] or "", r["answer"] or "") for r in rows]

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        assert self.store is not None
        try:
            return self.store.query(sql, args)
        except Exception as exc:  # an older database opened read-only: no memory tables yet
            if "no such table" in str(exc):
                return []
            raise


def _loads(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _haystack(r: RunMemory) -> str:
    return " ".join([r.agent, r.goal, r.outcome, r.answer, *r.tools, *r.errors]).lower()

