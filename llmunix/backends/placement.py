"""Placement: where each process's body runs — here (a worker thread) or on the cluster — and
moving a live process from one to the other (`migrate PID --to dask|local`).

By default a body goes to the distributed backend when its tool is declared `remote=True` (and
the backend is `dask`). `migrate` overrides that for one process, for the rest of its life:

1. It asks the running attempt to stop, as a kill would but ending *Interrupted* (so the body
   sees `ctx.interrupted`, and a remote body is told to stop on its worker). Pause, preemption
   and off-slot waits are all places a stop reaches: the body leaves at its next control point.
2. `after_body` (this component's hook) sees the interrupted attempt and, instead of letting it
   end, runs the process again under its PID (`ProcessTable.requeue_locked`) with its new
   placement and `restored` = its last checkpoint: on a worker it goes on from there, here too.
   Work since that checkpoint is done again, as after a crash and `recover`.
3. The process keeps its PID, history, logs, checkpoints and children's links; a paused one
   stays paused (resume runs it in its new place). Events: `process.migrating` (asked),
   `process.migrated` (stopped where it was, queued in its new place).

Only a process that can continue is moved: one with a checkpoint, or whose tool is idempotent
(it starts over). One that has not started yet just changes placement. A kill (or a timeout)
that comes while it is being moved wins: it ends as killed. If the attempt completes before the
stop reaches it, it completes; if llmunix stops meanwhile, it ends Interrupted and `recover`
continues it (in its default placement).

State (under the table lock): `_where[pid]` ("dask" or "local", only for moved processes) and
`_moving[pid]` (a move asked for, not done yet). Both go when the process ends; a move also goes
when another feature runs the process again first (`on_attempt_end`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmunix.lifecycle import Hooks
from llmunix.models import IllegalTransition, LlmunixError, Outcome, Phase, ProcessInfo, as_pid, format_pid

if TYPE_CHECKING:
    from llmunix.backends import Backend
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process

PLACES = ("dask", "local")


@dataclass(slots=True)
class Move:
    to: str
    came_from: str
    asked: float  # monotonic


class Placement(Hooks):
    """See the module docstring. A component of the kernel (`kernel.placement`)."""

    def __init__(self, table: ProcessTable, backend: Backend) -> None:
        self.table = table
        self.backend = backend
        self._where: dict[int, str] = {}
        self._moving: dict[int, Move] = {}
        self._worker_of = getattr(backend, "worker_of", None) if backend.distributed else None
        if self._worker_of is not None:
            table.snapshot_field("worker", self._worker)  # a process moved here has no worker

    # ------------------------------------------------------------------ where

    def runs_remote(self, proc: Process) -> bool:
        """The table asks, as a body starts: does it go to the cluster?"""
        where = self._where.get(proc.pid)
        return proc.tool.remote if where is None else where == "dask"

    def where_locked(self, proc: Process) -> str:
        return "dask" if self.backend.distributed and self.runs_remote(proc) else "local"

    def _worker(self, proc: Process) -> str | None:
        if self._where.get(proc.pid) == "local" or self._worker_of is None:
            return None
        return self._worker_of(proc)

    # ------------------------------------------------------------------ migrate

    def migrate(self, pid: Any, to: str) -> ProcessInfo:
        """Move live process `pid` to `to` ("dask" or "local"); see the module docstring.
        Returns its snapshot as the move begins."""
        if to not in PLACES:
            raise LlmunixError(f"unknown place {to!r}; use one of: {', '.join(PLACES)}")
        table = self.table
        with table.lock:
            proc = table.require_live(pid, "migrate")
            table.register(self)  # (its hooks from the first migration on: none before it)
            here = self.where_locked(proc)
            name = f"{format_pid(proc.pid)} {proc.name}"
            if to == "dask" and not self.backend.distributed:
                raise LlmunixError(f"cannot migrate {name} to dask: llmunix runs with the {self.backend.name} backend; "
                                   "start it with --backend dask (or --scheduler ADDRESS), see docs/cluster.md")
            if to == "dask" and not proc.tool.remote:
                raise LlmunixError(f"cannot migrate {name} to dask: tool {proc.tool.name!r} is not declared "
                                   "remote=True (it may use what lives in this llmunix), see docs/cluster.md")
            move = self._moving.get(proc.pid)
            if move is not None:
                raise IllegalTransition(f"process {name} is already being moved to {move.to}")
            if here == to:
                raise IllegalTransition(f"process {name} already runs {'on dask' if to == 'dask' else 'here'}")
            if not proc.has_thread:  # not started (or between attempts): it starts in its new place
                self._where[proc.pid] = to
                proc.note("migrated", f"{here} -> {to} (before it started)")
                table.emit("process.migrated", proc, to=to, came_from=here, checkpoint=None, seconds=0.0)
                return table.snapshot(proc)
            if not proc.checkpoints and not proc.tool.idempotent:
                raise LlmunixError(f"cannot migrate {name}: it has made no checkpoint to go on from and its tool is "
                                   "not idempotent, so it would start over; try again after its first checkpoint")
            self._moving[proc.pid] = Move(to, here, time.monotonic())
            version = len(proc.checkpoints) or None
            proc.note("migrating", f"{here} -> {to}, " + (f"from checkpoint {version}" if version else "from scratch"))
            table.emit("process.migrating", proc, to=to, came_from=here, checkpoint=version)
            table.kill_locked(proc, False, f"migrating to {to}", Outcome.INTERRUPTED)
            return table.snapshot(proc)

    def wait_moved(self, pids: Iterable[int], timeout: float | None) -> bool:
        """Block (a non-process thread) until the moves of `pids` are done or abandoned."""
        wanted = [as_pid(p) for p in pids]
        with self.table.lock:
            return self.table.wait_until(lambda: not any(p in self._moving for p in wanted), timeout)

    def moving(self, pid: int) -> str | None:
        """Where process `pid` is being moved to, or None."""
        with self.table.lock:
            move = self._moving.get(pid)
            return None if move is None else move.to

    # ------------------------------------------------------------------ hooks (lock held)

    def after_body(self, proc: Process, outcome: Outcome, code: int | None, error: str | None,
                   output: Any) -> bool:
        move = self._moving.pop(proc.pid, None)
        if move is None:
            return False
        self.table.notify_done()  # wait_moved looks again
        if outcome is not Outcome.INTERRUPTED or proc.phase is Phase.DONE or self.table.closed \
                or proc.kill_reason != f"migrating to {move.to}":
            proc.note("not migrated", f"it ended {outcome.value.lower()} before it could move")
            return False  # it completed, failed, was killed, or llmunix is stopping: it ends as it would
        self._where[proc.pid] = move.to
        version = len(proc.checkpoints) or None
        self.table.restore_from_locked(proc, proc.checkpoints[-1] if proc.checkpoints else None)
        if version is None:
            self.table.reset_progress_locked(proc)
        paused = proc.phase is Phase.PAUSED
        detail = f"migrated to {move.to}; " + ("paused (resume runs it there)" if paused else "queued")
        self.table.requeue_locked(proc, 0.0, detail)
        seconds = round(time.monotonic() - move.asked, 4)
        proc.note("migrated", f"{move.came_from} -> {move.to}" + (f", from checkpoint {version}" if version else "")
                  + f" ({seconds:g}s to stop)")
        self.table.emit("process.migrated", proc, to=move.to, came_from=move.came_from, checkpoint=version,
                        seconds=seconds)
        return True

    def on_attempt_end(self, proc: Process) -> None:
        """Another feature runs it again (a retry or restart took the attempt the stop ended,
        e.g. a watchdog restart that came first): the move is moot."""
        if self._moving.pop(proc.pid, None) is not None:
            proc.note("not migrated", "it is being run again where it was")
            self.table.notify_done()

    def on_end(self, proc: Process) -> None:
        self._where.pop(proc.pid, None)
        if self._moving.pop(proc.pid, None) is not None:
            self.table.notify_done()
