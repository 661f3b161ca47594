"""Renderers for `limits`: the resource pool, the memory pressure reading, max_running (fixed,
or auto with its last decision) and the LLM endpoints. Pure: snapshots in, rich renderables or
plain text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from commands.terminal_safe import safe_text
from llmunix.autoscale import AutoInfo
from llmunix.pool import LimitInfo, MemoryPressure, fmt_amount

if TYPE_CHECKING:
    from llmunix.agents.endpoints import EndpointInfo

COLUMNS = ("RESOURCE", "CAPACITY", "IN_USE", "FREE", "WAITING")
ENDPOINT_COLUMNS = ("ENDPOINT", "IN_FLIGHT", "WAITING", "REQUESTS/MIN", "LEFT", "TOKENS/MIN", "LEFT", "REQUESTS")


def _rate(limit: float | None, level: float | None) -> tuple[str, str]:
    """A bucket as (`60/min`, its level `41.5`), or (`unlimited`, `-`)."""
    return ("unlimited", "-") if limit is None else (f"{fmt_amount(limit)}/min", fmt_amount(level or 0))


def endpoint_row(e: EndpointInfo) -> tuple[str, ...]:
    flight = f"{e.in_flight}/{e.limits.max_concurrent}" if e.limits.max_concurrent is not None else str(e.in_flight)
    waiting = str(e.waiting) + (f" (held {e.held_for:.0f}s)" if e.held_for else "")
    return (safe_text(e.key), flight, waiting, *_rate(e.limits.requests_per_min, e.requests_level),
            *_rate(e.limits.tokens_per_min, e.tokens_level), str(e.requests))


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


def limits_table(infos: Sequence[LimitInfo], pressure: MemoryPressure, slots: AutoInfo,
                 endpoints: Sequence[EndpointInfo] = ()) -> Group:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in COLUMNS:
        table.add_column(name.replace("_", " "), no_wrap=True, justify="left" if name == "RESOURCE" else "right")
    for i in infos:
        row = _row(i)
        table.add_row(Text(row[0], style="cyan"), *row[1:4],
                      Text(row[4], style="bold yellow" if i.waiting else ""))
    parts = [table, Text(pressure_line(pressure), style="bold red" if pressure.on else "dim"),
             Text(slots.line(), style="cyan" if slots.auto else "dim")]
    if endpoints:
        eps = Table(box=None, header_style="bold", pad_edge=False)
        for name in ENDPOINT_COLUMNS:
            eps.add_column(name, no_wrap=name != "ENDPOINT", justify="left" if name == "ENDPOINT" else "right")
        for e in endpoints:
            row = endpoint_row(e)
            eps.add_row(Text(row[0], style="cyan"), row[1], Text(row[2], style="bold yellow" if e.waiting else ""),
                        *row[3:])
        parts += [Text(""), eps]
    return Group(*parts)


def limits_plain(infos: Sequence[LimitInfo], pressure: MemoryPressure, slots: AutoInfo,
                 endpoints: Sequence[EndpointInfo] = ()) -> str:
    rows = [COLUMNS] + [tuple(f.replace(" ", "") for f in _row(i)) for i in infos]
    lines = [*_columns(rows), pressure_line(pressure), slots.line()]
    if endpoints:
        lines += ["", *_columns([ENDPOINT_COLUMNS, *(tuple("_".join(f.split()) for f in endpoint_row(e))
                                                      for e in endpoints)])]
    return "\n".join(lines)


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(f.ljust(widths[c]) for c, f in enumerate(r)).rstrip() for r in rows]
