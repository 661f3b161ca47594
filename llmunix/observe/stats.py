"""Per-tool run statistics (`stats`): how often each tool ran, how it ended, how long it took.

The input is one `(tool, outcome, duration)` per finished run — from the store's `tool_runs`
table, or from this session's processes when there is no store. Durations are summarised over
*completed* runs only: a run cancelled after a second says nothing about how long the tool takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolStats:
    tool: str
    runs: int
    completed: int
    failed: int
    cancelled: int
    mean_duration: float | None  # seconds, over completed runs (None: no completed run)
    p95_duration: float | None

    @property
    def success_rate(self) -> float | None:
        """Completed runs as a percentage of all runs (None: no runs)."""
        return 100.0 * self.completed / self.runs if self.runs else None

    def to_dict(self) -> dict[str, object]:
        rate = self.success_rate
        return {
            "tool": self.tool, "runs": self.runs, "completed": self.completed, "failed": self.failed,
            "cancelled": self.cancelled, "success_rate": None if rate is None else round(rate, 1),
            "mean_duration": _round(self.mean_duration), "p95_duration": _round(self.p95_duration),
        }


def summarize_runs(runs: Iterable[tuple[str, str, float | None]]) -> list[ToolStats]:
    """One `ToolStats` per tool, by tool name."""
    outcomes: dict[str, dict[str, int]] = {}
    durations: dict[str, list[float]] = {}
    for tool, outcome, duration in runs:
        counts = outcomes.setdefault(tool, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        done = durations.setdefault(tool, [])
        if outcome == "Completed" and duration is not None:
            done.append(float(duration))
    return [_stats(tool, outcomes[tool], durations[tool]) for tool in sorted(outcomes)]


def empty_stats(tool: str) -> ToolStats:
    return ToolStats(tool, 0, 0, 0, 0, None, None)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `pct`% of values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _stats(tool: str, counts: dict[str, int], durations: list[float]) -> ToolStats:
    return ToolStats(
        tool=tool,
        runs=sum(counts.values()),
        completed=counts.get("Completed", 0),
        failed=counts.get("Failed", 0),
        cancelled=counts.get("Cancelled", 0),
        mean_duration=sum(durations) / len(durations) if durations else None,
        p95_duration=percentile(durations, 95),
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
