"""Renderers for `limits`: the resource pool, the memory pressure reading and max_running (fixed,
or auto with its last decision). Pure: snapshots in, rich renderables or plain text out."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from llmunix.autoscale import AutoInfo
from llmunix.pool import LimitInfo, MemoryPressure, fmt_amount

COLUMNS = ("RESOURCE", "CAPACITY", "IN_USE", "FREE", "WAITING")


def _row(i: LimitInfo) -> tuple[str, ...]:
    if i.rate:
        capacity = "unlimited" if i.capacity is None else f"{fmt_amount(i.capacity)}/min"
        free = "unlimited" if i.level is None else fmt_amount(round(i.level, 1))  # the bucket's level
        return i.name, capacity, "-", free, str(i.waiting)
    used = "-" if i.in_use is None else fmt_amount(round(i.in_use, 1))
    free = "unlimited" if i.free is None else fmt_amount(round(i.free, 1))
    return i.name, fmt_amount(i.capacity), used, free, str(i.waiting)


def pressure_line(p: MemoryPressure) -> str:
    available = "not read yet" if p.available_mb is None else f"{fmt_amount(round(p.available_mb))} MB available"
    state = "ON (low and idle work deferred)" if p.on else "off"
    return f"memory pressure: {state}; {available}, threshold {fmt_amount(round(p.threshold_mb))} MB"


def limits_table(infos: Sequence[LimitInfo], pressure: MemoryPressure, slots: AutoInfo) -> Group:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in COLUMNS:
        table.add_column(name.replace("_", " "), no_wrap=True, justify="left" if name == "RESOURCE" else "right")
    for i in infos:
        row = _row(i)
        table.add_row(Text(row[0], style="cyan"), *row[1:4],
                      Text(row[4], style="bold yellow" if i.waiting else ""))
    return Group(table, Text(pressure_line(pressure), style="bold red" if pressure.on else "dim"),
                 Text(slots.line(), style="cyan" if slots.auto else "dim"))


def limits_plain(infos: Sequence[LimitInfo], pressure: MemoryPressure, slots: AutoInfo) -> str:
    rows = [COLUMNS] + [tuple(f.replace(" ", "") for f in _row(i)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    lines = ["  ".join(f.ljust(widths[c]) for c, f in enumerate(r)).rstrip() for r in rows]
    return "\n".join([*lines, pressure_line(pressure), slots.line()])
