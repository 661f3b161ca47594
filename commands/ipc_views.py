"""Pure renderers for the communication commands (`mailbox`, `locks`, `shared`, `bus`): snapshots
in, rich renderables or plain text out. Plain listings are aligned, whitespace-separated columns
with a header line and the free-form column (a body, a value, a detail) last."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from llmunix.ipc.bus import SubscriptionStats
from llmunix.ipc.deadlock import Deadlock
from llmunix.ipc.messages import MessageInfo
from llmunix.ipc.service import LocksInfo
from llmunix.ipc.shared import BufferInfo, SharedEntry
from llmunix.ipc.sync import PrimitiveInfo
from llmunix.models import format_duration, format_pid
from llmunix.observe.queries import BusInfo

MAILBOX_COLUMNS = ("ID", "FROM", "TYPE", "TOPIC", "AGE", "STATE", "FLAGS", "BODY")
LOCK_COLUMNS = ("NAME", "KIND", "STATE", "HOLDERS", "WAITERS")
SHARED_COLUMNS = ("KEY", "VERSION", "WRITER", "AGE", "VALUE")
BUFFER_COLUMNS = ("NAME", "SIZE", "USERS", "PATH")
BUS_COLUMNS = ("ID", "PATTERN", "PID", "MODE", "QUEUED", "MAX", "DELIVERED", "DROPPED", "COALESCED", "CALLBACK")
BODY_WIDTH = 60


def compact(value: Any, width: int | None = BODY_WIDTH) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def plain_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, header first, the last column free-form (it may hold spaces)."""
    table = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    return "\n".join("  ".join([*(r[c].ljust(widths[c]) for c in range(len(widths))), r[-1]]).rstrip()
                     for r in table)


def _table(columns: Sequence[str], *, caption: str | None = None) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in columns:
        table.add_column(col, no_wrap=col not in ("BODY", "VALUE", "WAITERS", "PATH"),
                         justify="right" if col in ("VERSION", "SIZE", "QUEUED", "MAX", "DELIVERED", "DROPPED",
                                                    "COALESCED") else "left")
    table.caption = caption
    return table


def _pid(pid: int | None) -> str:
    return "-" if pid is None else format_pid(pid)


# ---------------------------------------------------------------------------- mailbox


def _message_row(m: MessageInfo, now: float) -> tuple[str, ...]:
    flags = ("P" if m.persistent else "") + ("S" if m.sensitive else "")
    return (m.id, _pid(m.sender) if m.sender is not None else "shell", m.type, m.topic or "-",
            format_duration(now - m.sent), m.state, flags or "-",
            "<sensitive>" if m.sensitive else compact(m.body, None))


def mailbox_plain(messages: Sequence[MessageInfo], now: float) -> str:
    return plain_columns(MAILBOX_COLUMNS, [_message_row(m, now) for m in messages])


def mailbox_table(pid: int, messages: Sequence[MessageInfo], now: float) -> Table:
    table = _table(MAILBOX_COLUMNS, caption=None if messages else f"no messages waiting for {format_pid(pid)}")
    for m in messages:
        row = _message_row(m, now)
        body = Text("<sensitive>", style="dim italic") if m.sensitive else Text(compact(m.body))
        table.add_row(Text(row[0], style="dim"), Text(row[1], style="cyan"), row[2], row[3], row[4],
                      Text(row[5], style="yellow" if m.state == "unacked" else ""), row[6], body)
    return table


# ---------------------------------------------------------------------------- locks


def _holders(p: PrimitiveInfo) -> str:
    if not p.holders:
        return "-"
    return ",".join(format_pid(h.pid) + (f"({h.mode})" if p.kind == "rwlock" else "")
                    + (f"x{h.count}" if h.count > 1 else "") for h in p.holders)


def _waiters(p: PrimitiveInfo, now: float) -> str:
    if not p.waiters:
        return "-"
    return ", ".join(f"{format_pid(w.pid)}{'(' + w.mode + ')' if p.kind == 'rwlock' else ''} "
                     f"{format_duration(now - w.since)}" for w in p.waiters)


def deadlock_line(d: Deadlock) -> str:
    state = f"resolved: {d.how}" if d.resolved is not None else (
        "waiting for the victim to end" if d.victim is not None else "unresolved (policy: report)")
    return f"deadlock {d.id}: {d.summary()} [{state}]"


def locks_plain(info: LocksInfo, now: float) -> str:
    rows = [(p.name, p.kind, p.detail.replace(" ", "_") or "-", _holders(p), _waiters(p, now))
            for p in info.primitives]
    text = plain_columns(LOCK_COLUMNS, rows)
    lines = [deadlock_line(d) for d in info.deadlocks]
    return "\n".join([text, *lines])


def locks_rich(info: LocksInfo, now: float) -> Group:
    table = _table(LOCK_COLUMNS, caption=None if info.primitives else "no locks, semaphores, conditions, "
                                                                      "barriers, rwlocks or elections in use")
    stuck = {p for d in info.deadlocks if d.resolved is None for p in d.members}
    for p in info.primitives:
        waiters = Text()
        for i, w in enumerate(p.waiters):
            if i:
                waiters.append(", ")
            waiters.append(format_pid(w.pid), style="bold red" if w.pid in stuck else "cyan")
            waiters.append(f"{'(' + w.mode + ')' if p.kind == 'rwlock' else ''} {format_duration(now - w.since)}")
        table.add_row(Text(p.name, style="bold"), p.kind, p.detail, Text(_holders(p), style="cyan"),
                      waiters if p.waiters else Text("-", style="dim"))
    parts: list[Any] = [table]
    for d in info.deadlocks:
        style = "dim" if d.resolved is not None else "bold red"
        parts.append(Text(deadlock_line(d), style=style))
    return Group(*parts)


# ---------------------------------------------------------------------------- shared


def _entry_row(e: SharedEntry, now: float) -> tuple[str, ...]:
    return (e.key, str(e.version), _pid(e.writer) if e.writer is not None else "shell",
            format_duration(now - e.updated), compact(e.value, None))


def shared_plain(entries: Sequence[SharedEntry], now: float) -> str:
    return plain_columns(SHARED_COLUMNS, [_entry_row(e, now) for e in entries])


def shared_table(entries: Sequence[SharedEntry], now: float) -> Table:
    table = _table(SHARED_COLUMNS, caption=None if entries else "the blackboard is empty")
    for e in entries:
        row = _entry_row(e, now)
        table.add_row(Text(row[0], style="bold"), row[1], Text(row[2], style="cyan"), row[3], compact(e.value))
    return table


def shared_value(e: SharedEntry, now: float) -> str:
    """One key in full: a header line, then the value as indented JSON."""
    writer = _pid(e.writer) if e.writer is not None else "the shell"
    head = f"{e.key} (version {e.version}, written by {writer}, {format_duration(now - e.updated)} ago)"
    return head + "\n" + json.dumps(e.value, ensure_ascii=False, indent=2, default=repr)


def _buffer_row(b: BufferInfo) -> tuple[str, ...]:
    return (b.name, str(b.size), ",".join(format_pid(p) for p in b.users) or "-", b.path)


def buffers_plain(buffers: Sequence[BufferInfo]) -> str:
    return plain_columns(BUFFER_COLUMNS, [_buffer_row(b) for b in buffers])


def buffers_table(buffers: Sequence[BufferInfo]) -> Table:
    table = _table(BUFFER_COLUMNS, caption=None if buffers else "no shared buffers")
    for b in buffers:
        row = _buffer_row(b)
        table.add_row(Text(row[0], style="bold"), row[1], Text(row[2], style="cyan"), Text(row[3], style="dim"))
    return table


# ---------------------------------------------------------------------------- bus


def _sub_row(s: SubscriptionStats) -> tuple[str, ...]:
    return (str(s.id), s.pattern, s.pid or "*", s.mode, str(s.queued), "-" if s.maxsize is None else str(s.maxsize),
            str(s.delivered), str(s.dropped), str(s.coalesced), s.callback)


def bus_summary(info: BusInfo) -> str:
    dropped = sum(s.dropped for s in info.subscriptions)
    n = len(info.subscriptions)
    return (f"{info.published} events dispatched, {info.backlog} waiting, "
            f"{n} subscription{'' if n == 1 else 's'}, {dropped} dropped")


def bus_plain(info: BusInfo) -> str:
    return plain_columns(BUS_COLUMNS, [_sub_row(s) for s in info.subscriptions]) + "\n" + bus_summary(info)


def bus_table(info: BusInfo) -> Group:
    table = _table(BUS_COLUMNS)
    for s in info.subscriptions:
        row = _sub_row(s)
        table.add_row(row[0], Text(row[1], style="bold"), row[2], Text(row[3], style="dim" if s.mode == "inline"
                                                                         else ""), *row[4:7],
                      Text(row[7], style="bold red" if s.dropped else ""), row[8], Text(row[9], style="dim"))
    return Group(table, Text(bus_summary(info), style="dim"))
