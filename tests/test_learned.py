"""Learned scheduling, deadlines and the Performance line (issue 20 item 1): the learned order
runs the shortest expected work first within a level, with aging so a long process is not passed
for ever, and deadlines earliest first while they can be made; one that cannot is flagged; FIFO
stays the default; `ps -l` says how a tool's runs went. Engine, shell and the real executable."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from conftest import LLMUNIX, WAIT, Session

from llmunix import Phase, Priority, ProcessContext
from llmunix.process import Process
from llmunix.scheduler import LEARNED_AGING, LearnedQueue
from llmunix.tools.registry import make_tool


def labelled(order: list[str], name: str):
    """A tool called `name` that appends its name to `order` when it runs."""

    def body(ctx: ProcessContext) -> str:
        order.append(name)
        return name

    return make_tool(body, name=name, source="test")


def queued_behind_a_gate(k, make_gate):
    gate = make_gate()
    k.spawn(gate.tool, priority="critical")
    assert gate.started.wait(WAIT)
    return gate


def start_order(k, make_gate) -> list[str]:
    """Queue long, medium and short work (expected 5 s, 1 s, 0.1 s) behind a gate holding the
    only slot; open it; the order they started in."""
    order: list[str] = []
    tools = {name: labelled(order, name) for name in ("long", "medium", "short")}
    for name, seconds in (("long", 5.0), ("medium", 1.0), ("short", 0.1)):
        k.scheduler.record_duration(name, seconds)
    gate = queued_behind_a_gate(k, make_gate)
    pids = [k.spawn(tools[name]) for name in ("long", "medium", "short")]
    gate.open()
    k.wait(pids)
    return order


def test_the_learned_order_starts_the_shortest_expected_work_first(make_kernel, make_gate):
    k = make_kernel(max_running=1, scheduling="learned", time_slice=60)
    assert start_order(k, make_gate) == ["short", "medium", "long"]


def test_fifo_stays_the_default_and_keeps_arrival_order(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    assert k.scheduling == "fifo"
    assert start_order(k, make_gate) == ["long", "medium", "short"]


def test_expected_durations_are_learned_from_completed_runs_not_cached_ones(make_kernel):
    k = make_kernel()
    k.wait([k.spawn("sleep", seconds=0.05) for _ in range(2)])
    assert 0.04 < k.scheduler.expected["sleep"] < 5
    before = k.scheduler.expected.get("echo")
    first = k.spawn("echo", text="x", cache=True)
    k.wait([first])
    learned = k.scheduler.expected["echo"]
    assert before is None and learned >= 0
    k.wait([k.spawn("echo", text="x", cache=True)])  # a hit: not a run of echo
    assert len(k.scheduler.durations["echo"]) == 1


def _proc(pid: int, tool_name: str) -> Process:
    t = make_tool(lambda ctx: None, name=tool_name, source="test")
    return Process(pid, t, {}, name=tool_name, priority=Priority.NORMAL, owner="t", parent=None, after=(), cwd="/")


def test_aging_a_long_process_that_waited_its_expected_time_goes_before_newcomers():
    expected = {"long": 2.0, "short": 0.01}
    q = LearnedQueue(5.0, expected, {}, set(), lambda *a: None)
    long_ = _proc(1, "long")
    q.push(long_, now=100.0)
    early = _proc(2, "short")
    q.push(early, now=100.5)  # arrives before the long one's wait reaches its expected duration
    assert q.peek(100.5) is early
    q.pop(early)
    late = _proc(3, "short")
    q.push(late, now=100.0 + LEARNED_AGING * 2.0 + 0.1)  # the long one has waited long enough
    assert q.peek(102.2) is long_


def test_deadlines_go_first_earliest_first_while_they_can_be_made(make_kernel, make_gate):
    k = make_kernel(max_running=1, scheduling="learned", time_slice=60)
    order: list[str] = []
    tools = {name: labelled(order, name) for name in ("report", "digest", "quick")}
    for name in tools:
        k.scheduler.record_duration(name, 0.01)
    gate = queued_behind_a_gate(k, make_gate)
    pids = [k.spawn(tools["quick"]), k.spawn(tools["digest"], deadline=600), k.spawn(tools["report"], deadline=300)]
    gate.open()
    k.wait(pids)
    assert order == ["report", "digest", "quick"]
    assert k.deadline(pids[2]).met is True and k.deadline(pids[0]) is None


def test_a_process_that_cannot_make_its_deadline_is_flagged_and_queues_by_duration(make_kernel, make_gate):
    k = make_kernel(max_running=1, scheduling="learned", time_slice=60)
    order: list[str] = []
    slow, quick = labelled(order, "slow"), labelled(order, "quick")
    k.scheduler.record_duration("slow", 120.0)
    k.scheduler.record_duration("quick", 0.01)
    flagged = threading.Event()
    sub = k.subscribe("process.deadline_at_risk", lambda e: flagged.set())
    gate = queued_behind_a_gate(k, make_gate)
    doomed = k.spawn(slow, deadline=60)  # 120 s expected, 60 s given
    other = k.spawn(quick)
    assert flagged.wait(WAIT)
    sub.cancel()
    info = k.info(doomed)
    assert info.detail.startswith("queued; deadline at risk: expected 2m00s, ")
    assert any(h.event == "deadline at risk" for h in info.history)
    assert k.deadline(doomed).at_risk
    gate.open()
    k.wait([doomed, other])
    assert order == ["quick", "slow"]  # no longer ahead: shortest first


def test_a_deadline_that_passes_is_reported_missed_under_fifo_too(make_kernel, make_gate):
    k = make_kernel()
    missed = threading.Event()
    sub = k.subscribe("process.deadline_missed", lambda e: missed.set())
    gate = make_gate()
    pid = k.spawn(gate.tool, deadline=0.05)
    assert missed.wait(WAIT)
    sub.cancel()
    assert k.deadline(pid).missed
    gate.open()
    k.wait([pid])
    assert k.deadline(pid).met is False


def test_switching_the_policy_reorders_what_is_queued(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    order: list[str] = []
    tools = {name: labelled(order, name) for name in ("long", "short")}
    k.scheduler.record_duration("long", 3.0)
    k.scheduler.record_duration("short", 0.1)
    gate = queued_behind_a_gate(k, make_gate)
    pids = [k.spawn(tools["long"]), k.spawn(tools["short"])]
    seen = []
    sub = k.subscribe("system.scheduling", seen.append)
    k.scheduling = "learned"
    assert all(k.info(p).phase is Phase.READY for p in pids)
    gate.open()
    k.wait(pids)
    assert order == ["short", "long"]
    k.bus.flush()
    sub.cancel()
    assert [e.data for e in seen] == [{"policy": "learned"}]


def test_the_performance_line_counts_completed_and_failed_runs(kernel, capsys):
    sh = Session(kernel, capsys)
    for _ in range(3):
        sh.ok("run sleep seconds=0.01")
    sh.ok("wait")
    out = sh.ok("ps -l 3")
    line = next(x for x in out.splitlines() if "Performance:" in x)
    assert line.split("Performance: ")[1].startswith("avg ") and "over 3 runs, 100% success" in line
    sh.ok("run shell cmd='exit 3'")
    sh.ok("run shell cmd='exit 0'")
    sh.run("wait")
    out = sh.ok("ps -l 5")
    assert "over 2 runs, 50% success" in out
    perf = kernel.performance("sleep")
    assert (perf.completed, perf.failed) == (3, 0) and 0.005 < perf.mean < 5 and perf.p90 >= perf.mean * 0.5


def test_cancelled_runs_are_not_failures_in_the_performance_line(kernel, make_gate):
    gate = make_gate()
    t = make_tool(gate.tool, name="gated", source="test")
    pid = kernel.spawn(t)
    assert gate.started.wait(WAIT)
    kernel.kill(pid)
    kernel.wait([pid])
    perf = kernel.performance("gated")
    assert perf.runs == 0


# ---------------------------------------------------------------------------- the real executable


def llmunix(*commands: str, home: Path, keep_going: bool = False) -> subprocess.CompletedProcess:
    args = [LLMUNIX, *(["-k"] if keep_going else [])]
    for c in commands:
        args += ["-c", c]
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_e2e_learned_scheduling_from_config_deadlines_and_the_performance_line(tmp_path):
    (tmp_path / "config.toml").write_text('scheduling = "learned"\n')
    r = llmunix("set scheduling", "run sleep seconds=0.05", "run sleep seconds=0.05", "wait",
                "run sleep seconds=0.05 --deadline 10m", "ps -l 3", "wait", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "scheduling  learned" in r.stdout
    deadline = next(x for x in r.stdout.splitlines() if "Deadline:" in x)
    assert "(in 00:09:5" in deadline or "(in 00:10:00)" in deadline or "(met)" in deadline
    perf = next(x for x in r.stdout.splitlines() if "Performance:" in x)
    assert "over 2 runs, 100% success" in perf  # the two before it (the third still ran)


def test_e2e_set_scheduling_back_to_fifo_and_bad_values(tmp_path):
    r = llmunix("set scheduling learned", "set scheduling fifo", "set scheduling", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "scheduling  fifo" in r.stdout
    r = llmunix("set scheduling shortest", home=tmp_path)
    assert r.returncode != 0 and "invalid choice: 'shortest'" in r.stderr
    assert "Traceback" not in r.stderr
    for bad, says in (("run echo text=x --deadline soon", "bad duration 'soon'"),
                      ("run echo text=x --deadline 0", "--deadline '0'; it must be more than 0")):
        r = llmunix(bad, home=tmp_path)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], r.stderr
    (tmp_path / "config.toml").write_text('scheduling = "sjf"\n')
    r = llmunix("ps", home=tmp_path)
    assert r.returncode == 2 and "scheduling" in r.stderr and "Traceback" not in r.stderr


def test_the_admission_look_ahead_sees_the_learned_order_and_leaves_the_queue_as_it_was():
    expected = {f"t{i}": float(i) for i in range(6)}
    q = LearnedQueue(5.0, expected, {}, set(), lambda *a: None)
    procs = [_proc(10 + i, f"t{i}") for i in (4, 1, 5, 0, 3, 2)]
    for p in procs:
        q.push(p, now=100.0)
    q.remove(next(p for p in procs if p.tool.name == "t1"))  # a stale entry is skipped
    assert [p.tool.name for p in q.candidates(100.0, 3)] == ["t0", "t2", "t3"]
    assert len(q) == 5 and q.peek(100.0).tool.name == "t0"
    assert sorted(p.tool.name for p in q.entries(Priority.NORMAL)) == ["t0", "t2", "t3", "t4", "t5"]


def test_resource_admission_works_under_the_learned_order(make_kernel, make_gate):
    k = make_kernel(max_running=2, scheduling="learned", limits={"gpu": 1}, time_slice=60)
    order: list[str] = []
    big, small = labelled(order, "big"), labelled(order, "small")
    k.scheduler.record_duration("big", 0.01)  # shortest, but it needs the GPU the gate holds
    k.scheduler.record_duration("small", 5.0)
    gate = make_gate()
    holder = k.spawn(gate.tool, needs={"gpu": 1})
    assert gate.started.wait(WAIT)
    first = k.spawn(big, needs={"gpu": 1})
    second = k.spawn(small)
    k.wait([second])
    assert order == ["small"] and k.info(first).detail == "waiting for resources: gpu"
    gate.open()
    k.wait([holder, first])
    assert order == ["small", "big"]
