"""The store's writer: turns events and statements into rows and commits them in groups.

A busy session runs it in its own OS process (`Store` starts a child Python that runs `main()`),
so that redaction, JSON encoding and SQLite's own work — about 35 us of CPU per no-op process —
do not take the interpreter lock from the kernel's threads; on a machine with a free core the
writing costs the kernel only the pickling of what it sends (about 1 us a process). A quiet
session (a one-shot command, a shell), or one where no child process can be started, runs the
same code on a thread of the kernel's process (`Store(writer=...)`).

Everything here works on plain values only — it is imported by that child, which must start
fast: no import of `llmunix.models` or anything above it.

What the kernel sends (`Store` -> writer), each a tuple whose first item says what it is; a
*group* is a list of them, sent as one pickled message:

    (EVENT, seq, time, type, pid, data)   an event (data: a mapping of plain values)
    (STATEMENT, sql, args)               a statement from `Store.execute` (audit rows too)
    (FLUSH, token)                        answered once everything before it is committed
    (COMPACT, job, before, keep, sweep, protected)   one step of a compaction pass
    (LOST, description, error)            a record the kernel could not send (stored as lost)
    (STOP,)                               commit what is left, answer, and end

What it answers (writer -> `Store`), one message each:

    (COMMITTED, group, top_seq, tokens, failures)   a transaction committed everything through
                                                    the kernel's group number `group`
    (COMPACTED, job, processes, events, checkpoints, more, error)
    (FATAL, text)                                    the writer cannot go on (a traceback)

Groups are numbered by the kernel; the number of the last group committed is written in the
same transaction (`sessions.writer_group`), so a writer started again after one that died is
sent again what was not answered and skips what was committed after all: nothing twice, nothing
lost.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import select
import signal
import sqlite3
import struct
import sys
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from llmunix.observe.redact import redact

EVENT, STATEMENT, FLUSH, COMPACT, LOST, STOP = range(6)
COMMITTED, COMPACTED, FATAL = range(3)

# Events whose data is not stored in the events table (kept elsewhere, or too bulky to repeat).
STRIPPED = {"process.checkpoint": ("state",)}
TERMINAL = {"process.completed": "Completed", "process.failed": "Failed", "process.cancelled": "Cancelled",
            "process.interrupted": "Interrupted"}

# ---------------------------------------------------------------------------- text and values

def safe_repr(value: Any) -> str:
    """repr(value), or a placeholder if its __repr__ fails (the record is kept either way)."""
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not lose the record
        return f"<{type(value).__name__}: repr failed: {exc}>"


# One encoder for every row: json.dumps with options builds a new JSONEncoder per call (~1 us each).
_ENCODER = json.JSONEncoder(default=safe_repr, ensure_ascii=False, separators=(",", ":"))
# The same encoding made once: JSONEncoder.encode builds a C encoder on every call (a third of
# its cost for an event's data). Without a markers dict a circular value ends in RecursionError,
# which json_text answers as it answers the encoder's own ValueError.
_C_ENCODE = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, safe_repr, json.encoder.encode_basestring, None, ":", ",", False, False, True)  # type: ignore[attr-defined]
# For values holding lone surrogates (bytes that were not UTF-8, kept by surrogateescape): SQLite
# stores UTF-8 text, which cannot hold them, but JSON's \udcXX escapes can, and read back as the
# very same str. Only such values pay for the escaping of every other non-ASCII character.
_ASCII_ENCODER = json.JSONEncoder(default=safe_repr, ensure_ascii=True, separators=(",", ":"))


def _utf8_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_EMPTY_JSON: dict[type, str] = {type(None): "null", list: "[]", dict: "{}", tuple: "[]"}


def json_text(value: Any) -> str:
    """`value` as JSON text SQLite can store, whatever bytes its strings came from: lossless
    (`json.loads` gives back equal strings, lone surrogates included); anything JSON cannot
    encode becomes its repr. Every JSON column is written with it."""
    if not value and (value is None or type(value) in _EMPTY_JSON):  # the common empty ones, at once
        return _EMPTY_JSON[type(value)]
    try:
        text = _ENCODER.encode(value) if _C_ENCODE is None else "".join(_C_ENCODE(value, 0))
    except (ValueError, TypeError, RecursionError):  # a circular or pathological structure
        return json.dumps(safe_repr(value)[:100_000])
    return text if _utf8_ok(text) else _ASCII_ENCODER.encode(value)


def storable_text(text: str) -> str:
    """`text` if it is valid Unicode, else with each byte that was not UTF-8 (a surrogateescape'd
    str: a file name, a command's output) written as `\\xNN`, and any other lone surrogate as
    `\\udNNN`. For plain text columns (name, error, an audit command line): readable, and it never
    fails the transaction. JSON columns keep such strings exactly (see `json_text`)."""
    if _utf8_ok(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Unbindable:
    """Stands in, in a statement sent to the writer process, for an argument SQLite cannot bind
    (it could not be sent either): binding it fails there as the value itself would have."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return Unbindable, (self.type_name,)


def _bindable(args: tuple[Any, ...] | list[Any]) -> tuple[Any, ...] | list[Any]:
    """Statement arguments SQLite can bind: strings made storable (the common case, all ASCII,
    returns `args` itself)."""
    for i, a in enumerate(args):
        kind = type(a)
        if kind is str:
            if not a.isascii():
                return tuple(storable_text(a) if isinstance(a, str) else a for a in args)
        elif kind is Unbindable:
            raise sqlite3.ProgrammingError(f"Error binding parameter {i + 1}: type '{a.type_name}' is not supported")
    return args


# ---------------------------------------------------------------------------- sending values

_HEADER = struct.Struct("<I")
# What SQLite binds (and the pickle of a statement may carry as it is).
BINDABLE = frozenset({type(None), bool, int, float, str, bytes})


def plain(value: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """How an event's value that is not a plain one is sent to the writer process: as the plain
    value the store would have written for it — a mapping as a dict, a sequence as a list, a str,
    int or float subclass (an enum) as its value, anything else as its repr (what `json_text`
    writes for it). The writer process never unpickles a class of the kernel's process."""
    if isinstance(value, Mapping):
        return dict, (dict(value),)
    if isinstance(value, list | tuple):
        return list, (list(value),)
    if isinstance(value, str):
        return str, (str.__str__(value),)
    if isinstance(value, int):
        return int, (int.__index__(value),)
    if isinstance(value, float):
        return float, (float.__float__(value),)
    return str, (safe_repr(value),)


class _Pickler(pickle.Pickler):
    """Pickles a group: plain values as they are (the C pickler does not ask `reducer_override`
    about dicts, lists, tuples, str, int, float, bytes, sets or None), anything else by `plain`."""

    def reducer_override(self, obj: Any) -> Any:
        # (the makers `plain` names are pickled by reference, as is an Unbindable)
        if type(obj) is Unbindable or obj is dict or obj is list or obj is str or obj is int or obj is float \
                or obj is Unbindable:
            return NotImplemented
        return plain(obj)


def encode_group(items: Any) -> bytes:
    """One framed message: a length, then the pickle of `items`."""
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(items)
    view = buf.getbuffer()
    _HEADER.pack_into(view, 0, len(view) - 4)
    del view  # (the buffer cannot be read whole while a view of it lives)
    return buf.getvalue()


def decode_group(data: bytes) -> Any:
    """What `encode_group` framed."""
    return pickle.loads(memoryview(data)[4:])


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class MessageReader:
    """Framed messages from a pipe: `read(block)` returns every complete message available — at
    least one when `block` — or None at the end of the stream."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._eof = False

    def _parse(self) -> list[Any]:
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            out.append(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out

    def _fill(self) -> bool:
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def read(self, block: bool = True) -> list[Any] | None:
        while True:
            if self._eof:
                out = self._parse()
                return out or None
            if block and not self._fill():
                continue
            while select.select([self.fd], [], [], 0)[0]:
                if not self._fill():
                    break
            out = self._parse()
            if out or not block:
                return out


# ---------------------------------------------------------------------------- rows

_ROW = ("pid", "session", "name", "tool", "kind", "priority", "owner", "parent", "after", "cwd", "params",
        "idempotent", "state", "phase", "detail", "created", "runtime", "policy", "started", "finished",
        "exit_code", "error", "output", "worker", "cached_from")
_COL = {name: i for i, name in enumerate(_ROW)}
# Statements of the writer, as (head, width, tail): `head VALUES (row),(row),... tail`, each row
# `width` values; v.column1.. are the VALUES' columns where rows are joined to `processes`.
_INSERT_ROW = (f"INSERT OR REPLACE INTO processes ({', '.join(_ROW)})", len(_ROW), "")
_INSERT_EVENT = ("INSERT INTO events (session, seq, time, type, pid, data)", 6, "")
_INSERT_RUN = ("INSERT INTO tool_runs (tool, pid, started, finished, duration, outcome, peak_memory_mb)", 7, "")
# A batch of ends (shutdown ends 100,000 queued processes), and the tool runs of those that ran.
_UPDATE_ENDS = ("UPDATE processes SET state=v.column1, phase=v.column2, detail=v.column3, exit_code=v.column4, "
                "error=v.column5, output=v.column6, finished=v.column7, runtime=v.column8 FROM (", 9,
                ") AS v WHERE processes.pid = v.column9")
_RUNS_OF_ENDS = (f"{_INSERT_RUN[0]} SELECT p.tool, p.pid, p.started, v.column1, v.column2, v.column3, v.column4 "
                 "FROM (", 6, ") AS v JOIN processes AS p ON p.pid = v.column5 WHERE p.cached_from IS NULL "
                 "ORDER BY v.column6")
_UPDATE_PROGRESS = ("UPDATE processes SET progress=v.column1 FROM (", 2, ") AS v WHERE processes.pid = v.column2")

ROWS_PER_STATEMENT = 64
"""Rows a statement of the writer carries (`INSERT ... VALUES (...),(...),...`). Not
`executemany`: it steps once per row, and the sqlite3 module lets go of the GIL around every
step; while other threads keep the GIL busy, taking it back after each row's step is a wait each
time (measured with one busy thread: 505 us a row with executemany, 77 with 100 rows a
statement). SQLite's own work is the same."""


@functools.lru_cache(maxsize=512)
def _rows_sql(head: str, width: int, count: int, tail: str) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * count)}{tail}"


def _execute_rows(conn: sqlite3.Connection, statement: tuple[str, int, str], rows: Sequence[Sequence[Any]]) -> None:
    """`statement` (head, width, tail) for `rows`, in their order, ROWS_PER_STATEMENT at a time."""
    head, width, tail = statement
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[i:i + ROWS_PER_STATEMENT]
        conn.execute(_rows_sql(head, width, len(chunk), tail), [value for row in chunk for value in row])


_PHASE_OF = {"paused": "paused", "resumed": "ready", "preempted": "preempted", "continued": "running",
             "blocked": "waiting", "breakpoint": "paused", "stepped": "paused"}  # the debugger stops it as a pause does


class EventWriter:
    """Turns events into rows. A process spawned in the transaction being written is one row
    built in memory from all its events (spawned, started, ..., its end) and inserted once, with
    its tool run, when the events are flushed: a no-op process costs one INSERT, not an INSERT and
    three UPDATEs. Progress rows are coalesced per batch."""

    def __init__(self, conn: sqlite3.Connection, session: int) -> None:
        self.conn = conn
        self.session = session
        self._progress: dict[int, str] = {}
        self._events: list[tuple[Any, ...]] = []  # event rows, inserted at the flush
        self._new: dict[int, list[Any]] = {}  # processes rows of this transaction, by PID
        self._runs: list[tuple[Any, ...]] = []  # tool_runs rows of those
        self._ends: dict[int, tuple[Any, ...]] = {}  # terminal updates of earlier processes, by PID

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        self.conn.execute(sql, _bindable(args))

    def statement(self, sql: str, args: tuple[Any, ...] | list[Any]) -> None:
        self.flush_events()  # a statement may read or change the rows of this transaction
        self.conn.execute(sql, _bindable(args))

    def write(self, seq: int, when: float, etype: str, pid: int | None, d: Mapping[str, Any]) -> None:
        strip = STRIPPED.get(etype)
        data = {k: v for k, v in d.items() if k not in strip} if strip else d
        self._events.append(_bindable((self.session, seq, when, etype, pid, json_text(redact(data)))))
        if pid is None or not etype.startswith("process."):
            return
        kind = etype[8:]
        if kind == "spawned":
            if pid in self._ends:  # it ended and runs again (rollback): its old end goes first
                self.flush_events()
            self._new[pid] = [
                pid, self.session, d.get("name"), d.get("tool"), d.get("kind", "tool"), d.get("priority"),
                d.get("owner"), d.get("parent"), json_text(d.get("after", [])), d.get("cwd"),
                json_text(d.get("params", {})), int(bool(d.get("idempotent"))), "Pending", d.get("phase", "ready"),
                d.get("detail", "queued"), when, 0, json_text(d["policy"]) if d.get("policy") else None,
                None, None, None, None, None, None, None]
            return
        row = self._new.get(pid)
        if kind == "started":
            if row is not None:
                row[_COL["started"]], row[_COL["state"]] = when, d.get("state", "Running")
                row[_COL["phase"]], row[_COL["detail"]], row[_COL["session"]] = "running", "running", self.session
            else:
                self._execute("UPDATE processes SET started=?, state=?, phase='running', detail='running', "
                              "session=? WHERE pid=?", (when, d.get("state", "Running"), self.session, pid))
        elif kind == "state":
            if row is not None:
                row[_COL["state"]], row[_COL["detail"]] = d.get("state"), d.get("detail") or d.get("state")
            else:
                self._execute("UPDATE processes SET state=?, detail=? WHERE pid=?",
                              (d.get("state"), d.get("detail") or d.get("state"), pid))
        elif kind == "progress":
            self._progress[pid] = json_text({k: d.get(k) for k in ("step", "total", "percentage", "message")})
        elif kind == "checkpoint":
            self._execute("INSERT OR REPLACE INTO checkpoints (pid, version, time, state) VALUES (?,?,?,?)",
                          (pid, d.get("version"), when, json_text(d.get("state"))))
        elif kind in _PHASE_OF:
            if row is not None:
                row[_COL["phase"]] = _PHASE_OF[kind]
            else:
                self._execute("UPDATE processes SET phase=? WHERE pid=?", (_PHASE_OF[kind], pid))
        elif kind == "cleaned":  # `clean`: out of the listings, its events and log kept
            if pid in self._new or pid in self._ends:
                self.flush_events()  # its row goes in (or ends) first
            self._execute("UPDATE processes SET cleaned=? WHERE pid=?", (when, pid))
        elif kind == "cached":  # it reused a stored result (llmunix/cache.py): not a run of its tool
            if row is not None:
                row[_COL["cached_from"]] = d.get("source")
            else:
                self._execute("UPDATE processes SET cached_from=? WHERE pid=?", (d.get("source"), pid))
        elif kind == "tokens":  # an LLM reply's usage (cost NULL: no price for the model)
            self._execute("INSERT INTO token_usage (time, pid, model, endpoint, backend, prompt_tokens, "
                          "completion_tokens, cost) VALUES (?,?,?,?,?,?,?,?)",
                          (when, pid, d.get("model"), d.get("endpoint"), d.get("backend"),
                           int(d.get("prompt_tokens") or 0), int(d.get("completion_tokens") or 0), d.get("cost")))
        elif kind == "remote":  # its body runs on a Dask worker
            if row is not None:
                row[_COL["worker"]] = d.get("worker")
            else:
                self._execute("UPDATE processes SET worker=? WHERE pid=?", (d.get("worker"), pid))
        elif kind == "reniced":
            if row is not None:
                row[_COL["priority"]] = d.get("new")
            else:
                self._execute("UPDATE processes SET priority=? WHERE pid=?", (d.get("new"), pid))
        elif etype in TERMINAL:
            state = TERMINAL[etype]
            phase = "interrupted" if state == "Interrupted" else "done"
            end = (state, phase, d.get("error") or ("exit 0" if state == "Completed" else state.lower()),
                   d.get("exit_code"), d.get("error"), json_text(d.get("output")), when, d.get("runtime"))
            if row is not None:
                for name, value in zip(("state", "phase", "detail", "exit_code", "error", "output", "finished",
                                        "runtime"), end, strict=True):
                    row[_COL[name]] = value
                if state != "Interrupted" and row[_COL["cached_from"]] is None:
                    self._runs.append((row[_COL["tool"]], pid, row[_COL["started"]], when, d.get("runtime"),
                                       state, d.get("peak_memory_mb")))
                return
            # Batched (shutdown ends 100,000 queued processes): one statement per 64 at the flush.
            self._ends[pid] = (*end, pid, when, d.get("runtime"), d.get("peak_memory_mb"))

    def flush_events(self) -> None:
        """Insert the rows written so far — the processes of this transaction, their tool runs,
        the events in order — before a statement that may read or delete them, and before the
        commit."""
        conn = self.conn
        new, self._new = self._new, {}
        if new:
            _execute_rows(conn, _INSERT_ROW, [_bindable(row) for row in new.values()])
        ends, self._ends = self._ends, {}
        if ends:
            _execute_rows(conn, _UPDATE_ENDS, [_bindable(end[:9]) for end in ends.values()])
            _execute_rows(conn, _RUNS_OF_ENDS, [(end[9], end[10], end[0], end[11], end[8], i)
                                                for i, end in enumerate(ends.values()) if end[0] != "Interrupted"])
        runs, self._runs = self._runs, []
        if runs:
            _execute_rows(conn, _INSERT_RUN, [_bindable(r) for r in runs])
        rows, self._events = self._events, []
        if rows:
            _execute_rows(conn, _INSERT_EVENT, rows)

    def discard(self, *, progress: bool = False) -> None:
        """The transaction was rolled back: its event rows not inserted yet go with it (the
        latest progress stays, for the next transaction, unless `progress`: it was what failed)."""
        self._events.clear()
        self._new.clear()
        self._runs.clear()
        self._ends.clear()
        if progress:
            self._progress.clear()

    def flush_progress(self) -> None:
        self.flush_events()
        if self._progress:
            _execute_rows(self.conn, _UPDATE_PROGRESS, [(v, k) for k, v in self._progress.items()])
            self._progress.clear()


# ---------------------------------------------------------------------------- compaction


class CompactionStep:
    """The state of one retention pass where it runs (see `Store.compact`).

    Candidates are finished rows (phase 'done', not yet compacted) that are either older than
    `before` or outside the newest `keep` finished ones; both limits become one bound on
    (finished, pid), walked in that order with a cursor so no row is looked at twice. The
    counts are totals so far."""

    STEP = 500  # processes per transaction (also keeps the IN (...) lists short)

    def __init__(self, before: float, keep: int, sweep: bool) -> None:
        self.before = before
        self.keep = keep
        self.sweep = sweep
        self.processes = 0
        self.events = 0
        self.checkpoints = 0
        self._bound: tuple[float, int] | None = None
        self._cursor: tuple[float, int] = (-1.0, 0)

    def step(self, conn: sqlite3.Connection, protected: Collection[int]) -> bool:
        """Compact up to STEP processes, none of `protected`; True if there may be more."""
        if self._bound is None:
            bound = (self.before, 0)  # (finished, pid) <= (before, 0) means finished < before
            # Counted on the `finished` index alone (finished rows: done, and interrupted on a clean
            # exit), without reading the table: a pass costs O(keep), and does not push the
            # writer's working set out of SQLite's page cache.
            # PIDs are never reused, so the greatest is at least the number of rows: when `keep` is
            # not below it, no row can be beyond the newest `keep` (and the walk would read them all).
            top = conn.execute("SELECT max(pid) FROM processes").fetchone()[0]
            newest = None if top is None or self.keep >= top else conn.execute(
                "SELECT finished, pid FROM processes WHERE finished IS NOT NULL ORDER BY finished DESC, pid DESC "
                "LIMIT 1 OFFSET ?", (self.keep,)).fetchone()
            if newest is not None and newest[0] is not None:
                bound = max(bound, (float(newest[0]), int(newest[1])))
            self._bound = bound
        (bf, bp), (cf, cp) = self._bound, self._cursor
        # Row values and `+phase` make SQLite walk the `finished` index from the cursor, in order,
        # instead of collecting every done row and sorting it at each step.
        rows = conn.execute(
            "SELECT pid, finished FROM processes WHERE (finished, pid) > (?, ?) AND (finished, pid) <= (?, ?) "
            "AND +phase='done' AND compacted=0 ORDER BY finished, pid LIMIT ?",
            (cf, cp, bf, bp, self.STEP)).fetchall()
        if rows:
            self._cursor = (float(rows[-1][1]), int(rows[-1][0]))
            pids = [r[0] for r in rows if r[0] not in protected]
            if pids:
                marks = ",".join("?" * len(pids))
                self.events += conn.execute(f"DELETE FROM events WHERE pid IN ({marks})", pids).rowcount
                self.checkpoints += conn.execute(f"DELETE FROM checkpoints WHERE pid IN ({marks})", pids).rowcount
                conn.execute(f"UPDATE processes SET compacted=1 WHERE pid IN ({marks})", pids)
                self.processes += len(pids)
            if len(rows) == self.STEP:
                return True
        if not self.sweep:
            return False
        # Last step: what belongs to no process ages out by time alone (shell.command events, the
        # audit trail, tool run history, agents' learning memory, cached results), so none of them grows without
        # bound; so do persistent messages left to a process that finished long ago (never to one
        # that was interrupted: `recover` delivers them to it again).
        self.events += conn.execute("DELETE FROM events WHERE time < ? AND pid IS NULL", (self.before,)).rowcount
        conn.execute("DELETE FROM audit WHERE time < ?", (self.before,))
        conn.execute("DELETE FROM tool_runs WHERE finished < ?", (self.before,))
        conn.execute("DELETE FROM token_usage WHERE time < ?", (self.before,))
        conn.execute("DELETE FROM agent_runs WHERE time < ?", (self.before,))
        conn.execute("DELETE FROM agent_tool_uses WHERE time < ?", (self.before,))
        conn.execute("DELETE FROM cache WHERE created < ?", (self.before,))
        conn.execute("DELETE FROM messages WHERE recipient IN (SELECT pid FROM processes WHERE phase='done' "
                     "AND finished < ?)", (self.before,))
        return False


# ---------------------------------------------------------------------------- the writer


def connect(path: str) -> sqlite3.Connection:
    """A connection as llmunix opens one: WAL, synchronous=NORMAL, autocommit (explicit BEGIN)."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.row_factory = sqlite3.Row
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def describe(item: Any) -> str:
    """What a record of a group is, for a one-line message."""
    kind = item[0]
    if kind == EVENT:
        return f"event {item[3]}" + (f" of process {item[4]}" if item[4] is not None else "")
    if kind == LOST:
        return str(item[1])
    if kind == "progress":
        return "progress of this group's processes"
    return f"statement {str(item[1]).split(None, 3)[:3]}"


def _lost_record(item: Any, error: str) -> dict[str, Any]:
    out: dict[str, Any] = {"record": describe(item), "error": error}
    if item[0] == EVENT:
        out.update(type=item[3], seq=item[1])
    return out


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


Failure = tuple[str, int, int, str, str]
"""(error, lost, failed_commits, what, traceback text) of a write that failed."""


class Writer:
    """Applies groups to the database, one transaction for all the groups given at once."""

    def __init__(self, conn: sqlite3.Connection, session: int) -> None:
        self.conn = conn
        self.session = session
        self.rows = EventWriter(conn, session)
        self.jobs: dict[int, CompactionStep] = {}
        row = conn.execute("SELECT writer_group FROM sessions WHERE id=?", (session,)).fetchone()
        self.committed_group = int(row[0] or 0) if row is not None else 0

    def _apply(self, item: Any) -> None:
        kind = item[0]
        if kind == EVENT:
            self.rows.write(item[1], item[2], item[3], item[4], item[5])
        elif kind == STATEMENT:
            self.rows.statement(item[1], item[2])
        else:  # LOST: what the kernel could not send is what this group lost
            raise _Lost(item[2])

    def commit(self, group: int, writes: list[Any]) -> list[Failure]:
        """Commit `writes` (and the group number) in one transaction. If it fails, write them
        again one at a time, so that one record SQLite refuses costs only itself: the others are
        committed and the loss is recorded (a `store.write_lost` event row, and a failure)."""
        conn = self.conn
        try:
            conn.execute("BEGIN")
            for item in writes:
                self._apply(item)
            self.rows.flush_progress()  # and the events
            conn.execute("UPDATE sessions SET writer_group=? WHERE id=?", (group, self.session))
            conn.execute("COMMIT")
            self.committed_group = group
            return []
        except Exception:  # noqa: BLE001 - which record, and whether the database itself fails, is found below
            _rollback(conn)
            self.rows.discard()
        lost: list[tuple[Any, str, str]] = []
        try:
            conn.execute("BEGIN")
            for item in writes:
                conn.execute("SAVEPOINT record")
                try:
                    self._apply(item)
                    self.rows.flush_events()
                except Exception as exc:  # noqa: BLE001 - this record only
                    conn.execute("ROLLBACK TO record")
                    self.rows.discard()
                    lost.append((item, str(exc) if isinstance(exc, _Lost) else _error(exc), _trace(exc)))
                conn.execute("RELEASE record")
            conn.execute("SAVEPOINT record")
            try:
                self.rows.flush_progress()
            except Exception as exc:  # noqa: BLE001
                conn.execute("ROLLBACK TO record")
                self.rows.discard(progress=True)
                lost.append((("progress",), _error(exc), _trace(exc)))
            conn.execute("RELEASE record")
            for item, error, _tb in lost:
                conn.execute("INSERT INTO events (session, seq, time, type, pid, data) VALUES (?,?,?,?,?,?)",
                             (self.session, None, time.time(), "store.write_lost",
                              item[4] if item[0] == EVENT else None, json_text(_lost_record(item, error))))
            conn.execute("UPDATE sessions SET writer_group=? WHERE id=?", (group, self.session))
            conn.execute("COMMIT")
            self.committed_group = group
        except Exception as exc:  # the database itself refuses: nothing of this group is stored
            _rollback(conn)
            self.rows.discard()
            self.committed_group = group  # (not to be tried again: it is counted as failed)
            return [(_error(exc), 0, 1, f"a group of {len(writes)} write(s) was not committed", _trace(exc))]
        return [(error, 1, 0, f"one record ({describe(item)}) was not written; the rest of its group was", tb)
                for item, error, tb in lost]

    def compact(self, job: int, before: float, keep: int, sweep: bool, protected: Collection[int]
                ) -> tuple[int, int, int, bool, str | None]:
        """One step of compaction pass `job`: (processes, events, checkpoints, more, error)."""
        state = self.jobs.get(job)
        if state is None:
            state = self.jobs[job] = CompactionStep(before, keep, sweep)
        conn = self.conn
        error = None
        try:
            conn.execute("BEGIN")
            more = state.step(conn, protected)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = str(exc)
            more = False
            _rollback(conn)
        if not more:
            del self.jobs[job]
        return state.processes, state.events, state.checkpoints, more, error

    def serve(self, messages: list[tuple[int, list[Any]]]) -> tuple[list[Any], bool]:
        """Apply numbered groups in order (those committed already skipped): their writes in one
        transaction — up to a group holding a compaction step, which runs after what came before
        it is committed. Returns the answers, and whether a STOP came."""
        answers: list[Any] = []
        writes: list[Any] = []
        tokens: list[int] = []
        top = 0
        stop = False
        group = self.committed_group

        def commit() -> None:
            nonlocal writes, tokens, top
            if group > self.committed_group or tokens:
                failures = self.commit(group, writes) if writes else []
                self.committed_group = max(self.committed_group, group)
                answers.append((COMMITTED, group, top, tokens, failures))
            writes, tokens, top = [], [], 0

        for number, items in messages:
            if number <= self.committed_group:
                continue  # sent again after a writer died, but it had committed it
            jobs: list[tuple[Any, ...]] = []
            for item in items:
                kind = item[0]
                if kind == EVENT:
                    writes.append(item)
                    if item[1] > top:
                        top = item[1]
                elif kind in (STATEMENT, LOST):
                    writes.append(item)
                elif kind == FLUSH:
                    tokens.append(item[1])
                elif kind == COMPACT:
                    jobs.append(item)
                elif kind == STOP:
                    stop = True
            if jobs:
                commit()  # what came before the step (a group is answered only once all of it is done)
                for _kind, job, before, keep, sweep, protected in jobs:
                    processes, events, checkpoints, more, error = self.compact(job, before, keep, sweep, protected)
                    answers.append((COMPACTED, job, processes, events, checkpoints, more and not stop, error))
            group = number
        commit()
        return answers, stop


class _Lost(Exception):
    """A record the kernel could not send (its reason is the message)."""


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# ---------------------------------------------------------------------------- the child process


def main(argv: list[str] | None = None) -> int:
    """The writer process: `DB SESSION`; groups on stdin, answers on stdout, until STOP or the
    end of stdin (the kernel's process ended: what arrived is committed first)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # it ends when the kernel says so
        signal.signal(sig, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    path, session = args[0], int(args[1])
    out = sys.stdout.fileno()
    heard = [True]  # whether the kernel still reads answers

    def answer(data: bytes) -> None:
        if heard[0]:
            try:
                write_all(out, data)
            except BrokenPipeError:  # the kernel is gone: what it sent is still committed, unanswered
                heard[0] = False

    try:
        conn = connect(path)
        writer = Writer(conn, session)
        reader = MessageReader(sys.stdin.fileno())
        answer(encode_group((COMMITTED, writer.committed_group, 0, [], [])))  # ready
        while True:
            messages = reader.read(block=True)
            if messages is None:  # the kernel is gone: everything it sent is written
                return 0
            answers, stop = writer.serve(messages)
            if answers:
                answer(b"".join(encode_group(a) for a in answers))
            if stop:
                conn.close()
                return 0
    except BaseException as exc:  # noqa: BLE001 - said to the kernel, which logs it
        try:
            answer(encode_group((FATAL, _trace(exc))))
        except OSError:
            pass
        return 1


def launch_args(path: str, session: int) -> list[str]:
    """The command line of a writer process for the database at `path`."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = f"import sys; sys.path.insert(0, {root!r}); from llmunix.store.writer import main; sys.exit(main())"
    return [sys.executable, "-I", "-S", "-c", boot, path, str(session)]


__all__ = ["COMMITTED", "COMPACT", "COMPACTED", "EVENT", "FATAL", "FLUSH", "LOST", "STATEMENT", "STOP", "STRIPPED",
           "TERMINAL", "CompactionStep", "EventWriter", "MessageReader", "Unbindable", "Writer", "connect",
           "decode_group", "encode_group", "json_text", "launch_args", "main", "storable_text", "write_all"]

