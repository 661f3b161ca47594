"""A process: the runtime record the kernel mutates, and the context its code sees.

`Process` is owned by the kernel and only changed while the kernel lock is held; the shell never
sees one (it gets `ProcessInfo` snapshots). `ProcessContext` is the tool code's handle: every call
on it is a *control point* where pending pause, preemption, kill and time-slice requests are
honoured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping  # noqa: F401 - Callable in a slot's annotation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llmunix.models import (
    EMPTY,
    PRIORITY_LABELS,
    QUEUED_STATE,
    Context,
    HistoryEntry,
    LlmunixError,
    Phase,
    Priority,
    ProcessInfo,
    Progress,
    PsRow,
    Resources,
    fast_constructor,
    shown_state,
)
from llmunix.reaper import die_with_parent

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from llmunix.ipc.handles import (
        BarrierHandle,
        ConditionHandle,
        ElectionHandle,
        MutexHandle,
        RWLockHandle,
        SemaphoreHandle,
        SharedView,
    )
    from llmunix.ipc.messages import Message
    from llmunix.ipc.shared import SharedBuffer
    from llmunix.lifecycle import ProcessTable
    from llmunix.timers import TimerHandle
    from llmunix.tools.registry import Tool

HISTORY_LIMIT = 200
SAMPLES_KEPT = 60  # the monitor's measurements kept per process (monitor.HISTORY)
_new_row = tuple.__new__  # PsRow without its Python-level __new__ (ps builds 100,000)
# Snapshots (one per process in `wait`) are built without the frozen dataclass's slower __init__
# (28 fields; for its small parts the generated __init__ is faster). Every field, in field order.
_new_info = fast_constructor(ProcessInfo)
_new_entry = tuple.__new__  # HistoryEntry without its Python-level __new__
_NO_RESOURCES = Resources()  # what a process the monitor never measured shows (shared: immutable)
_NO_PROGRESS = Progress()
_PAUSED, _DONE = Phase.PAUSED, Phase.DONE
LOG_LIMIT = 1000

# Request flags, checked without the lock at every control point (one int compare when idle).
REQ_PAUSE = 1
REQ_PREEMPT = 2
REQ_KILL = 4
REQ_HOOK = 8  # a feature watches this process's control points (ProcessTable.watch: the debugger)
REQ_STOP = REQ_PAUSE | REQ_PREEMPT | REQ_KILL  # a request that stops it running


class Process:
    """Mutable runtime record. Mutates only under the kernel lock."""

    __slots__ = (
        "pid", "name", "tool", "params", "kind", "priority", "owner", "parent", "after", "cwd",
        "created", "started", "finished", "phase", "state", "detail", "exit_code", "error",
        "output", "step", "total", "message", "percentage", "eta", "history", "logs",
        "checkpoints", "restored", "requests", "kill_reason", "kill_outcome", "kill_code", "pause_reason", "paused_by",
        "has_thread", "thread_ident", "native_id", "in_body", "injected", "unkillable", "cond", "waker",
        "timer", "timeout", "run_since", "run_accum", "attempt_base", "last_active",
        "deps_pending", "dependents", "children", "waiting", "end_seq", "subprocess",
        "cpu_percent", "memory_mb", "io_operations", "samples", "peak_memory_mb",
        # the scheduler's fields (scheduler.py, "State")
        "ready_since", "queue_token", "slice_start", "needs", "predicted", "holds", "blocked_on",
        "_snapshot", "_row",
    )

    def __init__(self, pid: int, tool: Tool, params: dict[str, Any], *, name: str, priority: Priority,
                 owner: str, parent: int | None, after: tuple[int, ...], cwd: str) -> None:
        self.pid = pid
        self.name = name
        self.tool = tool
        self.params = params
        self.kind = tool.kind
        self.priority = priority
        self.owner = owner
        self.parent = parent
        self.after = after
        self.cwd = cwd
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.phase = Phase.READY
        self.state = QUEUED_STATE[self.kind]
        self.detail = "queued"
        self.exit_code: int | None = None
        self.error: str | None = None
        self.output: Any = None
        self.step = 0
        self.total: int | None = None
        self.message = ""
        self.percentage: float | None = None
        self.eta: float | None = None
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY_LIMIT)
        self.logs: Any = ()  # deque of (time, line), made at its first log line (add_log)
        self.checkpoints: list[Any] | tuple[()] = ()  # a list from its first checkpoint
        self.requests = 0
        self.kill_reason = ""
        self.has_thread = False
        self.thread_ident: int | None = None
        self.native_id: int | None = None
        self.in_body = False
        self.cond: threading.Condition | None = None  # made when its thread starts
        self.ready_since = 0.0
        self.queue_token = 0
        self.slice_start = 0.0
        self.run_since: float | None = None  # monotonic time the current running stretch began
        self.run_accum = 0.0
        # Made when first needed (most processes have no dependencies, dependents or children:
        # fewer containers per process is less for the garbage collector to walk).
        self.deps_pending: set[int] | tuple[()] = ()
        self.dependents: list[Process] | tuple[()] = ()
        self.subprocess: subprocess.Popen[bytes] | None = None
        self.cpu_percent: float | None = None
        self.memory_mb: float | None = None
        self.io_operations: int | None = None
        self.unkillable = False
        self.injected = False  # an asynchronous ProcessKilled was sent to its thread
        self.samples: Any = None  # deque of ResourceSample, made by the monitor when it first measures
        self.peak_memory_mb: float | None = None
        self.kill_outcome = "Cancelled"  # or "Interrupted" when llmunix itself is stopping
        self.kill_code: int | None = None  # the exit status a kill for good gives (None: its outcome's)
        self.pause_reason = "paused by user"  # what `ps` says while it is paused
        self.restored: Any = None  # the checkpoint a recovered process resumes from
        self.waker: Callable[[], None] | None = None  # called when it is woken (a proxy's wait loop: Relay)
        self.timer: TimerHandle | None = None  # its one pending timer: a timeout, a kill stage, a retry
        self.attempt_base = 0.0  # running time before this attempt began (timeouts are per attempt)
        self._snapshot: ProcessInfo | None = None
        self._row: PsRow | None = None  # ps_row(), cached once it is done
        self.needs: dict[str, float] = {}  # resources it must hold to run (admission.py)
        self.predicted: tuple[str, ...] = ()  # which of those were predicted from past runs
        self.holds = False  # its needs are acquired from the pool (only while running)
        self.blocked_on: tuple[str, ...] = ()  # what it waited for when last considered
        self.waiting: Callable[[], bool] | None = None  # blocked off-slot until this holds (Kernel._block)
        self.timeout: float | None = None  # seconds of running time before it is stopped as Failed
        self.paused_by: int | None = None  # the parent whose pause paused it (resumed with it)
        self.end_seq = 0  # seq of its terminal event (durable once the store has committed it)
        self.children: set[Process] | tuple[()] = ()  # its live child processes (leave when they finish)
        self.last_active = 0.0  # monotonic time of its last control point (the watchdog's sign of life)

    def __repr__(self) -> str:
        return f"<Process {self.pid} {self.name} {self.phase}>"

    def runtime(self, now: float) -> float:
        return self.run_accum + (now - self.run_since if self.run_since is not None else 0.0)

    def attempt_runtime(self, now: float) -> float:
        """Running time of the current attempt (a retried process runs its body more than once)."""
        return self.runtime(now) - self.attempt_base

    def start_clock(self, now: float) -> None:
        """It runs (again): from now its running time counts; an off-slot wait's time counts too."""
        if self.run_since is not None:
            self.run_accum += now - self.run_since
        self.run_since = now

    def stop_clock(self, now: float, keep_running: bool = False) -> None:
        """It stopped running. `keep_running`: blocked off-slot, which still counts as its time."""
        if self.run_since is not None:
            self.run_accum += now - self.run_since
            self.run_since = now if keep_running else None

    def forget_snapshot(self) -> None:
        """Its cached snapshot is stale (only a finished process's is kept)."""
        self._snapshot = None

    @property
    def final_snapshot(self) -> ProcessInfo | None:
        """A finished process's snapshot, once built (it never changes again), else None."""
        return self._snapshot

    def add_log(self, when: float, line: str) -> None:
        if not self.logs:
            self.logs = deque(maxlen=LOG_LIMIT)
        self.logs.append((when, line))

    def add_child(self, child: Process) -> None:
        if not self.children:
            self.children = set()
        self.children.add(child)  # type: ignore[union-attr]

    def drop_child(self, child: Process) -> None:
        if self.children:
            self.children.discard(child)  # type: ignore[union-attr]

    def add_dependency(self, dep: Process) -> None:
        """It waits for `dep` to finish (and `dep` knows it has a dependent)."""
        if not self.deps_pending:
            self.deps_pending = set()
        self.deps_pending.add(dep.pid)  # type: ignore[union-attr]
        if not dep.dependents:
            dep.dependents = []
        dep.dependents.append(self)  # type: ignore[union-attr]

    def add_sample(self, sample: Any) -> None:  # a monitor.ResourceSample
        if self.samples is None:
            self.samples = deque(maxlen=SAMPLES_KEPT)
        self.samples.append(sample)

    def note(self, event: str, details: str = "") -> None:
        self.history.append(_new_entry(HistoryEntry, (time.time(), event, details)))

    def ps_row(self, now: float) -> PsRow:
        """The columns `ps` prints (what `snapshot().ps_row()` gives, without the snapshot).
        Finished processes never change, so theirs is built once. (Written for speed: `ps -a`
        builds 100,000 of these; `Kernel.ps_rows` takes a cached `_row` without calling this.)"""
        if self._row is not None:
            return self._row
        phase = self.phase
        since = self.run_since
        row = _new_row(PsRow, (self.pid, self.name, shown_state(phase, self.state, self.detail),
                               PRIORITY_LABELS[self.priority],
                               int(self.run_accum + (now - since if since is not None else 0.0)),
                               self.memory_mb, self.cpu_percent, self.percentage, self.step, self.state, phase))
        if phase is _DONE:
            self._row = row
        return row

    def snapshot(self, effective: Priority | None = None, attempts: Any = None, worker: str | None = None
                 ) -> ProcessInfo:
        """An immutable copy. Finished processes never change, so theirs is built once.
        `attempts` and `worker` come from the features that keep them (ProcessTable.snapshot)."""
        if self._snapshot is not None:
            return self._snapshot
        info = _new_info(
            self.pid,
            self.name,
            self.tool.name,
            self.kind,
            self.phase,
            self.state,
            self.detail,
            self.priority,
            effective if effective is not None else self.priority,  # effective_priority
            self.owner,
            self.parent,
            self.after,
            self.created,
            self.started,
            self.finished,
            self.runtime(time.monotonic()),
            self.exit_code,
            self.error,
            self.output,
            (Progress(self.step, self.total, self.percentage, self.eta, self.message)
             if self.step or self.total is not None or self.message or self.percentage is not None else _NO_PROGRESS),
            (self._resources() if self.samples is not None or self.memory_mb is not None
             or self.cpu_percent is not None else _NO_RESOURCES),
            Context(
                self.cwd,
                MappingProxyType(dict(self.params)) if self.params else EMPTY,
                MappingProxyType({"checkpoint": self.checkpoints[-1]}) if self.checkpoints else EMPTY,
            ),
            tuple(self.history),
            self.subprocess.pid if self.subprocess is not None else None,  # subprocess_pid
            MappingProxyType(dict(self.needs)) if self.needs else EMPTY,  # needs
            self.predicted,  # predicted_needs
            attempts,
            worker,
        )
        if self.phase is Phase.DONE:
            self._snapshot = info
        return info


    def _resources(self) -> Resources:
        """The monitor's figures; RSS and bytes come with its last sample (an OS process's)."""
        last = self.samples[-1] if self.samples else None
        if last is None:
            return Resources(self.memory_mb, self.cpu_percent, self.io_operations)
        return Resources(self.memory_mb, self.cpu_percent, self.io_operations, last.rss_mb, last.read_bytes,
                         last.write_bytes)


class ProcessContext:
    """What tool code sees as `ctx`: the only door from a body to the engine. Every method is a
    control point unless it says otherwise. llmunix's own bodies (the workflow runner, the agent
    loop, remote proxies) use this same API."""

    __slots__ = ("_kernel", "_table", "_proc", "params", "pid", "restored")

    def __init__(self, kernel: Any, proc: Process) -> None:
        self._kernel = kernel  # the Kernel facade: spawn, ipc, resilience
        self._table: ProcessTable = kernel.table
        self._proc = proc
        self.pid: int = proc.pid
        self.params: Mapping[str, Any] = MappingProxyType(proc.params)
        self.restored: Any = proc.restored  # the checkpoint it resumes from after recovery, else None

    @property
    def cwd(self) -> str:
        return self._proc.cwd

    @property
    def priority(self) -> Priority:
        return self._proc.priority

    @property
    def parent(self) -> int | None:
        """The PID of the process that started this one (a workflow, an agent), or None."""
        return self._proc.parent

    @property
    def interrupted(self) -> bool:
        """True while llmunix itself is stopping this process (it ends Interrupted and `recover`
        continues it), rather than a user or a failure stopping it."""
        return self._proc.kill_outcome == "Interrupted"

    def check(self) -> None:
        """A bare control point: honour pause, preemption, kill and the time slice."""
        proc = self._proc
        # Lock-free fast path: nothing asked of this process and nothing waiting for its slot.
        # (A subprocess tool can be paused or preempted from outside without a request flag.)
        if proc.requests or proc.phase is not Phase.RUNNING or self._table.scheduler.slice_expired(proc):
            self._table.control_point(proc)

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        """Report progress: `step` of `total` done, with an optional human message."""
        self._table.progress(self._proc, step, total, message)
        self.check()

    def log(self, message: str) -> None:
        """Append a line to this process's log (`log PID`); never printed by the engine."""
        self._table.log(self._proc, str(message))
        self.check()

    def output(self, line: str) -> None:
        """Append a line to the log without a control point: for threads that read a child's
        output while the body itself waits (they must not block on a pause)."""
        self._table.log(self._proc, str(line))

    @property
    def kill_grace(self) -> float:
        """Seconds a stopping subprocess gets between SIGTERM and SIGKILL."""
        return self._table.kill_grace

    def checkpoint(self, state: Any) -> int:
        """Record a new checkpoint version of JSON-serialisable state; returns its version."""
        try:
            encoded = json.loads(json.dumps(state))
        except (TypeError, ValueError) as exc:
            raise LlmunixError(f"checkpoint state must be JSON-serialisable: {exc}") from None
        version, seq = self._table.checkpoint(self._proc, encoded)
        self._table.wait_durable(seq)  # durable before checkpoint() returns
        self.check()
        return version

    def checkpoints(self) -> list[Any]:
        """Every checkpoint state this process has recorded (or was recovered with), oldest first."""
        with self._table.lock:
            return list(self._proc.checkpoints)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking at once for pause and kill requests (a control point throughout). The
        time counts as running: the process keeps its slot."""
        self._table.sleep(self._proc, float(seconds))

    def idle(self, seconds: float, reason: str = "idle") -> None:
        """Wait `seconds` without holding a slot (phase waiting; `ps` shows `reason`): for a body
        that waits on a clock, e.g. until a retry is due. A control point throughout."""
        self._table.idle(self._proc, float(seconds), reason)

    def off_slot(self, what: str, on_kill: Callable[[], None] | None = None) -> AbstractContextManager[None]:
        """Wait for something outside llmunix without holding a slot: a model's reply, an
        endpoint's capacity. `ps` says "waiting for WHAT" (phase waiting) and the slot goes to
        someone else until the block ends; then the process queues at the front of its level::

            with ctx.off_slot("the model: gpt-4o-mini", on_kill=call.abort):
                reply = call.send()

        Inside, `check` raises on a kill and otherwise returns at once (a pause shows at once and
        takes hold when the block ends); `on_kill` is called (it must not block) when the process
        is killed, so a wait on a socket or a queue can end at once. Only `check`, `log`,
        `progress` and `sleep` inside; blocks nest (the inner one's WHAT is shown)."""
        return self._table.off_slot(self._proc, what, on_kill)

    def popen(self, cmd: str | list[str], *, shell: bool | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start an external command in its own process group, attached to this process so that
        pause, resume, kill and priority reach the whole group at once."""
        use_shell = isinstance(cmd, str) if shell is None else shell
        if "executable" not in kwargs and self._kernel.io_starts_held(self._proc.pid):
            from llmunix.iolimit import held_command  # (--io-rate: it starts stopped, iolimit.py)

            cmd, use_shell = held_command(cmd, use_shell), False
        # It dies with the thread that started it (this process's, alive until the body ends) even
        # if llmunix is SIGKILLed before attach_subprocess has recorded its group (reaper.py).
        kwargs.setdefault("preexec_fn", child_setup(self._proc.priority))
        child = subprocess.Popen(  # noqa: S603 - running the user's command is the point
            cmd, shell=use_shell, start_new_session=True, cwd=self.cwd,
            stdin=subprocess.DEVNULL, **kwargs,
        )
        self._table.attach_subprocess(self._proc, child)
        return child

    # ------------------------------------------------------------------ children and visible state

    def set_state(self, state: str, detail: str = "") -> None:
        """Set this process's visible state (an agent's "Thinking", a workflow's "Executing")."""
        self._table.set_state(self._proc, state, detail)
        self.check()

    def spawn(self, tool: Any, /, *, priority: Priority | str | None = None, name: str | None = None,
              params: Mapping[str, Any] | None = None, needs: Mapping[str, Any] | None = None,
              timeout: float | None = None, **kwargs: Any) -> int:
        """Start a child process (its parent is this one; pause, resume and kill of this process
        reach it too). Priority defaults to this process's own. Returns the child's PID."""
        self.check()
        return self._kernel.spawn(tool, priority=self._proc.priority if priority is None else priority,
                                  name=name, parent=self.pid, cwd=self.cwd, params=params, needs=needs,
                                  timeout=timeout, **kwargs)

    def wait(self, pids: Iterable[int], timeout: float | None = None, *, any: bool = False,  # noqa: A002
             ended_only: bool = False) -> list[ProcessInfo]:
        """Wait for processes to finish (all of them, or the first with `any=True`) without
        holding a slot: a control point throughout. Their terminal states are durable when this
        returns. Returns their snapshots (check `.is_done` after a timeout); `ended_only`: only
        those that have ended (cheap when waiting for many)."""
        wanted = list(pids)
        ended = self._table.wait_for(self._proc, wanted, timeout, any, only_ended=ended_only)
        if ended is not None:
            return ended
        return [self._kernel.info(p) for p in wanted]

    def run(self, tool: Any, /, **kwargs: Any) -> ProcessInfo:
        """Run a child process to its end (`spawn` + `wait`) and return its final snapshot."""
        return self.wait([self.spawn(tool, **kwargs)])[0]

    def info(self, pid: int) -> ProcessInfo:
        """A snapshot of any process (this one, a child, one of an earlier session)."""
        return self._kernel.info(pid)

    def workdir(self) -> str:
        """A directory of this process's own, made on first use: `<home>/runs/PID` (private to
        the user), or a new temporary directory when llmunix runs without a home."""
        return self._kernel.process_dir(self.pid)

    def service(self, name: str) -> Any:
        """The kernel component `name` — "agents" or "workflows" — for the bodies that belong to
        it (the agent loop, the workflow runner): one kernel's, whichever kernel runs this."""
        return self._kernel.service(name)

    # ------------------------------------------------------------------ communication (llmunix/ipc)
    # Thin delegations to the kernel's communication component; waits are off-slot control points.

    def send(self, pid: int, message: Any, *, type: Any = None, persistent: bool = False,
             sensitive: bool = False) -> str:
        """Send a message (JSON-shaped, or a pydantic model) to process `pid`; returns its id.
        `persistent`: kept in the store until acknowledged (at-least-once); `sensitive`:
        encrypted at rest and never shown by `mailbox`."""
        return self._kernel.ipc.send_from(self._proc, pid, message, type, persistent, sensitive)

    def recv(self, timeout: float | None = None, type: Any = None) -> Message | None:
        """The next message (of `type`, if given: a registered name or model class), waiting for
        one off-slot; None if `timeout` seconds pass first. Call `msg.ack()` on persistent ones."""
        return self._kernel.ipc.recv(self._proc, timeout, type)

    def broadcast(self, topic: str, message: Any, *, type: Any = None, persistent: bool = False,
                  sensitive: bool = False) -> list[int]:
        """Send to every live process listening to `topic`; returns their PIDs."""
        return self._kernel.ipc.broadcast_from(self._proc, topic, message, type, persistent, sensitive)

    def subscribe_topic(self, topic: str) -> None:
        """Receive broadcasts on topics matching `topic` (a glob) in this mailbox."""
        self._kernel.ipc.listen(self._proc, topic, True)

    def unsubscribe_topic(self, topic: str) -> None:
        self._kernel.ipc.listen(self._proc, topic, False)

    def emit(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Publish a tool-specific event `tool.NAME` with JSON-shaped `data` (see `events`)."""
        self._kernel.ipc.emit(self._proc, name, data)

    @property
    def shared(self) -> SharedView:
        """The kernel's versioned key-value blackboard: get, set, cas, update, keys, wait."""
        return self._kernel.ipc.shared_view(self._proc)

    def buffer(self, name: str, size: int | None = None) -> SharedBuffer:
        """A named memory-mapped buffer (created with `size` bytes if new); `buf.path` for a
        subprocess. Freed when the last process that opened it ends."""
        return self._kernel.ipc.buffer(self._proc, name, size)

    def lock(self, name: str) -> MutexHandle:
        """The kernel's mutex `name`: `with ctx.lock("db"): ...`."""
        return self._kernel.ipc.primitive(self._proc, "mutex", name)

    def semaphore(self, name: str, value: int | None = None) -> SemaphoreHandle:
        """The counting semaphore `name`, made with `value` (default 1) holds if new."""
        return self._kernel.ipc.primitive(self._proc, "semaphore", name, value)

    def condition(self, name: str) -> ConditionHandle:
        """The condition variable `name` (with its own mutex)."""
        return self._kernel.ipc.primitive(self._proc, "condition", name)

    def barrier(self, name: str, parties: int | None = None) -> BarrierHandle:
        """The barrier `name` for `parties` processes (needed to create it; optional after)."""
        return self._kernel.ipc.primitive(self._proc, "barrier", name, parties)

    def rwlock(self, name: str) -> RWLockHandle:
        """The read-write lock `name`: `with ctx.rwlock("index").read(): ...`."""
        return self._kernel.ipc.primitive(self._proc, "rwlock", name)

    def elect(self, name: str, lease: float | str | None = None) -> ElectionHandle:
        """Stand in the leader election `name` with a lease (seconds or `10s`; default 10):
        `with ctx.elect("indexer") as e:` waits to lead; `e.is_leader` says whether it does."""
        return self._kernel.ipc.elect(self._proc, name, lease)

    # ------------------------------------------------------------------ circuit breakers (resilience)

    def host_call(self, host: str) -> AbstractContextManager[None]:
        """Guard one call to an external host (a name or URL) with its circuit breaker::

            with ctx.host_call(url):
                response = fetch(url)

        Raises ToolError ("circuit open for host example.com (...)") at once while that host's
        breaker is open; anything raised inside the block counts as a failure of the host,
        leaving it normally as a success (catch what is not the host's fault inside)."""
        self.check()
        return self._kernel.resilience.host_call(self._proc, host)

    def connection(self, url: str) -> AbstractContextManager[None]:
        """Hold one of the URL's host's connections for the block (web_fetch's per-host limit,
        `connections_per_host`; llmunix/hosts.py)::

            with ctx.connection(url):
                response = fetch(url)

        Past the limit it waits its turn off its slot (`ps`: "waiting for a connection to
        HOST"); a kill reaches it at once."""
        self.check()
        return self._kernel.hosts.connection(self, url)

    def breaker(self, name: str, ok: bool, error: str | None = None) -> None:
        """Report one call's outcome to breaker `name` (e.g. "host:example.com") by hand."""
        self._kernel.breaker_record(name, ok, error, pid=self.pid)


def signal_group(child: subprocess.Popen[bytes], sig: int) -> None:
    """Send a signal to a child's whole process group (it leads its own session)."""
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_tree(child: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's process group and every descendant, including any that left the group
    (setsid, daemonising scripts); stopped ones are continued so they can act on it."""
    import psutil

    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    signal_group(child, sig)
    for d in descendants:
        try:
            d.send_signal(sig)
        except psutil.Error:
            pass
    if sig != signal.SIGKILL:
        signal_group(child, signal.SIGCONT)
        for d in descendants:
            try:
                d.resume()
            except psutil.Error:
                pass


def terminate_group(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the group (and any descendant that left it), wait `grace`, then SIGKILL."""
    import psutil

    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    signal_group(child, signal.SIGTERM)
    signal_group(child, signal.SIGCONT)  # a stopped group cannot act on SIGTERM
    for d in descendants:
        try:
            d.terminate()
            d.resume()
        except psutil.Error:
            pass
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(child, signal.SIGKILL)
    for d in descendants:
        try:
            d.kill()
        except psutil.Error:
            pass
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    psutil.wait_procs(descendants, timeout=2)


NICE_FOR = {
    Priority.CRITICAL: -10,
    Priority.HIGH: -5,
    Priority.NORMAL: 0,
    Priority.LOW: 10,
    Priority.IDLE: 19,
}


def child_setup(priority: Priority) -> Callable[[], None]:
    """A subprocess's `preexec_fn`: it dies with the thread that started it (reaper.py), and it
    starts at its priority's I/O class and (a lower priority's) nice value, so that a short
    command's first I/O is already classed; `renice_group` then sets the whole group."""
    from llmunix.ioprio import own_io_priority_setter

    set_io = own_io_priority_setter(priority)
    nice = NICE_FOR[priority]

    def setup() -> None:
        die_with_parent()
        if set_io is not None:
            set_io()
        if nice > 0:  # (a negative one needs privileges: left to renice_group's fallback)
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:
                pass  # (llmunix itself runs nicer than that: the child keeps llmunix's)

    return setup


def renice_group(child: subprocess.Popen[bytes], priority: Priority) -> None:
    """Map a priority level onto the group's nice value and I/O class (ioprio.py: idle and low
    get the idle and lowest best-effort classes). Raising priority above 0 needs privileges;
    without them the group stays at 0, which is still above low and idle."""
    from llmunix.ioprio import set_group_io_priority  # (here: a one-shot `ps` never renices)

    set_group_io_priority(child.pid, priority)
    nice = NICE_FOR[priority]
    for value in (nice, 0) if nice < 0 else (nice,):
        try:
            os.setpriority(os.PRIO_PGRP, child.pid, value)
            return
        except PermissionError:
            continue
        except ProcessLookupError:
            return

