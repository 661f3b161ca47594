"""The Kernel: the one facade over scheduler, executor, processes and events.

Everything that changes a process happens here, under one lock, through `_transition` (which
rejects moves the `ALLOWED` table does not list) and is published as an `Event`. Callers get
immutable `ProcessInfo` snapshots back, never a live `Process`.
"""

from __future__ import annotations

import gc
import getpass
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmunix.admission import ResourcePool
from llmunix.agents.kernel_mixin import Agents
from llmunix.backends import Backend, ClusterInfo, make_backend
from llmunix.executor import ThreadExecutor, inject_exception
from llmunix.home import HomeInUse, HomeLock
from llmunix.ipc.bus import EventBus
from llmunix.ipc.kernel_mixin import Communication
from llmunix.limits import PRESSURE_RECHECK, ResourceLimits
from llmunix.models import (
    ALLOWED,
    EXIT_CANCELLED,
    EXIT_TIMEOUT,
    STARTED_STATE,
    Event,
    IllegalTransition,
    LlmunixError,
    NoSuchProcess,
    Outcome,
    Phase,
    Priority,
    ProcessInfo,
    ProcessKilled,
    PsRow,
    ToolError,
    as_pid,
    format_pid,
)
from llmunix.observe.inspect_mixin import Inspection
from llmunix.observe.queries import EventQueries
from llmunix.observe.stats import ToolStats, empty_stats, summarize_runs
from llmunix.process import (
    REQ_KILL,
    REQ_PAUSE,
    REQ_PREEMPT,
    Process,
    ProcessContext,
    renice_group,
    signal_group,
    signal_tree,
)
from llmunix.resilience.kernel_mixin import Resilience
from llmunix.resilience.restart import RestartPolicy, policy_data
from llmunix.resources import ResourceSample, SystemSample
from llmunix.retry import RetryPolicy
from llmunix.scheduler import ADMISSION_LOOKAHEAD, ReadyQueue, preemption_victim
from llmunix.store import Store, row_to_info
from llmunix.store.durable import DurableState
from llmunix.tools.registry import REGISTRY, Tool, ToolRegistry, make_tool
from llmunix.workflows.kernel_mixin import Workflows

log = logging.getLogger("llmunix.kernel")

DEFAULT_MAX_RUNNING = 8
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_RETENTION_COUNT = 10_000


class PidAllocator:
    """Monotonic PIDs that are never reused, even across restarts.

    With a home directory, the high-water mark is kept in `<home>/pids`. PIDs are reserved in
    blocks so that spawning does not write to disk each time; a clean close records the exact
    next PID, and after a crash at most one block of numbers is skipped, never reused. Blocks
    grow while PIDs go fast (a block used up within a second: double it, up to MAX_BLOCK) and
    shrink back when they do not, so a burst of spawns costs about one fsync a second (each
    is made under the kernel lock) and a crash skips about a second's worth of numbers.
    """

    BLOCK = 64
    MAX_BLOCK = 65536

    def __init__(self, home: Path | None) -> None:
        self._path = home / "pids" if home is not None else None
        self._next = 1
        if self._path is not None and self._path.exists():
            try:
                self._next = max(1, int(self._path.read_text().strip() or "1"))
            except ValueError:
                raise LlmunixError(f"{self._path} is corrupt; it should hold the next PID") from None
        self._reserved = self._next
        self._block = self.BLOCK
        self._reserved_at = float("-inf")
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            pid = self._next
            self._next += 1
            if self._path is not None and self._next > self._reserved:
                now = time.monotonic()
                fast = now - self._reserved_at < 1.0
                self._block = min(self._block * 2, self.MAX_BLOCK) if fast else max(self._block // 2, self.BLOCK)
                self._reserved_at = now
                self._reserved = self._next + self._block
                self._write(self._reserved)
            return pid

    def peek(self) -> int:
        return self._next

    def close(self) -> None:
        if self._path is not None:
            with self._lock:
                self._write(self._next)

    def _write(self, value: int) -> None:
        assert self._path is not None
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{value}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)


class Kernel(DurableState, EventQueries, Inspection, ResourceLimits, Workflows, Agents, Communication,
             Resilience):
    """Spawn and steer processes. Thread-safe; usable without the shell.

    >>> with Kernel() as k:
    ...     pid = k.spawn("echo", text="hi")
    ...     k.wait([pid])[0].state
    'Completed'
    """

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        max_running: int = DEFAULT_MAX_RUNNING,
        max_threads: int | None = None,
        time_slice: float = 0.5,
        aging_interval: float = 5.0,
        kill_grace: float = 2.0,
        registry: ToolRegistry | None = None,
        monitor: bool = True,
        monitor_interval: float = 1.0,
        owner: str | None = None,
        store: bool = True,
        read_only: bool | None = None,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        retention_count: int = DEFAULT_RETENTION_COUNT,
        limits: Mapping[str, Any] | None = None,
        pool: ResourcePool | None = None,
        memory_pressure_mb: float | None = None,
        available_memory: Callable[[], float] | None = None,
        pause_idle_under_pressure: bool = False,
        deadlock_policy: str = "report",
        # resilience (llmunix/resilience): breakers, watchdog, chaos, health
        breaker_threshold: int = 5, breaker_cooldown: float = 30.0, stall_timeout: float = 60.0,
        stall_action: str = "alert", chaos: str | None = None, health_min_disk_mb: float = 100.0,
        backend: Backend | str | None = None,
    ) -> None:
        if max_running < 1:
            raise LlmunixError("max_running must be at least 1")
        if retention_days < 0 or retention_count < 0:
            raise LlmunixError("retention_days and retention_count must not be negative")
        # Where bodies of tools declared remote run (backends/); threads: here, like every other.
        self.backend = make_backend(backend)
        # Resource admission (limits.py): `limits` capacities on `pool` (default: the machine's);
        # `available_memory()` in MB is read to detect memory pressure (injectable for tests).
        self._init_admission(limits, pool, memory_pressure_mb, available_memory, pause_idle_under_pressure)
        self._init_workflows()
        self.home = Path(home) if home is not None else None
        # One llmunix writes a home; another opens it read-only (read_only=None: whichever applies).
        self.read_only = bool(read_only)
        self.home_owner: str | None = None
        self._home_lock: HomeLock | None = None
        if self.home is not None:
            self.home.mkdir(parents=True, exist_ok=True)
            if not read_only:
                lock = HomeLock(self.home)
                try:
                    lock.acquire()
                    self._home_lock = lock
                except HomeInUse as exc:
                    if read_only is False:
                        raise
                    self.read_only, self.home_owner = True, exc.owner
        elif read_only:
            raise LlmunixError("read-only mode needs a home directory")
        self.max_running = max_running
        self.time_slice = time_slice
        self.kill_grace = kill_grace
        self.registry = registry if registry is not None else REGISTRY
        self.owner = owner or f"{_user()}@llmunix"
        self._lock = threading.Lock()
        self._done_cond = threading.Condition(self._lock)
        self._procs: dict[int, Process] = {}
        self._live: dict[int, Process] = {}
        self._running: set[Process] = set()
        self._ready = ReadyQueue(aging_interval)
        self._pids = PidAllocator(self.home)
        self._closed = False
        self._cwd_cache: str | None = None
        self.bus = EventBus()
        self.store: Store | None = None
        self.interrupted_at_start = 0
        self._pending_release: list[tuple[int, Process]] = []  # (event seq, finished process)
        self._watchers: dict[int, list[Process]] = {}  # pid -> processes blocked until it ends (ctx.wait)
        self._history: dict[int, ProcessInfo] | None = None  # earlier sessions' processes, loaded lazily
        # Retention (see gc): finished processes in the order they finished, with the seq of their
        # terminal event; the oldest leave memory once that event is committed (the store has them).
        self.retention_days = float(retention_days)
        self.retention_count = int(retention_count)
        self._finished: deque[tuple[int, Process]] = deque()
        self._committed_seq = 0
        self._counted_seq = 0  # finishes up to this seq are counted in _finished_since_gc
        self._history_loads = 0  # loads in progress: memory is not released meanwhile
        self._finished_since_gc = 0
        self._last_gc = time.monotonic()
        self._gc_job: Any = None  # the automatic compaction in flight, if any
        if self.home is not None and store and self.read_only:
            db = self.home / "llmunix.db"
            self.store = Store(db, read_only=True) if db.exists() else None
        elif self.home is not None and store:
            self.store = Store(self.home / "llmunix.db")
            self.interrupted_at_start = self.store.interrupted_at_start
            self.bus.subscribe("*", self.store.consume)
            self.store.on_commit(self._on_commit)
            self.store.on_commit(self._retain)
            self._gc_job = self._compact(wait=False)  # the first automatic pass, in the background
        self._init_communication(deadlock_policy)  # ipc/kernel_mixin.py: mailboxes, primitives, shared memory
        self._init_resilience(breaker_threshold=breaker_threshold, breaker_cooldown=breaker_cooldown,
                              stall_timeout=stall_timeout, stall_action=stall_action, chaos=chaos,
                              health_min_disk_mb=health_min_disk_mb)
        self._executor = ThreadExecutor(self._execute, max_threads or max(64, 4 * max_running))
        self.backend.bind(self)
        self._remote = self.backend if self.backend.distributed else None
        self._monitor = None
        if monitor:
            from llmunix.resources import Monitor

            self._monitor = Monitor(self, monitor_interval)
            self._monitor.start()
        import llmunix.tools.builtin  # noqa: F401 - registers the built-in tools
        import llmunix.workflows.runner  # noqa: F401 - registers the workflow process body

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def spawn(
        self,
        tool: str | Tool | Callable[..., Any],
        /,
        *,
        priority: Priority | str = Priority.NORMAL,
        after: Iterable[int] = (),
        name: str | None = None,
        parent: int | None = None,
        cwd: str | None = None,
        params: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        restart: RestartPolicy | str | None = None,
        **kwargs: Any,
    ) -> int:
        """Start `tool` (a registered name, a Tool, or a callable taking `ctx` first) as a new
        process and return its PID. Tool parameters come as keyword arguments, or as the
        `params` mapping when a name clashes with spawn's own (`name`, `priority`, ...).
        They are validated now: a bad one raises LlmunixError. `needs` are the resources it
        must hold to run (`{"memory_mb": 500, "gpu": 1}`), over the tool's own defaults. After
        `timeout` seconds of running time it is stopped and ends Failed ("timed out after 30s").
        `retry` and `restart` run it again under the same PID when an attempt fails or ends
        (llmunix/resilience/restart.py); the timeout is then per attempt."""
        self._writable()
        if timeout is not None and not timeout > 0:
            raise LlmunixError(f"timeout must be a positive number of seconds, not {timeout!r}")
        attempts = self._policies(retry, restart)  # resilience: retry/restart policies, checked first
        t = self._resolve_tool(tool)
        validated = t.validate({**(params or {}), **kwargs})
        wants, predicted = self._needs_for(t, needs)
        prio = Priority.parse(priority)
        deps = tuple(dict.fromkeys(int(a) for a in after))
        with self._lock:
            pid = self._spawn_locked(t, validated, prio, deps, name=name, parent=parent, cwd=cwd,
                                     needs=(wants, predicted), timeout=timeout, policy=policy_data(attempts))
            self._set_policies_locked(self._procs[pid], attempts)  # resilience
            return pid

    def _spawn_locked(self, t: Tool, params: dict[str, Any], prio: Priority, deps: tuple[int, ...], *,
                      name: str | None, parent: int | None, cwd: str | None, pid: int | None = None,
                      restored: Any = None, checkpoints: list[Any] | None = None, note: str = "",
                      needs: tuple[dict[str, float], tuple[str, ...]] | None = None,
                      timeout: float | None = None, policy: dict[str, Any] | None = None) -> int:
        """Create a process (a new PID, or an old one being recovered) and queue it. `policy` is
        its retry/restart policies as data (resilience/restart.py `policy_data`), stored for recover."""
        if self._closed:
            raise LlmunixError("the kernel has shut down; no new processes")
        for a in deps:
            if not self._known(a):
                raise NoSuchProcess(f"no process {format_pid(a)} to run after; `ps -a` lists them")
        if parent is not None and not self._known(parent):
            raise NoSuchProcess(f"no parent process {format_pid(parent)}")
        if pid is None:
            pid = self._pids.next()
        proc = Process(pid, t, params, name=name or t.name, priority=prio, owner=self.owner,
                       parent=parent, after=deps, cwd=cwd or self._cwd())
        proc.restored = restored
        proc.checkpoints = list(checkpoints or [])
        proc.needs, proc.predicted = needs if needs is not None else (dict(t.needs), ())
        proc.timeout = timeout
        self._procs[pid] = proc
        self._live[pid] = proc
        up = self._live.get(parent) if parent is not None else None
        if up is not None:
            up.children.add(proc)
        if self._history is not None:
            self._history.pop(pid, None)
        proc.note("spawned", note or f"{t.name} priority={prio.label}")
        self._emit("process.spawned", proc, tool=t.name, priority=prio.label, kind=str(proc.kind),
                   owner=proc.owner, parent=parent, after=list(deps), cwd=proc.cwd, params=params,
                   idempotent=t.idempotent, **({"policy": policy} if policy else {}))
        failed = None
        for a in deps:
            dep = self._procs.get(a)
            if dep is None or dep.phase is Phase.DONE:
                state = dep.state if dep is not None else self._history_state(a)
                if state != Outcome.COMPLETED:
                    failed = (a, state)
                    break
            else:
                proc.deps_pending.add(a)
                dep.dependents.append(proc)
        now = time.monotonic()
        never = self.pool.never_fits(proc.needs) if proc.needs else None
        if up is not None and up.requests & REQ_KILL:  # its parent is being stopped: so is it
            self._finish_locked(proc, Outcome(up.kill_outcome), _exit_for(Outcome(up.kill_outcome)),
                                f"parent {format_pid(up.pid)} was stopping")
        elif never is not None:
            self._finish_locked(proc, Outcome.FAILED, 1, never)
        elif failed is not None:
            self._finish_locked(proc, Outcome.FAILED, 1, f"dependency failed: {format_pid(failed[0])} {failed[1]}")
        elif proc.deps_pending:
            proc.phase = Phase.WAITING
            proc.detail = self._waiting_detail(proc)
        else:
            self._ready.push(proc, now)
        if up is not None and proc.phase is not Phase.DONE and (up.phase is Phase.PAUSED or up.requests & REQ_PAUSE):
            self._pause_locked(proc)  # a paused parent starts nothing new
            proc.paused_by = up.paused_by or up.pid
        self._dispatch_locked(now)
        return pid

    def kill(self, pid: int, force: bool = False, *, reason: str = "killed by user",
             interrupt: bool = False) -> ProcessInfo:
        """Stop a process. Cooperative code stops at its next control point; code that never
        reaches one gets an asynchronous exception after the grace period (at once with
        `force`); a subprocess group gets SIGTERM, then SIGKILL. With `interrupt` the process
        ends Interrupted instead of Cancelled: recoverable (llmunix itself is stopping)."""
        self._writable()
        outcome = Outcome.INTERRUPTED if interrupt else Outcome.CANCELLED
        with self._lock:
            proc = self._live_process(pid, "kill")
            children = self._descendants_locked(proc)
            self._kill_locked(proc, force, reason, outcome)
            info = proc.snapshot()
        for child in children:  # after the parent is flagged, so it starts no new ones meanwhile
            with self._lock:
                if child.phase is not Phase.DONE:
                    self._kill_locked(child, force, reason, outcome)
        return info

    def _kill_locked(self, proc: Process, force: bool, reason: str, outcome: Outcome) -> None:
        """Ask a live process to stop (see `kill`); it ends as `outcome`. Hold the lock."""
        if proc.requests & REQ_KILL and not force:
            return
        proc.note("kill requested", reason + (" (force)" if force else ""))
        proc.kill_outcome = outcome
        if not proc.has_thread:
            self._emit("process.kill_requested", proc, reason=reason, force=force)
            self._finish_locked(proc, outcome, _exit_for(outcome), reason)
            self._dispatch_locked(time.monotonic())
            return
        proc.requests |= REQ_KILL
        proc.kill_reason = reason
        proc.detail = "stopping (kill requested)"
        self._emit("process.kill_requested", proc, reason=reason, force=force)
        if proc.subprocess is not None:
            signal_tree(proc.subprocess, signal.SIGKILL if force else signal.SIGTERM)
        self._wake(proc)
        timer = threading.Timer(0 if force else self.kill_grace, self._escalate, (proc, 1))
        timer.daemon = True
        timer.start()

    def _descendants_locked(self, proc: Process) -> list[Process]:
        """Live processes below `proc` in the parent tree, parents before children (each process
        keeps its live children, so this costs the size of the tree, not of the process table)."""
        out: list[Process] = []
        todo = [proc]
        while todo:
            for c in sorted(todo.pop().children, key=lambda c: c.pid):
                out.append(c)
                todo.append(c)
        return out

    def pause(self, pid: int) -> ProcessInfo:
        """Pause a process. A running one stops at its next control point (a subprocess tool at
        once, with SIGSTOP to its group) and gives its slot back."""
        self._writable()
        with self._lock:
            proc = self._live_process(pid, "pause")
            if proc.phase is Phase.PAUSED or proc.requests & REQ_PAUSE:
                raise IllegalTransition(f"process {format_pid(pid)} is already paused")
            self._pause_locked(proc)
            for child in self._descendants_locked(proc):  # a workflow's steps, an agent's tools
                if child.phase is not Phase.PAUSED and not child.requests & REQ_PAUSE:
                    self._pause_locked(child)
                    child.paused_by = proc.pid
            return proc.snapshot()

    def _pause_locked(self, proc: Process) -> None:
        """Pause a live process that is not paused yet (see `pause`). Mutates: hold the lock."""
        now = time.monotonic()
        if proc.phase is Phase.RUNNING:
            if proc.subprocess is not None and proc.in_body:
                self._leave_slot(proc, Phase.PAUSED, now)
                self._paused(proc)
                self._dispatch_locked(now)
            else:
                proc.requests |= REQ_PAUSE
                proc.detail = "pausing at its next control point"
                proc.note("pause requested")
                self._emit("process.pause_requested", proc)
                self._wake(proc)
        else:
            self._ready.remove(proc)
            self._transition(proc, Phase.PAUSED)
            if proc.run_since is not None:  # blocked off-slot: its clock stops now
                proc.run_accum += now - proc.run_since
                proc.run_since = None
            self._paused(proc)

    def resume(self, pid: int) -> ProcessInfo:
        """Resume a paused process (or cancel a pause that has not taken effect yet)."""
        self._writable()
        with self._lock:
            proc = self._live_process(pid, "resume")
            if not (proc.phase is Phase.PAUSED or (proc.phase is Phase.RUNNING and proc.requests & REQ_PAUSE)):
                raise IllegalTransition(
                    f"process {format_pid(pid)} is not paused (it is {proc.snapshot().display_state})"
                )
            self._resume_locked(proc)
            for child in self._descendants_locked(proc):  # those its pause paused, not others
                if child.paused_by == proc.pid:
                    child.paused_by = None
                    if child.phase is Phase.PAUSED or child.requests & REQ_PAUSE:
                        self._resume_locked(child)
            return proc.snapshot()

    def _resume_locked(self, proc: Process) -> None:
        """Resume a paused process, or cancel its pending pause (see `resume`). Hold the lock."""
        now = time.monotonic()
        if proc.phase is Phase.RUNNING and proc.requests & REQ_PAUSE:
            proc.requests &= ~REQ_PAUSE
            proc.detail = "running"
            proc.note("pause cancelled")
            self._emit("process.pause_cancelled", proc)
            return
        if proc.deps_pending:
            self._transition(proc, Phase.WAITING)
            proc.detail = self._waiting_detail(proc)
        elif proc.has_thread:
            self._transition(proc, Phase.PREEMPTED)
            proc.detail = "resumed; waiting for a slot"
            self._ready.push(proc, now, front=True)
        else:
            self._transition(proc, Phase.READY)
            proc.detail = "queued"
            self._ready.push(proc, now)
        proc.note("resumed")
        self._emit("process.resumed", proc)
        self._dispatch_locked(now)

    def renice(self, pid: int, priority: Priority | str) -> ProcessInfo:
        """Change a live process's priority level; may cause preemption."""
        self._writable()
        prio = Priority.parse(priority)
        with self._lock:
            proc = self._live_process(pid, "change the priority of")
            old = proc.priority
            now = time.monotonic()
            if proc.queue_token:
                self._ready.remove(proc)
                proc.priority = prio
                self._ready.push(proc, now, front=proc.phase is Phase.PREEMPTED, keep_age=True)
            else:
                proc.priority = prio
            if proc.subprocess is not None:
                renice_group(proc.subprocess, prio)
            proc.note("priority", f"{old.label} -> {prio.label}")
            self._emit("process.reniced", proc, old=old.label, new=prio.label)
            self._dispatch_locked(now)
            return proc.snapshot()

    def wait(self, pids: Iterable[int] | None = None, timeout: float | None = None) -> list[ProcessInfo]:
        """Block until the given processes (default: all live now) have finished, or `timeout`
        passes. Returns their snapshots; check `.is_done` to see which finished."""
        wanted = None if pids is None else [as_pid(p) for p in pids]
        deadline = None if timeout is None else time.monotonic() + timeout
        earlier: dict[int, ProcessInfo] = {}
        if wanted is not None:
            with self._lock:
                absent = [p for p in wanted if p not in self._procs]
            for p in absent:  # finished: in an earlier session, or released from memory (retention)
                earlier[p] = self.info(p)  # unknown PIDs raise
        with self._lock:
            if wanted is None:
                targets = list(self._live.values())
            else:
                found = [(p, self._procs.get(p)) for p in wanted if p not in earlier]
                targets = [proc for _p, proc in found if proc is not None]
                absent = [p for p, proc in found if proc is None]  # released since we looked
            i = 0

            def all_done() -> bool:
                nonlocal i  # done is permanent, so never look at a finished one twice
                while i < len(targets) and targets[i].phase is Phase.DONE:
                    i += 1
                return i == len(targets)

            self._done_cond.wait_for(all_done, timeout)
            done = {p.pid: self._snapshot(p) for p in targets}
        if wanted is None:
            return list(done.values())
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

    def info(self, pid: int) -> ProcessInfo:
        with self._lock:
            proc = self._procs.get(as_pid(pid))
            if proc is not None:
                return self._snapshot(proc)
        info = self._historic(pid)
        if info is None:
            self._process(pid)  # raises NoSuchProcess with the usual message
        assert info is not None
        return self._with_checkpoint(info)  # an agent's or workflow's last checkpoint, as when live

    def ps(self, all: bool = False, state: str | None = None) -> list[ProcessInfo]:  # noqa: A002
        """Snapshots of live processes (all=True: finished ones too), by PID. `state` filters
        on the visible state or the phase, case-insensitively."""
        if self.read_only:
            rows = self.store.process_rows() if all else self.store.live_rows() if self.store else []
            infos = [row_to_info(r) for r in rows]
            if state:
                want = state.strip().lower()
                infos = [i for i in infos if want in (i.display_state.lower(), i.phase, i.state.lower())]
            return infos
        history = self._load_history() if all else {}
        with self._lock:
            procs = self._procs if all else self._live
            infos = [self._snapshot(p) for p in procs.values()]
            if history:  # under the lock: the store writer thread adds processes released from memory
                infos.extend(i for pid, i in history.items() if pid not in self._procs)
        if history:
            infos.sort(key=lambda i: i.pid)
        if state:
            want = state.strip().lower()
            infos = [i for i in infos if i.display_state.lower() == want or i.phase == want
                     or i.state.lower() == want]
        return infos

    def ps_rows(self, all: bool = False, state: str | None = None) -> list[PsRow]:  # noqa: A002
        """What `ps(all, state)` lists, as light rows of the columns `ps` prints: no snapshot is
        built (a listing of 100,000 finished processes stays well under 0.2 s)."""
        if self.read_only:
            return [i.ps_row() for i in self.ps(all, state)]
        history = self._load_history() if all else {}
        now = time.monotonic()
        with self._lock, _gc_paused():
            procs = self._procs if all else self._live
            rows = [p._row or p.ps_row(now) for p in procs.values()]
            if history:  # under the lock: the store writer thread adds processes released from memory
                rows.extend(i.ps_row() for pid, i in history.items() if pid not in self._procs)
        if history:
            rows.sort()  # by PID, its first field (PIDs are unique)
        if state:
            want = state.strip().lower()
            rows = [r for r in rows if r.display_state.lower() == want or r.phase == want or r.state.lower() == want]
        return rows

    def exists(self, pid: int) -> bool:
        return self._known(pid)

    def _cwd(self) -> str:
        # os.getcwd() is a system call that releases the GIL: under the kernel lock it made
        # threads queue behind each other. The shell's working directory rarely changes.
        if self._cwd_cache is None:
            self._cwd_cache = os.getcwd()
        return self._cwd_cache

    def _writable(self) -> None:
        if self.read_only:
            raise LlmunixError(f"read-only: {self.home} is in use by llmunix pid {self.home_owner}; "
                               "only ps, log, events and audit work here")

    def live_pids(self) -> list[int]:
        with self._lock:
            return list(self._live)

    def samples(self, pid: int) -> list[ResourceSample]:
        """The monitor's recent measurements of a process, oldest first (empty if none yet)."""
        with self._lock:
            proc = self._procs.get(as_pid(pid))
            if proc is None:
                self.info(pid)  # unknown PIDs raise; earlier sessions' have no samples
                return []
            return list(proc.samples or ())

    def system(self) -> list[SystemSample]:
        """Recent measurements of the whole machine, oldest first (empty without a monitor)."""
        return list(self._monitor.system) if self._monitor is not None else []

    def recent(self, seconds: float = 5.0) -> list[ProcessInfo]:
        """Live processes and those that finished in the last `seconds`, by PID (what `top` lists)."""
        if self.read_only:
            return self.ps()
        cutoff = time.time() - seconds
        with self._lock:
            procs = dict(self._live)
            if self.store is not None:  # finished processes are kept in the order they finished
                for _seq, p in reversed(self._finished):
                    if p.finished is None or p.finished < cutoff:
                        break
                    procs.setdefault(p.pid, p)
            else:
                procs.update((p.pid, p) for p in self._procs.values()
                             if p.finished is not None and p.finished >= cutoff)
            infos = [self._snapshot(p) for p in procs.values()]
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

    @property
    def monitor_interval(self) -> float | None:
        return self._monitor.interval if self._monitor is not None else None

    @monitor_interval.setter
    def monitor_interval(self, seconds: float) -> None:
        if seconds <= 0:
            raise LlmunixError("the monitor interval must be greater than 0")
        if self._monitor is not None:
            self._monitor.set_interval(seconds)

    def set_max_running(self, n: int) -> None:
        if n < 1:
            raise LlmunixError("max_running must be at least 1")
        with self._lock:
            self.max_running = n
            self._dispatch_locked(time.monotonic())

    def cluster(self) -> ClusterInfo:
        """Where process bodies run: the backend and, for a cluster, its workers and which
        processes run on each."""
        return self.backend.cluster()

    @property
    def next_pid(self) -> int:
        return self._pids.peek()

    @property
    def threads(self) -> int:
        return self._executor.thread_count

    def shutdown(self, reason: str = "kernel shut down", timeout: float = 10.0, *,
                 interrupt: bool | None = None) -> list[ProcessInfo]:
        """Stop every live process, then the threads. With a store (or `interrupt=True`) they end
        Interrupted, to be continued by `recover`; without one they end Cancelled with `reason`.
        Returns the snapshots of the processes it had to stop."""
        if interrupt is None:
            interrupt = self.store is not None
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            live = list(self._live)
        stopped = self._stop_all(live, reason, Outcome.INTERRUPTED if interrupt else Outcome.CANCELLED)
        infos = self.wait(live, timeout=timeout) if live else []
        for info in infos:
            if not info.is_done:
                try:
                    self.kill(info.pid, force=True, reason=reason, interrupt=interrupt)
                except LlmunixError:
                    pass
        if live:
            infos = self.wait(live, timeout=2.0)
        if self._monitor is not None:
            self._monitor.stop()
        self._executor.shutdown(timeout=1.0)
        self._ipc_shutdown()
        self.backend.close()
        self.bus.flush(timeout=5.0)
        self.bus.close()
        if self.store is not None:
            self.store.close()
        if not self.read_only:
            self._pids.close()
        if self._home_lock is not None:
            self._home_lock.release()
        return infos if stopped else []

    def _stop_all(self, pids: list[int], reason: str, outcome: Outcome) -> int:
        """Ask every one of `pids` still live to stop, as `kill` would (parents before their
        children, as PIDs mostly grow; nothing new starts meanwhile), in batches under the lock
        and without building snapshots: shutdown may cancel 100,000 queued processes, and each
        `kill` would build one and lock apart. Returns how many were asked."""
        if self.read_only:
            return 0
        asked = 0
        for start in range(0, len(pids), 1000):  # let others have the lock between batches
            with self._lock:
                for pid in pids[start:start + 1000]:
                    proc = self._live.get(pid)
                    if proc is not None and proc.phase is not Phase.DONE:
                        self._kill_locked(proc, False, reason, outcome)
                        asked += 1
        return asked

    # ------------------------------------------------------------------ called by ProcessContext

    def _slice_expired(self, proc: Process) -> bool:
        return bool(self._ready._count) and time.monotonic() - proc.slice_start >= self.time_slice

    def _control_point(self, proc: Process) -> None:
        with self._lock:
            self._control_point_locked(proc)
            proc.last_active = time.monotonic()  # the watchdog's sign of life (resilience/watchdog.py)

    def _control_point_locked(self, proc: Process) -> None:
        """Honour pending requests. Blocks while paused or preempted; raises ProcessKilled."""
        while True:
            if proc.requests & REQ_KILL:
                raise ProcessKilled(proc.kill_reason)
            if proc.phase is Phase.RUNNING:
                now = time.monotonic()
                if proc.requests & REQ_PAUSE:
                    proc.requests &= ~REQ_PAUSE
                    self._leave_slot(proc, Phase.PAUSED, now)
                    self._paused(proc, deferred=True)  # requested earlier: process.pause_requested
                    self._dispatch_locked(now)
                    continue
                if proc.requests & REQ_PREEMPT:
                    self._leave_slot(proc, Phase.PREEMPTED, now)
                    self._ready.push(proc, now, front=True)
                    proc.detail = "preempted by a higher-priority process"
                    proc.note("preempted")
                    self._emit("process.preempted", proc, reason="priority")
                    self._dispatch_locked(now)
                    continue
                if proc.debug and self._debug_control_point_locked(proc, now):
                    continue  # stopped by a breakpoint (observe/debug_mixin.py)
                if (now - proc.slice_start >= self.time_slice
                      and self._slot_wanted(proc.priority, now)):
                    self._leave_slot(proc, Phase.PREEMPTED, now)
                    self._ready.push(proc, now)
                    proc.detail = "time slice used; waiting for its turn"
                    self._emit("process.preempted", proc, reason="time slice")
                    self._dispatch_locked(now)
                    continue
                return
            # Paused or preempted. The dispatch above may already have handed the slot back
            # (phase RUNNING again): then the loop goes on without waiting for a wake-up that
            # was sent before we waited.
            self._cond(proc).wait()

    def _sleep(self, proc: Process, seconds: float) -> None:
        """Sleep `seconds` of running time; paused time does not count."""
        remaining = seconds
        with self._lock:
            self._control_point_locked(proc)
            while remaining > 0:
                t0 = time.monotonic()
                proc.last_active = t0 + remaining  # asleep on purpose: alive until it is due (watchdog)
                self._cond(proc).wait(remaining)
                remaining -= time.monotonic() - t0
                self._control_point_locked(proc)

    def _progress(self, proc: Process, step: int, total: int | None, message: str) -> None:
        with self._lock:
            proc.last_active = time.monotonic()  # the watchdog's sign of life
            proc.step = step
            proc.total = total
            proc.message = message
            if total:
                proc.percentage = min(100.0, 100.0 * step / total)
                ran = proc.runtime(time.monotonic())
                proc.eta = ran * (total - step) / step if step > 0 else None
            if message:
                proc.note("progress", message)
            event = self._emit("process.progress", proc, step=step, total=total, percentage=proc.percentage,
                               message=message)
        if self.store is not None:
            self.store.throttle(event.seq)

    def _log(self, proc: Process, message: str) -> None:
        with self._lock:
            proc.last_active = time.monotonic()  # the watchdog's sign of life
            proc.logs.append((time.time(), message))
            event = self._emit("process.log", proc, line=message)
        if self.store is not None:
            self.store.throttle(event.seq)  # a flood of lines waits for the store, not memory

    def _checkpoint(self, proc: Process, state: Any) -> tuple[int, int]:
        with self._lock:
            proc.last_active = time.monotonic()  # the watchdog's sign of life
            proc.checkpoints.append(state)
            version = len(proc.checkpoints)
            proc.note("checkpoint", f"version {version}")
            event = self._emit("process.checkpoint", proc, version=version, state=state)
            return version, event.seq

    def _wait_durable(self, seq: int) -> None:
        if self.store is not None and not self.store.wait_durable(seq, timeout=60):
            log.error("event %d was not committed within 60 s", seq)

    def _on_commit(self, seq: int) -> None:
        """Store writer thread, after a commit: release what waited for those terminal states."""
        with self._lock:
            if not self._pending_release or self._pending_release[0][0] > seq:
                return
            ready = [p for s, p in self._pending_release if s <= seq]
            self._pending_release = [(s, p) for s, p in self._pending_release if s > seq]
            for p in ready:
                self._release_dependents_locked(p)
            self._dispatch_locked(time.monotonic())

    def _attach_subprocess(self, proc: Process, child: Any) -> None:
        with self._lock:
            proc.subprocess = child
            renice_group(child, proc.priority)
            proc.note("subprocess", f"pid {child.pid}")
            self._emit("process.subprocess", proc, os_pid=child.pid)
            if proc.phase is not Phase.RUNNING:
                signal_group(child, signal.SIGSTOP)
            if proc.requests & REQ_KILL:
                signal_group(child, signal.SIGTERM)

    def logs(self, pid: int) -> list[tuple[float, str]]:
        with self._lock:
            proc = self._procs.get(as_pid(pid))
            if proc is not None:
                return list(proc.logs)
        self.info(pid)  # unknown PIDs raise
        return self.store.log_lines(as_pid(pid)) if self.store is not None else []

    # ------------------------------------------------------------------ internals (lock held)

    def _emit(self, type: str, proc: Process, **data: Any) -> Event:
        data.setdefault("name", proc.name)
        return self.bus.publish(type, proc.pid, data)

    def _transition(self, proc: Process, to: Phase) -> None:
        if to not in ALLOWED[proc.phase]:
            raise IllegalTransition(
                f"process {format_pid(proc.pid)} cannot go from {proc.phase} to {to}"
            )
        proc.phase = to
        proc._snapshot = None

    def _snapshot(self, proc: Process) -> ProcessInfo:
        if proc.queue_token:
            return proc.snapshot(self._ready.effective(proc, time.monotonic()))
        return proc.snapshot()

    def _process(self, pid: int) -> Process:
        try:
            return self._procs[int(pid)]
        except (KeyError, ValueError, TypeError):
            raise NoSuchProcess(f"no process {_pid_text(pid)}; `ps -a` lists them") from None

    def _live_process(self, pid: int, action: str) -> Process:
        proc = self._procs.get(as_pid(pid))
        if proc is None:
            info = self._historic(pid)  # finished in an earlier session, or released from memory
            if info is not None:
                raise IllegalTransition(
                    f"cannot {action} process {format_pid(info.pid)}: it has already finished ({info.state})")
            proc = self._process(pid)
        if proc.phase is Phase.DONE:
            raise IllegalTransition(
                f"cannot {action} process {format_pid(proc.pid)}: it has already finished ({proc.state})"
            )
        return proc

    def _waiting_detail(self, proc: Process) -> str:
        return "waiting for " + ", ".join(format_pid(d) for d in sorted(proc.deps_pending))

    def _cond(self, proc: Process) -> threading.Condition:
        """The process's condition (on the kernel lock), made the first time it has to wait."""
        if proc.cond is None:
            proc.cond = threading.Condition(self._lock)
        return proc.cond

    def _wake(self, proc: Process) -> None:
        if proc.cond is not None:
            proc.cond.notify_all()

    def _paused(self, proc: Process, **data: Any) -> None:
        proc.detail = "paused: memory pressure" if proc.pid in self._pressure_paused else "paused by user"
        proc.note("paused")
        self._emit("process.paused", proc, **data)

    def _leave_slot(self, proc: Process, to: Phase, now: float) -> None:
        """A running process stops running (paused or preempted); its slot is freed."""
        self._transition(proc, to)
        proc.requests &= ~REQ_PREEMPT  # whatever stops it also answers a pending preemption
        self._running.discard(proc)
        self._release(proc)
        if proc.run_since is not None:
            proc.run_accum += now - proc.run_since
            # Blocked (waiting for children, a message, a lock) still counts as running time; it
            # is the work's own wait. Paused and preempted time does not.
            proc.run_since = now if to is Phase.WAITING else None
        if proc.subprocess is not None and to is not Phase.WAITING:
            signal_group(proc.subprocess, signal.SIGSTOP)

    def _dispatch_locked(self, now: float, spare_threads: int = 0) -> None:
        """Fill free slots from the ready queue; ask for preemption if someone outranks a
        running process and no slot is free. `spare_threads`: worker threads about to become
        idle (the caller's own, when a body has just ended). Mutates: hold the lock."""
        ready = self._ready
        if self._closed:
            return  # shutting down: nothing new starts, even when slots free up
        if ready._count and now - self._pressure_read >= PRESSURE_RECHECK:
            self._maybe_read_pressure(now)
        while len(self._running) < self.max_running and ready._count:
            proc = ready.peek(now)
            if proc is None:
                break
            head = proc
            if proc.needs or self._pressure.on or self._degraded:  # (degraded mode defers too: resilience)
                proc = self._admissible(head, now)  # needs must fit the pool (scheduler.py: Admission)
                if proc is None:
                    break
            if not proc.has_thread and self._executor.available() + spare_threads <= 0:
                # Threads are a soft bound, never a deadlock (a process holding one while not
                # running, preempted or waiting for its children, must not block the others):
                # run a queued process that already has its thread, else grow past the cap.
                holder = self._thread_holder(proc, now)
                if holder is not None:
                    proc = holder
                else:
                    self._executor.over_cap()
            if proc is head:
                ready.pop(proc)
            else:
                ready.remove(proc)
            self._acquire(proc)
            self._transition(proc, Phase.RUNNING)
            self._running.add(proc)
            proc.slice_start = now
            if proc.run_since is not None:  # back from an off-slot wait, whose time counts
                proc.run_accum += now - proc.run_since
            proc.run_since = now
            if proc.has_thread:
                proc.detail = "running"
                if proc.subprocess is not None:
                    signal_group(proc.subprocess, signal.SIGCONT)
                proc.note("continued")
                self._emit("process.continued", proc)
                self._wake(proc)
            else:
                proc.has_thread = True
                proc.state = STARTED_STATE[proc.kind]
                proc.detail = "starting"
                self._executor.start(proc)
        if ready._count and len(self._running) >= self.max_running:
            if any(p.requests & REQ_PREEMPT for p in self._running):
                return  # one preemption at a time
            level = ready.highest_base(now)
            if level is None or ready.head(level).blocked_on:
                return  # preemption frees slots, not resources
            victim = preemption_victim(self._running, level)
            if victim is not None:
                victim.requests |= REQ_PREEMPT
                victim.detail = "preempting at its next control point"
                self._wake(victim)

    def _thread_holder(self, head: Process, now: float) -> Process | None:
        """With no thread to spare: a queued process that holds one and may run instead of
        `head` (preempted, so it goes on where it stopped): the first, in the order they would
        run, of those at `head`'s effective level or above. None: `head` gets a new thread."""
        level = self._ready.effective(head, now)
        for proc in self._ready.candidates(now, ADMISSION_LOOKAHEAD):
            if self._ready.effective(proc, now) < level:
                break
            if proc.has_thread and (not proc.needs or self._fits(proc, None)):
                return proc
        return None

    def _off_slot_locked(self, proc: Process, now: float) -> None:
        """Out of the ready queue and the running set, its needs given back, its clock stopped
        (a process ending, or ending an attempt). Hold the lock."""
        self._ready.remove(proc)
        self._running.discard(proc)
        self._release(proc)
        if proc.run_since is not None:
            proc.run_accum += now - proc.run_since
            proc.run_since = None

    def _finish_locked(self, proc: Process, outcome: Outcome, exit_code: int | None, error: str | None,
                       output: Any = None) -> None:
        """End a process in its one terminal state and release what depends on it. Dependents
        of a failure fail too (iteratively, so long chains do not recurse)."""
        work = [(proc, outcome, exit_code, error, output)]
        while work:
            p, oc, code, err, out = work.pop()
            if p.phase is Phase.DONE:
                continue
            now = time.monotonic()
            self._off_slot_locked(p, now)
            self._transition(p, Phase.DONE)
            p.state = oc.value
            p.exit_code = code
            p.error = err
            p.output = out
            p.finished = time.time()
            p.requests = 0
            p.detail = err if err else "exit 0"
            if oc is Outcome.COMPLETED and p.total:
                p.step, p.percentage, p.eta = p.total, 100.0, 0.0
            p.note(oc.value.lower(), err or "")
            self._live.pop(p.pid, None)
            self._ipc_ended(p)  # releases its locks, drops or keeps its messages, frees its buffers
            event = self._emit(f"process.{oc.value.lower()}", p, tool=p.tool.name, exit_code=code, error=err,
                               runtime=round(p.runtime(now), 3), output=out, peak_memory_mb=p.peak_memory_mb,
                               parent=p.parent)
            p.end_seq = event.seq
            if p.parent is not None:
                up = self._procs.get(p.parent)
                if up is not None:
                    up.children.discard(p)
            for waiter in self._watchers.pop(p.pid, ()):
                self._wake(waiter)
            if oc is Outcome.COMPLETED:
                self._record_run(p)
            if self.store is not None:
                self._finished.append((event.seq, p))
            if not p.dependents:
                continue
            if self.store is not None:
                # The rule: a terminal state and output are durable before dependents go on.
                self._pending_release.append((event.seq, p))
            else:
                work.extend(self._release_dependents_locked(p, cascade=False))
        self._done_cond.notify_all()

    def _release_dependents_locked(self, p: Process, cascade: bool = True) -> list[tuple[Any, ...]]:
        """`p` has finished (durably): queue dependents whose needs are met, fail those of a
        failure. Returns the failures to finish when `cascade` is False (the caller's loop does)."""
        failures: list[tuple[Any, ...]] = []
        now = time.monotonic()
        completed = p.state == Outcome.COMPLETED
        for d in p.dependents:
            if d.phase is Phase.DONE:
                continue
            d.deps_pending.discard(p.pid)
            if not completed:
                failures.append((d, Outcome.FAILED, 1, f"dependency failed: {format_pid(p.pid)} {p.state}", None))
            elif not d.deps_pending and d.phase is Phase.WAITING:
                self._transition(d, Phase.READY)
                d.detail = "queued"
                self._ready.push(d, now)
            elif d.phase is Phase.WAITING:
                d.detail = self._waiting_detail(d)
        p.dependents = []
        if cascade:
            for f in failures:
                self._finish_locked(*f)
            return []
        return failures

    def _escalate(self, proc: Process, stage: int) -> None:
        """Kill escalation, run by a timer: 1 = asynchronous exception (and SIGKILL to a
        subprocess group); 2 = report the process as unkillable."""
        with self._lock:
            if proc.phase is Phase.DONE or not proc.requests & REQ_KILL:  # (resilience: a retried attempt answered it)
                return
            if stage == 1:
                if proc.subprocess is not None:
                    # The tool's thread is in its wait loop (a control point every few ms) or
                    # cleaning up: SIGKILL ends the child, and no exception cuts the cleanup short.
                    signal_tree(proc.subprocess, signal.SIGKILL)
                elif proc.in_body and proc.thread_ident is not None:
                    inject_exception(proc.thread_ident, ProcessKilled)
                    proc.injected = True
                    proc.note("kill escalated", "asynchronous exception injected")
                    self._emit("process.kill_escalated", proc)
                self._wake(proc)
            else:
                proc.unkillable = True
                proc.detail = "unkillable: blocked in native code; it ends when that call returns"
                proc.note("unkillable", proc.detail)
                self._emit("process.unkillable", proc, reason=proc.detail)
                return
        timer = threading.Timer(self.kill_grace, self._escalate, (proc, 2))
        timer.daemon = True
        timer.start()

    # ------------------------------------------------------------------ off-slot waits, timeouts

    def _block(self, proc: Process, ready: Callable[[], bool], detail: str, timeout: float | None = None) -> bool:
        """Wait in `proc`'s own thread until `ready()` holds, without holding a slot.

        A control point throughout (pause, kill, preemption apply). `ready` is called with the
        kernel lock held; whoever changes what it reads calls `_wake(proc)` under the lock.
        While it is false the process is in phase `waiting` with `detail`, its slot and needs
        given back; once true it queues at the front of its level for a slot again. Returns
        `ready()` (False after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._control_point_locked(proc)  # returns running
                if ready():
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                self._leave_slot(proc, Phase.WAITING, now)
                proc.waiting = ready
                proc.detail = detail
                self._emit("process.blocked", proc, detail=detail)
                self._dispatch_locked(now)
                try:
                    while proc.phase is Phase.WAITING and not proc.requests & REQ_KILL and not ready():
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._cond(proc).wait(left)
                finally:
                    proc.waiting = None
                if proc.requests & REQ_KILL:
                    raise ProcessKilled(proc.kill_reason)
                if proc.phase is Phase.WAITING:  # (a pause moved it on: the control point waits)
                    now = time.monotonic()
                    self._transition(proc, Phase.PREEMPTED)
                    proc.detail = "woken; waiting for a slot"
                    self._ready.push(proc, now, front=True)
                    self._dispatch_locked(now)

    def _wait_for(self, proc: Process, pids: list[int], timeout: float | None, any_: bool,
                  done_only: bool = False) -> list[ProcessInfo]:
        """ProcessContext.wait: block off-slot until the processes end; their ends are durable.
        With `done_only`, only the snapshots of those that have ended (cheap for many pids)."""
        wanted = [as_pid(p) for p in pids]
        with self._lock:
            targets = [t for t in (self._procs.get(p) for p in wanted) if t is not None]
            for t in targets:
                if t.phase is not Phase.DONE:
                    self._watchers.setdefault(t.pid, []).append(proc)

        def ended() -> bool:
            if not targets:
                return True
            done = (t.phase is Phase.DONE for t in targets)
            return any(done) if any_ else all(done)

        what = "waiting for " + ", ".join(format_pid(p) for p in wanted[:5]) + (" ..." if len(wanted) > 5 else "")
        self._block(proc, ended, what, timeout)
        seq = max((t.end_seq for t in targets if t.phase is Phase.DONE), default=0)
        if seq:
            self._wait_durable(seq)  # an output is committed before anything acts on it
        if done_only:
            with self._lock:
                return [t.snapshot() for t in targets if t.phase is Phase.DONE]
        return [self.info(p) for p in wanted]

    def _set_state(self, proc: Process, state: str, detail: str) -> None:
        with self._lock:
            if proc.state == state and (not detail or proc.detail == detail):
                return
            if proc.state != state:  # history keeps state changes, not every new detail
                proc.note("state", f"{state}: {detail}" if detail else state)
            proc.state = state
            if detail:
                proc.detail = detail
            self._emit("process.state", proc, state=state, detail=detail)

    def _arm_timeout(self, proc: Process, after: float) -> None:
        timer = threading.Timer(after, self._timeout_check, (proc,))
        timer.daemon = True
        timer.start()

    def _timeout_check(self, proc: Process) -> None:
        """Timer: stop a process whose running time passed its timeout (paused time does not count)."""
        with self._lock:
            if proc.phase is Phase.DONE or proc.timeout is None or proc.requests & REQ_KILL or not proc.in_body:
                return  # (not in_body: between attempts; the next one arms its own timer)
            left = proc.timeout - self._attempt_runtime(proc, time.monotonic())  # resilience: per attempt
            if left > 0.001:
                self._arm_timeout(proc, left)
                return
            reason = f"timed out after {proc.timeout:g}s"
            children = self._descendants_locked(proc)
            self._kill_locked(proc, False, reason, Outcome.FAILED)
            for child in children:
                self._kill_locked(child, False, f"parent {format_pid(proc.pid)} {reason}", Outcome.CANCELLED)

    # ------------------------------------------------------------------ worker side

    def _execute(self, proc: Process) -> None:
        """Run one process body on this worker thread, from start to its terminal state."""
        ctx = ProcessContext(self, proc)
        with self._lock:
            proc.thread_ident = threading.get_ident()
            proc.native_id = threading.get_native_id()
            killed = bool(proc.requests & REQ_KILL)
            if not killed:
                proc.in_body = True
                proc.started = time.time()
                proc.detail = "running"
                proc.note("started")
                self._emit("process.started", proc, tool=proc.tool.name, state=proc.state)
                if proc.timeout is not None:
                    self._arm_timeout(proc, proc.timeout)
        outcome, code, error, output = Outcome.CANCELLED, EXIT_CANCELLED, proc.kill_reason, None
        if not killed:
            try:
                try:
                    self._before_body(proc, ctx)  # resilience: circuit breakers, fallback tools, chaos faults
                    if self._remote is not None and proc.tool.remote:
                        output = self._remote.run(ctx, proc)  # a proxy for the body on a cluster worker
                    else:
                        output = proc.tool.func(ctx, **proc.params)
                    outcome, code, error = Outcome.COMPLETED, 0, None
                except ProcessKilled:
                    pass
                except ToolError as exc:
                    outcome, code, error = Outcome.FAILED, exc.exit_code, str(exc)
                except BaseException as exc:  # SystemExit, KeyboardInterrupt too: the worker survives
                    outcome, code, error = Outcome.FAILED, 1, _describe(exc)
            except ProcessKilled:  # injected while an except clause above was running
                outcome, code, error = Outcome.CANCELLED, EXIT_CANCELLED, None
        # Close the door on asynchronous kills before touching kernel state: once in_body is
        # False (under the lock) no new one is injected, and a pending one is cleared.
        while True:
            try:
                with self._lock:
                    proc.in_body = False
                    if proc.injected:
                        # Clear a kill that was injected but has not fired. Only then: on CPython
                        # 3.11 a needless clear makes any traced thread (pdb, coverage) spin.
                        inject_exception(proc.thread_ident, None)
                    if outcome is Outcome.CANCELLED or (proc.requests & REQ_KILL and outcome is not Outcome.COMPLETED):
                        outcome = Outcome(proc.kill_outcome)
                        code, error = _exit_for(outcome), proc.kill_reason or error
                    if outcome is not Outcome.COMPLETED and not error:
                        error = proc.kill_reason or "killed"
                    if not self._after_attempt(proc, outcome, code, error, output):  # resilience: retry, restart
                        self._finish_locked(proc, outcome, code, error, output)
                    self._dispatch_locked(time.monotonic(), spare_threads=1)
                    if proc.subprocess is not None and proc.subprocess.poll() is None:
                        signal_group(proc.subprocess, signal.SIGKILL)
                break
            except ProcessKilled:
                continue

    def _resolve_tool(self, tool: str | Tool | Callable[..., Any]) -> Tool:
        if isinstance(tool, Tool):
            return tool
        if isinstance(tool, str):
            return self.registry.get(tool)
        if callable(tool):
            registered = getattr(tool, "__llmunix_tool__", None)
            if registered is not None:
                return registered
            made = make_tool(tool, source="python")
            try:
                tool.__llmunix_tool__ = made  # type: ignore[union-attr]  # build the model once
            except (AttributeError, TypeError):
                pass
            return made
        raise LlmunixError(f"cannot run {tool!r}: give a tool name or a function taking ctx")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection while a listing allocates one row per process: with 100,000
    processes alive, the full collection those allocations can set off takes about 0.5 s, longer
    than the listing. (Rows hold no references back, so there is nothing for it to free.)"""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _exit_for(outcome: Outcome) -> int | None:
    """Cancelled processes report 143 as a shell would; interrupted ones have not ended; the
    kernel stops a process as Failed only when it timed out (124, as timeout(1) says)."""
    if outcome is Outcome.INTERRUPTED:
        return None
    return EXIT_TIMEOUT if outcome is Outcome.FAILED else EXIT_CANCELLED


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _pid_text(pid: object) -> str:
    try:
        return format_pid(int(pid))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return repr(pid)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "user"
