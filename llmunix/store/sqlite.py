"""Durable state: one SQLite database (WAL) per home directory, written by one writer.

The store is an event consumer like any other: it subscribes to the bus and turns events into
rows (event sourcing). The writer (llmunix/store/writer.py) owns the only writing connection and
commits in groups — everything queued since the last commit goes in one transaction — so no
worker waits on disk and the cost of a write does not depend on how much is stored. It runs in
its own OS process: the kernel's process only queues events and, on thread llmunix-store, sends
them down a pipe (about 1 us a process); redaction, JSON and SQLite run on another core.

Durability rules (the engine waits on disk only for these):
* a checkpoint is committed before `ctx.checkpoint()` returns;
* a terminal state and output are committed before dependents are released.
Both use `wait_durable(seq)`. With WAL and synchronous=NORMAL a commit is in the OS before it
returns, so it survives a SIGKILL of llmunix (not a power cut: set `synchronous=FULL` for that).
What was sent to the writer process before a SIGKILL of llmunix is committed too: it ends at the
end of its input, not before.

Reads use a connection per reading thread; WAL lets them run beside the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import queue
import sqlite3
import subprocess
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmunix.home import create_private_file
from llmunix.models import Event, LlmunixError
from llmunix.observe.audit import audit_row
from llmunix.store.writer import (
    COMMITTED,
    COMPACT,
    COMPACTED,
    EVENT,
    FATAL,
    FLUSH,
    LOST,
    STATEMENT,
    STOP,
    STRIPPED,
    TERMINAL,
    MessageReader,
    Unbindable,
    Writer,
    connect,
    decode_group,
    describe,
    encode_group,
    json_text,
    launch_args,
    storable_text,
    write_all,
)

log = logging.getLogger("llmunix.store")

__all__ = ["BACKLOG", "SCHEMA_VERSION", "STRIPPED", "TERMINAL", "Compaction", "Store", "StoreFailure", "json_text",
           "storable_text"]

SCHEMA_VERSION = 10
PROMOTE_AFTER = 2000
SMALL_GROUP = 8  # records a group may hold to be committed on the shipping thread while the writer process idles
"""Records a session writes on a thread before its writer moves to a process of its own (writer
`auto`): a one-shot command or a quiet shell never starts one; a busy session does, within its
first few hundred processes."""
WRITER_RESTARTS = 3  # writer processes that end unasked within a minute before writing goes to a thread
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
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
    # The last group of writes the writer committed (llmunix/store/writer.py): a writer started
    # again after one that died skips what is already in.
    10: """
    ALTER TABLE sessions ADD COLUMN writer_group INTEGER;
    """,
}

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
    """The home's database. Writes are queued (`consume`, `execute`) and committed in groups by
    the writer (llmunix/store/writer.py); reads run here, on a connection per reading thread.

    `writer` (default: the environment's LLMUNIX_STORE_WRITER, else "process") says where the
    writer runs: "process" in a process of its own from the start; "auto" on a thread until the
    session has written PROMOTE_AFTER records, then in a process (`llmunix -c`); "thread" always
    on a thread (also where no process can be started)."""

    def __init__(self, path: Path, *, read_only: bool = False, writer: str | None = None) -> None:
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
        self._hook_lock = threading.Lock()
        self._hooked = 0  # the highest seq the commit hooks were called with
        self._failure: StoreFailure | None = None
        self._reasons_logged: set[str] = set()
        # What was sent to the writer and not yet answered as committed: (group number, items).
        # A writer process that dies is started again and sent these again (it skips what it had
        # committed after all: the number of the last group is committed with it).
        self._unacked: deque[tuple[int, list[Any]]] = deque()
        self._in_flight = 0  # items in _unacked
        self._group = 0
        self._send_lock = threading.Lock()  # sending a group; starting a writer again
        self._unacked_lock = threading.Lock()  # _unacked and _in_flight (never held while sending)
        self._markers: dict[int, threading.Event] = {}
        self._jobs: dict[int, Compaction] = {}
        self._stopping = False
        self._restarts: deque[float] = deque(maxlen=WRITER_RESTARTS)
        self.writer_mode = writer or os.environ.get("LLMUNIX_STORE_WRITER") or "process"
        if self.writer_mode not in ("auto", "process", "thread"):
            raise LlmunixError(f"unknown store writer {self.writer_mode!r}: say 'auto', 'process' or 'thread'")
        self._beside: _ThreadLink | None = None  # beside a writer process: for a few records when it is idle
        self._sent = 0  # records sent so far (`auto` moves the writer to a process after PROMOTE_AFTER)
        self._link: _Link = self._open_link("process" if self.writer_mode == "process" else "thread")
        if type(self._link) is _ProcessLink:  # made now, while descriptors are to be had
            try:
                self._beside = _ThreadLink(self)
            except sqlite3.Error as exc:
                log.warning("no connection beside the writer process (%s): every group goes to it", exc)
        self._writer = threading.Thread(target=self._ship_loop, name="llmunix-store", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        return connect(str(self.path))

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
        """Queue a statement for the writer, committed with the next group. Arguments SQLite
        cannot bind (not None, int, float, str or bytes) make it a lost record (`failure`)."""
        self._queue.put((sql, args))

    def backlog(self) -> int:
        """Events and statements queued for the writer, not yet committed."""
        return self._queue.qsize() + self._in_flight

    def in_flight(self) -> int:
        """Records sent to the writer and not yet committed (part of `backlog`): what a writer
        process commits even if llmunix is killed now."""
        return self._in_flight

    @property
    def writer_pid(self) -> int | None:
        """The OS PID of the writer process; None when the writer is a thread (or read-only)."""
        link = getattr(self, "_link", None)
        return link.child.pid if isinstance(link, _ProcessLink) else None

    @property
    def failure(self) -> StoreFailure | None:
        """None while every write of this session has been committed; else what failed (the
        reason, when, how many records were lost). It stays set for the rest of the session: a
        lost write is not undone by later ones succeeding. `health` reports it."""
        return self._failure if not self.read_only else None

    def on_commit(self, hook: Callable[[int], None]) -> None:
        """Call `hook(seq)` after each commit (seq: highest event committed), on the thread that
        learns of commits (never a kernel worker)."""
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
        touched, nor the PIDs `protect()` returns when a step is sent (live in the kernel).

        The work runs on the writer in steps of `CompactionStep.STEP` processes, each its own
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

    def close(self) -> None:
        if self._closed:
            return
        if self.read_only:
            self._closed = True
            return
        self.execute("UPDATE sessions SET ended=?, clean=1 WHERE id=?", (time.time(), self.session))
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._link.close(timeout=30)
        if self._beside is not None:
            self._beside.close(timeout=0)
        self._closed = True
        while True:  # a compaction still queued will not run now: release whoever waits for it
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Compaction):
                item.done.set()
        for job in list(self._jobs.values()):
            job.done.set()
        for marker in list(self._markers.values()):
            marker.set()
        with self._durable:
            self._durable.notify_all()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ the writer's two ends

    def _ship_loop(self) -> None:
        """Thread llmunix-store: everything queued since the last look goes to the writer as one
        numbered group (events as plain tuples; audit rows with their events; flush markers and
        compaction steps as tokens). It never ends but at the close: what it could not send is
        counted as lost (`failure`) and logged."""
        q = self._queue
        while True:
            batch = [q.get()]
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._ship(batch):
                    return
            except Exception as exc:  # noqa: BLE001 - never silent, never the end of the writing
                self._note_failure(f"{type(exc).__name__}: {exc}", lost=len(batch),
                                   what=f"a group of {len(batch)} record(s) could not be sent to the writer",
                                   trace=traceback.format_exc())
                if any(item is None for item in batch):
                    self._stopping = True
                    return

    def _ship(self, batch: list[Any]) -> bool:
        """Send `batch` (in order; a compaction step in a group of its own). Returns whether it
        held the STOP."""
        session = self.session
        items: list[Any] = []
        stop = False
        for item in batch:
            if isinstance(item, Event):
                items.append((EVENT, item.seq, item.time, item.type, item.pid, item.data))
                audit = audit_row(item)
                if audit is not None:
                    items.append((STATEMENT, _INSERT_AUDIT, (item.time, audit[0], session, *audit[1:])))
            elif item is None:
                stop = True
                self._stopping = True
                items.append((STOP,))
            elif isinstance(item, threading.Event):
                token = id(item)
                self._markers[token] = item
                items.append((FLUSH, token))
            elif isinstance(item, Compaction):
                self._jobs[item.id] = item
                try:
                    protected = list(item.protect()) if item.protect is not None else []
                except Exception:  # noqa: BLE001 - nothing is protected we cannot name: skip this step
                    log.exception("compaction: the live PIDs could not be read; the pass ends here")
                    self._jobs.pop(item.id, None)
                    item.error = "the live PIDs could not be read"
                    item.done.set()
                    continue
                if items:  # a step runs after what came before it is committed
                    self._send(items)
                    items = []
                self._send([(COMPACT, item.id, item.before, item.keep, item.sweep, protected)])
            else:  # a statement from `execute`
                try:
                    sql, args = item
                    items.append((STATEMENT, str(sql), _sendable_args(args)))
                except Exception as exc:  # noqa: BLE001 - (arguments that are not a sequence): this record only
                    items.append((LOST, f"statement {str(item)[:60]}", f"{type(exc).__name__}: {exc}"))
        if items:
            self._send(items)
        return stop

    def _send(self, items: list[Any]) -> None:
        with self._send_lock:
            self._group += 1
            number = self._group
            link = self._link
            if (self._beside is not None and type(link) is _ProcessLink and len(items) <= SMALL_GROUP
                    and not self._unacked and items[-1][0] not in (STOP, COMPACT)):
                # A few records while the writer process has nothing to do: committed here, on
                # this thread (two hand-overs to a commit and back instead of four: an idle
                # checkpoint or flush waits as long as with a writer thread). Never while the
                # process still has anything: one writer at a time, in order.
                link = self._beside
            data = link.prepare(number, items)  # what cannot be sent is a LOST item now
            with self._unacked_lock:
                self._unacked.append((number, items))
                self._in_flight += len(items)
            try:
                link.send(number, items, data)
            except OSError:  # the writer process is gone: the one its reader starts is sent this too
                return
            self._sent += len(items)
            if self._sent >= PROMOTE_AFTER and self.writer_mode == "auto":
                self._promote()

    def _promote(self) -> None:
        """`auto`: the session writes enough to be worth a process of its own (with the send lock
        held). The thread writer, which has committed everything it was sent, stays beside it."""
        try:
            link = _ProcessLink(self)
        except (OSError, LlmunixError) as exc:
            log.warning("the store's writer process could not start (%s): writing on a thread", exc)
            self.writer_mode = "thread"
            return
        self.writer_mode = "process"
        if isinstance(self._link, _ThreadLink):
            self._beside = self._link
        self._link = link

    def _on_answer(self, answer: tuple[Any, ...]) -> None:
        """An answer of the writer (on the thread that reads them, or the writer's own thread)."""
        kind = answer[0]
        if kind == COMMITTED:
            _kind, group, top, tokens, failures = answer
            unacked = self._unacked  # first: with nothing unanswered, the next group may be written beside
            with self._unacked_lock:
                while unacked and unacked[0][0] <= group:
                    self._in_flight -= len(unacked.popleft()[1])
            for error, lost, commits, what, trace in failures:
                self._note_failure(error, lost=lost, commits=commits, what=what, trace=trace)
            if top:
                with self._durable:
                    if top > self._committed:
                        self._committed = top
                    self._durable.notify_all()
                with self._hook_lock:  # answers of both writers: each hook sees commits in order
                    if top > self._hooked:
                        self._hooked = top
                        for hook in self._commit_hooks:
                            try:
                                hook(top)
                            except Exception:
                                log.exception("store commit hook failed")
            for token in tokens:
                marker = self._markers.pop(token, None)
                if marker is not None:
                    marker.set()
        elif kind == COMPACTED:
            _kind, number, processes, events, checkpoints, more, error = answer
            job = self._jobs.get(number)
            if job is None:
                return
            job.processes, job.events, job.checkpoints = processes, events, checkpoints
            if error:
                log.error("compaction failed: %s", error)
                job.error = error
            if more and not self._stopping:
                self._queue.put(job)  # its next step, behind what arrived meanwhile
            else:
                self._jobs.pop(number, None)
                job.done.set()
        elif kind == FATAL:
            log.error("the store's writer process failed:\n%s", answer[1])

    def _open_link(self, mode: str) -> _Link:
        if mode == "process":
            try:
                return _ProcessLink(self)
            except (OSError, LlmunixError) as exc:
                log.warning("the store's writer process could not start (%s): writing on a thread instead", exc)
        return _ThreadLink(self)

    def _writer_ended(self, link: _Link, code: int | None) -> None:
        """The writer process ended without being asked to: start another (or, after
        WRITER_RESTARTS in a minute, write on a thread) and send it what was not answered."""
        now = time.monotonic()
        self._restarts.append(now)
        often = len(self._restarts) == WRITER_RESTARTS and now - self._restarts[0] < 60
        log.warning("the store's writer process ended (exit status %s): %s; %d group(s) sent again", code,
                    "writing on a thread from now on" if often else "starting another", len(self._unacked))
        with self._send_lock:
            new = self._open_link("thread" if often else "process")
            with self._unacked_lock:
                again = list(self._unacked)
            for number, items in again:
                try:
                    new.send(number, items, new.prepare(number, items))
                except OSError:
                    break  # that one ended too: its reader starts the next
            self._link = new

    def _note_failure(self, error: str, *, lost: int = 0, commits: int = 0, what: str, trace: str = "") -> None:
        """Count a failure for `failure`, and log it: with its traceback the first time a reason
        is seen, never again after (a failing disk must not bury the log, nor a user's terminal)."""
        old = self._failure
        self._failure = StoreFailure(
            error=error, time=time.time(), lost=(old.lost if old else 0) + lost,
            failed_commits=(old.failed_commits if old else 0) + commits)
        reason = error[:200]
        if reason in self._reasons_logged:
            return
        if len(self._reasons_logged) < 100:
            self._reasons_logged.add(reason)
        log.error("store write failed: %s: %s (later failures for the same reason are counted, not logged; "
                  "`health` shows the totals)%s", what, reason, f"\n{trace.rstrip()}" if trace else "")

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


class Compaction:
    """One retention pass over the store, run in steps by the writer (`Store.compact`): what it
    asked for, the totals so far, and `done` once the pass is over (`error` if it failed)."""

    _ids = itertools.count(1)

    def __init__(self, before: float, keep: int, protect: Callable[[], Collection[int]] | None, *,
                 sweep: bool = True) -> None:
        self.id = next(self._ids)
        self.before = before
        self.keep = keep
        self.protect = protect
        self.sweep = sweep
        self.processes = 0
        self.events = 0
        self.checkpoints = 0
        self.error: str | None = None
        self.done = threading.Event()

    def as_dict(self) -> dict[str, Any]:
        return {"processes": self.processes, "events": self.events, "checkpoints": self.checkpoints}


_INSERT_AUDIT = "INSERT INTO audit (time, user, session, kind, command, target, status) VALUES (?,?,?,?,?,?,?)"
_BINDABLE = (int, float, str, bytes, bytearray)


def _sendable_args(args: Any) -> tuple[Any, ...]:
    """A statement's arguments as the writer gets them: what SQLite cannot bind stands in as an
    `Unbindable` (binding it fails there as the value itself would, and only that record is lost)."""
    args = tuple(args)
    for a in args:
        if a is not None and not isinstance(a, _BINDABLE):
            return tuple(a if a is None or isinstance(a, _BINDABLE) else Unbindable(type(a).__name__) for a in args)
    return args


class _Link:
    """How groups reach the writer: `prepare` (what cannot be sent becomes a LOST item, in place),
    `send`, and `close` once the STOP is sent. Both kinds of writer get the same: the group as
    pickled for the pipe, so that what is stored does not depend on where it was written."""

    def prepare(self, number: int, items: list[Any]) -> bytes:
        try:
            return encode_group((number, items))
        except Exception:  # noqa: BLE001 - one at a time: what cannot be pickled is lost, the rest goes
            for i, item in enumerate(items):
                try:
                    encode_group(item)
                except Exception as exc:  # noqa: BLE001
                    items[i] = (LOST, describe(item), f"{type(exc).__name__}: {exc}")
            return encode_group((number, items))

    def send(self, number: int, items: list[Any], data: Any) -> None:
        raise NotImplementedError

    def close(self, timeout: float) -> None:
        pass


class _ThreadLink(_Link):
    """The writer on the shipping thread itself: each group is committed as it is sent."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writer = Writer(connect(str(store.path)), store.session)

    def send(self, number: int, items: list[Any], data: Any) -> None:
        answers, stop = self.writer.serve([decode_group(data)])
        for answer in answers:
            self.store._on_answer(answer)
        if stop:
            self.writer.conn.close()

    def close(self, timeout: float) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.writer.conn.close()


class _ProcessLink(_Link):
    """The writer in a child process: groups pickled down its stdin, answers read from its stdout
    by thread llmunix-store-answers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.child = subprocess.Popen(
            launch_args(str(store.path), store.session), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        assert self.child.stdin is not None and self.child.stdout is not None
        self.fd = self.child.stdin.fileno()
        with contextlib.suppress(OSError):  # room for a burst of events before the shipper waits
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, 1 << 20)
        self.reader = MessageReader(self.child.stdout.fileno())
        self.answers = threading.Thread(target=self._read_answers, name="llmunix-store-answers", daemon=True)
        self.answers.start()

    def send(self, number: int, items: list[Any], data: Any) -> None:
        write_all(self.fd, data)

    def _read_answers(self) -> None:
        store = self.store
        try:
            while True:
                answers = self.reader.read(block=True)
                if answers is None:
                    break
                for answer in answers:
                    store._on_answer(answer)
        except Exception:  # noqa: BLE001 - a garbled answer: the writer is started again
            log.exception("the store's writer process answered something unreadable")
            with contextlib.suppress(OSError):
                self.child.kill()
        code = self.child.wait()
        with contextlib.suppress(OSError):
            self.child.stdout.close()  # type: ignore[union-attr]
        if store._stopping:
            if code != 0:
                log.error("the store's writer process ended with status %s at the close", code)
        else:
            store._writer_ended(self, code)

    def close(self, timeout: float) -> None:
        self.answers.join(timeout)
        try:
            self.child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            log.error("the store's writer process did not end: killed")
            self.child.kill()
        with contextlib.suppress(OSError):
            self.child.stdin.close()  # type: ignore[union-attr]


def _os_pid() -> int:
    return os.getpid()
