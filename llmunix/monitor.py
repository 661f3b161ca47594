"""Resource measurement: one sampler thread for CPU, memory and I/O of running processes.

Thread-backed processes are measured by their worker thread's native id: CPU time from
/proc/self/task/TID/schedstat, I/O operations (read and write system calls) from
/proc/self/task/TID/io. Their memory is not attributed (threads share one heap); it shows as "-".
Subprocess tools are measured over the whole child tree: CPU, resident memory and I/O operations.

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
from typing import TYPE_CHECKING

import psutil

from llmunix.models import LlmunixError

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process

log = logging.getLogger("llmunix.monitor")


HISTORY = 60  # samples kept per process and for the system


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """One measurement of one process (None: not measured for this kind of process)."""

    time: float  # time.time()
    cpu_percent: float | None
    memory_mb: float | None
    io_operations: int | None


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
        self._self = psutil.Process()

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
        results: list[tuple[Process, float | None, float | None, int | None]] = []
        for p in running:
            if p.subprocess is not None:
                cpu, mem, io = _tree(p.subprocess.pid)
            else:
                cpu, mem, io = _thread_cpu(p.native_id), None, _thread_io(p.native_id)
            pct = None
            if cpu is not None:
                prev = self._last.get(p.pid)
                if prev is not None and now > prev[0]:
                    pct = max(0.0, 100.0 * (cpu - prev[1]) / (now - prev[0]))
                    if p.subprocess is None:
                        pct = min(pct, 100.0)  # one thread is at most one core (sampling jitter aside)
                self._last[p.pid] = (now, cpu)
            results.append((p, pct, mem, io))
        live = {p.pid for p in running}
        for pid in list(self._last):
            if pid not in live:
                del self._last[pid]
        wall = time.time()
        with table.lock:
            for p, pct, mem, io in results:
                table.record_sample(p, pct, mem, io, ResourceSample(wall, pct, mem, io))


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


def _tree(pid: int) -> tuple[float | None, float | None, int | None]:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None, None, None
    cpu = 0.0
    rss = 0
    io = 0
    for proc in procs:
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                rss += proc.memory_info().rss
                try:
                    c = proc.io_counters()
                    io += c.read_count + c.write_count
                except (psutil.Error, AttributeError):
                    pass
        except psutil.Error:
            continue
    return cpu, rss / 1e6, io


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


def _thread_io(native_id: int | None) -> int | None:
    """Read and write system calls of one thread."""
    data = _read_task(native_id, "io", 512) if native_id is not None else None
    if not data:
        return None
    try:
        r = data.index(b"syscr:")
        w = data.index(b"syscw:")
        return int(data[r + 6:data.index(b"\n", r)]) + int(data[w + 6:data.index(b"\n", w)])
    except ValueError:
        return None
