"""The Kernel's admission methods: resource needs, the pool, memory pressure and the `limits`
view. A part of `Kernel` (mixed in), kept in its own room; it uses the kernel's lock and tables
like the rest. The policy is stated in `scheduler.py` (Admission); the bookkeeping is
`admission.ResourcePool`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

from llmunix.admission import (
    HISTORY_RUNS,
    PRESSURE_SHARE,
    LimitInfo,
    MemoryPressure,
    ResourcePool,
    available_memory_mb,
    machine_memory_mb,
    parse_needs,
    predict_memory,
)
from llmunix.models import LlmunixError, Phase, Priority
from llmunix.process import REQ_PAUSE, Process
from llmunix.scheduler import ADMISSION_LOOKAHEAD
from llmunix.tools.registry import Tool

log = logging.getLogger("llmunix.kernel")

PRESSURE_RECHECK = 1.0  # seconds between memory readings made while dispatching
DEFERRED = ("memory pressure",)  # blocked_on of a process deferred by memory pressure


class ResourceLimits:

    def _init_admission(self, limits: Mapping[str, Any] | None, pool: ResourcePool | None,
                        memory_pressure_mb: float | None, available_memory: Callable[[], float] | None,
                        pause_idle_under_pressure: bool = False) -> None:
        self.pool = pool if pool is not None else ResourcePool()
        for name, value in (limits or {}).items():
            self.pool.set_limit(name, value)
        if memory_pressure_mb is not None and memory_pressure_mb < 0:
            raise LlmunixError("memory_pressure_mb must not be negative")
        threshold = memory_pressure_mb if memory_pressure_mb is not None else PRESSURE_SHARE * machine_memory_mb()
        self._available_memory = available_memory or available_memory_mb
        self._pressure = MemoryPressure(False, None, round(float(threshold), 1))
        self._pressure_read = float("-inf")
        self._pause_idle = pause_idle_under_pressure
        self._pressure_paused: set[int] = set()  # idle processes paused by memory pressure
        self._memory_runs: dict[str, deque[float]] = {}  # tool -> peak MB of its recent completed runs
        self._refill_at: float | None = None  # when the pending token-bucket wake-up fires

    # ------------------------------------------------------------------ public API

    def limits(self) -> list[LimitInfo]:
        """The pool: each resource's capacity, use, what is free and how many wait for it."""
        with self._lock:
            waiting: Counter[str] = Counter()
            for p in self._live.values():
                if p.queue_token and p.blocked_on and p.blocked_on is not DEFERRED:
                    waiting.update(p.blocked_on)
            return self.pool.infos(waiting)

    def set_limits(self, limits: Mapping[str, Any]) -> list[LimitInfo]:
        """Set capacities (`{"gpu": 1, "llm_tokens_per_min": 90000}`); 0 or None removes a limit.
        All or nothing: a bad value changes none."""
        self._writable()
        with self._lock:
            trial = ResourcePool(memory_mb=1, cpu=1)
            for name, value in limits.items():
                trial.set_limit(name, value)  # raises on a bad one before anything changes
            for name, value in limits.items():
                self.pool.set_limit(name, value)
            self._dispatch_locked(time.monotonic())
        return self.limits()

    def pressure(self) -> MemoryPressure:
        """The last memory pressure reading (see `check_resources`); read now if never read."""
        return self._pressure if self._pressure.available_mb is not None else self.check_resources()

    def check_resources(self) -> MemoryPressure:
        """Read available memory now, switch memory pressure on or off, and start what now fits
        (token buckets refill with time). The monitor calls this every interval."""
        available = self._available_memory()
        with self._lock:
            self._set_pressure_locked(available)
            self._pause_idle_locked()
            self._dispatch_locked(time.monotonic())
            return self._pressure

    def _pause_idle_locked(self) -> None:
        """With `pause_idle_under_pressure`: under memory pressure, pause running idle processes;
        when it ends, resume the ones it paused (not those a user paused). Runs from
        `check_resources` (the monitor's pace), never from inside a dispatch."""
        if not self._pause_idle:
            return
        if self._pressure.on:
            for p in list(self._live.values()):
                if (p.priority is Priority.IDLE and p.phase is Phase.RUNNING and not p.requests & REQ_PAUSE
                        and p.pid not in self._pressure_paused):
                    self._pressure_paused.add(p.pid)
                    self._pause_locked(p)
            return
        for pid in list(self._pressure_paused):
            self._pressure_paused.discard(pid)
            p = self._live.get(pid)
            if p is not None and (p.phase is Phase.PAUSED or (p.phase is Phase.RUNNING and p.requests & REQ_PAUSE)):
                self._resume_locked(p)

    # ------------------------------------------------------------------ spawning

    def _needs_for(self, t: Tool, needs: Mapping[str, Any] | None) -> tuple[dict[str, float], tuple[str, ...]]:
        """A new process's needs: the tool's defaults, overridden by `needs`; memory_mb, when
        neither gives it, predicted from the tool's recent runs (capped at the pool's capacity,
        so a prediction alone never makes a process impossible to run)."""
        merged = {**t.needs, **parse_needs(needs)} if needs else dict(t.needs)
        if "memory_mb" in merged or (needs and "memory_mb" in needs):
            return {k: v for k, v in merged.items() if v > 0}, ()
        runs = self._memory_runs.get(t.name)
        if runs is None and self.store is not None:
            loaded = self.store.tool_peak_memory(t.name, HISTORY_RUNS)  # newest first
            with self._lock:
                runs = self._memory_runs.setdefault(t.name, deque(reversed(loaded), maxlen=HISTORY_RUNS))
        predicted = predict_memory(runs) if runs else None
        if not predicted:
            return merged, ()
        cap = self.pool.limit("memory_mb")
        merged["memory_mb"] = round(min(predicted, cap) if cap is not None else predicted, 1)
        return merged, ("memory_mb",)

    def _record_run(self, p: Process) -> None:
        """A completed process's peak memory joins its tool's history. Lock held."""
        if p.peak_memory_mb is None:
            return
        runs = self._memory_runs.get(p.tool.name)
        if runs is None:
            if self.store is not None:
                return  # the first prediction loads the history from the store, this run included
            runs = self._memory_runs[p.tool.name] = deque(maxlen=HISTORY_RUNS)
        runs.append(p.peak_memory_mb)

    # ------------------------------------------------------------------ admission (lock held)

    def _admissible(self, head: Process, now: float) -> Process | None:
        """The process to start next: `head` if its needs fit, else the first of up to
        ADMISSION_LOOKAHEAD queued processes that fits once the needs of those ahead of it that
        have waited longer than the reservation window are held back. None if none fits."""
        if self._fits(head, None):
            return head
        window = self._ready.aging_interval or 5.0
        reserved: dict[str, float] = {}
        refill = math.inf
        for proc in self._ready.candidates(now, ADMISSION_LOOKAHEAD):
            if proc is not head and self._fits(proc, reserved):
                return proc
            if proc.blocked_on is not DEFERRED:
                if now - proc.ready_since >= window:
                    for name, amount in proc.needs.items():
                        if not proc.has_thread or name not in self.pool.buckets:  # tokens: first start only
                            reserved[name] = reserved.get(name, 0.0) + amount
                if not proc.has_thread and any(n in self.pool.buckets for n in proc.blocked_on):
                    refill = min(refill, self.pool.seconds_until(proc.needs))
        if refill < math.inf:
            self._wake_after(refill)
        return None

    def _fits(self, proc: Process, reserved: Mapping[str, float] | None) -> bool:
        if (self._pressure.on or self._degraded) and proc.priority <= Priority.LOW:  # (resilience: degraded mode)
            if proc.blocked_on is not DEFERRED:
                proc.blocked_on = DEFERRED
                proc.detail = ("deferred: memory pressure" if self._pressure.on
                               else f"deferred: degraded ({self._degraded[0]})")
            return False
        missing = self.pool.missing(proc.needs, first_start=not proc.has_thread, reserved=reserved)
        if missing:
            blocked = tuple(missing)
            if blocked != proc.blocked_on:
                proc.blocked_on = blocked
                proc.detail = "waiting for resources: " + ", ".join(blocked)
            return False
        return True

    def _acquire(self, proc: Process) -> None:
        proc.blocked_on = ()
        if proc.needs:
            self.pool.acquire(proc.needs, first_start=not proc.has_thread)
            proc.holds = True

    def _release(self, proc: Process) -> None:
        """The process stops running (paused, preempted, finished): its needs go back."""
        if proc.holds:
            proc.holds = False
            self.pool.release(proc.needs)

    def _slot_wanted(self, level: Priority, now: float) -> bool:
        """Does a queued process of at least `level` wait that could use a slot now? One
        waiting for resources or deferred by pressure neither preempts nor takes turns."""
        head = self._ready.peek(now)
        return head is not None and not head.blocked_on and self._ready.effective(head, now) >= level

    def _wake_after(self, seconds: float) -> None:
        """Dispatch again when a token bucket will have refilled enough (one timer at a time)."""
        at = time.monotonic() + min(max(seconds, 0.01), 60.0)
        if self._refill_at is not None and self._refill_at <= at:
            return
        self._refill_at = at
        timer = threading.Timer(at - time.monotonic(), self._refilled)
        timer.daemon = True
        timer.start()

    def _refilled(self) -> None:
        with self._lock:
            if self._refill_at is not None and time.monotonic() >= self._refill_at - 0.005:
                self._refill_at = None
            self._dispatch_locked(time.monotonic())

    # ------------------------------------------------------------------ memory pressure (lock held)

    def _maybe_read_pressure(self, now: float) -> None:
        """While dispatching: read available memory at most every PRESSURE_RECHECK seconds."""
        if now - self._pressure_read >= PRESSURE_RECHECK:
            self._set_pressure_locked(self._available_memory())

    def _set_pressure_locked(self, available: float) -> None:
        self._pressure_read = time.monotonic()
        old = self._pressure
        on = available < old.threshold_mb
        self._pressure = MemoryPressure(on, round(available, 1), old.threshold_mb)
        if on == old.on:
            return
        state = "on" if on else "off"
        log.warning("memory pressure %s: %.0f MB available, threshold %.0f MB", state, available, old.threshold_mb)
        self.bus.publish("system.memory_pressure", None,
                         {"state": state, "available_mb": round(available, 1), "threshold_mb": old.threshold_mb})
        self._refresh_degraded_locked(dispatch=False)  # memory pressure is a reason for degraded mode (resilience)
        if not on:
            for p in self._live.values():  # deferred processes beyond the look-ahead say so no longer
                if p.blocked_on is DEFERRED:
                    p.blocked_on = ()
                    p.detail = "queued"
