"""Circuit breakers: stop calling what keeps failing, and try it again now and then.

One breaker per tool (`tool:NAME`, fed by the outcome of each of its processes) and per external
host (`host:NAME`, fed by tools through `ctx.host_call(host)` or `Kernel.breaker_record`).

States::

    closed --(threshold consecutive failures)--> open --(cooldown passed; one caller probes)-->
    half-open --(the probe succeeds)--> closed
              --(the probe fails)--> open (a new cooldown)

* closed: calls go through; a success resets the count of consecutive failures.
* open: calls are refused at once ("circuit open for tool X (5 consecutive failures; next probe
  in 12s)"); a process of a tool with a declared fallback runs the fallback instead.
* half-open: the first caller after the cooldown is the probe; others are refused until its
  outcome is known. A probe that is cancelled (not the tool's fault) gives the turn back.

Pure bookkeeping: no threads, no locks (the kernel holds its lock around every call), time from
an injectable monotonic clock. Transitions are returned ("opened", "half_open", "closed") so the
kernel can publish them as events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmunix.models import LlmunixError, iso_time, short_duration

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
DEFAULT_THRESHOLD = 5
DEFAULT_COOLDOWN = 30.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BreakerInfo:
    """A snapshot of one breaker, as `breakers` shows it."""

    name: str
    state: str  # closed, open, half-open
    failures: int  # consecutive failures now
    threshold: int
    last_error: str | None
    next_probe: float | None  # Unix time a probe is allowed (open), else None
    probe_pid: int | None  # the process probing it (half-open)
    successes: int  # in all, since it was made or reset
    total_failures: int
    trips: int  # times it opened
    changed: float  # Unix time of its last state change

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else "other"

    @property
    def target(self) -> str:
        return self.name.split(":", 1)[1] if ":" in self.name else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "target": self.target, "state": self.state,
                "failures": self.failures, "threshold": self.threshold, "last_error": self.last_error,
                "next_probe": None if self.next_probe is None else iso_time(self.next_probe),
                "probe_pid": self.probe_pid, "successes": self.successes, "total_failures": self.total_failures,
                "trips": self.trips, "changed": iso_time(self.changed)}


def describe(name: str) -> str:
    """`tool fetch`, `host example.com`: a breaker's name as a reason reads it."""
    kind, sep, target = name.partition(":")
    return f"{kind} {target}" if sep and kind in ("tool", "host") else name


class CircuitBreaker:
    """One breaker. Mutates: the caller holds the kernel lock."""

    __slots__ = ("name", "threshold", "cooldown", "clock", "state", "failures", "last_error", "opened_at",
                 "probe_pid", "successes", "total_failures", "trips", "changed")

    def __init__(self, name: str, threshold: int = DEFAULT_THRESHOLD, cooldown: float = DEFAULT_COOLDOWN,
                 clock: Clock = time.monotonic) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.last_error: str | None = None
        self.opened_at = 0.0
        self.probe_pid: int | None = None
        self.successes = 0
        self.total_failures = 0
        self.trips = 0
        self.changed = time.time()

    def probe_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 if due, or not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self.clock())

    def allow(self, pid: int | None = None) -> tuple[bool, str | None]:
        """May a call go through now? Returns (allowed, transition). An open breaker whose
        cool-down has passed goes half-open and lets this caller through as its probe."""
        if self.state == CLOSED:
            return True, None
        if self.state == OPEN and self.probe_in() <= 0:
            self._set(HALF_OPEN)
            self.probe_pid = pid
            return True, "half_open"
        if self.state == HALF_OPEN and self.probe_pid is None:
            self.probe_pid = pid  # the earlier probe gave its turn back
            return True, None
        return False, None

    def record(self, ok: bool, error: str | None = None) -> str | None:
        """The outcome of a call. Returns the transition it caused, if any."""
        if ok:
            self.successes += 1
            self.failures = 0
            self.probe_pid = None
            if self.state != CLOSED:
                self._set(CLOSED)
                return "closed"
            return None
        self.total_failures += 1
        self.failures += 1
        self.last_error = error or self.last_error
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.probe_pid = None
            self.opened_at = self.clock()
            self.trips += 1
            self._set(OPEN)
            return "opened"
        return None

    def release(self, pid: int | None) -> None:
        """A probe ended without an outcome of its own (cancelled): let another caller probe."""
        if self.state == HALF_OPEN and self.probe_pid == pid:
            self.probe_pid = None

    def reset(self) -> str | None:
        was = self.state
        self.failures = 0
        self.probe_pid = None
        self._set(CLOSED)
        return "closed" if was != CLOSED else None

    def reason(self) -> str:
        """Why a call is refused: `circuit open for tool X (5 consecutive failures; next probe in 12s)`."""
        what = describe(self.name)
        if self.state == HALF_OPEN:
            probe = f"probe {self.probe_pid:03d}" if self.probe_pid is not None else "a probe"
            return f"circuit half-open for {what} ({probe} in flight)"
        return (f"circuit open for {what} ({self.failures} consecutive failures; "
                f"next probe in {short_duration(self.probe_in())})")

    def info(self) -> BreakerInfo:
        next_probe = time.time() + self.probe_in() if self.state == OPEN else None
        return BreakerInfo(self.name, self.state, self.failures, self.threshold, self.last_error, next_probe,
                           self.probe_pid, self.successes, self.total_failures, self.trips, self.changed)

    def _set(self, state: str) -> None:
        self.state = state
        self.changed = time.time()


class BreakerBoard:
    """Every breaker, made on first use. Mutates: the caller holds the kernel lock."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD, cooldown: float = DEFAULT_COOLDOWN,
                 clock: Clock = time.monotonic) -> None:
        check_settings(threshold, cooldown)
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self.not_closed = 0  # breakers open or half-open (a lock-free hint for the hot path)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(sorted(self._breakers.values(), key=lambda b: b.name))

    def get(self, name: str) -> CircuitBreaker | None:
        return self._breakers.get(name)

    def breaker(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            b = self._breakers[name] = CircuitBreaker(name, self.threshold, self.cooldown, self.clock)
        return b

    def configure(self, threshold: int | None = None, cooldown: float | None = None) -> None:
        """New settings, for the breakers there are and those to come."""
        check_settings(self.threshold if threshold is None else threshold,
                       self.cooldown if cooldown is None else cooldown)
        if threshold is not None:
            self.threshold = threshold
        if cooldown is not None:
            self.cooldown = cooldown
        for b in self._breakers.values():
            b.threshold, b.cooldown = self.threshold, self.cooldown

    def resolve(self, name: str) -> CircuitBreaker:
        """A breaker by its full name (`tool:fetch`) or its target (`fetch`, `example.com`)."""
        for candidate in (name, f"tool:{name}", f"host:{name}"):
            b = self._breakers.get(candidate)
            if b is not None:
                return b
        known = ", ".join(sorted(self._breakers)) or "none yet"
        raise LlmunixError(f"no breaker {name!r}; `breakers` lists them (known: {known})")

    def recount(self) -> None:
        self.not_closed = sum(1 for b in self._breakers.values() if b.state != CLOSED)


def check_settings(threshold: int, cooldown: float) -> None:
    if not isinstance(threshold, int) or threshold < 1:
        raise LlmunixError(f"breaker_threshold must be a whole number of at least 1, not {threshold!r}")
    check_seconds("breaker_cooldown", cooldown)


MAX_SECONDS = 7 * 86400.0  # a week: past it a timer is as good as never (and inf or NaN would stop one)


def check_seconds(name: str, seconds: float, what: str = "") -> float:
    """`seconds` as a float if it is a number from 0 to a week, else a one-line LlmunixError."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value <= MAX_SECONDS:  # (NaN fails both)
        raise LlmunixError(f"{name} must be a number of seconds from 0 to 604,800 (a week){what}, not {seconds!r}")
    return value
