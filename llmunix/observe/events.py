"""The event log as data: rows of the store's `events` table back into `Event`s, and the small
pieces `Kernel.events` / `Kernel.follow_events` share (type patterns, the end of a process).

Replaying and following meet without gaps or repeats because of one ordering fact: events are
published under the kernel lock, delivered by one thread in sequence order, and committed by one
writer in that order. So once the bus and the store are flushed, every event of this session up to
the newest one read back is in the store, and a live event with a sequence number at or below it
has already been replayed (or left out on purpose by a `limit`).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from llmunix.models import Event
from llmunix.observe.redact import redact
from llmunix.store.writer import STRIPPED  # what the events table leaves out (kept elsewhere)

# The events that end a process (an interrupted one ends for this session).
END_EVENTS = frozenset({"process.completed", "process.failed", "process.cancelled", "process.interrupted"})
END_PATTERN = "|".join(sorted(END_EVENTS))


def row_to_event(row: sqlite3.Row) -> Event:
    """An event read back from the store (its data was redacted when it was written)."""
    data = json.loads(row["data"]) if row["data"] else {}
    return Event(row["seq"], row["time"], row["type"], row["pid"], MappingProxyType(data))


def redacted(event: Event) -> Event:
    """A live event as the event log shows it: secrets redacted, bulky parts left out as stored."""
    data = {k: v for k, v in event.data.items() if k not in STRIPPED.get(event.type, ())}
    return replace(event, data=MappingProxyType(redact(data)))


def type_matcher(pattern: str | None) -> Callable[[str], bool]:
    """The bus's pattern language: globs on the type, `|` between alternatives; None: all."""
    if not pattern:
        return lambda _type: True
    regex = re.compile("|".join(fnmatch.translate(p.strip()) for p in pattern.split("|")))
    return lambda t: regex.match(t) is not None
