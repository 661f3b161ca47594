"""The audit trail: every command typed in the shell, and every control action, with who and when.

Built from events like everything else durable: the shell reports each command it ran as a
`shell.command` event (`Kernel.record_command`), and the kernel's control events
(`process.kill_requested`, `process.pause_requested` / `process.paused`, `process.resumed` /
`process.pause_cancelled`, `process.reniced`, `process.restarted` for recover and rollback; the
debugger's `process.modified`, `process.breakpoint_set` / `_cleared`, `process.step_requested`,
`process.trace`) are
actions, recorded when the kernel accepts them (a pause that takes effect later, at the process's
next control point, is recorded once, when it was asked for). The store's writer turns each into one
`audit` row with `audit_row`; `Kernel.audit()` reads them back as `AuditEntry` snapshots.
"""

from __future__ import annotations

import getpass
import sqlite3
from dataclasses import dataclass
from typing import Any

from llmunix.models import Event, format_pid, iso_time
from llmunix.observe.redact import redact_text

COMMAND = "command"  # a line typed in the shell (or run from -c, a script, stdin)
ACTION = "action"  # a change the kernel made to a process on someone's request


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: float
    user: str
    kind: str  # COMMAND or ACTION
    command: str  # the command line (secrets redacted), or what the action did
    target: int | None  # the process an action changed
    status: int | None  # a command's exit status (0 ok, 1 failed); 0 for an action carried out
    session: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": iso_time(self.time),
            "user": self.user,
            "kind": self.kind,
            "command": self.command,
            "target": None if self.target is None else format_pid(self.target),
            "status": self.status,
            "session": self.session,
        }


def audit_row(event: Event) -> tuple[str, str, str, int | None, int | None] | None:
    """(user, kind, command, target, status) for an event the audit trail records, else None."""
    t = event.type
    if t not in _AUDITED:  # (the store's writer asks this of every event: most are not audited)
        return None
    d = event.data
    if t == "shell.command":
        return (str(d.get("user") or current_user()), COMMAND, redact_text(str(d.get("command", ""))), None,
                d.get("status"))
    if t == "process.kill_requested":
        what = "kill --force" if d.get("force") else "kill"
        reason = d.get("reason")
        if reason not in (None, "killed by user"):
            what += f" ({reason})"
        return current_user(), ACTION, what, event.pid, 0
    if t == "process.pause_requested" or (t == "process.paused" and not d.get("deferred")):
        return current_user(), ACTION, "pause", event.pid, 0
    if t in ("process.resumed", "process.pause_cancelled"):
        return current_user(), ACTION, "resume", event.pid, 0
    if t == "process.reniced":
        return current_user(), ACTION, f"priority {d.get('old')} -> {d.get('new')}", event.pid, 0
    if t == "process.modified":  # by the debugger: values were redacted when the event was made
        where = f" (checkpoint version {d.get('version')})" if d.get("version") is not None else ""
        what = f"modify {d.get('key')} = {d.get('new')} (was {d.get('old')}){where}"
        return current_user(), ACTION, what, event.pid, 0
    if t in _DEBUGGER:
        return current_user(), ACTION, _DEBUGGER[t](d), event.pid, 0
    if t == "process.rerun":
        return current_user(), ACTION, f"restart as {format_pid(int(d.get('as') or 0))}", event.pid, 0
    if t == "process.cleaned":
        return current_user(), ACTION, "clean", event.pid, 0
    if t == "process.restarted":
        action = str(d.get("action") or "recover")
        if not d.get("resumed"):
            return current_user(), ACTION, f"{action} (failed: {d.get('error')})", event.pid, 1
        checkpoint = d.get("checkpoint")
        where = "" if checkpoint is None else f" ({'to' if action == 'rollback' else 'from'} checkpoint {checkpoint})"
        return current_user(), ACTION, action + where, event.pid, 0
    return None


_DEBUGGER = {  # the debugger's other actions (its stops and continues are pauses and resumes)
    "process.breakpoint_set": lambda d: f"break {d.get('number')}: {d.get('description')}",
    "process.breakpoint_cleared": lambda d: f"delete breakpoint {d.get('number')}",
    "process.step_requested": lambda d: str(d.get("mode") or "step"),
    "process.trace": lambda d: f"trace {'on' if d.get('on') else 'off'}",
}

# Every type audit_row answers for (a test checks this against the function's branches).
_AUDITED = frozenset({"shell.command", "process.kill_requested", "process.pause_requested", "process.paused",
                      "process.resumed", "process.pause_cancelled", "process.reniced", "process.modified",
                      *_DEBUGGER, "process.rerun", "process.cleaned", "process.restarted"})

_USER: list[str] = []


def current_user() -> str:
    """The OS user running llmunix: one llmunix owns a home, so it is who asked for an action."""
    if not _USER:
        try:
            _USER.append(getpass.getuser())
        except Exception:
            _USER.append("user")
    return _USER[0]


def row_to_audit(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(row["time"], row["user"] or "", row["kind"] or "", row["command"] or "", row["target"],
                      row["status"], row["session"])
