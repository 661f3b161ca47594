"""Resource measurement: one sampler thread for CPU, memory and I/O of running processes.

Thread-backed processes are measured by their worker thread's native id: CPU from the thread's
own times, I/O operations from /proc/self/task/TID/io. Their memory is not attributed (threads
share one heap); it shows as "-". Subprocess tools are measured over the whole child tree: CPU,
resident memory and I/O operations.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import psutil

from llmunix.models import Phase

if TYPE_CHECKING:
    from llmunix.kernel import Kernel
    from llmunix.process import Process


class Monitor:
    def __init__(self, kernel: Kernel, interval: float = 1.0) -> None:
        self.kernel = kernel
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmunix-monitor", daemon=True)
        self._last: dict[int, tuple[float, float]] = {}  # pid -> (wall, cpu seconds)
        self._self = psutil.Process()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # never let a measuring hiccup kill the monitor
                pass

    def sample(self) -> None:
        k = self.kernel
        with k._lock:
            running = [p for p in k._live.values() if p.phase is Phase.RUNNING and p.in_body]
        if not running:
            self._last.clear()
            return
        now = time.monotonic()
        thread_cpu = {}
        if any(p.subprocess is None for p in running):
            thread_cpu = {t.id: t.user_time + t.system_time for t in self._self.threads()}
        results: list[tuple[Process, float | None, float | None, int | None]] = []
        for p in running:
            if p.subprocess is not None:
                cpu, mem, io = _tree(p.subprocess.pid)
            else:
                cpu, mem, io = thread_cpu.get(p.native_id or -1), None, _thread_io(p.native_id)
            pct = None
            if cpu is not None:
                prev = self._last.get(p.pid)
                if prev is not None and now > prev[0]:
                    pct = max(0.0, 100.0 * (cpu - prev[1]) / (now - prev[0]))
                self._last[p.pid] = (now, cpu)
            results.append((p, pct, mem, io))
        live = {p.pid for p in running}
        for pid in list(self._last):
            if pid not in live:
                del self._last[pid]
        with k._lock:
            for p, pct, mem, io in results:
                if p.phase is Phase.DONE:
                    continue
                if pct is not None:
                    p.cpu_percent = pct
                p.memory_mb = mem
                p.io_operations = io


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


def _thread_io(native_id: int | None) -> int | None:
    if native_id is None:
        return None
    try:
        with open(f"/proc/{os.getpid()}/task/{native_id}/io") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        return int(fields["syscr"]) + int(fields["syscw"])
    except (OSError, KeyError, ValueError):
        return None
