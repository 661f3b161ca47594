"""Where process bodies run. The thread backend is the embedded default.

Slots, not threads, bound concurrency: the scheduler decides what may run; the executor only
provides threads. A paused or preempted process keeps its thread while giving its slot back, so
the pool grows a worker to use the freed slot, up to `max_threads`. A backend (backends/) may take
a body elsewhere, a Dask cluster say; its process still has one of these threads, as its proxy.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable

from llmunix.models import ProcessKilled
from llmunix.process import Process


class ThreadExecutor:
    """A growing pool of worker threads that run process bodies handed to `start`."""

    def __init__(self, run: Callable[[Process], None], max_threads: int) -> None:
        self._run = run
        self.max_threads = max_threads
        self._queue: queue.SimpleQueue[Process | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers blocked in get()
        self._queued = 0  # processes handed over but not yet taken
        self._allow = 0  # starts allowed past max_threads (over_cap)
        self.over_cap_starts = 0  # how often the soft cap was exceeded (health reports it)

    def available(self) -> int:
        """How many more bodies could start now without waiting for a thread. Read without the
        lock (the caller holds the process table's, under which every `start` happens): a
        worker becoming idle meanwhile only makes the answer one too low for a moment."""
        return max(0, self._idle - self._queued) + (self.max_threads - len(self._threads))

    def over_cap(self) -> None:
        """The scheduler starts a body although `max_threads` are in use (it would otherwise
        deadlock: see `Kernel._dispatch_locked`); the next `start` grows the pool past the cap."""
        with self._lock:
            self._allow += 1
            self.over_cap_starts += 1

    def start(self, proc: Process) -> None:
        with self._lock:
            self._queued += 1
            grow = self._queued > self._idle and (len(self._threads) < self.max_threads or self._allow > 0)
            if self._allow > 0:
                self._allow -= 1
            if grow:
                t = threading.Thread(target=self._worker, name=f"llmunix-worker-{len(self._threads) + 1}",
                                     daemon=True)
                self._threads.append(t)
        if grow:
            t.start()
        self._queue.put(proc)

    @property
    def thread_count(self) -> int:
        return len(self._threads)

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def _worker(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            if item is None:
                with self._lock:
                    self._queued += 1  # the None was never counted by start()
                    self._threads.remove(threading.current_thread())
                return
            try:
                self._run(item)
            except ProcessKilled:
                # A kill injected into this thread just as the body ended; the kernel has
                # already finished the process, so there is nothing left to stop.
                pass
            with self._lock:
                if len(self._threads) > self.max_threads:  # grown past the cap: shrink back
                    self._threads.remove(threading.current_thread())
                    return


class _Drained(BaseException):  # noqa: N818 - stands in for a pending exception so it can be consumed
    pass


def drain_async_exception() -> None:
    """Drop an asynchronous exception pending for the calling thread (an injected kill that has
    not fired), if there is one, and leave the interpreter clean.

    Not `PyThreadState_SetAsyncExc(id, NULL)`: on CPython 3.11 that raises the interpreter-wide
    "async exception pending" flag with nothing to deliver, and no thread ever lowers it again;
    from then on every thread handles "pending" at each check, and a thread with a trace
    function (the debugger's step, pdb, coverage) loops forever at its next call, holding the
    GIL: the whole llmunix froze at a debugger step after any kill of a spinning tool. Instead
    the pending exception is replaced by a private one, which this thread consumes at once:
    consuming lowers the flag."""
    try:
        if inject_exception(threading.get_ident(), _Drained):  # fires as the call returns, at the latest
            for _ in range(1_000_000):  # at the first backward jump; the bound is only a guard
                pass
    except _Drained:
        pass


def inject_exception(thread_ident: int, exc_type: type[BaseException] | None) -> bool:
    """Raise `exc_type` asynchronously in another thread (None clears a pending one).

    The exception fires at the thread's next bytecode; a thread blocked in C code sees it only
    when the call returns. Returns False if no such thread exists. To clear a pending one, the
    thread itself calls `drain_async_exception` (never pass None: see there).
    """
    obj = ctypes.py_object(exc_type) if exc_type is not None else None
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), obj)
    if n > 1:  # pragma: no cover - cannot happen for a unique ident; undo as CPython advises
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), None)
        return False
    return n == 1
