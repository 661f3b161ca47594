"""`max_running = "auto"`: the number of slots follows the machine's CPU and memory headroom.

The policy, read after each of the monitor's samples of the whole machine (`SystemSample`):

* **Shrink** when the machine is busy: CPU at or above `cpu_high` (percent of all cores), or
  available memory under twice the memory-pressure threshold. By a quarter (at least one slot):
  back off fast, as TCP does.
* **Grow** when there is room *and* work waits for it: CPU under `cpu_low`, available memory at
  least four times the threshold, and a process waits in the ready queue while every slot is
  taken. By one slot: creep up, watching the effect.
* Otherwise **hold**. Between `cpu_low` and `cpu_high` nothing changes (a dead band), and no
  change is made until `samples` consecutive readings agree (hysteresis): a one-second burst
  moves nothing, and after a change the count starts again, so it never moves more than once
  per `samples` readings.
* Always within `[minimum, maximum]` (default 1 and the larger of 8 and 4 per CPU: LLM work
  mostly waits on the network, so slots outnumber cores). Shrinking never stops a running
  process: fewer new ones start until the running ones fit.

Bodies on a Dask cluster cost this machine one proxy thread each, so with the dask backend the
rule grows the slots as long as remote work waits and this machine has room, up to `maximum`.

State (guarded by the table lock): `enabled`, `streak` (the vote repeated and how many times),
`reason` and `changed_at` (the last decision and change, for `limits` and `health`). Each change
goes through `ProcessTable.set_max_running` (which dispatches at once) and is published as a
`system.max_running` event.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable
    from llmunix.monitor import SystemSample

log = logging.getLogger("llmunix.autoscale")

AUTO = "auto"
GROW, SHRINK, HOLD = "grow", "shrink", "hold"


@dataclass(frozen=True, slots=True)
class AutoSettings:
    """The bounds and thresholds of `max_running = "auto"` (`[max_running_auto]` in config.toml)."""

    minimum: int = 1
    maximum: int | None = None  # None: max(8, 4 per CPU)
    cpu_low: float = 60.0
    cpu_high: float = 85.0
    samples: int = 3

    def __post_init__(self) -> None:
        if self.minimum < 1:
            raise LlmunixError("max_running_auto.minimum must be at least 1")
        if self.maximum is not None and self.maximum < self.minimum:
            raise LlmunixError(f"max_running_auto.maximum ({self.maximum}) is below its minimum ({self.minimum})")
        if not 0 <= self.cpu_low < self.cpu_high <= 100:
            raise LlmunixError("max_running_auto needs 0 <= cpu_low < cpu_high <= 100 (percent of all cores)")
        if self.samples < 1:
            raise LlmunixError("max_running_auto.samples must be at least 1")

    @property
    def ceiling(self) -> int:
        return self.maximum if self.maximum is not None else max(8, 4 * (os.cpu_count() or 1), self.minimum)


@dataclass(frozen=True, slots=True)
class AutoInfo:
    """What `limits` and `health` show about max_running."""

    auto: bool
    value: int
    minimum: int
    maximum: int
    reason: str  # the last decision, in words
    changed_at: float | None  # time.time() of the last change it made

    def line(self) -> str:
        if not self.auto:
            return f"max_running: {self.value} (fixed; `set max_running auto` follows CPU and memory)"
        return f"max_running: auto, now {self.value} ({self.minimum} to {self.maximum}); {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"setting": AUTO if self.auto else self.value, "value": self.value, "minimum": self.minimum,
                "maximum": self.maximum, "reason": self.reason if self.auto else None,
                "changed_at": self.changed_at}


def vote(sample: SystemSample, threshold_mb: float, waiting: bool, s: AutoSettings) -> tuple[str, str]:
    """What one reading says (GROW, SHRINK or HOLD) and why. Pure."""
    cpu = f"CPU {sample.cpu_percent:.0f}%"
    mem = f"{_mb(sample.memory_available_mb)} available"
    if sample.memory_available_mb < 2 * threshold_mb:  # first: running out of memory is the worse
        return SHRINK, f"{mem} (under twice the pressure threshold, {_mb(threshold_mb)}), {cpu}"
    if sample.cpu_percent >= s.cpu_high:
        return SHRINK, f"{cpu} (at or above {s.cpu_high:g}%), {mem}"
    if sample.cpu_percent >= s.cpu_low:
        return HOLD, f"{cpu} (between {s.cpu_low:g}% and {s.cpu_high:g}%), {mem}"
    if sample.memory_available_mb < 4 * threshold_mb:
        return HOLD, f"{mem} (under four times the pressure threshold), {cpu}"
    if not waiting:
        return HOLD, f"{cpu}, {mem}; no process waits for a slot"
    return GROW, f"{cpu} (under {s.cpu_low:g}%), {mem}, processes wait for a slot"


def step(current: int, direction: str, s: AutoSettings) -> int:
    """The next max_running: one more, or a quarter fewer (at least one), within the bounds."""
    if direction == GROW:
        return min(s.ceiling, current + 1)
    if direction == SHRINK:
        return max(s.minimum, current - max(1, current // 4))
    return current


class Autoscaler:
    """See the module docstring. `tick` is a monitor listener; `observe` applies one reading."""

    def __init__(self, table: ProcessTable, settings: AutoSettings | None = None,
                 reading: Callable[[], SystemSample | None] = lambda: None) -> None:
        self.table = table
        self.settings = settings or AutoSettings()
        self.reading = reading  # the machine's newest sample (the monitor's)
        self.enabled = False
        self.streak: tuple[str, int] = (HOLD, 0)
        self.reason = "no reading yet (the monitor samples the machine every monitor_interval)"
        self.changed_at: float | None = None

    def enable(self, on: bool) -> None:
        """Follow the machine (on), or stop and leave max_running where it is (off)."""
        with self.table.lock:
            if on and not self.enabled:
                self.streak = (HOLD, 0)
                start = min(max(self.table.scheduler.max_running, self.settings.minimum), self.settings.ceiling)
                if start != self.table.scheduler.max_running:
                    self.reason = f"started at {start} (within {self.settings.minimum} to {self.settings.ceiling})"
                    self._set_locked(start, self.reason)
            self.enabled = on

    def tick(self) -> None:
        """After each monitor round: apply the machine's newest reading."""
        sample = self.reading() if self.enabled else None
        if sample is not None:
            self.observe(sample)

    def observe(self, sample: SystemSample) -> int:
        """Apply one reading of the machine; returns max_running after it."""
        with self.table.lock:
            sched = self.table.scheduler
            current = sched.max_running
            if not self.enabled:
                return current
            waiting = len(sched.ready) > 0 and len(sched.running) >= current
            direction, why = vote(sample, sched.pressure.threshold_mb, waiting, self.settings)
            same, count = self.streak
            count = count + 1 if same == direction else 1
            self.streak = (direction, count)
            target = step(current, direction, self.settings)
            if direction == HOLD or target == current:
                bound = "" if direction == HOLD else f" (at its {'maximum' if direction == GROW else 'minimum'})"
                self.reason = f"held at {current}{bound}: {why}"
                return current
            if count < self.settings.samples:
                self.reason = (f"held at {current}: {why} ({count} of {self.settings.samples} readings before it "
                               f"{'grows' if direction == GROW else 'shrinks'})")
                return current
            self.streak = (HOLD, 0)
            verb = "grew" if direction == GROW else "shrank"
            self.reason = f"{verb} from {current} to {target} at {time.strftime('%H:%M:%S')}: {why}"
            self._set_locked(target, self.reason, previous=current)
            return target

    def _set_locked(self, n: int, reason: str, previous: int | None = None) -> None:
        self.table.set_max_running_locked(n)
        self.changed_at = time.time()
        self.table.bus.publish("system.max_running", None, {
            "value": n, "previous": previous, "reason": reason, "auto": True})
        log.info("max_running %s", reason)

    def info(self) -> AutoInfo:
        with self.table.lock:
            s = self.settings
            return AutoInfo(self.enabled, self.table.scheduler.max_running, s.minimum, s.ceiling,
                            self.reason, self.changed_at)


def _mb(value: float) -> str:
    return f"{value / 1000:.1f} GB" if value >= 1000 else f"{value:.0f} MB"
