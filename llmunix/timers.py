"""One timer thread for the whole engine.

Kill escalation, running-time limits, retry and restart backoffs, token-bucket refills and
degraded-mode re-checks all need "call this later". A `threading.Timer` each is a thread each,
alive until it fires: 500 processes with `--timeout 1h` held 500 threads for an hour (issue 19).
Here every deadline is an entry in one heap served by one daemon thread, and a cancelled entry
costs nothing but its slot in the heap until it surfaces.

Callbacks run on the timer thread: they must be short and must not block (they take the
process table's lock briefly and return). An exception in one is logged; the thread goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("llmunix.timers")


class TimerHandle:
    """A scheduled call; `cancel()` makes sure it will not run (if it has not started)."""

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.fn = self.args = None  # type: ignore[assignment]  # drop references at once


class Timers:
    """`call_later(seconds, fn, *args)` from any thread; one thread runs them when due."""

    def __init__(self, name: str = "llmunix-timers") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        when = time.monotonic() + max(0.0, seconds)
        handle = TimerHandle(when, fn, args)
        with self._cond:
            if self._closed:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, (when, next(self._seq), handle))
            if self._heap[0][2] is handle:  # the new soonest: wake the thread to wait less
                self._cond.notify()
        return handle

    def __len__(self) -> int:
        """Entries waiting (cancelled ones included until they surface)."""
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        """Stop the thread; pending calls are dropped."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        handle = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(delay)
            fn, args = handle.fn, handle.args
            if handle.cancelled or fn is None:
                continue
            handle.cancelled = True  # it has run: a late cancel() is harmless
            try:
                fn(*args)
            except Exception:  # a callback's bug must not stop every other deadline
                log.exception("timer callback %r failed", fn)
