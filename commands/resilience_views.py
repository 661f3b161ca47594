"""Renderers for resilience: `breakers`, `health`, the `ps -l` attempt lines and the alerts for
stalls and degraded mode. Pure: snapshots in, rich renderables or plain text out."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from commands.terminal_safe import safe_text
from llmunix.models import AttemptInfo, Event, format_pid, short_duration
from llmunix.resilience.breakers import BreakerInfo
from llmunix.resilience.health import FAIL, OK, SKIP, WARN, HealthReport

BREAKER_COLUMNS = ("NAME", "STATE", "FAILURES", "TRIPS", "NEXT_PROBE", "LAST_ERROR")
BREAKER_STYLES = {"closed": "green", "open": "bold red", "half-open": "bold yellow"}
CHECK_MARKS = {OK: ("✓", "green"), WARN: ("!", "bold yellow"), FAIL: ("✗", "bold red"), SKIP: ("-", "dim")}
STATUS_STYLES = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}


def _next_probe(b: BreakerInfo, now: float) -> str:
    if b.state == "half-open":
        return f"probing ({format_pid(b.probe_pid)})" if b.probe_pid is not None else "due"
    if b.next_probe is None:
        return "-"
    left = b.next_probe - now
    return f"in {short_duration(left)}" if left > 0 else "due"


def _breaker_row(b: BreakerInfo, now: float) -> tuple[str, ...]:
    return (safe_text(b.name), b.state, f"{b.failures}/{b.threshold}", str(b.trips), _next_probe(b, now),
            safe_text(b.last_error or "-"))


def breakers_table(infos: Sequence[BreakerInfo], now: float | None = None) -> Table | Group | Text:
    now = time.time() if now is None else now
    if not infos:
        return Text("no circuit breakers yet (one is made for a tool when it first fails, and for a host "
                    "on its first call)", style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in BREAKER_COLUMNS:
        table.add_column(name.replace("_", " "), no_wrap=name != "LAST_ERROR")
    for b in infos:
        row = _breaker_row(b, now)
        table.add_row(Text(row[0], style="cyan"), Text(row[1], style=BREAKER_STYLES.get(b.state, "")), *row[2:])
    notes = [over_threshold_note(b) for b in infos if b.state == "closed" and b.failures >= b.threshold]
    if notes:
        return Group(table, *(Text(n, style="dim") for n in notes))
    return table


def over_threshold_note(b: BreakerInfo) -> str:
    """Why a closed breaker can show more failures than its threshold: the threshold was
    lowered after they happened (`set breaker_threshold`); a breaker opens on a failure, so this
    one opens on its next."""
    return (f"{safe_text(b.name)}: {b.failures} failures in a row, threshold since lowered to {b.threshold}: "
            f"opens at the next failure (or `breakers reset {safe_text(b.target)}`)")


def breakers_plain(infos: Sequence[BreakerInfo], now: float | None = None) -> str:
    """Whitespace-separated, header first; the last error (which has spaces) is the last field."""
    now = time.time() if now is None else now
    rows = [BREAKER_COLUMNS] + [tuple(f.replace(" ", "_") for f in _breaker_row(b, now)[:-1])
                                + (_breaker_row(b, now)[-1],) for b in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(BREAKER_COLUMNS) - 1)]
    return "\n".join("  ".join([*(f.ljust(widths[c]) for c, f in enumerate(r[:-1])), r[-1]]).rstrip() for r in rows)


def health_tree(report: HealthReport) -> Tree:
    root = Tree(Text.assemble(("Health: ", "bold"), (report.status, STATUS_STYLES[report.status])))
    for c in report.checks:
        mark, style = CHECK_MARKS[c.status]
        root.add(Text.assemble((f"[{mark}] ", style), (c.name, "bold"), f": {safe_text(c.detail)}"))
    if report.degraded:
        root.add(Text.assemble(("degraded: ", "bold yellow"), "; ".join(report.degraded),
                               " (low and idle work deferred)"))
    return root


def health_plain(report: HealthReport) -> str:
    rows = [("CHECK", "STATUS", "DETAIL")] + [(c.name.replace(" ", "_"), c.status, safe_text(c.detail))
                                             for c in report.checks]
    widths = [max(len(r[c]) for r in rows) for c in range(2)]
    lines = [f"health: {report.status}"]
    lines += ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]]).rstrip() for r in rows]
    if report.degraded:
        lines.append("degraded: " + "; ".join(report.degraded))
    return "\n".join(lines)


def attempt_lines(a: AttemptInfo) -> list[str]:
    """`ps -l`'s lines for a process with a retry or restart policy: "Attempt: 2 of 5, next at
    14:03:07", "Restarts: 3 of 10 (on-failure)". The next time goes with the wait in progress
    (a retry's attempt is above 1; a restart starts again at attempt 1)."""
    nxt = f", next at {time.strftime('%H:%M:%S', time.localtime(a.next_attempt))}" if a.next_attempt else ""
    lines = []
    if a.max_attempts > 1:
        lines.append(f"Attempt: {a.attempt} of {a.max_attempts}" + (nxt if a.attempt > 1 else ""))
    if a.max_restarts is not None:
        lines.append(f"Restarts: {a.restarts} of {a.max_restarts} ({a.restart})" + (nxt if a.attempt == 1 else ""))
    return lines


ALERT_TYPES = ("process.stalled", "system.degraded")
ALERT_EVENTS = "|".join(ALERT_TYPES)


def alert_text(event: Event) -> Text:
    """The shell's alert line for a stall or a change of degraded mode."""
    d = event.data
    if event.type == "process.stalled":
        return Text.assemble((f"[{format_pid(event.pid or 0)}] ", "cyan"), f"{safe_text(d.get('name', ''))} ",
                             ("stalled", "bold yellow"), f": no progress for {short_duration(d.get('idle', 0))}"
                             + (f" ({d.get('action')})" if d.get("action") not in (None, "alert") else ""))
    if d.get("state") == "on":
        return Text.assemble(("degraded: ", "bold yellow"), safe_text("; ".join(d.get("reasons") or ())),
                             " (low and idle work deferred)")
    return Text.assemble(("degraded mode over", "bold green"), f" (was: {safe_text('; '.join(d.get('was') or ()))})")
