"""Bytes are safe end to end: parameters, outputs, log lines, checkpoints and messages holding
any bytes (not UTF-8, NUL, ESC, very long lines) are stored and read back; one record the store
cannot write never costs the others; a failing store says so once, and publicly."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys

from conftest import LLMUNIX, _wait_until

from llmunix import Kernel, ProcessContext
from llmunix.store import Store, StoreFailure, json_text, storable_text
from llmunix.tools.registry import ToolRegistry, make_tool

CAFE = b"caf\xe9".decode("utf-8", "surrogateescape")  # what a shell hands Python for Latin-1 bytes
NASTY = [CAFE, "nul\x00byte", "esc\x1b[31mred\x1b[0m", "é ü 中文 🎉", "x" * 1_000_000, "\ud800lone"]


def _llmunix(home, *commands, env=None):
    args = [LLMUNIX, "--home", str(home)]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_a_parameter_that_is_not_utf8_loses_nothing_end_to_end(tmp_path):
    # The repro: the echo's record made its whole write group fail, the sleep with it,
    # and ~60 "--- Logging error ---" tracebacks went to stderr. A strict stdout (a locale whose
    # encoder refuses such bytes) must not break `log` or `ps --json` either.
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    run = subprocess.run([LLMUNIX, "--home", str(tmp_path), "-c", b"run echo text=caf\xe9", "-c", "wait",
                          "-c", "run sleep seconds=0.3", "-c", "wait"], capture_output=True, timeout=60,
                         env={**os.environ, **strict})
    assert run.returncode == 0, run.stderr
    assert b"Logging error" not in run.stderr and b"Traceback" not in run.stderr, run.stderr

    listing = _llmunix(tmp_path, "ps -a --json", env=strict)
    assert listing.returncode == 0, listing.stderr
    rows = {r["pid"]: r for r in json.loads(listing.stdout.decode("utf-8", "surrogateescape"))}
    assert rows[1]["state"] == "completed" and rows[2]["state"] == "completed"
    assert rows[1]["context"]["input_parameters"] == {"text": CAFE}
    assert rows[1]["output"] == CAFE

    log = _llmunix(tmp_path, "log 1", env=strict)
    assert log.returncode == 0 and log.stdout == b"caf\xe9\n", (log.stdout, log.stderr)
    events = _llmunix(tmp_path, "events --pid 1 --json", env=strict)
    logged = [e for e in json.loads(events.stdout.decode("utf-8", "surrogateescape")) if e["type"] == "process.log"]
    assert events.returncode == 0 and [e["data"]["line"] for e in logged] == [CAFE], events.stdout

    logfile = (tmp_path / "llmunix.log").read_text("utf-8")  # valid UTF-8: every line is JSON
    records = [json.loads(line) for line in logfile.splitlines()]
    assert not [r for r in records if r["level"] == "ERROR"], logfile
    assert any(r.get("data", {}).get("output") == CAFE for r in records)


def test_a_script_or_stdin_with_bytes_that_are_not_utf8_runs_as_minus_c_does(tmp_path):
    # A script used to be refused whole for one Latin-1 byte, while -c and stdin took it.
    script = tmp_path / "latin1.lmx"
    script.write_bytes(b"run echo text=caf\xe9\nwait\n")
    home = tmp_path / "home"
    by_file = subprocess.run([LLMUNIX, "--home", str(home), str(script)], capture_output=True, timeout=60)
    assert by_file.returncode == 0, by_file.stderr
    by_stdin = subprocess.run([LLMUNIX, "--home", str(home)], input=b"run echo text=caf\xe9\nwait\n",
                              capture_output=True, timeout=60)
    assert by_stdin.returncode == 0, by_stdin.stderr
    for pid in (1, 2):
        log = _llmunix(home, f"log {pid}")
        assert log.returncode == 0 and log.stdout == b"caf\xe9\n", (pid, log.stdout, log.stderr)


def test_any_bytes_round_trip_through_the_store(tmp_path):
    reg = ToolRegistry()

    def noisy(ctx: ProcessContext, text: str) -> dict:
        ctx.log(text)
        ctx.checkpoint({"seen": text})
        return {"echo": text, text[:10]: 1}

    def broken(ctx: ProcessContext, text: str) -> None:
        raise RuntimeError(text)

    reg.register(make_tool(noisy, name="noisy"))
    reg.register(make_tool(broken, name="broken"))
    k = Kernel(tmp_path, monitor=False, registry=reg)
    try:
        pids = [k.spawn("noisy", text=t, name=f"n-{t[:10]}") for t in NASTY]
        bad = k.spawn("broken", text=CAFE, name=CAFE)
        k.wait([*pids, bad], timeout=30)
        k.flush()
    finally:
        k.shutdown()
    k2 = Kernel(tmp_path, monitor=False, registry=reg)  # everything below is read from the store
    try:
        for pid, text in zip(pids, NASTY, strict=True):
            info = k2.info(pid)
            assert info.state == "Completed", (text[:20], info.error)
            assert info.context.input_parameters == {"text": text}
            assert info.output == {"echo": text, text[:10]: 1}
            assert [line for _, line in k2.logs(pid)] == [text]
            assert k2.store.checkpoints(pid)[-1][2] == {"seen": text}
        failed = k2.info(bad)
        assert failed.state == "Failed" and "caf\\xe9" in failed.error  # a plain column: readable
        assert failed.name == "caf\\xe9"
        assert k2.store.failure is None
    finally:
        k2.shutdown()


def test_persistent_messages_with_any_bytes_survive_a_restart(tmp_path):
    reg = ToolRegistry()

    def take(ctx: ProcessContext, n: int) -> list:
        ctx.shared.wait("go", timeout=30)
        out = []
        for _ in range(n):
            msg = ctx.recv(timeout=10)
            msg.ack()
            out.append(msg.body)
        return out

    reg.register(make_tool(take, name="take", idempotent=True))
    k1 = Kernel(tmp_path, monitor=False, kill_grace=0.3, registry=reg)
    pid = k1.spawn("take", n=4)
    k1.send(pid, {"plain": CAFE}, persistent=True)
    k1.send(pid, {"secret": CAFE}, persistent=True, sensitive=True)
    k1.send(pid, "nul\x00esc\x1b", persistent=True)
    k1.send(pid, {CAFE: [CAFE]}, persistent=True)
    k1.shutdown()
    k2 = Kernel(tmp_path, monitor=False, registry=reg)
    try:
        k2.set_shared("go", True)
        k2.recover([pid])
        assert k2.wait([pid], timeout=10)[0].output == [
            {"plain": CAFE}, {"secret": CAFE}, "nul\x00esc\x1b", {CAFE: [CAFE]}]
    finally:
        k2.shutdown()


def test_one_record_sqlite_refuses_costs_only_itself_and_is_recorded(tmp_path, caplog, monkeypatch):
    store = Store(tmp_path / "llmunix.db")
    # An llmunix started in this test process earlier (a shell test) sends the `llmunix` loggers to
    # its log file only (propagate off); caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("llmunix"), "propagate", True)
    try:
        assert store.failure is None
        with caplog.at_level(logging.ERROR, logger="llmunix.store"):
            for i in range(5):  # five bad records, and good ones all around them
                store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "ok", f"before {i}"))
                store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "bad", object()))
                store.execute("INSERT INTO audit (time, user, command) VALUES (?, ?, ?)", (i, "ok", f"after {i}"))
                assert store.flush()
        rows = store.query("SELECT command FROM audit WHERE user='ok' ORDER BY id")
        assert [r[0] for r in rows] == [f"{w} {i}" for i in range(5) for w in ("before", "after")]
        failure = store.failure
        assert isinstance(failure, StoreFailure) and failure.lost == 5 and failure.failed_commits == 0
        assert "5 record(s) lost" in str(failure) and "ProgrammingError" in failure.error
        lost = store.query("SELECT data FROM events WHERE type='store.write_lost'")
        assert len(lost) == 5 and "statement" in json.loads(lost[0][0])["record"]
        said = [r for r in caplog.records if r.name == "llmunix.store"]
        assert len(said) == 1 and "store write failed" in said[0].getMessage()  # once, not five times
    finally:
        store.close()


def test_health_reports_a_store_that_lost_writes(tmp_path):
    k = Kernel(tmp_path, monitor=False)
    try:
        assert [c for c in k.health().checks if c.name == "store"][0].status == "ok"
        k.store.execute("INSERT INTO audit (time, command) VALUES (?, ?)", (1, object()))
        k.store.flush()
        check = [c for c in k.health().checks if c.name == "store"][0]
        assert check.status == "fail", check
    finally:
        k.shutdown()


def test_text_helpers_keep_json_exact_and_plain_columns_readable():
    for value in NASTY:
        text = json_text({"v": value})
        text.encode("utf-8")  # storable
        assert json.loads(text) == {"v": value}
    assert storable_text(CAFE) == "caf\\xe9"
    assert storable_text("\ud800x") == "\\ud800x"
    assert storable_text("plain é") == "plain é"
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (storable_text(CAFE),))


def test_a_shell_commands_raw_output_is_kept_byte_for_byte(make_kernel):
    k = make_kernel()
    script = r"printf 'caf\351\n\000nul\n'"
    [info] = k.wait([k.spawn("shell", cmd=script)], timeout=20)
    assert info.state == "Completed"
    assert info.output == f"{CAFE}\n\x00nul"
    assert sys.getfilesystemencoding() == "utf-8"
    _wait_until(lambda: [line for _, line in k.logs(info.pid)] == [CAFE, "\x00nul"])
