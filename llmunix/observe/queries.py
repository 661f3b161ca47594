"""The Kernel's observability methods: the event log, following events and logs, the audit
trail. A part of `Kernel` (mixed in), kept in its own room.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from llmunix.models import (
    Event,
    Phase,
    as_pid,
)
from llmunix.observe.audit import AuditEntry, current_user, row_to_audit
from llmunix.observe.events import END_EVENTS, END_PATTERN, redacted, row_to_event, type_matcher
from llmunix.observe.redact import redact_text


class EventQueries:

    def events(self, pid: int | None = None, types: str | None = None, since: float | None = None,
               limit: int | None = None) -> list[Event]:
        """The event log, oldest first: this session's events and earlier sessions', from the store.
        `types` globs the type ("process.*", alternatives separated by "|"), `since` is a Unix
        time, `limit` keeps the newest N. Secrets in event data are redacted. Without a store (no
        home directory) no log is kept and the list is empty; `follow_events` still sees new ones."""
        if pid is not None:
            self.info(pid)  # unknown PIDs raise
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
            self.info(pid)  # unknown PIDs raise
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
            with self._lock:
                proc = None if pid is None else self._procs.get(pid)
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

    def follow_log(self, pid: int, *, tail: int | None = None, timeout: float | None = None
                   ) -> Iterator[tuple[float, str]]:
        """A process's log lines (the last `tail` of them), then each new line as the process
        writes it, until the process has finished or `timeout` seconds have passed."""
        pid = as_pid(pid)
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = threading.Event()  # set by the bus after the lines already in proc.logs
        live: queue.SimpleQueue[Event] = queue.SimpleQueue()

        def after_marker(e: Event) -> None:
            if marker.is_set():
                live.put(e)

        sub = self.bus.subscribe("process.log|" + END_PATTERN, after_marker, pid=pid)
        try:
            with self._lock:
                proc = self._procs.get(pid)
                if proc is not None:
                    lines, done = list(proc.logs), proc.phase is Phase.DONE
                    self.bus.mark(marker)
            if proc is None:  # an earlier session's process (or one released from memory)
                if self.read_only:
                    self.info(pid)
                    for e in self._poll_events(pid, "process.log", None, tail, deadline):
                        yield e.time, str(e.data.get("line", ""))
                    return
                lines, done = self.logs(pid), True
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
        with self._lock:  # events are published under the lock, so in order
            self.bus.publish("shell.command", None,
                             {"command": redact_text(text), "status": int(status), "user": current_user()})

    def audit(self, since: float | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first: commands run in the shell (with their exit status) and
        control actions (kill, pause, resume, priority, recover, rollback) with their target.
        `since` is a Unix time; `limit` keeps the newest N. Empty without a store."""
        if self.store is None or limit == 0:
            return []
        if not self.read_only:
            self.flush()  # what has been published so far is committed, then read
        return [row_to_audit(r) for r in self.store.audit_rows(since, limit)]

    def _event_rows(self, pid: int | None, types: str | None, since: float | None, limit: int | None,
                    after_id: int = 0) -> list[Any]:
        if self.store is None:
            return []
        if not self.read_only:
            self.flush()  # what has been published so far is committed, then read
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
                if self._closed:
                    return None

    def _poll_events(self, pid: int | None, types: str | None, since: float | None, limit: int | None,
                     deadline: float | None) -> Iterator[Event]:
        """Read-only follower: the owner writes the store; read what it has committed, every 0.25 s."""
        if pid is not None:
            self.info(pid)
        rows = self._event_rows(pid, types, since, None if limit is None else max(1, limit))
        after = rows[-1]["id"] if rows else 0
        for r in (rows if limit is None else rows[len(rows) - limit:] if limit else []):
            yield row_to_event(r)
        while deadline is None or time.monotonic() < deadline:
            done = pid is not None and self.info(pid).is_done  # before reading: nothing comes after
            for r in self._event_rows(pid, types, None, None, after_id=after):
                after = r["id"]
                yield row_to_event(r)
            if done:
                return
            time.sleep(0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic())))

