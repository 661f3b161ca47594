"""The Kernel's durable-state methods: checkpoints, recover, rollback, retention, and the
processes of earlier sessions. A part of `Kernel` (mixed in), kept in its own room; it uses the
kernel's lock and tables like the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from llmunix.models import (
    EMPTY,
    EXIT_CANCELLED,
    IllegalTransition,
    LlmunixError,
    Outcome,
    Phase,
    Priority,
    ProcessInfo,
    ProcessKind,
    ToolError,
    as_pid,
    format_pid,
)
from llmunix.process import Process
from llmunix.resilience.restart import attempts_from_data
from llmunix.store import row_to_info
from llmunix.tools.registry import make_tool
from llmunix.workflows.runner import fold

GC_EVERY_FINISHED = 1000  # automatic compaction: after this many processes finish...
GC_INTERVAL = 300.0  # ...or this many seconds after the last one, if any finished since


class DurableState:

    def checkpoints(self, pid: int) -> list[tuple[int, Any]]:
        """Every checkpoint version of a process: [(version, state), ...]."""
        with self._lock:
            proc = self._procs.get(as_pid(pid))
            if proc is not None and (self.store is None or proc.checkpoints):
                return list(enumerate(proc.checkpoints, 1))
        if self.store is None:
            self._process(pid)
            return []
        self.info(pid)
        return [(v, state) for v, _t, state in self.store.checkpoints(as_pid(pid))]

    def recover(self, pids: Iterable[int] | None = None) -> list[ProcessInfo]:
        """Continue interrupted processes: from their last checkpoint, or from scratch if the tool
        is idempotent; otherwise they end Failed ("interrupted; not resumable")."""
        self._writable()
        if self.store is None:
            raise LlmunixError("recover needs a home directory with a store")
        self.store.flush()
        rows = {r["pid"]: r for r in self.store.interrupted_rows()}
        wanted = list(rows) if pids is None else [as_pid(p) for p in pids]
        for pid in wanted:
            if pid not in rows:
                state = self.info(pid).display_state
                raise IllegalTransition(f"process {format_pid(pid)} was not interrupted (it is {state})")
        out = []
        chosen = set(wanted)
        for pid in wanted:
            parent = rows[pid]["parent"]
            if parent in chosen and rows[parent]["kind"] in ("workflow", "agent"):
                # The recovered parent starts its unfinished children again itself.
                out.append(self._retire(rows[pid], Outcome.CANCELLED,
                                        f"interrupted; its {rows[parent]['kind']} {format_pid(parent)} "
                                        "runs it again", action="recover"))
                continue
            out.append(self._restart(rows[pid], checkpoint=None, how="recovered"))
        return out

    def rollback(self, pid: int, to: int | None = None) -> ProcessInfo:
        """Run a finished or interrupted process again from checkpoint version `to` (default: its
        last one), under the same PID."""
        self._writable()
        if self.store is None:
            raise LlmunixError("rollback needs a home directory with a store")
        pid = as_pid(pid)
        with self._lock:
            live = self._live.get(pid)
        if live is not None:
            raise IllegalTransition(f"process {format_pid(pid)} is {live.snapshot().display_state.lower()}; "
                                    "kill it or wait for it before rolling back")
        self.flush()
        row = self.store.process_row(pid)
        if row is None:
            self._process(pid)
        versions = self.store.checkpoints(pid)
        if not versions:
            raise LlmunixError(f"process {format_pid(pid)} has no checkpoints to roll back to")
        numbers = [v for v, _t, _s in versions]
        version = numbers[-1] if to is None else to
        if version not in numbers:
            raise LlmunixError(f"process {format_pid(pid)} has no checkpoint version {version} "
                               f"(it has {numbers[0]}..{numbers[-1]})")
        return self._restart(row, checkpoint=version, how=f"rolled back to checkpoint {version}")

    def _restart(self, row: Any, checkpoint: int | None, how: str) -> ProcessInfo:
        assert self.store is not None
        pid = row["pid"]
        versions = self.store.checkpoints(pid)
        if checkpoint is not None:
            versions = [v for v in versions if v[0] <= checkpoint]
        try:
            t = self.registry.get(row["tool"])
        except LlmunixError:
            t = None
        params = json.loads(row["params"] or "{}")
        if t is None or (not versions and not t.idempotent):
            reason = (f"interrupted; tool {row['tool']!r} is no longer available" if t is None
                      else "interrupted; not resumable (no checkpoint, and the tool is not idempotent)")
            return self._retire(row, Outcome.FAILED, reason, action="recover" if checkpoint is None else "rollback",
                                how=how)
        policy = json.loads(row["policy"]) if "policy" in row.keys() and row["policy"] else None  # noqa: SIM118
        with self._lock:
            restored = versions[-1][2] if versions else None
            self._spawn_locked(
                t, params, Priority.parse(row["priority"] or "normal"), (), name=row["name"], parent=row["parent"],
                cwd=row["cwd"], pid=pid, restored=restored, checkpoints=[s for _v, _t, s in versions],
                note=f"{how}" + (f" from checkpoint {versions[-1][0]}" if versions and checkpoint is None else ""),
                policy=policy,
            )
            # Its retry/restart policies go on (attempts are counted afresh from this run).
            self._set_policies_locked(self._procs[pid], attempts_from_data(policy))
            self._emit("process.restarted", self._procs[pid], action="recover" if checkpoint is None else "rollback",
                       how=self._procs[pid].history[0].details, resumed=True,
                       checkpoint=versions[-1][0] if versions else None)
            return self._snapshot(self._procs[pid])

    def _retire(self, row: Any, outcome: Outcome, reason: str, *, action: str, how: str = "") -> ProcessInfo:
        """End an interrupted process of an earlier session without running it again."""
        try:
            t = self.registry.get(row["tool"])
        except LlmunixError:
            t = make_tool(_gone, name=row["tool"])
        with self._lock:
            pid = row["pid"]
            proc = Process(pid, t, json.loads(row["params"] or "{}"), name=row["name"],
                           priority=Priority.parse(row["priority"] or "normal"), owner=row["owner"] or self.owner,
                           parent=row["parent"], after=tuple(json.loads(row["after"] or "[]")),
                           cwd=row["cwd"] or os.getcwd())
            proc.phase = Phase.READY
            self._procs[pid] = proc
            self._live[pid] = proc
            if self._history is not None:
                self._history.pop(pid, None)
            self._emit("process.restarted", proc, action=action, how=how or reason, resumed=False, error=reason)
            self._finish_locked(proc, outcome, 1 if outcome is Outcome.FAILED else EXIT_CANCELLED, reason)
            return proc.snapshot()

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every event published so far is committed to the store: the bus delivers
        them to the store first (`store.flush()` alone misses those still on the bus). True if
        done in time; always True without a store."""
        if self.store is None:
            return True
        deadline = time.monotonic() + timeout
        return self.bus.flush(timeout, queued=False) and self.store.flush(max(0.0, deadline - time.monotonic()))

    def gc(self, days: float | None = None, keep: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
        """Compact finished processes now: those that finished more than `days` ago, or that are
        not among the newest `keep` finished ones (defaults: retention_days, retention_count),
        keep only their summary row; their events, log lines and checkpoints are deleted. Live
        and interrupted processes are never touched. The same `keep` bounds the finished
        processes held in memory. Returns counts: processes, events, checkpoints (compacted in
        the store) and released (dropped from memory; still listed from the store)."""
        self._writable()
        if self.store is None:
            raise LlmunixError("gc needs a home directory with a store")
        if (days is not None and days < 0) or (keep is not None and keep < 0):
            raise LlmunixError("days and keep must not be negative")
        keep = self.retention_count if keep is None else int(keep)
        self.flush()  # what has finished so far is in the store before the pass
        job = self._compact(days, keep, wait=True, timeout=timeout)
        if job.error:
            raise LlmunixError(f"gc failed: {job.error}")
        with self._lock:
            released = 0 if self._history_loads else self._release_memory_locked(keep)
        return {**job.as_dict(), "released": released}

    def _compact(self, days: float | None = None, keep: int | None = None, *, wait: bool,
                 timeout: float = 300.0) -> Any:
        assert self.store is not None
        days = self.retention_days if days is None else days
        keep = self.retention_count if keep is None else keep
        with self._lock:
            self._finished_since_gc = 0
            self._last_gc = time.monotonic()
        return self.store.compact(before=time.time() - days * 86400.0, keep=keep, protect=self.live_pids,
                                  wait=wait, timeout=timeout)

    def _retain(self, seq: int) -> None:
        """Store writer thread, after a commit: bound the finished processes held in memory, and
        start an automatic compaction when enough have finished (or time has passed)."""
        with self._lock:
            self._committed_seq = seq
            for s, _p in reversed(self._finished):  # count finishes as they become durable
                if s <= self._counted_seq:
                    break
                if s <= seq:
                    self._finished_since_gc += 1
            self._counted_seq = seq
            if len(self._finished) > self.retention_count and not self._history_loads:
                self._release_memory_locked(self.retention_count)
            due = self._finished_since_gc and (self._finished_since_gc >= GC_EVERY_FINISHED
                                               or time.monotonic() - self._last_gc >= GC_INTERVAL)
            busy = self._gc_job is not None and not self._gc_job.done.is_set()
            closed = self._closed
        if due and not busy and not closed:
            try:
                self._gc_job = self._compact(wait=False)
            except LlmunixError:  # the store is closing
                pass

    def _release_memory_locked(self, keep: int) -> int:
        """Drop the oldest finished processes from memory until `keep` remain, but only those
        whose terminal state is committed: from then on the store answers for them (`ps -a`,
        `info`, `log`, `wait`). Mutates: hold the lock."""
        released = 0
        finished = self._finished
        while len(finished) > keep and finished[0][0] <= self._committed_seq:
            _seq, p = finished.popleft()
            if self._procs.get(p.pid) is not p or p.phase is not Phase.DONE:
                continue  # restarted since (rollback): the new Process is in the queue too
            del self._procs[p.pid]
            if self._history is not None:
                info = p.snapshot()  # as slim as a store row: no history, no checkpoint
                self._history[p.pid] = replace(info, history=(),
                                               context=replace(info.context, intermediate_results=EMPTY))
            released += 1
        return released

    def _known(self, pid: int) -> bool:
        if pid in self._procs:
            return True
        return self.store is not None and self.store.process_row(pid) is not None

    def _history_state(self, pid: int) -> str:
        row = self.store.process_row(pid) if self.store is not None else None
        return row["state"] if row is not None else "unknown"

    def _load_history(self) -> dict[int, ProcessInfo]:
        """Processes of earlier sessions, from the store (built once; they do not change)."""
        if self.store is None:
            return {}
        if self.read_only:  # the owner keeps changing it: read it afresh each time
            return {r["pid"]: row_to_info(r) for r in self.store.process_rows()}
        if self._history is None:
            with self._lock:
                self._history_loads += 1  # no process leaves memory while its row may be read stale
            try:
                self.store.flush()
                loaded = {r["pid"]: row_to_info(r) for r in self.store.process_rows()}
                with self._lock:
                    if self._history is None:
                        self._history = {pid: i for pid, i in loaded.items() if pid not in self._procs}
            finally:
                with self._lock:
                    self._history_loads -= 1
        return self._history

    def _historic(self, pid: Any) -> ProcessInfo | None:
        if self.store is None:
            return None
        try:
            pid = int(pid)
        except (TypeError, ValueError):
            return None
        history = self._history
        if history is not None and pid in history:
            return history[pid]
        row = self.store.process_row(pid)
        return row_to_info(row) if row is not None else None

    def _with_checkpoint(self, info: ProcessInfo) -> ProcessInfo:
        """A stored agent's or workflow's snapshot with its last checkpoint (a workflow's folded
        from its delta versions) in `context.intermediate_results`, as a live one has it: `ps -l`
        of an earlier session's agent shows its Reasoning, Tools Used and Actions. One PID at a
        time (`info`); the bulk listings stay slim."""
        if self.store is None or info.kind not in (ProcessKind.AGENT, ProcessKind.WORKFLOW) \
                or info.context.intermediate_results:
            return info
        versions = [s for _v, _t, s in self.store.checkpoints(info.pid)]
        if not versions:
            return info
        state = fold(versions) if info.kind is ProcessKind.WORKFLOW else versions[-1]
        if state is None:
            return info
        results = MappingProxyType({"checkpoint": state})
        return replace(info, context=replace(info.context, intermediate_results=results))



def _gone(ctx: Any) -> None:
    raise ToolError("this tool is no longer available")
