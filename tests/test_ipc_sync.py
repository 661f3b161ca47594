"""Named primitives: exclusion, counting, barrier and read-write semantics under concurrent
processes; waits are control points; no lock outlives its holder; deadlocks are found at once
and resolved by the policy."""

from __future__ import annotations

import threading

import pytest
from conftest import WAIT, _wait_until, wait_phase

from llmunix import Kernel, LlmunixError, ProcessContext
from llmunix.ipc import BrokenBarrier


def holders(k: Kernel, name: str) -> list[int]:
    return [h.pid for p in k.locks().primitives if p.name == name for h in p.holders]


def waiters(k: Kernel, name: str) -> list[int]:
    return [w.pid for p in k.locks().primitives if p.name == name for w in p.waiters]


def test_a_mutex_makes_read_modify_write_exclusive(make_kernel):
    k = make_kernel(max_running=8)

    def bump(ctx: ProcessContext) -> None:
        for _ in range(5):
            with ctx.lock("counter"):
                value = ctx.shared.get("n", 0)
                ctx.sleep(0.001)  # a window where an unprotected writer would be overtaken
                ctx.shared.set("n", value + 1)

    pids = [k.spawn(bump) for _ in range(6)]
    assert all(i.finished_ok for i in k.wait(pids, timeout=20))
    assert k.shared("n")[0].value == 30
    assert k.locks().primitives == ()  # idle primitives leave with their last user


def test_locks_shows_holder_and_waiters_and_a_killed_holder_releases(make_kernel):
    k = make_kernel(max_running=4)
    released = []
    k.subscribe("ipc.released", released.append)
    got = threading.Event()

    def hold(ctx: ProcessContext) -> None:
        ctx.lock("db").acquire()
        got.set()
        while True:
            ctx.sleep(0.01)

    def want(ctx: ProcessContext) -> str:
        with ctx.lock("db"):
            return "mine"

    holder = k.spawn(hold)
    assert got.wait(10)
    waiter = k.spawn(want)
    _wait_until(lambda: waiters(k, "db") == [waiter], message="the waiter queued")
    assert holders(k, "db") == [holder]
    assert "waiting for mutex 'db' (held by 001)" in k.info(waiter).detail
    k.kill(holder)
    assert k.wait([waiter], timeout=10)[0].output == "mine"
    assert k.wait([holder], timeout=10)[0].state == "Cancelled"
    assert k.bus.flush(10)
    assert [(e.pid, e.data.get("reason")) for e in released if e.data.get("reason")] == [(holder, "holder ended")]


def test_waiting_for_a_lock_can_be_paused_and_killed(make_kernel):
    k = make_kernel(max_running=4)
    got = threading.Event()
    done = threading.Event()

    def hold(ctx: ProcessContext) -> None:
        with ctx.lock("m"):
            got.set()
            while not done.is_set():
                ctx.sleep(0.01)

    holder = k.spawn(hold)
    assert got.wait(10)
    waiter = k.spawn(lambda ctx: ctx.lock("m").acquire())
    _wait_until(lambda: waiters(k, "m") == [waiter])
    k.pause(waiter)
    wait_phase(k, waiter, "paused")
    k.kill(waiter)
    assert k.wait([waiter], timeout=10)[0].state == "Cancelled"
    assert waiters(k, "m") == [] and holders(k, "m") == [holder]
    done.set()
    assert k.wait([holder], timeout=10)[0].finished_ok


def test_acquire_with_timeout_gives_up_and_leaves_the_queue(make_kernel):
    k = make_kernel(max_running=4)
    got = threading.Event()
    done = threading.Event()

    def hold(ctx: ProcessContext) -> None:
        with ctx.lock("t"):
            got.set()
            done.wait(10)

    holder = k.spawn(hold)
    assert got.wait(10)
    assert k.wait([k.spawn(lambda ctx: ctx.lock("t").acquire(timeout=0.05))], timeout=10)[0].output is False
    assert waiters(k, "t") == []
    done.set()
    k.wait([holder], timeout=10)


def test_a_semaphore_admits_at_most_its_value_at_once(make_kernel):
    k = make_kernel(max_running=8)
    inside = [0]
    peak = [0]
    guard = threading.Lock()

    def worker(ctx: ProcessContext) -> None:
        with ctx.semaphore("api", 2):
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            ctx.sleep(0.02)
            with guard:
                inside[0] -= 1

    pids = [k.spawn(worker) for _ in range(6)]
    assert all(i.finished_ok for i in k.wait(pids, timeout=20))
    assert peak[0] == 2


def test_misuse_of_primitives_fails_with_a_clear_message(make_kernel):
    k = make_kernel()

    def misuse(ctx: ProcessContext) -> list[str]:
        errors = []
        m = ctx.lock("x")
        for bad in (lambda: ctx.semaphore("x"), lambda: m.release(), lambda: ctx.lock("bad name")):
            try:
                bad()
            except LlmunixError as exc:
                errors.append(str(exc))
        m.acquire()
        try:
            m.acquire()
        except LlmunixError as exc:
            errors.append(str(exc))
        ctx.semaphore("s", 2)
        for bad in (lambda: ctx.semaphore("s", 3), lambda: ctx.barrier("b")):
            try:
                bad()
            except LlmunixError as exc:
                errors.append(str(exc))
        return errors

    out = k.wait([k.spawn(misuse)], timeout=10)[0].output
    assert out == ["'x' is a mutex, not a semaphore; pick another name",
                   "process 001 does not hold mutex 'x'",
                   "bad mutex name 'bad name'; use letters, digits and _ . : - (up to 128)",
                   "process 001 already holds mutex 'x' (it is not reentrant)",
                   "semaphore 's' exists with value 2, not 3",
                   "barrier 'b' does not exist yet; give the number of parties, e.g. ctx.barrier('b', 3)"]
    assert k.locks().primitives == ()  # the holder ended: released and forgotten


def test_a_barrier_holds_everyone_until_all_arrive_round_after_round(make_kernel):
    k = make_kernel(max_running=8)
    log: list[tuple[int, str]] = []
    guard = threading.Lock()

    def member(ctx: ProcessContext) -> list[int]:
        bar = ctx.barrier("phase", 3)
        indexes = []
        for rnd in range(2):
            with guard:
                log.append((rnd, "arrive"))
            indexes.append(bar.wait(timeout=10))
            with guard:
                log.append((rnd, "pass"))
        return indexes

    pids = [k.spawn(member) for _ in range(3)]
    infos = k.wait(pids, timeout=20)
    assert all(i.finished_ok for i in infos), infos
    for rnd in range(2):
        first_pass = next(i for i, e in enumerate(log) if e == (rnd, "pass"))
        assert sum(1 for e in log[:first_pass] if e == (rnd, "arrive")) == 3
    assert sorted(i.output[0] for i in infos) == [0, 1, 2]


def test_a_member_that_times_out_breaks_the_barrier_for_the_rest(make_kernel):
    k = make_kernel(max_running=4)

    def patient(ctx: ProcessContext) -> str:
        try:
            ctx.barrier("b", 3).wait(timeout=10)
        except BrokenBarrier as exc:
            return str(exc)
        return "passed"

    def impatient(ctx: ProcessContext) -> str:
        try:
            ctx.barrier("b", 3).wait(timeout=0.1)
        except BrokenBarrier:
            return "gave up"
        return "passed"

    first = k.spawn(patient)
    _wait_until(lambda: waiters(k, "b") == [first])
    second = k.spawn(impatient)
    infos = k.wait([first, second], timeout=10)
    assert infos[1].output == "gave up"
    assert infos[0].output == "barrier 'b' is broken: process 002 left before all 3 arrived"


def test_rwlock_lets_readers_share_and_a_writer_exclude_and_go_first(make_kernel):
    k = make_kernel(max_running=8)
    both_in = threading.Barrier(2)
    order: list[str] = []
    hold = threading.Event()

    def reader(ctx: ProcessContext, tag: str = "r") -> None:
        with ctx.rwlock("index").read():
            order.append(f"{tag} in")
            if tag == "r":
                both_in.wait(10)  # two readers inside at once, or this times out
                hold.wait(10)

    def writer(ctx: ProcessContext) -> None:
        with ctx.rwlock("index").write():
            order.append("w in")

    r1, r2 = k.spawn(reader), k.spawn(reader)
    _wait_until(lambda: sorted(holders(k, "index")) == [r1, r2], message="both readers inside")
    w = k.spawn(writer)
    _wait_until(lambda: waiters(k, "index") == [w])
    late = k.spawn(reader, params={"tag": "late"})
    _wait_until(lambda: waiters(k, "index") == [w, late], message="the late reader queued behind the writer")
    hold.set()
    assert all(i.finished_ok for i in k.wait([r1, r2, w, late], timeout=10))
    assert order[2:] == ["w in", "late in"]


def test_condition_wait_and_notify_hand_over_items(make_kernel):
    k = make_kernel(max_running=4)

    def consumer(ctx: ProcessContext) -> list:
        got = []
        cond = ctx.condition("queue")
        with cond:
            while len(got) < 3:
                cond.wait_for(lambda: ctx.shared.get("items"), timeout=10)
                items = ctx.shared.get("items")
                got.extend(items)
                ctx.shared.set("items", [])
        return got

    def producer(ctx: ProcessContext) -> None:
        cond = ctx.condition("queue")
        for i in range(3):
            with cond:
                ctx.shared.set("items", (ctx.shared.get("items") or []) + [i])
                cond.notify()
            ctx.sleep(0.01)

    c = k.spawn(consumer)
    p = k.spawn(producer)
    infos = k.wait([c, p], timeout=10)
    assert infos[0].output == [0, 1, 2]


# ---------------------------------------------------------------------------- deadlocks


def crossed(k: Kernel, *, low_second: bool = False) -> tuple[int, int, threading.Event]:
    """Two processes that take mutexes a and b in opposite orders: a deadlock."""
    first_holds = threading.Event()
    second_holds = threading.Event()

    def one(ctx: ProcessContext) -> str:
        with ctx.lock("a"):
            first_holds.set()
            second_holds.wait(10)
            with ctx.lock("b"):
                return "one done"

    def two(ctx: ProcessContext) -> str:
        with ctx.lock("b"):
            second_holds.set()
            first_holds.wait(10)
            with ctx.lock("a"):
                return "two done"

    a = k.spawn(one, priority="normal")
    b = k.spawn(two, priority="low" if low_second else "normal")
    return a, b, second_holds


def test_a_two_process_deadlock_is_reported_once_both_wait(make_kernel):
    k = make_kernel(max_running=4)
    found = threading.Event()
    events = []
    k.subscribe("ipc.deadlock", events.append)
    waits_and_reports = []

    def record(e) -> None:  # (found is set here, by the subscriber the test reads last)
        if e.type in ("ipc.waiting", "ipc.deadlock"):
            waits_and_reports.append(e.type)
        if e.type == "ipc.deadlock":
            found.set()

    k.subscribe("ipc.*", record)
    a, b, _ = crossed(k)
    assert found.wait(WAIT)
    assert k.bus.flush(WAIT)  # the other subscriber has its event too
    # Reported after both waits began, and while they last (their locks have no timeout); how soon
    # is a matter for bench/, not for a test on a shared machine.
    assert waits_and_reports[:3] == ["ipc.waiting", "ipc.waiting", "ipc.deadlock"], waits_and_reports
    data = events[0].data
    assert sorted(data["members"]) == ["001", "002"] and data["policy"] == "report" and data["victim"] is None
    assert "001 waits for mutex b (held by 002)" in data["summary"]
    assert "002 waits for mutex a (held by 001)" in data["summary"]
    [d] = k.locks().deadlocks
    assert d.resolved is None and set(d.cycle) == {a, b}
    _wait_until(lambda: all(k.info(p).detail.startswith("deadlocked: ") for p in (a, b)))
    assert any(h.event == "deadlock" for h in k.info(a).history)
    k.kill(b)  # the user resolves it
    assert k.wait([a], timeout=10)[0].output == "one done"
    assert k.locks().deadlocks[0].resolved is not None


def test_kill_lowest_policy_kills_the_lowest_priority_member(make_kernel):
    k = make_kernel(max_running=4, deadlock_policy="kill-lowest")
    a, b, _ = crossed(k, low_second=True)
    infos = k.wait([a, b], timeout=10)
    assert infos[0].output == "one done"
    assert infos[1].state == "Cancelled" and infos[1].error.startswith("deadlock victim (lowest priority in ")
    [d] = k.locks().deadlocks
    assert d.victim == b and d.resolved is not None and d.how == "002 killed"


def test_a_semaphore_cycle_with_a_free_holder_is_not_a_deadlock_until_that_holder_waits(make_kernel):
    k = make_kernel(max_running=8)
    found = []
    k.subscribe("ipc.deadlock", found.append)
    step = {n: threading.Event() for n in ("a_sem", "b_mutex", "c_sem", "c_go")}

    def a(ctx: ProcessContext) -> None:  # holds the semaphore, then wants the mutex
        ctx.semaphore("s", 2).acquire()
        step["a_sem"].set()
        step["b_mutex"].wait(10)
        ctx.lock("m").acquire(timeout=10)

    def b(ctx: ProcessContext) -> None:  # holds the mutex, then wants the (full) semaphore
        ctx.lock("m").acquire()
        step["b_mutex"].set()
        step["c_sem"].wait(10)
        ctx.semaphore("s").acquire(timeout=10)

    def c(ctx: ProcessContext) -> None:  # the other semaphore holder: free, until it wants the mutex
        ctx.semaphore("s").acquire()
        step["c_sem"].set()
        step["c_go"].wait(10)
        ctx.lock("m").acquire(timeout=10)

    pa = k.spawn(a)
    assert step["a_sem"].wait(10)
    pb = k.spawn(b)
    pc = k.spawn(c)
    _wait_until(lambda: waiters(k, "s") == [pb] and waiters(k, "m") == [pa], message="a and b waiting")
    assert k.bus.flush(10) and found == []  # c could still release the semaphore
    step["c_go"].set()
    _wait_until(lambda: found, message="the deadlock once c waits too")
    assert sorted(found[0].data["members"]) == ["001", "002", "003"]
    k.kill(pa)  # its semaphore hold goes: b, then c, get what they wait for
    assert all(i.finished_ok for i in k.wait([pb, pc], timeout=10))


def test_deadlock_policy_is_validated(make_kernel):
    k = make_kernel()
    with pytest.raises(LlmunixError, match="unknown deadlock policy 'never'; use one of: report, kill-lowest"):
        k.deadlock_policy = "never"
    k.deadlock_policy = "kill-lowest"
    assert k.locks().policy == "kill-lowest"


def test_lock_waiters_give_their_slot_back(make_kernel):
    k = make_kernel(max_running=1)

    def holder(ctx: ProcessContext) -> None:
        with ctx.lock("m"):
            ctx.shared.wait("go", timeout=10)

    def contender(ctx: ProcessContext) -> str:
        with ctx.lock("m"):
            return "got it"

    pids = [k.spawn(holder), k.spawn(contender), k.spawn(lambda ctx: ctx.shared.set("go", 1))]
    infos = k.wait(pids, timeout=10)
    assert all(i.finished_ok for i in infos) and infos[1].output == "got it"
