"""What migration needs of the core, without a cluster: a stop that only interrupts gives way to
a real kill; an attempt that ends while preempted can run again under its PID; and `migrate`
refuses, in one line, what it cannot do on the threads backend. (Moves to and from a real Dask
cluster: tests/test_dask_backend.py.)"""

from __future__ import annotations

import threading
from typing import Any

from conftest import _wait_until, wait_phase

from llmunix import ProcessContext
from llmunix.lifecycle import Hooks
from llmunix.models import Outcome, Phase, Priority


def test_a_kill_supersedes_a_stop_that_would_only_interrupt(make_kernel):
    k = make_kernel(kill_grace=30)  # the body answers at its control point, never by escalation
    go = threading.Event()

    def blocked(ctx: ProcessContext) -> None:
        go.wait(10)  # no control point until released
        ctx.check()

    pid = k.spawn(blocked)
    wait_phase(k, pid, "running")
    with k.table.lock:
        k.table.kill_locked(k.table.get(pid), False, "moving it", Outcome.INTERRUPTED)
    k.kill(pid)  # the user's kill: the process ends Cancelled, not Interrupted
    go.set()
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.error) == ("Cancelled", "killed by user")


class RunAgainWhenInterrupted(Hooks):
    """A feature that takes an interrupted attempt on, as placement does for a move."""

    def __init__(self, k: Any) -> None:
        self.table = k.table
        self.taken: list[str] = []

    def after_body(self, proc, outcome, code, error, output) -> bool:
        if outcome is not Outcome.INTERRUPTED or self.taken:
            return False
        self.taken.append(proc.phase.value)
        self.table.requeue_locked(proc, 0.0, "again")
        return True


def test_an_attempt_that_ends_while_preempted_runs_again_under_its_pid(make_kernel):
    k = make_kernel(max_running=1)
    feature = RunAgainWhenInterrupted(k)
    k.table.register(feature)
    runs: list[int] = []
    hold = threading.Event()

    def low(ctx: ProcessContext) -> str:
        runs.append(ctx.pid)
        while not hold.is_set():
            ctx.sleep(0.01)
        return "done"

    def high(ctx: ProcessContext) -> None:
        while not hold.is_set():
            ctx.sleep(0.01)

    a = k.spawn(low, priority=Priority.LOW)
    wait_phase(k, a, "running")
    b = k.spawn(high, priority=Priority.HIGH)
    wait_phase(k, a, "preempted")
    with k.table.lock:
        k.table.kill_locked(k.table.get(a), False, "moving it", Outcome.INTERRUPTED)
    _wait_until(lambda: feature.taken, message="the preempted attempt to end")
    assert feature.taken == [Phase.PREEMPTED.value]
    assert k.info(a).phase == "ready"  # queued again (b holds the one slot)
    hold.set()
    infos = k.wait([a, b], timeout=10)
    assert [i.state for i in infos] == ["Completed", "Completed"] and runs == [a, a]


def test_migrate_on_the_threads_backend_says_what_to_do(sh, wait_until):
    pid = sh.kernel.spawn("sleep", seconds=30)
    wait_until(lambda: sh.kernel.info(pid).phase == "running")
    assert sh.bad(f"migrate {pid} --to dask") == (
        f"migrate: cannot migrate {pid:03d} sleep to dask: llmunix runs with the threads backend; start it with "
        "--backend dask (or --scheduler ADDRESS), see docs/cluster.md")
    assert sh.bad(f"migrate {pid} --to local") == f"migrate: process {pid:03d} sleep already runs here"
    assert "required: --to" in sh.bad(f"migrate {pid}")
    sh.kernel.kill(pid)
