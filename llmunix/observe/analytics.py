"""Event analytics (`events stats`): what the event log says about a window of time.

Every figure is an SQL aggregation over the store's `events` table (its `time` index bounds each
query to the window), so a window of a million events costs the database's scan, not a million
Python objects:

* rates by type: each event type's count and rate per minute over the window;
* failure patterns: the most frequent errors of failed processes, per tool and per host (the
  Dask worker a process ran on, else this machine), with similar errors read as one *pattern*
  (`pattern`: numbers with a decimal point or four or more digits, zero-padded PIDs and long
  hex ids become placeholders, so "timed out after 12.4s" and "timed out after 9.1s" are one),
  and the circuits that opened per external host (`breaker.opened` of `host:NAME`);
* bursts: time buckets (about BUCKETS of them across the window, or `bucket` seconds; aligned on
  the clock) holding at least BURST_FACTOR times the mean (and BURST_MIN events), the mean taken
  from the first event of the window on; each with its dominant type;
* the slowest tools (running time of completed and failed processes; a workflow counts under its
  own name) and the slowest workflow steps (`workflow.step_completed`); reused cached results
  are not runs and are left out of both.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llmunix.models import LlmunixError

if TYPE_CHECKING:
    from llmunix.store import Store

DEFAULT_WINDOW = 3600.0
BUCKETS = 60  # bursts: the window is cut into about this many buckets
NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
BURST_FACTOR = 3.0
BURST_MIN = 20
TOP = 10  # rows per section
PATTERNS_PER_KEY = 3


@dataclass(frozen=True, slots=True)
class TypeRate:
    type: str
    count: int
    per_minute: float


@dataclass(frozen=True, slots=True)
class FailurePattern:
    """Failures of one tool (or on one host) that read alike: how many, an example, the newest PID."""

    key: str  # the tool, or the host
    pattern: str
    count: int
    example: str
    last_pid: int | None


@dataclass(frozen=True, slots=True)
class Burst:
    start: float  # the bucket's start (a Unix time)
    seconds: float
    count: int
    ratio: float  # count / the mean count per bucket
    top_type: str
    top_count: int


@dataclass(frozen=True, slots=True)
class Slowest:
    """A tool's (or a workflow step's) runs in the window: how many, mean and longest running time."""

    name: str
    runs: int
    mean: float
    max: float
    max_pid: int | None


@dataclass(frozen=True, slots=True)
class EventStats:
    since: float
    until: float
    bucket: float
    total: int
    types: tuple[TypeRate, ...]
    failures_by_tool: tuple[FailurePattern, ...]
    failures_by_host: tuple[FailurePattern, ...]
    circuits: tuple[tuple[str, int], ...]  # (external host, times its circuit opened)
    bursts: tuple[Burst, ...]
    mean_per_bucket: float
    slowest_tools: tuple[Slowest, ...]
    slowest_steps: tuple[Slowest, ...]

    @property
    def minutes(self) -> float:
        return max(self.until - self.since, 1e-9) / 60.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since, "until": self.until, "bucket_seconds": self.bucket, "total": self.total,
            "per_minute": round(self.total / self.minutes, 3),
            "types": [asdict(t) | {"per_minute": round(t.per_minute, 3)} for t in self.types],
            "failures_by_tool": [asdict(f) for f in self.failures_by_tool],
            "failures_by_host": [asdict(f) for f in self.failures_by_host],
            "circuits_opened": [{"host": h, "count": n} for h, n in self.circuits],
            "bursts": [asdict(b) | {"ratio": round(b.ratio, 1)} for b in self.bursts],
            "mean_per_bucket": round(self.mean_per_bucket, 3),
            "slowest_tools": [_slow_dict(s) for s in self.slowest_tools],
            "slowest_steps": [_slow_dict(s) for s in self.slowest_steps],
        }


def event_stats(store: Store | None, since: float | None = None, until: float | None = None, *,
                bucket: float | None = None) -> EventStats:
    """The analytics of the module docstring over [since, until] (Unix times; default: the last
    hour up to now)."""
    if store is None:
        raise LlmunixError("no event log to analyse: llmunix runs without a home directory (no store)")
    until = time.time() if until is None else until
    since = until - DEFAULT_WINDOW if since is None else since
    if since >= until:
        raise LlmunixError("--since must be in the past")
    if bucket is not None and not bucket > 0:
        raise LlmunixError("--bucket must be more than 0 seconds")
    width = bucket if bucket is not None else _nice_bucket((until - since) / BUCKETS)
    window = (since, until)
    q = store.query

    types = [TypeRate(r[0], r[1], r[1] / (max(until - since, 1e-9) / 60.0)) for r in q(
        "SELECT type, count(*) FROM events WHERE time >= ? AND time <= ? GROUP BY type ORDER BY 2 DESC, 1",
        window)]
    total = sum(t.count for t in types)

    by_tool = _patterns(q(
        "SELECT json_extract(data, '$.tool'), json_extract(data, '$.error'), count(*), max(pid) FROM events "
        "WHERE type = 'process.failed' AND time >= ? AND time <= ? GROUP BY 1, 2", window), _tool_key)
    local = socket.gethostname() or "localhost"
    by_host = _patterns(q(
        "SELECT p.worker, json_extract(e.data, '$.error'), count(*), max(e.pid) FROM events e "
        "LEFT JOIN processes p ON p.pid = e.pid WHERE e.type = 'process.failed' AND e.time >= ? AND e.time <= ? "
        "GROUP BY 1, 2", window), lambda worker: _host(worker) or local)
    circuits = tuple((str(r[0])[5:], r[1]) for r in q(
        "SELECT json_extract(data, '$.name'), count(*) FROM events WHERE type = 'breaker.opened' AND time >= ? "
        "AND time <= ? AND json_extract(data, '$.name') LIKE 'host:%' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
        (*window, TOP)))

    # Buckets are aligned on the clock (a 1m bucket starts on a minute), counted from the first one
    # holding an event of the window: a quiet hour before llmunix started is not a baseline.
    counts = q("SELECT CAST(time / ? AS INTEGER), count(*) FROM events WHERE time >= ? AND time <= ? "
               "GROUP BY 1 ORDER BY 1", (width, *window))
    bursts: list[Burst] = []
    mean = 0.0
    if counts:
        mean = total / max(1, int(until / width) - counts[0][0] + 1)
        hot = sorted((r for r in counts if r[1] >= max(BURST_MIN, BURST_FACTOR * mean)), key=lambda r: -r[1])
        for index, n in hot[:TOP]:
            start = index * width
            top = q("SELECT type, count(*) FROM events WHERE time >= ? AND time < ? AND time <= ? GROUP BY type "
                    "ORDER BY 2 DESC, 1 LIMIT 1", (start, start + width, until))
            bursts.append(Burst(start, width, n, n / mean if mean else math.inf, top[0][0] if top else "",
                                top[0][1] if top else 0))
        bursts.sort(key=lambda b: b.start)

    slowest_tools = tuple(Slowest(r[0], r[1], r[2], r[3], r[4]) for r in q(
        "SELECT CASE WHEN json_extract(e.data, '$.tool') = 'workflow' "
        "THEN 'workflow ' || json_extract(e.data, '$.name') ELSE json_extract(e.data, '$.tool') END AS what, "
        "count(*), avg(json_extract(e.data, '$.runtime')), "
        "max(json_extract(e.data, '$.runtime')), e.pid FROM events e LEFT JOIN processes p ON p.pid = e.pid "
        "WHERE e.type IN ('process.completed', 'process.failed') AND e.time >= ? AND e.time <= ? "
        "AND json_extract(e.data, '$.runtime') IS NOT NULL AND p.cached_from IS NULL GROUP BY what "
        "ORDER BY 4 DESC, 1 LIMIT ?", (*window, TOP)))
    slowest_steps = tuple(Slowest(r[0], r[1], r[2], r[3], r[4]) for r in q(
        "SELECT json_extract(data, '$.name') || '/' || json_extract(data, '$.step') AS what, count(*), "
        "avg(json_extract(data, '$.duration')), max(json_extract(data, '$.duration')), "
        "json_extract(data, '$.child') FROM events WHERE type = 'workflow.step_completed' AND time >= ? "
        "AND time <= ? AND json_extract(data, '$.cached_from') IS NULL GROUP BY what ORDER BY 4 DESC, 1 LIMIT ?",
        (*window, TOP)))
    return EventStats(since, until, width, total, tuple(types), by_tool, by_host, circuits, tuple(bursts), mean,
                      slowest_tools, slowest_steps)


_PLACEHOLDERS = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"\b(?:0x)?(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE), "<hex>"),
    (re.compile(r"\d+\.\d+"), "<n>"),
    (re.compile(r"\b0\d{2,}\b"), "<pid>"),
    (re.compile(r"\d{4,}"), "<n>"),
)


def pattern(error: str | None) -> str:
    """An error message as a pattern: its first line, with the placeholders of the module docstring."""
    text = (error or "").strip()
    text = text.splitlines()[0] if text else "(no error message)"
    for rx, placeholder in _PLACEHOLDERS:
        text = rx.sub(placeholder, text)
    return text[:200]


def _patterns(rows: Iterable[Any], key_of: Any) -> tuple[FailurePattern, ...]:
    """(key, error, count, newest pid) rows -> the top PATTERNS_PER_KEY patterns of the TOP keys
    with the most failures."""
    merged: dict[tuple[str, str], list[Any]] = {}
    for raw_key, error, count, last in rows:
        key = key_of(raw_key)
        slot = merged.setdefault((key, pattern(error)), [0, error or "", last])
        slot[0] += count
        if last is not None and (slot[2] is None or last > slot[2]):
            slot[1], slot[2] = error or "", last
    totals: dict[str, int] = {}
    for (key, _p), (count, _e, _l) in merged.items():
        totals[key] = totals.get(key, 0) + count
    keys = sorted(totals, key=lambda k: (-totals[k], k))[:TOP]
    out = []
    for key in keys:
        mine = sorted(((p, v) for (k, p), v in merged.items() if k == key), key=lambda pv: (-pv[1][0], pv[0]))
        out.extend(FailurePattern(key, p, v[0], str(v[1])[:200], v[2]) for p, v in mine[:PATTERNS_PER_KEY])
    return tuple(out)


def _tool_key(tool: Any) -> str:
    return str(tool) if tool else "(unknown tool)"


def _host(worker: Any) -> str | None:
    """The host part of a Dask worker address (`tcp://10.0.0.5:40001` -> 10.0.0.5)."""
    if not worker:
        return None
    text = str(worker)
    return urlsplit(text).hostname or text if "://" in text else text


def _nice_bucket(seconds: float) -> float:
    for b in NICE_BUCKETS:
        if b >= seconds:
            return float(b)
    return float(NICE_BUCKETS[-1])


def _slow_dict(s: Slowest) -> dict[str, Any]:
    return {"name": s.name, "runs": s.runs, "mean_seconds": round(s.mean, 3), "max_seconds": round(s.max, 3),
            "max_pid": s.max_pid}
