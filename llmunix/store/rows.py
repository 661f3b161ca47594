"""How the store's rows become snapshots again (`ps` rows and whole `ProcessInfo`s)."""

from __future__ import annotations

import json
import sqlite3
from types import MappingProxyType
from typing import Any

from llmunix.models import (
    EMPTY,
    PRIORITY_LABELS,
    Context,
    Phase,
    Priority,
    ProcessInfo,
    ProcessKind,
    Progress,
    PsRow,
    Resources,
    shown_state,
)

__all__ = ["row_to_info", "row_to_ps"]

_PHASES = {"done": Phase.DONE, "interrupted": Phase.DONE} | {p.value: p for p in Phase}
_LABELS = {label: label for label in PRIORITY_LABELS.values()}


def row_to_ps(row: tuple[Any, ...]) -> PsRow:
    """A `ps` row of a stored process from `Store.ps_rows()`'s columns (no full snapshot: a cold
    `ps -a` builds 100,000 of these)."""
    pid, name, tool, state, phase_text, detail, priority, runtime, progress = row
    phase = _PHASES.get(phase_text, Phase.DONE)
    state = state or "Pending"
    percentage, step = None, 0
    if progress:
        values = json.loads(progress)
        percentage, step = values.get("percentage"), values.get("step") or 0
        if state == "Completed" and values.get("total"):  # as the kernel shows a completed process
            percentage, step = 100.0, values["total"]
    label = _LABELS.get(priority) or PRIORITY_LABELS[Priority.parse(priority or "normal")]
    return tuple.__new__(PsRow, (pid, name or tool, shown_state(phase, state, detail or ""), label,
                                 int(runtime or 0), None, None, percentage, step, state, phase))


def row_to_info(row: sqlite3.Row) -> ProcessInfo:
    """A snapshot of a process from an earlier session (history is in the events table)."""
    progress = json.loads(row["progress"]) if row["progress"] else {}
    if row["state"] == "Completed" and progress.get("total"):  # as the kernel shows a completed process
        progress.update(step=progress["total"], percentage=100.0)
    phase = Phase.DONE if row["phase"] in ("done", "interrupted") else Phase(row["phase"])
    output = json.loads(row["output"]) if row["output"] else None
    started, finished = row["started"], row["finished"]
    return ProcessInfo(
        pid=row["pid"],
        name=row["name"] or row["tool"],
        tool_name=row["tool"],
        kind=ProcessKind(row["kind"] or "tool"),
        phase=phase,
        state=row["state"] or "Pending",
        detail=row["detail"] or "",
        priority=Priority.parse(row["priority"] or "normal"),
        effective_priority=Priority.parse(row["priority"] or "normal"),
        owner=row["owner"] or "",
        parent=row["parent"],
        after=tuple(json.loads(row["after"] or "[]")),
        created=row["created"] or 0.0,
        started=started,
        finished=finished,
        runtime=row["runtime"] or 0.0,
        exit_code=row["exit_code"],
        error=row["error"],
        output=output,
        progress=Progress(progress.get("step") or 0, progress.get("total"), progress.get("percentage"), None,
                          progress.get("message") or ""),
        resources=Resources(),
        context=Context(row["cwd"] or "", MappingProxyType(json.loads(row["params"] or "{}")), EMPTY),
        history=(),
        worker=row["worker"] if "worker" in row.keys() else None,  # noqa: SIM118 (a Row: 'in' tests values)
    )
