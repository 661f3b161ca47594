"""The process lifecycle through the Kernel API: legal and illegal moves, terminal states and
their events, dependencies, pause/resume, wait/shutdown, and PIDs that survive restarts."""

from __future__ import annotations

import sys
import threading

import pytest
from conftest import WAIT

from llmunix import (
    Event,
    IllegalTransition,
    LlmunixError,
    NoSuchProcess,
    Outcome,
    Phase,
    ProcessContext,
    ToolError,
)
from llmunix.models import ALLOWED, EXIT_CANCELLED, format_pid

TERMINAL_EVENTS = {"process.completed", "process.failed", "process.cancelled"}


def record_events(k, pattern: str = "process.*") -> list[Event]:
    events: list[Event] = []
    k.subscribe(pattern, events.append)
    return events


def types_for(events: list[Event], pid: int) -> list[str]:
    return [e.type for e in events if e.pid == pid]


def assert_one_line_naming(exc: pytest.ExceptionInfo[BaseException], pid: int) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert format_pid(pid) in message, message
    return message


# ---------------------------------------------------------------------------- the phase table


def test_allowed_table_covers_every_phase_and_done_is_final():
    assert set(ALLOWED) == set(Phase)
    assert ALLOWED[Phase.DONE] == frozenset()
    for phase, exits in ALLOWED.items():
        assert phase not in exits, f"{phase} should not move to itself"
        if phase is not Phase.DONE:
            assert Phase.DONE in exits, f"{phase} must be able to end"


def test_allowed_table_makes_a_paused_process_queue_again_before_it_runs():
    assert Phase.RUNNING not in ALLOWED[Phase.PAUSED]
    assert Phase.RUNNING not in ALLOWED[Phase.WAITING]
    assert Phase.PREEMPTED in ALLOWED[Phase.RUNNING]
    assert Phase.RUNNING in ALLOWED[Phase.PREEMPTED]


# ---------------------------------------------------------------------------- legal moves


def test_process_goes_ready_running_done_and_history_says_so(make_kernel):
    k = make_kernel()

    def answer(ctx: ProcessContext) -> int:
        return 42

    pid = k.spawn(answer)
    info = k.wait([pid], timeout=10)[0]
    assert info.is_done
    assert info.phase is Phase.DONE
    assert info.state == Outcome.COMPLETED
    assert info.output == 42
    assert info.started is not None and info.finished is not None
    assert [h.event for h in info.history] == ["spawned", "started", "completed"]


def test_queued_process_can_be_paused_and_resumed_before_it_ever_runs(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    gate = make_gate()
    g = k.spawn(gate.tool)
    assert gate.started.wait(10)
    queued = k.spawn("echo", text="later")

    info = k.info(queued)
    assert (info.phase, info.state, info.detail) == (Phase.READY, "Pending", "queued")
    info = k.pause(queued)
    assert (info.phase, info.display_state, info.detail) == (Phase.PAUSED, "Paused", "paused by user")
    info = k.resume(queued)
    assert (info.phase, info.detail) == (Phase.READY, "queued")

    gate.open()
    done = k.wait([g, queued], timeout=10)
    assert [i.state for i in done] == ["Completed", "Completed"]
    assert [h.event for h in done[1].history][:3] == ["spawned", "paused", "resumed"]


def test_resume_before_the_pause_takes_effect_cancels_the_pause(make_kernel):
    k = make_kernel()
    entered, proceed = threading.Event(), threading.Event()

    def busy(ctx: ProcessContext) -> str:
        entered.set()
        proceed.wait(10)  # no control point while blocked here
        ctx.check()
        return "finished"

    pid = k.spawn(busy)
    assert entered.wait(10)
    info = k.pause(pid)
    assert info.phase is Phase.RUNNING
    assert info.detail == "pausing at its next control point"
    info = k.resume(pid)
    assert (info.phase, info.detail) == (Phase.RUNNING, "running")
    proceed.set()
    done = k.wait([pid], timeout=10)[0]
    assert done.state == "Completed"
    events = [h.event for h in done.history]
    assert "pause cancelled" in events and "paused" not in events


# ---------------------------------------------------------------------------- illegal moves


def test_resume_of_a_running_process_is_refused(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool)
    assert gate.started.wait(10)
    with pytest.raises(IllegalTransition) as exc:
        k.resume(pid)
    message = assert_one_line_naming(exc, pid)
    assert "not paused" in message and "Running" in message
    assert k.info(pid).phase is Phase.RUNNING
    gate.open()
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_pause_twice_is_refused_and_the_process_stays_paused(make_kernel, make_gate, wait_until):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool)
    assert gate.started.wait(10)
    k.pause(pid)
    with pytest.raises(IllegalTransition) as exc:
        k.pause(pid)  # whether or not the first pause has taken effect yet
    assert "already paused" in assert_one_line_naming(exc, pid)
    wait_until(lambda: k.info(pid).phase is Phase.PAUSED, message="the pause to take effect")
    with pytest.raises(IllegalTransition):
        k.pause(pid)
    assert k.info(pid).phase is Phase.PAUSED
    k.resume(pid)
    gate.open()
    assert k.wait([pid], timeout=10)[0].state == "Completed"


@pytest.mark.parametrize(
    ("action", "verb"),
    [
        (lambda k, pid: k.pause(pid), "pause"),
        (lambda k, pid: k.resume(pid), "resume"),
        (lambda k, pid: k.kill(pid), "kill"),
        (lambda k, pid: k.kill(pid, force=True), "kill"),
        (lambda k, pid: k.renice(pid, "high"), "change the priority of"),
    ],
    ids=["pause", "resume", "kill", "kill-force", "renice"],
)
def test_a_finished_process_refuses_every_change(make_kernel, action, verb):
    k = make_kernel()
    pid = k.spawn("echo", text="hi")
    before = k.wait([pid], timeout=10)[0]
    assert before.state == "Completed"
    with pytest.raises(IllegalTransition) as exc:
        action(k, pid)
    message = assert_one_line_naming(exc, pid)
    assert message == f"cannot {verb} process {format_pid(pid)}: it has already finished (Completed)"
    assert isinstance(exc.value, LlmunixError)
    assert k.info(pid) == before


@pytest.mark.parametrize(
    "action",
    [
        lambda k: k.info(42),
        lambda k: k.pause(42),
        lambda k: k.resume(42),
        lambda k: k.kill(42),
        lambda k: k.renice(42, "low"),
        lambda k: k.wait([42], timeout=1),
        lambda k: k.logs(42),
        lambda k: k.spawn("echo", text="x", after=[42]),
    ],
    ids=["info", "pause", "resume", "kill", "renice", "wait", "logs", "spawn-after"],
)
def test_an_unknown_pid_is_reported_zero_padded(make_kernel, action):
    k = make_kernel()
    with pytest.raises(NoSuchProcess) as exc:
        action(k)
    assert isinstance(exc.value, LlmunixError)
    assert_one_line_naming(exc, 42)
    assert k.live_pids() == []


@pytest.mark.parametrize(
    "level",
    [
        "urgent",
        pytest.param(9),
    ],
)
def test_an_unknown_priority_is_refused_with_the_levels(make_kernel, make_gate, level):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool)
    first_free = k.next_pid
    with pytest.raises(LlmunixError) as exc:
        k.spawn("echo", text="x", priority=level)
    message = str(exc.value)
    assert "critical, high, normal, low, idle" in message and "\n" not in message
    assert k.next_pid == first_free
    with pytest.raises(LlmunixError):
        k.renice(pid, level)
    assert k.info(pid).priority.label == "normal"
    gate.open()


def test_an_unknown_parent_is_refused(make_kernel):
    k = make_kernel()
    with pytest.raises(NoSuchProcess) as exc:
        k.spawn("echo", text="x", parent=42)
    assert_one_line_naming(exc, 42)


def test_refused_requests_leave_other_processes_alone(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    gate = make_gate()
    running = k.spawn(gate.tool)
    assert gate.started.wait(10)
    queued = k.spawn("echo", text="queued")
    cancelled = k.spawn("echo", text="x")  # queued behind the gate, then killed there
    k.kill(cancelled)
    attempts = [
        lambda: k.resume(running),
        lambda: k.resume(queued),
        lambda: k.pause(cancelled),
        lambda: k.renice(cancelled, "low"),
        lambda: k.kill(cancelled),
        lambda: k.pause(10_000),
    ]
    for attempt in attempts:
        with pytest.raises(LlmunixError):
            attempt()
    assert k.info(running).phase is Phase.RUNNING
    assert k.info(queued).phase is Phase.READY
    assert k.info(cancelled).state == "Cancelled"
    gate.open()
    assert [i.state for i in k.wait([running, queued], timeout=10)] == ["Completed", "Completed"]


# ---------------------------------------------------------------------------- terminal states


def test_success_ends_completed_with_exit_zero_and_no_error(make_kernel):
    k = make_kernel()
    pid = k.spawn("echo", text="hello")
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code, info.error, info.output) == ("Completed", 0, None, "hello")
    assert info.detail == "exit 0"
    assert info.finished_ok


def test_tool_error_ends_failed_with_its_message_and_exit_code(make_kernel):
    k = make_kernel()

    def picky(ctx: ProcessContext) -> None:
        raise ToolError("the input is empty", exit_code=7)

    builtin = k.spawn("fail", message="nope")
    custom = k.spawn(picky)
    a, b = k.wait([builtin, custom], timeout=10)
    assert (a.state, a.exit_code, a.error) == ("Failed", 1, "nope")
    assert (b.state, b.exit_code, b.error) == ("Failed", 7, "the input is empty")
    assert not a.finished_ok


def test_unexpected_exception_ends_failed_with_type_and_first_line(make_kernel):
    k = make_kernel()

    def broken(ctx: ProcessContext) -> None:
        raise ValueError("boom\nsecond line that should not show")

    pid = k.spawn(broken)
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code, info.error) == ("Failed", 1, "ValueError: boom")


def test_kill_ends_cancelled_with_exit_143_and_the_reason(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool)
    assert gate.started.wait(10)
    k.kill(pid)
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code, info.error) == ("Cancelled", EXIT_CANCELLED, "killed by user")
    assert info.output is None


# The engine catches SystemExit itself: one escaping to the worker thread would be a bug, so the
# warning pytest gives for an unhandled thread exception fails this test.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_sys_exit_in_a_tool_still_ends_the_process_and_frees_its_slot(make_kernel):
    k = make_kernel(max_running=1)

    def quitter(ctx: ProcessContext) -> None:
        sys.exit(3)

    pid = k.spawn(quitter)
    info = k.wait([pid], timeout=WAIT)[0]
    assert info.is_done and info.state == "Failed", f"{info.phase} {info.state}"
    after = k.spawn("echo", text="next")
    assert k.wait([after], timeout=WAIT)[0].state == "Completed"


def test_events_of_one_process_are_spawned_started_completed(make_kernel):
    k = make_kernel()
    events = record_events(k)

    def quiet(ctx: ProcessContext) -> str:
        return "ok"

    pid = k.spawn(quiet)
    k.wait([pid], timeout=10)
    assert k.bus.flush(10)
    assert types_for(events, pid) == ["process.spawned", "process.started", "process.completed"]
    completed = [e for e in events if e.type == "process.completed"][0]
    assert completed.data["exit_code"] == 0
    assert completed.data["error"] is None
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_every_process_gets_exactly_one_terminal_event(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    events = record_events(k)
    gate = make_gate()

    def broken(ctx: ProcessContext) -> None:
        raise ValueError("boom")

    running = k.spawn(gate.tool)
    assert gate.started.wait(10)
    queued_then_killed = k.spawn("echo", text="never")
    ok = k.spawn("echo", text="fine")
    failing = k.spawn(broken)
    dependent = k.spawn("echo", text="never", after=[failing])
    k.kill(queued_then_killed)
    gate.open()
    pids = [running, queued_then_killed, ok, failing, dependent]
    infos = {i.pid: i for i in k.wait(pids, timeout=10)}
    assert k.bus.flush(10)

    expected = {
        running: "Completed", queued_then_killed: "Cancelled", ok: "Completed",
        failing: "Failed", dependent: "Failed",
    }
    assert {pid: i.state for pid, i in infos.items()} == expected
    for pid in pids:
        terminal = [t for t in types_for(events, pid) if t in TERMINAL_EVENTS]
        assert terminal == [f"process.{expected[pid].lower()}"], (pid, types_for(events, pid))
        assert types_for(events, pid)[-1] == terminal[0], "nothing happens after the end"


# ---------------------------------------------------------------------------- dependencies


def test_dependent_waits_until_its_dependency_completes(make_kernel, make_gate):
    k = make_kernel()
    events = record_events(k, "process.completed|process.started")
    gate = make_gate()
    first = k.spawn(gate.tool)
    second = k.spawn("echo", text="after", after=[first])
    info = k.info(second)
    assert info.phase is Phase.WAITING
    assert info.detail == f"waiting for {format_pid(first)}"
    assert info.after == (first,)
    assert info.started is None
    gate.open()
    a, b = k.wait([first, second], timeout=10)
    assert (a.state, b.state) == ("Completed", "Completed")
    assert k.bus.flush(10)
    assert [(e.type, e.pid) for e in events] == [
        ("process.started", first), ("process.completed", first),
        ("process.started", second), ("process.completed", second),
    ]


def test_waiting_detail_lists_only_the_dependencies_still_pending(make_kernel, make_gate):
    k = make_kernel()
    gate_a, gate_b = make_gate(), make_gate()
    a = k.spawn(gate_a.tool)
    b = k.spawn(gate_b.tool)
    c = k.spawn("echo", text="last", after=[b, a])
    assert k.info(c).detail == f"waiting for {format_pid(a)}, {format_pid(b)}"
    gate_a.open()
    k.wait([a], timeout=10)
    assert k.info(c).detail == f"waiting for {format_pid(b)}"
    assert k.info(c).phase is Phase.WAITING
    gate_b.open()
    assert k.wait([c], timeout=10)[0].state == "Completed"


def test_failed_dependency_fails_the_dependent_without_running_it(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    ran = threading.Event()

    def guarded(ctx: ProcessContext) -> None:
        ran.set()

    def flaky(ctx: ProcessContext) -> None:
        while not gate.released.is_set():
            ctx.sleep(0.01)
        raise ToolError("upstream broke")

    first = k.spawn(flaky)
    second = k.spawn(guarded, after=[first])
    gate.open()
    a, b = k.wait([first, second], timeout=10)
    assert a.state == "Failed"
    assert b.state == "Failed"
    assert b.error.startswith("dependency failed")
    assert b.error == f"dependency failed: {format_pid(first)} Failed"
    assert b.exit_code == 1
    assert b.started is None
    assert not ran.is_set()


def test_a_chain_of_dependents_fails_transitively(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    head = k.spawn(gate.tool)
    chain = [head]
    for _ in range(5):
        chain.append(k.spawn("echo", text="never", after=[chain[-1]]))
    k.kill(head)
    infos = k.wait(chain, timeout=10)
    assert infos[0].state == "Cancelled"
    assert infos[1].error == f"dependency failed: {format_pid(head)} Cancelled"
    for prev, info in zip(chain[1:-1], infos[2:], strict=True):
        assert info.state == "Failed"
        assert info.error == f"dependency failed: {format_pid(prev)} Failed"
        assert info.started is None


def test_after_an_already_failed_process_fails_at_once(make_kernel):
    k = make_kernel()
    bad = k.spawn("fail", message="no")
    assert k.wait([bad], timeout=10)[0].state == "Failed"
    dependent = k.spawn("echo", text="never", after=[bad])
    info = k.info(dependent)  # no waiting: it is already over when spawn returns
    assert info.is_done
    assert info.state == "Failed"
    assert info.error == f"dependency failed: {format_pid(bad)} Failed"


def test_after_an_already_completed_process_runs_at_once(make_kernel):
    k = make_kernel()
    good = k.spawn("echo", text="first")
    k.wait([good], timeout=10)
    dependent = k.spawn("echo", text="second", after=[good])
    assert k.wait([dependent], timeout=10)[0].state == "Completed"


def test_paused_waiting_process_resumes_into_the_queue_once_its_dependency_is_done(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    first = k.spawn(gate.tool)
    second = k.spawn("echo", text="after", after=[first])
    k.pause(second)
    gate.open()
    assert k.wait([first], timeout=10)[0].state == "Completed"
    info = k.info(second)
    assert info.phase is Phase.PAUSED  # a completed dependency does not unpause it
    k.resume(second)
    assert k.wait([second], timeout=10)[0].state == "Completed"


# ---------------------------------------------------------------------------- pause and resume


def test_pause_stops_progress_until_resume(make_kernel, wait_until):
    k = make_kernel()
    ticks: list[int] = []
    stop = threading.Event()

    def counting(ctx: ProcessContext) -> int:
        while not stop.is_set():
            ticks.append(1)
            ctx.sleep(0.01)
        return len(ticks)

    pid = k.spawn(counting)
    wait_until(lambda: len(ticks) >= 3, message="the counter to start")
    k.pause(pid)
    wait_until(lambda: k.info(pid).phase is Phase.PAUSED, message="phase paused")
    frozen = len(ticks)
    runtime = k.info(pid).runtime
    threading.Event().wait(0.3)  # the one observation window: nothing may change in it
    assert len(ticks) == frozen
    assert k.info(pid).runtime == runtime, "paused time does not count as running time"
    assert k.info(pid).display_state == "Paused"

    k.resume(pid)
    wait_until(lambda: len(ticks) > frozen + 2, message="the counter to move after resume")
    stop.set()
    info = k.wait([pid], timeout=10)[0]
    assert info.state == "Completed"
    assert info.output >= frozen + 3


def test_paused_process_gives_its_slot_to_another(make_kernel, wait_until):
    k = make_kernel(max_running=1, time_slice=60)
    stop = threading.Event()
    started = threading.Event()

    def hog(ctx: ProcessContext) -> None:
        started.set()
        while not stop.is_set():
            ctx.sleep(0.01)

    a = k.spawn(hog)
    assert started.wait(10)
    b = k.spawn("echo", text="my turn")
    assert k.info(b).phase is Phase.READY
    k.pause(a)
    info_b = k.wait([b], timeout=10)[0]
    assert info_b.state == "Completed"
    assert k.info(a).phase is Phase.PAUSED
    k.resume(a)
    wait_until(lambda: k.info(a).phase is Phase.RUNNING, message="A to run again")
    stop.set()
    assert k.wait([a], timeout=10)[0].state == "Completed"


def test_killing_a_paused_process_cancels_it(make_kernel, make_gate, wait_until):
    k = make_kernel()
    gate = make_gate()
    pid = k.spawn(gate.tool)
    assert gate.started.wait(10)
    k.pause(pid)
    wait_until(lambda: k.info(pid).phase is Phase.PAUSED, message="phase paused")
    k.kill(pid)
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code, info.error) == ("Cancelled", EXIT_CANCELLED, "killed by user")


# ---------------------------------------------------------------------------- wait and shutdown


def test_wait_with_timeout_returns_unfinished_snapshots(make_kernel, make_gate):
    k = make_kernel()
    gate = make_gate()
    slow = k.spawn(gate.tool)
    quick = k.spawn("echo", text="x")
    k.wait([quick], timeout=10)
    infos = k.wait([slow, quick], timeout=0.2)
    assert [i.pid for i in infos] == [slow, quick]
    assert infos[0].is_done is False and infos[0].state == "Running"
    assert infos[1].is_done is True
    gate.open()
    assert k.wait([slow], timeout=10)[0].is_done


def test_shutdown_cancels_live_processes_with_the_given_reason(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    gate = make_gate()
    running = k.spawn(gate.tool)
    assert gate.started.wait(10)
    queued = k.spawn("sleep", seconds=30)
    k.kill(k.spawn("echo", text="x"))  # already over: shutdown does not report it

    stopped = k.shutdown(reason="maintenance")
    assert sorted(i.pid for i in stopped) == [running, queued]
    for info in stopped:
        assert info.is_done
        assert (info.state, info.exit_code, info.error) == ("Cancelled", EXIT_CANCELLED, "maintenance")
    assert k.live_pids() == []
    with pytest.raises(LlmunixError, match="shut down"):
        k.spawn("echo", text="too late")
    assert k.shutdown() == []


# ---------------------------------------------------------------------------- PIDs


def test_pids_are_never_reused_after_a_clean_restart(make_kernel, tmp_path):
    first = make_kernel(home=tmp_path)
    old = [first.spawn("echo", text=str(i)) for i in range(3)]
    first.wait(old, timeout=10)
    first.shutdown()
    assert int((tmp_path / "pids").read_text()) == max(old) + 1

    second = make_kernel(home=tmp_path)
    new = second.spawn("echo", text="again")
    assert new > max(old)
    assert second.info(new).process_id == format_pid(new)


def test_pids_are_never_reused_after_a_crash(make_kernel, tmp_path, monkeypatch):
    first = make_kernel(home=tmp_path)
    old = [first.spawn("echo", text=str(i)) for i in range(3)]
    first.wait(old, timeout=10)
    on_disk = int((tmp_path / "pids").read_text())
    assert on_disk >= first.next_pid > max(old)  # a block is reserved before it is handed out
    monkeypatch.setattr(first.table.pids, "close", lambda: None)  # the crash: no clean close
    first.shutdown()
    assert int((tmp_path / "pids").read_text()) == on_disk

    second = make_kernel(home=tmp_path)
    new = second.spawn("echo", text="after the crash")
    assert new > max(old)
    assert new >= on_disk


def test_a_corrupt_pid_file_is_repaired_from_the_store_and_reported(make_kernel, tmp_path):
    first = make_kernel(home=tmp_path)
    old = [first.spawn("echo", text=str(i)) for i in range(3)]
    first.wait(old, timeout=10)
    first.shutdown()
    (tmp_path / "pids").write_text("not a number\n")
    second = make_kernel(home=tmp_path)
    assert "unreadable" in second.pids_repaired
    assert second.spawn("echo", text="x") > max(old)


def test_registering_a_feature_again_adds_no_hooks(make_kernel):
    """Features that register at first use may ask more than once (the debugger, placement)."""
    k = make_kernel()
    before = k.table.hooks()
    with k.table.lock:
        k.table.register(k.resilience)
        k.table.register(k.placement)
        k.table.register(k.placement)
    after = k.table.hooks()
    assert after["after_body"] == [*before["after_body"], "Placement.after_body"]
    assert after["on_spawn"] == before["on_spawn"]
