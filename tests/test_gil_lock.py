"""The process table's lock (llmunix/gil_lock.py): a lock first, whatever it does to avoid convoys."""

from __future__ import annotations

import threading
import time

from llmunix.gil_lock import SPINS, YieldingLock

WAIT = 30


def test_it_excludes_under_contention_from_many_threads() -> None:
    lock = YieldingLock()
    inside, worst, count = [0], [0], [0]

    def work() -> None:
        for _ in range(2000):
            with lock:
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
                count[0] += 1
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert (worst[0], count[0]) == (1, 12000)


def test_non_blocking_and_timed_acquire_fail_while_held_and_blocking_waits_past_the_spins() -> None:
    lock = YieldingLock()
    assert lock.acquire()
    assert lock.locked()
    got: list[bool] = []
    done = threading.Event()

    def other() -> None:
        got.append(lock.acquire(False))
        got.append(lock.acquire(timeout=0.01))
        got.append(lock.acquire())  # spins SPINS times, then blocks until released
        lock.release()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    # It has given up on the first two and is past its spins once it blocks: wait for both.
    deadline = time.monotonic() + WAIT
    while len(got) < 2 and time.monotonic() < deadline:
        t.join(0.001)
    assert got == [False, False]
    assert SPINS > 0 and not done.is_set()
    lock.release()
    assert done.wait(WAIT)
    assert got == [False, False, True]
    assert not lock.locked()


def test_a_condition_built_on_it_waits_and_wakes() -> None:
    lock = YieldingLock()
    cond = threading.Condition(lock)
    ready: list[int] = []

    def consumer() -> None:
        with cond:
            assert cond.wait_for(lambda: ready, timeout=WAIT)

    t = threading.Thread(target=consumer)
    t.start()
    with cond:
        ready.append(1)
        cond.notify_all()
    t.join(WAIT)
    assert not t.is_alive()
    with cond:
        assert not cond.wait(timeout=0.001)  # a timed wait returns False and holds the lock again
        assert lock.locked()
    assert not lock.locked()
