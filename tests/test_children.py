"""Child processes: a parent waits for its children without holding a slot, its pause, resume and
kill reach them, and any process can be given a running-time limit."""

from __future__ import annotations

import threading

from llmunix import Kernel, ProcessContext
from llmunix.models import EXIT_TIMEOUT, ProcessKind
from llmunix.tools.registry import make_tool
from tests.conftest import wait_phase


def test_parent_waits_for_its_child_off_slot_even_with_one_slot(make_kernel):
    k: Kernel = make_kernel(max_running=1)

    def parent(ctx: ProcessContext) -> str:
        info = ctx.run("echo", text="from the child")
        return f"child {info.pid} said {info.output!r}"

    pid = k.spawn(parent)
    [info] = k.wait([pid], timeout=10)
    assert info.state == "Completed", info.error
    child = [p for p in k.ps(all=True) if p.parent == pid]
    assert len(child) == 1 and child[0].state == "Completed"
    assert info.output == f"child {child[0].pid} said 'from the child'"


def test_a_blocked_parent_shows_what_it_waits_for(make_kernel, make_gate):
    k = make_kernel(max_running=2)
    gate = make_gate()
    kids: list[int] = []

    def parent(ctx: ProcessContext) -> None:
        kids.append(ctx.spawn(gate.tool))
        ctx.wait(kids)

    pid = k.spawn(parent)
    assert gate.started.wait(10)
    wait_phase(k, pid, "waiting")
    info = k.info(pid)
    assert info.detail == f"waiting for {kids[0]:03d}"
    assert len([p for p in k.ps() if p.phase == "running"]) == 1  # only the child holds a slot
    gate.open()
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_pausing_a_parent_pauses_its_children_and_resume_brings_back_only_those(make_kernel, make_gate):
    k = make_kernel(max_running=4)
    gates = [make_gate(), make_gate()]
    kids: list[int] = []
    spawned = threading.Event()

    def parent(ctx: ProcessContext) -> None:
        kids.extend(ctx.spawn(g.tool) for g in gates)
        spawned.set()
        ctx.wait(kids)

    pid = k.spawn(parent)
    assert spawned.wait(10) and all(g.started.wait(10) for g in gates)
    k.pause(kids[1])  # the user paused this one themselves
    wait_phase(k, kids[1], "paused")
    k.pause(pid)
    for kid in kids:
        wait_phase(k, kid, "paused")
    wait_phase(k, pid, "paused")
    k.resume(pid)
    wait_phase(k, kids[0], "running")
    assert k.info(kids[1]).phase == "paused"  # still the user's pause
    for g in gates:
        g.open()
    assert k.wait([kids[0]], timeout=10)[0].state == "Completed"
    k.resume(kids[1])
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_killing_a_parent_cancels_its_whole_tree(make_kernel, make_gate):
    k = make_kernel(max_running=4)
    gate = make_gate()
    grandchild: list[int] = []

    def middle(ctx: ProcessContext) -> None:
        grandchild.append(ctx.spawn(gate.tool))
        ctx.wait(grandchild)

    def top(ctx: ProcessContext) -> None:
        ctx.run(middle)

    pid = k.spawn(top)
    assert gate.started.wait(10)
    k.kill(pid)
    infos = k.wait([pid, grandchild[0]], timeout=10)
    assert [i.state for i in infos] == ["Cancelled", "Cancelled"]
    everyone = k.wait([p.pid for p in k.ps(all=True)], timeout=10)
    assert len(everyone) == 3 and all(i.state == "Cancelled" for i in everyone)


def test_timeout_fails_a_hung_process_with_the_reason(make_kernel):
    k = make_kernel()

    def hang(ctx: ProcessContext) -> None:
        while True:
            ctx.sleep(0.01)

    pid = k.spawn(hang, timeout=0.2)
    [info] = k.wait([pid], timeout=10)
    assert (info.state, info.error, info.exit_code) == ("Failed", "timed out after 0.2s", EXIT_TIMEOUT)


def test_paused_time_does_not_count_against_the_timeout(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool, timeout=0.5)
    assert gate.started.wait(10)
    k.pause(pid)
    wait_phase(k, pid, "paused")
    threading.Event().wait(0.8)  # longer than the timeout, while paused: it must survive that
    assert k.info(pid).phase == "paused"
    k.resume(pid)
    gate.open()
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_bad_timeout_is_refused(make_kernel):
    k = make_kernel()
    import pytest

    from llmunix.models import LlmunixError

    with pytest.raises(LlmunixError, match="timeout must be a positive"):
        k.spawn("echo", text="x", timeout=0)


def test_kind_and_visible_state_come_from_the_tool(make_kernel):
    k = make_kernel()
    seen: list[str] = []
    sub = k.subscribe("process.state", lambda e: seen.append(e.data["state"]))

    def think(ctx: ProcessContext) -> str:
        ctx.set_state("Acting", "using echo")
        ctx.set_state("Learning")
        return "ok"

    agent = make_tool(think, name="thinker", kind=ProcessKind.AGENT)
    pid = k.spawn(agent)
    [info] = k.wait([pid], timeout=10)
    k.bus.flush()
    sub.cancel()
    assert info.kind == ProcessKind.AGENT and info.state == "Completed"
    assert seen == ["Acting", "Learning"]
