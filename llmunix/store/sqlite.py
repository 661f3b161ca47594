"""Durable state: one SQLite database (WAL) per home directory, written by one thread.

The store is an event consumer like any other: it subscribes to the bus and turns events into
rows (event sourcing). The writer thread owns the only writing connection and commits in groups
— everything queued since the last commit goes in one transaction — so no worker waits on disk
and the cost of a write does not depend on how much is stored.

Durability rules (the engine waits on disk only for these):
* a checkpoint is committed before `ctx.checkpoint()` returns;
* a terminal state and output are committed before dependents are released.
Both use `wait_durable(seq)`. With WAL and synchronous=NORMAL a commit is in the OS before it
returns, so it survives a SIGKILL of llmunix (not a power cut: set `synchronous=FULL` for that).

Reads use a connection per reading thread; WAL lets them run beside the writer.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmunix.home import create_private_file
from llmunix.models import Event, LlmunixError
from llmunix.observe.audit import audit_row
from llmunix.observe.redact import redact

log = logging.getLogger("llmunix.store")

SCHEMA_VERSION = 9
BACKLOG = 2000  # events published but not yet committed before producers are slowed (Store.throttle)

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, os_pid INTEGER, clean INTEGER DEFAULT 0
    );
    CREATE TABLE processes (
        pid INTEGER PRIMARY KEY, session INTEGER, name TEXT, tool TEXT, kind TEXT, priority TEXT,
        owner TEXT, parent INTEGER, after TEXT, cwd TEXT, params TEXT, idempotent INTEGER DEFAULT 0,
        state TEXT, phase TEXT, detail TEXT, exit_code INTEGER, error TEXT, output TEXT,
        created REAL, started REAL, finished REAL, runtime REAL, progress TEXT, compacted INTEGER DEFAULT 0
    );
    CREATE INDEX processes_phase ON processes(phase);
    CREATE INDEX processes_finished ON processes(finished);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, session INTEGER, seq INTEGER, time REAL, type TEXT,
        pid INTEGER, data TEXT
    );
    CREATE INDEX events_pid ON events(pid, id);
    CREATE INDEX events_time ON events(time);
    CREATE TABLE checkpoints (
        pid INTEGER NOT NULL, version INTEGER NOT NULL, time REAL, state TEXT, PRIMARY KEY (pid, version)
    );
    CREATE TABLE tool_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, tool TEXT, pid INTEGER, started REAL, finished REAL,
        duration REAL, outcome TEXT
    );
    CREATE INDEX tool_runs_tool ON tool_runs(tool, id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, user TEXT, session INTEGER, kind TEXT,
        command TEXT, target INTEGER, status INTEGER
    );
    CREATE INDEX audit_time ON audit(time);
    """,
    # Peak memory of each run (from the monitor), for predicting a tool's memory need.
    2: """
    ALTER TABLE tool_runs ADD COLUMN peak_memory_mb REAL;
    """,
    # Persistent mailboxes (llmunix/ipc/persist.py): a row lives until its message is acknowledged.
    3: """
    CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY, recipient INTEGER NOT NULL, sender INTEGER, type TEXT NOT NULL, topic TEXT,
        body TEXT, sensitive INTEGER DEFAULT 0, sent REAL, deliveries INTEGER DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS messages_recipient ON messages(recipient);
    """,
    # Agents' learning memory (llmunix/agents/memory.py): one row per run, one per tool call.
    4: """
    CREATE TABLE IF NOT EXISTS agent_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, agent TEXT, pid INTEGER, goal TEXT, outcome TEXT,
        duration REAL, iterations INTEGER, tools TEXT, errors TEXT, tokens INTEGER, backend TEXT, answer TEXT
    );
    CREATE INDEX IF NOT EXISTS agent_runs_agent ON agent_runs(agent, id);
    CREATE TABLE IF NOT EXISTS agent_tool_uses (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, agent TEXT, pid INTEGER, tool TEXT, call TEXT,
        child INTEGER, ok INTEGER, duration REAL, error TEXT
    );
    CREATE INDEX IF NOT EXISTS agent_tool_uses_agent ON agent_tool_uses(agent, tool, id);
    """,
    # 3 and 4 were written side by side; a home that reached 4 before 3 existed gets its table here.
    5: """
    CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY, recipient INTEGER NOT NULL, sender INTEGER, type TEXT NOT NULL, topic TEXT,
        body TEXT, sensitive INTEGER DEFAULT 0, sent REAL, deliveries INTEGER DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS messages_recipient ON messages(recipient);
    """,
    # A process's retry/restart policy (JSON; recover re-attaches it) and the Dask worker it ran on.
    6: """
    ALTER TABLE processes ADD COLUMN policy TEXT;
    ALTER TABLE processes ADD COLUMN worker TEXT;
    """,
    # Step caching (llmunix/cache.py): one stored result per key (tool, version, parameters, inputs'
    # content); a process that reused one names its source. The index serves the `ps -l`
    # Performance line and learned scheduling (llmunix/learning.py): a tool's runs by outcome and
    # duration, so its counts, mean and p90 are read from the index alone.
    7: """
    CREATE TABLE IF NOT EXISTS cache (
        key TEXT PRIMARY KEY, tool TEXT NOT NULL, version TEXT, pid INTEGER, created REAL NOT NULL,
        output TEXT, hits INTEGER DEFAULT 0, last_hit REAL
    );
    CREATE INDEX IF NOT EXISTS cache_tool ON cache(tool);
    CREATE INDEX IF NOT EXISTS cache_created ON cache(created);
    ALTER TABLE processes ADD COLUMN cached_from INTEGER;
    CREATE INDEX IF NOT EXISTS tool_runs_perf ON tool_runs(tool, outcome, duration);
    """,
    # LLM token usage, one row per model reply (a `process.tokens` event), for the roll-ups of
    # `stats --tokens`, `ps -l` and budgets (agents/usage.py); a process's children by parent.
    8: """
    CREATE TABLE IF NOT EXISTS token_usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, pid INTEGER, model TEXT, endpoint TEXT, backend TEXT,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost REAL
    );
    CREATE INDEX IF NOT EXISTS token_usage_pid ON token_usage(pid);
    CREATE INDEX IF NOT EXISTS processes_parent ON processes(parent);
    """,
    # `clean`: a finished process leaves the listings (ps -a) but keeps its row, events and log
    # (`ps -l PID`, `log PID`, `events --pid PID` and the audit trail still answer).
    9: """
    ALTER TABLE processes ADD COLUMN cleaned REAL;
    """,
}

# Events whose data is not stored in the events table (kept elsewhere, or too bulky to repeat).
_STRIP = {"process.checkpoint": ("state",)}
TERMINAL = {"process.completed": "Completed", "process.failed": "Failed", "process.cancelled": "Cancelled",
            "process.interrupted": "Interrupted"}


# One encoder for every row: json.dumps with options builds a new JSONEncoder per call (~1 us each).
_ENCODER = json.JSONEncoder(default=repr, ensure_ascii=False, separators=(",", ":"))
# The same encoding made once: JSONEncoder.encode builds a C encoder on every call (a third of
# its cost for an event's data). Without a markers dict a circular value ends in RecursionError,
# which json_text answers as it answers the encoder's own ValueError.
_C_ENCODE = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, repr, json.encoder.encode_basestring, None, ":", ",", False, False, True)
# For values holding lone surrogates (bytes that were not UTF-8, kept by surrogateescape): SQLite
# stores UTF-8 text, which cannot hold them, but JSON's \udcXX escapes can, and read back as the
# very same str. Only such values pay for the escaping of every other non-ASCII character.
_ASCII_ENCODER = json.JSONEncoder(default=repr, ensure_ascii=True, separators=(",", ":"))


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
        return json.dumps(repr(value)[:100_000])
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


def _bindable(args: tuple[Any, ...] | list[Any]) -> tuple[Any, ...] | list[Any]:
    """Statement arguments SQLite can bind: strings made storable (the common case, all ASCII,
    returns `args` itself)."""
    for a in args:
        if type(a) is str and not a.isascii():
            return tuple(storable_text(a) if isinstance(a, str) else a for a in args)
    return args


@dataclass(frozen=True)
class StoreFailure:
    """What went wrong with the store's writes in this session (`Store.failure`).

    `error` is the most recent failure's reason and `time` when it happened (a time.time());
    `lost` counts records (events, statements) that could not be written although the rest of
    their transaction was, and `failed_commits` transactions that failed as a whole (the database
    itself refused: disk full, I/O error, a locked or corrupt file) with everything in them."""

    error: str
    time: float
    lost: int
    failed_commits: int

    def __str__(self) -> str:
        parts = []
        if self.failed_commits:
            parts.append(f"{self.failed_commits} commit(s) failed")
        if self.lost:
            parts.append(f"{self.lost} record(s) lost")
        return f"{', '.join(parts) or 'failed'}; last error: {self.error}"


class Store:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        self._closed = False
        self.interrupted_at_start = 0
        self.session = 0
        if read_only:
            # Another llmunix owns this home and writes it; we only read (WAL allows it).
            if not self.path.exists():
                raise LlmunixError(f"{self.path} does not exist yet")
            return
        # Parameters may hold secrets: the database is created 0600 before SQLite opens it, and
        # SQLite gives its -wal and -shm files the database's mode.
        os.close(create_private_file(self.path))
        for extra in ("-wal", "-shm"):
            if Path(f"{self.path}{extra}").exists():
                os.close(create_private_file(Path(f"{self.path}{extra}")))
        conn = self._connect()
        try:
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise LlmunixError(f"{self.path}: not a usable llmunix database ({exc})") from None
        # Processes an earlier session left live did not end: they were interrupted.
        conn.execute(
            "UPDATE processes SET phase='interrupted', state='Interrupted', "
            "detail='interrupted: llmunix stopped while it was live' WHERE phase NOT IN ('done', 'interrupted')")
        self.interrupted_at_start = conn.execute(
            "SELECT count(*) FROM processes WHERE phase='interrupted'").fetchone()[0]
        cur = conn.execute("INSERT INTO sessions (started, os_pid) VALUES (?, ?)", (time.time(), _os_pid()))
        self.session = int(cur.lastrowid or 0)
        conn.commit()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._committed = 0  # highest kernel event seq committed
        self._durable = threading.Condition()
        self._commit_hooks: list[Callable[[int], None]] = []
        self._failed: BaseException | None = None  # the last failure (health read it before `failure`)
        self._failure: StoreFailure | None = None
        self._reasons_logged: set[str] = set()
        self._writer = threading.Thread(target=self._write_loop, name="llmunix-store", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.row_factory = sqlite3.Row
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LlmunixError(f"{self.path} was written by a newer llmunix (schema {version}); upgrade llmunix")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            conn.executescript("BEGIN;" + MIGRATIONS[v] + f"PRAGMA user_version={v}; COMMIT;")

    # ------------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self.read_only:
            raise LlmunixError("this store is open read-only")

    def consume(self, event: Event) -> None:
        """Bus subscriber: queue the event for the writer (never blocks)."""
        self._queue.put(event)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        """Queue a statement for the writer, committed with the next group."""
        self._queue.put((sql, args))

    def backlog(self) -> int:
        """Events and statements queued for the writer, not yet committed."""
        return self._queue.qsize()

    @property
    def failure(self) -> StoreFailure | None:
        """None while every write of this session has been committed; else what failed (the
        reason, when, how many records were lost). It stays set for the rest of the session: a
        lost write is not undone by later ones succeeding. `health` reports it."""
        return self._failure if not self.read_only else None

    def on_commit(self, hook: Callable[[int], None]) -> None:
        """Call `hook(seq)` on the writer thread after each commit (seq: highest event committed)."""
        self._commit_hooks.append(hook)

    def wait_durable(self, seq: int, timeout: float | None = 30.0) -> bool:
        """Block until the event with kernel sequence number `seq` is committed."""
        with self._durable:
            return self._durable.wait_for(lambda: self._committed >= seq or self._closed, timeout)

    def throttle(self, seq: int) -> None:
        """Backpressure for event producers (ctx.log, ctx.progress, a subprocess's output): the
        caller has just published event `seq`; while more than BACKLOG events are still to be
        committed, wait until half of them are. This bounds the memory a flood of events can
        take and how long a checkpoint or terminal state queues behind it."""
        if not self.read_only and seq - self._committed > BACKLOG and not self._closed:
            self.wait_durable(seq - BACKLOG // 2, timeout=10)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything queued so far is committed."""
        if self.read_only or self._closed:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def compact(self, *, before: float, keep: int, protect: Callable[[], Collection[int]] | None = None,
                wait: bool = True, timeout: float = 300.0, sweep: bool = True) -> Compaction:
        """Compact finished processes that finished before `before` (a time.time()) or are older
        than the newest `keep` finished ones: their events and checkpoints are deleted and their
        row in `processes` stays as a summary (`compacted=1`). Interrupted and live rows are never
        touched, nor the PIDs `protect()` returns when a step runs (live in the kernel).

        The work runs on the writer thread in steps of `Compaction.STEP` processes, each its own
        transaction; between steps the writer commits whatever events arrived, so checkpoints
        and terminal states are not held up. With `wait`, blocks until it is done. Without
        `sweep`, what ages out by time alone (audit, tool runs, ...) is left to a later pass:
        those deletes read whole tables, and the automatic passes come every 1,000 ends."""
        self._check_writable()
        if self._closed:
            raise LlmunixError("the store is closed")
        job = Compaction(before, max(0, int(keep)), protect, sweep=sweep)
        self._queue.put(job)
        if wait and not job.done.wait(timeout):
            raise LlmunixError(f"compaction did not finish within {timeout:.0f} s")
        return job

    def _run_compaction(self, conn: sqlite3.Connection, job: Compaction, last: bool) -> None:
        """Writer thread: one step of a compaction; queue the next unless done (or closing)."""
        more = False
        try:
            conn.execute("BEGIN")
            more = job.step(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("compaction failed: %s", exc)
            job.error = str(exc)
            more = False
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if more and not last:
            self._queue.put(job)
        else:
            job.done.set()

    def close(self) -> None:
        if self._closed:
            return
        if self.read_only:
            self._closed = True
            return
        self.execute("UPDATE sessions SET ended=?, clean=1 WHERE id=?", (time.time(), self.session))
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._closed = True
        while True:  # a compaction still queued will not run now: release whoever waits for it
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Compaction):
                item.done.set()
        with self._durable:
            self._durable.notify_all()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    def _write_loop(self) -> None:
        conn = self._connect()
        writer = _EventWriter(conn, self.session)
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:  # group commit: everything that is already waiting goes in this transaction
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes: list[Any] = []
            markers = []
            jobs = []
            top = 0
            for item in batch:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                elif isinstance(item, Compaction):
                    jobs.append(item)
                else:
                    writes.append(item)
                    if isinstance(item, Event):
                        top = max(top, item.seq)
            if writes:
                self._commit(conn, writer, writes)
            if top:
                with self._durable:
                    self._committed = max(self._committed, top)
                    self._durable.notify_all()
                for hook in self._commit_hooks:
                    try:
                        hook(top)
                    except Exception:
                        log.exception("store commit hook failed")
            for m in markers:
                m.set()
            for job in jobs:
                self._run_compaction(conn, job, last=stop)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, writer: _EventWriter, writes: list[Any]) -> None:
        """Writer thread: commit a group of writes in one transaction. If it fails, write them
        again one at a time, so that one record SQLite refuses costs only itself: the others
        are committed and the loss is recorded (a `store.write_lost` event row, `failure`)."""
        try:
            conn.execute("BEGIN")
            for item in writes:
                _write_item(writer, item)
            writer.flush_progress()  # and the events
            conn.execute("COMMIT")
            return
        except Exception:  # noqa: BLE001 - which record, and whether the database itself fails, is found below
            _rollback(conn)
            writer.discard()
        lost: list[tuple[Any, BaseException]] = []
        try:
            conn.execute("BEGIN")
            for item in writes:
                conn.execute("SAVEPOINT record")
                try:
                    _write_item(writer, item)
                    writer.flush_events()
                except Exception as exc:  # noqa: BLE001 - this record only
                    conn.execute("ROLLBACK TO record")
                    writer.discard()
                    lost.append((item, exc))
                conn.execute("RELEASE record")
            conn.execute("SAVEPOINT record")
            try:
                writer.flush_progress()
            except Exception as exc:  # noqa: BLE001
                conn.execute("ROLLBACK TO record")
                writer.discard(progress=True)
                lost.append(("progress", exc))
            conn.execute("RELEASE record")
            for item, exc in lost:
                conn.execute("INSERT INTO events (session, seq, time, type, pid, data) VALUES (?,?,?,?,?,?)",
                             (self.session, None, time.time(), "store.write_lost",
                              item.pid if isinstance(item, Event) else None, json_text(_lost_record(item, exc))))
            conn.execute("COMMIT")
        except Exception as exc:  # the database itself refuses: nothing of this group is stored
            _rollback(conn)
            writer.discard()
            self._note_failure(exc, commits=1, what=f"a group of {len(writes)} write(s) was not committed")
            return
        for item, exc in lost:
            self._note_failure(exc, lost=1, what=f"one record ({_describe_item(item)}) was not written; "
                                                  "the rest of its group was")

    def _note_failure(self, exc: BaseException, *, lost: int = 0, commits: int = 0, what: str) -> None:
        """Count a failure for `failure`, and log it: with its traceback the first time a reason
        is seen, never again after (a failing disk must not bury the log, nor a user's terminal)."""
        old = self._failure
        self._failed = exc
        self._failure = StoreFailure(
            error=f"{type(exc).__name__}: {exc}", time=time.time(), lost=(old.lost if old else 0) + lost,
            failed_commits=(old.failed_commits if old else 0) + commits)
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        if reason in self._reasons_logged:
            return
        if len(self._reasons_logged) < 100:
            self._reasons_logged.add(reason)
        log.error("store write failed: %s: %s (later failures for the same reason are counted, not logged; "
                  "`health` shows the totals)", what, reason, exc_info=(type(exc), exc, exc.__traceback__))

    # ------------------------------------------------------------------ reading

    def process_rows(self, *, pids: Iterable[int] | None = None) -> list[sqlite3.Row]:
        """Whole rows: of the given PIDs, or of every process listed (not `clean`ed), by PID."""
        conn = self._reader()
        if pids is None:
            return conn.execute("SELECT * FROM processes WHERE cleaned IS NULL ORDER BY pid").fetchall()
        ids = list(pids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return conn.execute(f"SELECT * FROM processes WHERE pid IN ({marks}) ORDER BY pid", ids).fetchall()

    def ps_rows(self, *, live_only: bool = False) -> list[tuple[Any, ...]]:
        """The columns a `ps` listing needs, for every stored process by PID (`live_only`: those
        not finished), as plain tuples: (pid, name, tool, state, phase, detail, priority, runtime,
        progress). What a cold `ps -a` over 100,000 stored processes reads, without whole rows."""
        cur = self._reader().cursor()
        cur.row_factory = None
        where = " WHERE phase NOT IN ('done', 'interrupted')" if live_only else " WHERE cleaned IS NULL"
        return cur.execute("SELECT pid, name, tool, state, phase, detail, priority, runtime, progress "
                           f"FROM processes{where} ORDER BY pid").fetchall()

    def process_row(self, pid: int) -> sqlite3.Row | None:
        return self._reader().execute("SELECT * FROM processes WHERE pid=?", (pid,)).fetchone()

    def live_rows(self) -> list[sqlite3.Row]:
        return self._reader().execute(
            "SELECT * FROM processes WHERE phase NOT IN ('done', 'interrupted') ORDER BY pid").fetchall()

    def interrupted_rows(self) -> list[sqlite3.Row]:
        return self._reader().execute(
            "SELECT * FROM processes WHERE phase='interrupted' ORDER BY pid").fetchall()

    def checkpoints(self, pid: int) -> list[tuple[int, float, Any]]:
        rows = self._reader().execute(
            "SELECT version, time, state FROM checkpoints WHERE pid=? ORDER BY version", (pid,)).fetchall()
        return [(r["version"], r["time"], json.loads(r["state"])) for r in rows]

    def events(self, *, pid: int | None = None, types: str | None = None, since: float | None = None,
               after_id: int = 0, limit: int | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after_id]
        if pid is not None:
            sql += " AND pid = ?"
            args.append(pid)
        if types:
            sql += " AND (" + " OR ".join("type GLOB ?" for _ in types.split("|")) + ")"
            args.extend(t.strip() for t in types.split("|"))
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        sql += " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql[:-len(' ORDER BY id')]} ORDER BY id DESC LIMIT {int(limit)}) ORDER BY id"
        return self._reader().execute(sql, args).fetchall()

    def log_lines(self, pid: int, *, since: float | None = None, limit: int | None = None
                  ) -> list[tuple[float, str]]:
        """A process's log lines, oldest first; `since` a Unix time, `limit` the newest N (read
        from the end of the index: a log of a million lines costs what N lines cost)."""
        sql = "SELECT id, time, data FROM events WHERE pid=? AND type='process.log'"
        args: list[Any] = [pid]
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        rows = self._reader().execute(sql + " ORDER BY id", args).fetchall()
        return [(r["time"], json.loads(r["data"]).get("line", "")) for r in rows]

    def tool_runs(self, tool: str | None = None) -> list[tuple[str, str, float | None]]:
        """(tool, outcome, duration) of every recorded run, oldest first; only `tool`'s if given."""
        if tool is None:
            rows = self._reader().execute("SELECT tool, outcome, duration FROM tool_runs ORDER BY id").fetchall()
        else:
            rows = self._reader().execute(
                "SELECT tool, outcome, duration FROM tool_runs WHERE tool=? ORDER BY id", (tool,)).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def audit_rows(self, since: float | None = None, limit: int | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM audit WHERE time >= ?"
        if limit is not None:  # the newest N, read from the end
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        return self._reader().execute(sql + " ORDER BY id", (since or 0.0,)).fetchall()

    def tool_durations(self, tool: str, limit: int = 20) -> list[float]:
        rows = self._reader().execute(
            "SELECT duration FROM tool_runs WHERE tool=? AND outcome='Completed' ORDER BY id DESC LIMIT ?",
            (tool, limit)).fetchall()
        return [r[0] for r in rows]

    def durations_by_name(self, name: str, limit: int = 20) -> list[float]:
        """Running times of the last completed processes called `name` (workflow steps), newest first."""
        rows = self._reader().execute(
            "SELECT runtime FROM processes WHERE name=? AND state='Completed' AND runtime IS NOT NULL "
            "AND cached_from IS NULL ORDER BY finished DESC LIMIT ?", (name, limit)).fetchall()
        return [r[0] for r in rows]

    def latest_by_name(self, name: str, kind: str) -> int | None:
        """The newest process of `kind` called `name`."""
        row = self._reader().execute("SELECT MAX(pid) FROM processes WHERE name=? AND kind=?", (name, kind)).fetchone()
        return row[0] if row is not None else None

    def tool_performance(self, tool: str) -> tuple[int, int, float | None, float | None]:
        """(completed, failed, mean duration of the completed, their p90 by nearest rank) over the
        tool's stored runs; cancelled and interrupted runs are not the tool's doing and are left
        out. Read from the `tool_runs_perf` index: no row of the table is visited."""
        conn = self._reader()
        row = conn.execute(
            "SELECT count(CASE WHEN outcome='Completed' THEN 1 END), count(CASE WHEN outcome='Failed' THEN 1 END), "
            "avg(CASE WHEN outcome='Completed' THEN duration END), "
            "count(CASE WHEN outcome='Completed' AND duration IS NOT NULL THEN 1 END) "
            "FROM tool_runs WHERE tool=? AND outcome IN ('Completed', 'Failed')", (tool,)).fetchone()
        completed, failed, mean, timed = int(row[0]), int(row[1]), row[2], int(row[3])
        p90 = None
        if timed:
            rank = max(0, math.ceil(0.9 * timed) - 1)
            hit = conn.execute("SELECT duration FROM tool_runs WHERE tool=? AND outcome='Completed' "
                               "AND duration IS NOT NULL ORDER BY duration LIMIT 1 OFFSET ?", (tool, rank)).fetchone()
            p90 = hit[0] if hit is not None else None
        return completed, failed, mean, p90

    def tool_peak_memory(self, tool: str, limit: int = 20) -> list[float]:
        """Peak memory (MB) of the tool's last completed runs that were measured, newest first."""
        rows = self._reader().execute(
            "SELECT peak_memory_mb FROM tool_runs WHERE tool=? AND outcome='Completed' "
            "AND peak_memory_mb IS NOT NULL ORDER BY id DESC LIMIT ?", (tool, limit)).fetchall()
        return [r[0] for r in rows]

    # ---------------------------------------------------------------- LLM token usage (agents/usage.py)
    # Each row: (key, calls, prompt_tokens, completion_tokens, cost of the priced calls, tokens of
    # the calls without a price).
    _TOKEN_SUMS = ("COUNT(t.id), COALESCE(SUM(t.prompt_tokens), 0), COALESCE(SUM(t.completion_tokens), 0), "
                   "COALESCE(SUM(t.cost), 0.0), "
                   "COALESCE(SUM(CASE WHEN t.cost IS NULL THEN t.prompt_tokens + t.completion_tokens END), 0)")

    def token_usage(self, pids: Iterable[int]) -> dict[int, tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """For each of `pids` that used tokens, itself or below it: (its own sums, the sums of it
        and every process below it), each (calls, prompt, completion, cost, unpriced tokens)."""
        ids = [int(p) for p in pids]
        if not ids:
            return {}
        rows = self._reader().execute(
            "WITH RECURSIVE tree(top, pid) AS (SELECT value, value FROM json_each(?) "
            "UNION ALL SELECT tree.top, p.pid FROM processes p JOIN tree ON p.parent = tree.pid) "
            f"SELECT tree.top, tree.pid = tree.top, {self._TOKEN_SUMS} FROM tree "
            "JOIN token_usage t ON t.pid = tree.pid GROUP BY tree.top, tree.pid = tree.top",
            (json.dumps(ids),)).fetchall()
        out: dict[int, list[tuple[Any, ...]]] = {}
        for r in rows:
            own, tree = out.setdefault(r[0], [(0, 0, 0, 0.0, 0), (0, 0, 0, 0.0, 0)])
            sums = tuple(r[2:])
            if r[1]:
                own = sums
            tree = tuple(a + b for a, b in zip(tree, sums, strict=True))
            out[r[0]] = [own, tree]
        return {pid: (v[0], v[1]) for pid, v in out.items()}

    def token_roots(self, limit: int | None = None) -> list[tuple[Any, ...]]:
        """Token sums per top-level process (one without a parent), its children's included:
        (pid, name, kind, state, calls, prompt, completion, cost, unpriced), by PID."""
        sql = ("WITH RECURSIVE up(pid, top) AS (SELECT DISTINCT pid, pid FROM token_usage "
               "UNION SELECT up.pid, p.parent FROM up JOIN processes p ON p.pid = up.top WHERE p.parent IS NOT NULL), "
               "roots(pid, top) AS (SELECT up.pid, up.top FROM up LEFT JOIN processes p ON p.pid = up.top "
               "WHERE p.parent IS NULL) "
               f"SELECT roots.top, r.name, r.kind, r.state, {self._TOKEN_SUMS} FROM token_usage t "
               "JOIN roots ON roots.pid = t.pid LEFT JOIN processes r ON r.pid = roots.top "
               "GROUP BY roots.top ORDER BY roots.top")
        rows = self._reader().execute(sql).fetchall()
        return [tuple(r) for r in (rows[-limit:] if limit else rows)]

    def token_models(self) -> list[tuple[Any, ...]]:
        """Token sums per model and endpoint: (model, endpoint, calls, prompt, completion, cost,
        unpriced), by model."""
        rows = self._reader().execute(
            f"SELECT t.model, t.endpoint, {self._TOKEN_SUMS} FROM token_usage t "
            "GROUP BY t.model, t.endpoint ORDER BY t.model, t.endpoint").fetchall()
        return [tuple(r) for r in rows]

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query, on this thread's reading connection."""
        return self._reader().execute(sql, args).fetchall()

    def integrity_check(self) -> str:
        return str(self._reader().execute("PRAGMA integrity_check").fetchone()[0])


def _write_item(writer: _EventWriter, item: Any) -> None:
    if isinstance(item, Event):
        writer.write(item)
    else:  # a statement from `execute`
        writer.flush_events()
        sql, args = item
        writer.conn.execute(sql, _bindable(args))


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _describe_item(item: Any) -> str:
    if isinstance(item, Event):
        return f"event {item.type}" + (f" of process {item.pid}" if item.pid is not None else "")
    if item == "progress":
        return "progress of this group's processes"
    return f"statement {str(item[0]).split(None, 3)[:3]}"


def _lost_record(item: Any, exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"record": _describe_item(item), "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(item, Event):
        out.update(type=item.type, seq=item.seq)
    return out


class Compaction:
    """One retention pass over the store, run in steps on the writer thread (`Store.compact`).

    Candidates are finished rows (phase 'done', not yet compacted) that are either older than
    `before` or outside the newest `keep` finished ones; both limits become one bound on
    (finished, pid), walked in that order with a cursor so no row is looked at twice. The
    counts are totals so far; `done` is set when the pass is over.
    """

    STEP = 500  # processes per transaction (also keeps the IN (...) lists short)

    def __init__(self, before: float, keep: int, protect: Callable[[], Collection[int]] | None, *,
                 sweep: bool = True) -> None:
        self.before = before
        self.keep = keep
        self.protect = protect
        self.sweep = sweep
        self.processes = 0
        self.events = 0
        self.checkpoints = 0
        self.error: str | None = None
        self.done = threading.Event()
        self._bound: tuple[float, int] | None = None
        self._cursor: tuple[float, int] = (-1.0, 0)

    def as_dict(self) -> dict[str, Any]:
        return {"processes": self.processes, "events": self.events, "checkpoints": self.checkpoints}

    def step(self, conn: sqlite3.Connection) -> bool:
        """Compact up to STEP processes; True if there may be more."""
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
            protected = set(self.protect()) if self.protect is not None else set()
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
step; while the workers keep the GIL busy, taking it back after each row's step is a wait each
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


class _EventWriter:
    """Turns events into rows, on the writer thread. A process spawned in the transaction being
    written is one row built in memory from all its events (spawned, started, ..., its end) and
    inserted once, with its tool run, when the events are flushed: a no-op process costs one
    INSERT, not an INSERT and three UPDATEs. Progress rows are coalesced per batch."""

    def __init__(self, conn: sqlite3.Connection, session: int) -> None:
        self.conn = conn
        self.session = session
        self._progress: dict[int, str] = {}
        self._events: list[tuple[Any, ...]] = []  # event rows, inserted with one executemany
        self._new: dict[int, list[Any]] = {}  # processes rows of this transaction, by PID
        self._runs: list[tuple[Any, ...]] = []  # tool_runs rows of those
        self._ends: dict[int, tuple[Any, ...]] = {}  # terminal updates of earlier processes, by PID

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        self.conn.execute(sql, _bindable(args))

    def write(self, e: Event) -> None:
        data = e.data
        strip = _STRIP.get(e.type)
        if strip:
            data = {k: v for k, v in data.items() if k not in strip}
        self._events.append(_bindable((self.session, e.seq, e.time, e.type, e.pid, json_text(redact(data)))))
        audit = audit_row(e)
        if audit is not None:
            self._execute("INSERT INTO audit (time, user, session, kind, command, target, status) "
                          "VALUES (?,?,?,?,?,?,?)", (e.time, audit[0], self.session, *audit[1:]))
        if e.pid is None or not e.type.startswith("process."):
            return
        d = e.data
        kind = e.type[8:]
        if kind == "spawned":
            if e.pid in self._ends:  # it ended and runs again (rollback): its old end goes first
                self.flush_events()
            self._new[e.pid] = [
                e.pid, self.session, d.get("name"), d.get("tool"), d.get("kind", "tool"), d.get("priority"),
                d.get("owner"), d.get("parent"), json_text(d.get("after", [])), d.get("cwd"),
                json_text(d.get("params", {})), int(bool(d.get("idempotent"))), "Pending", d.get("phase", "ready"),
                d.get("detail", "queued"), e.time, 0, json_text(d["policy"]) if d.get("policy") else None,
                None, None, None, None, None, None, None]
            return
        row = self._new.get(e.pid)
        if kind == "started":
            if row is not None:
                row[_COL["started"]], row[_COL["state"]] = e.time, d.get("state", "Running")
                row[_COL["phase"]], row[_COL["detail"]], row[_COL["session"]] = "running", "running", self.session
            else:
                self._execute("UPDATE processes SET started=?, state=?, phase='running', detail='running', "
                              "session=? WHERE pid=?", (e.time, d.get("state", "Running"), self.session, e.pid))
        elif kind == "state":
            if row is not None:
                row[_COL["state"]], row[_COL["detail"]] = d.get("state"), d.get("detail") or d.get("state")
            else:
                self._execute("UPDATE processes SET state=?, detail=? WHERE pid=?",
                              (d.get("state"), d.get("detail") or d.get("state"), e.pid))
        elif kind == "progress":
            self._progress[e.pid] = json_text({k: d.get(k) for k in ("step", "total", "percentage", "message")})
        elif kind == "checkpoint":
            self._execute("INSERT OR REPLACE INTO checkpoints (pid, version, time, state) VALUES (?,?,?,?)",
                          (e.pid, d.get("version"), e.time, json_text(d.get("state"))))
        elif kind in _PHASE_OF:
            if row is not None:
                row[_COL["phase"]] = _PHASE_OF[kind]
            else:
                self._execute("UPDATE processes SET phase=? WHERE pid=?", (_PHASE_OF[kind], e.pid))
        elif kind == "cleaned":  # `clean`: out of the listings, its events and log kept
            if e.pid in self._new or e.pid in self._ends:
                self.flush_events()  # its row goes in (or ends) first
            self._execute("UPDATE processes SET cleaned=? WHERE pid=?", (e.time, e.pid))
        elif kind == "cached":  # it reused a stored result (llmunix/cache.py): not a run of its tool
            if row is not None:
                row[_COL["cached_from"]] = d.get("source")
            else:
                self._execute("UPDATE processes SET cached_from=? WHERE pid=?", (d.get("source"), e.pid))
        elif kind == "tokens":  # an LLM reply's usage (cost NULL: no price for the model)
            self._execute("INSERT INTO token_usage (time, pid, model, endpoint, backend, prompt_tokens, "
                          "completion_tokens, cost) VALUES (?,?,?,?,?,?,?,?)",
                          (e.time, e.pid, d.get("model"), d.get("endpoint"), d.get("backend"),
                           int(d.get("prompt_tokens") or 0), int(d.get("completion_tokens") or 0), d.get("cost")))
        elif kind == "remote":  # its body runs on a Dask worker
            if row is not None:
                row[_COL["worker"]] = d.get("worker")
            else:
                self._execute("UPDATE processes SET worker=? WHERE pid=?", (d.get("worker"), e.pid))
        elif kind == "reniced":
            if row is not None:
                row[_COL["priority"]] = d.get("new")
            else:
                self._execute("UPDATE processes SET priority=? WHERE pid=?", (d.get("new"), e.pid))
        elif e.type in TERMINAL:
            state = TERMINAL[e.type]
            phase = "interrupted" if state == "Interrupted" else "done"
            end = (state, phase, d.get("error") or ("exit 0" if state == "Completed" else state.lower()),
                   d.get("exit_code"), d.get("error"), json_text(d.get("output")), e.time, d.get("runtime"))
            if row is not None:
                for name, value in zip(("state", "phase", "detail", "exit_code", "error", "output", "finished",
                                        "runtime"), end, strict=True):
                    row[_COL[name]] = value
                if state != "Interrupted" and row[_COL["cached_from"]] is None:
                    self._runs.append((row[_COL["tool"]], e.pid, row[_COL["started"]], e.time, d.get("runtime"),
                                       state, d.get("peak_memory_mb")))
                return
            # Batched (shutdown ends 100,000 queued processes): one executemany at the flush.
            self._ends[e.pid] = (*end, e.pid, e.time, d.get("runtime"), d.get("peak_memory_mb"))

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


def _os_pid() -> int:
    return os.getpid()
