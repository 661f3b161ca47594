"""The Kernel: the facade over the process table, the scheduler and the feature components.

`Kernel(...)` builds the rooms and wires them (docs/architecture.md draws them):

* `table`      lifecycle.ProcessTable — the processes and every move one makes; the hooks
* `scheduler`  scheduler.Scheduler — the policy: which process runs, admission, pressure
* `durable`    durable.DurableState — earlier sessions, retention, gc, recover, rollback
* `event_log`  observe.queries.EventLog — the event log, following, audit, subscriptions
* `debugger`, `inspector` — breakpoints and stepping; stacks and the profiler
* `memory`     observe.memory.MemoryDebugger — tracemalloc: `debug PID memory`, `profile --memory`
* `io_limits`  iolimit.IoLimiter — `run --io-rate`: cgroup v2 io.max, else a SIGSTOP/SIGCONT duty cycle
* `hosts`      hosts.HostConnections — web hosts' connection limits (`ctx.connection`, web_fetch)
* `ipc`        ipc.service.Communication — mailboxes, the blackboard, locks, deadlocks
* `resilience` resilience.service.Resilience — retries, restarts, breakers, watchdog, health
* `workflows`, `agents` — workflow specs and runs; agent definitions and runs
* `learning`   learning.Learning — tools' performance, expected durations, deadlines
* `cache`      cache.StepCache — stored results reused by `run --cache` and cached workflow steps
* `hedging`    hedge.Hedging — replicated runs (`run --replicas N --first|--quorum K`)
* `monitor`    monitor.Monitor — the sampler thread

Each public method here is the documented Python API (docs/tools.md "From Python") and hands the
call on in a line or two; callers get immutable `ProcessInfo` snapshots back, never a live
`Process`.

>>> with Kernel() as k:
...     pid = k.spawn("echo", text="hi")
...     k.wait([pid])[0].state
'Completed'
"""

from __future__ import annotations

import getpass
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.autoscale import AUTO, AutoInfo, Autoscaler, AutoSettings
from llmunix.backends import Backend, ClusterInfo, make_backend
from llmunix.backends.placement import Placement
from llmunix.cache import CachePolicy, StepCache
from llmunix.durable import DEFAULT_RETENTION_COUNT, DEFAULT_RETENTION_DAYS, DurableState, WaitWatch
from llmunix.home import HomeInUse, HomeLock, make_private_dir, prepare_home
from llmunix.ipc.bus import DEFAULT_QUEUE, DropPolicy, EventBus, EventFilter, Subscription
from llmunix.ipc.service import Communication, LocksInfo
from llmunix.isolation import Isolation
from llmunix.learning import Deadline, Learning, ToolPerformance
from llmunix.lifecycle import PidAllocator, ProcessTable
from llmunix.models import (
    DEFAULT_MAX_THREADS,
    Event,
    IllegalTransition,
    LlmunixError,
    Outcome,
    Phase,
    Priority,
    ProcessInfo,
    PsRow,
    as_pid,
    format_pid,
)
from llmunix.observe.debug_control import Debugger
from llmunix.observe.inspect import Inspector
from llmunix.observe.queries import BusInfo, EventLog
from llmunix.pool import LimitInfo, MemoryPressure, ResourcePool
from llmunix.process import ProcessContext
from llmunix.reaper import ChildRecord, Reaped
from llmunix.resilience.health import OK, HealthCheck, HealthReport
from llmunix.resilience.restart import RUN_OPTIONS, RestartPolicy, attempts_from_data, run_options
from llmunix.resilience.service import Resilience
from llmunix.retry import RetryPolicy
from llmunix.scheduler import Scheduler
from llmunix.store import Store
from llmunix.tools.registry import REGISTRY, Tool, ToolRegistry, make_tool

if TYPE_CHECKING:
    from llmunix.agents.service import AgentService
    from llmunix.gate import EndpointInfo
    from llmunix.hedge import Hedging
    from llmunix.hosts import HostConnections
    from llmunix.iolimit import IoLimiter, IoLimitInfo
    from llmunix.monitor import Monitor, ResourceSample, SystemSample
    from llmunix.observe.analytics import EventStats
    from llmunix.observe.audit import AuditEntry as _AuditEntry
    from llmunix.observe.debug import DebugInfo, ProfileReport
    from llmunix.observe.debugger import Breakpoint, DebugStatus, Inspected, Modification, TraceLog
    from llmunix.observe.memory import MemoryDebugger, MemoryReport
    from llmunix.observe.stats import ToolStats
    from llmunix.resilience.breakers import BreakerInfo
    from llmunix.tools.loader import ReloadReport
    from llmunix.workflows.service import RetryStarted, SpecInfo, WorkflowService
    from llmunix.workflows.spec import WorkflowSpec
    from llmunix.workflows.status import WorkflowStatus

DEFAULT_MAX_RUNNING = 8
SERVICES = ("agents", "workflows", "hedging")  # what ProcessContext.service() hands to built-in bodies


class Kernel:
    """Spawn and steer processes. Thread-safe; usable without the shell."""

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        max_running: int | str = DEFAULT_MAX_RUNNING,
        max_running_auto: AutoSettings | None = None,
        max_threads: int | None = None,
        time_slice: float = 0.5,
        aging_interval: float = 5.0,
        kill_grace: float = 2.0,
        registry: ToolRegistry | None = None,
        monitor: bool = True,
        monitor_interval: float = 1.0,
        owner: str | None = None,
        store: bool = True,
        store_writer: str | None = None,
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
        scheduling: str = "fifo",
        # isolation (llmunix/isolation.py): the default for users' Python tools, per-tool settings
        isolation: str = "thread", tool_settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not kill_grace >= 0 or kill_grace == float("inf"):
            raise LlmunixError(f"kill_grace must be a finite number of seconds >= 0, not {kill_grace!r}")
        auto = max_running == AUTO  # slots follow the machine (autoscale.py), from the default
        if auto and not monitor:
            raise LlmunixError('max_running = "auto" follows the monitor\'s samples; it needs the monitor on')
        if not auto and not (isinstance(max_running, int) and max_running >= 1):
            raise LlmunixError(f"max_running must be a whole number of at least 1, or auto, not {max_running!r}")
        auto_settings = max_running_auto or AutoSettings()
        slots = DEFAULT_MAX_RUNNING if auto else int(max_running)  # (auto: enable() puts it within its bounds)
        self.scheduler = Scheduler(max_running=slots, time_slice=time_slice, aging_interval=aging_interval,
                                   pool=pool, limits=limits, memory_pressure_mb=memory_pressure_mb,
                                   available_memory=available_memory,
                                   pause_idle_under_pressure=pause_idle_under_pressure, policy=scheduling)
        self.backend = make_backend(backend)  # where bodies of remote tools run (backends/)
        self.home = Path(home) if home is not None else None
        # One llmunix writes a home; another opens it read-only (read_only=None: whichever applies).
        self.read_only = bool(read_only)
        self.home_owner: str | None = None
        self._home_lock: HomeLock | None = None
        if self.home is not None:
            prepare_home(self.home)  # private: 0700, yours alone, or refused (UnsafePath)
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
        self.registry = registry if registry is not None else REGISTRY
        self.owner = owner or f"{_user()}@llmunix"
        self.bus = EventBus()
        self.store: Store | None = None
        self.interrupted_at_start = 0
        if self.home is not None and store:
            db = self.home / "llmunix.db"
            if self.read_only:
                self.store = Store(db, read_only=True) if db.exists() else None
            else:
                self.store = Store(db, writer=store_writer)
                self.interrupted_at_start = self.store.interrupted_at_start
        pids = None if self.read_only else PidAllocator(self.home, floor=_highest_pid(self.store) + 1)
        self.table = ProcessTable(scheduler=self.scheduler, bus=self.bus, owner=self.owner, kill_grace=kill_grace,
                                  max_threads=max_threads or DEFAULT_MAX_THREADS,
                                  pids=pids)
        self.table.context = self._context
        # Nothing left behind (reaper.py): what an earlier llmunix on this home left running is
        # reaped now (the home's lock says it has gone); what this one starts is recorded.
        self.children = ChildRecord(None if self.read_only else self.home)
        self.reaped: list[Reaped] = self.children.reap_leftovers()
        self.table.guard = self.children
        self.durable = DurableState(self.table, self.store, self.registry, read_only=self.read_only,
                                    retention_days=retention_days, retention_count=retention_count)
        if self.store is not None and not self.read_only:
            self.table.store = self.store
            self.bus.subscribe("*", self.store.consume)
            self.store.on_commit(self.table.on_commit)  # dependents go on once an end is durable
            self.durable.start()
        self.event_log = EventLog(self.table, self.durable, self.bus, self.store, read_only=self.read_only)
        self.debugger = Debugger(self.table, self.durable)
        self.inspector = Inspector(self.table, self.durable, self.debugger)
        self.ipc = Communication(self.table, self.durable, self.store, self.home, read_only=self.read_only,
                                 kill=self.kill, deadlock_policy=deadlock_policy)
        self.resilience = Resilience(self.table, self.durable, self.registry, self.store, self.home,
                                     read_only=self.read_only, home_owner=self.home_owner,
                                     breaker_threshold=breaker_threshold, breaker_cooldown=breaker_cooldown,
                                     stall_timeout=stall_timeout, stall_action=stall_action, chaos=chaos,
                                     health_min_disk_mb=health_min_disk_mb)
        self.learning = Learning(self.table, self.store)  # (its deadlines register at the first deadline)
        self.cache = StepCache(self.table, self.store)  # (it registers at the first run asking for it)
        self.isolation = Isolation(self.table, default=isolation, tools=tool_settings, record=self.children,
                                   config=_tool_config)
        # (the debugger and placement register at their first use: a breakpoint or a look, a
        # migration; until then a process pays for none of their hooks)
        for feature in (self.durable, self.ipc, self.resilience, self.learning, self.isolation):
            self.table.register(feature)
        # Made on first use (tracemalloc, the I/O regulator, web hosts' lines: a one-shot `ps`
        # imports none of them): `memory`, `io_limits`, `hosts` below.
        self._memory: MemoryDebugger | None = None
        self._io_limits: IoLimiter | None = None
        self._hosts: HostConnections | None = None
        self.inspector.memory = lambda: self.memory
        self.inspector.cache = self.cache
        self.table.isolation = self.isolation
        if self.reaped:
            self.bus.publish("system.reaped", None, {
                "groups": [{"pgid": r.pgid, "what": r.label, "processes": r.processes} for r in self.reaped]})
        self.backend.bind(self)
        self.table.remote = self.backend if self.backend.distributed else None
        self.placement = Placement(self.table, self.backend)  # where bodies run; migrate
        self.table.placement = self.placement.runs_remote
        self.monitor: Monitor | None = None
        self.autoscaler = Autoscaler(self.table, auto_settings, reading=self._latest_system)
        if monitor:
            from llmunix.monitor import Monitor

            self.monitor = Monitor(self.table, monitor_interval)
            self.monitor.add_listener(self.resilience.watchdog_tick)  # stalled processes
            self.monitor.add_listener(self.table.check_pressure)  # memory pressure; token buckets refill
            self.monitor.add_listener(self.isolation.check_limits)  # --memory, --cpu-time
            self.monitor.add_listener(self._tend_children)  # groups that ended; orphans' exit statuses
            self.monitor.add_listener(self.autoscaler.tick)  # max_running = "auto"
            self.resilience.monitoring = True
            self.monitor.start()
        if auto:
            self.autoscaler.enable(True)
        self._workflows: WorkflowService | None = None
        self._hedging: Hedging | None = None
        self._agents: AgentService | None = None
        self._agents_factory: Callable[[], AgentService] | None = None
        self._agents_lock = threading.RLock()  # (re-entered: making the agent service may read other components)
        # What a stored workflow's checkpoints make (`ps -l` of an earlier session's run), without
        # importing the workflow machinery (networkx, YAML) until a workflow is looked at.
        self.durable.fold_checkpoints("workflow", _fold_workflow)
        # The built-in tools, the workflow process body and the IPC example tools register the
        # first time a tool is looked up or listed (a one-shot `ps` never imports them).
        REGISTRY.load_later("llmunix.tools.builtin", "llmunix.workflows.runner", "llmunix.ipc.tools", "llmunix.hedge")

    def _context(self, proc: Any) -> ProcessContext:
        return ProcessContext(self, proc)

    def _tend_children(self) -> None:
        self.children.prune()
        self.children.reap_orphans()

    def _latest_system(self) -> SystemSample | None:
        system = self.monitor.system if self.monitor is not None else None
        return system[-1] if system else None

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ components

    @property
    def workflows(self) -> WorkflowService:
        """The workflow service (specs, runs, status, retry), made on first use."""
        with self._agents_lock:
            if self._workflows is None:
                from llmunix.workflows.service import WorkflowService

                self._workflows = WorkflowService(self)
            return self._workflows

    @property
    def memory(self) -> MemoryDebugger:
        """tracemalloc for `debug PID memory` and `profile --memory` (observe/memory.py), made on
        first use; it registers its hooks at its first look."""
        with self._agents_lock:
            if self._memory is None:
                from llmunix.observe.memory import MemoryDebugger

                self._memory = MemoryDebugger(self.table, self.durable, self.isolation)
            return self._memory

    @property
    def io_limits(self) -> IoLimiter:
        """`--io-rate` (iolimit.py), made on first use; it registers and starts its regulator at
        the first limited run."""
        with self._agents_lock:
            if self._io_limits is None:
                from llmunix.iolimit import IoLimiter

                self._io_limits = IoLimiter(self.table, self.isolation, cgroup=_io_cgroup)
            return self._io_limits

    @property
    def hosts(self) -> HostConnections:
        """Web hosts' connection limits (`ctx.connection`, hosts.py), made on first use (the
        configuration's limits are read at the first connection)."""
        with self._agents_lock:
            if self._hosts is None:
                from llmunix.hosts import HostConnections

                self._hosts = HostConnections()
            return self._hosts

    @property
    def hedging(self) -> Hedging:
        """Replicated runs (`run --replicas N`), made on first use."""
        with self._agents_lock:
            if self._hedging is None:
                from llmunix.hedge import Hedging

                self._hedging = Hedging(self)
            return self._hedging

    @property
    def agents(self) -> AgentService:
        """The agent service (definitions, memory, runs), made with the active configuration the
        first time (llmunix.agents.attach makes it with a given one)."""
        with self._agents_lock:
            factory = self._agents_factory
        if factory is not None and self._agents is None:
            return factory()
        with self._agents_lock:
            if self._agents is None:
                from llmunix.agents.service import AgentService

                self._agents = AgentService(self)
            return self._agents

    def attach_agents(self, service: AgentService) -> None:
        with self._agents_lock:
            self._agents = service

    def attach_agents_later(self, make: Callable[[], AgentService]) -> None:
        """Make the agent service with `make()` when it is first needed: the first use of
        `agents`, or the first tool looked up or listed (its markdown tools register then). A
        one-shot `llmunix -c ps` never reads the definitions."""
        def made() -> AgentService:
            with self._agents_lock:
                if self._agents is None:
                    self._agents = make()
                return self._agents

        with self._agents_lock:
            self._agents_factory = made
        self.registry.load_later(made)

    def service(self, name: str) -> Any:
        """A component for built-in bodies (`ProcessContext.service`): "agents" or "workflows"."""
        if name not in SERVICES:
            raise LlmunixError(f"no service {name!r}; there are: {', '.join(SERVICES)}")
        return getattr(self, name)

    def process_dir(self, pid: int) -> str:
        """A directory of process `pid`'s own: `<home>/runs/PID` (made private), or a new
        temporary one without a home."""
        if self.home is not None:
            d = self.home / "runs" / format_pid(pid)
            make_private_dir(d)
            return str(d)
        return tempfile.mkdtemp(prefix=f"llmunix-run-{format_pid(pid)}-")

    def cwd(self) -> str:
        """The working directory new processes get by default (the shell's)."""
        return self.table.cwd()

    def working_directory(self, path: str) -> AbstractContextManager[None]:
        """Inside `with kernel.working_directory(path):`, processes the calling thread spawns
        (and `cwd()`, workflow files it looks up) default to `path`: a daemon's client's directory."""
        return self.table.working_directory(path)

    # ------------------------------------------------------------------ processes

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
        deadline: float | None = None,
        cache: CachePolicy | bool | float | None = None,
        isolate: bool | None = None,
        memory_limit: float | str | None = None,
        cpu_limit: float | str | None = None,
        io_rate: float | str | None = None,
        **kwargs: Any,
    ) -> int:
        """Start `tool` (a registered name, a Tool, or a callable taking `ctx` first) as a new
        process and return its PID. Tool parameters come as keyword arguments, or as the
        `params` mapping when a name clashes with spawn's own (`name`, `priority`, ...).
        They are validated now: a bad one raises LlmunixError. `needs` are the resources it
        must hold to run (`{"memory_mb": 500, "gpu": 1}`), over the tool's own defaults. After
        `timeout` seconds of running time it is stopped and ends Failed ("timed out after 30s").
        `retry` and `restart` run it again under the same PID when an attempt fails or ends
        (llmunix/resilience/restart.py); the timeout is then per attempt. `deadline`: seconds
        from now it should be done by (the learned scheduling order runs it earliest-deadline
        first while it can make it; it is flagged when it cannot, llmunix/learning.py). `cache`:
        reuse a stored result of the same tool, version, parameters and inputs (True, a TTL in
        seconds, or a CachePolicy; llmunix/cache.py). `isolate` runs the body in a worker OS
        process of its own (True) or on a thread (False) whatever the tool and the configuration
        say; `memory_limit` (MB, or "500MB") and `cpu_limit` (seconds, or "60s") stop it, Failed,
        when its OS process tree passes them (a Python tool is then isolated); `io_rate` (bytes per
        second, or "10MB/s") holds its tree's I/O to that rate (iolimit.py)."""
        self._writable()
        if timeout is not None and not 0 < timeout < float("inf"):
            raise LlmunixError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
        attempts = self.resilience.policies(retry, restart)  # checked before anything is made
        caching = None if cache is None else CachePolicy.of(cache)
        t = self._resolve_tool(tool)
        validated = t.validate({**(params or {}), **kwargs})
        placement = self.isolation.placement(t, isolate, memory_limit, cpu_limit, io_rate)
        if placement is not None and placement.io_rate is not None:
            self.io_limits.activate()
        history = self.store.tool_peak_memory if self.store is not None else None
        wants = self.scheduler.needs_for(t, needs, history)
        prio = Priority.parse(priority)
        deps = tuple(dict.fromkeys(as_pid(a) for a in after))
        policy = None if attempts is None and timeout is None and isolate is None and memory_limit is None \
            and cpu_limit is None and io_rate is None else run_options(
                attempts, timeout=timeout, isolate=isolate, memory_limit=memory_limit, cpu_limit=cpu_limit,
                io_rate=io_rate)
        options: dict[str, Any] = self.learning.prepare(t, deadline)
        options["placement"] = placement  # (isolation: where it runs, its limits)
        if attempts is not None:
            options["attempts"] = attempts
        reuse = None
        if caching is not None:
            reuse, options["cache"] = self.cache.prepare(t, validated, caching, cwd or self.table.cwd(),
                                                         waits=bool(deps))
        with self.table.lock:
            return self.table.spawn_locked(
                t, validated, prio, deps, name=name, parent=parent, cwd=cwd, needs=wants, timeout=timeout,
                options=options, event_data={"policy": policy} if policy else None, reuse=reuse).pid

    def tool_isolation(self, tool: str | Tool) -> str:
        """Where a plain run of `tool` goes: "process" (an isolated worker) or "thread"."""
        return self.isolation.tool_isolation(self._resolve_tool(tool))

    def kill(self, pid: int, force: bool = False, *, reason: str = "killed by user",
             interrupt: bool = False) -> ProcessInfo:
        """Stop a process. Cooperative code stops at its next control point; code that never
        reaches one gets an asynchronous exception after the grace period (at once with
        `force`); a subprocess group gets SIGTERM, then SIGKILL. With `interrupt` the process
        ends Interrupted instead of Cancelled: recoverable (llmunix itself is stopping). A kill
        reaches the process's descendants too. Killing an Interrupted process of an earlier
        session ends it Cancelled (it is no longer waiting for `recover`)."""
        self._writable()
        outcome = Outcome.INTERRUPTED if interrupt else Outcome.CANCELLED
        table = self.table
        with table.lock:
            if table.get(as_pid(pid)) is None and self.durable.stored_state(as_pid(pid)) == Outcome.INTERRUPTED:
                interrupted = True
            else:
                interrupted = False
                proc = table.require_live(pid, "kill")
                children = table.descendants_locked(proc)
                table.kill_locked(proc, force, reason, outcome)
                info = table.snapshot(proc)
        if interrupted:
            return self.durable.dismiss(pid, reason)
        for child in children:  # after the parent is flagged, so it starts no new ones meanwhile
            with table.lock:
                if child.phase is not Phase.DONE:
                    table.kill_locked(child, force, reason, outcome)
        return info

    def pause(self, pid: int) -> ProcessInfo:
        """Pause a process and its descendants. A running one stops at its next control point (a
        subprocess tool at once, with SIGSTOP to its group) and gives its slot back."""
        self._writable()
        table = self.table
        with table.lock:
            proc = table.require_live(pid, "pause")
            if table.pausing(proc):
                raise IllegalTransition(f"process {format_pid(proc.pid)} is already paused")
            table.pause_locked(proc)
            for child in table.descendants_locked(proc):  # a workflow's steps, an agent's tools
                if not table.pausing(child):
                    table.pause_locked(child)
                    child.paused_by = proc.pid
            return table.snapshot(proc)

    def resume(self, pid: int) -> ProcessInfo:
        """Resume a paused process (or cancel a pause that has not taken effect yet), and the
        descendants its pause paused."""
        self._writable()
        table = self.table
        with table.lock:
            proc = table.require_live(pid, "resume")
            if not table.pausing(proc):
                raise IllegalTransition(
                    f"process {format_pid(proc.pid)} is not paused (it is {table.snapshot(proc).display_state})")
            table.resume_locked(proc)
            for child in table.descendants_locked(proc):  # those its pause paused, not others
                if child.paused_by == proc.pid:
                    child.paused_by = None
                    if table.pausing(child):
                        table.resume_locked(child)
            return table.snapshot(proc)

    def renice(self, pid: int, priority: Priority | str) -> ProcessInfo:
        """Change a live process's priority level; may cause preemption."""
        self._writable()
        prio = Priority.parse(priority)
        with self.table.lock:
            proc = self.table.require_live(pid, "change the priority of")
            self.table.renice_locked(proc, prio)
            return self.table.snapshot(proc)

    def rerun(self, pid: int, *, restored: Any, checkpoints: list[Any], action: str, note: str, how: str,
              **data: Any) -> ProcessInfo:
        """Run a finished process again under its PID with the same tool and parameters, from
        `restored` (its last checkpoint, also recorded durably as a new version before this
        returns): `workflow retry` does this. Its history goes on."""
        self._writable()
        info = self.info(pid)
        table = self.table
        with table.lock:
            old = table.get(pid)
            t = self.registry.get(info.tool_name) if old is None else old.tool
            history = list(old.history) if old is not None else []
            proc = table.spawn_locked(t, dict(info.context.input_parameters), info.priority, (), name=info.name,
                                      parent=info.parent, cwd=None, pid=pid, restored=restored,
                                      checkpoints=checkpoints[:-1], note=note)
            proc.history.extendleft(reversed(history))
            table.emit("process.restarted", proc, action=action, how=how, resumed=True, **data)
            _version, seq = table.checkpoint_locked(proc, checkpoints[-1])
        table.wait_durable(seq)
        return self.info(pid)

    def wait(self, pids: Iterable[int] | None = None, timeout: float | None = None) -> list[ProcessInfo]:
        """Block until the given processes (default: all live now) have finished, or `timeout`
        passes. Returns their snapshots; check `.is_done` to see which finished."""
        return self.durable.wait(pids, timeout)

    def info(self, pid: int) -> ProcessInfo:
        return self.durable.info(pid)

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (a mark for `ended_after`)."""
        return self.bus.last_seq

    def wait_each(self, pids: Iterable[int], timeout: float | None = None, *, include_paused: bool = False
                  ) -> WaitWatch:
        """Iterate the snapshots of `pids` as they finish; stops on `timeout`, or when all that is
        left is paused (unless `include_paused`): see DurableState.wait_each."""
        return self.durable.wait_each(pids, timeout, include_paused=include_paused)

    def ended_after(self, seq: int) -> list[ProcessInfo]:
        """Top-level processes of this session whose end came after event `seq`, by PID."""
        return self.durable.ended_after(seq)

    def ps(self, all: bool = False, state: str | None = None) -> list[ProcessInfo]:  # noqa: A002
        """Snapshots of live processes (all=True: finished ones too), by PID. `state` filters
        on the visible state or the phase, case-insensitively."""
        return self.durable.ps(all, state)

    def ps_rows(self, all: bool = False, state: str | None = None) -> list[PsRow]:  # noqa: A002
        """What `ps(all, state)` lists, as light rows of the columns `ps` prints."""
        return self.durable.ps_rows(all, state)

    def exists(self, pid: int) -> bool:
        return self.durable.exists(pid)

    def live_pids(self) -> list[int]:
        with self.table.lock:
            return list(self.table.live)

    def logs(self, pid: int, *, since: float | None = None, limit: int | None = None) -> list[tuple[float, str]]:
        """A process's log lines (time, line), oldest first; `since` a Unix time, `limit` the newest N."""
        return self.durable.logs(pid, since=since, limit=limit)

    def recent(self, seconds: float = 5.0) -> list[ProcessInfo]:
        """Live processes and those that finished in the last `seconds`, by PID (what `top` lists)."""
        return self.durable.recent(seconds)

    def tool_stats(self, tool: str | None = None) -> list[ToolStats]:
        return self.durable.tool_stats(tool)

    def performance(self, tool: str) -> ToolPerformance:
        """How the tool's runs went: completed and failed runs, mean and p90 running time
        (the `ps -l` Performance line; llmunix/learning.py)."""
        return self.learning.performance(tool)

    def deadline(self, pid: int) -> Deadline | None:
        """Process `pid`'s deadline (`spawn(deadline=...)`) and what became of it, or None."""
        return self.learning.deadline(as_pid(pid))

    def cached_from(self, pid: int) -> int | None:
        """The process whose stored result process `pid` reused (llmunix/cache.py), or None."""
        return self.cache.cached_from(as_pid(pid))

    def hedge(self, tool: str, /, *, replicas: int, quorum: int | None = None, **spawn: Any) -> int:
        """Start `replicas` copies of `tool` as children of one `hedge` process and return its PID:
        it ends with the first copy that completes (the others cancelled), or with `quorum` equal
        results (llmunix/hedge.py). `spawn`: priority, name, params, needs, timeout, deadline."""
        self._writable()
        return self.hedging.start(tool, replicas=replicas, quorum=quorum, **spawn)

    def event_stats(self, since: float | None = None, *, bucket: float | None = None) -> EventStats:
        """What the event log says since `since` (a Unix time; default the last hour): rates by
        type, failure patterns by tool and host, bursts, the slowest tools and workflow steps.
        SQL aggregation in the store (llmunix/observe/analytics.py)."""
        from llmunix.observe.analytics import event_stats

        return event_stats(self.store, since, bucket=bucket)

    def preload(self, modules: Iterable[str]) -> list[tuple[str, str | None]]:
        """Import `modules` now (`preload` in config.toml: what tools import lazily, paid for at
        start instead of by the first run); [(module, error or None)], and a `system.preloaded`
        event. Worker pools registered with `tools.preload.register_warmer` warm the same."""
        from llmunix.tools.preload import preload

        return preload(modules, self.bus)

    def samples(self, pid: int) -> list[ResourceSample]:
        """The monitor's recent measurements of a process, oldest first (empty if none yet)."""
        return self.inspector.samples(pid)

    def system(self) -> list[SystemSample]:
        """Recent measurements of the whole machine, oldest first (empty without a monitor)."""
        return list(self.monitor.system) if self.monitor is not None else []

    @property
    def pids_repaired(self) -> str:
        """Why `<home>/pids` was not trusted at start (missing, unreadable or below PIDs the store
        has seen: PIDs then continue above the store's highest), or "" if it was."""
        return self.table.pids.repaired

    @property
    def next_pid(self) -> int:
        return self.table.pids.peek()

    @property
    def threads(self) -> int:
        return self.table.executor.thread_count

    # ------------------------------------------------------------------ settings

    @property
    def max_running(self) -> int:
        return self.scheduler.max_running

    @max_running.setter
    def max_running(self, n: int) -> None:
        self.set_max_running(n)

    def set_max_running(self, n: int | str) -> None:
        """Slots: a number, or "auto" to follow CPU and memory headroom (llmunix/autoscale.py)."""
        self._writable()
        if n == AUTO:
            if self.monitor is None:
                raise LlmunixError("max_running auto follows the monitor's samples; this llmunix runs without one")
            self.autoscaler.enable(True)
            return
        self.autoscaler.enable(False)
        self.table.set_max_running(n)  # type: ignore[arg-type]

    @property
    def max_running_setting(self) -> int | str:
        """What max_running is set to: a number, or "auto" (`max_running` is the value now)."""
        return AUTO if self.autoscaler.enabled else self.scheduler.max_running

    @max_running_setting.setter
    def max_running_setting(self, value: int | str) -> None:
        self.set_max_running(value)

    def max_running_info(self) -> AutoInfo:
        """max_running now, whether it follows the machine, and (auto) its last decision and why."""
        return self.autoscaler.info()

    @property
    def scheduling(self) -> str:
        """The scheduling order within a level: "fifo" or "learned" (scheduler.py, "Learned order")."""
        return self.scheduler.policy

    @scheduling.setter
    def scheduling(self, policy: str) -> None:
        self._writable()
        if policy == "learned":  # what the queued processes' tools took before, read outside the lock
            self.learning.prepare_policy({p.tool.name for p in self.table.live_processes()})
        with self.table.lock:
            now = time.monotonic()
            if self.scheduler.set_policy(policy, now):
                self.bus.publish("system.scheduling", None, {"policy": policy})
                self.table.dispatch_locked(now)

    @property
    def time_slice(self) -> float:
        return self.scheduler.time_slice

    @time_slice.setter
    def time_slice(self, seconds: float) -> None:
        if not 0 < seconds < float("inf"):
            raise LlmunixError(f"time_slice must be a positive, finite number of seconds, not {seconds!r}")
        self.scheduler.time_slice = float(seconds)

    @property
    def kill_grace(self) -> float:
        return self.table.kill_grace

    @kill_grace.setter
    def kill_grace(self, seconds: float) -> None:
        if not 0 <= seconds < float("inf"):
            raise LlmunixError(f"kill_grace must be a finite number of seconds >= 0, not {seconds!r}")
        self.table.kill_grace = float(seconds)

    @property
    def monitor_interval(self) -> float | None:
        return self.monitor.interval if self.monitor is not None else None

    @monitor_interval.setter
    def monitor_interval(self, seconds: float) -> None:
        from llmunix.monitor import check_interval

        seconds = check_interval(seconds)
        if self.monitor is not None:
            self.monitor.set_interval(seconds)

    @property
    def retention_days(self) -> float:
        return self.durable.retention_days

    @property
    def retention_count(self) -> int:
        return self.durable.retention_count

    # ------------------------------------------------------------------ resources

    @property
    def pool(self) -> ResourcePool:
        return self.scheduler.pool

    def limits(self) -> list[LimitInfo]:
        """The pool: each resource's capacity, use, what is free and how many wait for it."""
        with self.table.lock:
            return self.scheduler.limits(self.table.live.values())

    def set_limits(self, limits: Mapping[str, Any]) -> list[LimitInfo]:
        """Set capacities (`{"gpu": 1, "llm_tokens_per_min": 90000}`); 0 or None removes a limit.
        All or nothing: a bad value changes none."""
        self._writable()
        with self.table.lock:
            self.scheduler.set_limits(limits)
            self.table.dispatch_locked(time.monotonic())
        return self.limits()

    def pressure(self) -> MemoryPressure:
        """The last memory pressure reading (see `check_resources`); read now if never read."""
        p = self.scheduler.pressure
        return p if p.available_mb is not None else self.check_resources()

    def check_resources(self) -> MemoryPressure:
        """Read available memory now, switch memory pressure on or off, and start what now fits
        (token buckets refill with time). The monitor does this every interval."""
        self.table.check_pressure()
        return self.scheduler.pressure

    def migrate(self, pid: int, to: str, *, wait: float | None = None) -> ProcessInfo:
        """Move live process `pid`'s body to `to` ("dask" or "local"): its attempt is stopped and
        it runs again under its PID there, from its last checkpoint (backends/placement.py).
        With `wait` (seconds), return once it has left its old place and is queued in the new."""
        self._writable()
        info = self.placement.migrate(pid, to)
        if wait is not None:
            self.placement.wait_moved([info.pid], wait)
            return self.info(info.pid)
        return info

    def cluster(self) -> ClusterInfo:
        """Where process bodies run: the backend and, for a cluster, its workers and which
        processes run on each."""
        return self.backend.cluster()

    # ------------------------------------------------------------------ durable state

    def checkpoints(self, pid: int) -> list[tuple[int, Any]]:
        """Every checkpoint version of a process: [(version, state), ...]."""
        return self.durable.checkpoints(pid)

    def recover(self, pids: Iterable[int] | None = None) -> list[ProcessInfo]:
        """Continue interrupted processes from their last checkpoint (see DurableState.recover)."""
        self._writable()
        return self.durable.recover(pids)

    def rollback(self, pid: int, to: int | None = None) -> ProcessInfo:
        """Run a finished or interrupted process again from checkpoint version `to`."""
        self._writable()
        return self.durable.rollback(pid, to)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every event published so far is committed to the store."""
        return self.durable.flush(timeout)

    def gc(self, days: float | None = None, keep: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
        """Compact finished processes now (see DurableState.gc)."""
        self._writable()
        return self.durable.gc(days, keep, timeout)

    def clean(self, pids: Iterable[int]) -> tuple[list[ProcessInfo], dict[int, str]]:
        """Take finished processes out of `ps -a` (see DurableState.clean): the snapshots of
        those cleaned, and why each of the others was not."""
        self._writable()
        return self.durable.clean([as_pid(p) for p in pids])

    def restart(self, pid: int) -> ProcessInfo:
        """Run a finished process again as a new process (a new PID): the same tool, parameters,
        name, priority, resource needs, working directory and dependencies. Not a live or an
        interrupted one (`recover` continues those). With a home, it also runs under the same
        retry and restart policies, timeout, isolation and limits it was started with. Returns the
        new process's snapshot."""
        self._writable()
        info = self.info(as_pid(pid))
        if not info.is_done:
            raise IllegalTransition(f"process {info.process_id} is {info.display_state.lower()}; only a "
                                    "finished process can be restarted (wait for it or kill it first)")
        if info.state == Outcome.INTERRUPTED:
            raise IllegalTransition(f"process {info.process_id} was interrupted: `recover {info.process_id}` "
                                    f"continues it, `kill {info.process_id}` dismisses it")
        asked = self.durable.run_options(info.pid) or {}
        attempts = attempts_from_data(asked)
        new = self.spawn(info.tool_name, params=dict(info.context.input_parameters), priority=info.priority,
                         after=info.after, name=info.name, cwd=info.context.working_directory or None,
                         needs=dict(info.needs) or None,
                         retry=attempts.retry if attempts is not None else None,
                         restart=attempts.restart if attempts is not None else None,
                         **{k: asked[k] for k in RUN_OPTIONS if k in asked})
        with self.table.lock:  # events are published under the lock, so in order
            self.bus.publish("process.rerun", info.pid, {"as": new})
        return self.info(new)

    # ------------------------------------------------------------------ events, audit

    def subscribe(self, pattern: str, callback: Callable[..., None], *, pid: int | str | None = None,
                  filter: EventFilter | None = None, replay: bool = False, since: float | None = None,
                  queue: int | None = DEFAULT_QUEUE, policy: DropPolicy = "oldest", coalesce: str | None = None,
                  batch: bool = False) -> Subscription:
        """Call `callback(event)` for every matching event (see EventLog.subscribe)."""
        return self.event_log.subscribe(pattern, callback, pid=pid, filter=filter, replay=replay, since=since,
                                     queue=queue, policy=policy, coalesce=coalesce, batch=batch)

    def events(self, pid: int | None = None, types: str | None = None, since: float | None = None,
               limit: int | None = None) -> list[Event]:
        """The event log, oldest first (see EventLog.events)."""
        return self.event_log.events(pid, types, since, limit)

    def bus_info(self) -> BusInfo:
        return self.event_log.bus_info()

    def follow_events(self, pid: int | None = None, types: str | None = None, since: float | None = None,
                      limit: int | None = None, *, timeout: float | None = None) -> Iterator[Event]:
        return self.event_log.follow_events(pid, types, since, limit, timeout=timeout)

    def follow_log(self, pid: int, *, tail: int | None = None, timeout: float | None = None,
                   since: float | None = None) -> Iterator[tuple[float, str]]:
        return self.event_log.follow_log(pid, tail=tail, timeout=timeout, since=since)

    def record_command(self, text: str, status: int) -> None:
        self.event_log.record_command(text, status)

    def audit(self, since: float | None = None, limit: int | None = None) -> list[_AuditEntry]:
        return self.event_log.audit(since, limit)

    # ------------------------------------------------------------------ debugging, profiling

    def debug_info(self, pid: int) -> DebugInfo:
        return self.inspector.debug_info(pid)

    def profile(self, pid: int, duration: float, interval: float = 0.01, stop: threading.Event | None = None,
                on_tick: Callable[[float, int], Any] | None = None, *, memory: bool = False) -> ProfileReport:
        return self.inspector.profile(pid, duration, interval, stop, on_tick, memory=memory)

    def debug_memory(self, pid: int, *, diff: bool = False, top: int | None = None, dump: str | None = None,
                     stop: bool = False, frames: int | None = None) -> MemoryReport:
        """Where process `pid`'s live Python memory was allocated (tracemalloc, started for it on
        the first call); `diff`: what grew since the previous call; `top` sites (default 10) of
        `frames` frames each (default 10); `dump`: also write the snapshot to that file; `stop`:
        end tracing after this look (observe/memory.py)."""
        return self.memory.memory(pid, diff=diff, top=top, dump=dump, stop=stop, frames=frames)

    def io_limit(self, pid: int) -> IoLimitInfo | None:
        """The I/O rate limit of process `pid` and how it holds so far; None if it has none running."""
        return self._io_limits.info(as_pid(pid)) if self._io_limits is not None else None

    def host_connections(self) -> list[EndpointInfo]:
        """Web hosts connected to so far (`ctx.connection`, web_fetch): connections in flight,
        fetches waiting for one, the host's limit (hosts.py); empty before the first."""
        return self._hosts.infos() if self._hosts is not None else []

    def io_starts_held(self, pid: int) -> bool:
        """Whether process `pid`'s external commands must start stopped (`ctx.popen`): its
        `--io-rate` is held by the duty cycle, whose first stretch is their first instant."""
        return self._io_limits is not None and self._io_limits.starts_held(as_pid(pid))

    def io_limit_method(self) -> tuple[str, str]:
        """How `--io-rate` is held here: ("cgroup", its directory) or ("duty-cycle", why not a cgroup)."""
        return self.io_limits.method()

    def stop_memory_trace(self, pid: int) -> bool:
        """End `debug PID memory`'s tracing of process `pid`; True if it was traced."""
        return self._memory.stop(pid) if self._memory is not None else False

    def set_breakpoint(self, pid: int, *, at_step: int | None = None, when: str | None = None,
                       on_checkpoint: bool = False) -> Breakpoint:
        self._writable()
        return self.debugger.set_breakpoint(pid, at_step=at_step, when=when, on_checkpoint=on_checkpoint)

    def clear_breakpoint(self, pid: int, number: int | str = "all") -> list[Breakpoint]:
        return self.debugger.clear_breakpoint(pid, number)

    def breakpoints(self, pid: int) -> list[Breakpoint]:
        return self.debugger.breakpoints(pid)

    def continue_(self, pid: int) -> DebugStatus:
        self._writable()
        return self.debugger.continue_(pid)

    def step(self, pid: int) -> DebugStatus:
        self._writable()
        return self.debugger.step(pid)

    def next_(self, pid: int) -> DebugStatus:
        self._writable()
        return self.debugger.next_(pid)

    def debug_status(self, pid: int) -> DebugStatus:
        return self.debugger.debug_status(pid)

    def debug_wait(self, pid: int, timeout: float | None = None, *, since: int | None = None) -> DebugStatus:
        return self.debugger.debug_wait(pid, timeout, since=since)

    def inspect_value(self, pid: int, name: str) -> Inspected:
        return self.debugger.inspect_value(pid, name)

    def modify(self, pid: int, name: str, value: Any) -> Modification:
        self._writable()
        return self.debugger.modify(pid, name, value)

    def set_trace(self, pid: int, on: bool) -> DebugStatus:
        self._writable()
        return self.debugger.set_trace(pid, on)

    def trace_log(self, pid: int) -> TraceLog:
        return self.debugger.trace_log(pid)

    # ------------------------------------------------------------------ communication

    @property
    def deadlock_policy(self) -> str:
        return self.ipc.deadlock_policy

    @deadlock_policy.setter
    def deadlock_policy(self, policy: str) -> None:
        self.ipc.deadlock_policy = policy

    def send(self, pid: int, message: Any, *, type: Any = None, persistent: bool = False,  # noqa: A002
             sensitive: bool = False) -> Any:
        """Send `message` to process `pid` from outside any process (the shell, a script)."""
        self._writable()
        return self.ipc.send(pid, message, type=type, persistent=persistent, sensitive=sensitive)

    def broadcast(self, topic: str, message: Any, *, type: Any = None, persistent: bool = False,  # noqa: A002
                  sensitive: bool = False) -> list[int]:
        self._writable()
        return self.ipc.broadcast(topic, message, type=type, persistent=persistent, sensitive=sensitive)

    def mailbox(self, pid: int) -> list[Any]:
        return self.ipc.mailbox(pid)

    def shared(self, key: str | None = None) -> list[Any]:
        return self.ipc.shared(key)

    def set_shared(self, key: str, value: Any, expected_version: int | None = None) -> int | None:
        self._writable()
        return self.ipc.set_shared(key, value, expected_version)

    def buffers(self) -> list[Any]:
        return self.ipc.buffers()

    def locks(self) -> LocksInfo:
        return self.ipc.locks()

    # ------------------------------------------------------------------ resilience

    def breakers(self) -> list[BreakerInfo]:
        return self.resilience.breakers()

    def breaker_reset(self, name: str) -> BreakerInfo:
        self._writable()
        return self.resilience.breaker_reset(name)

    def breaker_record(self, name: str, ok: bool, error: str | None = None, *, pid: int | None = None
                       ) -> BreakerInfo:
        return self.resilience.breaker_record(name, ok, error, pid=pid)

    def breaker_check(self, name: str, pid: int | None = None) -> str | None:
        return self.resilience.breaker_check(name, pid)

    @property
    def breaker_threshold(self) -> int:
        return self.resilience.breaker_threshold

    @breaker_threshold.setter
    def breaker_threshold(self, n: int) -> None:
        self.resilience.breaker_threshold = n

    @property
    def breaker_cooldown(self) -> float:
        return self.resilience.breaker_cooldown

    @breaker_cooldown.setter
    def breaker_cooldown(self, seconds: float) -> None:
        self.resilience.breaker_cooldown = seconds

    @property
    def stall_timeout(self) -> float:
        return self.resilience.stall_timeout

    @stall_timeout.setter
    def stall_timeout(self, seconds: float) -> None:
        self.resilience.stall_timeout = seconds

    @property
    def stall_action(self) -> str:
        return self.resilience.stall_action

    @stall_action.setter
    def stall_action(self, action: str) -> None:
        self.resilience.stall_action = action

    @property
    def health_min_disk_mb(self) -> float:
        return self.resilience.health_min_disk_mb

    @health_min_disk_mb.setter
    def health_min_disk_mb(self, mb: float) -> None:
        if not 0 <= mb < float("inf"):
            raise LlmunixError(f"health_min_disk_mb must be a finite number >= 0, not {mb!r}")
        self.resilience.health_min_disk_mb = float(mb)

    def degraded(self) -> tuple[str, ...]:
        """Why llmunix is in degraded mode (low and idle work deferred); empty when it is not."""
        return self.resilience.degraded_reasons()

    @property
    def chaos(self) -> str:
        return self.resilience.chaos

    @chaos.setter
    def chaos(self, text: str | None) -> None:
        self.resilience.set_chaos(text)

    def set_chaos(self, text: str | None) -> str:
        return self.resilience.set_chaos(text)

    def health(self) -> HealthReport:
        """The resilience checks (resilience/health.py), and what max_running is now and why."""
        report = self.resilience.health()
        slots = HealthCheck("max_running", OK, self.autoscaler.info().line().split(": ", 1)[1])
        return HealthReport((*report.checks, slots), report.degraded, report.time)

    # ------------------------------------------------------------------ tools

    def reload_tools(self) -> ReloadReport:
        """Load the user's tool files and modules again (tools/loader.py): changed and new ones
        run as new modules, a broken one is refused and keeps its old tools, deleted tools go.
        Running processes keep the code they started with (`running_old` lists them)."""
        from llmunix.tools.loader import reload_user_tools

        report = reload_user_tools()
        with self.table.lock:
            old = tuple(sorted((p.pid, p.tool.name) for p in self.table.live.values()
                               if p.tool.source != "builtin" and self.registry.find(p.tool.name) is not p.tool))
        report = replace(report, running_old=old)
        self.bus.publish("tools.reloaded", None, {
            "changed": [s.label for s in report.sources if s.status != "refused"],
            "refused": [s.label for s in report.refused], "unchanged": report.unchanged,
            "seconds": round(report.seconds, 4)})
        return report

    # ------------------------------------------------------------------ workflows

    def workflow_dirs(self) -> list[tuple[str, Path]]:
        return self.workflows.workflow_dirs()

    def workflow_specs(self) -> list[SpecInfo]:
        return self.workflows.workflow_specs()

    def workflow_spec(self, name: str) -> WorkflowSpec:
        return self.workflows.workflow_spec(name)

    def workflow_run(self, name: str | WorkflowSpec, inputs: Mapping[str, Any] | None = None, *,
                     priority: Priority | str | None = None, seed: int | None = None, no_cache: bool = False) -> int:
        self._writable()
        return self.workflows.workflow_run(name, inputs, priority=priority, seed=seed, no_cache=no_cache)

    def workflow_pid(self, target: str | int) -> int:
        return self.workflows.workflow_pid(target)

    def workflow_status(self, target: str | int) -> WorkflowStatus:
        return self.workflows.workflow_status(target)

    def workflow_retry(self, target: str | int, step: str | None = None) -> RetryStarted:
        self._writable()
        return self.workflows.workflow_retry(target, step)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, reason: str = "kernel shut down", timeout: float = 10.0, *,
                 interrupt: bool | None = None, hand_over_home: bool = False) -> Sequence[ProcessInfo]:
        """Stop every live process, then the threads. With a store (or `interrupt=True`) they end
        Interrupted, to be continued by `recover`; without one they end Cancelled with `reason`.
        `hand_over_home`: keep the home's lock for an exec of this process (HomeLock.hand_over:
        a daemon restarting in place, so that no other llmunix takes the home in between).
        Returns the snapshots of the processes it stopped (not those a user's kill was ending
        already: they end Cancelled, as that kill said)."""
        if interrupt is None:
            interrupt = self.store is not None
        table = self.table
        with table.lock:
            if table.closed:
                return []
            table.closed = True
            procs = list(table.live.values())
        live = [p.pid for p in procs]
        stopped = [] if self.read_only else table.stop_all(
            live, reason, Outcome.INTERRUPTED if interrupt else Outcome.CANCELLED)
        infos = table.wait_procs(procs, timeout)
        stuck = infos.unfinished()
        for pid in stuck:
            try:
                self.kill(pid, force=True, reason=reason, interrupt=interrupt)
            except LlmunixError:
                pass
        if stuck:
            infos = table.wait_procs(procs, 2.0)
        if self.monitor is not None:
            self.monitor.stop()
        table.close()
        if self._io_limits is not None:
            self._io_limits.close()
        self.isolation.close()
        self.children.close()  # what is left of their groups (background jobs of finished tools) goes too
        self.ipc.close()
        self.backend.close()
        self.bus.flush(timeout=5.0)
        self.bus.close()
        if self.store is not None:
            self.store.close()
        if not self.read_only:
            table.pids.close()
        if self._home_lock is not None:
            if hand_over_home:
                self._home_lock.hand_over()
            else:
                self._home_lock.release()
        return table.wait_procs(stopped, 0) if stopped else []  # (ended: no wait)

    # ------------------------------------------------------------------ helpers

    def _writable(self) -> None:
        if self.read_only:
            raise LlmunixError(f"read-only: {self.home} is in use by llmunix pid {self.home_owner}; "
                               "only ps, log, events and audit work here")

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


def _fold_workflow(versions: list[Any]) -> Any:
    from llmunix.workflows.runner import fold

    return fold(versions)


def _io_cgroup() -> str | None:
    """The configured cgroup v2 directory for I/O limits (`io_cgroup`), if any."""
    from llmunix.config import active_config

    return active_config().io_cgroup


def _tool_config() -> dict[str, Any]:
    """The configuration tools see (`active_config()`), for the isolation pool process."""
    from llmunix.config import active_config

    return active_config().model_dump()


def _highest_pid(store: Store | None) -> int:
    """The highest PID the store has seen: new PIDs start above it, whatever `<home>/pids` says."""
    if store is None:
        return 0
    rows = store.query("SELECT max(pid) AS m FROM processes")
    events = store.query("SELECT max(pid) AS m FROM events")
    return max(int(rows[0]["m"] or 0) if rows else 0, int(events[0]["m"] or 0) if events else 0)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "user"
