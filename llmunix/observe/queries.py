"""The event log: past events from the store, following new events and a process's log as
they come, the audit trail, and subscriptions to the bus. A component of the kernel
(`kernel.events`), using the process table's public verbs and the store's queries.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmunix.ipc.bus import (
    DEFAULT_QUEUE,
    DropPolicy,
    EventBus,
    EventFilter,
    Subscription,
    SubscriptionStats,
    glob_matcher,
)
from llmunix.models import Event, LlmunixError, Phase, as_pid, format_pid
from llmunix.observe.audit import AuditEntry, current_user, row_to_audit
from llmunix.observe.events import END_EVENTS, END_PATTERN, redacted, row_to_event, type_matcher
from llmunix.observe.redact import redact_text

if TYPE_CHECKING:
    from llmunix.durable import DurableState
    from llmunix.lifecycle import ProcessTable
    from llmunix.store import Store


@dataclass(frozen=True, slots=True)
class BusInfo:
    published: int
    backlog: int
    subscriptions: tuple[SubscriptionStats, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"published": self.published, "backlog": self.backlog,
                "dropped": sum(s.dropped for s in self.subscriptions),
                "subscriptions": [s.to_dict() for s in self.subscriptions]}


class EventLog:
    """See the module docstring."""

    def __init__(self, table: ProcessTable, durable: DurableState, bus: EventBus, store: Store | None, *,
                 read_only: bool) -> None:
        self.table = table
        self.durable = durable
        self.bus = bus
        self.store = store
        self.read_only = read_only

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, pattern: str, callback: Callable[..., None], *, pid: int | str | None = None,
                  filter: EventFilter | None = None, replay: bool = False, since: float | None = None,
                  queue: int | None = DEFAULT_QUEUE, policy: DropPolicy = "oldest", coalesce: str | None = None,
                  batch: bool = False) -> Subscription:
        """Call `callback(event)` for every event whose type matches the glob `pattern`
        (alternatives separated by `|`), optionally only for one PID (or a glob on the zero-padded
        PID, "01?") and only where `filter(event)` is true.

        Delivery is through a queue of `queue` events and a thread of the subscription's own, so a
        slow callback never holds up the engine or other subscribers; when the queue is full the
        oldest waiting event is dropped (`policy="newest"`: the incoming one) and counted
        (`bus_info()`, the `bus` command). `coalesce="process.progress"` delivers only the newest
        waiting event of those types per PID; `batch=True` calls `callback(list_of_events)`.
        `replay=True` first delivers the matching events already in the store (since `since`, a
        Unix time), then the live ones, without gaps or repeats (replayed data is redacted as
        the event log shows it). `queue=None` calls the callback on the event thread itself,
        lossless but in everyone's way: only for callbacks that never block."""
        prelude = None
        if replay:
            if queue is None:
                raise LlmunixError("replay needs a queued subscription")
            prelude = lambda: self._replay(pattern, pid, since)  # noqa: E731
        return self.bus.subscribe(pattern, callback, pid=pid, filter=filter, queue=queue, policy=policy,
                                  coalesce=coalesce, batch=batch, prelude=prelude)

    def _replay(self, pattern: str, pid: int | str | None, since: float | None) -> tuple[list[Event], int]:
        rows = self._event_rows(pid if isinstance(pid, int) else None, pattern, since, None)
        session = self.store.session if self.store is not None else None
        mark = max((r["seq"] for r in rows if r["session"] == session), default=0)
        events = [row_to_event(r) for r in rows]
        if isinstance(pid, str):
            match = glob_matcher(pid)
            events = [e for e in events if e.pid is not None and match(format_pid(e.pid))]
        return events, mark

    def bus_info(self) -> BusInfo:
        """The event bus: events published, waiting to be dispatched, and each subscription's
        deliveries and drops."""
        return BusInfo(self.bus.published, self.bus.backlog(), tuple(self.bus.stats()))

    # ------------------------------------------------------------------ the log

    def events(self, pid: int | None = None, types: str | None = None, since: float | None = None,
               limit: int | None = None) -> list[Event]:
        """The event log, oldest first: this session's events and earlier sessions', from the store.
        `types` globs the type ("process.*", alternatives separated by "|"), `since` is a Unix
        time, `limit` keeps the newest N. Secrets in event data are redacted. Without a store (no
        home directory) no log is kept and the list is empty; `follow_events` still sees new ones."""
        if pid is not None:
            self.durable.info(pid)  # unknown PIDs raise
        return [row_to_event(r) for r in self._event_rows(pid, types, since, limit)]

    def follow_events(self, pid: int | None = None, types: str | None = None, since: float | None = None,
                      limit: int | None = None, *, timeout: float | None = None) -> Iterator[Event]:
        """`events(...)`, then each new matching event as it is published (redacted the same way),
        without gaps or repeats. Ends after `timeout` seconds, or, given a `pid`, once that
        process has finished; closing the iterator (Ctrl-C in its consumer) ends it too."""
        pid = None if pid is None else as_pid(pid)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.read_only:  # the owner publishes on its own bus: read what it commits
            yield from self._poll_events(pid, types, since, limit, deadline)
            return
        if pid is not None:
            self.durable.info(pid)  # unknown PIDs raise
        match = type_matcher(types)
        live: queue.SimpleQueue[Event] = queue.SimpleQueue()
        marker = threading.Event()  # without a store: set by the bus after the events from before we began

        def take(e: Event) -> None:
            if marker.is_set():
                live.put(e)

        if self.store is not None:
            marker.set()  # the replay's sequence mark tells what came before
        sub = self.bus.subscribe("*", take, pid=pid)
        try:
            with self.table.lock:
                proc = None if pid is None else self.table.get(pid)
                # Done before we subscribed: its end is not coming; the replay below has everything.
                done = pid is not None and (proc is None or proc.phase is Phase.DONE)
                if not marker.is_set():
                    self.bus.mark(marker)
            rows = self._event_rows(pid, types, since, None if limit is None else max(1, limit))
            session = self.store.session if self.store is not None else None
            mark = max((r["seq"] for r in rows if r["session"] == session), default=0)
            for r in (rows if limit is None else rows[len(rows) - limit:] if limit else []):
                yield row_to_event(r)
            while not done:
                e = self._next_event(live, deadline)
                if e is None:
                    return
                if e.seq > mark and match(e.type):
                    yield redacted(e)
                done = pid is not None and e.type in END_EVENTS
        finally:
            sub.cancel()

    def follow_log(self, pid: int, *, tail: int | None = None, timeout: float | None = None,
                   since: float | None = None) -> Iterator[tuple[float, str]]:
        """A process's log lines (the last `tail` of them; those from `since`, a Unix time, on),
        then each new line as the process writes it, until the process has finished or `timeout`
        seconds have passed."""
        pid = as_pid(pid)
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = threading.Event()  # set by the bus after the lines already in proc.logs
        live: queue.SimpleQueue[Event] = queue.SimpleQueue()

        def after_marker(e: Event) -> None:
            if marker.is_set():
                live.put(e)

        sub = self.bus.subscribe("process.log|" + END_PATTERN, after_marker, pid=pid)
        try:
            with self.table.lock:
                proc = self.table.get(pid)
                if proc is not None:
                    lines, done = list(proc.logs), proc.phase is Phase.DONE
                    self.bus.mark(marker)
            if proc is None:  # an earlier session's process (or one released from memory)
                if self.read_only:
                    self.durable.info(pid)
                    for e in self._poll_events(pid, "process.log", since, tail, deadline):
                        yield e.time, str(e.data.get("line", ""))
                    return
                lines, done = self.durable.logs(pid, since=since, limit=tail), True
            if since is not None:
                lines = [(t, line) for t, line in lines if t >= since]
            yield from (lines if tail is None else lines[len(lines) - tail:] if tail > 0 else [])
            while not done:
                e = self._next_event(live, deadline)
                if e is None:
                    return
                if e.type == "process.log":
                    yield e.time, str(e.data.get("line", ""))
                done = e.type in END_EVENTS
        finally:
            sub.cancel()

    def record_command(self, text: str, status: int) -> None:
        """Audit trail: the shell reports each command it ran and its exit status (0 or 1). It is
        published as a `shell.command` event (secrets redacted); the store writes the audit row."""
        with self.table.lock:  # events are published under the lock, so in order
            self.bus.publish("shell.command", None,
                             {"command": redact_text(text), "status": int(status), "user": current_user()})

    def audit(self, since: float | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first: commands run in the shell (with their exit status) and
        control actions (kill, pause, resume, priority, recover, rollback) with their target.
        `since` is a Unix time; `limit` keeps the newest N. Empty without a store."""
        if self.store is None or limit == 0:
            return []
        if not self.read_only:
            self.durable.flush()  # what has been published so far is committed, then read
        return [row_to_audit(r) for r in self.store.audit_rows(since, limit)]

    def _event_rows(self, pid: int | None, types: str | None, since: float | None, limit: int | None,
                    after_id: int = 0) -> list[Any]:
        if self.store is None:
            return []
        if not self.read_only:
            self.durable.flush()  # what has been published so far is committed, then read
        return self.store.events(pid=pid, types=types, since=since, after_id=after_id, limit=limit)

    def _next_event(self, live: queue.SimpleQueue[Event], deadline: float | None) -> Event | None:
        """The next event a follower queued; None once the deadline has passed or the kernel shut down.
        Waits in short steps so that Ctrl-C reaches the consumer promptly."""
        while True:
            step = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if step <= 0:
                return None
            try:
                return live.get(timeout=step)
            except queue.Empty:
                if self.table.closed:
                    return None

    def _poll_events(self, pid: int | None, types: str | None, since: float | None, limit: int | None,
                     deadline: float | None) -> Iterator[Event]:
        """Read-only follower: the owner writes the store; read what it has committed, every 0.25 s."""
        if pid is not None:
            self.durable.info(pid)
        rows = self._event_rows(pid, types, since, None if limit is None else max(1, limit))
        after = rows[-1]["id"] if rows else 0
        for r in (rows if limit is None else rows[len(rows) - limit:] if limit else []):
            yield row_to_event(r)
        while deadline is None or time.monotonic() < deadline:
            done = pid is not None and self.durable.info(pid).is_done  # before reading: nothing comes after
            for r in self._event_rows(pid, types, None, None, after_id=after):
                after = r["id"]
                yield row_to_event(r)
            if done:
                return
            time.sleep(0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic())))

