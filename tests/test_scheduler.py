"""Scheduling policy as a user sees it: levels, FIFO and round robin within a level, aging,
preemption, renice and the max_running bound. Every test uses max_running small enough that
the order of starts is decided by the scheduler alone."""

from __future__ import annotations

import threading

import pytest
from conftest import WAIT

from llmunix import Event, LlmunixError, Phase, Priority, ProcessContext

LEVELS_LOW_TO_HIGH = ["idle", "low", "normal", "high", "critical"]


def recorder(order: list[str]):
    """A tool that appends its `label` to `order` when it starts."""

    def record(ctx: ProcessContext, label: str) -> str:
        order.append(label)
        return label

    return record


def switches(trace: list[str]) -> int:
    return sum(1 for a, b in zip(trace, trace[1:], strict=False) if a != b)


def test_when_a_slot_frees_the_highest_level_starts_first(make_kernel, make_gate):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    gate = make_gate()
    blocker = k.spawn(gate.tool, priority="critical")  # nothing outranks it: no preemption
    assert gate.started.wait(10)
    order: list[str] = []
    pids = [k.spawn(recorder(order), priority=level, label=level) for level in LEVELS_LOW_TO_HIGH]
    assert all(k.info(p).phase is Phase.READY for p in pids)
    assert order == []

    gate.open()
    infos = k.wait([blocker, *pids], timeout=10)
    assert all(i.state == "Completed" for i in infos)
    assert order == ["critical", "high", "normal", "low", "idle"]


def test_within_a_level_processes_start_in_spawn_order(make_kernel, make_gate):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    gate = make_gate()
    blocker = k.spawn(gate.tool, priority="critical")
    assert gate.started.wait(10)
    order: list[str] = []
    labels = [f"job{i}" for i in range(6)]
    pids = [k.spawn(recorder(order), label=label) for label in labels]
    gate.open()
    k.wait([blocker, *pids], timeout=10)
    assert order == labels


def test_running_equals_take_turns_when_their_time_slice_ends(make_kernel, wait_until):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=0.05)
    preempted: list[Event] = []
    k.subscribe("process.preempted", preempted.append)
    trace: list[str] = []
    stop = threading.Event()

    def worker(ctx: ProcessContext, label: str) -> None:
        while not stop.is_set():
            trace.append(label)
            ctx.sleep(0.01)

    a = k.spawn(worker, label="a")
    b = k.spawn(worker, label="b")
    wait_until(lambda: switches(trace) >= 4, message="a and b to alternate a few times")
    stop.set()
    assert [i.state for i in k.wait([a, b], timeout=10)] == ["Completed", "Completed"]
    assert k.bus.flush(10)
    assert {e.data["reason"] for e in preempted} == {"time slice"}
    assert {e.pid for e in preempted} == {a, b}


def test_time_slice_does_not_hand_the_slot_to_a_lower_level(make_kernel, wait_until):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=0.02)
    ticks: list[int] = []
    stop = threading.Event()

    def worker(ctx: ProcessContext) -> None:
        while not stop.is_set():
            ticks.append(1)
            ctx.sleep(0.01)

    normal = k.spawn(worker)
    low = k.spawn("echo", text="my turn", priority="low")
    wait_until(lambda: len(ticks) >= 20, message="the normal process to use many time slices")
    assert k.info(low).phase is Phase.READY
    assert k.info(normal).phase is Phase.RUNNING
    stop.set()
    assert [i.state for i in k.wait([normal, low], timeout=10)] == ["Completed", "Completed"]


def test_queued_process_ages_up_to_critical_but_keeps_its_base_priority(make_kernel, make_gate, wait_until):
    k = make_kernel(max_running=1, aging_interval=0.05, time_slice=60)
    gate = make_gate()
    blocker = k.spawn(gate.tool, priority="critical")
    assert gate.started.wait(10)
    patient = k.spawn("echo", text="finally", priority="idle")
    wait_until(lambda: k.info(patient).effective_priority == Priority.CRITICAL, message="aging to critical")
    info = k.info(patient)
    assert info.priority == Priority.IDLE
    assert info.phase is Phase.READY  # aging reorders the queue; it never preempts
    assert k.info(blocker).phase is Phase.RUNNING
    gate.open()
    assert k.wait([patient], timeout=10)[0].state == "Completed"


def _stream_of_normals(k, make_gate, idle_pid: int, first, first_pid: int, limit: int):
    """Keep one normal process queued at all times: spawn the next gate before opening the
    current one. Returns (iterations done, pid of the normal queued at the end, its gate) as
    soon as the idle process has left the queue, or after `limit` iterations."""
    current, current_pid = first, first_pid
    for i in range(limit):
        nxt = make_gate()
        nxt_pid = k.spawn(nxt.tool)
        current.open()
        assert k.wait([current_pid], timeout=10)[0].is_done
        current, current_pid = nxt, nxt_pid
        if k.info(idle_pid).phase is not Phase.READY:
            return i + 1, current_pid, current
    return limit, current_pid, current


def test_aging_lets_an_idle_process_run_under_a_stream_of_normal_ones(make_kernel, make_gate):
    k = make_kernel(max_running=1, aging_interval=0.05, time_slice=60)
    first = make_gate()
    first_pid = k.spawn(first.tool)
    assert first.started.wait(10)
    queued_when_idle_ran: list[str] = []

    def patient(ctx: ProcessContext) -> None:
        queued_when_idle_ran.extend(i.name for i in k.ps() if i.phase is Phase.READY)

    idle = k.spawn(patient, priority="idle")

    rounds, queued_pid, queued = _stream_of_normals(k, make_gate, idle, first, first_pid, limit=200)
    assert rounds < 200, "the idle process never got the slot"
    assert k.wait([idle], timeout=10)[0].state == "Completed"
    assert queued_when_idle_ran == ["gate"], "a normal process was still waiting when idle ran"
    queued.open()
    assert k.wait([queued_pid], timeout=10)[0].state == "Completed"


def test_without_aging_an_idle_process_waits_while_normal_ones_keep_coming(make_kernel, make_gate):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    first = make_gate()
    first_pid = k.spawn(first.tool)
    assert first.started.wait(10)
    idle = k.spawn("echo", text="at last", priority="idle")

    rounds, queued_pid, queued = _stream_of_normals(k, make_gate, idle, first, first_pid, limit=30)
    assert rounds == 30
    info = k.info(idle)
    assert (info.phase, info.effective_priority, info.started) == (Phase.READY, Priority.IDLE, None)
    queued.open()  # the stream ends: now it runs
    assert k.wait([queued_pid, idle], timeout=10)[1].state == "Completed"


def test_a_critical_process_preempts_a_running_low_one_which_then_continues(make_kernel, wait_until):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    events: list[Event] = []
    k.subscribe("process.preempted|process.continued", events.append)
    ticks: list[int] = []
    stop = threading.Event()
    low_started = threading.Event()
    seen: dict[str, object] = {}

    def background(ctx: ProcessContext) -> int:
        low_started.set()
        while not stop.is_set():
            ticks.append(1)
            ctx.sleep(0.01)
        return len(ticks)

    low = k.spawn(background, priority="low")
    assert low_started.wait(10)

    def urgent(ctx: ProcessContext) -> str:
        info = k.info(low)
        seen["phase"], seen["detail"] = info.phase, info.detail
        before = len(ticks)
        ctx.sleep(0.1)
        seen["low ticks while urgent ran"] = len(ticks) - before
        return "done"

    critical = k.spawn(urgent, priority="critical")
    assert k.wait([critical], timeout=10)[0].state == "Completed"
    assert seen == {
        "phase": Phase.PREEMPTED,
        "detail": "preempted by a higher-priority process",
        "low ticks while urgent ran": 0,
    }

    wait_until(lambda: k.info(low).phase is Phase.RUNNING, message="low to continue")
    resumed_at = len(ticks)
    wait_until(lambda: len(ticks) > resumed_at, message="low to make progress again")
    stop.set()
    assert k.wait([low], timeout=10)[0].state == "Completed"
    assert k.bus.flush(10)
    assert [(e.type, e.pid) for e in events] == [("process.preempted", low), ("process.continued", low)]
    assert events[0].data["reason"] == "priority"


def test_renice_of_a_queued_process_changes_its_place(make_kernel, make_gate):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    gate = make_gate()
    blocker = k.spawn(gate.tool, priority="critical")
    assert gate.started.wait(10)
    order: list[str] = []
    first = k.spawn(recorder(order), priority="low", label="first")
    second = k.spawn(recorder(order), priority="low", label="second")
    info = k.renice(second, "high")
    assert (info.priority, info.phase) == (Priority.HIGH, Phase.READY)
    gate.open()
    k.wait([blocker, first, second], timeout=10)
    assert order == ["second", "first"]


def test_renice_of_the_running_process_below_a_waiting_one_preempts_it(make_kernel, wait_until):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    stop = threading.Event()
    started = threading.Event()

    def hog(ctx: ProcessContext) -> None:
        started.set()
        while not stop.is_set():
            ctx.sleep(0.01)

    running = k.spawn(hog)
    assert started.wait(10)
    waiting = k.spawn("echo", text="my turn")
    assert k.info(waiting).phase is Phase.READY  # same level: no preemption
    k.renice(running, "low")
    assert k.wait([waiting], timeout=10)[0].state == "Completed"
    assert k.info(running).priority == Priority.LOW
    wait_until(lambda: k.info(running).phase is Phase.RUNNING, message="the reniced process to continue")
    stop.set()
    assert k.wait([running], timeout=10)[0].state == "Completed"


def test_no_more_than_max_running_processes_run_at_once(make_kernel, make_gate, wait_until):
    k = make_kernel(max_running=2, time_slice=60)
    gates = [make_gate() for _ in range(5)]
    pids = [k.spawn(g.tool) for g in gates]
    wait_until(lambda: gates[0].started.is_set() and gates[1].started.is_set(), message="two to start")
    phases = [k.info(p).phase for p in pids]
    assert phases == [Phase.RUNNING, Phase.RUNNING, Phase.READY, Phase.READY, Phase.READY]

    k.set_max_running(3)
    assert k.info(pids[2]).phase is Phase.RUNNING
    assert k.info(pids[3]).phase is Phase.READY

    gates[0].open()
    assert k.wait([pids[0]], timeout=10)[0].state == "Completed"
    assert k.info(pids[3]).phase is Phase.RUNNING
    assert k.info(pids[4]).phase is Phase.READY
    assert sum(1 for p in pids if k.info(p).phase is Phase.RUNNING) == 3
    for g in gates:
        g.open()
    assert all(i.state == "Completed" for i in k.wait(pids, timeout=10))


def test_max_running_below_one_is_refused(make_kernel):
    with pytest.raises(LlmunixError, match="at least 1"):
        make_kernel(max_running=0)
    k = make_kernel(max_running=1)
    with pytest.raises(LlmunixError, match="at least 1"):
        k.set_max_running(0)
    assert k.max_running == 1


def test_a_queued_process_starts_when_a_worker_thread_frees_up(make_kernel):
    k = make_kernel(max_running=4, max_threads=1)
    first = k.spawn("echo", text="first")
    second = k.spawn("echo", text="second")  # a slot is free but the only thread is taken
    infos = k.wait([first, second], timeout=WAIT)
    assert [i.state for i in infos] == ["Completed", "Completed"], [i.phase for i in infos]


def _low_process_blocked_outside_control_points(k):
    """A low-priority process that first blocks where no request can reach it (so requests
    stay pending), then loops on ctx.sleep until `stop`. Returns (pid, proceed, stop)."""
    entered, proceed, stop = threading.Event(), threading.Event(), threading.Event()

    def background(ctx: ProcessContext) -> None:
        entered.set()
        proceed.wait(10)
        ctx.check()  # the first control point: pending requests are honoured here
        while not stop.is_set():
            ctx.sleep(0.01)

    pid = k.spawn(background, priority="low")
    assert entered.wait(10)
    return pid, proceed, stop


def test_a_preemption_whose_cause_went_away_does_not_stall_the_victim(make_kernel):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    low, proceed, stop = _low_process_blocked_outside_control_points(k)
    urgent = k.spawn("echo", text="urgent", priority="critical")  # asks low to step aside...
    k.kill(urgent)  # ...and goes away before low reaches a control point
    proceed.set()
    stop.set()
    info = k.wait([low], timeout=WAIT)[0]
    assert info.state == "Completed", f"{info.phase}: {info.detail}"


def test_a_preemption_victim_still_finishes_when_a_slot_freed_up_meanwhile(make_kernel, make_gate):
    k = make_kernel(max_running=2, aging_interval=0, time_slice=60)
    gate = make_gate()
    other = k.spawn(gate.tool)
    low, proceed, stop = _low_process_blocked_outside_control_points(k)
    urgent = k.spawn("echo", text="urgent", priority="critical")  # asks low to step aside
    gate.open()
    assert k.wait([other, urgent], timeout=10)[1].state == "Completed"  # it took the freed slot
    proceed.set()
    stop.set()
    info = k.wait([low], timeout=WAIT)[0]
    assert info.state == "Completed", f"{info.phase}: {info.detail}"


def test_a_pause_that_overtakes_a_pending_preemption_leaves_no_stale_preemption(make_kernel, wait_until):
    k = make_kernel(max_running=1, aging_interval=0, time_slice=60)
    preempted: list[Event] = []
    k.subscribe("process.preempted", preempted.append)
    low, proceed, stop = _low_process_blocked_outside_control_points(k)
    urgent = k.spawn("echo", text="urgent", priority="critical")  # asks low to step aside
    k.pause(low)
    proceed.set()
    assert k.wait([urgent], timeout=10)[0].state == "Completed"
    assert k.info(low).phase is Phase.PAUSED
    k.resume(low)  # nothing else is waiting now
    stop.set()
    info = k.wait([low], timeout=WAIT)[0]
    assert k.bus.flush(10)
    assert preempted == [], [(e.pid, e.data["reason"]) for e in preempted]
    assert info.state == "Completed", f"{info.phase}: {info.detail}"
