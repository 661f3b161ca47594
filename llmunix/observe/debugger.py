"""The interactive debugger's engine side: breakpoints at control points, line stepping, the
execution trace, and the records the shell sees. The kernel side is debug_control.py (Debugger).

How a process is stopped, and by whom:

* A **breakpoint** is checked at the process's control points (`ctx.progress`, `ctx.checkpoint`,
  `ctx.sleep`, `ctx.check`, ...), in its own thread, under the kernel lock. It fires when its
  condition *becomes* true: at the first control point where it holds after one where it did not
  (so `continue` goes on instead of stopping again at the next control point). An
  `--on-checkpoint` breakpoint fires once per checkpoint, right after the state is recorded.
* **Stepping** needs the thread's cooperation: at a control point the process's own thread
  installs a trace function (`sys.settrace` for that thread, and `frame.f_trace` on the tool's
  frames already running). It sees only the tool's code (`ToolCode`): not llmunix's machinery, not
  the standard library or installed packages. `step` stops at the next line event in tool code;
  `next` at the next one in the same frame or an outer one (calls are stepped over).
* Either way the process stops the way a pause does: it leaves its scheduler slot (phase `paused`,
  `ps` shows why in its detail) and its thread waits at the kernel's control point, where a kill
  still ends it and a `continue` (or `resume`) lets it go on.

`ProcessDebugger` is the per-process state (`Process.debug`, None when the process was never
debugged). The shell thread changes it under the kernel lock; the process's thread reads a few
fields without the lock from the trace function (single attribute reads: a change is seen at the
next event). The trace buffer has its own small lock because the trace function fills it without
the kernel lock.
"""

from __future__ import annotations

import linecache
import os
import reprlib
import site
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from llmunix.observe.condition import Condition
from llmunix.observe.debug import is_engine_file
from llmunix.observe.redact import MASK, is_secret_key, redact_text

TRACE_LIMIT = 10_000  # entries kept by `trace on` (the oldest are dropped)
STEP = "step"
NEXT = "next"


# ---------------------------------------------------------------------- records the shell sees


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A breakpoint of one process, numbered from 1 per process."""

    number: int
    at_step: int | None
    when: str | None
    on_checkpoint: bool
    hits: int = 0
    error: str = ""  # the last error evaluating `when` (it then counts as false)

    def describe(self) -> str:
        parts = []
        if self.at_step is not None:
            parts.append(f"at step {self.at_step}")
        if self.on_checkpoint:
            parts.append("on checkpoint")
        if self.when is not None:
            parts.append(f"when {self.when}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "at_step": self.at_step, "when": self.when,
                "on_checkpoint": self.on_checkpoint, "hits": self.hits, "error": self.error,
                "description": self.describe()}


@dataclass(frozen=True, slots=True)
class Location:
    """Where a stopped process is in its tool's code."""

    function: str
    file: str
    line: int
    source: str  # the text of that line, stripped ("" when the file cannot be read)

    def short(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line} ({self.function})"

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "file": self.file, "line": self.line, "source": self.source}


@dataclass(frozen=True, slots=True)
class DebugStatus:
    """A process as the debugger sees it now."""

    pid: int
    name: str
    state: str  # the display state: Running, Paused, Completed, ...
    detail: str
    finished: bool
    stopped: bool  # stopped by the debugger (a breakpoint or a step), waiting for continue/step/next
    stopped_by: str  # "breakpoint", "step" or ""
    breakpoint: int | None  # the breakpoint that stopped it
    location: Location | None  # where it stopped (a step stop), else None
    mode: str  # "step" / "next" while a step is pending, else ""
    tracing: bool
    breakpoints: tuple[Breakpoint, ...] = ()
    stops: int = 0  # times the debugger has stopped it so far

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "state": self.state, "detail": self.detail,
                "finished": self.finished, "stopped": self.stopped, "stopped_by": self.stopped_by,
                "breakpoint": self.breakpoint, "location": None if self.location is None else self.location.to_dict(),
                "mode": self.mode, "tracing": self.tracing, "breakpoints": [b.to_dict() for b in self.breakpoints]}


@dataclass(frozen=True, slots=True)
class Inspected:
    """The value of one name in a process: a local variable, a parameter or checkpoint state."""

    name: str
    kind: str  # "local", "param", "params", "checkpoint"
    where: str  # e.g. "local variable of fetch()", "parameter", "checkpoint version 3"
    type: str
    value: str  # a repr, truncated, secrets redacted

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "where": self.where, "type": self.type, "value": self.value}


@dataclass(frozen=True, slots=True)
class Modification:
    """What `modify` changed (values as reprs, secrets redacted)."""

    pid: int
    name: str
    kind: str  # "param" or "checkpoint"
    old: str
    new: str
    version: int | None = None  # the checkpoint version it recorded

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "kind": self.kind, "old": self.old, "new": self.new,
                "version": self.version}


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One recorded event: a call, a return, an exception, a control point or a stop."""

    t: float  # seconds since the trace was switched on
    kind: str  # "call", "return", "exception", "control", "stop"
    function: str
    file: str
    line: int
    depth: int  # tool frames below the tool function (0: the tool function itself)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "kind": self.kind, "function": self.function, "file": self.file,
                "line": self.line, "depth": self.depth, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class TraceLog:
    pid: int
    name: str
    on: bool  # still recording
    entries: tuple[TraceEntry, ...]
    dropped: int  # older entries dropped past TRACE_LIMIT
    started: float | None  # Unix time the recording began

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "on": self.on, "dropped": self.dropped,
                "limit": TRACE_LIMIT, "started": self.started, "entries": [e.to_dict() for e in self.entries]}


# ---------------------------------------------------------------------- per-process state


class BreakpointState:
    """A breakpoint as the engine keeps it (mutated under the kernel lock)."""

    __slots__ = ("number", "at_step", "condition", "on_checkpoint", "hits", "error", "held")

    def __init__(self, number: int, at_step: int | None, condition: Condition | None, on_checkpoint: bool) -> None:
        self.number = number
        self.at_step = at_step
        self.condition = condition
        self.on_checkpoint = on_checkpoint
        self.hits = 0
        self.error = ""
        self.held = False  # the condition held at the last control point (edge trigger)

    def holds(self, names: Mapping[str, Any]) -> bool:
        """Do its step and `when` conditions hold now? An evaluation error counts as false."""
        if self.at_step is not None and not names["step"] >= self.at_step:
            return False
        if self.condition is None:
            return True
        try:
            value = self.condition.evaluate(names)
        except Exception as exc:  # noqa: BLE001 - a user's condition; any error means "not now"
            self.error = f"{type(exc).__name__}: {exc}"[:200]
            return False
        self.error = ""
        return value

    def snapshot(self) -> Breakpoint:
        return Breakpoint(self.number, self.at_step, self.condition.text if self.condition else None,
                          self.on_checkpoint, self.hits, self.error)


class TraceBuffer:
    """The last TRACE_LIMIT trace entries, filled by the process's thread without any lock (a
    deque's append is atomic) and read by another thread (`copy` retries if it races an append).
    Entries are kept raw — code object, reprs not yet redacted — and made into TraceEntry records
    only when read: the trace function is on the tool's hot path."""

    __slots__ = ("entries", "dropped", "t0", "started")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, Any, int, int, str]] = deque(maxlen=TRACE_LIMIT)
        self.dropped = 0
        self.t0 = time.perf_counter()
        self.started = time.time()

    def add(self, kind: str, code: Any, line: int, depth: int, detail: str = "") -> None:
        """`code`: a code object, or a (function, file) pair for entries not tied to one."""
        if len(self.entries) == TRACE_LIMIT:
            self.dropped += 1
        self.entries.append((time.perf_counter() - self.t0, kind, code, line, depth, detail))

    def copy(self) -> tuple[tuple[TraceEntry, ...], int]:
        while True:
            try:
                raw = tuple(self.entries)
                break
            except RuntimeError:  # appended to while we copied: again
                continue
        return tuple(_entry(*r) for r in raw), self.dropped


def _entry(t: float, kind: str, code: Any, line: int, depth: int, detail: str) -> TraceEntry:
    function, file = (code.co_name, code.co_filename) if isinstance(code, CodeType) else code
    return TraceEntry(t, kind, function, file, line, depth, redact_text(detail))


class ProcessDebugger:
    """One process's debugging state (see the module docstring for who touches what)."""

    __slots__ = ("breakpoints", "next_number", "mode", "next_depth", "tracing", "log", "stop", "stop_bp",
                 "location", "stops", "seen_checkpoints", "generation", "applied", "installed", "tracer")

    def __init__(self, tool_code: CodeType | None) -> None:
        self.breakpoints: list[BreakpointState] = []
        self.next_number = 1
        self.mode: str | None = None  # STEP or NEXT while a step is asked for
        self.next_depth: int | None = None  # NEXT: stop at a line in a frame this deep or shallower
        self.tracing = False
        self.log: TraceBuffer | None = None  # kept after `trace off`, for replay
        self.stop: str | None = None  # "breakpoint" / "step" while stopped by the debugger
        self.stop_bp: int | None = None
        self.location: Location | None = None
        self.stops = 0  # how many times the debugger has stopped it (debug_wait's `since`)
        self.seen_checkpoints = 0
        self.generation = 0  # bumped by every request; the thread applies it at its next chance
        self.applied = -1
        self.installed = False  # the process's thread has our trace function (touched by that thread only)
        self.tracer = Tracer(tool_code) if tool_code is not None else None

    @property
    def wants_tracing(self) -> bool:
        return self.tracing or self.mode is not None

    def __bool__(self) -> bool:
        """True while the process's control points have work here (`ProcessContext.check` tests
        `proc.debug` on its lock-free fast path: None and an idle debugger cost nothing there)."""
        return (bool(self.breakpoints) or self.mode is not None or self.tracing or self.installed
                or self.stop is not None or self.applied != self.generation)

    def request(self) -> None:
        self.generation += 1


# ---------------------------------------------------------------------- tool code and frames


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(os.path.abspath(paths[key]))
    try:
        dirs.update(os.path.abspath(p) for p in site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenvs
        pass
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        dirs.add(os.path.join(os.path.abspath(prefix), "lib"))
    return tuple(sorted(d + os.sep for d in dirs))


_LIBRARY = _library_dirs()


class ToolCode:
    """Which code objects are the tool's own: its function's file, and any file that is neither
    llmunix's machinery nor the standard library nor an installed package."""

    __slots__ = ("top", "_file", "_cache")

    def __init__(self, top: CodeType) -> None:
        self.top = top
        self._file = os.path.abspath(top.co_filename)
        self._cache: dict[CodeType, bool] = {top: True}

    def __contains__(self, code: CodeType) -> bool:
        known = self._cache.get(code)
        if known is None:
            known = self._cache[code] = self._classify(code.co_filename)
        return known

    def _classify(self, filename: str) -> bool:
        if filename.startswith("<"):
            return False
        path = os.path.abspath(filename)
        if path == self._file:
            return True
        return not is_engine_file(path) and not path.startswith(_LIBRARY)


def depth_of(frame: FrameType | None) -> int:
    n = 0
    while frame is not None:
        n += 1
        frame = frame.f_back
    return n


def tool_stack(frame: FrameType | None, code: ToolCode) -> list[FrameType]:
    """The tool's frames from `frame` outward (innermost first), up to the tool function's frame."""
    found: list[FrameType] = []
    while frame is not None:
        if frame.f_code in code:
            found.append(frame)
            if frame.f_code is code.top:
                return found
        frame = frame.f_back
    return []  # not inside the tool function


def location_of(frame: FrameType) -> Location:
    code = frame.f_code
    line = frame.f_lineno or 0
    return Location(code.co_name, code.co_filename, line, linecache.getline(code.co_filename, line).strip())


def control_point_name(frame: FrameType | None, code: ToolCode) -> str:
    """The ctx method the tool called to reach this control point (`ctx.sleep()`, ...)."""
    callee = None
    while frame is not None:
        if frame.f_code in code:
            return f"ctx.{callee.f_code.co_name}()" if callee is not None else "control point"
        callee = frame
        frame = frame.f_back
    return "control point"


# ---------------------------------------------------------------------- the trace function


class Tracer:
    """The trace function installed in a debugged process's own thread.

    `global_trace` is what `sys.settrace` gets (CPython calls it for each new frame, 'call'
    events); it returns `local_trace` for tool frames only, so the machinery and libraries run
    untraced. `local_trace` gets the tool frames' line, return and exception events. The kernel
    side (`bind`) decides what a stop means; this class only knows frames. `level` counts the
    traced tool frames below the tool function (set when installing, then +1 per traced call and
    -1 per return), for the trace's indentation.
    """

    __slots__ = ("code", "debugger", "on_line", "alive", "level")

    def __init__(self, tool_code: CodeType) -> None:
        self.code = ToolCode(tool_code)
        self.debugger: ProcessDebugger | None = None
        self.on_line: Callable[[FrameType], None] | None = None  # the kernel's stop: blocks, may raise
        self.alive: Callable[[], bool] = lambda: True  # False once the process has ended
        self.level = 0

    def bind(self, debugger: ProcessDebugger, on_line: Callable[[FrameType], None], alive: Callable[[], bool]) -> None:
        self.debugger, self.on_line, self.alive = debugger, on_line, alive

    # -- installing, from the process's own thread

    def install(self, frame: FrameType | None) -> None:
        """Trace this thread from now on, including the tool frames already running."""
        d = self.debugger
        assert d is not None
        lines = d.mode is not None
        frames = tool_stack(frame, self.code)
        for f in frames:
            f.f_trace = self.local_trace
            f.f_trace_lines = lines
        self.level = len(frames) - 1
        if not d.installed:
            sys.settrace(self.global_trace)
            d.installed = True

    def uninstall(self, frame: FrameType | None) -> None:
        d = self.debugger
        sys.settrace(None)
        for f in tool_stack(frame, self.code):
            f.f_trace = None
        if d is not None:
            d.installed = False

    # -- the trace functions (the thread's tracing is off while they run: no recursion)

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        d = self.debugger
        if d is None or not self.alive():
            sys.settrace(None)  # a worker thread outlived its process's tracing: clean up
            return None
        if frame.f_code not in self.code:
            return None
        mode = d.mode
        if mode is None and not d.tracing:
            sys.settrace(None)  # nothing asked of us any more (the kernel's next control point agrees)
            d.installed = False
            return None
        lines = mode == STEP or (mode == NEXT and (d.next_depth is None or depth_of(frame) <= d.next_depth))
        log = d.log if d.tracing else None
        if log is None and not lines:
            return None
        self.level += 1
        if log is not None:
            log.add("call", frame.f_code, frame.f_lineno or 0, self.level, _call_args(frame))
        frame.f_trace_lines = lines
        return self.local_trace

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        d = self.debugger
        if d is None or not self.alive():
            self.uninstall(frame)
            return None
        if event == "line":
            if d.mode == STEP:
                self.on_line(frame)  # type: ignore[misc]
            elif d.mode == NEXT:
                depth = depth_of(frame)
                if d.next_depth is None:
                    d.next_depth = depth  # asked while running: this is the frame to step over in
                elif depth <= d.next_depth:
                    self.on_line(frame)  # type: ignore[misc]
            elif not d.tracing:
                self.uninstall(frame)
                return None
        elif event == "return":
            if d.tracing and d.log is not None:
                d.log.add("return", frame.f_code, frame.f_lineno or 0, max(self.level, 0), _short(arg, 60))
            self.level -= 1
            if frame.f_code is self.code.top:
                self.uninstall(frame)  # the tool function returns: nothing of the tool is left to trace
                return None
        elif event == "exception" and d.tracing and d.log is not None:
            exc_type, exc, _tb = arg
            d.log.add("exception", frame.f_code, frame.f_lineno or 0, max(self.level, 0),
                      _short(exc, 80) if exc is not None else exc_type.__name__)
        return self.local_trace


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


_PLAIN = frozenset({int, float, bool, type(None)})


def _short(value: Any, limit: int) -> str:
    """A bounded repr, cheap for big values (reprlib); redacted when the trace is read."""
    kind = type(value)
    if kind in _PLAIN:
        text = repr(value)
    elif kind is str:
        text = repr(value) if len(value) <= limit else repr(value[:limit])
    else:
        text = _slow_repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slow_repr(value: Any) -> str:
    try:
        return _REPR.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break the tool
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def _call_args(frame: FrameType) -> str:
    code = frame.f_code
    local = frame.f_locals
    shown = []
    for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
        if n == "ctx" or n not in local:
            continue
        shown.append(f"{n}={MASK if is_secret_key(n) else _short(local[n], 40)}")
    return ", ".join(shown)
