"""Looking inside a running process: its tool's stack and locals (`debug`), and a sampling
profiler (`profile`). Pure functions and frozen records; the kernel side is in inspect.py (Inspector).

A thread-backed tool's stack is read from `sys._current_frames()` for its worker thread. Only
the tool's own frames are kept: from the frame of the tool function inward, stopping at the first
llmunix engine frame (a `ctx.sleep()` or `ctx.check()` call goes on into the kernel; that part is
not the tool's). Local values are shown as truncated reprs, and secret-looking ones are redacted.
"""

from __future__ import annotations

import linecache
import os
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any

from llmunix.models import EMPTY, ProcessInfo
from llmunix.monitor import ResourceSample
from llmunix.observe.redact import MASK, is_secret_key, redact_text

if TYPE_CHECKING:
    from llmunix.observe.advice import Suggestion
    from llmunix.observe.debugger import DebugStatus
    from llmunix.observe.memory import MemoryLook

REPR_LIMIT = 80
LOCALS_LIMIT = 40  # locals shown per frame

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../llmunix
_TOOLS = os.path.join(_PACKAGE, "tools") + os.sep
_THREADING = os.path.abspath(threading.__file__)


@dataclass(frozen=True, slots=True)
class StackFrame:
    """One frame of a tool's stack: the function, where it is now, and its locals as text."""

    function: str
    file: str
    line: int
    locals: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    source: str = ""  # the text of that line, stripped

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "file": self.file, "line": self.line, "locals": dict(self.locals),
                "source": self.source}


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """A subprocess tool's child as psutil sees it (best effort: unreadable parts are empty)."""

    pid: int
    command: str
    status: str
    open_files: tuple[str, ...] = ()
    connections: tuple[str, ...] = ()
    note: str = ""  # e.g. "access denied" for what could not be read
    python_pid: int | None = None  # the Python program in its tree, if any
    python_stack: tuple[StackFrame, ...] = ()  # its main thread's stack by py-spy, outermost first
    python_note: str = ""  # why that stack is missing (py-spy not installed, ptrace not permitted...)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": self.command, "status": self.status,
                "open_files": list(self.open_files), "connections": list(self.connections), "note": self.note,
                "python_pid": self.python_pid, "python_stack": [f.to_dict() for f in self.python_stack],
                "python_note": self.python_note}


@dataclass(frozen=True, slots=True)
class DebugInfo:
    """What `debug PID` shows: the snapshot, the tool's stack (outermost first, innermost last;
    empty with `reason` when there is none), the latest monitor sample and a subprocess's child."""

    info: ProcessInfo
    stack: tuple[StackFrame, ...]
    reason: str  # why the stack is empty ("" when it is not)
    sample: ResourceSample | None
    child: ChildInfo | None
    thread_backed: bool
    debugger: DebugStatus | None = None  # breakpoints, a debugger stop, stepping, tracing (None: never debugged)

    def to_dict(self) -> dict[str, Any]:
        s = self.sample
        return {
            "pid": self.info.pid, "name": self.info.name, "tool": self.info.tool_name,
            "state": self.info.display_state, "stack": [f.to_dict() for f in self.stack],
            "reason": self.reason, "thread_backed": self.thread_backed,
            "sample": None if s is None else {"time": s.time, "cpu_percent": s.cpu_percent,
                                              "memory_mb": s.memory_mb, "io_operations": s.io_operations},
            "child": None if self.child is None else self.child.to_dict(),
            "debugger": None if self.debugger is None else self.debugger.to_dict(),
        }


# ---------------------------------------------------------------------- stacks


def is_engine_file(filename: str) -> bool:
    """llmunix's own machinery (kernel, process, executor, ...) and threading: not tool code.
    The built-in tools under llmunix/tools are tool code."""
    path = os.path.abspath(filename)
    if path == _THREADING:
        return True
    return path.startswith(_PACKAGE + os.sep) and not path.startswith(_TOOLS)


def tool_frames(frame: FrameType | None, tool_code: CodeType) -> list[FrameType]:
    """The tool's frames in `frame`'s stack (the thread's innermost frame), outermost first:
    from the frame running `tool_code` inward, up to the first engine frame. Empty when the tool
    function is not on the stack."""
    chain: list[FrameType] = []
    while frame is not None:
        chain.append(frame)
        frame = frame.f_back
    chain.reverse()  # outermost first
    start = next((i for i, f in enumerate(chain) if f.f_code is tool_code), None)
    if start is None:
        return []
    kept = [chain[start]]
    for f in chain[start + 1:]:
        if is_engine_file(f.f_code.co_filename):
            break
        kept.append(f)
    return kept


def safe_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break debugging
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    text = redact_text(text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def frame_locals(frame: FrameType, limit: int = REPR_LIMIT) -> Mapping[str, str]:
    """A frame's locals as truncated reprs; values of secret-looking names are masked."""
    shown: dict[str, str] = {}
    for name, value in list(frame.f_locals.items())[:LOCALS_LIMIT]:
        if name.startswith("__"):
            continue
        shown[name] = MASK if is_secret_key(name) else safe_repr(value, limit)
    return MappingProxyType(shown)


def capture_stack(thread_ident: int | None, tool_code: CodeType, *, with_locals: bool = True
                  ) -> tuple[StackFrame, ...]:
    """The tool's stack on thread `thread_ident` now, outermost first (empty if not in the tool)."""
    if thread_ident is None:
        return ()
    import sys

    frame = sys._current_frames().get(thread_ident)
    try:
        return tuple(
            StackFrame(f.f_code.co_name, f.f_code.co_filename, f.f_lineno or 0,
                       frame_locals(f) if with_locals else EMPTY,
                       linecache.getline(f.f_code.co_filename, f.f_lineno or 0).strip())
            for f in tool_frames(frame, tool_code)
        )
    finally:
        del frame


FrameId = tuple[str, str, int]  # (function, file, first line of the function)


def sample_ids(frame: FrameType | None, tool_code: CodeType) -> tuple[FrameId, ...]:
    """The profiler's cheap view of a stack: function identities, outermost first."""
    return tuple((f.f_code.co_name, f.f_code.co_filename, f.f_code.co_firstlineno)
                 for f in tool_frames(frame, tool_code))


def frame_label(fid: FrameId) -> str:
    """A frame as one word for collapsed stacks: `name@file.py:line` (no spaces, no `;`)."""
    name, file, line = fid
    text = f"{name}@{os.path.basename(file)}:{line}"
    return text.replace(" ", "_").replace(";", ",")


# ---------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str
    file: str
    line: int  # where the function is defined
    inclusive: float  # share of samples with it anywhere on the stack, 0-1
    self_share: float  # share of samples with it innermost, 0-1


@dataclass(frozen=True, slots=True)
class NetworkFigures:
    """A subprocess or isolated tool's OS process tree's network use over a profile window:
    connections (psutil), and bytes on its TCP connections (observe/network.py says how)."""

    seen: int  # distinct connections seen
    peak: int  # most open at once
    open: int  # open at the last sample
    samples: int
    note: str = ""
    sent: int | None = None  # bytes on its TCP connections in the window (None: not measured)
    received: int | None = None
    bytes_note: str = ""  # why they are not measured

    def to_dict(self) -> dict[str, Any]:
        measured = self.sent is not None and self.received is not None
        return {"connections_seen": self.seen, "connections_peak": self.peak, "connections_open": self.open,
                "samples": self.samples, "bytes": (self.sent or 0) + (self.received or 0) if measured else None,
                "bytes_sent": self.sent, "bytes_received": self.received, "bytes_note": self.bytes_note,
                "note": self.note}


@dataclass(frozen=True, slots=True)
class IoFigures:
    """Reads and writes over a profile window, from the monitor's samples (deltas): system calls
    and the bytes through them (files and pipes; a socket's send/recv are not counted: the TCP
    bytes are NetworkFigures')."""

    read_ops: int | None
    write_ops: int | None
    read_bytes: int | None
    write_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"read_ops": self.read_ops, "write_ops": self.write_ops, "read_bytes": self.read_bytes,
                "write_bytes": self.write_bytes}


@dataclass(frozen=True, slots=True)
class Window:
    """What the monitor's samples say about a profile window."""

    cpu_average: float | None
    cpu_peak: float | None
    memory_average: float | None
    memory_peak: float | None
    io_operations: int | None
    io: IoFigures
    samples: int


@dataclass(frozen=True, slots=True)
class ProfileReport:
    """A profile of one process over a window. `timeline` holds each sample's stack (frame
    indexes into `frames`, outermost first) and `weights` its duration in seconds."""

    pid: int
    name: str
    tool: str
    duration: float  # seconds sampled
    requested: float  # seconds asked for
    interval: float
    samples: int
    ended_by: str  # "duration", "process ended", "stopped"
    frames: tuple[FrameId, ...]
    timeline: tuple[tuple[int, ...], ...]
    weights: tuple[float, ...]
    hotspots: tuple[Hotspot, ...]
    cpu_average: float | None
    cpu_peak: float | None
    memory_average: float | None
    memory_peak: float | None
    io_operations: int | None
    monitor_samples: int
    thread_backed: bool
    note: str = ""
    network: NetworkFigures | None = None  # None: a thread-backed tool (it shares llmunix's sockets)
    sampler: str = "llmunix"  # who took the stacks: "llmunix" (the tool thread) or "py-spy" (a Python child)
    io: IoFigures | None = None  # reads and writes apart
    allocations: MemoryLook | None = None  # --memory: live allocations made in the window, by site
    allocations_note: str = ""  # --memory: why there are none
    suggestions: tuple[Suggestion, ...] = ()

    def collapsed(self) -> list[str]:
        """flamegraph.pl's input: one `outer;middle;inner COUNT` line per distinct stack."""
        counts = Counter(self.timeline)
        return [f"{';'.join(frame_label(self.frames[i]) for i in stack)} {n}"
                for stack, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if stack]

    def speedscope(self) -> dict[str, Any]:
        """The profile in speedscope's file format (a "sampled" profile, weights in milliseconds)."""
        weights = [round(w * 1000, 3) for w in self.weights]
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": [{"name": n, "file": f, "line": line} for n, f, line in self.frames]},
            "profiles": [{
                "type": "sampled",
                "name": f"process {self.pid:03d} ({self.name})",
                "unit": "milliseconds",
                "startValue": 0,
                "endValue": round(sum(weights), 3),
                "samples": [list(s) for s in self.timeline],
                "weights": weights,
            }],
            "name": f"llmunix profile of process {self.pid:03d}",
            "activeProfileIndex": 0,
            "exporter": "llmunix",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "name": self.name, "tool": self.tool, "duration": round(self.duration, 3),
            "requested": self.requested, "interval": self.interval, "samples": self.samples,
            "ended_by": self.ended_by, "cpu_average": self.cpu_average, "cpu_peak": self.cpu_peak,
            "memory_average_mb": self.memory_average, "memory_peak_mb": self.memory_peak,
            "io_operations": self.io_operations, "monitor_samples": self.monitor_samples,
            "thread_backed": self.thread_backed, "note": self.note, "sampler": self.sampler,
            "network": None if self.network is None else self.network.to_dict(),
            "io": None if self.io is None else self.io.to_dict(),
            "hotspots": [{"function": h.function, "file": h.file, "line": h.line,
                          "inclusive": round(h.inclusive, 4), "self": round(h.self_share, 4)}
                         for h in self.hotspots],
            "allocations": None if self.allocations is None else {
                "size_diff": self.allocations.size_diff, "count_diff": self.allocations.count_diff,
                "frames": self.allocations.frames, "sites": [x.to_dict() for x in self.allocations.sites]},
            "allocations_note": self.allocations_note,
            "suggestions": [x.to_dict() for x in self.suggestions],
        }


def hotspots(frames: Sequence[FrameId], timeline: Sequence[tuple[int, ...]]) -> tuple[Hotspot, ...]:
    """Per function: the share of samples it is on the stack (inclusive) and innermost (self),
    highest self share first."""
    stacks = [s for s in timeline if s]
    if not stacks:
        return ()
    inclusive: Counter[int] = Counter()
    own: Counter[int] = Counter()
    for s in stacks:
        inclusive.update(set(s))
        own[s[-1]] += 1
    n = len(stacks)
    spots = [Hotspot(frames[i][0], frames[i][1], frames[i][2], inclusive[i] / n, own[i] / n) for i in inclusive]
    return tuple(sorted(spots, key=lambda h: (-h.self_share, -h.inclusive, h.function)))


def window_figures(samples: Sequence[ResourceSample], start: float, end: float) -> Window:
    """CPU average/peak, memory average/peak and the I/O deltas from monitor samples taken in
    [start, end] (Unix times); the last sample before the window is the I/O baseline."""
    inside = [s for s in samples if start <= s.time <= end]
    span = [*[s for s in samples if s.time < start][-1:], *inside]
    cpu = [s.cpu_percent for s in inside if s.cpu_percent is not None]
    mem = [s.memory_mb for s in inside if s.memory_mb is not None]

    def delta(name: str) -> int | None:
        values = [v for v in (getattr(s, name) for s in span) if v is not None]
        return max(0, values[-1] - values[0]) if len(values) >= 2 else None

    return Window(
        sum(cpu) / len(cpu) if cpu else None, max(cpu) if cpu else None,
        sum(mem) / len(mem) if mem else None, max(mem) if mem else None,
        delta("io_operations"),
        IoFigures(delta("read_ops"), delta("write_ops"), delta("read_bytes"), delta("write_bytes")),
        len(inside),
    )
