"""The event bus: every change in the engine is published here, and delivered in order.

`publish` hands the event at once, in sequence order, to the subscriptions whose pattern
matches (one small lock keeps sequence numbers and deliveries in the same order when publishers
race; the engine publishes under the process table's lock anyway, so sequence numbers follow the
order of the changes they describe). There is no dispatcher thread: a thread hop per event cost
more than the delivery itself (issue 14's throughput budget).

A subscription is delivered one of two ways:

* **inline** (`queue=None`, the bus's default): `publish` calls the callback itself, in the
  publisher's thread, usually with the process table's lock held. Lossless and unbounded, and
  exactly in step with `mark()`/`flush()` — but the callback must be quick and must never block or
  call back into the kernel: this is for the engine's own consumers that only queue the event
  (the store's writer queue, the followers of `events --follow` and `log --follow`).
* **queued** (`queue=N`, what `Kernel.subscribe` gives by default): `publish` appends to the
  subscription's own bounded queue and a delivery thread of its own calls the callback. A slow or
  blocked callback only fills its own queue. When the queue is full the drop policy decides —
  `"oldest"` (default: keep the newest events) or `"newest"` (refuse the incoming one) — and every
  dropped event is counted (`EventBus.stats()`, the `bus` command).

Queued subscriptions can also *coalesce* high-rate events (`coalesce="process.progress"`: while an
event of that type and PID waits in the queue, a newer one takes its place instead of queueing
behind it, so a lagging subscriber gets the latest progress at once and the queue holds one such
event per process) and take events in *batches* (`batch=True`: the callback gets a list of every
event waiting, up to `batch_size`). A subscriber that raises is logged and keeps its subscription.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llmunix.models import EMPTY, Event, LlmunixError, fast_constructor, format_pid

log = logging.getLogger("llmunix.bus")

_new_event = fast_constructor(Event)  # three per process: half the cost of Event(...)

Callback = Callable[[Event], None]
EventFilter = Callable[[Event], bool]
DropPolicy = Literal["oldest", "newest"]

DEFAULT_QUEUE = 10_000  # events a queued subscription holds before it drops
DEFAULT_BATCH = 500


def glob_matcher(pattern: str) -> Callable[[str], Any]:
    """The bus's pattern language: a glob ("process.*"); "|" separates alternatives."""
    regex = "|".join(fnmatch.translate(p.strip()) for p in pattern.split("|"))
    return re.compile(regex).match


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """One subscription as `bus` shows it."""

    id: int
    pattern: str
    pid: str | None
    mode: str  # "inline" or "queued"
    callback: str
    maxsize: int | None
    queued: int
    delivered: int
    dropped: int
    coalesced: int
    errors: int
    policy: str | None
    lag: float | None  # seconds the oldest queued event has waited

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pattern": self.pattern, "pid": self.pid, "mode": self.mode,
                "callback": self.callback, "maxsize": self.maxsize, "queued": self.queued,
                "delivered": self.delivered, "dropped": self.dropped, "coalesced": self.coalesced,
                "errors": self.errors, "policy": self.policy,
                "lag": None if self.lag is None else round(self.lag, 3)}


class _Slot:
    """A coalesced event's place in a subscription's queue; the event itself is the newest of its
    (type, PID), kept in `Subscription._latest` until the slot's turn comes."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[str, int | None]) -> None:
        self.key = key


class Subscription:
    """One subscriber: what it wants (type glob, PID or PID glob, an optional filter) and how it
    is delivered (inline, or through its own bounded queue and thread)."""

    _ids = itertools.count(1)

    def __init__(self, bus: EventBus, pattern: str, callback: Callable[..., None], pid: int | str | None, *,
                 filter: EventFilter | None = None, queue: int | None = None, policy: DropPolicy = "oldest",
                 coalesce: str | None = None, batch: bool = False, batch_size: int = DEFAULT_BATCH,
                 prelude: Callable[[], tuple[list[Event], int]] | None = None) -> None:
        if queue is not None and queue < 1:
            raise LlmunixError("a subscription's queue must hold at least 1 event")
        if policy not in ("oldest", "newest"):
            raise LlmunixError(f"unknown drop policy {policy!r}; use 'oldest' or 'newest'")
        if queue is None and (batch or coalesce or prelude):
            raise LlmunixError("batching, coalescing and replay need a queued subscription (queue=N)")
        self.id = next(self._ids)
        self._bus = bus
        self.pattern = pattern
        self.callback = callback
        self.pid = pid
        self.filter = filter
        self._match = glob_matcher(pattern)
        # PIDs match as ints, or as a glob on the zero-padded PID ("00*").
        self._pid_match = None if pid is None or isinstance(pid, int) else glob_matcher(str(pid))
        self.maxsize = queue
        self.policy = policy
        self.batch = batch
        self.batch_size = max(1, batch_size)
        self._coalesce = glob_matcher(coalesce) if coalesce else None
        self.delivered = 0
        self.dropped = 0
        self.coalesced = 0
        self.errors = 0
        self._queue: deque[Any] = deque()
        self._events = 0  # events (not markers) in _queue
        # Coalescing: a slot in the queue per (type, PID), holding the newest such event.
        self._latest: dict[tuple[str, int | None], Event] = {}
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread: threading.Thread | None = None
        self._prelude = prelude
        if queue is not None:
            self._thread = threading.Thread(target=self._deliver_loop, name=f"llmunix-sub-{self.id}", daemon=True)

    def matches(self, event: Event) -> bool:
        if self.pid is not None:
            if self._pid_match is None:
                if event.pid != self.pid:
                    return False
            elif event.pid is None or self._pid_match(format_pid(event.pid)) is None:
                return False
        return self._match(event.type) is not None

    def cancel(self) -> None:
        self._bus.unsubscribe(self)

    @property
    def queued_mode(self) -> bool:
        return self.maxsize is not None

    # ------------------------------------------------------------------ publisher side

    def _offer(self, event: Event) -> None:
        """The publisher (under the bus order lock): hand over one matching event."""
        if self.maxsize is None:
            if self.filter is not None and not self.filter(event):
                return
            self.callback(event)
            self.delivered += 1
            return
        with self._cond:
            if self._closed:
                return
            key = None
            if self._coalesce is not None and self._coalesce(event.type):
                key = (event.type, event.pid)
                if key in self._latest:  # its slot is still queued: the newest replaces the older
                    self._latest[key] = event
                    self.coalesced += 1
                    return
            if self._events >= self.maxsize:
                self.dropped += 1
                if self.policy == "newest":
                    return
                self._drop_oldest()
            if key is not None:
                self._latest[key] = event
                self._queue.append(_Slot(key))
            else:
                self._queue.append(event)
            self._events += 1
            self._cond.notify()

    def _drop_oldest(self) -> None:
        for i, item in enumerate(self._queue):
            if not isinstance(item, threading.Event):
                del self._queue[i]
                self._events -= 1
                if isinstance(item, _Slot):
                    del self._latest[item.key]
                return

    def _mark(self, marker: threading.Event) -> None:
        """Set `marker` once everything queued before it has been delivered (markers are never dropped)."""
        if self.maxsize is None:
            marker.set()
            return
        with self._cond:
            if self._closed:
                marker.set()
                return
            self._queue.append(marker)
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            for item in self._queue:
                if isinstance(item, threading.Event):
                    item.set()
            self._queue.clear()
            self._events = 0
            self._latest.clear()
            self._cond.notify()

    # ------------------------------------------------------------------ delivery thread

    def _deliver_loop(self) -> None:
        skip_upto = 0  # after a replay: live events up to this seq were in it
        if self._prelude is not None:
            try:
                replayed, skip_upto = self._prelude()
            except Exception:
                log.exception("replay for subscriber %r failed", self.pattern)
                replayed = []
            self._call([e for e in replayed if self.filter is None or self.filter(e)])
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                take: list[Event] = []
                markers: list[threading.Event] = []
                # Everything waiting (up to a batch) in one go: one lock round and one wake-up
                # per burst, not per event.
                while self._queue and len(take) < self.batch_size:
                    item = self._queue.popleft()
                    if isinstance(item, threading.Event):
                        markers.append(item)
                        if take:
                            break  # deliver what came before the marker first
                        continue
                    self._events -= 1
                    if isinstance(item, _Slot):
                        item = self._latest.pop(item.key)
                    if item.seq <= skip_upto:
                        continue
                    take.append(item)
            if take and self.filter is not None:
                take = [e for e in take if self._filtered(e)]
            self._call(take)
            for m in markers:
                m.set()

    def _filtered(self, event: Event) -> bool:
        try:
            return bool(self.filter(event))  # type: ignore[misc]
        except Exception:
            self.errors += 1
            log.exception("event filter of subscriber %r failed on %s", self.pattern, event.type)
            return False

    def _call(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            if self.batch:
                self.callback(events)
            else:
                for e in events:
                    self.callback(e)
            self.delivered += len(events)
        except Exception:
            self.errors += 1
            log.exception("event subscriber %r failed", self.pattern)

    def stats(self) -> SubscriptionStats:
        with self._cond:
            first = next((e for e in self._queue if not isinstance(e, threading.Event)), None)
            oldest = None if first is None else (self._latest[first.key] if isinstance(first, _Slot) else first).time
            queued = self._events
        name = getattr(self.callback, "__qualname__", None) or type(self.callback).__name__
        return SubscriptionStats(
            self.id, self.pattern, None if self.pid is None else str(self.pid),
            "queued" if self.maxsize is not None else "inline", name, self.maxsize, queued, self.delivered,
            self.dropped, self.coalesced, self.errors, self.policy if self.maxsize is not None else None,
            None if oldest is None else max(0.0, time.time() - oldest))


class EventBus:
    def __init__(self) -> None:
        self._subs: tuple[Subscription, ...] = ()
        self._subs_lock = threading.Lock()
        self._order = threading.Lock()  # a sequence number and its deliveries, together
        self._seq = itertools.count(1)
        self.published = 0
        self.last_seq = 0  # the sequence number of the newest event published
        self._closed = False

    def publish(self, type: str, pid: int | None = None, data: Mapping[str, Any] = EMPTY) -> Event:
        with self._order:
            event = _new_event(next(self._seq), time.time(), type, pid, data)
            self.last_seq = event.seq
            if self._closed:
                return event
            self.published += 1
            for sub in self._subs:
                if sub.matches(event):
                    try:
                        sub._offer(event)
                    except Exception:  # a subscriber's bug must not stop delivery to others
                        sub.errors += 1
                        log.exception("event subscriber %r failed on %s", sub.pattern, event.type)
        return event

    def subscribe(self, pattern: str, callback: Callable[..., None], *, pid: int | str | None = None,
                  filter: EventFilter | None = None, queue: int | None = None, policy: DropPolicy = "oldest",
                  coalesce: str | None = None, batch: bool = False, batch_size: int = DEFAULT_BATCH,
                  prelude: Callable[[], tuple[list[Event], int]] | None = None) -> Subscription:
        """Deliver events whose type matches `pattern` (and `pid`, and `filter`) to `callback`:
        inline, in the publisher's thread (`queue=None`), or through a bounded queue of `queue`
        events and a thread of its own (see the module docstring). `prelude`, for queued ones, runs
        first on that thread and returns (events to deliver first, seq up to which live ones
        are already among them): how `Kernel.subscribe(replay=True)` replays the store."""
        sub = Subscription(self, pattern, callback, pid, filter=filter, queue=queue, policy=policy,
                           coalesce=coalesce, batch=batch, batch_size=batch_size, prelude=prelude)
        with self._subs_lock:
            if self._closed:
                raise LlmunixError("the event bus is closed")
            self._subs = (*self._subs, sub)
        sub._start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._subs_lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
        sub._close()

    def stats(self) -> list[SubscriptionStats]:
        return [s.stats() for s in self._subs]

    def backlog(self) -> int:
        """Events published and not yet handed to the subscriptions: none (`publish` delivers at
        once; a queued subscription's own backlog is in `stats()`)."""
        return 0

    def flush(self, timeout: float | None = 5.0, *, queued: bool = True) -> bool:
        """Block until every event published so far has been delivered: to the inline subscribers
        (done as they were published), and with `queued` (default) to the queued ones too — a
        blocked queued subscriber then makes this wait out the timeout; durability (the store is
        inline) passes queued=False."""
        if self._closed or not queued:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        markers = []
        for sub in self._subs:
            if sub.queued_mode and threading.current_thread() is not sub._thread:
                m = threading.Event()
                sub._mark(m)
                markers.append(m)
        for m in markers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not m.wait(left):
                return False
        return True

    def mark(self, marker: threading.Event) -> None:
        """Set `marker` once every event published so far has been delivered to the inline
        subscribers (at once: they are delivered as they are published). An inline subscriber
        that checks the marker can tell the events before it from those after."""
        with self._order:
            marker.set()

    def close(self, timeout: float = 5.0) -> None:
        with self._subs_lock:
            if self._closed:
                return
            with self._order:
                self._closed = True
            subs = self._subs
        for sub in subs:
            sub._close()
