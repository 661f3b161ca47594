"""Structured logging: JSON lines in `<home>/llmunix.log`, rotated by size.

Every line is one JSON object:

    {"time": "2026-11-26T07:03:33.936+00:00", "level": "INFO", "logger": "llmunix.events",
     "message": "003 sleep completed", "pid": 3, "process": "sleep", "event": "process.completed",
     "data": {"exit_code": 0, "runtime": 2.0, ...}}

`pid`, `process` and `event` are there when the line is about a process (pass them as
`extra={"pid": ..., "process_name": ..., "event": ...}`; `process` itself is taken by the
standard library for the OS pid). Messages, data and tracebacks are redacted (see `redact`).

`log_events(kernel)` subscribes to the kernel's events and logs lifecycle events at INFO
(failures and unkillable processes at WARNING) and progress, log lines, checkpoints and scheduling
at DEBUG, so the file tells the story of every process at the level you choose.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.home import create_private_file
from llmunix.models import Event, LlmunixError, format_pid
from llmunix.observe.redact import redact, redact_text

if TYPE_CHECKING:

    from llmunix.ipc.bus import Subscription

LEVELS = ("debug", "info", "warning", "error", "critical")
ROOT = "llmunix"
EVENTS_LOGGER = "llmunix.events"

# Event types logged at DEBUG (frequent, or scheduling detail); the rest of process.* at INFO.
_DEBUG_EVENTS = frozenset({"process.progress", "process.log", "process.checkpoint", "process.preempted",
                           "process.continued", "process.subprocess"})
_WARNING_EVENTS = frozenset({"process.failed", "process.unkillable", "process.kill_escalated"})
_DATA_LEFT_OUT = ("name",)  # already in the line as "process"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ pid, process, event, data)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, attr in (("pid", "pid"), ("process", "process_name"), ("event", "event")):
            value = getattr(record, attr, None)
            if value is not None:
                line[key] = value
        data = getattr(record, "data", None)
        if data:
            line["data"] = redact(data)
        if record.exc_info:
            line["exc"] = redact_text(self.formatException(record.exc_info))
        text = json.dumps(line, default=repr, ensure_ascii=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # Bytes that were not UTF-8 (a surrogateescape'd parameter or output line) cannot
                # be written as UTF-8; as \udcXX escapes the line is still JSON, read back exactly.
                text = json.dumps(line, default=repr, ensure_ascii=True)
        return text


class _OwnerOnlyRotatingFileHandler(RotatingFileHandler):
    """The log can name what processes did: only its owner may read it (as the database). Each
    file is created 0600 whatever the umask; rotated ones keep that mode."""

    def _open(self):  # type: ignore[no-untyped-def]
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,  # noqa: SIM115
                    opener=_private_opener)


def _private_opener(path: str, flags: int) -> int:
    return create_private_file(Path(path), flags)


def setup_logging(home: Path, *, level: str = "info", max_bytes: int = 5_000_000, backups: int = 3
                  ) -> logging.Handler | None:
    """Send the `llmunix` loggers to `<home>/llmunix.log` as JSON lines, rotated at `max_bytes`
    (0: never) keeping `backups` old files. Never to the terminal. Returns the handler, or None if
    the file cannot be opened (llmunix then runs without a log file)."""
    root = logging.getLogger(ROOT)
    for old in [h for h in root.handlers if isinstance(h, _OwnerOnlyRotatingFileHandler)]:
        root.removeHandler(old)
        old.close()
    try:
        # errors=: whatever a formatter lets through, a line is written, never a "Logging error"
        # traceback on the user's terminal.
        handler = _OwnerOnlyRotatingFileHandler(home / "llmunix.log", maxBytes=max_bytes, backupCount=backups,
                                                encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.propagate = False
    set_level(level)
    return handler


def capture_library_logs(name: str, level: str = "warning") -> None:
    """Send a library's logger (`distributed`) to llmunix.log, at `level` and above, instead of
    the terminal handler it installed for itself."""
    lib = logging.getLogger(name)
    for h in [h for h in lib.handlers if type(h) is logging.StreamHandler]:
        lib.removeHandler(h)
    for h in logging.getLogger(ROOT).handlers:
        if h not in lib.handlers:
            lib.addHandler(h)
    lib.setLevel(level.upper())
    lib.propagate = False


def parse_level(value: Any) -> str:
    """`debug`, `info`, `warning`, `error` or `critical` (any case); else a one-line error."""
    name = str(value).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise LlmunixError(f"unknown log level {value!r}; use one of: {', '.join(LEVELS)}")
    return name


def set_level(level: str) -> str:
    """Set the level of everything llmunix logs; returns the level's name."""
    name = parse_level(level)
    logging.getLogger(ROOT).setLevel(name.upper())
    return name


def current_level() -> str:
    return logging.getLevelName(logging.getLogger(ROOT).getEffectiveLevel()).lower()


def log_events(kernel: Any) -> Subscription:
    """Log the kernel's events (see the module docstring for levels): `kernel` is anything with
    `subscribe(pattern, callback)`. Returns the subscription."""
    logger = logging.getLogger(EVENTS_LOGGER)

    def on_event(e: Event) -> None:
        level = _level_for(e.type)
        if not logger.isEnabledFor(level):  # the common case for progress at INFO: cheap
            return
        name = e.data.get("name")
        who = f"{format_pid(e.pid)} {name} " if e.pid is not None else ""
        what = e.type.split(".", 1)[1] if e.type.startswith("process.") else e.type
        if e.type == "shell.command":
            what = f"command: {e.data.get('command', '')} (exit {e.data.get('status')})"
        elif e.type == "process.log":
            what = f"log: {e.data.get('line', '')}"
        data = {k: v for k, v in e.data.items() if k not in _DATA_LEFT_OUT}
        logger.log(level, "%s%s", who, what, extra={"pid": e.pid, "process_name": name, "event": e.type,
                                                     "data": data})

    return kernel.subscribe("*", on_event)


def _level_for(event_type: str) -> int:
    if event_type in _DEBUG_EVENTS:
        return logging.DEBUG
    if event_type in _WARNING_EVENTS:
        return logging.WARNING
    return logging.INFO
