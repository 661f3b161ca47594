"""`restart` (a finished process again, as a new PID) and `clean` (finished processes out of the
listings, their record, events and log kept): the engine, the commands, and a script run through
the real executable. Real SQLite in a temporary home; waits are on the kernel, with timeouts."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import LLMUNIX, Session

from llmunix import Kernel
from llmunix.models import IllegalTransition
from llmunix.retry import RetryPolicy

WAIT = 20.0


def _done(k: Kernel, *pids: int) -> None:
    for info in k.wait(list(pids), timeout=WAIT):
        assert info.is_done, info


def test_restart_runs_a_finished_process_again_as_a_new_pid_with_the_same_settings(make_kernel):
    k = make_kernel()
    first = k.spawn("sleep", seconds=0.01, name="napper", priority="high", needs={"memory_mb": 10})
    _done(k, first)
    again = k.restart(first)
    assert again.pid > first
    assert (again.name, again.tool_name, again.priority.label) == ("napper", "sleep", "high")
    assert dict(again.context.input_parameters) == {"seconds": 0.01}
    assert dict(again.needs) == {"memory_mb": 10}
    _done(k, again.pid)
    assert k.info(again.pid).state == "Completed"
    assert k.info(first).state == "Completed"  # the old one is untouched


def test_restart_runs_under_the_policies_and_timeout_it_was_started_with(tmp_path):
    k = Kernel(tmp_path, monitor=False, kill_grace=0.3)
    try:
        retried = k.spawn("fail", retry=RetryPolicy(max_attempts=2, initial=0.01, jitter="none"))
        slow = k.spawn("sleep", seconds=30, timeout=0.2)
        plain = k.spawn("echo", text="x")
        _done(k, retried, slow, plain)
        assert k.info(retried).attempts.attempt == 2
        assert k.info(slow).error == "timed out after 0.2s"
        again = k.restart(retried)
        assert again.attempts is not None and again.attempts.max_attempts == 2
        timed = k.restart(slow)
        _done(k, again.pid, timed.pid)
        assert k.info(again.pid).attempts.attempt == 2  # retried, as the first one was
        assert k.info(timed.pid).error == "timed out after 0.2s"  # not a 30 s sleep
        assert k.restart(plain).attempts is None
    finally:
        k.shutdown(timeout=5.0)


def test_restart_refuses_live_processes(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool)
    assert gate.started.wait(WAIT)
    with pytest.raises(IllegalTransition, match="only a finished process can be restarted"):
        k.restart(pid)
    gate.open()
    _done(k, pid)


def test_clean_takes_finished_processes_out_of_listings_and_keeps_their_record(tmp_path, capsys):
    k = Kernel(tmp_path, monitor=False)
    try:
        a, b = k.spawn("echo", text="kept in the store"), k.spawn("fail")
        _done(k, a, b)
        cleaned, refused = k.clean([a, b, 999])
        assert [i.pid for i in cleaned] == [a, b] and list(refused) == [999]
        assert {i.pid for i in k.ps(all=True)} == set()
        assert [r.pid for r in k.ps_rows(all=True)] == []
        assert k.info(a).output == "kept in the store"  # ps -l and log still answer
        _, again = k.clean([a])
        assert "cleaned already" in again[a]
    finally:
        k.shutdown()
    k = Kernel(tmp_path, monitor=False)  # a new session: the store remembers, the PIDs go on
    try:
        assert k.ps(all=True) == [] and k.ps_rows(all=True) == []
        assert k.info(b).state == "Failed"
        assert k.spawn("echo", text="new") > b
        sh = Session(k, capsys)
        actions = [(e.command, e.target) for e in k.audit() if e.kind == "action"]
        assert ("clean", a) in actions and ("clean", b) in actions
        assert "no finished process to clean" in sh.bad("clean 1-2")
    finally:
        k.shutdown()


def test_restart_and_clean_commands_with_filters_ranges_and_json(sh):
    k = sh.kernel
    ok, bad = k.spawn("echo", text="a"), k.spawn("fail")
    _done(k, ok, bad)
    out = sh.ok("restart --all --state failed")
    assert out.strip() == f"restarted {bad:03d} as {bad + 1:03d} fail"
    _done(k, bad + 1)
    assert "say which processes" in sh.bad("restart")
    assert "no process 099" in sh.bad("restart 99")
    records = json.loads(sh.ok(f"clean {ok}-{bad + 1} --tool fail --json"))
    assert [r["pid"] for r in records] == [bad, bad + 1] and all(r["ok"] for r in records)
    assert [i.pid for i in k.ps(all=True)] == [ok]
    assert "no finished process to clean" in sh.bad("clean --all --older-than 1h")
    assert "bad duration 'soon'" in sh.bad("clean --all --older-than soon")


def test_clean_refuses_live_and_interrupted_processes_by_name(sh, make_gate):
    gate = make_gate()
    pid = sh.kernel.spawn(gate.tool)
    assert gate.started.wait(WAIT)
    assert "only finished processes are cleaned" in sh.bad(f"clean {pid}")
    assert "only a finished process can be restarted" in sh.bad(f"restart {pid}")
    gate.open()
    _done(sh.kernel, pid)


def test_a_script_restarts_a_failure_then_cleans_everything(tmp_path):
    script = "run fail\nwait\n"
    first = subprocess.run([LLMUNIX, "--home", str(tmp_path), "--keep-going"], input=script, text=True,
                           capture_output=True, timeout=120)
    assert first.returncode == 1 and "001 Failed" in first.stderr
    run = subprocess.run([LLMUNIX, "--home", str(tmp_path), "-c", "restart 1", "-c", "clean --all --state completed",
                          "-c", "ps -a --json"], text=True, capture_output=True, timeout=120)
    assert "restarted 001 as 002 fail" in run.stdout
    assert run.returncode == 1 and "no finished process to clean" in run.stderr  # none completed: it fails
    listed = subprocess.run([LLMUNIX, "--home", str(tmp_path), "-c", "clean --all", "-c", "ps -a --json"],
                            text=True, capture_output=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[:2] == ["cleaned 001 fail", "cleaned 002 fail"]
    assert json.loads("\n".join(lines[2:])) == []
