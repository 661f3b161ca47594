"""Hedged and redundant runs (issue 20 item 3): `run --replicas N --first` keeps the first copy
that completes and cancels the rest; `--quorum K` waits for K equal results and fails saying how
they differed; the copies are children of one hedge process (`ps --tree`). Engine, shell and the
real executable. Which replica wins is decided by PID (consecutive PIDs: exactly one of three is
a multiple of 3), so every outcome is deterministic."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import LLMUNIX, Session

from llmunix import LlmunixError, ProcessContext, ToolError
from llmunix.tools.registry import tool

TOOLS = '''
from llmunix import ToolError, tool


@tool(idempotent=True)
def racer(ctx, slow: float = 30.0) -> str:
    """Answer at once on a PID that is a multiple of 3, else after `slow` seconds."""
    if ctx.pid % 3 == 0:
        return "fast"
    ctx.sleep(slow)
    return "slow"


@tool(idempotent=True)
def vote(ctx) -> str:
    """"b" on a PID that is a multiple of 3, else "a"."""
    return "b" if ctx.pid % 3 == 0 else "a"
'''


@tool(name="test_racer", hidden=True, idempotent=True)
def racer(ctx: ProcessContext, slow: float = 30.0) -> str:
    if ctx.pid % 3 == 0:
        return f"fast from {ctx.pid}"
    ctx.sleep(slow)
    return "slow"


@tool(name="test_vote", hidden=True, idempotent=True)
def vote(ctx: ProcessContext) -> str:
    return "b" if ctx.pid % 3 == 0 else "a"


@tool(name="test_flaky", hidden=True)
def flaky(ctx: ProcessContext) -> str:
    if ctx.pid % 3 == 0:
        raise ToolError("boom")
    ctx.sleep(0.05)
    return "ok"


@tool(name="test_broken", hidden=True)
def broken(ctx: ProcessContext) -> None:
    raise ToolError(f"broken {ctx.pid}")


def children(k, pid: int):
    return [i for i in k.ps(all=True) if i.parent == pid]


def test_the_first_replica_to_complete_wins_and_the_others_are_cancelled(make_kernel):
    k = make_kernel()
    pid = k.hedge("test_racer", replicas=3)
    info = k.wait([pid])[0]
    kids = children(k, pid)
    winner = next(c for c in kids if c.pid % 3 == 0)
    assert info.state == "Completed" and info.output == f"fast from {winner.pid}"
    assert [c.name for c in kids] == ["test_racer#1", "test_racer#2", "test_racer#3"]
    losers = [c for c in kids if c is not winner]
    assert all(c.state == "Cancelled" for c in losers)
    assert all(c.error == f"replica {winner.process_id} completed first" for c in losers)
    assert info.name == "test_racer*3"


def test_a_failed_replica_is_not_an_answer_the_others_go_on(make_kernel):
    k = make_kernel()
    pid = k.hedge("test_flaky", replicas=3)
    info = k.wait([pid])[0]
    assert info.state == "Completed" and info.output == "ok"
    assert sorted(c.state for c in children(k, pid))[0] in ("Cancelled", "Completed")
    assert any(c.state == "Failed" for c in children(k, pid))


def test_when_every_replica_fails_the_hedge_fails_with_the_first_error(make_kernel):
    k = make_kernel()
    pid = k.hedge("test_broken", replicas=2)
    info = k.wait([pid])[0]
    first = children(k, pid)[0]
    assert info.state == "Failed"
    assert info.error.startswith("all 2 replicas failed; ") and "broken" in info.error
    assert first.state == "Failed"


def test_a_quorum_of_equal_results_wins(make_kernel):
    k = make_kernel()
    pid = k.hedge("test_vote", replicas=3, quorum=2)
    info = k.wait([pid])[0]
    assert info.state == "Completed" and info.output == "a"


def test_no_quorum_fails_saying_how_the_results_differed(make_kernel):
    k = make_kernel()
    pid = k.hedge("test_vote", replicas=3, quorum=3)
    info = k.wait([pid])[0]
    kids = {c.pid: c for c in children(k, pid)}
    b = next(p for p in kids if p % 3 == 0)
    a = sorted(p for p in kids if p != b)
    assert info.state == "Failed"
    assert info.error.startswith("no quorum of 3 of 3: results differed: ")
    assert f'"b" from {b:03d}' in info.error
    # The two "a" replicas both answered, or the hedge gave up as soon as "b" made 3 impossible.
    assert f'"a" from {a[0]:03d}' in info.error or f'"b" from {b:03d}' in info.error
    assert all(c.is_done for c in kids.values())


def test_killing_the_hedge_stops_its_replicas(make_kernel, wait_until):
    k = make_kernel()
    pid = k.hedge("sleep", replicas=2, params={"seconds": 30})
    wait_until(lambda: len(children(k, pid)) == 2 and all(c.phase == "running" or c.is_done
                                                          for c in children(k, pid)))
    k.kill(pid)
    kids = [c.pid for c in children(k, pid)]
    assert [i.state for i in k.wait([pid, *kids], timeout=10)] == ["Cancelled"] * 3


def test_bad_requests_are_refused_before_anything_starts(make_kernel):
    k = make_kernel()
    for kw, says in (({"replicas": 1}, "from 2 to 64"), ({"replicas": 65}, "from 2 to 64"),
                     ({"replicas": 3, "quorum": 4}, "--quorum must be from 1 to the number of replicas (3)"),
                     ({"replicas": 2, "retry": 3}, "a hedged run takes no 'retry'")):
        with pytest.raises(LlmunixError, match=says.replace("(", r"\(").replace(")", r"\)")):
            k.hedge("echo", **kw)
    with pytest.raises(LlmunixError, match="cannot be replicated"):
        k.hedge("workflow", replicas=2)
    with pytest.raises(LlmunixError, match="needs parameter 'text'"):
        k.hedge("echo", replicas=2)
    assert k.ps(all=True) == []


def test_the_shell_shows_replicas_under_their_hedge(kernel, capsys):
    sh = Session(kernel, capsys)
    assert sh.ok("run echo text=a --replicas 3 --quorum majority").strip() == "001"
    sh.ok("wait")
    tree = sh.ok("ps -a --tree").splitlines()
    assert tree[0].split()[:3] == ["PID", "PPID", "TOOL"]
    rows = [line.split()[:4] for line in tree[1:]]
    assert rows[0] == ["001", "-", "echo*3", "Completed"]
    assert [r[1] for r in rows[1:]] == ["001"] * 3
    assert "Output: a" in sh.ok("ps -l 1")
    for line, says in (("run echo text=x --replicas 3 --first --quorum 2", "give one of them"),
                       ("run echo text=x --replicas 3 --quorum most", "bad --quorum 'most'"),
                       ("run echo text=x --replicas 2 --after 1", "--replicas cannot be combined with --after"),
                       ("run echo text=x --replicas 2 --cache", "--replicas cannot be combined with --cache")):
        assert says in sh.bad(line)


# ---------------------------------------------------------------------------- the real executable


def llmunix(*commands: str, home: Path) -> subprocess.CompletedProcess:
    args = [LLMUNIX]
    for c in commands:
        args += ["-c", c]
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_e2e_first_and_quorum_through_the_executable(tmp_path):
    home = tmp_path / "home"
    (home / "tools").mkdir(parents=True)
    (home / "tools" / "replicated.py").write_text(TOOLS)
    r = llmunix("run racer --replicas 3 --first", "wait 1", "ps -a --tree", "ps -l 1", home=home)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "001" and lines[1] == "[001] racer*3 completed in " + lines[1].split(" in ")[1]
    tree = [line.split()[:4] for line in lines if line[:3].isdigit() and len(line.split()) > 3]
    assert tree[0] == ["001", "-", "racer*3", "Completed"]
    states = {row[2]: row[3] for row in tree[1:]}
    assert states == {"racer#1": "Cancelled", "racer#2": "Completed", "racer#3": "Cancelled"}  # PID 003 wins
    assert "├── Output: fast" in r.stdout

    r = llmunix("run vote --replicas 3 --quorum 3", "wait 5", home=home)
    assert r.returncode != 0
    assert "[005] vote*3 failed after" in r.stdout + r.stderr
    failed = next(line for line in r.stdout.splitlines() if "no quorum" in line)
    assert "no quorum of 3 of 3: results differed: " in failed
    assert '"b" from 006' in failed
    # 007 or 008 (or both), in answer order: the first to disagree with 006 ends the vote, and
    # with two workers 008 may be done before 007's thread has run at all.
    answered_a = re.search(r'"a" from ([0-9, ]+)', failed)
    assert answered_a is not None and set(answered_a.group(1).split(", ")) <= {"007", "008"}, failed
    r = llmunix("run vote --replicas 2 --quorum majority", "wait 9", "ps -l 9", home=home)
    assert r.returncode == 0, r.stderr
    assert "Output: a" in r.stdout
    r = llmunix("run vote --replicas 3 --quorum 4", home=home)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "run: --quorum must be from 1 to the number of replicas (3), not 4"]
