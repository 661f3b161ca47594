"""Process-level retry and restart: the policies, and what a process remembers about its attempts.

A process run with a retry policy (`run --retry N`) or a restart policy (`run --restart MODE`)
keeps its PID across attempts. When an attempt ends, `Kernel._after_attempt` decides:

* retry — the attempt failed, attempts are left and the error matches `retry_on`: wait
  `RetryPolicy.delay(attempt)` (a timer: no slot, no thread held), then run the body afresh,
  with `ctx.restored` = the last checkpoint of this run;
* restart — the retries are used up (or there were none) and the restart policy wants another
  run (`on-failure` after a failure, `always` after any end but a kill): wait the restart
  backoff, then run the body from scratch. A run that stayed up `min_uptime` seconds resets the
  backoff and the count of restarts in a row; `max_restarts` restarts in a row end it Failed;
* otherwise the process ends, in exactly one terminal state.

>>> RestartPolicy("on-failure", max_restarts=3).wants(completed=False)
True
>>> parse_backoff("1s..60s")
(1.0, 60.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmunix.models import AttemptInfo, LlmunixError, parse_duration, short_duration  # noqa: F401 (re-exported: helpers import it from here)
from llmunix.retry import RetryPolicy

if TYPE_CHECKING:
    from llmunix.tools.registry import Tool

RESTART_MODES = ("never", "on-failure", "always")
DEFAULT_BACKOFF = (1.0, 60.0)  # initial..max seconds, factor 2, full jitter
DEFAULT_MAX_RESTARTS = 10
DEFAULT_MIN_UPTIME = 10.0


def parse_backoff(text: str) -> tuple[float, float]:
    """`1s..60s` (initial..max) or `5s` (initial; the max stays 60s, or 5s if that is more)."""
    raw = str(text).strip()
    first, sep, last = raw.partition("..")
    try:
        initial = parse_duration(first)
        cap = parse_duration(last) if sep else max(initial, DEFAULT_BACKOFF[1])
    except LlmunixError:
        raise LlmunixError(f"bad backoff {text!r}; write INITIAL..MAX, e.g. 1s..60s") from None
    if cap < initial:
        raise LlmunixError(f"bad backoff {text!r}: the maximum {last} is less than the initial delay {first}")
    return initial, cap


def backoff_policy(backoff: str | None, *, attempts: int = 1, retry_on: Sequence[str] = ()) -> RetryPolicy:
    """The one shape of process backoff: exponential from `initial` by 2 up to `max`, full jitter."""
    initial, cap = parse_backoff(backoff) if backoff else DEFAULT_BACKOFF
    return RetryPolicy(max_attempts=attempts, initial=initial, factor=2.0, max=cap, jitter="full",
                       retry_on=tuple(retry_on))


@dataclass(frozen=True)
class RestartPolicy:
    """When a long-running process is started again after it ends (pm2's model)."""

    mode: str = "on-failure"  # never | on-failure | always
    max_restarts: int = DEFAULT_MAX_RESTARTS  # restarts in a row before it is given up
    min_uptime: float = DEFAULT_MIN_UPTIME  # a run up this long resets the backoff and the count
    backoff: RetryPolicy = field(default_factory=lambda: backoff_policy(None))

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise LlmunixError(f"unknown restart policy {self.mode!r}; use one of: {', '.join(RESTART_MODES)}")
        if self.max_restarts < 0:
            raise LlmunixError("max_restarts must not be negative")
        if self.min_uptime < 0:
            raise LlmunixError("min_uptime must not be negative")

    def wants(self, completed: bool) -> bool:
        """Whether a run that ended (completed, or failed) should be followed by another."""
        return self.mode == "always" or (self.mode == "on-failure" and not completed)


class Attempts:
    """What a process with a policy remembers across attempts. Mutates under the kernel lock.

    `ckpt_base` is the number of checkpoints before this run (a restart starts from scratch, a
    retry from the run's last checkpoint). Per-attempt running time is the process table's
    (`Process.attempt_runtime`).
    """

    __slots__ = ("retry", "restart", "attempt", "restarts", "restarts_total", "backoff_step", "next_at",
                 "ckpt_base", "original", "excused", "stall_restart", "waiting")

    def __init__(self, retry: RetryPolicy | None = None, restart: RestartPolicy | None = None) -> None:
        self.retry = retry
        self.restart = restart
        self.attempt = 1
        self.restarts = 0  # in a row
        self.restarts_total = 0
        self.backoff_step = 0  # restart backoff exponent; reset by a run that stays up
        self.next_at: float | None = None  # wall time of the next attempt while waiting for it
        self.ckpt_base = 0
        self.original: tuple[Tool, dict[str, Any]] | None = None  # tool and parameters asked for, once a
        # fallback has stood in for them (an open circuit)
        self.excused = False  # this attempt's failure is not the tool's: an open circuit refused it, or a
        # host it called failed (that host's breaker counts it)
        self.stall_restart = False  # the watchdog stopped this attempt to restart it
        self.waiting = False  # between attempts (retry or restart wait)

    @property
    def max_attempts(self) -> int:
        return self.retry.max_attempts if self.retry is not None else 1

    def info(self, phase: str) -> AttemptInfo | None:
        """The snapshot's view; the next attempt's time only while it waits for it."""
        if self.retry is None and self.restart is None:
            return None
        r = self.restart
        due = self.next_at if self.waiting and phase == "waiting" else None
        if r is None:
            return AttemptInfo(self.attempt, self.max_attempts, due)
        return AttemptInfo(self.attempt, self.max_attempts, due, self.restarts, r.max_restarts, r.mode)


def policy_data(attempts: Attempts | None) -> dict[str, Any] | None:
    """A process's retry and restart policies as JSON data (stored with the process so that
    `recover` runs it under the same policies), or None if it has none."""
    if attempts is None or (attempts.retry is None and attempts.restart is None):
        return None
    data: dict[str, Any] = {}
    if attempts.retry is not None:
        data["retry"] = _retry_data(attempts.retry)
    if attempts.restart is not None:
        r = attempts.restart
        data["restart"] = {"mode": r.mode, "max_restarts": r.max_restarts, "min_uptime": r.min_uptime,
                           "backoff": _retry_data(r.backoff)}
    return data


RUN_OPTIONS = ("timeout", "isolate", "memory_limit", "cpu_limit")  # kept with the policies


def run_options(attempts: Attempts | None, **asked: Any) -> dict[str, Any] | None:
    """What a process was asked to run under, as JSON data stored with it: its retry and restart
    policies (`policy_data`) and the RUN_OPTIONS given to spawn (timeout, isolation, limits), so
    that `restart` and `recover` run it the same way. None if nothing was asked."""
    data = policy_data(attempts) or {}
    data.update({k: v for k, v in asked.items() if k in RUN_OPTIONS and v is not None})
    return data or None


def attempts_from_data(data: Any) -> Attempts | None:
    """The policies `policy_data` stored, as a fresh Attempts (attempts counted from 1); None if
    there are none or the data is unusable."""
    if not isinstance(data, dict):
        return None
    try:
        retry = RetryPolicy(**_retry_args(data["retry"])) if data.get("retry") else None
        r = data.get("restart")
        restart = RestartPolicy(r["mode"], int(r["max_restarts"]), float(r["min_uptime"]),
                                RetryPolicy(**_retry_args(r["backoff"]))) if r else None
    except (KeyError, TypeError, ValueError, LlmunixError):
        return None
    return None if retry is None and restart is None else Attempts(retry, restart)


def _retry_data(p: RetryPolicy) -> dict[str, Any]:
    return {"max_attempts": p.max_attempts, "initial": p.initial, "factor": p.factor, "max": p.max,
            "jitter": p.jitter, "retry_on": list(p.retry_on)}


def _retry_args(d: dict[str, Any]) -> dict[str, Any]:
    return {"max_attempts": int(d["max_attempts"]), "initial": float(d["initial"]), "factor": float(d["factor"]),
            "max": float(d["max"]), "jitter": d["jitter"], "retry_on": tuple(d.get("retry_on") or ())}
