"""Inspection: `debug_info` (a process's stack, locals, resources and child) and `profile` (a
sampling profiler). A component of the kernel (`kernel.inspector`); both return frozen records
(llmunix/observe/debug.py): no live frame or Process leaves here.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, Phase, as_pid, format_pid
from llmunix.observe import pyspy
from llmunix.observe.debug import (
    ChildInfo,
    DebugInfo,
    FrameId,
    NetworkFigures,
    ProfileReport,
    capture_stack,
    hotspots,
    sample_ids,
    window_figures,
)

psutil = lazy_module("psutil")  # imported when first used: start-up does not need it

if TYPE_CHECKING:
    from llmunix.durable import DurableState
    from llmunix.lifecycle import ProcessTable
    from llmunix.monitor import ResourceSample
    from llmunix.observe.debug_control import Debugger

MAX_LISTED = 20  # open files / connections listed for a child
NETWORK_EVERY = 0.5  # seconds between connection counts of a subprocess tool's child tree while profiling


class Inspector:
    """See the module docstring."""

    def __init__(self, table: ProcessTable, durable: DurableState, debugger: Debugger) -> None:
        self.table = table
        self.durable = durable
        self.debugger = debugger

    def samples(self, pid: int) -> list[ResourceSample]:
        """The monitor's recent measurements of a process, oldest first (empty if none yet)."""
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
            if proc is not None:
                return list(proc.samples or ())
        self.durable.info(pid)  # unknown PIDs raise; earlier sessions' have no samples
        return []

    def debug_info(self, pid: int) -> DebugInfo:
        """A look inside process `pid` now: its snapshot, its tool's stack with locals (innermost
        last; empty with a reason when it is not running tool code), the latest monitor sample,
        and for subprocess tools the child's command line, status, open files and connections."""
        pid = as_pid(pid)
        table = self.table
        with table.lock:
            proc = table.get(pid)
            if proc is not None:
                info = table.snapshot(proc)
                ident = proc.thread_ident if proc.in_body else None
                code = getattr(proc.tool.func, "__code__", None)
                child = proc.subprocess
                sample = proc.samples[-1] if proc.samples else None
        if proc is None:
            info = self.durable.info(pid)  # unknown PIDs raise
            reason = (f"the process has finished ({info.state})" if info.is_done
                      else "the process runs in another llmunix")
            return DebugInfo(info, (), reason, None, None, info.subprocess_pid is None)
        stack = capture_stack(ident, code) if ident is not None and code is not None else ()
        if info.is_done:
            stack, reason = (), f"the process has finished ({info.state})"
        elif ident is None:
            reason = f"the process has not started yet ({info.detail})"
        elif code is None:
            reason = "its tool is not a Python function"
        elif not stack and info.worker is not None:
            reason = f"its body runs on the Dask worker {info.worker}; debug sees this machine's threads only"
        elif not stack and getattr(child, "isolated", False):
            reason = (f"its body runs in an isolated worker (OS pid {child.pid}); its Python stack is the "
                      "child's, below (py-spy)")
        elif not stack:
            reason = "its thread is not in the tool's code right now"
        else:
            reason = ""
        with table.lock:  # it may have finished while we looked: then its stack is gone
            if proc.phase is Phase.DONE and stack:
                info = table.snapshot(proc)
                stack, reason = (), f"the process has finished ({info.state})"
            debugger = self.debugger.status_locked(proc) if self.debugger.attached(proc) else None
        return DebugInfo(info, stack, reason, sample, _child_info(child) if child is not None else None,
                         child is None, debugger)

    def profile(self, pid: int, duration: float, interval: float = 0.01, stop: threading.Event | None = None,
                on_tick: Callable[[float, int], Any] | None = None) -> ProfileReport:
        """Sample process `pid`'s tool stack every `interval` seconds in the calling thread, for
        `duration` seconds, until the process ends or until `stop` is set. `on_tick(elapsed,
        samples)` is called after each sample. A subprocess tool's thread only waits for its child:
        when the child is a Python program and py-spy is installed, py-spy samples the child
        instead (pyspy.py); its report has the child tree's CPU, memory, I/O and connections."""
        pid = as_pid(pid)
        if not duration > 0:
            raise LlmunixError("the profile duration must be more than 0")
        if not interval > 0:
            raise LlmunixError("the sampling interval must be more than 0")
        table = self.table
        with table.lock:
            proc = table.get(pid)
        if proc is None:
            info = self.durable.info(pid)  # unknown PIDs raise (outside the lock: info() takes it)
            raise LlmunixError(f"cannot profile process {format_pid(pid)}: it is not running here ({info.state})")
        with table.lock:
            if proc.phase is Phase.DONE:
                raise LlmunixError(f"cannot profile process {format_pid(pid)}: it has already finished ({proc.state})")
            code = getattr(proc.tool.func, "__code__", None)
            name, tool = proc.name, proc.tool.name
        stop = stop or threading.Event()
        index: dict[FrameId, int] = {}
        timeline: list[tuple[int, ...]] = []
        weights: list[float] = []
        wall0, t0 = time.time(), time.monotonic()
        deadline = t0 + duration
        last = t0
        ended_by = "duration"
        child: Any = None
        child_seen = False
        spy: pyspy.Recording | None = None
        spy_note = ""
        net = pyspy.NetworkWatch()
        net_at = float("-inf")
        try:
            while True:
                with table.lock:
                    phase, ident, running = proc.phase, proc.thread_ident, proc.in_body
                    child = proc.subprocess or child
                if phase is Phase.DONE:
                    ended_by = "process ended"
                    break
                now = time.monotonic()
                if child is not None and not child_seen:  # a subprocess tool: its child's Python, if any
                    child_seen = True
                    spy, spy_note = _start_py_spy(child.pid, interval)
                if child is not None and now - net_at >= NETWORK_EVERY:
                    net.sample(child.pid)
                    net_at = now
                if phase is Phase.RUNNING and running and code is not None and ident is not None:
                    frame = sys._current_frames().get(ident)
                    ids = sample_ids(frame, code)
                    del frame
                    if ids:
                        timeline.append(tuple(index.setdefault(f, len(index)) for f in ids))
                        weights.append(now - last if len(timeline) > 1 else interval)  # the first: one interval
                last = now
                if on_tick is not None:
                    on_tick(now - t0, len(timeline))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if stop.wait(min(interval, remaining)):
                    ended_by = "stopped"
                    break
        finally:
            stacks, failure = spy.finish() if spy is not None else ([], "")
        elapsed = time.monotonic() - t0
        figures = window_figures(self.samples(pid), wall0, time.time())
        sampler = "llmunix"
        if stacks:  # the Python child's own stacks replace the tool thread's (which only waits for it)
            sampler, index, timeline, weights = "py-spy", {}, [], []
            for ids, count in stacks:
                entry = tuple(index.setdefault(f, len(index)) for f in ids)
                timeline.extend([entry] * count)
                weights.extend([interval] * count)
        frames = tuple(index)
        thread_backed = not child_seen
        kind = "isolated process" if getattr(child, "isolated", False) else "subprocess tool"
        if stacks:
            assert spy is not None
            note = (f"{kind}: the stacks are its Python child's (pid {spy.target_pid}), sampled by "
                    "py-spy; CPU, memory and I/O are the child tree's, from the monitor")
        elif child_seen:
            why = failure or spy_note
            note = (f"{kind}: {why}; the stacks are the tool thread's, waiting for its child; CPU, "
                    "memory and I/O are the child tree's, from the monitor")
        elif code is None:
            note = "the tool is not a Python function: no stacks"
        elif not timeline:
            note = "no samples: the process was not running tool code during the window"
        else:
            note = ""
        if figures[5] == 0:
            note = "; ".join(x for x in (note, "no monitor samples in the window") if x)
        network = None
        if child_seen:
            network = NetworkFigures(len(net.seen), net.peak, net.last, net.samples,
                                     "some connections could not be read (access denied)" if net.denied else "")
        return ProfileReport(
            pid=pid, name=name, tool=tool, duration=elapsed, requested=float(duration), interval=float(interval),
            samples=len(timeline), ended_by=ended_by, frames=frames, timeline=tuple(timeline),
            weights=tuple(weights), hotspots=hotspots(frames, timeline),
            cpu_average=figures[0], cpu_peak=figures[1], memory_average=figures[2], memory_peak=figures[3],
            io_operations=figures[4], monitor_samples=figures[5], thread_backed=thread_backed, note=note,
            network=network, sampler=sampler,
        )


def _start_py_spy(child_pid: int, interval: float) -> tuple[pyspy.Recording | None, str]:
    """Start sampling a subprocess tool's Python child with py-spy, or say why not."""
    target = pyspy.python_target(child_pid)
    if target is None:
        return None, "its child is not a Python program, so its code is not sampled"
    exe = pyspy.py_spy_path()
    if exe is None:
        return None, "py-spy not installed (`pip install py-spy` samples its Python child)"
    try:
        return pyspy.Recording(target, exe, interval), ""
    except OSError as exc:
        return None, f"py-spy failed: {exc.strerror or exc}"


def _child_info(child: Any) -> ChildInfo:
    """psutil's view of a subprocess (best effort: what cannot be read is left empty)."""
    notes: list[str] = []
    isolated = getattr(child, "isolated", False)  # a forked worker: its command line is the pool process's
    try:
        p = psutil.Process(child.pid)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        args = child.args if isinstance(child.args, str) else " ".join(map(str, child.args))
        code = child.poll()
        return ChildInfo(child.pid, args, "exited" if code is None else f"exited ({code})")

    def read(what: str, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except psutil.AccessDenied:
            notes.append(f"{what}: access denied")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            notes.append(f"{what}: gone")
        except Exception as exc:  # noqa: BLE001 - best effort
            notes.append(f"{what}: {type(exc).__name__}")
        return default

    with p.oneshot():
        cmdline = read("command", p.cmdline, [])
        status = read("status", p.status, "unknown")
    procs = [p, *read("children", lambda: p.children(recursive=True), [])]
    files: list[str] = []
    conns: list[str] = []
    for q in procs:
        files.extend(f.path for f in read("open files", q.open_files, []))
        for c in read("connections", q.net_connections, []):
            local = f"{c.laddr.ip}:{c.laddr.port}" if c.laddr else "-"
            remote = f"{c.raddr.ip}:{c.raddr.port}" if c.raddr else "-"
            conns.append(f"{local} -> {remote} {c.status}")
    command = " ".join(cmdline) if cmdline and not isolated else (
        child.args if isinstance(child.args, str) else " ".join(map(str, child.args)))
    kids = len(procs) - 1
    if kids:
        notes.insert(0, f"{kids} descendant process{'es' if kids > 1 else ''}")
    py = pyspy.dump(child.pid)
    return ChildInfo(child.pid, command, str(status), tuple(dict.fromkeys(files))[:MAX_LISTED],
                     tuple(conns[:MAX_LISTED]), "; ".join(dict.fromkeys(notes)), py.pid, py.frames, py.note)
