"""`health`: checks of what llmunix needs to keep working, and the verdict.

Each check is ok, warn (degraded: llmunix copes, but you should know) or fail (unhealthy: it
needs a person), or skip (does not apply here). The report is `unhealthy` if any check failed,
else `degraded` if any warned or degraded mode is on, else `healthy`. `health` exits non-zero
only when unhealthy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmunix.models import format_memory, iso_time

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
DEFAULT_MIN_DISK_MB = 100.0  # less free space than this in the home is unhealthy
DISK_WARN_FACTOR = 5  # less than this many times the minimum is degraded


@dataclass(frozen=True, slots=True)
class HealthCheck:
    name: str
    status: str  # ok, warn, fail, skip
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HealthReport:
    checks: tuple[HealthCheck, ...]
    degraded: tuple[str, ...]  # why degraded mode is on (empty: it is off)
    time: float

    @property
    def status(self) -> str:
        if any(c.status == FAIL for c in self.checks):
            return "unhealthy"
        if self.degraded or any(c.status == WARN for c in self.checks):
            return "degraded"
        return "healthy"

    @property
    def healthy(self) -> bool:
        """True unless a check failed (degraded counts as healthy: llmunix is coping)."""
        return self.status != "unhealthy"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "time": iso_time(self.time), "degraded": list(self.degraded),
                "checks": [c.to_dict() for c in self.checks]}


def check_disk(path: Path | None, min_mb: float) -> HealthCheck:
    """Free space where the home (state database, logs, run files) lives."""
    where = path if path is not None else Path.cwd()
    try:
        free = shutil.disk_usage(where).free / 1e6
    except OSError as exc:
        return HealthCheck("disk space", FAIL, f"cannot read free space of {where}: {exc.strerror}")
    text = f"{format_memory(free)} free in {where}"
    if free < min_mb:
        return HealthCheck("disk space", FAIL,
                           f"{text}; below the minimum of {format_memory(min_mb)} (health_min_disk_mb)")
    if free < DISK_WARN_FACTOR * min_mb:
        return HealthCheck("disk space", WARN, f"{text}; getting close to the minimum of {format_memory(min_mb)}")
    return HealthCheck("disk space", OK, text)


def check_memory(on: bool, available_mb: float | None, threshold_mb: float) -> HealthCheck:
    if available_mb is None:
        return HealthCheck("memory", SKIP, "not read")
    text = f"{format_memory(available_mb)} available (pressure below {format_memory(threshold_mb)})"
    if on:
        return HealthCheck("memory", WARN, f"under pressure: {text}; low and idle work deferred")
    return HealthCheck("memory", OK, text)


def report(checks: list[HealthCheck], degraded: tuple[str, ...]) -> HealthReport:
    return HealthReport(tuple(checks), degraded, time.time())
