"""Liveness: nothing runnable waits while a slot is free, whatever holds the worker threads.

A process keeps its thread while it is preempted, paused or waiting for its children; with more
such processes than `max_threads`, the scheduler must run the ones that already hold a thread
or grow past the cap (a soft bound), never stop dispatching (issue 19, item 1). The randomized
test mixes priorities, time slices, parents with children and tiny bounds, and checks that every
process ends in exactly one terminal state. `LLMUNIX_STRESS=N` runs N processes (the suite: a
few hundred; bench/ or a developer: thousands).
"""

from __future__ import annotations

import os
import random

import pytest

from llmunix import ProcessContext

STRESS = int(os.environ.get("LLMUNIX_STRESS", "300"))


def test_more_preempted_processes_than_threads_all_finish(make_kernel):
    k = make_kernel(max_running=2, max_threads=4, time_slice=0.01)
    pids = [k.spawn("sleep", seconds=0.2) for _ in range(12)]
    infos = k.wait(pids, timeout=60)
    assert [i.state for i in infos] == ["Completed"] * 12
    assert k.threads <= 4 + 2, "threads grown past the cap go away again"


def test_parents_waiting_for_children_beyond_the_thread_cap_all_finish(make_kernel):
    def parent(ctx: ProcessContext, n: int) -> int:
        kids = [ctx.spawn("echo", text=f"{ctx.pid}/{i}") for i in range(n)]
        return sum(1 for i in ctx.wait(kids) if i.state == "Completed")

    k = make_kernel(max_running=2, max_threads=3)
    pids = [k.spawn(parent, n=3) for _ in range(8)]  # 8 parents each hold a thread while waiting
    infos = k.wait(pids, timeout=60)
    assert [i.output for i in infos] == [3] * 8


@pytest.mark.parametrize("seed", [1, 2])
def test_randomized_mixed_load_every_process_ends_once(make_kernel, seed):
    rnd = random.Random(seed)

    def nap(ctx: ProcessContext, steps: int) -> int:
        for i in range(steps):
            ctx.progress(i + 1, steps)
            ctx.sleep(0.001)
        return steps

    def fork(ctx: ProcessContext, n: int) -> int:
        kids = [ctx.spawn(nap, steps=2, priority=rnd_level()) for _ in range(n)]
        return len(ctx.wait(kids))

    def rnd_level() -> str:
        return rnd.choice(["idle", "low", "normal", "high", "critical"])

    k = make_kernel(max_running=rnd.choice([1, 2, 3]), max_threads=4, time_slice=0.002, aging_interval=0.05)
    pids: list[int] = []
    for _ in range(STRESS):
        roll = rnd.random()
        if roll < 0.1:
            pids.append(k.spawn(fork, n=rnd.randint(1, 4), priority=rnd_level()))
        elif roll < 0.15 and pids:
            pids.append(k.spawn(nap, steps=1, after=[rnd.choice(pids)], priority=rnd_level()))
        else:
            pids.append(k.spawn(nap, steps=rnd.randint(1, 5), priority=rnd_level()))
    infos = k.wait(pids, timeout=240)
    stuck = [(i.pid, i.phase, i.detail) for i in infos if not i.is_done]
    assert not stuck, f"{len(stuck)} processes never ended, e.g. {stuck[:5]}"
    assert {i.state for i in infos} <= {"Completed"}
    assert not k.ps(), "nothing is left live (children included)"
