"""The event bus: every change in the engine is published here, and delivered in order.

Publishing is a non-blocking put on a queue, so a worker never waits for a subscriber. One
dispatcher thread delivers events to subscribers in sequence order; a subscriber that raises is
logged and keeps its subscription. Events are published while the kernel lock is held, so their
sequence numbers follow the order of the changes they describe.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from llmunix.models import EMPTY, Event

log = logging.getLogger("llmunix.bus")

Callback = Callable[[Event], None]


class Subscription:
    __slots__ = ("pattern", "callback", "pid", "_match", "_bus")

    def __init__(self, bus: EventBus, pattern: str, callback: Callback, pid: int | None) -> None:
        self._bus = bus
        self.pattern = pattern
        self.callback = callback
        self.pid = pid
        # Patterns are globs on the event type ("process.*"); "|" separates alternatives.
        regex = "|".join(fnmatch.translate(p.strip()) for p in pattern.split("|"))
        self._match = re.compile(regex).match

    def matches(self, event: Event) -> bool:
        return (self.pid is None or event.pid == self.pid) and self._match(event.type) is not None

    def cancel(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event | threading.Event | None] = queue.SimpleQueue()
        self._subs: tuple[Subscription, ...] = ()
        self._subs_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._thread = threading.Thread(target=self._dispatch, name="llmunix-events", daemon=True)
        self._closed = False
        self._thread.start()

    def publish(self, type: str, pid: int | None = None, data: Mapping[str, Any] = EMPTY) -> Event:
        event = Event(next(self._seq), time.time(), type, pid, data)
        if not self._closed:
            self._queue.put(event)
        return event

    def subscribe(self, pattern: str, callback: Callback, *, pid: int | None = None) -> Subscription:
        sub = Subscription(self, pattern, callback, pid)
        with self._subs_lock:
            self._subs = (*self._subs, sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._subs_lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until every event published so far has been delivered."""
        if self._closed or threading.current_thread() is self._thread:
            return True
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def mark(self, marker: threading.Event) -> None:
        """Set `marker` once every event published so far has been delivered; do not wait.
        A subscriber that checks the marker can tell the events before it from those after."""
        if self._closed:
            marker.set()
        else:
            self._queue.put(marker)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            for sub in self._subs:
                if sub.matches(item):
                    try:
                        sub.callback(item)
                    except Exception:  # a subscriber's bug must not stop delivery to others
                        log.exception("event subscriber %r failed on %s", sub.pattern, item.type)
