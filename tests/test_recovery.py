"""Durable state, end to end: a real `llmunix` killed with SIGKILL at chosen checkpoints, then
`recover`; the read-only second shell; rollback; retention (compaction and the memory bound).

Crash points are reached by polling the SQLite file (read-only) for a checkpoint version, never
by sleeping; every wait has a timeout. Side-effect files written by the test tools tell a resumed
run from one that started again from scratch.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from conftest import LLMUNIX

from llmunix import durable as durable_module
from llmunix import kernel as kernel_module
from llmunix.models import IllegalTransition, LlmunixError
from llmunix.store.sqlite import BACKLOG

# Tools for the crash tests, loaded from <home>/tools by every llmunix on that home.
TOOLS = textwrap.dedent('''
    from llmunix import tool

    @tool
    def counter(ctx, path: str, steps: int = 5, hold_at: int = 0, pause: float = 0.02) -> int:
        """Count to `steps`: append each number to `path`, then checkpoint it. After checkpoint
        `hold_at` it waits a minute (the test kills it there). Not idempotent: the file grows."""
        n = (ctx.restored or {}).get("n", 0)
        while n < steps:
            n += 1
            with open(path, "a") as f:
                f.write(f"{n}\\n")
            ctx.checkpoint({"n": n})
            ctx.sleep(60 if n == hold_at else pause)
        return n

    @tool
    def once(ctx, path: str) -> str:
        """A side effect and no checkpoint: must never run twice without being asked."""
        with open(path, "a") as f:
            f.write("ran\\n")
        ctx.sleep(60)
        return "done"

    @tool(idempotent=True)
    def again(ctx, path: str) -> str:
        """Safe to run again from scratch: the first run waits (to be killed), a re-run does not."""
        with open(path, "a") as f:
            f.write("ran\\n")
        if open(path).read().count("ran") == 1:
            ctx.sleep(60)
        return "done"
''')


# ---------------------------------------------------------------------------- helpers


def llmunix(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLMUNIX, *args], input="", capture_output=True, text=True, timeout=timeout,
                          env=_env(home))


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}


def last_json(stdout: str) -> Any:
    """The JSON document a script's last command (`ps -a --json`) printed after other output."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line in ("[", "[]", "{"))
    return json.loads("\n".join(lines[start:]))


def query(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the store directly, read-only, as another program would (empty until it exists)."""
    path = home / "llmunix.db"
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created but not migrated yet
            return []
        raise


def checkpoint_version(home: Path, pid: int) -> int:
    rows = query(home, "SELECT max(version) FROM checkpoints WHERE pid=?", (pid,))
    return rows[0][0] or 0 if rows else 0


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / "tools").mkdir(parents=True)
    (h / "tools" / "crashy.py").write_text(TOOLS)
    return h


@pytest.fixture
def start() -> Iterator[Any]:
    """`start(*args, home=...)`: a background llmunix; any still alive at teardown is killed."""
    children: list[subprocess.Popen[str]] = []

    def spawn(*args: str, home: Path) -> subprocess.Popen[str]:
        child = subprocess.Popen([LLMUNIX, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=_env(home))
        children.append(child)
        return child

    yield spawn
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)


def crash(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL


# ---------------------------------------------------------------------------- crash and recover


@pytest.mark.parametrize("killed_at", [1, 3, 5])
def test_recover_after_sigkill_resumes_from_the_last_checkpoint(home, tmp_path, start, wait_until, killed_at):
    side = tmp_path / "side.txt"
    first = start("-c", "run echo text=before", "-c", "wait",
                  "-c", f"run counter path={side} steps=5 hold_at={killed_at}", "-c", "wait", home=home)
    wait_until(lambda: checkpoint_version(home, 2) == killed_at, message=f"checkpoint {killed_at} of 002")
    crash(first)
    assert lines(side) == [str(i) for i in range(1, killed_at + 1)]

    r = llmunix("-c", "recover", "-c", "wait", "-c", "run echo text=after", "-c", "wait", "-c", "ps -a --json",
                home=home)
    assert r.returncode == 0, r.stderr
    assert "1 process(es) were interrupted when llmunix last stopped (002)" in r.stderr
    assert f"002 counter recovered from checkpoint {killed_at}" in r.stdout
    by_pid = {p["pid"]: p for p in last_json(r.stdout)}
    # Resumed, not restarted: every step's side effect happened exactly once.
    assert lines(side) == ["1", "2", "3", "4", "5"]
    assert by_pid[2]["state"] == "completed" and by_pid[2]["output"] == 5
    assert by_pid[1]["state"] == "completed" and by_pid[1]["output"] == "before"  # finished work is intact
    new = max(by_pid)
    assert new > 2 and by_pid[new]["output"] == "after"  # PIDs are never reused after a crash
    assert query(home, "PRAGMA integrity_check") == [("ok",)]
    versions = query(home, "SELECT version FROM checkpoints WHERE pid=2 ORDER BY version")
    assert versions == [(1,), (2,), (3,), (4,), (5,)]


def test_builtin_sleep_resumes_at_the_tick_it_had_reached(home, start, wait_until):
    first = start("-c", "run sleep seconds=3", "-c", "wait", home=home)
    wait_until(lambda: checkpoint_version(home, 1) >= 10, message="tick 10 of sleep 001")
    crash(first)
    reached = checkpoint_version(home, 1)  # the last committed checkpoint: what recovery must use
    assert 10 <= reached < 30
    [(crashed_state,)] = query(home, "SELECT state FROM processes WHERE pid=1")
    assert crashed_state == "Running"  # as it was when llmunix died; marked interrupted at next start

    r = llmunix("-c", "recover", "-c", "wait", "-c", "ps -a --json", home=home)
    assert r.returncode == 0, r.stderr
    [info] = last_json(r.stdout)
    assert info["state"] == "completed" and info["progress"]["current_step"] == 30
    assert info["history"][0]["details"] == f"recovered from checkpoint {reached}"
    [(session,)] = query(home, "SELECT max(id) FROM sessions")
    [(ticks,)] = query(home, "SELECT count(*) FROM events WHERE session=? AND type='process.checkpoint'",
                       (session,))
    assert ticks == 30 - reached  # only the remaining ticks ran
    assert query(home, "PRAGMA integrity_check") == [("ok",)]


def test_a_tool_without_checkpoints_is_rerun_only_if_idempotent(home, tmp_path, start, wait_until):
    once_file, again_file = tmp_path / "once.txt", tmp_path / "again.txt"
    first = start("-c", f"run once path={once_file}", "-c", f"run again path={again_file}", "-c", "wait",
                  home=home)
    wait_until(lambda: lines(once_file) and lines(again_file)
               and len(query(home, "SELECT 1 FROM processes WHERE state='Running'")) == 2,
               message="both tools running")
    crash(first)

    r = llmunix("-k", "-c", "recover", "-c", "wait", "-c", "ps -a --json", home=home)
    assert r.returncode == 0, r.stderr  # 001 failed at `recover` (not resumable); `wait` saw 002 complete
    assert "001 once failed: interrupted; not resumable (no checkpoint, and the tool is not idempotent)" in r.stdout
    assert "002 again recovered" in r.stdout
    once_info, again_info = last_json(r.stdout)
    assert once_info["state"] == "failed" and "interrupted; not resumable" in once_info["error"]
    assert lines(once_file) == ["ran"]  # not run again behind the user's back
    assert again_info["state"] == "completed"
    assert lines(again_file) == ["ran", "ran"]  # idempotent: run again from scratch


def test_rollback_to_an_earlier_checkpoint_redoes_the_steps_after_it(home, tmp_path):
    side = tmp_path / "side.txt"
    r = llmunix("-c", f"run counter path={side} steps=4 pause=0", "-c", "wait", "-c", "rollback 1 --to 2",
                "-c", "wait", "-c", "ps -a --json", home=home)
    assert r.returncode == 0, r.stderr
    assert "001 counter rolled back to checkpoint 2" in r.stdout
    assert lines(side) == ["1", "2", "3", "4", "3", "4"]
    [info] = last_json(r.stdout)
    assert info["state"] == "completed" and info["output"] == 4
    r = llmunix("-c", "rollback 1 --to 9", home=home)
    assert r.returncode == 1
    assert r.stderr.strip() == "rollback: process 001 has no checkpoint version 9 (it has 1..4)"


# ---------------------------------------------------------------------------- two shells, one home


def test_a_second_llmunix_opens_read_only_while_a_script_runs(home, start, wait_until):
    first = start("-c", "run sleep seconds=30", "-c", "wait", home=home)
    wait_until(lambda: query(home, "SELECT state FROM processes WHERE pid=1") == [("Running",)],
               message="001 running")

    r = llmunix("-c", "ps", home=home)
    assert r.returncode == 0
    assert f"is in use by llmunix pid {first.pid}; opened read-only" in r.stderr
    assert [line.split()[:3] for line in r.stdout.splitlines()[1:]] == [["001", "sleep", "Running"]]

    r = llmunix("-c", "run echo text=no", home=home)
    assert r.returncode == 1
    assert f"run: read-only: {home} is in use by llmunix pid {first.pid}" in r.stderr
    r = llmunix("-c", "gc", home=home)
    assert r.returncode == 1 and "gc: read-only" in r.stderr
    r = llmunix("-c", "wait 1 -t 0.2", home=home)  # follows the owner's process through the store
    assert r.returncode == 1 and "still running: 001" in r.stderr

    first.send_signal(signal.SIGTERM)  # a clean stop: the live process ends Interrupted
    _out, err = first.communicate(timeout=20)
    assert first.returncode == 128 + signal.SIGTERM
    assert "interrupted 1 live process(es) on exit (001)" in err
    r = llmunix("-c", "ps -a", home=home)  # the home is free again: no read-only notice
    assert r.returncode == 0 and "read-only" not in r.stderr, r.stderr
    assert r.stdout.splitlines()[1].split()[:3] == ["001", "sleep", "Interrupted"]


def test_a_second_llmunix_opens_read_only_beside_an_interactive_shell(home, wait_until):
    env = {**_env(home), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    shell = pexpect.spawn(LLMUNIX, env=env, encoding="utf-8", timeout=20, dimensions=(40, 140))
    try:
        shell.expect(r"llmunix\$")
        shell.sendline("run sleep seconds=30")
        shell.expect(r"001")
        wait_until(lambda: query(home, "SELECT state FROM processes WHERE pid=1") == [("Running",)],
                   message="001 running")
        r = llmunix("-c", "ps --json", home=home)
        assert r.returncode == 0 and "opened read-only" in r.stderr
        assert [(p["process_id"], p["state"]) for p in json.loads(r.stdout)] == [("001", "running")]
        r = llmunix("-c", "kill 1", home=home)
        assert r.returncode == 1 and "kill: read-only" in r.stderr
        shell.sendline("quit -f")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0
    assert query(home, "SELECT state FROM processes WHERE pid=1") == [("Interrupted",)]


# ---------------------------------------------------------------------------- retention


def _counts(home: Path, pid: int) -> tuple[int, int, int]:
    [(events,)] = query(home, "SELECT count(*) FROM events WHERE pid=?", (pid,))
    [(checkpoints,)] = query(home, "SELECT count(*) FROM checkpoints WHERE pid=?", (pid,))
    [(compacted,)] = query(home, "SELECT compacted FROM processes WHERE pid=?", (pid,))
    return events, checkpoints, compacted


def test_gc_keeps_summary_rows_and_drops_events_logs_and_checkpoints(tmp_path, make_kernel):
    home = tmp_path / "home"
    k = make_kernel(home=home)
    old = [k.spawn("sleep", seconds=0.02), k.spawn("echo", text="hello"), k.spawn("fail")]
    k.wait(old)
    newest = k.spawn("sleep", seconds=0.02)
    k.wait([newest])

    counts = k.gc(keep=1)
    assert counts["processes"] == 3 and counts["events"] >= 9 and counts["checkpoints"] == 1
    k.flush()
    for pid in old:
        assert _counts(home, pid) == (0, 0, 1)
    events, checkpoints, compacted = _counts(home, newest)
    assert events > 0 and checkpoints == 1 and compacted == 0
    assert k.logs(old[1]) == []  # log lines are events: gone with them
    assert [(i.pid, i.state) for i in k.ps(all=True)] == [
        (old[0], "Completed"), (old[1], "Completed"), (old[2], "Failed"), (newest, "Completed")]
    assert k.info(old[1]).output == "hello"  # the summary row keeps the output
    assert k.gc(keep=1) == {"processes": 0, "events": 0, "checkpoints": 0, "released": 0}


def test_gc_by_age_and_never_touching_live_or_interrupted_processes(tmp_path, make_kernel, make_gate,
                                                                   wait_until):
    home = tmp_path / "home"
    k = make_kernel(home=home)
    interrupted = k.spawn("sleep", seconds=6)
    wait_until(lambda: k.checkpoints(interrupted), message="a first checkpoint")
    k.shutdown()  # ends 001 Interrupted
    k = make_kernel(home=home)
    done = k.spawn("echo", text="old")
    k.wait([done])
    gate = make_gate()
    live = k.spawn(gate.tool)
    assert gate.started.wait(10)
    assert k.gc(days=1, keep=100)["processes"] == 0  # nothing old enough, nothing beyond the count
    assert k.gc(days=0, keep=100)["processes"] == 1  # everything finished is "older than 0 days"
    assert k.gc(days=0, keep=0)["processes"] == 0
    k.flush()
    assert _counts(home, done)[2] == 1
    assert _counts(home, interrupted)[2] == 0 and _counts(home, interrupted)[:2] > (0, 0)
    assert _counts(home, live)[2] == 0 and _counts(home, live)[0] > 0
    gate.open()
    k.wait([live])
    [info] = k.recover([interrupted])  # its checkpoints survived: it resumes
    assert info.history[0].details.startswith("recovered from checkpoint ")
    k.kill(interrupted)


def test_gc_from_the_shell_prints_counts_and_ps_still_lists_the_processes(tmp_path):
    home = tmp_path / "home"
    r = llmunix("-c", "run echo text=a", "-c", "run sleep seconds=0.05", "-c", "wait", "-c", "gc",
                "-c", "gc --keep 0", "-c", "gc --json", home=home)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[-8] == "compacted 0 processes, freed 0 events and 0 checkpoints"
    assert out[-7].startswith("compacted 2 processes, freed ") and out[-7].endswith(" and 1 checkpoints")
    assert json.loads("\n".join(out[-6:])) == {"processes": 0, "events": 0, "checkpoints": 0, "released": 0}
    r = llmunix("-c", "ps -a", home=home)
    assert r.returncode == 0, r.stderr
    assert [line.split()[:3] for line in r.stdout.splitlines()[1:]] == [
        ["001", "echo", "Completed"], ["002", "sleep", "Completed"]]


def test_compaction_runs_by_itself_at_start_and_as_processes_finish(tmp_path, make_kernel, monkeypatch,
                                                                   wait_until):
    home = tmp_path / "home"
    k = make_kernel(home=home)
    k.wait([k.spawn("echo", text=str(i)) for i in range(5)])
    k.shutdown()
    k = make_kernel(home=home, retention_count=2)  # at start: 3 of the 5 are beyond the newest 2
    wait_until(lambda: query(home, "SELECT count(*) FROM processes WHERE compacted=1") == [(3,)],
               message="compaction at start")
    monkeypatch.setattr(durable_module, "GC_EVERY_FINISHED", 4)
    k.wait([k.spawn("echo", text=str(i)) for i in range(4)])  # the 4th finish triggers a pass
    wait_until(lambda: query(home, "SELECT count(*) FROM processes WHERE compacted=1") == [(7,)],
               message="compaction after 4 more finished")


def test_finished_processes_leave_memory_beyond_retention_count_but_stay_visible(tmp_path, make_kernel,
                                                                                wait_until):
    k = make_kernel(home=tmp_path / "home", retention_count=5)
    pids = [k.spawn("echo", text=f"t{i}") for i in range(40)]
    infos = k.wait(pids)
    assert [i.output for i in infos] == [f"t{i}" for i in range(40)]
    # The engine holds at most retention_count finished processes (private state, checked on purpose).
    wait_until(lambda: len(k.table.procs) <= 5, message="finished processes released from memory")
    # The first to finish leave first (two workers: not always in PID order).
    first = next(p for p in pids if p not in k.table.procs)
    text = f"t{pids.index(first)}"
    assert [i.pid for i in k.ps(all=True)] == pids
    assert k.info(first).output == text and k.logs(first)[0][1] == text
    assert k.wait([first, pids[-1]])[0].state == "Completed"
    with pytest.raises(IllegalTransition, match="already finished"):
        k.kill(first)
    more = [k.spawn("echo", text="x", after=[first]) for _ in range(3)]  # dependencies read the store
    assert [i.state for i in k.wait(more)] == ["Completed"] * 3
    wait_until(lambda: len(k.table.procs) <= 5, message="still bounded")
    assert len(k.ps(all=True)) == 43


def test_kernel_without_a_home_keeps_its_processes(make_kernel):
    k = make_kernel(retention_count=2)
    pids = [k.spawn("echo", text="x") for _ in range(6)]
    k.wait(pids)
    assert [i.pid for i in k.ps(all=True)] == pids  # nowhere else to find them: nothing is released


def test_store_rows_keep_real_parameters_in_a_private_file(tmp_path, make_kernel):
    home = tmp_path / "home"
    k = make_kernel(home=home)
    k.wait([k.spawn("echo", text="s3cret-token")])
    k.flush()
    assert (home / "llmunix.db").stat().st_mode & 0o777 == 0o600
    assert query(home, "SELECT params FROM processes WHERE pid=1") == [('{"text":"s3cret-token"}',)]


def test_a_second_kernel_on_the_same_home_is_read_only(tmp_path, make_kernel):
    home = tmp_path / "home"
    owner = make_kernel(home=home)
    owner.wait([owner.spawn("echo", text="x")])
    owner.flush()
    other = make_kernel(home=home)
    assert other.read_only and other.home_owner == str(os.getpid())
    assert [i.state for i in other.ps(all=True)] == ["Completed"]
    with pytest.raises(LlmunixError, match="read-only"):
        other.gc()


def test_a_flood_of_log_lines_waits_for_the_store_instead_of_starving_checkpoints(tmp_path, make_kernel,
                                                                                 wait_until):
    k = make_kernel(home=tmp_path / "home")
    stop = threading.Event()
    backlog: list[int] = []

    def flood(ctx) -> int:
        n = 0
        while not stop.is_set():
            ctx.log(f"line {n}")
            n += 1
            if n % 500 == 0:  # events not yet committed (private state, checked on purpose)
                backlog.append(k.bus.backlog() + k.store.backlog())
        return n

    def checkpointer(ctx) -> int:
        for i in range(3):
            ctx.checkpoint({"i": i})
        return 3

    flooder = k.spawn(flood)
    wait_until(lambda: len(backlog) >= 4, message="the flood under way")
    [info] = k.wait([k.spawn(checkpointer)], timeout=20)  # without backpressure: minutes
    stop.set()
    assert info.state == "Completed"
    assert k.wait([flooder], timeout=20)[0].state == "Completed"
    assert max(backlog) < 2 * BACKLOG  # bounded: the producer waited whenever the store fell behind


def test_pid_blocks_grow_in_a_burst_and_a_crash_never_reuses_a_pid(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    pids = kernel_module.PidAllocator(home)
    given = [pids.next() for _ in range(5000)]
    reserved = int((home / "pids").read_text())
    assert reserved > given[-1]
    assert reserved - given[-1] <= kernel_module.PidAllocator.MAX_BLOCK
    # Fewer fsyncs than blocks of 64 would need: the block doubled while PIDs went fast.
    assert reserved - given[-1] > kernel_module.PidAllocator.BLOCK
    after_crash = kernel_module.PidAllocator(home)  # no close(): as after kill -9
    assert after_crash.next() > given[-1]


def test_a_completed_process_from_an_earlier_session_shows_full_progress(tmp_path, make_kernel):
    def halfway(ctx) -> str:
        ctx.progress(1, 2, "first half")
        return "done early"

    home = tmp_path / "home"
    k = make_kernel(home=home)
    pid = k.spawn(halfway)
    assert k.wait([pid])[0].progress.percentage == 100.0
    k.shutdown()
    info = make_kernel(home=home).info(pid)  # from the store row now
    assert (info.progress.current_step, info.progress.percentage) == (2, 100.0)


def test_gc_ages_out_audit_rows_and_events_that_belong_to_no_process(tmp_path):
    from llmunix import Kernel

    with Kernel(tmp_path, monitor=False) as k:
        k.record_command("ps -a", 0)
        k.flush()
        assert [a.command for a in k.audit()] == ["ps -a"]
        assert any(e.type == "shell.command" for e in k.events())
        k.gc(days=1)  # a day is not over yet: nothing goes
        assert len(k.audit()) == 1
        k.gc(days=0)  # everything older than now goes
        assert k.audit() == []
        assert not any(e.type == "shell.command" for e in k.events())


def test_automatic_passes_sweep_what_ages_by_time_at_most_every_interval(tmp_path, monkeypatch, wait_until):
    """The passes that come every GC_EVERY_FINISHED ends compact processes; the deletes by time
    alone (audit, events of no process, ...) read whole tables, so only the start-up pass, `gc`,
    and a pass GC_INTERVAL after the last sweep do them."""
    from llmunix import Kernel

    monkeypatch.setattr(durable_module, "GC_EVERY_FINISHED", 2)
    with Kernel(tmp_path, monitor=False, retention_days=0) as k:
        wait_until(lambda: (job := k.durable.compaction_in_flight()) is not None and job.done.is_set(),
                   message="the start-up pass")
        k.record_command("ps -a", 0)
        k.flush()
        before = k.durable.compaction_in_flight()
        k.wait([k.spawn("echo", text="x") for _ in range(2)])  # the 2nd end makes a pass
        wait_until(lambda: (job := k.durable.compaction_in_flight()) is not before and job.done.is_set(),
                   message="the pass after two ends")
        assert [a.command for a in k.audit()] == ["ps -a"]  # not swept: within GC_INTERVAL of the last
        monkeypatch.setattr(durable_module, "GC_INTERVAL", 0.0)
        before = k.durable.compaction_in_flight()
        k.wait([k.spawn("echo", text="x") for _ in range(2)])
        wait_until(lambda: (job := k.durable.compaction_in_flight()) is not before and job.done.is_set(),
                   message="the next pass")
        assert k.audit() == []  # an interval since the last sweep: this one swept
