"""Durable state: what survives, and the questions that span memory and the store.

`DurableState` is a component of the kernel. It answers for every process, live or from an
earlier session (`info`, `ps`, `ps_rows`, `wait`, `logs`, `recent`, `checkpoints`), keeps the
finished processes held in memory bounded (retention: the oldest leave once their end is
committed, and the store answers for them), compacts the store (`gc`), and runs interrupted or
finished processes again under their PIDs (`recover`, `rollback`).

It knows rows and processes, not features: a feature that folds its checkpoints (workflows)
registers a folder with `fold_checkpoints`; a feature that must re-attach what it keeps for a
process when it is recovered (resilience's retry policies) reads the stored `policy` from the
`on_spawn` hook's options.
"""

from __future__ import annotations

import gc as _gcmod
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llmunix.lifecycle import Hooks
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
    PsRow,
    ToolError,
    as_pid,
    format_pid,
    matches_state,
)
from llmunix.observe.stats import ToolStats, empty_stats, summarize_runs
from llmunix.process import Process
from llmunix.store import Store, row_to_info, row_to_ps
from llmunix.tools.registry import ToolRegistry, make_tool

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable

GC_EVERY_FINISHED = 1000  # automatic compaction: after this many processes finish...
GC_INTERVAL = 300.0  # ...or this many seconds after the last one, if any finished since
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_RETENTION_COUNT = 10_000


class DurableState(Hooks):
    """See the module docstring. Hooks: `on_end` (a finished process joins the retention queue)."""

    def __init__(self, table: ProcessTable, store: Store | None, registry: ToolRegistry, *, read_only: bool,
                 retention_days: float = DEFAULT_RETENTION_DAYS,
                 retention_count: int = DEFAULT_RETENTION_COUNT) -> None:
        if retention_days < 0 or retention_count < 0:
            raise LlmunixError("retention_days and retention_count must not be negative")
        self.table = table
        self.store = store
        self.registry = registry
        self.read_only = read_only
        self.retention_days = float(retention_days)
        self.retention_count = int(retention_count)
        # Earlier sessions' processes (and those released from memory), loaded lazily: as light
        # `ps` rows at first (a cold `ps -a` needs no more), each made a full snapshot when asked.
        self._history: dict[int, ProcessInfo | PsRow] | None = None
        # Finished processes in the order they finished, with the seq of their terminal event; the
        # oldest leave memory once that event is committed (the store has them).
        self._finished: deque[tuple[int, Process]] = deque()
        self._committed_seq = 0
        self._counted_seq = 0  # finishes up to this seq are counted in _finished_since_gc
        self._history_loads = 0  # loads in progress: memory is not released meanwhile
        self._finished_since_gc = 0
        self._last_gc = time.monotonic()
        self._last_sweep = float("-inf")  # the start-up pass sweeps (see _compact)
        self._gc_job: Any = None  # the automatic compaction in flight, if any
        self._folders: dict[str, Callable[[list[Any]], Any]] = {}
        self._retired: set[int] = set()  # ended here without running (recover's, kill's): not a run's end
        table.known = self.stored_state

    def start(self) -> None:
        """The first automatic compaction pass, in the background (an owning kernel only)."""
        if self.store is not None and not self.read_only:
            self.store.on_commit(self._retain)
            self._gc_job = self._compact(wait=False)

    def fold_checkpoints(self, kind: str, fold: Callable[[list[Any]], Any]) -> None:
        """How a kind's checkpoint versions make its state (`ps -l` of an earlier session's
        workflow shows the folded state, as a live one has it)."""
        self._folders[kind] = fold

    # ------------------------------------------------------------------ hooks

    def on_end(self, proc: Process) -> None:
        if self.store is not None:
            self._finished.append((proc.end_seq, proc))

    # ------------------------------------------------------------------ one process

    def info(self, pid: int) -> ProcessInfo:
        table = self.table
        with table.lock:
            proc = table.get(as_pid(pid))
            if proc is not None:
                return table.snapshot(proc)
        info = self.historic(pid)
        if info is None:
            table.require(pid)  # raises NoSuchProcess with the usual message
        assert info is not None
        return self._with_checkpoint(info)  # an agent's or workflow's last checkpoint, as when live

    def exists(self, pid: int) -> bool:
        return self.table.get(pid) is not None or self.stored_state(pid) is not None

    def run_options(self, pid: int) -> dict[str, Any] | None:
        """What process `pid` was asked to run under, as stored with it (retry and restart
        policies, timeout, isolation, limits: resilience/restart.py `run_options`); None without
        a store or when nothing was asked."""
        if self.store is None:
            return None
        self.flush()  # a process that just ended may not be written yet
        row = self.store.process_row(int(pid))
        if row is None or not row["policy"]:
            return None
        try:
            data = json.loads(row["policy"])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def stored_state(self, pid: int) -> str | None:
        """The state of a process that is not in memory, from the store; None if none such."""
        if self.store is None:
            return None
        history = self._history
        if history is not None and pid in history:
            return history[pid].state
        try:
            row = self.store.process_row(int(pid))
        except (OverflowError, ValueError, TypeError):
            return None
        return row["state"] if row is not None else None

    def historic(self, pid: Any) -> ProcessInfo | None:
        """A process of an earlier session (or released from memory), from the store."""
        if self.store is None:
            return None
        try:
            pid = int(pid)
        except (TypeError, ValueError):
            return None
        history = self._history
        known = history.get(pid) if history is not None else None
        if isinstance(known, ProcessInfo):
            return known
        try:
            row = self.store.process_row(pid)
        except OverflowError:  # beyond SQLite's integers: no such process
            return None
        if row is None:
            return None
        info = row_to_info(row)
        if known is not None:
            with self.table.lock:
                if self._history is history and history.get(pid) is known:
                    history[pid] = info
        return info

    def _with_checkpoint(self, info: ProcessInfo) -> ProcessInfo:
        """A stored agent's or workflow's snapshot with its last checkpoint (folded by its kind's
        folder) in `context.intermediate_results`, as a live one has it. One PID at a time."""
        if self.store is None or info.kind not in (ProcessKind.AGENT, ProcessKind.WORKFLOW) \
                or info.context.intermediate_results:
            return info
        versions = [s for _v, _t, s in self.store.checkpoints(info.pid)]
        if not versions:
            return info
        fold = self._folders.get(str(info.kind))
        state = fold(versions) if fold is not None else versions[-1]
        if state is None:
            return info
        results = MappingProxyType({"checkpoint": state})
        return replace(info, context=replace(info.context, intermediate_results=results))

    def checkpoints(self, pid: int) -> list[tuple[int, Any]]:
        """Every checkpoint version of a process: [(version, state), ...]."""
        table = self.table
        with table.lock:
            proc = table.get(as_pid(pid))
            if proc is not None and (self.store is None or proc.checkpoints):
                return list(enumerate(proc.checkpoints, 1))
        if self.store is None:
            table.require(pid)
            return []
        self.info(pid)
        return [(v, state) for v, _t, state in self.store.checkpoints(as_pid(pid))]

    def logs(self, pid: int, *, since: float | None = None, limit: int | None = None) -> list[tuple[float, str]]:
        """A process's log lines (time, line), oldest first: `since` a Unix time, `limit` the
        newest N. Held in memory while it is; paged from the store after."""
        if limit is not None and limit <= 0:
            self.info(pid)
            return []
        table = self.table
        with table.lock:
            proc = table.get(as_pid(pid))
            if proc is not None:
                lines = list(proc.logs)
                if since is not None:
                    lines = [(t, line) for t, line in lines if t >= since]
                return lines[-limit:] if limit is not None else lines
        self.info(pid)  # unknown PIDs raise
        return self.store.log_lines(as_pid(pid), since=since, limit=limit) if self.store is not None else []

    # ------------------------------------------------------------------ listings

    def ps(self, all: bool = False, state: str | None = None) -> list[ProcessInfo]:  # noqa: A002
        """Snapshots of live processes (all=True: finished ones too), by PID. `state` filters
        on the visible state or the phase, case-insensitively (models.matches_state)."""
        if self.read_only:
            rows = (self.store.process_rows() if all else self.store.live_rows()) if self.store else []
            infos = [row_to_info(r) for r in rows]
        else:
            history = self._load_history() if all else {}
            table = self.table
            with table.lock:
                procs = table.procs if all else table.live
                infos = [table.snapshot(p) for p in procs.values()]
                if history:  # under the lock: the store writer thread adds processes released from memory
                    stored = [(pid, i) for pid, i in history.items() if pid not in table.procs]
            if history:
                infos.extend(self._full(history, stored))
                infos.sort(key=lambda i: i.pid)
        if state:
            infos = [i for i in infos if matches_state(state, i.display_state, i.phase, i.state)]
        return infos

    def ps_rows(self, all: bool = False, state: str | None = None) -> list[PsRow]:  # noqa: A002
        """What `ps(all, state)` lists, as light rows of the columns `ps` prints: no snapshot is
        built (a listing of 100,000 finished processes stays well under 0.2 s)."""
        if self.read_only:
            with _gc_paused():
                rows = [row_to_ps(r) for r in self.store.ps_rows(live_only=not all)] if self.store else []
            return [r for r in rows if matches_state(state, r.display_state, r.phase, r.state)] if state else rows
        history = self._load_history() if all else {}
        now = time.monotonic()
        table = self.table
        with table.lock, _gc_paused():
            procs = table.procs if all else table.live
            rows = [p.ps_row(now) for p in procs.values()]
            if history:  # under the lock: the store writer thread adds processes released from memory
                rows.extend(i if isinstance(i, PsRow) else i.ps_row()
                            for pid, i in history.items() if pid not in table.procs)
        if history:
            rows.sort()  # by PID, its first field (PIDs are unique)
        if state:
            rows = [r for r in rows if matches_state(state, r.display_state, r.phase, r.state)]
        return rows

    def recent(self, seconds: float = 5.0) -> list[ProcessInfo]:
        """Live processes and those that finished in the last `seconds`, by PID (what `top` lists)."""
        if self.read_only:
            return self.ps()
        cutoff = time.time() - seconds
        table = self.table
        with table.lock:
            procs = dict(table.live)
            if self.store is not None:  # finished processes are kept in the order they finished
                for _seq, p in reversed(self._finished):
                    if p.finished is None or p.finished < cutoff:
                        break
                    procs.setdefault(p.pid, p)
            else:
                procs.update((p.pid, p) for p in table.procs.values()
                             if p.finished is not None and p.finished >= cutoff)
            infos = [table.snapshot(p) for p in procs.values()]
        infos.sort(key=lambda i: i.pid)
        return infos

    def tool_stats(self, tool: str | None = None) -> list[ToolStats]:
        """Per-tool run counts, outcomes and durations, from the store's run history (without a
        store: this session's finished processes). An unknown tool with no runs raises."""
        if self.store is not None:
            runs = self.store.tool_runs(tool)
        else:
            runs = [(i.tool_name, i.state, i.runtime) for i in self.ps(all=True)
                    if i.is_done and (tool is None or i.tool_name == tool)]
        stats = summarize_runs(runs)
        if tool is not None and not stats:
            if tool not in self.registry:
                raise LlmunixError(f"no tool {tool!r} and no runs of it; `tools` lists them")
            stats = [empty_stats(tool)]
        return stats

    def ended_after(self, seq: int) -> list[ProcessInfo]:
        """Processes of this session started from outside (no parent) whose end was published
        after event `seq`, by PID: what a `wait` that began later still has to report. Those an
        earlier session left and `recover` or `kill` ended without running are not among them
        (that command reported them)."""
        table = self.table
        with table.lock:
            return sorted((table.snapshot(p) for p in table.procs.values()
                           if p.end_seq > seq and p.parent is None and p.phase is Phase.DONE
                           and p.pid not in self._retired),
                          key=lambda i: i.pid)

    # ------------------------------------------------------------------ waiting from outside

    def wait_each(self, pids: Iterable[int], timeout: float | None = None, *, include_paused: bool = False,
                  bus: Any = None) -> WaitWatch:
        """Follow `pids` to their ends: iterate the returned `WaitWatch` to get each snapshot as
        its process finishes (those already finished first). It stops when all have finished,
        after `timeout` seconds, or — unless `include_paused` — when every one left is paused or
        waits only for paused ones (nobody will wake them: a script that pauses a process and
        then waits must not hang). Afterwards `watch.left` holds the snapshots of those it stopped
        waiting for and `watch.reason` says why ("timeout", "paused")."""
        return WaitWatch(self, [as_pid(p) for p in pids], timeout, include_paused, bus or self.table.bus)

    def stuck(self, infos: Iterable[ProcessInfo]) -> list[ProcessInfo]:
        """Of these live processes, the ones that cannot go on until someone resumes something:
        paused, or waiting for dependencies that are all themselves stuck."""
        memo: dict[int, bool] = {}

        def is_stuck(info: ProcessInfo, depth: int = 0) -> bool:
            if info.pid in memo:
                return memo[info.pid]
            memo[info.pid] = False  # (a cycle is not a pause)
            if info.is_done:
                result = False
            elif info.phase is Phase.PAUSED:
                result = True
            elif info.phase is Phase.WAITING and info.after and depth < 100:
                deps = [self.info(d) for d in info.after]
                live = [d for d in deps if not d.is_done]
                result = bool(live) and all(is_stuck(d, depth + 1) for d in live)
            else:
                result = False
            memo[info.pid] = result
            return result

        return [i for i in infos if is_stuck(i)]

    def wait(self, pids: Iterable[int] | None = None, timeout: float | None = None) -> list[ProcessInfo]:
        """Block until the given processes (default: all live now) have finished, or `timeout`
        passes. Returns their snapshots; check `.is_done` to see which finished."""
        wanted = None if pids is None else [p if type(p) is int else as_pid(p) for p in pids]
        deadline = None if timeout is None else time.monotonic() + timeout
        earlier: dict[int, ProcessInfo] = {}
        table = self.table
        procs = table.procs
        if wanted is not None:
            absent = [p for p in wanted if p not in procs]
            for p in absent:  # finished: in an earlier session, or released from memory (retention)
                earlier[p] = self.info(p)  # unknown PIDs raise
        snapshot = table.snapshot
        with table.lock:
            if wanted is None:
                targets = list(table.live.values())
            else:
                targets = [proc for proc in map(procs.get, wanted) if proc is not None]
            table.wait_live(targets, timeout)
            done = {p.pid: snapshot(p) for p in targets}
        if wanted is None:
            return list(done.values())
        absent = [p for p in wanted if p not in done and p not in earlier]  # released since we looked
        for p in absent:
            earlier[p] = self.info(p)
        # Live but not ours: another llmunix owns the home (we are read-only). Follow the store.
        while any(not i.is_done for i in earlier.values()):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(0.1 if left is None else min(0.1, left))
            earlier = {p: i if i.is_done else self.info(p) for p, i in earlier.items()}
        return [done[p] if p in done else earlier[p] for p in wanted]

    # ------------------------------------------------------------------ recover, rollback

    def recover(self, pids: Iterable[int] | None = None) -> list[ProcessInfo]:
        """Continue interrupted processes: from their last checkpoint, or from scratch if the tool
        is idempotent; otherwise they end Failed ("interrupted; not resumable")."""
        store = self._owned_store("recover")
        store.flush()
        rows = {r["pid"]: r for r in store.interrupted_rows()}
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
        store = self._owned_store("rollback")
        pid = as_pid(pid)
        with self.table.lock:
            live = self.table.live.get(pid)
            shown = self.table.snapshot(live).display_state.lower() if live is not None else ""
        if live is not None:
            raise IllegalTransition(f"process {format_pid(pid)} is {shown}; "
                                    "kill it or wait for it before rolling back")
        self.flush()
        row = store.process_row(pid)
        if row is None:
            self.table.require(pid)
        versions = store.checkpoints(pid)
        if not versions:
            raise LlmunixError(f"process {format_pid(pid)} has no checkpoints to roll back to")
        numbers = [v for v, _t, _s in versions]
        version = numbers[-1] if to is None else to
        if version not in numbers:
            raise LlmunixError(f"process {format_pid(pid)} has no checkpoint version {version} "
                               f"(it has {numbers[0]}..{numbers[-1]})")
        return self._restart(row, checkpoint=version, how=f"rolled back to checkpoint {version}")

    def _owned_store(self, what: str) -> Store:
        if self.store is None:
            raise LlmunixError(f"{what} needs a home directory with a store")
        return self.store

    def _restart(self, row: Any, checkpoint: int | None, how: str) -> ProcessInfo:
        store = self._owned_store("recover")
        pid = row["pid"]
        versions = store.checkpoints(pid)
        if checkpoint is not None:
            versions = [v for v in versions if v[0] <= checkpoint]
        try:
            t = self.registry.get(row["tool"])
        except LlmunixError:
            t = None
        params = json.loads(row["params"] or "{}")
        action = "recover" if checkpoint is None else "rollback"
        if t is None or (not versions and not t.idempotent):
            reason = (f"interrupted; tool {row['tool']!r} is no longer available" if t is None
                      else "interrupted; not resumable (no checkpoint, and the tool is not idempotent)")
            return self._retire(row, Outcome.FAILED, reason, action=action, how=how)
        policy = json.loads(row["policy"]) if "policy" in row.keys() and row["policy"] else None  # noqa: SIM118
        timeout = policy.get("timeout") if isinstance(policy, dict) else None
        table = self.table
        with table.lock:
            restored = versions[-1][2] if versions else None
            proc = table.spawn_locked(
                t, params, Priority.parse(row["priority"] or "normal"), (), name=row["name"], parent=row["parent"],
                cwd=row["cwd"], pid=pid, restored=restored, checkpoints=[s for _v, _t, s in versions],
                timeout=timeout if isinstance(timeout, int | float) and timeout > 0 else None,
                note=f"{how}" + (f" from checkpoint {versions[-1][0]}" if versions and checkpoint is None else ""),
                # its retry/restart policies go on (attempts counted afresh): resilience's on_spawn
                options={"stored_policy": policy} if policy else None,
                event_data={"policy": policy} if policy else None,
            )
            self._forget_history(pid)
            self._retired.discard(pid)
            table.emit("process.restarted", proc, action=action, how=proc.history[0].details, resumed=True,
                       checkpoint=versions[-1][0] if versions else None)
            return table.snapshot(proc)

    def _retire(self, row: Any, outcome: Outcome, reason: str, *, action: str, how: str = "") -> ProcessInfo:
        """End an interrupted process of an earlier session without running it again."""
        try:
            t = self.registry.get(row["tool"])
        except LlmunixError:
            t = make_tool(_gone, name=row["tool"])
        table = self.table
        with table.lock:
            pid = row["pid"]
            proc = Process(pid, t, json.loads(row["params"] or "{}"), name=row["name"],
                           priority=Priority.parse(row["priority"] or "normal"), owner=row["owner"] or table.owner,
                           parent=row["parent"], after=tuple(json.loads(row["after"] or "[]")),
                           cwd=row["cwd"] or os.getcwd())
            table.adopt_locked(proc)
            self._retired.add(pid)
            self._forget_history(pid)
            table.emit("process.restarted", proc, action=action, how=how or reason, resumed=False, error=reason)
            table.finish_locked(proc, outcome, 1 if outcome is Outcome.FAILED else EXIT_CANCELLED, reason)
            return proc.snapshot()

    def dismiss(self, pid: int, reason: str = "dismissed by user") -> ProcessInfo:
        """End an Interrupted process of an earlier session as Cancelled without running it (`kill`
        of an interrupted process): it stops being reported as waiting for `recover`."""
        store = self._owned_store("dismissing an interrupted process")
        store.flush()
        row = store.process_row(as_pid(pid))
        if row is None or row["state"] != Outcome.INTERRUPTED:
            raise IllegalTransition(f"process {format_pid(as_pid(pid))} was not interrupted")
        return self._retire(row, Outcome.CANCELLED, reason, action="kill")

    def clean(self, pids: Iterable[int]) -> tuple[list[ProcessInfo], dict[int, str]]:
        """Take finished processes out of the listings (`clean`): `ps -a` no longer shows them;
        with a store their row, events and log stay (`ps -l PID`, `log PID`, the audit trail),
        without one they are forgotten. Returns the snapshots of those cleaned, and why each of
        the others was not (live, interrupted, already cleaned, no such process)."""
        table = self.table
        cleaned: list[ProcessInfo] = []
        refused: dict[int, str] = {}
        if self.store is not None:
            self.flush()  # ends so far are in the store: a cleaned row is never written after
        for pid in pids:
            try:
                info = self.info(pid)
            except LlmunixError as exc:
                refused[pid] = str(exc)
                continue
            if not info.is_done:
                refused[pid] = (f"process {info.process_id} is {info.display_state.lower()}; only finished "
                                "processes are cleaned (kill it or wait for it first)")
                continue
            if info.state == Outcome.INTERRUPTED:
                refused[pid] = (f"process {info.process_id} was interrupted: `recover {info.process_id}` "
                                f"continues it, `kill {info.process_id}` dismisses it")
                continue
            if self.store is not None:
                row = self.store.process_row(pid)
                if row is not None and row["cleaned"] is not None:
                    refused[pid] = f"process {info.process_id} was cleaned already"
                    continue
            with table.lock:
                proc = table.get(pid)
                if proc is not None:
                    table.release_locked(proc)
                self._forget_history(pid)
                table.bus.publish("process.cleaned", pid, {"state": info.state})
            cleaned.append(info)
        if self.store is not None and cleaned:
            self.flush()
        return cleaned, refused

    def _forget_history(self, pid: int) -> None:
        if self._history is not None:
            self._history.pop(pid, None)

    # ------------------------------------------------------------------ flush, gc, retention

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every event published so far is committed to the store: the bus delivers
        them to the store first (`store.flush()` alone misses those still on the bus). True if
        done in time; always True without a store."""
        if self.store is None:
            return True
        deadline = time.monotonic() + timeout
        return self.table.bus.flush(timeout, queued=False) and self.store.flush(max(0.0, deadline - time.monotonic()))

    def gc(self, days: float | None = None, keep: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
        """Compact finished processes now: those that finished more than `days` ago, or that are
        not among the newest `keep` finished ones (defaults: retention_days, retention_count),
        keep only their summary row; their events, log lines and checkpoints are deleted. Live
        and interrupted processes are never touched. The same `keep` bounds the finished
        processes held in memory. Returns counts: processes, events, checkpoints (compacted in
        the store) and released (dropped from memory; still listed from the store)."""
        self._owned_store("gc")
        if (days is not None and days < 0) or (keep is not None and keep < 0):
            raise LlmunixError("days and keep must not be negative")
        keep = self.retention_count if keep is None else int(keep)
        self.flush()  # what has finished so far is in the store before the pass
        job = self._compact(days, keep, wait=True, timeout=timeout)
        if job.error:
            raise LlmunixError(f"gc failed: {job.error}")
        with self.table.lock:
            released = 0 if self._history_loads else self._release_memory_locked(keep)
        return {**job.as_dict(), "released": released}

    def compaction_in_flight(self) -> Any:
        """The automatic compaction pass under way (its `done` event), or None."""
        return self._gc_job

    def _compact(self, days: float | None = None, keep: int | None = None, *, wait: bool,
                 timeout: float = 300.0) -> Any:
        assert self.store is not None
        days = self.retention_days if days is None else days
        keep = self.retention_count if keep is None else keep
        now = time.monotonic()
        with self.table.lock:
            self._finished_since_gc = 0
            self._last_gc = now
            # What ages out by time alone is swept by `gc`, at start, and at most every GC_INTERVAL
            # by the passes that come every GC_EVERY_FINISHED ends (it reads whole tables).
            sweep = wait or now - self._last_sweep >= GC_INTERVAL
            if sweep:
                self._last_sweep = now
        return self.store.compact(before=time.time() - days * 86400.0, keep=keep, protect=self._live_pids,
                                  wait=wait, timeout=timeout, sweep=sweep)

    def _live_pids(self) -> list[int]:
        with self.table.lock:
            return list(self.table.live)

    def _retain(self, seq: int) -> None:
        """Store writer thread, after a commit: bound the finished processes held in memory, and
        start an automatic compaction when enough have finished (or time has passed)."""
        table = self.table
        with table.lock:
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
            closed = table.closed
        if due and not busy and not closed:
            try:
                self._gc_job = self._compact(wait=False)
            except LlmunixError:  # the store is closing
                pass

    def _release_memory_locked(self, keep: int) -> int:
        """Drop the oldest finished processes from memory until `keep` remain, but only those
        whose terminal state is committed: from then on the store answers for them (`ps -a`,
        `info`, `log`, `wait`). Hold the lock."""
        released = 0
        finished = self._finished
        table = self.table
        while len(finished) > keep and finished[0][0] <= self._committed_seq:
            _seq, p = finished.popleft()
            if not table.release_locked(p):
                continue  # restarted since (rollback): the new Process is in the queue too
            if self._history is not None:
                info = p.snapshot()  # as slim as a store row: no history, no checkpoint
                self._history[p.pid] = replace(info, history=(),
                                               context=replace(info.context, intermediate_results=EMPTY))
            released += 1
        return released

    def _full(self, history: dict[int, ProcessInfo | PsRow], entries: list[tuple[int, ProcessInfo | PsRow]]
              ) -> list[ProcessInfo]:
        """Full snapshots of these history entries: the light ones are read whole from the store
        (one query) and kept in `history` from then on."""
        light = [pid for pid, i in entries if not isinstance(i, ProcessInfo)]
        if not light:
            return [i for _pid, i in entries]  # type: ignore[misc]
        assert self.store is not None
        rows = self.store.process_rows() if len(light) > 1000 else self.store.process_rows(pids=light)
        wanted = set(light)
        made = {r["pid"]: row_to_info(r) for r in rows if r["pid"] in wanted}
        with self.table.lock:
            if self._history is history:
                for pid, info in made.items():
                    if not isinstance(history.get(pid), ProcessInfo):
                        history[pid] = info
        return [i if isinstance(i, ProcessInfo) else made[pid] for pid, i in entries if pid in made or
                isinstance(i, ProcessInfo)]

    def _load_history(self) -> dict[int, ProcessInfo | PsRow]:
        """Processes of earlier sessions, from the store (built once; they do not change), as
        light `ps` rows until a full snapshot is asked for."""
        if self.store is None:
            return {}
        if self.read_only:  # the owner keeps changing it: read it afresh each time
            return {r["pid"]: row_to_info(r) for r in self.store.process_rows()}
        table = self.table
        if self._history is None:
            with table.lock:
                self._history_loads += 1  # no process leaves memory while its row may be read stale
            try:
                self.store.flush()
                with _gc_paused():  # 100,000 rows of small objects: no collection can free any
                    loaded = {r[0]: row_to_ps(r) for r in self.store.ps_rows()}
                with table.lock:
                    if self._history is None:
                        self._history = {pid: i for pid, i in loaded.items() if table.get(pid) is None}
            finally:
                with table.lock:
                    self._history_loads -= 1
        return self._history


class WaitWatch:
    """`DurableState.wait_each`: an iterator over snapshots of processes as they finish."""

    RECHECK = 1.0  # seconds between looks when no event arrives (a safety net; events drive it)

    def __init__(self, durable: DurableState, pids: list[int], timeout: float | None, include_paused: bool,
                 bus: Any) -> None:
        self.durable = durable
        self.pids = pids
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.include_paused = include_paused
        self.bus = bus
        self.left: list[ProcessInfo] = []
        self.reason = ""

    def __iter__(self) -> Iterator[ProcessInfo]:
        import queue as _queue

        durable = self.durable
        news: _queue.SimpleQueue[Any] = _queue.SimpleQueue()
        # Inline (it only queues): every end, and every pause (a pause may strand a waiter).
        sub = self.bus.subscribe("process.completed|process.failed|process.cancelled|process.paused",
                                 news.put)
        try:
            left: dict[int, ProcessInfo] = {}
            for pid in dict.fromkeys(self.pids):
                info = durable.info(pid)
                if info.is_done:
                    yield info
                else:
                    left[pid] = info
            while left:
                for pid in list(left):
                    info = durable.info(pid)
                    if info.is_done:
                        del left[pid]
                        yield info
                    else:
                        left[pid] = info
                if not left:
                    break
                if not self.include_paused and len(durable.stuck(left.values())) == len(left):
                    self.reason, self.left = "paused", list(left.values())
                    return
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline:
                    self.reason, self.left = "timeout", list(left.values())
                    return
                step = self.RECHECK if self.deadline is None else min(self.RECHECK, self.deadline - now)
                try:
                    news.get(timeout=step)
                    while True:  # take the burst: one look for all of it
                        news.get_nowait()
                except _queue.Empty:
                    pass
        finally:
            sub.cancel()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection while a listing allocates one row per process: with 100,000
    processes alive, the full collection those allocations can set off takes about 0.5 s, longer
    than the listing. (Rows hold no references back, so there is nothing for it to free.)"""
    if not _gcmod.isenabled():
        yield
        return
    _gcmod.disable()
    try:
        yield
    finally:
        _gcmod.enable()


def _gone(ctx: Any) -> None:
    raise ToolError("this tool is no longer available")

