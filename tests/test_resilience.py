"""Resilience in the kernel: process retry and restart under the same PID, timeouts, circuit
breakers and fallback tools, degraded mode, the watchdog, chaos and health."""

from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict

import pytest

from llmunix import Kernel, ProcessContext, ToolError
from llmunix.models import LlmunixError
from llmunix.resilience import ChaosSpec, CircuitBreaker, RestartPolicy, backoff_policy, parse_backoff
from llmunix.resilience.chaos import INJECTED_FAILURE
from llmunix.retry import RetryPolicy
from llmunix.tools.registry import tool
from llmunix.workflows.spec import spec_from_data

QUICK = RetryPolicy(max_attempts=3, initial=0.01, max=0.02, jitter="none")


class Recorder:
    """Every event the kernel publishes, kept per PID (a bus subscriber)."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.events: list = []
        self._sub = k.subscribe("*", self.events.append)

    def of(self, pid: int | None, type_: str | None = None) -> list:
        self.k.bus.flush()
        return [e for e in self.events if e.pid == pid and (type_ is None or e.type == type_)]

    def types(self, type_: str) -> list:
        self.k.bus.flush()
        return [e for e in self.events if e.type == type_]


def flaky(fail_times: int, calls: list):
    def body(ctx: ProcessContext) -> object:
        calls.append(ctx.restored)
        ctx.checkpoint({"call": len(calls)})
        if len(calls) <= fail_times:
            raise ToolError(f"boom {len(calls)}")
        return len(calls)

    return body


# ------------------------------------------------------------------ backoff


def test_backoff_delays_stay_within_full_jitter_bounds():
    policy = backoff_policy("1s..60s", attempts=10)
    assert (policy.initial, policy.max, policy.factor, policy.jitter) == (1.0, 60.0, 2.0, "full")
    for attempt, cap in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (9, 60.0)):
        assert policy.delay(attempt, rand=lambda: 0.0) == 0.0
        assert policy.delay(attempt, rand=lambda: 0.999999) == pytest.approx(cap, rel=1e-5)
        assert policy.delay(attempt, rand=lambda: 0.5) == pytest.approx(cap / 2)
        assert policy.bounds(attempt) == (0.0, cap)
    assert parse_backoff("250ms..2s") == (0.25, 2.0)
    assert parse_backoff("5s") == (5.0, 60.0)
    with pytest.raises(LlmunixError, match="less than the initial"):
        parse_backoff("5s..1s")
    with pytest.raises(LlmunixError, match="INITIAL..MAX"):
        parse_backoff("soon")


# ------------------------------------------------------------------ retry


def test_a_failed_attempt_is_retried_under_the_same_pid_from_its_last_checkpoint(make_kernel):
    k = make_kernel()
    rec = Recorder(k)
    calls: list = []
    pid = k.spawn(flaky(2, calls), name="flaky", retry=RetryPolicy(max_attempts=5, initial=0.01, max=0.02))
    info = k.wait([pid], timeout=10)[0]
    assert info.state == "Completed" and info.output == 3
    assert calls == [None, {"call": 1}, {"call": 2}]  # each attempt continues from the last checkpoint
    retries = rec.of(pid, "process.retry")
    assert [(e.data["attempt"], e.data["max_attempts"], e.data["error"]) for e in retries] == [
        (2, 5, "boom 1"), (3, 5, "boom 2")]
    assert all(0 <= e.data["delay"] <= 0.02 for e in retries)
    assert len(rec.of(pid, "process.started")) == 3
    terminal = [e for e in rec.of(pid) if e.type in ("process.completed", "process.failed", "process.cancelled")]
    assert [e.type for e in terminal] == ["process.completed"]
    assert info.attempts is not None and (info.attempts.attempt, info.attempts.max_attempts) == (3, 5)


def test_retries_used_up_end_failed_with_the_last_error(make_kernel):
    k = make_kernel()
    calls: list = []
    pid = k.spawn(flaky(10, calls), retry=QUICK)
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.error, len(calls)) == ("Failed", "boom 3", 3)
    assert [h.event for h in info.history].count("retry") == 2


def test_an_error_that_does_not_match_retry_on_is_not_retried(make_kernel):
    k = make_kernel()
    calls: list = []
    pid = k.spawn(flaky(10, calls), retry=RetryPolicy(max_attempts=5, initial=0.01, retry_on=("HTTP 5*",)))
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.error, len(calls)) == ("Failed", "boom 1", 1)


def test_the_retry_wait_holds_no_slot_and_no_thread(make_kernel):
    k = make_kernel(max_running=1, max_threads=1)
    calls: list = []
    waiting = threading.Event()
    pid = k.spawn(flaky(1, calls), retry=RetryPolicy(max_attempts=2, initial=0.5, jitter="none"))
    k.subscribe("process.retry", lambda e: waiting.set(), pid=pid)
    assert waiting.wait(10)
    other = k.spawn("echo", text="meanwhile")  # one slot, one thread: only free if the retry holds neither
    assert k.wait([other], timeout=5)[0].state == "Completed"
    info = k.info(pid)
    assert info.phase == "waiting" and info.detail.startswith("retry 1 of 1 in 0.5s (last error: boom 1)")
    assert info.attempts.next_attempt is not None
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_kill_during_the_retry_wait_cancels_at_once_and_pause_holds_it(make_kernel, wait_until):
    k = make_kernel()
    calls: list = []
    slow = RetryPolicy(max_attempts=3, initial=0.2, jitter="none")
    pid = k.spawn(flaky(1, calls), retry=slow)
    wait_until(lambda: k.info(pid).phase == "waiting")
    info = k.kill(pid)
    assert (info.state, info.error) == ("Cancelled", "killed by user") and len(calls) == 1

    calls2: list = []
    pid2 = k.spawn(flaky(1, calls2), retry=slow)
    wait_until(lambda: k.info(pid2).phase == "waiting")
    k.pause(pid2)
    done = threading.Event()
    k.subscribe("process.started", lambda e: done.set(), pid=pid2)
    assert not done.wait(0.4)  # well past the 0.2 s delay: still held
    assert k.info(pid2).phase == "paused" and len(calls2) == 1
    k.resume(pid2)
    assert k.wait([pid2], timeout=10)[0].state == "Completed" and len(calls2) == 2


def test_timeouts_are_per_attempt_and_give_the_reason(make_kernel):
    k = make_kernel()
    rec = Recorder(k)

    def hang(ctx: ProcessContext) -> None:
        while True:
            ctx.sleep(0.01)

    pid = k.spawn(hang, timeout=0.15, retry=RetryPolicy(max_attempts=2, initial=0.01, jitter="none"))
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.error, info.exit_code) == ("Failed", "timed out after 0.15s", 124)
    assert [e.data["error"] for e in rec.of(pid, "process.retry")] == ["timed out after 0.15s"]
    assert info.runtime >= 0.28  # both attempts ran to their timeout (0.15 s each, less clock granularity)


# ------------------------------------------------------------------ restart


def test_restart_on_failure_stops_after_max_restarts(make_kernel):
    k = make_kernel()
    rec = Recorder(k)
    calls: list = []
    policy = RestartPolicy("on-failure", max_restarts=3, min_uptime=10, backoff=QUICK)
    pid = k.spawn(flaky(100, calls), restart=policy)
    info = k.wait([pid], timeout=10)[0]
    assert info.state == "Failed" and len(calls) == 4
    assert info.error == ("restart limit reached (3 restarts in a row, each run up less than 10s); "
                          "last error: boom 4")
    assert [e.data["restart"] for e in rec.of(pid, "process.restarting")] == [1, 2, 3]
    assert calls == [None, None, None, None]  # a restart starts from scratch
    assert (info.attempts.restarts, info.attempts.max_restarts, info.attempts.restart) == (3, 3, "on-failure")


def test_restart_always_runs_again_after_completing_and_uptime_resets_the_count(make_kernel):
    k = make_kernel()
    runs: list[int] = []

    def service(ctx: ProcessContext) -> None:
        runs.append(1)
        if len(runs) <= 3:
            ctx.sleep(0.06)  # up longer than min_uptime: the count of restarts in a row starts again
        raise ToolError(f"crash {len(runs)}")

    policy = RestartPolicy("always", max_restarts=1, min_uptime=0.05, backoff=QUICK)
    pid = k.spawn(service, restart=policy)
    info = k.wait([pid], timeout=10)[0]
    # Without the reset, max_restarts=1 would allow 2 runs; each long run started the count again,
    # and the quick run 4 came right after a restart.
    assert len(runs) == 4 and info.state == "Failed"
    assert info.error.startswith("restart limit reached (1 restarts in a row") and info.error.endswith("crash 4")

    done: list[int] = []
    pid = k.spawn(lambda ctx: done.append(1), restart=RestartPolicy("always", max_restarts=2, backoff=QUICK))
    info = k.wait([pid], timeout=10)[0]
    assert len(done) == 3 and info.error.endswith("last run completed")


# ------------------------------------------------------------------ circuit breakers


def test_breaker_transitions_closed_open_half_open_closed_with_a_fake_clock():
    now = [100.0]
    b = CircuitBreaker("tool:fetch", threshold=3, cooldown=30, clock=lambda: now[0])
    assert [b.record(False, "HTTP 503") for _ in range(2)] == [None, None] and b.state == "closed"
    assert b.record(True) is None and b.failures == 0  # a success resets the count
    assert [b.record(False, "HTTP 503") for _ in range(3)] == [None, None, "opened"]
    assert b.allow(7) == (False, None)
    now[0] += 18
    assert b.reason() == "circuit open for tool fetch (3 consecutive failures; next probe in 12s)"
    now[0] += 12
    assert b.allow(7) == (True, "half_open") and b.probe_pid == 7
    assert b.allow(8) == (False, None)
    assert b.reason() == "circuit half-open for tool fetch (probe 007 in flight)"
    assert b.record(False, "HTTP 503") == "opened"  # the probe failed: a new cool-down
    assert b.allow(9) == (False, None)
    now[0] += 30
    assert b.allow(9) == (True, "half_open")
    b.release(9)  # the probe was cancelled: another caller may probe
    assert b.allow(10) == (True, None)
    assert b.record(True) == "closed" and b.state == "closed" and b.trips == 2


def test_an_open_breaker_fails_new_processes_fast_then_a_probe_closes_it(make_kernel, wait_until):
    k = make_kernel(breaker_threshold=3, breaker_cooldown=0.3)
    rec = Recorder(k)
    ran: list[int] = []
    healthy = threading.Event()

    def unstable(ctx: ProcessContext) -> str:
        ran.append(ctx.pid)
        if not healthy.is_set():
            raise ToolError("HTTP 503")
        return "ok"

    t = tool(unstable, name="unstable", hidden=True)
    for _ in range(3):
        k.wait([k.spawn(t)], timeout=5)
    [b] = k.breakers()
    assert (b.name, b.state, b.failures, b.last_error) == ("tool:unstable", "open", 3, "HTTP 503")
    info = k.wait([k.spawn(t)], timeout=5)[0]
    assert info.state == "Failed" and len(ran) == 3  # refused without running the tool
    assert info.error.startswith("circuit open for tool unstable (3 consecutive failures; next probe in ")
    healthy.set()
    wait_until(lambda: k.breakers()[0].next_probe is not None and not k.degraded(), message="cool-down over")
    assert k.wait([k.spawn(t)], timeout=5)[0].state == "Completed"  # the probe
    assert k.breakers()[0].state == "closed"
    k.bus.flush()
    assert [e.type for e in rec.events if e.type.startswith("breaker.")] == [
        "breaker.opened", "breaker.half_open", "breaker.closed"]


def test_an_open_breaker_sends_new_processes_to_the_declared_fallback(make_kernel):
    k = make_kernel(breaker_threshold=2, breaker_cooldown=60)
    rec = Recorder(k)
    tool(lambda ctx, q: f"cached {q}", name="rz_cache", hidden=True)
    primary = tool(lambda ctx, q: (_ for _ in ()).throw(ToolError("upstream down")), name="rz_live",
                   hidden=True, fallback="rz_cache")
    for _ in range(2):
        assert k.wait([k.spawn(primary, q="x")], timeout=5)[0].error == "upstream down"
    pid = k.spawn(primary, q="y")
    info = k.wait([pid], timeout=5)[0]
    assert (info.state, info.output, info.tool_name, info.name) == ("Completed", "cached y", "rz_cache", "rz_live")
    [note] = [h for h in info.history if h.event == "fallback"]
    assert note.details.startswith("circuit open for tool rz_live (2 consecutive failures") and \
        note.details.endswith("running fallback rz_cache instead")
    assert [e.data["running"] for e in rec.of(pid, "process.fallback")] == ["rz_cache"]
    k.breaker_reset("rz_live")
    assert k.wait([k.spawn(primary, q="z")], timeout=5)[0].error == "upstream down"  # the tool itself again
    with pytest.raises(LlmunixError, match="no breaker 'nope'"):
        k.breaker_reset("nope")


def test_host_breakers_guard_calls_through_ctx_host_call(make_kernel):
    k = make_kernel(breaker_threshold=2, breaker_cooldown=60)
    calls: list[str] = []

    def fetch(ctx: ProcessContext, url: str) -> str:
        with ctx.host_call(url):
            calls.append(url)
            raise ConnectionError("connection refused")

    t = tool(fetch, name="rz_fetch", hidden=True)
    for _ in range(3):
        k.wait([k.spawn(t, url="https://Example.com:8443/a")], timeout=5)
    assert len(calls) == 2  # the third was refused before the call
    info = k.wait([k.spawn(t, url="https://example.com/b")], timeout=5)[0]
    assert info.error.startswith("circuit open for host example.com (2 consecutive failures")
    host = {b.name: b for b in k.breakers()}["host:example.com"]
    assert (host.state, host.last_error) == ("open", "ConnectionError: connection refused")
    assert k.breaker_record("host:other.org", True).state == "closed"
    assert k.breaker_check("host:example.com").startswith("circuit open for host example.com")


def test_degraded_mode_defers_low_and_idle_work_while_a_breaker_is_open(make_kernel, wait_until):
    k = make_kernel(breaker_threshold=1, breaker_cooldown=60)
    rec = Recorder(k)
    k.wait([k.spawn("fail", message="down")], timeout=5)
    assert k.degraded() == ("circuit open for tool fail",)
    low = k.spawn("echo", text="later", priority="low")
    normal = k.spawn("echo", text="now")
    assert k.wait([normal], timeout=5)[0].state == "Completed"
    wait_until(lambda: k.info(low).detail == "deferred: degraded (circuit open for tool fail)")
    assert k.info(low).phase == "ready"
    assert k.health().status == "degraded"
    k.breaker_reset("fail")
    assert k.wait([low], timeout=5)[0].state == "Completed"
    assert [e.data["state"] for e in rec.types("system.degraded")] == ["on", "off"]


# ------------------------------------------------------------------ watchdog


def test_the_watchdog_catches_a_stalled_tool_and_not_a_slow_but_progressing_one(make_kernel, wait_until):
    k = make_kernel(monitor=True, monitor_interval=0.05, stall_timeout=0.3)
    rec = Recorder(k)
    stuck = threading.Event()

    def blocked(ctx: ProcessContext) -> None:
        stuck.wait()  # no control point, no CPU, no I/O

    def computing(ctx: ProcessContext) -> int:
        n, end = 0, __import__("time").monotonic() + 0.7
        while __import__("time").monotonic() < end:  # CPU, but no control point
            n += 1
        return n

    def reporting(ctx: ProcessContext) -> None:
        for i in range(14):
            stuck.wait(0.05)  # no CPU to speak of, but progress reported
            ctx.progress(i + 1, 14)

    pids = [k.spawn(blocked), k.spawn(computing), k.spawn(reporting)]
    wait_until(lambda: rec.of(pids[0], "process.stalled"), message="the stall")
    info = k.info(pids[0])
    assert info.phase == "running" and info.detail.startswith("stalled: no progress for 0.")
    assert k.health().status == "unhealthy"
    assert [i.state for i in k.wait(pids[1:], timeout=10)] == ["Completed", "Completed"]
    stuck.set()
    k.wait(pids, timeout=5)
    assert rec.of(pids[1], "process.stalled") == [] and rec.of(pids[2], "process.stalled") == []
    [e] = rec.of(pids[0], "process.stalled")
    assert e.data["action"] == "alert" and e.data["stall_timeout"] == 0.3


def test_a_stalled_tool_with_on_stall_restart_runs_again(make_kernel):
    k = make_kernel(monitor=True, monitor_interval=0.05)
    rec = Recorder(k)
    runs: list[int] = []
    never = threading.Event()

    def sticky(ctx: ProcessContext) -> str:
        runs.append(1)
        while len(runs) == 1 and not never.wait(0.05):  # the first run hangs (yet can be stopped)
            pass
        return "second run"

    pid = k.spawn(tool(sticky, name="rz_sticky", hidden=True, stall_timeout=0.2, on_stall="restart"))
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output, len(runs)) == ("Completed", "second run", 2)
    [e] = rec.of(pid, "process.restarting")
    assert e.data["watchdog"] and e.data["error"].startswith("stalled: no progress for")


# ------------------------------------------------------------------ chaos


def test_chaos_spec_parses_checks_and_draws_reproducibly():
    spec = ChaosSpec.parse("fail=0.2, hang=0.05, slow=0.1, seed=42")
    assert str(spec) == "fail=0.2,hang=0.05,slow=0.1,delay=1s,seed=42"
    assert [spec.draw(p, 1) for p in range(1, 40)] == [spec.draw(p, 1) for p in range(1, 40)]
    counts = Counter(ChaosSpec.parse("fail=0.5,seed=1").draw(p, 1) for p in range(2000))
    assert 900 < counts["fail"] < 1100
    assert ChaosSpec.parse("off") is None and ChaosSpec.parse("") is None
    for bad, message in (("fail=2", "between 0 and 1"), ("fail=0.6,hang=0.6", "at most 1"),
                         ("boom=1", "bad chaos setting"), ("seed=x", "bad chaos value")):
        with pytest.raises(LlmunixError, match=message):
            ChaosSpec.parse(bad)


def test_a_workflow_under_chaos_ends_every_step_with_the_right_reason(make_kernel):
    # Seed 23 injects, for PIDs 2..6 (the chain's first processes, started in a fixed order):
    # nothing, fail, nothing, hang, slow; the fan-out after them gets whatever it draws.
    k = make_kernel(chaos="fail=0.25,hang=0.15,slow=0.15,delay=0.02s,seed=23", max_running=3)
    rec = Recorder(k)
    step = {"tool": "echo", "timeout": "0.15s", "on_error": "skip",
            "retry": {"max_attempts": 3, "initial": "10ms", "max": "20ms"}}
    steps = [{"id": "a", "with": {"text": "a"}}, {"id": "b", "needs": ["a"], "with": {"text": "b"}},
             {"id": "c", "needs": ["b"], "with": {"text": "c"}}, {"id": "d", "needs": ["c"], "with": {"text": "d"}}]
    steps += [{"id": f"e{i}", "needs": ["d"], "with": {"text": f"e{i}"}} for i in range(4)]
    steps += [{"id": "f", "needs": [f"e{i}" for i in range(4)], "with": {"text": "f"}}]
    wf = k.workflow_run(spec_from_data({"name": "chaotic", "steps": [{**step, **s} for s in steps]}))
    info = k.wait([wf], timeout=30)[0]
    assert info.is_done and info.state == "Completed"  # every step ended; failures were skipped

    faults = Counter(e.data["fault"] for e in rec.types("process.chaos"))
    assert faults["fail"] >= 1 and faults["hang"] >= 1 and faults["slow"] >= 1
    status = k.workflow_status(wf)
    for s in status.steps:
        assert s.state in ("completed", "skipped"), s
        if s.state == "skipped":
            assert s.error in (INJECTED_FAILURE, "timed out after 0.15s"), s
    # Nothing lost: every process that was spawned has exactly one terminal state, and the right one.
    ends: dict[int, list[str]] = defaultdict(list)
    for e in rec.types("process.spawned"):
        ends[e.pid]
    for e in rec.events:
        if e.type in ("process.completed", "process.failed", "process.cancelled", "process.interrupted"):
            ends[e.pid].append(e.type)
    assert len(ends) >= 10 and all(len(v) == 1 for v in ends.values()), ends
    for pid, [end] in ends.items():
        child = k.info(pid)
        assert end == f"process.{child.state.lower()}"
        if child.state == "Failed":
            assert child.error in (INJECTED_FAILURE, "timed out after 0.15s"), child
    hung = [e.pid for e in rec.types("process.chaos") if e.data["fault"] == "hang"]
    assert all(k.info(p).error == "timed out after 0.15s" for p in hung)


# ------------------------------------------------------------------ health


def test_health_reports_each_check(kernel):
    report = kernel.health()
    names = [c.name for c in report.checks]
    assert names == ["store", "disk space", "memory", "breakers", "stalled processes", "unkillable threads",
                     "worker threads", "max_running"]
    checks = {c.name: c for c in report.checks}
    assert checks["store"].status == "ok"
    assert re.search(r"writable \(writer (process \d+|thread)\)$", checks["store"].detail)
    assert checks["stalled processes"].status == "skip"  # no monitor in this fixture
    assert report.status == "healthy" and report.healthy
    kernel.health_min_disk_mb = 1e12
    report = kernel.health()
    assert report.status == "unhealthy" and not report.healthy
    assert {c.name: c.status for c in report.checks}["disk space"] == "fail"


def test_policies_are_checked_before_anything_starts(make_kernel):
    k = make_kernel()
    with pytest.raises(LlmunixError, match="unknown restart policy 'sometimes'"):
        k.spawn("echo", text="x", restart="sometimes")
    with pytest.raises(LlmunixError, match="retry must be a RetryPolicy"):
        k.spawn("echo", text="x", retry=3)
    with pytest.raises(LlmunixError, match="on_stall must be alert, restart or kill"):
        tool(lambda ctx: None, name="rz_bad", hidden=True, on_stall="panic")
    assert k.ps(all=True) == []


def test_no_lock_outlives_a_failed_attempt_and_unacked_messages_come_again(kernel):
    k = kernel
    seen: list[object] = []

    def worker(ctx: ProcessContext) -> str:
        msg = ctx.recv(timeout=5)
        seen.append(msg.body if msg is not None else None)
        ctx.lock("db").acquire()  # held when the first attempt fails: the retry must get it again
        if len(seen) == 1:
            raise ToolError("crashed holding the lock, message not acknowledged")
        msg.ack()
        return "done"

    pid = k.spawn(worker, retry=RetryPolicy(max_attempts=2, initial=0.01, jitter="none"))
    k.send(pid, "job 1", persistent=True)
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output) == ("Completed", "done"), info.error
    assert seen == ["job 1", "job 1"]  # delivered again to the second attempt
    assert any(h.event == "released" for h in info.history)


# ------------------------------------------------------------------ policies survive a restart of llmunix


def test_recover_keeps_the_retry_and_restart_policies_of_an_interrupted_process(tmp_path, make_kernel, wait_until):
    from llmunix.tools.registry import REGISTRY, ToolRegistry, make_tool

    calls: list = []

    def durable_flaky(ctx: ProcessContext) -> object:
        """First session: checkpoint, then wait to be interrupted. After recover: fail twice, then succeed."""
        calls.append(ctx.restored)
        ctx.checkpoint({"call": len(calls)})
        if len(calls) == 1:
            ctx.sleep(60)
        if len(calls) <= 3:
            raise ToolError(f"boom {len(calls)}")
        return len(calls)

    registry = ToolRegistry()
    for t in REGISTRY:
        registry.register(t)
    registry.register(make_tool(durable_flaky))
    home = tmp_path / "home"
    k = make_kernel(home=home, registry=registry)
    pid = k.spawn("durable_flaky", retry=RetryPolicy(max_attempts=4, initial=0.01, max=0.02),
                  restart=RestartPolicy("on-failure", max_restarts=2, min_uptime=5, backoff=QUICK))
    wait_until(lambda: k.checkpoints(pid), message="a first checkpoint")
    k.shutdown()
    k = make_kernel(home=home, registry=registry)
    [info] = k.recover()
    assert info.attempts is not None and info.attempts.max_attempts == 4
    info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output, len(calls)) == ("Completed", 4, 4)  # retried twice after recover
    assert [h.event for h in info.history].count("retry") == 2


def test_recover_keeps_the_timeout_of_an_interrupted_process(tmp_path, make_kernel, wait_until):
    home = tmp_path / "home"
    k = make_kernel(home=home)
    pid = k.spawn("sleep", seconds=60, timeout=1.5)  # the builtin sleep checkpoints its ticks
    wait_until(lambda: k.checkpoints(pid), message="a first checkpoint")
    k.shutdown()
    k = make_kernel(home=home)
    [info] = k.recover()
    info = k.wait([pid], timeout=20)[0]
    assert (info.state, info.error) == ("Failed", "timed out after 1.5s")  # not 60 s of sleep


@pytest.mark.parametrize("name", ["stall_timeout", "breaker_cooldown"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 1e99])
def test_the_kernel_refuses_durations_that_would_stop_a_timer(make_kernel, name, value):
    # A NaN or infinite setting would stop the watchdog's or a breaker's timer for good (issue 19).
    k = make_kernel()
    before = getattr(k, name)
    with pytest.raises(LlmunixError, match=f"{name} must be a number of seconds from 0 to 604,800"):
        setattr(k, name, value)
    assert getattr(k, name) == before
    setattr(k, name, 5)
    assert getattr(k, name) == 5.0
