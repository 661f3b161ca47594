"""RetryPolicy: how many attempts, how long to wait between them, and which errors are worth it.

One policy for everything that retries (workflow steps now; `run --retry` later). Delays grow
exponentially from `initial` by `factor` up to `max`; jitter spreads them so that many failures
at once do not retry in lockstep:

* ``"full"`` (the default, after AWS's "Exponential Backoff and Jitter"): uniform in [0, cap];
* ``"none"``: exactly the capped exponential;
* a fraction ``j`` in (0, 1]: uniform in [cap * (1 - j), cap * (1 + j)], then capped at `max`.

>>> p = RetryPolicy(max_attempts=4, initial=1.0, factor=2.0, max=3.0, jitter="none")
>>> [p.delay(n) for n in (1, 2, 3)]
[1.0, 2.0, 3.0]
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmunix.models import LlmunixError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3  # attempts in all, the first included
    initial: float = 1.0  # seconds before the second attempt (before jitter)
    factor: float = 2.0
    max: float = 60.0  # cap on any one delay
    jitter: str | float = "full"
    retry_on: Sequence[str] = field(default_factory=tuple)  # error patterns (glob or substring); empty: any

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise LlmunixError("retry max_attempts must be at least 1")
        if self.initial < 0 or self.max < 0 or self.factor < 1:
            raise LlmunixError("retry delays must not be negative and factor must be at least 1")
        if isinstance(self.jitter, str):
            if self.jitter not in ("full", "none"):
                raise LlmunixError(f"retry jitter must be 'full', 'none' or a fraction, not {self.jitter!r}")
        elif not 0 <= float(self.jitter) <= 1:
            raise LlmunixError(f"retry jitter fraction must be between 0 and 1, not {self.jitter!r}")

    def cap(self, attempt: int) -> float:
        """The delay after failed attempt number `attempt` (1-based), before jitter."""
        return min(self.max, self.initial * self.factor ** max(0, attempt - 1))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt `attempt` before the next one."""
        cap = self.cap(attempt)
        if self.jitter == "full":
            return cap * rand()
        if self.jitter == "none":
            return cap
        j = float(self.jitter)
        return min(self.max, cap * (1 - j + 2 * j * rand()))

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay `delay(attempt)` can return."""
        cap = self.cap(attempt)
        if self.jitter == "full":
            return 0.0, cap
        if self.jitter == "none":
            return cap, cap
        j = float(self.jitter)
        return cap * (1 - j), min(self.max, cap * (1 + j))

    def retries(self, error: str | None) -> bool:
        """Whether an attempt that failed with `error` is worth another."""
        if not self.retry_on:
            return True
        text = error or ""
        return any(p in text or fnmatch.fnmatchcase(text, p) for p in self.retry_on)

    def should_retry(self, attempt: int, error: str | None) -> bool:
        return attempt < self.max_attempts and self.retries(error)
