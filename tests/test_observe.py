"""Observability in one process: the event log (replay, filters, following), `log --follow`,
the audit trail, structured log lines and secrets redaction. Real SQLite in a temporary home;
every wait is on an event or a condition with a timeout."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime

import pytest
from conftest import Session, wait_phase

from llmunix import Event, Kernel, ProcessContext
from llmunix.models import LlmunixError, parse_since
from llmunix.observe.audit import ACTION, COMMAND
from llmunix.observe.logging import JsonFormatter, log_events, parse_level
from llmunix.observe.redact import redact, redact_text
from llmunix.tools.registry import REGISTRY, ToolRegistry, make_tool

WAIT = 10.0


def gated(gate: threading.Event, started: threading.Event | None = None):
    """A tool that logs "before", blocks cooperatively until `gate` is set, then logs "after"."""

    def body(ctx: ProcessContext) -> str:
        ctx.log("before")
        if started is not None:
            started.set()
        while not gate.is_set():
            ctx.sleep(0.01)
        ctx.log("after")
        return "opened"

    return body


# ---------------------------------------------------------------------------------------- events


def test_replayed_events_are_what_a_live_subscriber_saw(kernel):
    seen: list[Event] = []
    kernel.subscribe("*", seen.append)
    first = kernel.spawn("echo", text="one")
    failing = kernel.spawn("fail", message="boom")
    after = kernel.spawn("echo", text="two", after=[failing])
    kernel.spawn("shell", cmd="echo out; echo err >&2")
    kernel.wait(timeout=WAIT)
    kernel.bus.flush()

    replayed = kernel.events()
    assert [(e.seq, e.type, e.pid) for e in replayed] == [(e.seq, e.type, e.pid) for e in seen]
    assert {e.pid for e in replayed} == {first, failing, after, first + 3}
    for live, stored in zip(seen, replayed, strict=True):
        expected = {k: v for k, v in live.data.items() if not (live.type == "process.checkpoint" and k == "state")}
        assert json.loads(json.dumps(dict(stored.data))) == json.loads(json.dumps(expected, default=repr))
        assert stored.time == live.time


def test_events_filter_by_pid_type_and_time(kernel):
    a = kernel.spawn("echo", text="a")
    kernel.wait([a], timeout=WAIT)
    kernel.bus.flush()
    between = time.time()
    b = kernel.spawn("fail", message="no")
    kernel.wait([b], timeout=WAIT)

    assert {e.pid for e in kernel.events(pid=a)} == {a}
    assert [e.type for e in kernel.events(pid=b)] == ["process.spawned", "process.started", "process.failed"]
    assert [(e.type, e.pid) for e in kernel.events(types="process.completed|process.failed")] == [
        ("process.completed", a), ("process.failed", b)]
    assert [e.type for e in kernel.events(types="process.s*", pid=a)] == ["process.spawned", "process.started"]
    assert {e.pid for e in kernel.events(since=between)} == {b}
    assert [e.type for e in kernel.events(limit=2)] == ["process.started", "process.failed"]
    assert kernel.events(limit=0) == []
    with pytest.raises(LlmunixError, match="no process 999"):
        kernel.events(pid=999)


def test_since_takes_a_duration_ago_or_an_iso_time():
    now = 1_800_000_000.0
    assert parse_since("10m", now=now) == now - 600
    assert parse_since("2h", now=now) == now - 7200
    assert parse_since("30s", now=now) == now - 30
    assert parse_since("2026-11-26T07:00:00+00:00") == datetime(2026, 11, 26, 7, tzinfo=UTC).timestamp()
    with pytest.raises(LlmunixError, match="bad time 'yesterday'"):
        parse_since("yesterday")


def test_events_command_filters_and_json(sh):
    sh.ok("run echo text=hi")
    sh.ok("run fail message=nope")
    sh.ok("wait 1 --timeout 10")
    sh.run("wait 2 --timeout 10")
    records = json.loads(sh.ok("events --pid 2 --json"))
    assert [r["type"] for r in records] == ["process.spawned", "process.started", "process.failed"]
    assert {r["pid"] for r in records} == {"002"} and records[-1]["data"]["error"] == "nope"

    lines = sh.ok("events --type 'process.completed|process.failed'").splitlines()
    assert lines[0].split() == ["TIME", "PID", "TYPE", "DETAILS"]
    assert sorted(line.split()[1:3] for line in lines[1:]) == [["001", "process.completed"], ["002", "process.failed"]]

    commands = [r["data"]["command"] for r in json.loads(sh.ok("events --type shell.command --json"))]
    assert commands[:2] == ["run echo text=hi", "run fail message=nope"]
    assert len(json.loads(sh.ok("events --since 10m --json --tail 3"))) == 3
    assert json.loads(sh.ok("events --since 2000-01-01 --pid 1 --json"))[0]["type"] == "process.spawned"
    assert json.loads(sh.ok("events --since 1h --type nothing.matches --json")) == []
    assert "bad time 'soon'" in sh.bad("events --since soon")
    assert "no process 042" in sh.bad("events --pid 42")
    assert "bad PID 'x'" in sh.bad("events --pid x")


def test_follow_yields_the_replay_then_live_events_until_the_process_ends(kernel):
    gate, started = threading.Event(), threading.Event()
    pid = kernel.spawn(gated(gate, started))
    assert started.wait(WAIT)
    stream = kernel.follow_events(pid=pid)
    replay = [next(stream).type for _ in range(3)]
    assert replay == ["process.spawned", "process.started", "process.log"]
    gate.set()  # everything from here on is published after the follower subscribed
    rest = [e.type for e in stream]
    assert rest == ["process.log", "process.completed"]


def test_follow_sees_every_event_once_while_events_keep_coming(kernel):
    """A follower that starts in the middle of a busy stream: no gap, no repeat."""
    stop = threading.Event()

    def chatty(ctx: ProcessContext) -> int:
        n = 0
        while not stop.is_set():
            n += 1
            ctx.log(f"line {n}")
            ctx.sleep(0.001)
        return n

    pid = kernel.spawn(chatty)
    got: list[str] = []
    for e in kernel.follow_events(pid=pid, types="process.log"):
        got.append(e.data["line"])
        if len(got) == 50:
            stop.set()
    assert got == [f"line {i}" for i in range(1, len(got) + 1)]
    assert kernel.info(pid).is_done


def test_follow_stops_at_its_timeout(kernel):
    t0 = time.monotonic()
    assert list(kernel.follow_events(types="nothing.*", timeout=0.2)) == []
    assert time.monotonic() - t0 < WAIT


def test_events_follow_command_ends_with_the_process_or_the_timeout(sh):
    gate = threading.Event()
    pid = sh.kernel.spawn(gated(gate), name="job")
    out: list[str] = []
    follower = threading.Thread(target=lambda: out.append(sh.ok(f"events --pid {pid} --follow --json")))
    follower.start()
    gate.set()
    follower.join(WAIT)
    assert not follower.is_alive()
    types = [json.loads(line)["type"] for line in out[0].splitlines()]
    assert types == ["process.spawned", "process.started", "process.log", "process.log", "process.completed"]
    assert sh.ok("events --follow --timeout 0.1 --type nothing.matches").splitlines() == [
        "TIME                     PID  TYPE                      DETAILS"]


def test_events_without_a_home_keep_no_log_but_can_be_followed():
    with Kernel(monitor=False) as k:
        pid = k.spawn("echo", text="x")
        k.wait([pid], timeout=WAIT)
        assert k.events() == [] and k.audit() == []
        assert [e.type for e in k.follow_events(pid=pid)] == []  # finished before: nothing is kept
        stop = threading.Event()

        def chatty(ctx: ProcessContext) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                ctx.log(str(n))
                ctx.sleep(0.001)

        live = k.spawn(chatty)
        got = []
        for e in k.follow_events(pid=live):  # only what is published from now on, each once
            got.append(e)
            if len(got) == 20:
                stop.set()
        lines = [int(e.data["line"]) for e in got if e.type == "process.log"]
        assert lines == list(range(lines[0], lines[0] + len(lines)))
        assert got[-1].type == "process.completed"


# ---------------------------------------------------------------------------------------- log --follow


def test_log_follow_prints_new_lines_and_ends_when_the_process_ends(sh):
    gate, started = threading.Event(), threading.Event()
    pid = sh.kernel.spawn(gated(gate, started))
    assert started.wait(WAIT)
    stream = sh.kernel.follow_log(pid)
    assert next(stream)[1] == "before"
    gate.set()
    assert [line for _t, line in stream] == ["after"]

    sh.ok("run shell 'cmd=echo one; echo two; echo three'")
    assert sh.ok("log 2 --follow").splitlines() == ["one", "two", "three"]
    assert sh.ok("log 2 --follow --tail 1").splitlines() == ["three"]
    assert [json.loads(x)["line"] for x in sh.ok("log 1 -f --json").splitlines()] == ["before", "after"]
    assert "no process 009" in sh.bad("log 9 --follow")


def test_log_follow_timeout_leaves_a_live_process_alone(sh):
    gate, started = threading.Event(), threading.Event()
    pid = sh.kernel.spawn(gated(gate, started))
    assert started.wait(WAIT)
    assert sh.ok(f"log {pid} --follow --timeout 0.1").splitlines() == ["before"]
    assert sh.kernel.info(pid).phase == "running"
    gate.set()


# ---------------------------------------------------------------------------------------- audit


def test_audit_records_commands_with_their_status_and_actions_with_their_target(sh):
    gate = threading.Event()
    pid = sh.kernel.spawn(gated(gate))
    p = f"{pid:03d}"
    sh.ok(f"pause {p}")
    wait_phase(sh.kernel, pid, "paused")
    sh.ok(f"priority {p} high")
    sh.ok(f"resume {p}")
    sh.bad("kill 999")
    sh.ok(f"kill {p}")
    sh.kernel.wait([pid], timeout=WAIT)
    sh.bad("run nosuchtool")

    entries = sh.kernel.audit()
    commands = [(a.command, a.status) for a in entries if a.kind == COMMAND]
    assert commands == [(f"pause {p}", 0), (f"priority {p} high", 0), (f"resume {p}", 0), ("kill 999", 1),
                        (f"kill {p}", 0), ("run nosuchtool", 1)]
    actions = [(a.command, a.target) for a in entries if a.kind == ACTION]
    assert actions == [("pause", pid), ("priority normal -> high", pid), ("resume", pid), ("kill", pid)]
    assert all(a.user and a.time and a.session == sh.kernel.store.session for a in entries)

    records = json.loads(sh.ok("audit --json --tail 2"))  # this command is recorded once it has run
    assert [(r["kind"], r["command"], r["target"], r["status"]) for r in records] == [
        ("command", f"kill {p}", None, 0), ("command", "run nosuchtool", None, 1)]
    plain = sh.ok("audit").splitlines()
    assert plain[0].split() == ["TIME", "USER", "KIND", "TARGET", "STATUS", "COMMAND"]
    assert any(line.split()[2:5] == ["action", p, "0"] and line.endswith("pause") for line in plain)
    assert any(line.split()[4] == "1" and line.endswith("kill 999") for line in plain)
    assert json.loads(sh.ok("audit --since 1h --tail 0 --json")) == []
    assert "bad time" in sh.bad("audit --since whenever")


def test_killing_a_process_that_never_started_is_an_audited_action(sh):
    gate = threading.Event()
    first = sh.kernel.spawn(gated(gate))
    waiting = sh.kernel.spawn("echo", text="later", after=[first])
    sh.ok(f"kill {waiting}")
    assert [(a.command, a.target) for a in sh.kernel.audit() if a.kind == ACTION] == [("kill", waiting)]
    gate.set()


def test_the_shell_does_not_record_end_of_input_and_keeps_the_failure_flag(sh):
    sh.shell.onecmd_plus_hooks("kill 999")
    sh.shell.onecmd_plus_hooks("ps")  # a later success does not hide the earlier failure from a script
    assert sh.shell.consume_failure()
    sh.shell.onecmd_plus_hooks("_eof")
    sh.shell.onecmd_plus_hooks("# a comment")
    assert [a.command for a in sh.kernel.audit()] == ["kill 999", "ps"]


# ---------------------------------------------------------------------------------------- logging


def test_log_lines_are_json_with_level_and_process_fields(kernel):
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("llmunix.events")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    sub = log_events(kernel)
    try:
        pid = kernel.spawn("shell", cmd="echo token=abc123")
        kernel.wait([pid], timeout=WAIT)
        kernel.bus.flush()
    finally:
        sub.cancel()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(x) for x in buffer.getvalue().splitlines()]
    by_event = {line["event"]: line for line in lines}
    assert by_event["process.spawned"]["level"] == "INFO"
    assert by_event["process.log"]["level"] == "DEBUG"
    done = by_event["process.completed"]
    assert (done["pid"], done["process"], done["logger"]) == (pid, "shell", "llmunix.events")
    assert done["message"] == f"{pid:03d} shell completed" and done["time"]
    assert "abc123" not in buffer.getvalue()


def test_loglevel_is_a_setting(sh):
    root = logging.getLogger("llmunix")
    old = root.level
    try:
        sh.ok("set loglevel debug")
        assert root.level == logging.DEBUG
        sh.ok("set loglevel WARNING")
        assert root.level == logging.WARNING
        sh.bad("set loglevel loud")
        assert root.level == logging.WARNING
    finally:
        root.setLevel(old)
    assert parse_level("warn") == "warning"


# ---------------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run fetch api_key=abc", "run fetch api_key=***"),
        ('run fetch "api_key=abc def" "text=a b"', 'run fetch "api_key=***" "text=a b"'),
        ("run shell 'cmd=export GITHUB_TOKEN=ghp_x; make'", "run shell 'cmd=export GITHUB_TOKEN=***; make'"),
        ('curl -H "Authorization: Bearer abc.def" x', 'curl -H "Authorization: ***" x'),
        ("sent Bearer abc.def to the server", "sent Bearer *** to the server"),
        ("key is sk-proj-abcdefgh12345678 ok", "key is *** ok"),
        ('{"password": "hunter2", "user": "ada"}', '{"password": "***", "user": "ada"}'),
        ("mysql --password hunter2 --user ada", "mysql --password *** --user ada"),
        ("https://ada:hunter2@db.example.org/x", "https://ada:***@db.example.org/x"),
        ("Set-Cookie: session=abc", "Set-Cookie: ***"),
        ("run llm max_tokens=50 author=ada", "run llm max_tokens=50 author=ada"),
        ("fetching 3 of 10", "fetching 3 of 10"),
    ],
)
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_redact_mappings_by_key_name():
    params = {"url": "u", "API_KEY": "a", "x-auth-token": "b", "client_secret": "c", "Passwd": "d",
              "private_key": "e", "credentials": {"user": "f"}, "cookie": "", "llm_tokens": 5,
              "nested": [{"Authorization": "g"}], "note": "Bearer h"}
    assert redact(params) == {"url": "u", "API_KEY": "***", "x-auth-token": "***", "client_secret": "***",
                              "Passwd": "***", "private_key": "***", "credentials": "***", "cookie": "",
                              "llm_tokens": 5, "nested": [{"Authorization": "***"}], "note": "Bearer ***"}
    assert params["API_KEY"] == "a"  # a copy; the original is untouched


def test_secret_params_are_redacted_in_views_and_the_events_table_but_kept_for_recover(tmp_path, capsys):
    received: list[str] = []

    def keeper(ctx: ProcessContext, url: str, api_key: str) -> str:
        received.append(api_key)
        ctx.checkpoint({"url": url, "api_key": api_key})
        return "fetched"

    registry = ToolRegistry()
    for t in REGISTRY:
        registry.register(t)
    registry.register(make_tool(keeper))
    secret = "s3cr3t-value-42"
    with Kernel(tmp_path, monitor=False, registry=registry) as k:
        sh = Session(k, capsys)
        sh.ok(f"run keeper url=https://example.org api_key={secret}")
        sh.ok(f"run keeper url=https://example.org 'api_key={secret} two'")
        sh.ok("wait --timeout 10")
        outputs = [sh.ok("ps -a --json"), sh.ok("ps -l 1 2"), sh.ok("events --json"), sh.ok("audit --json"),
                   sh.ok("audit")]
        for out in outputs:
            assert secret not in out
        assert '"api_key": "***"' in outputs[0] and "api_key=***" in outputs[3]
        assert sorted(received) == [secret, f"{secret} two"]  # the tool itself got the real values
        k.store.flush()
        db = sqlite3.connect(tmp_path / "llmunix.db")
        for table in ("events", "audit"):
            dump = json.dumps(db.execute(f"SELECT * FROM {table}").fetchall())
            assert secret not in dump and "***" in dump
        # The processes table keeps the real value: recover re-runs the tool with it.
        assert db.execute("SELECT count(*) FROM processes WHERE params LIKE ?", (f"%{secret}%",)).fetchone()[0] == 2
        assert (tmp_path / "llmunix.db").stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------- paging from the store


def _lines_tool(n: int):
    def many_lines(ctx: ProcessContext) -> None:
        for i in range(n):
            ctx.log(f"line {i}")
    return make_tool(many_lines, name="many-lines")


def test_log_pages_from_the_store_newest_n_since_and_reversed(tmp_path, capsys):
    k = Kernel(tmp_path, monitor=False)
    pid = k.spawn(_lines_tool(50))
    assert k.wait([pid], timeout=WAIT)[0].state == "Completed"
    live = k.logs(pid, limit=3)
    k.shutdown()

    k = Kernel(tmp_path, monitor=False)  # a new session: the lines come from the store
    try:
        stored = k.logs(pid, limit=3)
        assert [line for _t, line in stored] == ["line 47", "line 48", "line 49"] == [line for _t, line in live]
        assert k.logs(pid, limit=0) == []
        everything = k.logs(pid)
        assert len(everything) == 50
        cut = everything[40][0]
        assert [line for t, line in k.logs(pid, since=cut)] == [line for t, line in everything if t >= cut]
        sh = Session(k, capsys)
        assert sh.ok(f"log {pid} --limit 2 --reverse").splitlines() == ["line 49", "line 48"]
        assert sh.ok(f"log {pid} -n 2").splitlines() == ["line 48", "line 49"]
        assert "bad count '-2'" in sh.bad(f"log {pid} -n -2")
        assert "cannot follow" in sh.bad(f"log {pid} --follow --reverse")
    finally:
        k.shutdown()


def test_events_and_audit_give_the_newest_n_and_reverse_on_request(sh):
    for _ in range(5):
        sh.ok("ps")
    newest = sh.kernel.audit(limit=2)
    assert len(newest) == 2 and newest == sh.kernel.audit()[-2:]  # read from the end, in order
    out = sh.ok("audit --limit 3 --reverse --json")
    times = [e["time"] for e in json.loads(out)]
    assert len(times) == 3 and times == sorted(times, reverse=True)
    out = sh.ok("events --limit 4 -r --json")
    ids = [e["seq"] for e in json.loads(out)]
    assert len(ids) == 4 and ids == sorted(ids, reverse=True)
    assert "cannot follow" in sh.bad("events --follow --reverse")


def test_every_event_type_the_audit_trail_records_is_in_its_fast_path_set():
    """audit_row answers None at once for a type outside _AUDITED: every type its branches name
    must be in it, and each of those gives a row."""
    import inspect
    import re

    from llmunix.models import Event
    from llmunix.observe import audit

    named = set(re.findall(r'"((?:shell|process)\.[a-z_]+)"', inspect.getsource(audit.audit_row)))
    assert named | set(audit._DEBUGGER) == set(audit._AUDITED)
    for t in audit._AUDITED:
        assert audit.audit_row(Event(1, 0.0, t, 1, {"resumed": True})) is not None, t
    assert audit.audit_row(Event(1, 0.0, "process.started", 1, {})) is None
