"""Memory debugging: where a process's Python memory was allocated (`debug PID memory`), what
grew since the last look (`--diff`: leak detection), a dump for later analysis (`--dump FILE`),
and the allocation hotspots of a profile window (`profile PID --memory`). tracemalloc traces.

Where it traces, and what that costs:

* A thread tool shares llmunix's OS process, and tracemalloc is process-wide: once on, every
  allocation of every thread pays for it (bench/memory.py measures how much). So it is off
  until `debug PID memory` (or `profile --memory`) asks, and goes off again when the last
  process that asked has ended or said `--stop` -- unless it was on before (PYTHONTRACEMALLOC,
  or your own code): then it is left on, as found, and its frame limit is the one it has.
  tracemalloc records no thread, so an allocation is counted as the process's when its
  traceback (the innermost FRAMES frames) passes through the file of the tool's function.
  That is honest about what it is: allocations by the tool's code, from any thread; another
  process of the same tool running at the same time is counted too (the report names it), and
  memory the tool gets back from llmunix (a message, a blackboard value) is not its own.
* An isolated tool traces in its worker OS process (isolation.py asks it over its socket): the
  worker's whole Python heap is the process's own, so nothing is filtered out, and llmunix
  itself pays nothing. What the worker inherited from the pool process (imports) was allocated
  before tracing began and is not seen.
* Allocations made before tracing began are never seen; the first look says so.

`Tracer` is the tracemalloc bookkeeping of one OS process (llmunix's, or a worker's), for any
number of *owners* (a PID's `debug`, a PID's profile window): who turned it on, each owner's
start and its last look's sites (what `--diff` compares with). `MemoryDebugger` is the kernel
component (thread tools here, isolated ones through `Isolation.ask`; its `on_end` hook stops
tracing for a process that ends). Records are frozen: `MemoryReport`, `MemorySite`.
"""

from __future__ import annotations

import linecache
import os
import threading
import time
import tracemalloc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmunix.lifecycle import Hooks
from llmunix.models import LlmunixError, Phase, as_pid, format_pid

if TYPE_CHECKING:
    from llmunix.durable import DurableState
    from llmunix.isolation import Isolation
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process

# Frames kept per allocation. Enough, mostly, to reach from an allocation in a library back to the
# tool's own line (an allocation whose kept frames do not reach it is not counted as the tool's);
# the cost grows with it: bench/memory.py (docs/performance.md) measures 1, 10 and 25.
DEFAULT_FRAMES = 10
MAX_FRAMES = 200
DEFAULT_TOP = 10
_TRACEMALLOC = tracemalloc.__file__
_THIS = __file__


@dataclass(frozen=True, slots=True)
class MemorySite:
    """Live allocations made at one line: `file:line` (the innermost frame), reached from the
    tool's own `via` line (empty when the site is the tool's own line, or no tool frame shows)."""

    file: str
    line: int
    via: str
    size: int  # bytes live now
    count: int  # blocks live now
    size_diff: int = 0  # since the previous look (a diff)
    count_diff: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "via": self.via, "size": self.size, "count": self.count,
                "size_diff": self.size_diff, "count_diff": self.count_diff, "source": self.source}


@dataclass(frozen=True, slots=True)
class MemoryLook:
    """What one look found in the traced OS process (built on either side of a worker's socket)."""

    frames: int  # the traceback limit in force
    traced_for: float  # seconds since this owner began tracing
    size: int  # the attributed live allocations
    count: int
    sites: tuple[MemorySite, ...]
    diff: bool
    previous_age: float | None  # seconds since the look the diff compares with (None: the start of tracing)
    size_diff: int
    count_diff: int
    total_traced: int  # all traced memory of the OS process now
    overhead: int  # tracemalloc's own memory
    started_now: bool  # this look turned tracing on for its owner
    already_on: bool  # tracemalloc was on before llmunix asked (it is left on)
    dump: str | None = None


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """`debug PID memory`: a look at one process, with where it was taken and what it shares."""

    pid: int
    name: str
    tool: str
    where: str  # "thread" (tracemalloc in llmunix) or "isolated" (in the worker)
    look: MemoryLook
    files: tuple[str, ...] = ()  # a thread tool: the files whose allocations count as its own
    notes: tuple[str, ...] = ()
    stopped: bool = False  # tracing ended for it after this look (--stop)

    def to_dict(self) -> dict[str, Any]:
        k = self.look
        return {"pid": self.pid, "name": self.name, "tool": self.tool, "where": self.where, "frames": k.frames,
                "traced_for": round(k.traced_for, 3), "size": k.size, "count": k.count, "diff": k.diff,
                "previous_age": None if k.previous_age is None else round(k.previous_age, 3),
                "size_diff": k.size_diff, "count_diff": k.count_diff, "total_traced": k.total_traced,
                "overhead": k.overhead, "started_now": k.started_now, "already_on": k.already_on,
                "dump": k.dump, "stopped": self.stopped, "files": list(self.files), "notes": list(self.notes),
                "sites": [s.to_dict() for s in k.sites]}


Key = tuple[str, int, str]  # (file, line, via)


@dataclass
class _Owner:
    started: float
    last: dict[Key, tuple[int, int]] | None = None  # the last look's sites: (size, count)
    last_at: float | None = None


@dataclass
class Tracer:
    """tracemalloc for this OS process, shared by owners (see the module docstring). Thread-safe."""

    owners: dict[Any, _Owner] = field(default_factory=dict)
    ours: bool = False  # we turned tracemalloc on (and so turn it off after the last owner)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, owner: Any, frames: int = DEFAULT_FRAMES) -> bool:
        """Trace for `owner` (turning tracemalloc on if it is off); True if it was not tracing yet."""
        with self.lock:
            if owner in self.owners:
                return False
            if not tracemalloc.is_tracing():
                tracemalloc.start(frames)
                self.ours = True
            self.owners[owner] = _Owner(time.monotonic())
            return True

    def stop(self, owner: Any) -> bool:
        """`owner` is done; tracemalloc goes off after the last owner if we turned it on. True if
        `owner` was tracing."""
        with self.lock:
            if self.owners.pop(owner, None) is None:
                return False
            if not self.owners and self.ours:
                self.ours = False
                if tracemalloc.is_tracing():
                    tracemalloc.stop()
            return True

    def tracing(self, owner: Any) -> bool:
        return owner in self.owners

    def look(self, owner: Any, files: Sequence[str] | None, *, tool_files: Sequence[str] = (), diff: bool = False,
             top: int = DEFAULT_TOP, dump: str | None = None, frames: int = DEFAULT_FRAMES) -> MemoryLook:
        """Start tracing for `owner` if needed, then look: the live allocations whose traceback
        passes through one of `files` (None: all of them), grouped by site; with `diff`, compared
        with the owner's previous look (or the start of tracing). `dump` writes the snapshot
        (tracemalloc's format: `tracemalloc.Snapshot.load(FILE)`)."""
        already_on = tracemalloc.is_tracing() and not self.ours
        started_now = self.start(owner, frames)
        snapshot = tracemalloc.take_snapshot()
        if dump is not None:  # the whole traced heap: fast to write (filtering it here would not be)
            try:
                snapshot.dump(dump)
            except OSError as exc:
                raise LlmunixError(f"cannot write {dump}: {exc.strerror or exc}") from None
        groups = _group(snapshot, None if files is None else set(files), set(tool_files or files or ()))
        now = time.monotonic()
        with self.lock:
            state = self.owners.get(owner) or _Owner(now)
            previous, previous_at = state.last, state.last_at
            state.last, state.last_at = groups, now
        total_size = sum(s for s, _ in groups.values())
        total_count = sum(c for _, c in groups.values())
        current, _peak = tracemalloc.get_traced_memory()
        if diff:
            before = previous or {}
            rows = []
            for key in groups.keys() | before.keys():
                size, count = groups.get(key, (0, 0))
                old_size, old_count = before.get(key, (0, 0))
                if size != old_size or count != old_count:
                    rows.append((key, size, count, size - old_size, count - old_count))
            rows.sort(key=lambda r: (-r[3], -r[4], r[0]))
            sites = tuple(_site(k, s, c, ds, dc) for k, s, c, ds, dc in rows[:top])
            size_diff = total_size - sum(s for s, _ in before.values())
            count_diff = total_count - sum(c for _, c in before.values())
            age = None if previous_at is None else now - previous_at
        else:
            ordered = sorted(groups.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:top]
            sites = tuple(_site(k, s, c) for k, (s, c) in ordered)
            size_diff = count_diff = 0
            age = None
        return MemoryLook(tracemalloc.get_traceback_limit(), now - state.started, total_size, total_count, sites,
                          diff, age, size_diff, count_diff, current, tracemalloc.get_tracemalloc_memory(),
                          started_now, already_on, dump)


def _group(snapshot: tracemalloc.Snapshot, files: set[str] | None, tool_files: set[str]
           ) -> dict[Key, tuple[int, int]]:
    """Live size and blocks by (site, the tool's innermost line on the way there), of the
    allocations whose traceback passes through one of `files` (None: all). Grouped per distinct
    traceback first (many allocations share one): the cost is the snapshot's, not per frame."""
    groups: dict[Key, tuple[int, int]] = {}
    for stat in snapshot.statistics("traceback"):
        tb = stat.traceback  # oldest frame first
        names = {f.filename for f in tb}
        if _THIS in names or (files is not None and not names & files):
            continue  # (this module's own allocations, e.g. a statistics' dict, are not the process's)
        site = tb[-1]
        if site.filename == _TRACEMALLOC:
            continue
        via = ""
        for f in reversed(tb):
            if f.filename in tool_files:
                if (f.filename, f.lineno) != (site.filename, site.lineno):
                    via = f"{os.path.basename(f.filename)}:{f.lineno}"
                break
        key = (site.filename, site.lineno, via)
        size, count = groups.get(key, (0, 0))
        groups[key] = (size + stat.size, count + stat.count)
    return groups


def _site(key: Key, size: int, count: int, size_diff: int = 0, count_diff: int = 0) -> MemorySite:
    file, line, via = key
    return MemorySite(file, line, via, size, count, size_diff, count_diff, linecache.getline(file, line).strip())


# ---------------------------------------------------------------------- in an isolated worker

_WORKER = Tracer()  # the worker's own (one process: owners are "debug" and "profile")


def worker_memory(args: Mapping[str, Any], tool_file: str | None) -> MemoryLook | None:
    """A question from llmunix (isolation.QUESTIONS["memory"]), answered in the worker: look at
    its whole heap (`op` "look"), or stop tracing for an owner (`op` "stop": None)."""
    owner = args.get("owner", "debug")
    if args.get("op") == "stop":
        _WORKER.stop(owner)
        return None
    return _WORKER.look(owner, None, tool_files=[tool_file] if tool_file else (), diff=bool(args.get("diff")),
                        top=int(args.get("top", DEFAULT_TOP)), dump=args.get("dump"),
                        frames=int(args.get("frames", DEFAULT_FRAMES)))


# ---------------------------------------------------------------------- the kernel component


class MemoryDebugger(Hooks):
    """`debug PID memory` and `profile --memory` for the kernel: tracemalloc here for thread
    tools, in the worker for isolated ones. Registers its `on_end` hook at its first use (until
    then no process pays for it). State: `_traced` (pid -> owners tracing it: "debug", "profile")."""

    def __init__(self, table: ProcessTable, durable: DurableState, isolation: Isolation) -> None:
        self.table = table
        self.durable = durable
        self.isolation = isolation
        self.tracer = Tracer()
        self._traced: dict[int, set[str]] = {}
        self._active = False

    def memory(self, pid: int, *, diff: bool = False, top: int | None = None, dump: str | None = None,
               stop: bool = False, frames: int | None = None, owner: str = "debug") -> MemoryReport:
        """Look at process `pid`'s allocations (see the module docstring); `stop` ends tracing
        for it after this look; `top` and `frames` None: DEFAULT_TOP, DEFAULT_FRAMES. Raises
        LlmunixError for a process that cannot be traced."""
        pid = as_pid(pid)
        top = DEFAULT_TOP if top is None else top
        frames = DEFAULT_FRAMES if frames is None else frames
        if not 1 <= top <= 1000:
            raise LlmunixError(f"bad --top {top}; give 1 to 1000 sites")
        if not 1 <= frames <= MAX_FRAMES:
            raise LlmunixError(f"bad --frames {frames}; give 1 to {MAX_FRAMES}")
        where, name, tool, files, notes = self._target(pid)
        self._activate()
        if dump is not None:
            dump = os.path.abspath(os.path.expanduser(dump))
        with self.table.lock:  # (before tracing starts: its end's hook stops it)
            self._traced.setdefault(pid, set()).add(owner)
        try:
            if where == "isolated":
                look = self.isolation.ask(pid, "memory", {"owner": owner, "diff": diff, "top": top, "dump": dump,
                                                          "frames": frames})
            else:
                look = self.tracer.look((pid, owner), files, diff=diff, top=top, dump=dump, frames=frames)
        finally:
            with self.table.lock:
                ended = self._ended_locked(pid)
            if stop or ended:  # (it may have ended while we looked: its hook has been and gone)
                self.stop(pid, owner)
        return MemoryReport(pid, name, tool, where, look, tuple(files), tuple(notes), stop)

    def stop(self, pid: int, owner: str = "debug") -> bool:
        """End tracing of process `pid` for `owner`; True if it was traced."""
        pid = as_pid(pid)
        with self.table.lock:
            was = owner in self._traced.get(pid, ())
            self._forget_locked(pid, owner)
        if self.tracer.stop((pid, owner)):
            return True
        if was:
            self._stop_isolated(pid, owner)
        return was

    def traced(self, pid: int) -> tuple[str, ...]:
        """Who traces process `pid` now ("debug", "profile")."""
        with self.table.lock:
            return tuple(sorted(self._traced.get(as_pid(pid), ())))

    @property
    def tracing_here(self) -> bool:
        """tracemalloc is on in llmunix's own process because llmunix turned it on."""
        return self.tracer.ours

    # ------------------------------------------------------------------ hooks

    def on_end(self, proc: Process) -> None:
        owners = self._traced.pop(proc.pid, None)
        if owners:  # (lock held: tracemalloc.stop frees every trace, so it is done on the timer thread)
            for owner in owners:
                self.table.timers.call_later(0, self.tracer.stop, (proc.pid, owner))

    # ------------------------------------------------------------------ helpers

    def _activate(self) -> None:
        if not self._active:
            with self.table.lock:
                if not self._active:
                    self.table.register(self)
                    self._active = True

    def _forget_locked(self, pid: int, owner: str) -> None:
        owners = self._traced.get(pid)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self._traced[pid]

    def _ended_locked(self, pid: int) -> bool:
        proc = self.table.get(pid)
        return proc is None or proc.phase is Phase.DONE

    def _stop_isolated(self, pid: int, owner: str) -> None:
        try:
            self.isolation.ask(pid, "memory", {"op": "stop", "owner": owner})
        except LlmunixError:
            pass  # its worker has gone, and its tracing with it

    def _target(self, pid: int) -> tuple[str, str, str, list[str], list[str]]:
        """(where: "thread" or "isolated", name, tool, the tool's files, notes), or LlmunixError
        saying why this process cannot be traced."""
        table = self.table
        with table.lock:
            proc = table.get(pid)
            if proc is not None:
                done, name, tool = proc.phase is Phase.DONE, proc.name, proc.tool.name
                code = getattr(proc.tool.func, "__code__", None)
                child = proc.subprocess
                placement = self.isolation.placed(pid)
                isolated = placement is not None and placement.isolated
                remote = table.remote is not None and proc.tool.remote
                started = proc.has_thread
                others = [p for p in table.live.values() if p is not proc and p.subprocess is None
                          and getattr(p.tool.func, "__code__", None) is not None and code is not None
                          and p.tool.func.__code__.co_filename == code.co_filename and p.has_thread]
                other_pids = sorted(p.pid for p in others if not self._isolated(p))
        if proc is None:
            info = self.durable.info(pid)  # unknown PIDs raise
            raise LlmunixError(f"process {format_pid(pid)} is not running here ({info.state}); memory is traced "
                               "only while it runs")
        who = f"process {format_pid(pid)} ({name})"
        if done:
            raise LlmunixError(f"{who} has finished; memory is traced only while it runs")
        if remote:
            raise LlmunixError(f"{who} runs on a Dask worker; memory debugging sees this machine's processes only")
        if isolated:
            if not started:
                raise LlmunixError(f"{who} has not started yet; try again once it runs")
            return "isolated", name, tool, [], []
        if child is not None or code is None:
            raise LlmunixError(f"{who} runs an external command: tracemalloc traces Python code only; `debug "
                               f"{format_pid(pid)}` shows its resident memory (run a Python tool with --isolate "
                               "to trace it in its own worker)")
        notes = []
        if other_pids:
            listed = ", ".join(format_pid(p) for p in other_pids[:5]) + (" ..." if len(other_pids) > 5 else "")
            notes.append(f"also counts {listed}: the same tool code runs there on threads now")
        return "thread", name, tool, [code.co_filename], notes

    def _isolated(self, proc: Process) -> bool:
        p = self.isolation.placed(proc.pid)
        return p is not None and p.isolated


__all__ = ["DEFAULT_FRAMES", "MemoryDebugger", "MemoryLook", "MemoryReport", "MemorySite", "Tracer",
           "worker_memory"]
