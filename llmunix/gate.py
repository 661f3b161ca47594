"""A line of waiters in front of something with limits: an LLM endpoint (agents/endpoints.py),
a web host's connections (hosts.py). `Endpoint` admits a request when its limits allow:

* `max_concurrent` — requests in flight at once;
* `requests_per_min`, `tokens_per_min` — token buckets (pool.TokenBucket: refilled
  continuously, starting full); a request takes one request and its estimated tokens;
* a hold (`hold(seconds)`: a 429 or 503 with Retry-After) stops everyone until then.

Waiters are served first come, first served: only the head of the line is admitted; the others
wait for its signal, so a release wakes one waiter, not all of them. A waiter waits off its
process's slot (`ctx.off_slot`), and its wake-ups come through its `Inbox`, which the process
table also uses to reach it on a kill, so nothing polls.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from llmunix.models import LlmunixError
from llmunix.pool import Clock, TokenBucket, fmt_amount

WAKE = ("wake", None)  # what an inbox gets when its reader should look again (a kill, a turn)
SETTINGS = ("max_concurrent", "requests_per_min", "tokens_per_min")


@dataclass(frozen=True)
class EndpointLimits:
    """One endpoint rule's limits (None: unlimited)."""

    max_concurrent: int | None = None
    requests_per_min: float | None = None
    tokens_per_min: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"max_concurrent": self.max_concurrent, "requests_per_min": self.requests_per_min,
                "tokens_per_min": self.tokens_per_min}

    def with_setting(self, name: str, value: Any) -> EndpointLimits:
        """These limits with `name` set to `value` (0, none or unlimited: no limit)."""
        if name not in SETTINGS:
            raise LlmunixError(f"unknown endpoint limit {name!r}; use {', '.join(SETTINGS)}")
        text = str(value).strip().lower().replace(",", "").replace("_", "")
        if text in ("0", "none", "unlimited", ""):
            return replace(self, **{name: None})
        scale = {"k": 1e3, "m": 1e6}.get(text[-1:], 1.0)  # 90k, 2M
        try:
            amount = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            amount = math.nan
        if not math.isfinite(amount) or amount < 0 or amount > 1e12:
            raise LlmunixError(f"bad endpoint limit {name}={value!r}; give a number >= 0, e.g. 4, 60 or 90k "
                               "(0 or none: unlimited)")
        if name == "max_concurrent":
            if not amount.is_integer():
                raise LlmunixError(f"bad endpoint limit {name}={value!r}; give a whole number of requests")
            return replace(self, max_concurrent=int(amount))
        return replace(self, **{name: amount})

    def describe(self) -> str:
        parts = []
        if self.max_concurrent is not None:
            parts.append(f"max_concurrent={self.max_concurrent}")
        for name in ("requests_per_min", "tokens_per_min"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={fmt_amount(value)}")
        return " ".join(parts) or "unlimited"


@dataclass(frozen=True)
class EndpointInfo:
    """One endpoint as `limits` shows it."""

    key: str
    limits: EndpointLimits
    configured: bool  # a rule says its limits (else it is unlimited and listed because it was used)
    in_flight: int
    waiting: int
    requests: int  # requests admitted so far in this session
    requests_level: float | None  # the requests_per_min bucket's level
    tokens_level: float | None
    held_for: float | None  # seconds the server asked everyone to wait (Retry-After), if still

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.key, **self.limits.to_dict(), "configured": self.configured,
                "in_flight": self.in_flight, "waiting": self.waiting, "requests": self.requests,
                "requests_level": self.requests_level, "tokens_level": self.tokens_level,
                "held_for": self.held_for}


class Inbox:
    """How a model call in wait is reached when its process is killed: calling the inbox (the
    `on_kill` of `ctx.off_slot`) puts a WAKE in its queue, where an endpoint's waiter waits, and
    aborts the HTTP call in flight, if any. `fresh()` starts a new queue for each wait, so nothing
    left over from one is read by the next."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._call: Any = None
        self.killed = False

    def __call__(self) -> None:
        with self._lock:
            self.killed = True
            call = self._call
        self.queue.put(WAKE)
        if call is not None:
            call.abort()

    def fresh(self) -> queue.SimpleQueue[tuple[str, Any]]:
        self.queue = queue.SimpleQueue()
        return self.queue

    def attach(self, call: Any) -> None:
        """`call` (anything with `abort()`) is in flight until `attach(None)`; aborted at once if
        the kill came first."""
        with self._lock:
            self._call = call
            killed = self.killed
        if killed and call is not None:
            call.abort()


OffSlot = Callable[..., Any]  # ctx.off_slot(what, wake=None) -> a context manager
Check = Callable[[], None]


class Endpoint:
    """The live state of one endpoint: requests in flight, its buckets, the line of waiters."""

    def __init__(self, key: str, limits: EndpointLimits, configured: bool, clock: Clock,
                 what: str = "the endpoint: ") -> None:
        self.key = key
        self.what = what  # how `ps` names what a waiter waits for: "waiting for {what}{key} (why)"
        self.configured = configured
        self.clock = clock
        self.lock = threading.Lock()
        self.in_flight = 0
        self.requests = 0
        self.waiters: deque[queue.SimpleQueue[tuple[str, Any]]] = deque()
        self.held_until = 0.0  # clock time before which nothing is sent (a Retry-After)
        self.limits = EndpointLimits()
        self.requests_bucket: TokenBucket | None = None
        self.tokens_bucket: TokenBucket | None = None
        self.apply(limits, configured)

    def apply(self, limits: EndpointLimits, configured: bool = True) -> None:
        """New limits (requests in flight stay; buckets keep their level, capped)."""
        with self.lock:
            self.limits = limits
            self.configured = configured
            self.requests_bucket = _bucket(self.requests_bucket, limits.requests_per_min, self.clock)
            self.tokens_bucket = _bucket(self.tokens_bucket, limits.tokens_per_min, self.clock)
            self._signal_locked()  # more room, perhaps

    # ------------------------------------------------------------------ admission

    def enter(self, estimate: int, inbox: Inbox, check: Check, off_slot: OffSlot) -> None:
        """Wait until this endpoint takes one more request of about `estimate` prompt tokens, off
        the slot and in line. Raises LlmunixError if it never could (one request bigger than a
        minute's tokens), ProcessKilled from `check` on a kill (leaving the line)."""
        limit = self.limits.tokens_per_min
        if limit is not None and estimate > limit:
            raise LlmunixError(f"this request needs about {estimate:,} tokens but the endpoint {self.key} takes "
                               f"{fmt_amount(limit)} per minute; raise tokens_per_min (limits --endpoint)")
        with self.lock:
            if not self.waiters and self._why_not_locked(estimate) is None:
                self._admit_locked(estimate)
                return
            box = inbox.fresh()
            self.waiters.append(box)
            why = self._why_not_locked(estimate) or ("in line", None)
        try:
            with off_slot(f"{self.what}{self.key} ({why[0]})", inbox):
                while True:
                    check()  # (after `fresh`: a kill's wake-up sent before it went to the old queue)
                    with self.lock:
                        if self.waiters and self.waiters[0] is box:
                            found = self._why_not_locked(estimate)
                            if found is None:
                                self.waiters.popleft()
                                self._admit_locked(estimate)
                                self._signal_locked()  # the next in line may fit too
                                return
                            why = found
                        else:
                            why = ("in line", None)
                    try:
                        box.get(timeout=why[1])
                    except queue.Empty:
                        pass
        except BaseException:
            with self.lock:
                if box in self.waiters:
                    self.waiters.remove(box)
                self._signal_locked()  # it may have been signalled: pass the turn on
            raise

    def leave(self, estimate: int, used: int | None) -> None:
        """A request is over; `used`: its real token count (None: not known, the estimate stands)."""
        with self.lock:
            self.in_flight -= 1
            if self.tokens_bucket is not None and used is not None:
                self.tokens_bucket.take(used - estimate)  # a negative take gives back
            self._signal_locked()

    def hold(self, seconds: float) -> None:
        """The server asked to wait (429/503 Retry-After): nobody sends for `seconds`."""
        with self.lock:
            self.held_until = max(self.held_until, self.clock() + seconds)

    def _why_not_locked(self, estimate: int) -> tuple[str, float | None] | None:
        """Why a request cannot go now, and how long until that may change (None: until a
        request ends); None if it can."""
        now = self.clock()
        if self.held_until > now:
            return (f"the server asked to wait {self.held_until - now:.1f}s", self.held_until - now)
        cap = self.limits.max_concurrent
        if cap is not None and self.in_flight >= cap:
            return (f"{self.in_flight} of {cap} in flight", None)
        waits = []
        if self.requests_bucket is not None and (s := self.requests_bucket.seconds_until(1)) > 0:
            waits.append((f"requests_per_min {fmt_amount(self.limits.requests_per_min)}", s))
        if self.tokens_bucket is not None and (s := self.tokens_bucket.seconds_until(estimate)) > 0:
            waits.append((f"tokens_per_min {fmt_amount(self.limits.tokens_per_min)}", s))
        if waits:
            name, seconds = max(waits, key=lambda w: w[1])
            return (f"{name}: {seconds:.1f}s", seconds)
        return None

    def _admit_locked(self, estimate: int) -> None:
        self.in_flight += 1
        self.requests += 1
        if self.requests_bucket is not None:
            self.requests_bucket.take(1)
        if self.tokens_bucket is not None:
            self.tokens_bucket.take(estimate)

    def _signal_locked(self) -> None:
        if self.waiters:
            self.waiters[0].put(WAKE)

    def info(self) -> EndpointInfo:
        with self.lock:
            now = self.clock()
            return EndpointInfo(self.key, self.limits, self.configured, self.in_flight, len(self.waiters),
                                self.requests, _level(self.requests_bucket), _level(self.tokens_bucket),
                                self.held_until - now if self.held_until > now else None)


def _bucket(old: TokenBucket | None, capacity: float | None, clock: Clock) -> TokenBucket | None:
    if capacity is None:
        return None
    if old is None:
        return TokenBucket(capacity, clock)
    old.set_capacity(capacity)
    return old


def _level(bucket: TokenBucket | None) -> float | None:
    return None if bucket is None else round(bucket.refill(), 1)
