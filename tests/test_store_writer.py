"""The store's writer process (llmunix/store/writer.py): nothing lost, nothing twice, the same rows
as a writer thread would write."""

from __future__ import annotations

import enum
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict, namedtuple
from types import MappingProxyType

import psutil
import pytest

from llmunix import Kernel
from llmunix.models import Event
from llmunix.observe.redact import redact_text
from llmunix.store import Store
from llmunix.store.sqlite import PROMOTE_AFTER
from llmunix.store.writer import STATEMENT, encode_group, launch_args


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Word(enum.StrEnum):
    HELLO = "hello"


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque token=abc>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


Pair = namedtuple("Pair", "a b")


def odd_values() -> dict:
    loop: list = [1]
    loop.append(loop)
    return {
        "enum": Colour.RED, "int_enum": Level.HIGH, "str_enum": Word.HELLO, "opaque": Opaque(),
        "proxy": MappingProxyType({"a": 1}), "ordered": OrderedDict(b=2), "pair": Pair(1, "x"),
        "set": {3}, "bytes": b"\x00\xff", "nan": float("nan"), "class": int, "keys": {1: "one", None: "none"},
        "loop": loop, "api_key": "abc", "nested": {"token": Opaque(), "ok": [Word.HELLO]},
    }


def test_events_with_any_values_are_stored_as_a_writer_thread_stores_them(tmp_path):
    """The writer process gets plain values only (the kernel's classes are never unpickled
    there), as pickled for the pipe; a writer thread gets the very same, so what is stored does
    not depend on where it was written: an object as its repr (redacted like any text), an enum
    as its value, a mapping or sequence of any kind as a JSON object or array."""
    stored = {}
    for mode in ("thread", "process"):
        store = Store(tmp_path / f"{mode}.db", writer=mode)
        try:
            assert store.writer_mode == mode and (store.writer_pid is not None) == (mode == "process")
            for seq in range(1, 4):
                store.consume(Event(seq, 1000.0 + seq, "test.odd", None, odd_values()))
            store.consume(Event(4, 1004.0, "test.odd", None, {"one": Opaque()}))
            store.consume(Event(5, 1005.0, "test.bad", None, {"bad": BadRepr()}))  # kept, with a placeholder
            assert store.flush(30)
            assert store.failure is None, store.failure
            stored[mode] = store.query("SELECT seq, data FROM events WHERE type='test.odd' ORDER BY seq")
            assert [r[0] for r in store.query("SELECT data FROM events WHERE type='test.bad'")] == [
                '{"bad":"<BadRepr: repr failed: no repr>"}']
        finally:
            store.close()
    thread, process = ([tuple(r) for r in stored[m]] for m in ("thread", "process"))
    assert len(thread) == 4
    for (seq_t, data_t), (seq_p, data_p) in zip(thread, process, strict=True):
        assert seq_t == seq_p
        if "loop" in data_t:  # a value holding itself: cut off at the same depth either way
            assert data_t.count("...") == data_p.count("...")
        assert data_t == data_p
    first = process[0][1]
    assert '"api_key":"***"' in first and "abc" not in first  # an object's repr is redacted as text is
    assert f'"opaque":"{redact_text(repr(Opaque()))}"' in first and '"int_enum":3' in first
    assert '"str_enum":"hello"' in first and '"pair":[1,"x"]' in first and '"proxy":{"a":1}' in first


def test_a_writer_process_that_dies_is_replaced_and_nothing_is_lost_or_doubled(tmp_path):
    store = Store(tmp_path / "llmunix.db", writer="process")
    try:
        first = store.writer_pid
        assert first is not None
        n = 3000
        for i in range(n):
            store.consume(Event(i + 1, float(i), "test.n", None, {"i": i}))
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "u", f"c{i}"))
            if i == n // 3:
                os.kill(first, signal.SIGKILL)  # while it works: some groups committed, some sent, some queued
        assert store.flush(60)
        assert store.writer_pid not in (None, first)
        assert store.failure is None
        seqs = store.query("SELECT seq FROM events WHERE type='test.n' ORDER BY id")
        assert [r[0] for r in seqs] == list(range(1, n + 1))
        commands = store.query("SELECT command FROM audit WHERE user='u' ORDER BY id")
        assert [r[0] for r in commands] == [f"c{i}" for i in range(n)]
        assert store.wait_durable(n, timeout=10)
    finally:
        store.close()
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


def test_what_was_sent_to_the_writer_is_committed_after_a_sigkill_of_llmunix(tmp_path, wait_until):
    db = tmp_path / "llmunix.db"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from llmunix.store import Store, sqlite
        sqlite.SMALL_GROUP = 0  # every group to the writer process (none committed beside it, here)
        store = Store({str(db)!r}, writer="process")
        assert store.flush(30)  # the writer process is up (it ignores hang-ups from here on)
        os.kill(store.writer_pid, signal.SIGSTOP)  # it commits nothing until the test lets it go
        for i in range(1000):
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "u", f"c{{i}}"))
        deadline = time.monotonic() + 30
        while store.in_flight() < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(store.writer_pid, store.in_flight(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    writer, sent = (int(x) for x in proc.stdout.split())
    assert sent == 1000
    assert not rows(db, "SELECT count(*) FROM audit WHERE user='u'")[0][0]
    os.kill(writer, signal.SIGCONT)
    wait_until(lambda: not psutil.pid_exists(writer) or psutil.Process(writer).status() == psutil.STATUS_ZOMBIE,
               timeout=30, message="the writer process to finish and end")
    assert [r[0] for r in rows(db, "SELECT command FROM audit WHERE user='u' ORDER BY id")] == [
        f"c{i}" for i in range(1000)]


def test_a_kernel_writes_on_a_thread_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMUNIX_STORE_WRITER", "thread")
    with Kernel(tmp_path / "home", monitor=False) as k:
        assert k.store is not None and k.store.writer_pid is None and k.store.writer_mode == "thread"
        pids = [k.spawn("echo", text=str(i)) for i in range(20)]
        assert all(i.state == "Completed" for i in k.wait(pids, timeout=30))
        assert k.flush()
    got = rows(tmp_path / "home" / "llmunix.db", "SELECT pid, output FROM processes ORDER BY pid")
    assert [r[0] for r in got] == pids and got[0][1] == '"0"'


def test_a_session_that_writes_enough_moves_its_writer_to_a_process(tmp_path, wait_until):
    store = Store(tmp_path / "llmunix.db", writer="auto")  # as `llmunix -c` has it
    try:
        for i in range(100):
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "u", f"c{i}"))
        assert store.flush(30) and store.writer_pid is None  # a quiet session: on a thread
        for i in range(100, PROMOTE_AFTER + 100):
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "u", f"c{i}"))
        assert store.flush(30)
        wait_until(lambda: store.writer_pid is not None, message="the writer process")  # (after the group sent)
        for i in range(PROMOTE_AFTER + 100, PROMOTE_AFTER + 200):
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "u", f"c{i}"))
        assert store.flush(30)
        commands = store.query("SELECT command FROM audit WHERE user='u' ORDER BY id")
        assert [r[0] for r in commands] == [f"c{i}" for i in range(PROMOTE_AFTER + 200)]
    finally:
        store.close()


def test_an_unknown_writer_mode_is_one_clear_error(tmp_path):
    with pytest.raises(Exception, match="unknown store writer 'fork'"):
        Store(tmp_path / "x.db", writer="fork")


def test_the_writer_process_starts_light_and_ends_with_its_store(tmp_path, wait_until):
    """It imports neither the engine's models nor anything above them, and is gone once the
    store is closed."""
    store = Store(tmp_path / "llmunix.db", writer="process")
    pid = store.writer_pid
    try:
        child = psutil.Process(pid)
        wait_until(lambda: "_sqlite3" in " ".join(m.path for m in child.memory_maps()), message="the writer's start")
        assert child.ppid() == os.getpid()
    finally:
        t0 = time.monotonic()
        store.close()
    assert time.monotonic() - t0 < 10
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         f"import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r}); "
         "import llmunix.store.writer; print(sorted(m for m in sys.modules if m.startswith('llmunix')))"],
        capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "['llmunix', 'llmunix.observe', 'llmunix.observe.redact', 'llmunix.store', " \
                                   "'llmunix.store.writer']", probe.stderr


def test_a_record_that_cannot_be_sent_costs_only_itself(tmp_path):
    for mode in ("thread", "process"):
        store = Store(tmp_path / f"{mode}.db", writer=mode)
        try:
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (1, "u", "before"))
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", 5)  # not a sequence
            store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (2, "u", "after"))
            assert store.flush(30)
            assert [r[0] for r in store.query("SELECT command FROM audit WHERE user='u' ORDER BY id")] == [
                "before", "after"]
            assert store.failure is not None and store.failure.lost == 1 and "TypeError" in store.failure.error
            assert len(store.query("SELECT id FROM events WHERE type='store.write_lost'")) == 1
        finally:
            store.close()


def test_a_writer_whose_kernel_is_gone_still_commits_all_it_is_sent(tmp_path, wait_until):
    """Its answers go nowhere (the kernel died): it goes on committing until the end of its input."""
    db = tmp_path / "llmunix.db"
    store = Store(db, writer="thread")  # a database and a session to write in
    session = store.session
    store.close()
    child = subprocess.Popen(launch_args(str(db), session), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    child.stdout.close()  # nobody reads its answers: each one fails (EPIPE)
    sql = "INSERT INTO audit (time, user, command) VALUES (?, ?, ?)"
    try:
        child.stdin.write(encode_group((10_001, [(STATEMENT, sql, (1, "u", "first"))])))
        child.stdin.flush()
        wait_until(lambda: rows(db, "SELECT count(*) FROM audit WHERE user='u'")[0][0] == 1, message="the first")
        child.stdin.write(encode_group((10_002, [(STATEMENT, sql, (2, "u", "second"))])))
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert [r[0] for r in rows(db, "SELECT command FROM audit WHERE user='u' ORDER BY id")] == ["first", "second"]
