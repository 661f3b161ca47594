"""The resource pool the scheduler admits processes against. Pure bookkeeping: no threads, no
locks (the kernel holds its lock around every call), time from an injectable clock.

Two kinds of resource:
* *Counters* — `memory_mb`, `cpu` and any custom name (`gpu`, `network`, ...). A counter has a
  capacity (None: unlimited) and an amount in use: the sum of the needs of the processes that
  hold it. Needs are held only while a process runs; they are given back when it stops running.
* *Rates* — names ending in `_per_min` (`llm_tokens_per_min`). A token bucket holding up to its
  capacity, refilled continuously at capacity/60 per second. A process takes its tokens once,
  when it first starts (not again when it continues after a pause or preemption); nothing is
  given back.

`memory_mb` in use is what running processes declared (or were predicted to need), not what they
measure: admission reserves, the monitor measures.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llmunix.models import LlmunixError

Clock = Callable[[], float]

RATE_SUFFIX = "_per_min"
MEMORY_SHARE = 0.8  # default memory_mb capacity: this share of the machine's memory
PRESSURE_SHARE = 0.05  # default memory pressure threshold: this share of the machine's memory
HISTORY_RUNS = 20  # past runs a memory prediction looks at
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_EPS = 1e-9


def is_rate(name: str) -> bool:
    return name.endswith(RATE_SUFFIX)


def fmt_amount(value: float | None) -> str:
    """`500`, `0.5`, `unlimited`: one way to print an amount."""
    if value is None or math.isinf(value):
        return "unlimited"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def parse_amount(name: str, value: Any, *, what: str = "need") -> float:
    """A non-negative number for resource `name`; LlmunixError with one line otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise LlmunixError(f"bad resource name {name!r}; use letters, digits and _ (e.g. gpu, memory_mb)")
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise LlmunixError(f"bad {what} {name}={value!r}; write NAME=NUMBER, e.g. {name}=1") from None
    if not math.isfinite(amount) or amount < 0:
        raise LlmunixError(f"bad {what} {name}={value!r}; it must be a number >= 0")
    return amount


def parse_needs(needs: Mapping[str, Any] | Iterable[str] | None) -> dict[str, float]:
    """Needs from a mapping (`{"gpu": 1}`) or `NAME=VALUE` strings (`--need gpu=1`).
    Zero needs are dropped."""
    if not needs:
        return {}
    if not isinstance(needs, Mapping):
        pairs: dict[str, Any] = {}
        for text in needs:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise LlmunixError(f"bad need {text!r}; write NAME=NUMBER, e.g. --need memory_mb=500")
            pairs[key.strip()] = value.strip()
        needs = pairs
    out = {name: parse_amount(name, value) for name, value in needs.items()}
    return {name: amount for name, amount in out.items() if amount > 0}


def predict_memory(peaks: Iterable[float]) -> float | None:
    """The memory a tool is expected to need: the 90th percentile (nearest rank) of the peak
    memory of its recent completed runs. None without history."""
    values = sorted(peaks)
    if not values:
        return None
    return values[max(0, math.ceil(0.9 * len(values)) - 1)]


def machine_memory_mb() -> float:
    import psutil

    return psutil.virtual_memory().total / 1e6


def available_memory_mb() -> float:
    import psutil

    return psutil.virtual_memory().available / 1e6


class TokenBucket:
    """`capacity` tokens per minute, refilled continuously; starts full. It holds at most
    `ceiling` tokens (default: a minute's worth), so that a short ceiling (an I/O rate's, a
    fraction of a second's worth) allows no long burst after an idle stretch. `take` may leave
    it below zero: a debt, repaid before `seconds_until` says yes again."""

    __slots__ = ("capacity", "ceiling", "level", "updated", "clock")

    def __init__(self, capacity: float, clock: Clock, ceiling: float | None = None) -> None:
        self.capacity = capacity
        self.ceiling = capacity if ceiling is None else ceiling
        self.clock = clock
        self.level = self.ceiling
        self.updated = clock()

    def refill(self) -> float:
        now = self.clock()
        if now > self.updated:
            self.level = min(self.ceiling, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now
        return self.level

    def take(self, amount: float) -> None:
        self.refill()
        self.level -= amount

    def seconds_until(self, amount: float) -> float:
        """How long until `amount` tokens are there (inf if never: more than the capacity)."""
        level = self.refill()
        if level + _EPS >= amount:
            return 0.0
        if amount > self.ceiling or self.capacity <= 0:
            return math.inf
        return (amount - level) * 60.0 / self.capacity

    def set_capacity(self, capacity: float) -> None:
        self.refill()
        self.capacity = self.ceiling = capacity
        self.level = min(self.level, capacity)


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """One resource of the pool, as `limits` shows it. A rate has a `level` and no `in_use`."""

    name: str
    capacity: float | None  # None: unlimited; a rate's is per minute
    in_use: float | None
    free: float | None  # None: unlimited
    waiting: int  # queued processes waiting for it
    level: float | None = None  # a token bucket's current level

    @property
    def rate(self) -> bool:
        return is_rate(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "rate" if self.rate else "counter", "capacity": self.capacity,
                "in_use": self.in_use, "free": self.free, "waiting": self.waiting, "level": self.level}


@dataclass(frozen=True, slots=True)
class MemoryPressure:
    """The memory pressure reading: `on` while available memory is under the threshold."""

    on: bool
    available_mb: float | None  # None: not read yet
    threshold_mb: float

    def to_dict(self) -> dict[str, Any]:
        return {"on": self.on, "available_mb": self.available_mb, "threshold_mb": self.threshold_mb}


class ResourcePool:
    """Capacities, amounts in use and token buckets. Mutates: the caller holds the kernel lock."""

    def __init__(self, limits: Mapping[str, Any] | None = None, *, clock: Clock = time.monotonic,
                 memory_mb: float | None = None, cpu: float | None = None) -> None:
        self.clock = clock
        self.capacity: dict[str, float] = {
            "memory_mb": float(memory_mb) if memory_mb is not None else round(MEMORY_SHARE * machine_memory_mb()),
            "cpu": float(cpu) if cpu is not None else float(os.cpu_count() or 1),
        }
        self.buckets: dict[str, TokenBucket] = {}
        self.in_use: dict[str, float] = {}
        for name, value in (limits or {}).items():
            self.set_limit(name, value)

    def set_limit(self, name: str, value: Any) -> None:
        """Set a capacity (a rate's per minute). 0 or None/"none" removes the limit."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
            amount = 0.0
        else:
            amount = parse_amount(name, value, what="limit")
        if is_rate(name):
            if amount == 0:
                self.buckets.pop(name, None)
            elif name in self.buckets:
                self.buckets[name].set_capacity(amount)
            else:
                self.buckets[name] = TokenBucket(amount, self.clock)
        elif amount == 0:
            self.capacity.pop(name, None)
        else:
            self.capacity[name] = amount

    def limit(self, name: str) -> float | None:
        bucket = self.buckets.get(name)
        if bucket is not None:
            return bucket.capacity
        return self.capacity.get(name)

    def free(self, name: str) -> float:
        """What is free now: capacity minus use (a counter), the bucket's level (a rate)."""
        bucket = self.buckets.get(name)
        if bucket is not None:
            return bucket.refill()
        cap = self.capacity.get(name)
        return math.inf if cap is None else max(0.0, cap - self.in_use.get(name, 0.0))

    def never_fits(self, needs: Mapping[str, float]) -> str | None:
        """Why these needs can never be met by the pool as configured, or None."""
        for name, amount in needs.items():
            cap = self.limit(name)
            if cap is not None and amount > cap + _EPS:
                unit = " per minute" if is_rate(name) else ""
                return (f"needs {name}={fmt_amount(amount)} but the pool has {fmt_amount(cap)}{unit}; "
                        f"raise it with limits {name}=...")
        return None

    def missing(self, needs: Mapping[str, float], *, first_start: bool,
                reserved: Mapping[str, float] | None = None) -> list[str]:
        """The resources these needs do not fit in now, after what `reserved` holds back.
        Rates count only for a `first_start` (tokens are taken once)."""
        out = []
        for name, amount in needs.items():
            if not first_start and name in self.buckets:
                continue
            held_back = reserved.get(name, 0.0) if reserved else 0.0
            if self.free(name) - held_back + _EPS < amount:
                out.append(name)
        return out

    def seconds_until(self, needs: Mapping[str, float]) -> float:
        """The longest wait for the token buckets these needs draw on (0: none to wait for)."""
        waits = [self.buckets[n].seconds_until(a) for n, a in needs.items() if n in self.buckets]
        return max(waits, default=0.0)

    def acquire(self, needs: Mapping[str, float], *, first_start: bool) -> None:
        for name, amount in needs.items():
            bucket = self.buckets.get(name)
            if bucket is not None:
                if first_start:
                    bucket.take(amount)
            elif not is_rate(name):
                self.in_use[name] = self.in_use.get(name, 0.0) + amount

    def release(self, needs: Mapping[str, float]) -> None:
        for name, amount in needs.items():
            if not is_rate(name) and name in self.in_use:
                left = self.in_use[name] - amount
                if left > _EPS:
                    self.in_use[name] = left
                else:
                    del self.in_use[name]

    def infos(self, waiting: Mapping[str, int] | None = None) -> list[LimitInfo]:
        """Every limited resource, and every unlimited one in use, by name."""
        waiting = waiting or {}
        names = sorted({*self.capacity, *self.buckets, *self.in_use, *waiting})
        out = []
        for name in names:
            bucket = self.buckets.get(name)
            if bucket is not None:
                level = bucket.refill()
                out.append(LimitInfo(name, bucket.capacity, None, level, waiting.get(name, 0), level))
            elif is_rate(name):
                out.append(LimitInfo(name, None, None, None, waiting.get(name, 0)))
            else:
                cap = self.capacity.get(name)
                used = self.in_use.get(name, 0.0)
                out.append(LimitInfo(name, cap, used, None if cap is None else max(0.0, cap - used),
                                     waiting.get(name, 0)))
        return out
