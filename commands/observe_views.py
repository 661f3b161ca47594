"""Pure renderers for `events` and `audit`: snapshots in, rich text or plain lines out.

Events are drawn one line each, with fixed-width columns, so a listing and a `--follow` stream
look the same and a stream never has to know what comes next. Plain lines are whitespace-
separated with the free-form part last: `events | awk '{print $3}'` prints the types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from commands.terminal_safe import safe_text
from commands.views import STATE_STYLES, seconds_text
from llmunix.models import Event, format_pid, iso_time
from llmunix.observe.analytics import EventStats
from llmunix.observe.audit import AuditEntry
from llmunix.resilience.restart import short_duration

EVENT_COLUMNS = ("TIME", "PID", "TYPE", "DETAILS")
AUDIT_COLUMNS = ("TIME", "USER", "KIND", "TARGET", "STATUS", "COMMAND")
TYPE_WIDTH = 24

EVENT_STYLES = {
    "process.completed": STATE_STYLES["Completed"],
    "process.failed": STATE_STYLES["Failed"],
    "process.cancelled": STATE_STYLES["Cancelled"],
    "process.interrupted": STATE_STYLES["Interrupted"],
    "process.paused": STATE_STYLES["Paused"],
    "process.preempted": STATE_STYLES["Preempted"],
    "process.started": STATE_STYLES["Running"],
    "process.unkillable": "bold red",
    "process.kill_requested": "red",
    "process.log": "dim",
    "process.progress": "dim",
    "shell.command": "bold",
}


def _value(v: Any) -> str:
    """One field value with no spaces unless quoted: `sleep`, `"fetching 2 of 3"`, `{"a":1}`."""
    if isinstance(v, str):
        return v if v and not any(c.isspace() or c in "\"'=" for c in v) else json.dumps(v, ensure_ascii=False)
    return json.dumps(v, default=repr, ensure_ascii=False, separators=(",", ":"))


def event_details(data: Mapping[str, Any]) -> str:
    """`key=value` pairs, the name first; empty values left out; nothing that could drive a
    terminal (`safe_text`: quoted values are already escaped by JSON, bare ones are not)."""
    items = sorted(data.items(), key=lambda kv: kv[0] != "name")
    return safe_text(" ".join(f"{k}={_value(v)}" for k, v in items
                              if v is not None and v != "" and v != [] and v != {} and v is not False))


def _event_fields(e: Event) -> tuple[str, str, str, str]:
    return (iso_time(e.time), "-" if e.pid is None else format_pid(e.pid), safe_text(e.type), event_details(e.data))


def event_plain(e: Event) -> str:
    t, pid, type_, details = _event_fields(e)
    return f"{t}  {pid:<3}  {type_:<{TYPE_WIDTH}}  {details}".rstrip()


def event_line(e: Event) -> Text:
    t, pid, type_, details = _event_fields(e)
    return Text.assemble((t.replace("T", " "), "dim"), "  ", (f"{pid:<3}", "cyan"), "  ",
                         (f"{type_:<{TYPE_WIDTH}}", EVENT_STYLES.get(type_, "")), "  ", details)


def events_header() -> str:
    return f"{'TIME':<23}  {'PID':<3}  {'TYPE':<{TYPE_WIDTH}}  DETAILS"


def events_plain(events: Iterable[Event]) -> str:
    return "\n".join([events_header(), *(event_plain(e) for e in events)])


def events_header_rich() -> Text:
    return Text(events_header(), style="bold")


def events_rich(events: Sequence[Event]) -> Group | Text:
    """The terminal face: the same header and columns as the plain one, coloured."""
    if not events:
        return Text("no events", style="dim")
    return Group(events_header_rich(), *(event_line(e) for e in events))


def event_record(e: Event) -> dict[str, Any]:
    return e.to_dict()


def _audit_fields(a: AuditEntry) -> tuple[str, ...]:
    return (iso_time(a.time), safe_text(a.user or "-"), a.kind, "-" if a.target is None else format_pid(a.target),
            "-" if a.status is None else str(a.status), safe_text(a.command))


def audit_plain(entries: Sequence[AuditEntry]) -> str:
    """Aligned columns, header first; the command (which may hold spaces) last."""
    rows = [AUDIT_COLUMNS, *(_audit_fields(a) for a in entries)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(AUDIT_COLUMNS) - 1)]
    return "\n".join("  ".join([*(r[c].ljust(widths[c]) for c in range(len(widths))), r[-1]]).rstrip()
                     for r in rows)


def audit_table(entries: Sequence[AuditEntry]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in AUDIT_COLUMNS:
        table.add_column(col, no_wrap=col != "COMMAND")
    for a in entries:
        t, user, kind, target, status, command = _audit_fields(a)
        table.add_row(Text(t.replace("T", " "), style="dim"), user, kind, Text(target, style="cyan"),
                      Text(status, style="bold red" if a.status else ""), command)
    if not entries:
        table.caption = "no audit records"
    return table


def audit_record(a: AuditEntry) -> dict[str, Any]:
    return a.to_dict()


# ------------------------------------------------------------------ `events stats`


def _stats_sections(st: EventStats) -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]], str]]:
    """(title, columns, rows, what to say when empty) of each section; the free-form column last."""
    def secs(x: float | None) -> str:
        return "-" if x is None else seconds_text(x)

    def pid(p: int | None) -> str:
        return "-" if p is None else format_pid(p)

    failure_cols = ("COUNT", "LAST", "PATTERN")
    return [
        ("Rates by type", ("TYPE", "COUNT", "PER_MIN"),
         [(t.type, f"{t.count:,}", f"{t.per_minute:.2f}") for t in st.types], "no events in the window"),
        ("Failures by tool", ("TOOL", *failure_cols),
         [(f.key, str(f.count), pid(f.last_pid), safe_text(f.pattern)) for f in st.failures_by_tool], "no failures"),
        ("Failures by host", ("HOST", *failure_cols),
         [(f.key, str(f.count), pid(f.last_pid), safe_text(f.pattern)) for f in st.failures_by_host], "no failures"),
        ("Circuits opened", ("HOST", "COUNT"), [(h, str(n)) for h, n in st.circuits], "no circuit opened"),
        (f"Bursts ({short_duration(st.bucket)} buckets, mean {st.mean_per_bucket:.1f} events)",
         ("START", "EVENTS", "RATIO", "MOSTLY"),
         [(iso_time(b.start)[:19], str(b.count), f"{b.ratio:.0f}x", f"{b.top_type} ({b.top_count})")
          for b in st.bursts], "no bursts"),
        ("Slowest tools", ("TOOL", "RUNS", "MEAN", "MAX", "PID"),
         [(safe_text(s.name), str(s.runs), secs(s.mean), secs(s.max), pid(s.max_pid)) for s in st.slowest_tools],
         "no finished processes"),
        ("Slowest steps", ("STEP", "RUNS", "MEAN", "MAX", "PID"),
         [(safe_text(s.name), str(s.runs), secs(s.mean), secs(s.max), pid(s.max_pid)) for s in st.slowest_steps],
         "no workflow steps"),
    ]


def stats_headline(st: EventStats) -> str:
    return (f"Events {iso_time(st.since)[:19]} to {iso_time(st.until)[:19]}: {st.total:,} events, "
            f"{st.total / st.minutes:.1f} a minute")


def stats_plain(st: EventStats) -> str:
    """Sections of aligned columns (header first), separated by a blank line; a title line
    (`# Failures by tool`) before each, so `grep -A` finds one."""
    out = [stats_headline(st)]
    for title, cols, rows, empty in _stats_sections(st):
        out += ["", f"# {title}"]
        if not rows:
            out.append(empty)
            continue
        table = [cols, *rows]
        widths = [max(len(r[c]) for r in table) for c in range(len(cols) - 1)]
        out += ["  ".join([*(r[c].ljust(widths[c]) for c in range(len(widths))), r[-1]]).rstrip() for r in table]
    return "\n".join(out)


def stats_rich(st: EventStats) -> Group:
    parts: list[Any] = [Text(stats_headline(st), style="bold")]
    for title, cols, rows, empty in _stats_sections(st):
        table = Table(title=title, title_justify="left", title_style="bold", box=None, header_style="bold",
                      pad_edge=False)
        for col in cols:
            table.add_column(col, no_wrap=col not in ("PATTERN", "MOSTLY"),
                             justify="right" if col in ("COUNT", "PER_MIN", "EVENTS", "RATIO", "RUNS", "MEAN", "MAX")
                             else "left")
        for row in rows:
            table.add_row(*row)
        if not rows:
            table.caption = empty
        parts += [Text(""), table]
    return Group(*parts)
