"""Stopping processes: cooperative kills, the asynchronous-exception escalation for pure Python
loops, and the `shell` tool's process group, inspected on the real children with psutil."""

from __future__ import annotations

import os
import threading

import psutil
import pytest
from conftest import WAIT

from llmunix import Event, Phase, ProcessContext
from llmunix.models import EXIT_CANCELLED


def record_events(k, pattern: str) -> list[Event]:
    events: list[Event] = []
    k.subscribe(pattern, events.append)
    return events


def wait_in_body(k, pid: int, wait_until) -> None:
    """Until the process's body is executing (started is set together with `in_body`)."""
    wait_until(lambda: k.info(pid).started is not None, message=f"process {pid} to start its body")


def assert_cancelled(info, reason: str = "killed by user") -> None:
    assert info.is_done, f"still {info.phase}: {info.detail}"
    assert (info.state, info.exit_code, info.error) == ("Cancelled", EXIT_CANCELLED, reason)


# ---------------------------------------------------------------------------- thread-backed tools


def test_kill_stops_a_pure_python_spin_loop_after_the_grace(make_kernel, wait_until):
    k = make_kernel(kill_grace=0.3)
    escalated = record_events(k, "process.kill_escalated")
    pid = k.spawn("spin", seconds=60)
    wait_in_body(k, pid, wait_until)
    info = k.kill(pid)
    assert info.detail == "stopping (kill requested)"
    assert_cancelled(k.wait([pid], timeout=WAIT)[0])
    assert k.bus.flush(10)
    assert [e.pid for e in escalated] == [pid]  # stopped by the escalation, the loop never checks in


def test_forced_kill_stops_a_spin_loop_without_waiting_for_the_grace(make_kernel, wait_until):
    k = make_kernel(kill_grace=30)  # far longer than the wait below: only force can explain the end
    pid = k.spawn("spin", seconds=60)
    wait_in_body(k, pid, wait_until)
    k.kill(pid, force=True)
    assert_cancelled(k.wait([pid], timeout=WAIT)[0])


def test_llmunix_stopping_leaves_a_pending_kill_to_end_cancelled_and_reports_only_what_it_stopped(
        tmp_path, wait_until):
    # A script that kills and then exits: a kill not yet taken (a spin loop within its grace)
    # ended Interrupted, and the exit message said `recover` would continue it.
    from llmunix import Kernel

    k = Kernel(tmp_path, monitor=False, kill_grace=30)
    spinning, sleeping = k.spawn("spin", seconds=60), k.spawn("sleep", seconds=60)
    wait_in_body(k, spinning, wait_until)
    wait_in_body(k, sleeping, wait_until)
    k.kill(spinning)
    stopped = k.shutdown(timeout=0.5)  # the spin is still in its grace: shutdown forces it
    assert stopped.pids == [sleeping]
    with Kernel(tmp_path, monitor=False) as again:
        assert_cancelled(again.info(spinning))
        assert again.info(sleeping).state == "Interrupted"


def test_kill_wakes_a_cooperative_sleeper_at_once(make_kernel, wait_until):
    k = make_kernel(kill_grace=30)
    escalated = record_events(k, "process.kill_escalated")
    pid = k.spawn("sleep", seconds=60)
    wait_in_body(k, pid, wait_until)
    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=WAIT)[0])
    assert k.bus.flush(10)
    assert escalated == []  # it stopped at its control point; no exception was needed


def test_except_exception_in_tool_code_does_not_swallow_a_kill(make_kernel, wait_until):
    k = make_kernel(kill_grace=0.2)
    swallowed: list[str] = []

    def stubborn(ctx: ProcessContext) -> None:
        while True:
            try:
                while True:
                    pass
            except Exception as exc:  # the point of the test: a broad handler
                swallowed.append(type(exc).__name__)

    pid = k.spawn(stubborn)
    wait_in_body(k, pid, wait_until)
    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=WAIT)[0])
    assert swallowed == []


def test_kill_of_a_queued_process_ends_it_at_once_without_running(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=60)
    gate = make_gate()
    blocker = k.spawn(gate.tool)
    assert gate.started.wait(10)
    queued = k.spawn("echo", text="never")
    info = k.kill(queued)
    assert_cancelled(info)
    assert info.started is None
    assert k.info(blocker).phase is Phase.RUNNING
    gate.open()


def test_a_second_kill_while_one_is_pending_is_harmless(make_kernel, wait_until):
    k = make_kernel(kill_grace=0.3)
    pid = k.spawn("spin", seconds=60)
    wait_in_body(k, pid, wait_until)
    k.kill(pid)
    second = k.kill(pid)  # no error while the first is still in progress
    assert second.pid == pid
    assert_cancelled(k.wait([pid], timeout=WAIT)[0])


def test_a_process_blocked_in_native_code_is_reported_unkillable_then_ends(make_kernel, wait_until):
    k = make_kernel(kill_grace=0.2)
    unkillable = record_events(k, "process.unkillable")
    release = threading.Event()

    def stuck(ctx: ProcessContext) -> None:
        release.wait(30)  # blocked in C: an asynchronous exception waits for it to return

    pid = k.spawn(stuck)
    wait_in_body(k, pid, wait_until)
    k.kill(pid)
    wait_until(lambda: k.info(pid).detail.startswith("unkillable"), message="the unkillable report")
    assert not k.info(pid).is_done
    release.set()
    assert_cancelled(k.wait([pid], timeout=WAIT)[0])
    assert k.bus.flush(10)
    assert [e.pid for e in unkillable] == [pid]


# ---------------------------------------------------------------------------- the shell tool


def process_group(k, pid: int, wait_until, members: int) -> list[psutil.Process]:
    """The shell's child and its descendants, once there are `members` of them in all."""
    ospid = wait_until(lambda: k.info(pid).subprocess_pid, message="the shell's child to start")
    root = psutil.Process(ospid)

    def tree() -> list[psutil.Process] | None:
        procs = [root, *root.children(recursive=True)]
        return procs if len(procs) >= members else None

    return wait_until(tree, message=f"{members} processes in the group")


def status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return "gone"


def frozen(p: psutil.Process) -> bool:
    """Stopped by SIGSTOP. A shell that vforked a command waits, uninterruptibly (disk-sleep), until
    the child execs: if the child was stopped before its exec, the shell cannot run either and
    never shows `stopped` itself (dash does this for a foreground command)."""
    st = status(p)
    if st == psutil.STATUS_DISK_SLEEP:
        kids = p.children()
        return bool(kids) and all(status(c) == psutil.STATUS_STOPPED for c in kids)
    return st == psutil.STATUS_STOPPED


def gone(p: psutil.Process) -> bool:
    # An orphaned grandchild may linger as a zombie if PID 1 does not reap: it is dead all the same.
    return status(p) in ("gone", psutil.STATUS_ZOMBIE)


def test_shell_pause_stops_the_whole_group_and_resume_continues_it(make_kernel, wait_until):
    k = make_kernel()
    pid = k.spawn("shell", cmd="sleep 30 & sleep 30; wait")
    group = process_group(k, pid, wait_until, members=3)
    assert len({os.getpgid(p.pid) for p in group}) == 1

    info = k.pause(pid)
    assert info.phase is Phase.PAUSED  # a subprocess tool is stopped at once, not at a control point
    wait_until(lambda: all(frozen(p) for p in group), message="all stopped")

    k.resume(pid)
    wait_until(lambda: k.info(pid).phase is Phase.RUNNING, message="running again")
    wait_until(lambda: all(status(p) != psutil.STATUS_STOPPED for p in group), message="none stopped")

    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=10)[0])
    wait_until(lambda: all(gone(p) for p in group), message="every process of the group to be gone")


def test_shell_kill_of_a_paused_group_removes_every_process(make_kernel, wait_until):
    k = make_kernel()
    pid = k.spawn("shell", cmd="sleep 30 & sleep 30; wait")
    group = process_group(k, pid, wait_until, members=3)
    k.pause(pid)
    wait_until(lambda: all(frozen(p) for p in group), message="all stopped")
    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=10)[0])
    wait_until(lambda: all(gone(p) for p in group), message="every process of the group to be gone")


def test_shell_that_ignores_sigterm_is_killed_after_the_grace(make_kernel, wait_until):
    k = make_kernel(kill_grace=0.3)
    pid = k.spawn("shell", cmd="trap '' TERM; sleep 30 & sleep 30; wait")
    group = process_group(k, pid, wait_until, members=3)
    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=10)[0])
    wait_until(lambda: all(gone(p) for p in group), message="every process of the group to be gone")


def test_shell_nonzero_exit_fails_with_that_status(make_kernel):
    k = make_kernel()
    pid = k.spawn("shell", cmd="echo about to fail; exit 3")
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code, info.error) == ("Failed", 3, "exit status 3")
    assert [line for _, line in k.logs(pid)] == ["about to fail"]


def test_shell_killed_by_a_signal_reports_it(make_kernel):
    k = make_kernel()
    pid = k.spawn("shell", cmd="kill -9 $$")
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code, info.error) == ("Failed", 128 + 9, "killed by signal 9")


def test_shell_output_lines_go_to_the_log_and_the_output(make_kernel):
    k = make_kernel()
    pid = k.spawn("shell", cmd="echo one; echo two >&2; printf 'three\\n'")
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.exit_code) == ("Completed", 0)
    assert [line for _, line in k.logs(pid)] == ["one", "two", "three"]
    assert info.output == "one\ntwo\nthree"


def test_shell_priority_maps_to_the_nice_value_of_the_group(make_kernel, wait_until):
    k = make_kernel()
    pid = k.spawn("shell", cmd="sleep 30 & wait", priority="low")
    group = process_group(k, pid, wait_until, members=2)
    assert [os.getpriority(os.PRIO_PROCESS, p.pid) for p in group] == [10, 10]

    k.renice(pid, "idle")
    assert [os.getpriority(os.PRIO_PROCESS, p.pid) for p in group] == [19, 19]
    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=10)[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="a negative nice value needs privileges")
def test_shell_high_priority_gets_a_negative_nice_value_when_privileged(make_kernel, wait_until):
    k = make_kernel()
    pid = k.spawn("shell", cmd="sleep 30", priority="critical")
    group = process_group(k, pid, wait_until, members=1)
    assert {os.getpriority(os.PRIO_PROCESS, p.pid) for p in group} == {-10}
    k.kill(pid)
    assert_cancelled(k.wait([pid], timeout=10)[0])


def test_shell_kill_also_stops_a_descendant_that_left_the_group(make_kernel, wait_until):
    k = make_kernel()
    pid = k.spawn("shell", cmd="setsid sleep 30 & wait")
    group = process_group(k, pid, wait_until, members=2)
    try:
        # the sleep leads its own session once setsid(1) has run (it may not have yet)
        wait_until(lambda: len({os.getsid(p.pid) for p in group}) == 2, timeout=10,
                   message="the setsid child to lead its own session")
        k.kill(pid)
        assert_cancelled(k.wait([pid], timeout=10)[0])
        wait_until(lambda: all(gone(p) for p in group), message="the setsid descendant to be gone")
    finally:
        for p in group:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
