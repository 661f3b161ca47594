"""`ctx.off_slot`: a process waiting for something outside llmunix (a model's reply) gives its slot
back (phase waiting, "waiting for WHAT"), a kill reaches it at once through `on_kill`, a pause
shows at once and takes hold when the wait ends, and it queues at the front of its level after."""

from __future__ import annotations

import queue
import threading

from conftest import wait_phase

from llmunix import Kernel, ProcessContext
from llmunix.models import ProcessKilled

WAKE = object()


def outside_wait(inbox: queue.SimpleQueue, what: str = "the model: m", after: threading.Event | None = None):
    """A body that waits off-slot for an item from `inbox` (a kill puts WAKE there), then sets `after`."""

    def body(ctx: ProcessContext) -> str:
        with ctx.off_slot(what, on_kill=lambda: inbox.put(WAKE)):
            while True:
                item = inbox.get()
                ctx.check()  # a kill raises here
                if item is not WAKE:
                    break
        if after is not None:
            after.set()
        ctx.check()
        return str(item)

    return body


def test_an_off_slot_wait_gives_the_slot_to_another_process(make_kernel, wait_until):
    k: Kernel = make_kernel(max_running=1)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    waiter = k.spawn(outside_wait(inbox), name="waiter")
    wait_phase(k, waiter, "waiting")
    assert k.info(waiter).detail == "waiting for the model: m"
    other = k.spawn("echo", text="while it waits")  # one slot: it runs only because the waiter gave it back
    assert k.wait([other], timeout=10)[0].state == "Completed"
    assert not k.info(waiter).is_done
    inbox.put("the reply")
    info = k.wait([waiter], timeout=10)[0]
    assert (info.state, info.output) == ("Completed", "the reply")


def test_kill_reaches_an_off_slot_wait_at_once_through_on_kill(make_kernel):
    k: Kernel = make_kernel(max_running=1)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    pid = k.spawn(outside_wait(inbox))
    wait_phase(k, pid, "waiting")
    k.kill(pid)
    info = k.wait([pid], timeout=5)[0]  # nothing ever arrives in the inbox but the kill's WAKE
    assert info.state == "Cancelled"


def test_a_pause_shows_at_once_off_slot_and_takes_hold_when_the_wait_ends(make_kernel, wait_until):
    k: Kernel = make_kernel(max_running=1)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    after = threading.Event()
    pid = k.spawn(outside_wait(inbox, after=after))
    wait_phase(k, pid, "waiting")
    k.pause(pid)
    assert k.info(pid).phase == "paused"  # at once: nothing to wait for, it holds no slot
    k.resume(pid)
    info = k.info(pid)
    assert (info.phase, info.detail) == ("waiting", "waiting for the model: m")  # back to its wait, not the queue
    k.pause(pid)
    inbox.put("the reply")
    wait_until(lambda: k.info(pid).detail == "paused by user" and inbox.empty(), message="the reply taken")
    assert not after.wait(0.3)  # paused: it does not go on after the wait
    assert k.info(pid).phase == "paused"
    k.resume(pid)
    assert k.wait([pid], timeout=10)[0].state == "Completed" and after.is_set()


def test_nested_off_slot_waits_show_the_inner_one_then_the_outer(make_kernel, wait_until):
    k: Kernel = make_kernel(max_running=1)
    inner_go, outer_go, in_inner = threading.Event(), threading.Event(), threading.Event()

    def body(ctx: ProcessContext) -> None:
        with ctx.off_slot("the model: m"):
            with ctx.off_slot("the endpoint: http://x (1 of 1 in flight)"):
                in_inner.set()
                inner_go.wait(10)
            outer_go.wait(10)

    pid = k.spawn(body)
    assert in_inner.wait(10)
    assert k.info(pid).detail == "waiting for the endpoint: http://x (1 of 1 in flight)"
    inner_go.set()
    wait_until(lambda: k.info(pid).detail == "waiting for the model: m", message="the outer wait shown again")
    outer_go.set()
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_a_kill_raised_inside_leaves_no_trace_of_the_wait(make_kernel):
    """The kill's ProcessKilled passes through the block; the process ends Cancelled, its slot free."""
    k: Kernel = make_kernel(max_running=1)
    seen: list[str] = []
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def body(ctx: ProcessContext) -> None:
        try:
            with ctx.off_slot("the model: m", on_kill=lambda: inbox.put(WAKE)):
                inbox.get()
                ctx.check()
        except ProcessKilled:
            seen.append("killed")
            raise

    pid = k.spawn(body)
    wait_phase(k, pid, "waiting")
    k.kill(pid)
    assert k.wait([pid], timeout=5)[0].state == "Cancelled" and seen == ["killed"]
    assert k.wait([k.spawn("echo", text="the slot is free")], timeout=5)[0].state == "Completed"


def test_health_warns_while_more_worker_threads_than_max_threads_wait_off_slot(make_kernel, wait_until):
    """max_threads is a soft cap: three processes waiting off-slot hold three threads past a cap
    of one, nothing waits for a thread, and `health` says so until they end."""
    k: Kernel = make_kernel(max_running=1, max_threads=1)
    inboxes = [queue.SimpleQueue() for _ in range(3)]
    pids = [k.spawn(outside_wait(box)) for box in inboxes]
    for pid in pids:
        wait_phase(k, pid, "waiting")
    check = next(c for c in k.health().checks if c.name == "worker threads")
    assert check.status == "warn" and check.detail.startswith("3 worker threads of max_threads 1; ")
    assert "raise max_threads in config.toml" in check.detail
    for box in inboxes:
        box.put("reply")
    assert {i.state for i in k.wait(pids, timeout=10)} == {"Completed"}
    wait_until(lambda: k.threads <= 1, message="the threads past the cap gone")
    check = next(c for c in k.health().checks if c.name == "worker threads")
    assert check.status == "ok"
