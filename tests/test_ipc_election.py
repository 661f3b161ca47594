"""Leader election (`ctx.elect`): one leader at a time, followers in the order they stood, the lead
passed on at once when the leader ends or resigns, and when its lease runs out; `locks` shows it."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import Prompt, _wait_until, wait_phase

from llmunix import Kernel, ProcessContext
from llmunix.retry import RetryPolicy


def election(k: Kernel, name: str):
    found = [p for p in k.locks().primitives if p.name == name]
    return found[0] if found else None


def leader(k: Kernel, name: str) -> int | None:
    e = election(k, name)
    return e.holders[0].pid if e is not None and e.holders else None


def followers(k: Kernel, name: str) -> list[int]:
    e = election(k, name)
    return [w.pid for w in e.waiters] if e is not None else []


def test_one_leader_at_a_time_and_the_lead_passes_in_the_order_they_stood(make_kernel):
    k = make_kernel(max_running=8)
    turns: list[tuple[int, int, float, float]] = []
    first_in = threading.Event()

    def worker(ctx: ProcessContext) -> None:
        with ctx.elect("indexer") as e:
            first_in.set()
            start = time.monotonic()
            for _ in range(3):
                ctx.sleep(0.02)
            turns.append((ctx.pid, e.term, start, time.monotonic()))

    pids = [k.spawn(worker)]
    assert first_in.wait(5)
    pids.append(k.spawn(worker))
    _wait_until(lambda: followers(k, "indexer") == pids[1:2])
    pids.append(k.spawn(worker))
    _wait_until(lambda: followers(k, "indexer") == pids[1:])
    assert all(i.state == "Completed" for i in k.wait(pids, timeout=10))
    assert [(pid, term) for pid, term, _s, _e in turns] == [(pids[0], 1), (pids[1], 2), (pids[2], 3)]
    for (_p, _t, _s, end), (_p2, _t2, start, _e) in zip(turns, turns[1:], strict=False):
        assert start >= end  # never two leaders at once
    assert election(k, "indexer") is None  # everyone resigned and ended: forgotten


def test_a_follower_leads_at_once_when_the_leader_is_killed(make_kernel):
    k = make_kernel()
    led = threading.Event()

    def stay(ctx: ProcessContext) -> None:
        with ctx.elect("db", lease=3600):  # the lease cannot be what passes the lead on
            led.set()
            while True:
                ctx.sleep(0.01)

    def follow(ctx: ProcessContext) -> int:
        e = ctx.elect("db", lease=3600)
        assert not e.is_leader and e.leader is not None
        e.wait_leader()
        return e.term

    a = k.spawn(stay)
    assert led.wait(5)
    b = k.spawn(follow)
    wait_phase(k, b, "waiting")
    assert "waiting to lead election 'db' (leader 001)" in k.info(b).detail
    k.kill(a)
    [info] = k.wait([b], timeout=5)
    assert info.state == "Completed" and info.output == 2


def test_a_paused_leader_loses_the_lead_when_its_lease_runs_out_and_follows_again(make_kernel):
    k = make_kernel()
    saw: dict[int, list[bool]] = {}

    def hold(ctx: ProcessContext) -> None:
        e = ctx.elect("x", lease=0.3)
        while True:
            saw.setdefault(ctx.pid, []).append(e.is_leader)
            ctx.sleep(0.02)

    a = k.spawn(hold)
    _wait_until(lambda: leader(k, "x") == a)
    b = k.spawn(hold)
    _wait_until(lambda: followers(k, "x") == [b])
    k.pause(a)
    wait_phase(k, a, "paused")
    _wait_until(lambda: leader(k, "x") == b, message="the follower to take over after the lease")
    assert followers(k, "x") == [a]  # still standing, now behind
    k.resume(a)
    _wait_until(lambda: len(saw.get(a, [])) > 2 and saw[a][-1] is False)
    assert leader(k, "x") == b
    history = [h.event for h in k.info(a).history]
    assert "lease expired" in history


def test_a_leader_waiting_inside_the_engine_keeps_its_lease(make_kernel):
    k = make_kernel()
    result: dict[str, bool] = {}

    def waits(ctx: ProcessContext) -> None:
        e = ctx.elect("w", lease=0.1)
        ctx.recv(timeout=0.8)  # off-slot, alive and answering kill: the engine renews it
        result["still"] = e.is_leader

    def follow(ctx: ProcessContext) -> bool:
        return ctx.elect("w", lease=0.1).wait_leader(timeout=5)

    a = k.spawn(waits)
    _wait_until(lambda: leader(k, "w") == a)
    b = k.spawn(follow)
    [info] = k.wait([a], timeout=5)
    assert info.state == "Completed" and result["still"] is True
    assert k.wait([b], timeout=5)[0].output is True  # and it led once a ended


def test_a_leader_stuck_without_control_points_loses_the_lead(make_kernel):
    k = make_kernel()
    release = threading.Event()
    recorded = threading.Event()
    seen: list[bool] = []

    def stuck(ctx: ProcessContext) -> None:
        e = ctx.elect("s", lease=0.2)
        release.wait(10)  # a blocking call: no sign of life reaches the kernel
        seen.append(e.is_leader)
        recorded.set()

    def follow(ctx: ProcessContext) -> None:
        ctx.elect("s", lease=0.2).wait_leader()
        # Lead until the stuck one has looked: were this one to end first, the lead would pass
        # back to the stuck one (still a candidate), and it would rightly lead again.
        while not recorded.is_set():
            ctx.sleep(0.01)

    a = k.spawn(stuck)
    _wait_until(lambda: leader(k, "s") == a)
    b = k.spawn(follow)
    _wait_until(lambda: leader(k, "s") == b, message="the follower to lead once the lease ran out")
    release.set()
    k.wait([a, b], timeout=5)
    assert seen == [False]


def test_resign_hands_the_lead_on_and_standing_again_queues_behind(make_kernel):
    k = make_kernel()
    steps: list[str] = []
    go = threading.Event()

    def first(ctx: ProcessContext) -> None:
        e = ctx.elect("r")
        go.wait(5)
        e.resign()
        steps.append(f"resigned, leader {e.leader}")
        assert not e.is_leader
        e.wait_leader()  # stands again, behind the follower
        steps.append(f"leading again in term {e.term}")

    def second(ctx: ProcessContext) -> None:
        e = ctx.elect("r")
        e.wait_leader()
        steps.append(f"second leads in term {e.term}")
        ctx.sleep(0.1)

    a = k.spawn(first)
    _wait_until(lambda: leader(k, "r") == a)
    b = k.spawn(second)
    _wait_until(lambda: followers(k, "r") == [b])
    go.set()
    k.wait([a, b], timeout=5)
    assert steps[0] == f"resigned, leader {b}"
    assert "second leads in term 2" in steps and steps[-1] == "leading again in term 3"


def test_a_retried_leader_gives_up_the_lead_between_attempts(make_kernel):
    k = make_kernel()
    attempts: list[bool] = []

    def flaky(ctx: ProcessContext) -> None:
        e = ctx.elect("f", lease=3600)
        attempts.append(e.is_leader)
        if len(attempts) == 1:
            ctx.sleep(0.2)
            raise RuntimeError("first attempt fails")

    def follow(ctx: ProcessContext) -> None:
        with ctx.elect("f", lease=3600):
            ctx.sleep(0.3)

    a = k.spawn(flaky, retry=RetryPolicy(max_attempts=2, initial=0.05, jitter=0))
    _wait_until(lambda: leader(k, "f") == a)
    b = k.spawn(follow)
    k.wait([a, b], timeout=10)
    assert attempts == [True, False]  # the second attempt stood again, behind the follower


def test_a_leader_and_a_follower_waiting_on_each_other_are_a_deadlock(make_kernel):
    k = make_kernel()

    def leads_then_locks(ctx: ProcessContext) -> None:
        ctx.elect("d", lease=3600)
        ctx.sleep(0.2)
        with ctx.lock("m"):
            pass

    def locks_then_follows(ctx: ProcessContext) -> None:
        with ctx.lock("m"):
            ctx.elect("d", lease=3600).wait_leader()

    a = k.spawn(leads_then_locks)
    _wait_until(lambda: leader(k, "d") == a)
    b = k.spawn(locks_then_follows)
    _wait_until(lambda: k.locks().deadlocks, message="the deadlock")
    (d,) = k.locks().deadlocks
    assert set(d.members) == {a, b} and "election d" in d.summary()
    k.kill(b)
    k.wait([a, b], timeout=5)


def test_misuse_is_a_clear_error(make_kernel):
    k = make_kernel()

    def clash(ctx: ProcessContext) -> None:
        with ctx.lock("name"):
            ctx.elect("name")

    def bad_lease(ctx: ProcessContext) -> None:
        ctx.elect("e", lease="soon")

    def short(ctx: ProcessContext) -> None:
        ctx.elect("e", lease=0.001)

    def twice(ctx: ProcessContext) -> bool:
        one, two = ctx.elect("e2"), ctx.elect("e2", lease=5)  # standing again: the same candidacy
        return one.is_leader and two.is_leader and one.followers == []

    errors = [k.wait([k.spawn(f)])[0] for f in (clash, bad_lease, short)]
    assert errors[0].error == "LlmunixError: 'name' is a mutex, not an election; pick another name"
    assert errors[1].error == "LlmunixError: bad lease 'soon'; give seconds or a duration such as 10s"
    assert errors[2].error == "LlmunixError: lease 0.001 is too short; at least 0.05s"
    assert k.wait([k.spawn(twice)])[0].output is True


def test_locks_shows_leader_lease_left_and_followers(sh, wait_until):
    k = sh.kernel
    a = k.spawn("lead", params={"name": "indexer", "seconds": 30, "lease": 5})
    wait_until(lambda: leader(k, "indexer") == a)
    b = k.spawn("lead", params={"name": "indexer", "seconds": 1})
    wait_until(lambda: followers(k, "indexer") == [b])
    out = sh.ok("locks")
    line = next(x for x in out.splitlines() if x.startswith("indexer"))
    assert line.split()[:2] == ["indexer", "election"] and f" {a:03d} " in line and f"{b:03d} 00:00:0" in line
    assert "term_1,_lease_" in line
    data = json.loads(sh.ok("locks --json"))
    (e,) = data["primitives"]
    assert e["leader"] == f"{a:03d}" and e["followers"] == [f"{b:03d}"] and e["term"] == 1
    assert e["lease"] == 5 and 0 < e["lease_left"] <= 5
    k.kill(a)
    wait_until(lambda: leader(k, "indexer") == b)
    k.wait([b], timeout=5)


def _row(out: str) -> list[str]:
    rows = [line.split() for line in out.splitlines() if line.startswith("jobs ")]
    return rows[0] if rows else []


def test_e2e_leaders_at_the_prompt_pass_the_lead_on_pause_end_and_kill(tmp_path):
    (tmp_path / "out").mkdir()
    shell = Prompt(tmp_path / "home", tmp_path / "out")
    try:
        shell.run("run lead name=jobs seconds=60 lease=0.5 --name first")
        shell.poll("locks", lambda out: _row(out)[3:4] == ["001"])
        shell.run("run lead name=jobs seconds=0.3 lease=0.5")
        shell.run("run lead name=jobs seconds=30")
        row = _row(shell.poll("locks", lambda out: "003" in out))
        assert row[:4] == ["jobs", "election", row[2], "001"] and row[2].startswith("term_1,_lease_0.")
        assert row[4] == "002" and row[6] == "003"  # followers in the order they stood
        shell.run("pause 1")
        # 001's lease runs out while it is paused: 002 leads (term 2), ends, and 003 leads with 001 behind it
        row = _row(shell.poll("locks", lambda out: _row(out)[3:5] == ["003", "001"]))
        assert row[2].startswith("term_3")
        assert "leading jobs (term 2)" in shell.run("log 2")
        shell.run("kill 3")
        shell.poll("locks", lambda out: _row(out)[3:] == ["001", "-"])
        events = shell.run("events --type ipc.leader")
        reasons = [line.split("reason=", 1)[1] for line in events.splitlines() if "reason=" in line]
        assert reasons[:3] == ['"elected (no leader)"', '"lease of 001 expired"', '"002 resigned"']
        assert reasons[3] in ('"003 resigned"', '"003 ended"')
        shell.run("kill 1")
    finally:
        shell.close()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
