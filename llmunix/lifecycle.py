"""The process table: every process of this llmunix, and every move one makes.

`ProcessTable` owns the lock, the processes (all in memory, the live ones, the watchers of each),
PID allocation, the worker threads (executor.py) and the one timer thread (timers.py). Every
lock-held move of a process happens here, through `move()` — which rejects what the phase table
(`models.ALLOWED`) does not list — and is published as an event on the bus: spawn, dispatch,
kill and its escalation, pause, resume, renice, finish and the release of dependents, leaving a
slot, control points, off-slot blocking and waiting for other processes, running-time limits,
and running a body on a worker thread. The policy of *which* process runs is the scheduler's
(scheduler.py); the table carries out its decisions.

Features do not reach in. They register `Hooks` (below: the one list of every point where a
feature may act on a process) and use the public verbs; per-feature process state lives in
the feature. The verbs that must be called with the lock held end in `_locked`; `lock` is
public for exactly those callers (components whose own state changes with a process's, e.g.
IPC's mailboxes and primitives, atomically).

Worker threads never print; tool code sees only `ProcessContext` (process.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from llmunix.executor import ThreadExecutor, drain_async_exception, inject_exception
from llmunix.gil_lock import YieldingLock
from llmunix.models import (
    ALLOWED,
    EXIT_CANCELLED,
    EXIT_TIMEOUT,
    QUEUED_STATE,
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
    ToolError,
    as_pid,
    format_pid,
)
from llmunix.process import (
    REQ_HOOK,
    REQ_KILL,
    REQ_PAUSE,
    REQ_PREEMPT,
    REQ_STOP,
    Process,
    renice_group,
    signal_group,
    signal_tree,
)
from llmunix.timers import Timers

if TYPE_CHECKING:
    from llmunix.ipc.bus import EventBus
    from llmunix.process import ProcessContext
    from llmunix.scheduler import Scheduler
    from llmunix.tools.registry import Tool

log = logging.getLogger("llmunix.kernel")


class Hooks:
    """The declared points where a feature acts on a process (cf. Linux's `struct sched_class`).

    A feature subclasses this, overrides the hooks it needs and registers the object with
    `ProcessTable.register`; the table calls only overridden hooks, in registration order.
    Unless noted, a hook runs with the table lock held and must not block.

    * `on_spawn(proc, options)` — a process record was made (new, recovered or retried under its
      PID) and is about to be queued. `options`: the feature options given to `Kernel.spawn`
      (e.g. resilience's `attempts`).
    * `before_body(proc, ctx)` — on the worker thread, lock NOT held, just before the tool's code
      runs. Raise ToolError to fail this attempt without running it (an open circuit).
    * `after_body(proc, outcome, code, error, output) -> bool` — the body returned or raised.
      Return True to take the process on (it will run again: a retry or a restart, see
      `requeue_locked`); the table then does not finish it. The first hook to return True wins.
    * `on_attempt_end(proc)` — an attempt ended and the process will run again under its PID
      (whatever it held for that attempt, e.g. locks, goes).
    * `on_end(proc)` — the process has reached its terminal state (state, exit code, error and
      output are set; `proc.end_seq` is its terminal event's sequence number).
    * `on_control_point(proc, now) -> bool` — in the process's own thread at a control point,
      only while a feature asked for it with `watch(proc)` (the debugger). True: it stopped
      (the table then waits until it runs again).
    * `on_pressure(on)` — memory pressure switched on or off.
    * `on_subprocess(proc, child)` — lock NOT held: an OS process is being attached to do the
      process's work (a subprocess tool's child, an isolated worker; `attach_subprocess`), first
      thing, before it is recorded or signalled: for limits on its OS process tree that must hold
      from its first instant (iolimit.py stops it there). It must not block.
    * `on_continue(proc) -> bool` — the table is about to continue the process's stopped OS
      process tree (SIGCONT: a resume, the end of a preemption). Return True when the feature
      continues it itself (iolimit.py: a tree its duty cycle holds goes on in timed stretches;
      a plain SIGCONT would let a writer move hundreds of megabytes before its next look).
    """

    def on_spawn(self, proc: Process, options: Mapping[str, Any]) -> None: ...

    def before_body(self, proc: Process, ctx: ProcessContext) -> None: ...

    def after_body(self, proc: Process, outcome: Outcome, code: int | None, error: str | None,
                   output: Any) -> bool:
        return False

    def on_attempt_end(self, proc: Process) -> None: ...

    def on_end(self, proc: Process) -> None: ...

    def on_control_point(self, proc: Process, now: float) -> bool:
        return False

    def on_pressure(self, on: bool) -> None: ...

    def on_subprocess(self, proc: Process, child: Any) -> None: ...

    def on_continue(self, proc: Process) -> bool:
        return False


HOOK_NAMES = ("on_spawn", "before_body", "after_body", "on_attempt_end", "on_end", "on_control_point",
              "on_pressure", "on_subprocess", "on_continue")


class PidAllocator:
    """Monotonic PIDs that are never reused, even across restarts.

    With a home directory, the high-water mark is kept in `<home>/pids`. PIDs are reserved in
    blocks so that spawning does not write to disk each time; a clean close records the exact
    next PID, and after a crash at most one block of numbers is skipped, never reused. Blocks
    grow while PIDs go fast (a block used up within a second: double it, up to MAX_BLOCK) and
    shrink back when they do not, so a burst of spawns costs about one fsync a second (each
    is made under the table lock) and a crash skips about a second's worth of numbers.

    `floor` is the lowest PID that may be given (one more than the highest the store has seen):
    a `pids` file that was deleted, emptied, corrupted or lowered never makes a PID come back.
    """

    BLOCK = 64
    MAX_BLOCK = 65536

    def __init__(self, home: Path | None, floor: int = 1) -> None:
        self._path = home / "pids" if home is not None else None
        self._next = max(1, floor)
        self.repaired = ""  # why the file was not trusted, if it was not
        if self._path is not None and self._path.exists():
            try:
                recorded = int(self._path.read_text().strip() or "0")
            except (ValueError, OSError, UnicodeDecodeError):
                recorded = 0
                self.repaired = f"{self._path} was unreadable"
            if recorded < self._next and floor > 1 and not self.repaired:
                self.repaired = f"{self._path} said {recorded}, below PIDs already used"
            self._next = max(self._next, recorded)
        elif self._path is not None and floor > 1:
            self.repaired = f"{self._path} was missing"
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{value}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)


class Relay:
    """The door for code that runs a process's body somewhere else — a Dask worker, an isolated
    OS process — from the process's own worker thread, acting as its proxy: it reads the
    control requests, waits at control points, and applies what the body reports."""

    __slots__ = ("_table", "_proc", "pid", "tool", "params", "restored", "cwd", "priority", "needs")

    def __init__(self, table: ProcessTable, proc: Process) -> None:
        self._table = table
        self._proc = proc
        self.pid = proc.pid
        self.tool = proc.tool
        self.params = dict(proc.params)
        self.restored = proc.restored
        self.cwd = proc.cwd
        self.priority = proc.priority
        self.needs = dict(proc.needs)

    @property
    def kill_grace(self) -> float:
        return self._table.kill_grace

    @property
    def kill_requested(self) -> bool:
        return bool(self._proc.requests & REQ_KILL)

    @property
    def pause_requested(self) -> bool:
        """A pause or a preemption is asked for (the body should stop at a control point)."""
        return bool(self._proc.requests & (REQ_PAUSE | REQ_PREEMPT))

    @property
    def paused(self) -> bool:
        """Paused, or a pause asked for (read without the lock: a waker may ask)."""
        return self._proc.phase is Phase.PAUSED or bool(self._proc.requests & REQ_PAUSE)

    @property
    def kill_reason(self) -> str:
        return self._proc.kill_reason

    @property
    def running(self) -> bool:
        return self._proc.phase is Phase.RUNNING

    def control_point(self) -> None:
        """Honour requests here, as the body's thread would: blocks while paused or preempted,
        raises ProcessKilled on a kill. A sign of life for the watchdog."""
        self._table.control_point(self._proc)

    def check(self) -> None:
        """The proxy loop's own control point, as `ctx.check()`: pause, preemption, the time
        slice, kill (ProcessKilled). Not a sign of life: the body's reports and the monitor's
        samples of its OS process say whether it is alive."""
        proc = self._proc
        if proc.requests or proc.phase is not Phase.RUNNING or self._table.scheduler.slice_expired(proc):
            with self._table.lock:
                self._table.control_point_locked(proc)

    def wait_off_slot(self, ready: Callable[[], bool], detail: str, *, counts: bool = True) -> bool:
        """Wait, without holding a slot (phase waiting, `detail` shown), until `ready()` holds
        (checked with the table lock held; whoever changes what it reads calls `wake()`). A
        control point throughout. `counts=False`: the time is not the process's running time
        (e.g. queued on a cluster: its body has not started)."""
        return self._table.block(self._proc, ready, detail, counts=counts)

    def wake(self) -> None:
        """Wake the process wherever it waits (after changing what its `ready` reads)."""
        with self._table.lock:
            self._table.wake(self._proc)

    def alive(self, seconds: float = 0.0) -> None:
        """A sign of life for the watchdog: now, or for `seconds` (a body asleep on purpose)."""
        with self._table.lock:
            self._proc.last_active = max(self._proc.last_active, time.monotonic() + seconds)

    def fail(self, reason: str) -> None:
        """Stop the process, Failed with `reason`, wherever its thread waits (its body's OS
        process died while the proxy was carrying out a blocking call for it)."""
        with self._table.lock:
            # Not over a stop already asked (a kill, llmunix stopping): the OS process died of
            # that stop, and the process ends as the stop said (Interrupted at shutdown, to be
            # recovered), not Failed.
            if self._proc.phase is not Phase.DONE and not self._proc.requests & REQ_KILL:
                self._table.kill_locked(self._proc, False, reason, Outcome.FAILED)

    def attach(self, child: Any, what: str = "subprocess") -> None:
        """The body runs in OS process `child` (Popen-like: `pid`, `poll()`), the leader of its
        own process group: it becomes the process's subprocess, so pause (SIGSTOP), resume,
        kill, priority (nice) and the monitor reach it, and it is recorded to die with llmunix."""
        self._table.attach_subprocess(self._proc, child, what)

    def on_wake(self, fn: Callable[[], None] | None) -> None:
        """Call `fn()` (table lock held; it must not block) whenever the process is woken: a
        pause, resume, kill or preemption. The proxy's own wait loop can then be a queue."""
        with self._table.lock:
            self._proc.waker = fn

    def progress(self, step: int, total: int | None, message: str) -> None:
        self._table.progress(self._proc, step, total, message)

    def log(self, line: str) -> None:
        self._table.log(self._proc, line)

    def checkpoint(self, state: Any) -> int:
        """Record a checkpoint; returns its version once it is durable."""
        version, seq = self._table.checkpoint(self._proc, state)
        self._table.wait_durable(seq)
        return version

    def set_state(self, state: str, detail: str = "") -> None:
        self._table.set_state(self._proc, state, detail)

    def show(self, detail: str) -> None:
        """Say where the body is (`ps` detail), unless a request or another state says more."""
        with self._table.lock:
            proc = self._proc
            if proc.phase is Phase.RUNNING and not proc.requests & REQ_STOP:
                self._table.set_detail_locked(proc, detail)

    def note(self, event: str, details: str = "", *, publish: str | None = None, **data: Any) -> None:
        """Add to the process's history and, with `publish`, publish event `publish` with `data`."""
        with self._table.lock:
            self._proc.note(event, details)
            if publish is not None:
                self._table.emit(publish, self._proc, **data)


class Snapshots(Sequence[ProcessInfo]):
    """A read-only list of the snapshots of some processes, each built when it is first read
    (under the table's lock) and kept. `pids` costs nothing."""

    __slots__ = ("_table", "_procs", "_made")

    def __init__(self, table: ProcessTable, procs: list[Process]) -> None:
        self._table = table
        self._procs = procs
        self._made: dict[int, ProcessInfo] = {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def unfinished(self) -> list[int]:
        """PIDs among these that have not finished yet (after a wait that timed out)."""
        with self._table.lock:
            return [p.pid for p in self._procs if p.phase is not Phase.DONE]

    def __len__(self) -> int:
        return len(self._procs)

    @overload
    def __getitem__(self, index: int) -> ProcessInfo: ...
    @overload
    def __getitem__(self, index: slice) -> list[ProcessInfo]: ...

    def __getitem__(self, index: int | slice) -> ProcessInfo | list[ProcessInfo]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._procs)))]
        if index < 0:
            index += len(self._procs)
        info = self._made.get(index)
        if info is None:
            proc = self._procs[index]  # IndexError ends iteration
            with self._table.lock:
                info = self._table.snapshot(proc)
            self._made[index] = info
        return info

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Snapshots, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Snapshots({self.pids})"


class ProcessTable:
    """Every process and every move one makes (see the module docstring). Thread-safe."""

    def __init__(self, *, scheduler: Scheduler, bus: EventBus, owner: str, kill_grace: float = 2.0,
                 max_threads: int = 64, pids: PidAllocator | None = None) -> None:
        self.lock = YieldingLock()
        self.scheduler = scheduler
        self.bus = bus
        self.owner = owner
        self.kill_grace = kill_grace
        self.pids = pids or PidAllocator(None)
        self.procs: dict[int, Process] = {}  # every process in memory (read under the lock)
        self.live: dict[int, Process] = {}  # the ones not finished
        self.closed = False
        self.timers = Timers()
        self.executor = ThreadExecutor(self._execute, max_threads)
        self.store: Any = None  # set by the kernel: terminal states are released once durable
        self._done = threading.Condition(self.lock)  # notified whenever a process finishes
        self._groups: dict[int, list[_WaitGroup]] = {}  # pid -> external waiters counting its end
        self._until = 0  # threads in wait_until (notified when a process ends)
        self._watchers: dict[int, list[Process]] = {}  # pid -> processes blocked until it ends (wait_for)
        self._pending_release: list[tuple[int, Process]] = []  # (event seq, finished process)
        # pid -> its off-slot waits (`off_slot`), innermost last: (what, on_kill, the waker before it)
        self._away: dict[int, list[tuple[str, Callable[[], None] | None, Callable[[], None] | None]]] = {}
        self._cwd_cache: str | None = None
        self._thread_cwd = threading.local()  # a thread's own default (working_directory)
        self._hooks: dict[str, list[Any]] = {name: [] for name in HOOK_NAMES}
        self._features: list[Hooks] = []  # registered, in order (register is idempotent)
        self._snapshot_fields: dict[str, Callable[[Process], Any]] = {}
        self.known: Callable[[int], str | None] = lambda pid: None  # a PID not in memory: its stored state
        self.context: Callable[[Process], ProcessContext] | None = None  # makes a body's ctx (the kernel)
        self.remote: Any = None  # a distributed backend: runs bodies of remote tools (backends/)
        self.isolation: Any = None  # runs bodies in worker OS processes (isolation.py): wants(proc), run(ctx, relay)
        self.guard: Any = None  # records subprocess groups to die with llmunix (reaper.ChildRecord): adopt(pid, label)
        # Whether a process's body goes to `remote` (backends/placement.py: `migrate` moves one);
        # None: the tools declared remote do.
        self.placement: Callable[[Process], bool] | None = None
        scheduler.wake_after = lambda seconds: self.timers.call_later(seconds, self._refilled)

    # ------------------------------------------------------------------ hooks

    def register(self, feature: Hooks) -> None:
        """Register a feature's hooks; only those it overrides are called. After the kernel is
        built (a feature that registers on first use), hold the lock. Registering a feature
        again does nothing."""
        if any(feature is f for f in self._features):
            return
        self._features.append(feature)
        for name in HOOK_NAMES:
            impl = getattr(type(feature), name, None)
            if impl is not None and impl is not getattr(Hooks, name):
                self._hooks[name].append(getattr(feature, name))

    def hooks(self) -> dict[str, list[str]]:
        """Every registered hook, by hook name: `Feature.method` (what `docs/architecture.md` lists)."""
        return {name: [f"{type(h.__self__).__name__}.{h.__name__}" for h in impls]
                for name, impls in self._hooks.items()}

    def snapshot_field(self, name: str, provider: Callable[[Process], Any]) -> None:
        """A feature supplies a field of every snapshot (`attempts`, `worker`): `provider(proc)`
        is called, lock held, each time a snapshot is built."""
        if name not in ("attempts", "worker"):
            raise LlmunixError(f"no snapshot field {name!r}")
        self._snapshot_fields[name] = provider

    def watch(self, proc: Process, on: bool = True) -> None:
        """Route `proc`'s control points to the `on_control_point` hooks (on), or stop (off).
        Hold the lock."""
        if on:
            proc.requests |= REQ_HOOK
        else:
            proc.requests &= ~REQ_HOOK

    # ------------------------------------------------------------------ lookups

    def get(self, pid: int) -> Process | None:
        """The process in memory (live, or finished and not yet released), or None."""
        return self.procs.get(pid)

    def live_processes(self) -> list[Process]:
        with self.lock:
            return list(self.live.values())

    def require(self, pid: Any) -> Process:
        """The process `pid` in memory, else NoSuchProcess."""
        try:
            return self.procs[int(pid)]
        except (KeyError, ValueError, TypeError, OverflowError):
            raise NoSuchProcess(f"no process {_pid_text(pid)}; `ps -a` lists them") from None

    def require_live(self, pid: Any, action: str) -> Process:
        """The live process `pid`, else an error saying it has finished or does not exist."""
        proc = self.procs.get(as_pid(pid))
        if proc is None:
            state = self.known(as_pid(pid))  # finished in an earlier session, or released from memory
            if state is not None:
                raise IllegalTransition(
                    f"cannot {action} process {format_pid(as_pid(pid))}: it has already finished ({state})")
            proc = self.require(pid)
        if proc.phase is Phase.DONE:
            raise IllegalTransition(
                f"cannot {action} process {format_pid(proc.pid)}: it has already finished ({proc.state})")
        return proc

    def adopt_locked(self, proc: Process) -> None:
        """Take in a process record made elsewhere (an earlier session's interrupted process that
        is ended without running: `DurableState._retire`). Hold the lock."""
        self.procs[proc.pid] = proc
        self.live[proc.pid] = proc

    def release_locked(self, proc: Process) -> bool:
        """Drop a finished process from memory (retention: the store answers for it from now
        on). False if it is not this table's current record of its PID, or not finished."""
        if self.procs.get(proc.pid) is not proc or proc.phase is not Phase.DONE:
            return False
        del self.procs[proc.pid]
        return True

    def snapshot(self, proc: Process) -> ProcessInfo:
        """An immutable snapshot of `proc`. Hold the lock."""
        final = proc.final_snapshot
        if final is not None:
            return final
        fields = self._snapshot_fields
        return proc.snapshot(
            self.scheduler.ready.effective(proc, time.monotonic()) if proc.queue_token else None,
            fields["attempts"](proc) if "attempts" in fields else None,
            fields["worker"](proc) if "worker" in fields else None)

    def descendants_locked(self, proc: Process) -> list[Process]:
        """Live processes below `proc` in the parent tree, parents before children (each process
        keeps its live children, so this costs the size of the tree, not of the table)."""
        out: list[Process] = []
        todo = [proc]
        while todo:
            for c in sorted(todo.pop().children, key=lambda c: c.pid):
                out.append(c)
                todo.append(c)
        return out

    def cwd(self) -> str:
        """The working directory a new process gets by default: the calling thread's own (see
        `working_directory`), else this program's."""
        own = getattr(self._thread_cwd, "path", None)
        if own is not None:
            return own
        # os.getcwd() is a system call that releases the GIL: under the lock it made threads
        # queue behind each other. The shell's working directory rarely changes.
        if self._cwd_cache is None:
            self._cwd_cache = os.getcwd()
        return self._cwd_cache

    @contextmanager
    def working_directory(self, path: str) -> Iterator[None]:
        """Inside, processes spawned by the calling thread default to `path` (the daemon runs
        each client's commands on a thread of its own, in the client's directory)."""
        before = getattr(self._thread_cwd, "path", None)
        self._thread_cwd.path = path
        try:
            yield
        finally:
            self._thread_cwd.path = before

    # ------------------------------------------------------------------ events and small moves (lock held)

    def emit(self, type: str, proc: Process, **data: Any) -> Event:  # noqa: A002
        """Publish a process's event. Hold the lock: events are published in the order of the
        changes they describe."""
        data.setdefault("name", proc.name)
        return self.bus.publish(type, proc.pid, data)

    def publish(self, type: str, pid: int, **data: Any) -> Event:  # noqa: A002
        """Publish an event of process `pid` (taking the lock); returns it."""
        with self.lock:
            proc = self.procs.get(pid)
            if proc is not None:
                return self.emit(type, proc, **data)
            return self.bus.publish(type, pid, data)

    def move(self, proc: Process, to: Phase) -> None:
        """The one way a phase changes: rejects what `models.ALLOWED` does not list."""
        if to not in ALLOWED[proc.phase]:
            raise IllegalTransition(f"process {format_pid(proc.pid)} cannot go from {proc.phase} to {to}")
        proc.phase = to
        proc.forget_snapshot()

    def set_detail_locked(self, proc: Process, detail: str) -> None:
        proc.detail = detail
        proc.forget_snapshot()

    def wake(self, proc: Process) -> None:
        """Wake the process's thread wherever it waits (a control point, a block, a sleep)."""
        if proc.cond is not None:
            proc.cond.notify_all()
        if proc.waker is not None:
            proc.waker()

    def _cond(self, proc: Process) -> threading.Condition:
        """The process's condition (on the table lock), made the first time it has to wait."""
        if proc.cond is None:
            proc.cond = threading.Condition(self.lock)
        return proc.cond

    def _waiting_detail(self, proc: Process) -> str:
        return "waiting for " + ", ".join(format_pid(d) for d in sorted(proc.deps_pending))

    # ------------------------------------------------------------------ spawn

    def spawn_locked(self, t: Tool, params: dict[str, Any], prio: Priority, deps: tuple[int, ...], *,
                     name: str | None, parent: int | None, cwd: str | None, pid: int | None = None,
                     restored: Any = None, checkpoints: list[Any] | None = None, note: str = "",
                     needs: tuple[dict[str, float], tuple[str, ...]] | None = None,
                     timeout: float | None = None, options: Mapping[str, Any] | None = None,
                     event_data: Mapping[str, Any] | None = None,
                     reuse: tuple[Any, str, Mapping[str, Any]] | None = None) -> Process:
        """Create a process (a new PID, or an old one being recovered or retried) and queue it,
        or end it at once if it can never run (a failed dependency, needs the pool cannot meet,
        a stopping parent). `reuse` = (output, note, event data): a stored result stands for
        this run (step caching, llmunix/cache.py): unless it must wait or fail as above, it ends
        Completed at once with that output, without a slot or a thread, after a `process.cached`
        event and a `cached` history entry. Hold the lock."""
        if self.closed:
            raise LlmunixError("the kernel has shut down; no new processes")
        for a in deps:
            if a not in self.procs and self.known(a) is None:
                raise NoSuchProcess(f"no process {format_pid(a)} to run after; `ps -a` lists them")
        if parent is not None and parent not in self.procs and self.known(parent) is None:
            raise NoSuchProcess(f"no parent process {format_pid(parent)}")
        if pid is None:
            pid = self.pids.next()
        proc = Process(pid, t, params, name=name or t.name, priority=prio, owner=self.owner,
                       parent=parent, after=deps, cwd=cwd or self.cwd())
        proc.restored = restored
        if checkpoints:
            proc.checkpoints = list(checkpoints)
        proc.needs, proc.predicted = needs if needs is not None else (dict(t.needs), ())
        proc.timeout = timeout
        self.procs[pid] = proc
        self.live[pid] = proc
        up = self.live.get(parent) if parent is not None else None
        if up is not None:
            up.add_child(proc)
        proc.note("spawned", note or f"{t.name} priority={prio.label}")
        for hook in self._hooks["on_spawn"]:
            hook(proc, options or {})
        self.emit("process.spawned", proc, tool=t.name, priority=prio.label, kind=str(proc.kind),
                  owner=proc.owner, parent=parent, after=list(deps), cwd=proc.cwd, params=params,
                  idempotent=t.idempotent, **(event_data or {}))
        failed = None
        for a in deps:
            dep = self.procs.get(a)
            if dep is None or dep.phase is Phase.DONE:
                state = dep.state if dep is not None else (self.known(a) or "unknown")
                if state != Outcome.COMPLETED:
                    failed = (a, state)
                    break
            else:
                proc.add_dependency(dep)
        now = time.monotonic()
        never = self.scheduler.never_fits(proc.needs)
        if up is not None and up.requests & REQ_KILL:  # its parent is being stopped: so is it
            self.finish_locked(proc, Outcome(up.kill_outcome), _exit_for(Outcome(up.kill_outcome)),
                               f"parent {format_pid(up.pid)} was stopping")
        elif never is not None:
            self.finish_locked(proc, Outcome.FAILED, 1, never)
        elif failed is not None:
            self.finish_locked(proc, Outcome.FAILED, 1, f"dependency failed: {format_pid(failed[0])} {failed[1]}")
        elif proc.deps_pending:
            self.move(proc, Phase.WAITING)
            proc.detail = self._waiting_detail(proc)
        elif reuse is not None:
            output, why, data = reuse
            proc.note("cached", why)
            self.emit("process.cached", proc, **data)
            self.finish_locked(proc, Outcome.COMPLETED, 0, None, output)
        else:
            self.scheduler.enqueue(proc, now)
        if up is not None and proc.phase is not Phase.DONE and (up.phase is Phase.PAUSED or up.requests & REQ_PAUSE):
            self.pause_locked(proc)  # a paused parent starts nothing new
            proc.paused_by = up.paused_by or up.pid
        self.dispatch_locked(now)
        return proc

    # ------------------------------------------------------------------ kill

    def kill_locked(self, proc: Process, force: bool, reason: str, outcome: Outcome,
                    code: int | None = None) -> None:
        """Ask a live process to stop; it ends as `outcome`. Cooperative code stops at its next
        control point; code that never reaches one gets an asynchronous exception after the
        grace period (at once with `force`); a subprocess group gets SIGTERM, then SIGKILL."""
        if proc.requests & REQ_KILL and not force and not (
                proc.kill_outcome == Outcome.INTERRUPTED and outcome is not Outcome.INTERRUPTED):
            return  # (a kill that ends it for good supersedes a stop that would only interrupt it)
        if proc.requests & REQ_KILL and outcome is Outcome.INTERRUPTED and proc.kill_outcome != Outcome.INTERRUPTED:
            # llmunix stopping forces a kill for good that has not taken yet: it ends as that kill said
            outcome, reason = Outcome(proc.kill_outcome), proc.kill_reason or reason
        else:
            proc.kill_code = code
        proc.note("kill requested", reason + (" (force)" if force else ""))
        proc.kill_outcome = outcome
        if not proc.has_thread:
            self.emit("process.kill_requested", proc, reason=reason, force=force)
            self.finish_locked(proc, outcome, _kill_status(proc, outcome), reason)
            self.dispatch_locked(time.monotonic())
            return
        proc.requests |= REQ_KILL
        proc.kill_reason = reason
        self.set_detail_locked(proc, "stopping (kill requested)")
        self.emit("process.kill_requested", proc, reason=reason, force=force)
        if proc.subprocess is not None:
            signal_tree(proc.subprocess, signal.SIGKILL if force else signal.SIGTERM)
        self.wake(proc)
        self._arm(proc, 0 if force else self.kill_grace, self._escalate, proc, 1)

    def kill_tree_locked(self, proc: Process, reason: str, outcome: Outcome = Outcome.FAILED,
                         code: int | None = None) -> None:
        """Stop `proc` as `outcome` with `reason` (a timeout, the watchdog, a limit) and exit
        status `code` (default: its outcome's, 124 for Failed), and its descendants as Cancelled
        ("parent 003 timed out after 5s")."""
        children = self.descendants_locked(proc)
        self.kill_locked(proc, False, reason, outcome, code)
        for child in children:
            self.kill_locked(child, False, f"parent {format_pid(proc.pid)} {reason}", Outcome.CANCELLED)

    def _escalate(self, proc: Process, stage: int) -> None:
        """Kill escalation, on the timer thread: 1 = asynchronous exception (and SIGKILL to a
        subprocess group); 2 = report the process as unkillable."""
        with self.lock:
            proc.timer = None
            if proc.phase is Phase.DONE or not proc.requests & REQ_KILL:  # (a retried attempt answered it)
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
                    self.emit("process.kill_escalated", proc)
                self.wake(proc)
                self._arm(proc, self.kill_grace, self._escalate, proc, 2)
            else:
                proc.unkillable = True
                self.set_detail_locked(proc, "unkillable: blocked in native code; it ends when that call returns")
                proc.note("unkillable", proc.detail)
                self.emit("process.unkillable", proc, reason=proc.detail)

    def _arm(self, proc: Process, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        """The process's one pending timer (a timeout or a kill escalation stage); a new one
        replaces the old, and finishing cancels it, so no timer outlives its process."""
        if proc.timer is not None:
            proc.timer.cancel()
        proc.timer = self.timers.call_later(seconds, fn, *args)

    # ------------------------------------------------------------------ pause, resume, renice

    def pause_locked(self, proc: Process, reason: str = "paused by user") -> None:
        """Pause a live process that is not paused yet. A running one stops at its next control
        point (a subprocess tool at once, with SIGSTOP to its group) and gives its slot back."""
        now = time.monotonic()
        proc.pause_reason = reason
        if proc.phase is Phase.RUNNING:
            if proc.subprocess is not None and proc.in_body:
                self.leave_slot_locked(proc, Phase.PAUSED, now)
                self._paused(proc)
                self.dispatch_locked(now)
            else:
                proc.requests |= REQ_PAUSE
                self.set_detail_locked(proc, "pausing at its next control point")
                proc.note("pause requested")
                self.emit("process.pause_requested", proc)
                self.wake(proc)
        else:
            self.scheduler.dequeue(proc)
            self.move(proc, Phase.PAUSED)
            proc.stop_clock(now)  # blocked off-slot: its clock stops now
            self._paused(proc)

    def pausing(self, proc: Process) -> bool:
        """Paused, or a pause asked for that has not taken effect yet."""
        return proc.phase is Phase.PAUSED or bool(proc.requests & REQ_PAUSE)

    def _paused(self, proc: Process, **data: Any) -> None:
        self.set_detail_locked(proc, proc.pause_reason)
        proc.note("paused")
        self.emit("process.paused", proc, **data)

    def resume_locked(self, proc: Process) -> None:
        """Resume a paused process, or cancel its pending pause."""
        now = time.monotonic()
        if proc.phase is Phase.RUNNING and proc.requests & REQ_PAUSE:
            proc.requests &= ~REQ_PAUSE
            self.set_detail_locked(proc, "running")
            proc.note("pause cancelled")
            self.emit("process.pause_cancelled", proc)
            return
        if proc.deps_pending:
            self.move(proc, Phase.WAITING)
            proc.detail = self._waiting_detail(proc)
        elif proc.pid in self._away:  # paused during an off-slot wait: back to that wait, not to a slot
            self.move(proc, Phase.WAITING)
            proc.start_clock(now)  # an off-slot wait counts as running time
            proc.detail = "waiting for " + self._away[proc.pid][-1][0]
        elif proc.has_thread:
            self.move(proc, Phase.PREEMPTED)
            proc.detail = "resumed; waiting for a slot"
            self.scheduler.enqueue(proc, now, front=True)
        else:
            self.move(proc, Phase.READY)
            proc.detail = "queued"
            self.scheduler.enqueue(proc, now)
        proc.note("resumed")
        self.emit("process.resumed", proc)
        self.dispatch_locked(now)

    def renice_locked(self, proc: Process, prio: Priority) -> None:
        """Change a live process's priority level; may cause preemption."""
        old = proc.priority
        now = time.monotonic()
        if proc.queue_token:
            self.scheduler.dequeue(proc)
            self.scheduler.reprioritize(proc, prio)
            self.scheduler.enqueue(proc, now, front=proc.phase is Phase.PREEMPTED, keep_age=True)
        else:
            self.scheduler.reprioritize(proc, prio)
        proc.forget_snapshot()
        if proc.subprocess is not None:
            renice_group(proc.subprocess, prio)
        proc.note("priority", f"{old.label} -> {prio.label}")
        self.emit("process.reniced", proc, old=old.label, new=prio.label)
        self.dispatch_locked(now)

    # ------------------------------------------------------------------ slots and dispatch

    def leave_slot_locked(self, proc: Process, to: Phase, now: float, counts: bool = True) -> None:
        """A running process stops running (paused, preempted or waiting off-slot): its slot and
        needs are freed. Blocked time still counts as running time (the work's own wait) unless
        `counts` is False; paused and preempted time does not."""
        self.move(proc, to)
        proc.requests &= ~REQ_PREEMPT  # whatever stops it also answers a pending preemption
        self.scheduler.stop(proc)
        proc.stop_clock(now, keep_running=to is Phase.WAITING and counts)
        if proc.subprocess is not None and to is not Phase.WAITING:
            signal_group(proc.subprocess, signal.SIGSTOP)

    def dispatch_locked(self, now: float, claim: bool = False) -> Process | None:
        """Carry out the scheduler's decisions: start or continue every process it picks while
        slots are free, then ask for a preemption if someone outranks a running process.
        `claim`: the caller is a worker thread whose body has just ended; the first process that
        needs a new thread is returned for it to run instead of being handed to the executor."""
        if self.closed:
            return None  # shutting down: nothing new starts, even when slots free up
        sched = self.scheduler
        if sched.pressure_due(now):
            self.read_pressure_locked(sched.read_memory())
        if not sched.ready:
            return None
        executor = self.executor
        free = executor.available() + (1 if claim else 0)
        claimed: Process | None = None
        while True:
            proc = sched.next(now, free)
            if proc is None:
                break
            self.move(proc, Phase.RUNNING)
            proc.start_clock(now)
            if proc.has_thread:
                proc.detail = "running"
                if proc.subprocess is not None and not any(h(proc) for h in self._hooks["on_continue"]):
                    signal_group(proc.subprocess, signal.SIGCONT)
                proc.note("continued")
                self.emit("process.continued", proc)
                self.wake(proc)
                continue
            proc.has_thread = True
            proc.state = STARTED_STATE[proc.kind]
            proc.detail = "starting"
            free -= 1
            if claim and claimed is None:
                claimed = proc  # the calling worker runs it next
            else:
                if executor.available() <= 0:
                    executor.over_cap()  # threads are a soft bound: never a deadlock
                executor.start(proc)
        victim = sched.victim(now)
        if victim is not None:
            victim.requests |= REQ_PREEMPT
            self.set_detail_locked(victim, "preempting at its next control point")
            self.wake(victim)
        return claimed

    def _refilled(self) -> None:
        """Timer: a token bucket has refilled enough for a queued process."""
        with self.lock:
            now = time.monotonic()
            self.scheduler.refilled(now)
            self.dispatch_locked(now)

    def read_pressure_locked(self, available: float) -> None:
        """A memory reading: switch pressure on or off (an event and the `on_pressure` hooks),
        and pause or resume idle work when configured to."""
        sched = self.scheduler
        if sched.set_pressure(available, time.monotonic()):
            p = sched.pressure
            self.bus.publish("system.memory_pressure", None, {"state": "on" if p.on else "off",
                                                              "available_mb": p.available_mb,
                                                              "threshold_mb": p.threshold_mb})
            for hook in self._hooks["on_pressure"]:
                hook(p.on)

    def check_pressure(self) -> None:
        """Read available memory now (the monitor's pace), apply it, and start what now fits
        (token buckets refill with time)."""
        available = self.scheduler.read_memory()
        with self.lock:
            self.read_pressure_locked(available)
            pause, resume = self.scheduler.pressure_moves(list(self.live.values()), self.pausing)
            for p in pause:
                self.pause_locked(p, "paused: memory pressure")
            for p in resume:
                self.resume_locked(p)
            self.dispatch_locked(time.monotonic())

    def set_max_running(self, n: int) -> None:
        with self.lock:
            self.set_max_running_locked(n)

    def set_max_running_locked(self, n: int) -> None:
        """Slots from now on (fewer: running processes go on, fewer new ones start). Hold the lock."""
        if n < 1:
            raise LlmunixError("max_running must be at least 1")
        self.scheduler.max_running = n
        self.dispatch_locked(time.monotonic())

    # ------------------------------------------------------------------ finish

    def finish_locked(self, proc: Process, outcome: Outcome, exit_code: int | None, error: str | None,
                      output: Any = None) -> None:
        """End a process in its one terminal state and release what depends on it (once the end
        is durable, with a store). Dependents of a failure fail too (iteratively, so long chains
        do not recurse)."""
        work = [(proc, outcome, exit_code, error, output)]
        on_end = self._hooks["on_end"]
        while work:
            p, oc, code, err, out = work.pop()
            if p.phase is Phase.DONE:
                continue
            now = time.monotonic()
            self._off_slot(p, now)
            self.move(p, Phase.DONE)
            p.state, note, end_event = _ENDS[oc]
            p.exit_code = code
            p.error = err
            p.output = out
            p.finished = time.time()
            p.requests = 0
            p.detail = err if err else "exit 0"
            if p.timer is not None:
                p.timer.cancel()
                p.timer = None
            if oc is Outcome.COMPLETED and p.total:
                p.step, p.percentage, p.eta = p.total, 100.0, 0.0
            p.note(note, err or "")
            self.live.pop(p.pid, None)
            event = self.emit(end_event, p, tool=p.tool.name, exit_code=code, error=err,
                              runtime=round(p.runtime(now), 3), output=out, peak_memory_mb=p.peak_memory_mb,
                              parent=p.parent)
            p.end_seq = event.seq
            if p.parent is not None:
                up = self.procs.get(p.parent)
                if up is not None:
                    up.drop_child(p)
            for waiter in self._watchers.pop(p.pid, ()):
                self.wake(waiter)
            for group in self._groups.pop(p.pid, ()):
                group.left -= 1
                if group.left <= 0:
                    group.cond.notify_all()
            if oc is Outcome.COMPLETED and p.peak_memory_mb is not None:
                self.scheduler.record_run(p.tool.name, p.peak_memory_mb, self.store is not None)
            for hook in on_end:
                hook(p)
            if not p.dependents:
                continue
            if self.store is not None:
                # The rule: a terminal state and output are durable before dependents go on.
                self._pending_release.append((event.seq, p))
            else:
                work.extend(self._release_dependents_locked(p, cascade=False))
        if self._until:  # someone waits in wait_until (the debugger): let it look again
            self._done.notify_all()

    def _off_slot(self, proc: Process, now: float) -> None:
        """Out of the ready queue and the running set, its needs given back, its clock stopped
        (a process ending, or ending an attempt)."""
        self.scheduler.dequeue(proc)
        self.scheduler.stop(proc)
        proc.stop_clock(now)

    def _release_dependents_locked(self, p: Process, cascade: bool = True) -> list[tuple[Any, ...]]:
        """`p` has finished (durably): queue dependents whose needs are met, fail those of a
        failure. Returns the failures to finish when `cascade` is False (the caller's loop does)."""
        failures: list[tuple[Any, ...]] = []
        now = time.monotonic()
        completed = p.state == Outcome.COMPLETED
        for d in p.dependents:
            if d.phase is Phase.DONE:
                continue
            d.deps_pending.discard(p.pid)  # type: ignore[union-attr]  # (it has one: p)
            if not completed:
                failures.append((d, Outcome.FAILED, 1, f"dependency failed: {format_pid(p.pid)} {p.state}", None))
            elif not d.deps_pending and d.phase is Phase.WAITING:
                self.move(d, Phase.READY)
                d.detail = "queued"
                self.scheduler.enqueue(d, now)
            elif d.phase is Phase.WAITING:
                d.detail = self._waiting_detail(d)
        p.dependents = ()
        if cascade:
            for f in failures:
                self.finish_locked(*f)
            return []
        return failures

    def on_commit(self, seq: int) -> None:
        """Store writer thread, after a commit: release what waited for those terminal states."""
        with self.lock:
            if not self._pending_release or self._pending_release[0][0] > seq:
                return
            ready = [p for s, p in self._pending_release if s <= seq]
            self._pending_release = [(s, p) for s, p in self._pending_release if s > seq]
            for p in ready:
                self._release_dependents_locked(p)
            self.dispatch_locked(time.monotonic())

    def requeue_locked(self, proc: Process, delay: float, detail: str) -> None:
        """Run a process's body again, under its PID, after `delay` seconds (a retry or restart):
        the attempt that just ended leaves its slot and its thread, and nothing of it stays
        (subprocess, pending requests, kill state); the `on_attempt_end` hooks run; the process
        waits (phase waiting, `detail` shown) and is queued when the delay is over; a paused one
        stays paused (resuming it queues it). Hold the lock."""
        now = time.monotonic()
        self._off_slot(proc, now)
        if proc.phase in (Phase.RUNNING, Phase.PREEMPTED):  # (preempted: stopped while waiting to go on)
            self.move(proc, Phase.WAITING)
        if proc.subprocess is not None and proc.subprocess.poll() is None:
            signal_group(proc.subprocess, signal.SIGKILL)
        # The next attempt is a fresh body on whichever worker is free: nothing of this one's thread stays.
        proc.has_thread = False
        proc.thread_ident = proc.native_id = proc.subprocess = None
        proc.injected = proc.unkillable = False
        proc.requests &= REQ_HOOK  # a kill that ended the attempt (a timeout) is answered; a preemption is moot
        proc.kill_reason, proc.kill_outcome, proc.kill_code = "", "Cancelled", None
        proc.blocked_on = ()
        proc.attempt_base = proc.run_accum
        proc.state = QUEUED_STATE[proc.kind]
        self.set_detail_locked(proc, detail)
        for hook in self._hooks["on_attempt_end"]:
            hook(proc)
        self._arm(proc, delay, self._attempt_due, proc)

    def _attempt_due(self, proc: Process) -> None:
        """Timer: the retry or restart wait is over; queue the next attempt (a paused process
        stays paused: resuming it queues it). The process's one timer slot means a stale
        wake-up cannot exist: arming another cancels this one."""
        with self.lock:
            proc.timer = None
            if proc.phase is not Phase.WAITING or proc.has_thread:
                return
            now = time.monotonic()
            self.move(proc, Phase.READY)
            self.scheduler.enqueue(proc, now)
            self.dispatch_locked(now)

    # ------------------------------------------------------------------ waiting from outside

    def wait_live(self, targets: list[Process], timeout: float | None) -> None:
        """Block the calling (non-process) thread until every one of `targets` has finished or
        `timeout` passes. Hold the lock (it is released while waiting). The waiter is woken once,
        by the last of them to finish, not at every end (100,000 ends would each wake it)."""
        live = [t for t in targets if t.phase is not Phase.DONE]
        if not live:
            return
        group = _WaitGroup(len(live), threading.Condition(self.lock))
        for t in live:
            self._groups.setdefault(t.pid, []).append(group)
        try:
            group.cond.wait_for(lambda: group.left <= 0, timeout)
        finally:
            if group.left > 0:  # timed out (or interrupted): stop counting for those still live
                for t in live:
                    if t.phase is not Phase.DONE:
                        groups = self._groups.get(t.pid)
                        if groups is not None and group in groups:
                            groups.remove(group)
                            if not groups:
                                del self._groups[t.pid]

    def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Block a non-process thread until `predicate()` holds (it is re-checked whenever a
        process finishes or `notify_done` is called), or `timeout` passes. Hold the lock."""
        self._until += 1
        try:
            return self._done.wait_for(predicate, timeout)
        finally:
            self._until -= 1

    def notify_done(self) -> None:
        """Wake external waiters (a debugger stop is a reason to look again). Hold the lock."""
        self._done.notify_all()

    # ------------------------------------------------------------------ in the process's own thread

    def control_point(self, proc: Process) -> None:
        with self.lock:
            self.control_point_locked(proc)
            proc.last_active = time.monotonic()  # the watchdog's sign of life

    def control_point_locked(self, proc: Process) -> None:
        """Honour pending requests. Blocks while paused or preempted; raises ProcessKilled."""
        while True:
            if proc.requests & REQ_KILL:
                raise ProcessKilled(proc.kill_reason)
            if proc.phase is Phase.RUNNING:
                now = time.monotonic()
                if proc.requests & REQ_PAUSE:
                    proc.requests &= ~REQ_PAUSE
                    self.leave_slot_locked(proc, Phase.PAUSED, now)
                    self._paused(proc, deferred=True)  # requested earlier: process.pause_requested
                    self.dispatch_locked(now)
                    continue
                if proc.requests & REQ_PREEMPT:
                    self.leave_slot_locked(proc, Phase.PREEMPTED, now)
                    self.scheduler.enqueue(proc, now, front=True)
                    proc.detail = "preempted by a higher-priority process"
                    proc.note("preempted")
                    self.emit("process.preempted", proc, reason="priority")
                    self.dispatch_locked(now)
                    continue
                if proc.requests & REQ_HOOK and any(hook(proc, now) for hook in self._hooks["on_control_point"]):
                    continue  # stopped (a breakpoint): it waits below until it runs again
                if self.scheduler.should_yield(proc, now):
                    self.leave_slot_locked(proc, Phase.PREEMPTED, now)
                    self.scheduler.enqueue(proc, now)
                    proc.detail = "time slice used; waiting for its turn"
                    self.emit("process.preempted", proc, reason="time slice")
                    self.dispatch_locked(now)
                    continue
                return
            # Paused or preempted. The dispatch above may already have handed the slot back
            # (phase RUNNING again): then the loop goes on without waiting for a wake-up that
            # was sent before we waited.
            if proc.pid in self._away:
                return  # off-slot (`off_slot`): the outside wait goes on; a pause takes hold at its end
            self._cond(proc).wait()

    @contextmanager
    def off_slot(self, proc: Process, what: str, on_kill: Callable[[], None] | None = None) -> Iterator[None]:
        """`proc`'s own thread waits for something outside llmunix (a model's reply, an endpoint's
        capacity) without holding a slot, like `block` but with the waiting done by the caller::

            with table.off_slot(proc, "the model: gpt-4o-mini", on_kill=call.abort):
                reply = call.send()   # ctx.check(), log, progress and sleep only, in here

        On entry the process honours pending requests, leaves its slot (phase waiting, `ps`
        detail "waiting for WHAT") and the scheduler starts someone else. Inside, a control point
        raises ProcessKilled on a kill and otherwise returns at once: a pause shows at once
        (phase paused) while the wait goes on, and takes hold when the block ends. `on_kill` is
        called, lock held (it must not block), when the process is asked to stop, so a wait on
        something else (a socket, a queue) can end at once. Blocks nest: an inner one shows its
        WHAT (and has its `on_kill`) until it ends. On leaving the outermost, the process queues
        at the front of its level and waits for a slot (or while paused). Inside, do not
        `block`, `wait`, `recv` or take IPC locks (they need the slot): leave the block first."""
        self._leave_for(proc, what, on_kill)
        try:
            yield
        finally:
            self._come_back(proc)

    def _leave_for(self, proc: Process, what: str, on_kill: Callable[[], None] | None) -> None:
        with self.lock:
            stack = self._away.get(proc.pid)
            now = time.monotonic()
            if stack is None:
                self.control_point_locked(proc)  # pending requests first; returns running
                self.leave_slot_locked(proc, Phase.WAITING, now)
                stack = self._away[proc.pid] = []
            stack.append((what, on_kill, proc.waker))
            if on_kill is not None:
                # The table wakes a process for many reasons (a message, a pause); only a kill is
                # this wait's business.
                proc.waker = lambda: on_kill() if proc.requests & REQ_KILL else None
            if proc.phase is Phase.WAITING:  # (a paused one goes on saying why it is paused)
                self.set_detail_locked(proc, "waiting for " + what)
            self.emit("process.blocked", proc, detail="waiting for " + what)
            if len(stack) == 1:
                self.dispatch_locked(now)

    def _come_back(self, proc: Process) -> None:
        with self.lock:
            stack = self._away[proc.pid]
            what, _wake, before = stack.pop()
            proc.waker = before
            if stack:
                if proc.phase is Phase.WAITING:
                    self.set_detail_locked(proc, "waiting for " + stack[-1][0])
                return
            del self._away[proc.pid]
            if proc.requests & REQ_KILL:
                raise ProcessKilled(proc.kill_reason)
            if proc.phase is Phase.WAITING:
                now = time.monotonic()
                self.move(proc, Phase.PREEMPTED)
                proc.detail = f"done waiting for {what}; waiting for a slot"
                self.scheduler.enqueue(proc, now, front=True)
                self.dispatch_locked(now)
            self.control_point_locked(proc)  # until it runs again (paused meanwhile: until resumed)

    def block(self, proc: Process, ready: Callable[[], bool], detail: str, timeout: float | None = None,
              counts: bool = True) -> bool:
        """Wait in `proc`'s own thread until `ready()` holds, without holding a slot.

        A control point throughout (pause, kill, preemption apply). `ready` is called with the
        lock held; whoever changes what it reads calls `wake(proc)` under the lock. While it is
        false the process is in phase `waiting` with `detail`, its slot and needs given back;
        once true it queues at the front of its level for a slot again. Returns `ready()`
        (False after `timeout` seconds). `counts`: the wait is running time (the work's own)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while True:
                self.control_point_locked(proc)  # returns running
                if ready():
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                self.leave_slot_locked(proc, Phase.WAITING, now, counts)
                proc.waiting = ready
                proc.detail = detail
                self.emit("process.blocked", proc, detail=detail)
                self.dispatch_locked(now)
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
                    self.move(proc, Phase.PREEMPTED)
                    proc.detail = "woken; waiting for a slot"
                    self.scheduler.enqueue(proc, now, front=True)
                    self.dispatch_locked(now)

    def wait_for(self, proc: Process, pids: list[int], timeout: float | None, any_: bool,
                 only_ended: bool = False) -> list[ProcessInfo] | None:
        """`ctx.wait`: block off-slot until the processes end; their ends are durable when it
        returns. With `only_ended`, the snapshots of those that have ended; else None (the
        caller looks them up: some may have finished in an earlier session)."""
        wanted = [as_pid(p) for p in pids]
        with self.lock:
            targets = [t for t in (self.procs.get(p) for p in wanted) if t is not None]
            for t in targets:
                if t.phase is not Phase.DONE:
                    self._watchers.setdefault(t.pid, []).append(proc)

        def ended() -> bool:
            if not targets:
                return True
            done = (t.phase is Phase.DONE for t in targets)
            return any(done) if any_ else all(done)

        what = "waiting for " + ", ".join(format_pid(p) for p in wanted[:5]) + (" ..." if len(wanted) > 5 else "")
        try:
            self.block(proc, ended, what, timeout)
        finally:
            with self.lock:  # a timeout or a kill: stop watching those still live
                for t in targets:
                    if t.phase is not Phase.DONE:
                        w = self._watchers.get(t.pid)
                        if w is not None and proc in w:
                            w.remove(proc)
                            if not w:
                                del self._watchers[t.pid]
        seq = max((t.end_seq for t in targets if t.phase is Phase.DONE), default=0)
        if seq:
            self.wait_durable(seq)  # an output is committed before anything acts on it
        if only_ended:
            with self.lock:
                return [self.snapshot(t) for t in targets if t.phase is Phase.DONE]
        return None

    def sleep(self, proc: Process, seconds: float) -> None:
        """Sleep `seconds` of running time; paused time does not count."""
        remaining = seconds
        with self.lock:
            self.control_point_locked(proc)
            while remaining > 0:
                t0 = time.monotonic()
                proc.last_active = t0 + remaining  # asleep on purpose: alive until it is due (watchdog)
                self._cond(proc).wait(remaining)
                remaining -= time.monotonic() - t0
                self.control_point_locked(proc)

    def hang(self, proc: Process) -> None:
        """Hold the slot and reach no control point until a kill (an injected hang: a pause waits
        in vain, as for a hung call). Raises ProcessKilled."""
        with self.lock:
            while not proc.requests & REQ_KILL:
                self._cond(proc).wait()
            raise ProcessKilled(proc.kill_reason)

    def idle(self, proc: Process, seconds: float, detail: str) -> None:
        """Wait `seconds` off-slot (phase waiting with `detail`): a control point throughout."""
        self.block(proc, _never, detail, seconds)

    def progress(self, proc: Process, step: int, total: int | None, message: str) -> None:
        with self.lock:
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
            event = self.emit("process.progress", proc, step=step, total=total, percentage=proc.percentage,
                              message=message)
        if self.store is not None:
            self.store.throttle(event.seq)

    def log(self, proc: Process, message: str) -> None:
        with self.lock:
            proc.last_active = time.monotonic()  # the watchdog's sign of life
            proc.add_log(time.time(), message)
            event = self.emit("process.log", proc, line=message)
        if self.store is not None:
            self.store.throttle(event.seq)  # a flood of lines waits for the store, not memory

    def checkpoint(self, proc: Process, state: Any, **data: Any) -> tuple[int, int]:
        """Record checkpoint version N of `proc` (JSON data); returns (N, its event's seq)."""
        with self.lock:
            return self.checkpoint_locked(proc, state, **data)

    def checkpoint_locked(self, proc: Process, state: Any, **data: Any) -> tuple[int, int]:
        proc.last_active = time.monotonic()  # the watchdog's sign of life
        if not proc.checkpoints:
            proc.checkpoints = []
        proc.checkpoints.append(state)  # type: ignore[union-attr]
        version = len(proc.checkpoints)
        proc.note("checkpoint", f"version {version}" + (" (modified)" if data.get("modified") else ""))
        proc.forget_snapshot()
        event = self.emit("process.checkpoint", proc, version=version, state=state, **data)
        return version, event.seq

    def set_state(self, proc: Process, state: str, detail: str) -> None:
        with self.lock:
            if proc.state == state and (not detail or proc.detail == detail):
                return
            if proc.state != state:  # history keeps state changes, not every new detail
                proc.note("state", f"{state}: {detail}" if detail else state)
            proc.state = state
            if detail:
                proc.detail = detail
            self.emit("process.state", proc, state=state, detail=detail)

    def reset_progress_locked(self, proc: Process) -> None:
        """Progress back to nothing (a restart runs the body from scratch)."""
        proc.step, proc.total, proc.percentage, proc.eta, proc.message = 0, None, None, None, ""
        proc.forget_snapshot()

    def restore_from_locked(self, proc: Process, state: Any) -> None:
        """What the next attempt's `ctx.restored` is (a checkpoint, or None to start afresh)."""
        proc.restored = state

    def set_param_locked(self, proc: Process, name: str, value: Any) -> Any:
        """Change one parameter of a live process (the debugger's `modify`); returns the old value.
        The tool sees it the next time it reads `ctx.params`."""
        old = proc.params.get(name)
        proc.params[name] = value
        proc.forget_snapshot()
        return old

    def replace_tool_locked(self, proc: Process, tool: Tool, params: Mapping[str, Any]) -> None:
        """Run another tool in this process from its next attempt on (a fallback tool standing
        in for one whose circuit is open); `ctx.params` is a view of the same dict, so it changes
        in place."""
        proc.params.clear()
        proc.params.update(params)
        proc.tool = tool
        proc.forget_snapshot()

    def attach_subprocess(self, proc: Process, child: Any, what: str = "subprocess") -> None:
        """`child` (a Popen, or an isolated worker's handle) leads a process group of its own that
        does the process's work: recorded to die with llmunix (`guard`), then signalled with it."""
        for hook in self._hooks["on_subprocess"]:  # (first: recording it below writes to disk)
            hook(proc, child)
        if self.guard is not None:
            self.guard.adopt(child.pid, f"{format_pid(proc.pid)} {proc.tool.name}" +
                             ("" if what == "subprocess" else f" ({what})"))
        with self.lock:
            proc.subprocess = child
            renice_group(child, proc.priority)
            proc.note(what, f"pid {child.pid}")
            self.emit("process.subprocess", proc, os_pid=child.pid, **({} if what == "subprocess" else {"what": what}))
            if proc.phase is not Phase.RUNNING:
                signal_group(child, signal.SIGSTOP)
            if proc.requests & REQ_KILL:
                signal_group(child, signal.SIGTERM)

    def wait_durable(self, seq: int) -> None:
        if self.store is not None and not self.store.wait_durable(seq, timeout=60):
            log.error("event %d was not committed within 60 s", seq)

    def record_sample(self, proc: Process, cpu_percent: float | None, memory_mb: float | None,
                      io_operations: int | None, sample: Any) -> None:
        """The monitor's measurement of a running process. Hold the lock."""
        if proc.phase is Phase.DONE:
            return
        if cpu_percent is not None:
            proc.cpu_percent = cpu_percent
        proc.memory_mb = memory_mb
        proc.io_operations = io_operations
        proc.add_sample(sample)
        if memory_mb is not None and (proc.peak_memory_mb is None or memory_mb > proc.peak_memory_mb):
            proc.peak_memory_mb = memory_mb

    # ------------------------------------------------------------------ the worker side

    def _execute(self, proc: Process) -> Process | None:
        """Run process bodies on this worker thread: `proc`, then each process the scheduler
        hands this same thread when a body ends (its end and the next one's start are one hold
        of the lock: no queue, no other thread woken). Returns None when there is none."""
        with self.lock:
            killed = self._begin_locked(proc)
        job: tuple[Process, bool] | None = (proc, killed)
        while job is not None:
            job = self._run(*job)
        return None

    def _begin_locked(self, proc: Process) -> bool:
        """`proc` starts its body on this thread. Returns True if a kill came first (it then
        ends without running)."""
        proc.thread_ident = threading.get_ident()
        proc.native_id = threading.get_native_id()
        if proc.requests & REQ_KILL:
            return True
        proc.in_body = True
        proc.started = time.time()
        proc.detail = "running"
        proc.note("started")
        self.emit("process.started", proc, tool=proc.tool.name, state=proc.state)
        if proc.timeout is not None:
            self._arm(proc, proc.timeout, self._timeout_check, proc)
        return False

    def _run(self, proc: Process, killed: bool) -> tuple[Process, bool] | None:
        """One body, from its start to its terminal state; returns the next process this thread
        runs (already begun), if the scheduler has one for it."""
        outcome, code, error, output = Outcome.CANCELLED, EXIT_CANCELLED, proc.kill_reason, None
        if not killed:
            try:
                try:
                    assert self.context is not None
                    ctx = self.context(proc)
                    for hook in self._hooks["before_body"]:
                        hook(proc, ctx)  # resilience: circuit breakers, fallback tools, chaos faults
                    if self.remote is not None and (proc.tool.remote if self.placement is None
                                                    else self.placement(proc)):
                        output = self.remote.run(ctx, Relay(self, proc))  # a proxy for a body on a cluster
                    elif self.isolation is not None and self.isolation.wants(proc):
                        output = self.isolation.run(ctx, Relay(self, proc))  # a proxy for a worker OS process
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
        # Close the door on asynchronous kills before touching the table: once in_body is False
        # (under the lock) no new one is injected, and a pending one is cleared. Nothing that
        # cannot be done twice happens before that clear, so an injected kill that fires in
        # between only makes the loop go round again.
        while True:
            try:
                with self.lock:
                    proc.in_body = False
                    if proc.injected:
                        # Clear a kill that was injected but has not fired (this is its thread).
                        drain_async_exception()
                        proc.injected = False
                    if outcome is Outcome.CANCELLED or (proc.requests & REQ_KILL and outcome is not Outcome.COMPLETED):
                        outcome = Outcome(proc.kill_outcome)
                        code, error = _kill_status(proc, outcome), proc.kill_reason or error
                    if outcome is not Outcome.COMPLETED and not error:
                        error = proc.kill_reason or "killed"
                    for hook in self._hooks["after_body"]:
                        if hook(proc, outcome, code, error, output):
                            break  # taken on: it runs again
                    else:
                        self.finish_locked(proc, outcome, code, error, output)
                    if proc.subprocess is not None and proc.subprocess.poll() is None:
                        signal_group(proc.subprocess, signal.SIGKILL)
                    nxt = self.dispatch_locked(time.monotonic(), claim=True)
                    return (nxt, self._begin_locked(nxt)) if nxt is not None else None
            except ProcessKilled:
                continue

    def _timeout_check(self, proc: Process) -> None:
        """Timer: stop a process whose running time passed its timeout (paused time does not
        count; the limit is per attempt)."""
        with self.lock:
            proc.timer = None
            if proc.phase is Phase.DONE or proc.timeout is None or proc.requests & REQ_KILL or not proc.in_body:
                return  # (not in_body: between attempts; the next one arms its own timer)
            left = proc.timeout - proc.attempt_runtime(time.monotonic())
            if left > 0.001:
                self._arm(proc, left, self._timeout_check, proc)
                return
            self.kill_tree_locked(proc, f"timed out after {proc.timeout:g}s")

    # ------------------------------------------------------------------ shutdown

    def stop_all(self, pids: list[int], reason: str, outcome: Outcome) -> list[Process]:
        """Ask every one of `pids` still live to stop, as `kill` would (parents before their
        children, as PIDs mostly grow; nothing new starts meanwhile), in batches under the lock
        and without building snapshots: shutdown may cancel 100,000 queued processes. Returns
        the processes it stopped: not those a user's kill is ending already (they end as that
        kill says, Cancelled, and are not this stop's to report)."""
        asked: list[Process] = []
        code = _exit_for(outcome)
        for start in range(0, len(pids), 1000):  # let others have the lock between batches
            with self.lock:
                for pid in pids[start:start + 1000]:
                    proc = self.live.get(pid)
                    if proc is None or proc.phase is Phase.DONE:
                        continue
                    if proc.requests & REQ_KILL and proc.kill_outcome != Outcome.INTERRUPTED:
                        continue  # being killed for good already
                    asked.append(proc)
                    if proc.has_thread:
                        self.kill_locked(proc, False, reason, outcome)
                    else:  # never started: nothing to stop, and no user's kill to record
                        self.finish_locked(proc, outcome, code, reason)
        return asked

    def wait_procs(self, procs: list[Process], timeout: float | None) -> Snapshots:
        """Block until these processes have finished (or `timeout`); their snapshots, each built
        when it is first read (shutdown may have stopped 100,000 queued processes, and its caller
        often wants only their count and a few PIDs). For a caller that holds the records
        already (shutdown: they may leave the table meanwhile)."""
        with self.lock:
            self.wait_live(procs, timeout)
        return Snapshots(self, procs)

    def close(self) -> None:
        """Every process has ended: stop the threads (executor, timers) and record the next PID."""
        self.executor.shutdown(timeout=1.0)
        self.timers.close()


# Each outcome's visible state, history note and terminal event type (no enum lookups per end).
_ENDS = {oc: (oc.value, oc.value.lower(), f"process.{oc.value.lower()}") for oc in Outcome}


class _WaitGroup:
    """An external `wait` for several processes: woken when `left` reaches 0."""

    __slots__ = ("left", "cond")

    def __init__(self, left: int, cond: threading.Condition) -> None:
        self.left = left
        self.cond = cond


def exit_for(outcome: Outcome) -> int | None:
    """The exit status of a process the engine stopped: 143 (cancelled, as a shell reports a
    terminated job), 124 (failed: timed out, as timeout(1) says), None (interrupted: not an end)."""
    return _exit_for(outcome)


def _kill_status(proc: Process, outcome: Outcome) -> int | None:
    """The exit status of a process a kill ended: the one the kill named, else its outcome's."""
    return proc.kill_code if proc.kill_code is not None and outcome is not Outcome.INTERRUPTED \
        else _exit_for(outcome)


def _exit_for(outcome: Outcome) -> int | None:
    if outcome is Outcome.INTERRUPTED:
        return None
    return EXIT_TIMEOUT if outcome is Outcome.FAILED else EXIT_CANCELLED


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _never() -> bool:
    return False


def _pid_text(pid: object) -> str:
    try:
        return format_pid(int(pid))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return repr(pid)


def describe_exception(exc: BaseException) -> str:
    """`TypeError: first line of the message`: how a failed body's exception is reported."""
    return _describe(exc)


__all__ = ["HOOK_NAMES", "Hooks", "PidAllocator", "ProcessTable", "Relay", "describe_exception", "exit_for"]


def iter_hooks(table: ProcessTable) -> Iterable[tuple[str, str]]:
    """(hook, implementation) pairs, for docs and tests."""
    for name, impls in table.hooks().items():
        for impl in impls:
            yield name, impl

