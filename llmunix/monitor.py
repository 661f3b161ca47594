"""Resource measurement: one sampler thread for CPU, memory and I/O of running processes.

Thread-backed processes are measured by their worker thread's native id: CPU time from
/proc/self/task/TID/schedstat, I/O operations (read and write system calls) and bytes from
/proc/self/task/TID/io. Their memory is not attributed (threads share one heap); it shows as "-".
Subprocess tools are measured over the whole child tree: CPU, resident memory (RSS), I/O
operations and bytes. An isolated process (isolation.py) is measured over its worker's tree too;
its memory is what it holds on its own (the worker's USS, what ending it would free: the pages it
shares with the pool process it was forked from are not its own), with its RSS alongside.
A workflow or agent (a thread that waits for its children) shows the memory of its live
descendants, summed.

Each process keeps its last `HISTORY` samples (for trend arrows, sparklines and ETA), and the
monitor keeps the same for the whole system. The interval is settable while it runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, Phase

psutil = lazy_module("psutil")  # imported on first use (a one-shot `-c ps` starts faster)

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process

log = logging.getLogger("llmunix.monitor")


HISTORY = 60  # samples kept per process and for the system
STARTUP_DELAY = 0.25  # seconds before the first measurement starts


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """One measurement of one process (None: not measured for this kind of process)."""

    time: float  # time.time()
    cpu_percent: float | None
    memory_mb: float | None
    io_operations: int | None
    rss_mb: float | None = None  # resident memory of the OS process tree (memory_mb is its USS when isolated)
    read_bytes: int | None = None  # bytes read and written through system calls (files, pipes, sockets)
    write_bytes: int | None = None
    cpu_seconds: float | None = None  # CPU time of the OS process tree so far (--cpu-time limits it)


@dataclass(frozen=True, slots=True)
class SystemSample:
    """The machine as a whole, and llmunix's own share of it."""

    time: float
    cpu_percent: float  # all cores, 0-100
    cpu_count: int
    memory_total_mb: float
    memory_available_mb: float
    load: tuple[float, float, float]  # 1, 5, 15 minutes
    llmunix_cpu_percent: float  # the llmunix process itself (its threads, not child processes)
    llmunix_memory_mb: float


class Monitor:
    """The sampler thread. After each round it calls its listeners (the watchdog, memory
    pressure): `add_listener(fn)`. A failing round is logged (once per distinct error) and the
    loop goes on; `rounds` and `failures` count them (`health` and the benchmark read them)."""

    MIN_INTERVAL = 0.01
    MAX_INTERVAL = 3600.0

    def __init__(self, table: ProcessTable, interval: float = 1.0) -> None:
        self.table = table
        self.interval = check_interval(interval)
        self.rounds = 0  # sampling rounds completed
        self.failures = 0  # rounds that raised
        self.last_error = ""
        self._listeners: list[Callable[[], None]] = []
        self.system: deque[SystemSample] = deque(maxlen=HISTORY)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmunix-monitor", daemon=True)
        self._last: dict[int, tuple[float, float]] = {}  # pid -> (wall, cpu seconds)
        self._summed: set[int] = set()  # parents shown their descendants' memory in the last round
        self._self: Any = None  # this llmunix, as psutil sees it (made on the monitor's thread)

    def start(self) -> None:
        self._thread.start()

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call `fn()` on the monitor thread after each round (it must not block for long)."""
        self._listeners.append(fn)

    def set_interval(self, seconds: float) -> None:
        self.interval = check_interval(seconds)
        self._wake.set()  # start the new pace now, not after the old interval

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        # A one-shot command (`llmunix -c ps`) is often over in a fraction of a second: measuring
        # starts after a short wait, so it never pays for psutil.
        if self._stop.wait(min(self.interval, STARTUP_DELAY)):
            return
        self._self = psutil.Process()
        psutil.cpu_percent(None)  # the first call only starts the measurement
        self._self.cpu_percent(None)
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sample()
                self.sample_system()
                for fn in self._listeners:  # the watchdog, memory pressure
                    fn()
                self.rounds += 1
            except Exception as exc:  # a measuring hiccup must not kill the monitor, nor pass unseen
                self.failures += 1
                text = f"{type(exc).__name__}: {exc}"
                if text != self.last_error:
                    log.warning("monitor round failed: %s", text, exc_info=True)
                self.last_error = text

    def sample_system(self) -> None:
        vm = psutil.virtual_memory()
        try:
            load = os.getloadavg()
        except OSError:
            load = (0.0, 0.0, 0.0)
        self.system.append(SystemSample(
            time.time(), psutil.cpu_percent(None), psutil.cpu_count() or 1, vm.total / 1e6,
            vm.available / 1e6, load, self._self.cpu_percent(None), self._self.memory_info().rss / 1e6))

    def sample(self) -> None:
        table = self.table
        with table.lock:
            running = [p for p in table.scheduler.running if p.in_body]
        if not running:
            self._last.clear()
            return
        now = time.monotonic()
        wall = time.time()
        samples: dict[int, tuple[Process, ResourceSample]] = {}
        for p in running:
            child = p.subprocess
            if child is not None:
                f = _tree(child.pid, own=getattr(child, "isolated", False))
            else:
                io, rd, wr = _thread_io(p.native_id)
                f = _Figures(_thread_cpu(p.native_id), None, None, io, rd, wr)
            pct = None
            if f.cpu is not None:
                prev = self._last.get(p.pid)
                if prev is not None and now > prev[0]:
                    pct = max(0.0, 100.0 * (f.cpu - prev[1]) / (now - prev[0]))
                    if child is None:
                        pct = min(pct, 100.0)  # one thread is at most one core (sampling jitter aside)
                self._last[p.pid] = (now, f.cpu)
            samples[p.pid] = (p, ResourceSample(wall, pct, f.memory, f.io, f.rss, f.read, f.write,
                                                f.cpu if child is not None else None))
        live = {p.pid for p in running}
        for pid in list(self._last):
            if pid not in live:
                del self._last[pid]
        with table.lock:
            self._add_descendants(samples, wall)
            for p, sample in samples.values():
                table.record_sample(p, sample.cpu_percent, sample.memory_mb, sample.io_operations, sample)

    def _add_descendants(self, samples: dict[int, tuple[Process, ResourceSample]], wall: float) -> None:
        """A parent (a workflow, an agent: a thread waiting for its children) shows the memory of
        its live descendants, summed into its own figure. Lock held."""
        table = self.table
        sums: dict[int, float] = {}
        for p, sample in samples.values():
            if sample.memory_mb is None:
                continue
            up = p.parent
            while up is not None:  # (a parent's own memory is added once, at its level)
                sums[up] = sums.get(up, 0.0) + sample.memory_mb
                parent = table.get(up)
                up = parent.parent if parent is not None else None
        for pid in self._summed - sums.keys():  # its children have ended: nothing to show now
            proc = table.get(pid)
            if proc is not None and pid not in samples and proc.memory_mb is not None:
                table.record_sample(proc, None, None, None, ResourceSample(wall, None, None, None))
        self._summed = set(sums)
        for pid, total in sums.items():
            proc = table.get(pid)
            if proc is None or proc.phase is Phase.DONE:
                continue
            own = samples.get(pid)
            if own is None:
                samples[pid] = (proc, ResourceSample(wall, None, total, None))
            else:
                s = own[1]
                samples[pid] = (proc, ResourceSample(s.time, s.cpu_percent, (s.memory_mb or 0.0) + total,
                                                     s.io_operations, s.rss_mb, s.read_bytes, s.write_bytes,
                                                     s.cpu_seconds))


def check_interval(seconds: float) -> float:
    """A sampling interval the monitor can keep: a finite number of seconds in range."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise LlmunixError(f"bad monitor interval {seconds!r}; give seconds, e.g. 1 or 0.5") from None
    if not Monitor.MIN_INTERVAL <= value <= Monitor.MAX_INTERVAL:
        raise LlmunixError(f"the monitor interval must be between {Monitor.MIN_INTERVAL:g} and "
                           f"{Monitor.MAX_INTERVAL:g} seconds, not {seconds!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Figures:
    cpu: float | None  # CPU seconds so far
    memory: float | None  # MB: RSS, or for an isolated worker its USS (plus its children's RSS)
    rss: float | None
    io: int | None  # read and write system calls
    read: int | None  # bytes through them
    write: int | None


def _tree(pid: int, own: bool = False) -> _Figures:
    """A process and its descendants. `own`: the root was forked from a shared parent (an
    isolated worker): its memory is its USS, the pages no other process shares."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return _Figures(None, None, None, None, None, None)
    cpu = 0.0
    rss = 0
    memory = 0
    io = rd = wr = 0
    for proc in procs:
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                if own and proc is root:
                    m = proc.memory_full_info()
                    rss += m.rss
                    memory += m.uss
                else:
                    r = proc.memory_info().rss
                    rss += r
                    memory += r
                try:
                    c = proc.io_counters()
                    io += c.read_count + c.write_count
                    rd += getattr(c, "read_chars", c.read_bytes)
                    wr += getattr(c, "write_chars", c.write_bytes)
                except (psutil.Error, AttributeError):
                    pass
        except psutil.Error:
            continue
    return _Figures(cpu, memory / 1e6, rss / 1e6, io, rd, wr)


# Per-thread figures come straight from /proc with os-level reads: with 1,000 running processes
# this is a third of the cost of psutil's all-threads listing plus text-mode file reads.
_TASK = f"/proc/{os.getpid()}/task/"


def _read_task(native_id: int, name: str, size: int) -> bytes | None:
    try:
        fd = os.open(f"{_TASK}{native_id}/{name}", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _thread_cpu(native_id: int | None) -> float | None:
    """CPU seconds of one thread (nanosecond resolution, from schedstat)."""
    data = _read_task(native_id, "schedstat", 128) if native_id is not None else None
    if not data:
        return None
    try:
        return int(data.split(None, 1)[0]) / 1e9
    except ValueError:
        return None


def _thread_io(native_id: int | None) -> tuple[int | None, int | None, int | None]:
    """Read and write system calls of one thread, and the bytes read and written through them."""
    data = _read_task(native_id, "io", 512) if native_id is not None else None
    if not data:
        return None, None, None
    try:
        return (_field(data, b"syscr:") + _field(data, b"syscw:"), _field(data, b"rchar:"),
                _field(data, b"wchar:"))
    except ValueError:
        return None, None, None


def _field(data: bytes, name: bytes) -> int:
    at = data.index(name) + len(name)
    return int(data[at:data.index(b"\n", at)])
