"""Resource-aware admission as a user sees it: limits, waiting for resources, needs given back on
pause, impossible needs, token buckets, memory prediction from past runs, memory pressure and
the `limits` command."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
from conftest import WAIT, wait_phase
from test_shell_commands import Session

from llmunix import Kernel, Phase, ProcessContext
from llmunix.models import LlmunixError
from llmunix.pool import ResourcePool, TokenBucket, parse_needs, predict_memory


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def noop(ctx: ProcessContext, label: str = "") -> str:
    return label


def limit(k: Kernel, name: str):
    return next(i for i in k.limits() if i.name == name)


# ------------------------------------------------------------------ the pool on its own


def test_token_bucket_refills_continuously_up_to_its_capacity():
    clock = FakeClock()
    bucket = TokenBucket(600, clock)  # 600 a minute: 10 a second
    assert bucket.refill() == 600
    bucket.take(600)
    assert bucket.seconds_until(120) == pytest.approx(12.0)
    clock.now += 6
    assert bucket.refill() == pytest.approx(60)
    assert bucket.seconds_until(120) == pytest.approx(6.0)
    clock.now += 3600
    assert bucket.refill() == 600  # never above capacity
    assert bucket.seconds_until(601) == float("inf")


def test_memory_prediction_is_the_p90_of_recent_peaks():
    assert predict_memory([]) is None
    assert predict_memory([105.0]) == 105.0
    assert predict_memory([10.0 * i for i in range(1, 11)]) == 90.0
    assert predict_memory([100.0] * 9 + [900.0]) == 100.0  # one outlier in ten does not count


def test_needs_parse_from_mappings_and_pairs():
    assert parse_needs(["memory_mb=500", "gpu=1", "network=0"]) == {"memory_mb": 500.0, "gpu": 1.0}
    assert parse_needs({"llm_tokens_per_min": "2000"}) == {"llm_tokens_per_min": 2000.0}
    for bad in (["gpu"], ["gpu=abc"], ["gpu=-1"], ["bad name=1"]):
        with pytest.raises(LlmunixError):
            parse_needs(bad)


# ------------------------------------------------------------------ admission in the kernel


def test_a_process_waits_for_a_gpu_until_the_holder_ends(make_kernel, make_gate, wait_until):
    k = make_kernel(limits={"gpu": 1}, time_slice=0.02)
    first, second = make_gate(), make_gate()
    a = k.spawn(first.tool, needs={"gpu": 1})
    assert first.started.wait(10)
    b = k.spawn(second.tool, needs={"gpu": 1})
    info = k.info(b)
    assert info.phase is Phase.READY and info.detail == "waiting for resources: gpu"
    assert dict(info.needs) == {"gpu": 1.0}
    gpu = limit(k, "gpu")
    assert (gpu.capacity, gpu.in_use, gpu.free, gpu.waiting) == (1, 1, 0, 1)
    # Many time slices pass: a process waiting for resources does not take the holder's turn.
    wait_until(lambda: k.info(a).runtime > 0.2, message="a to run for a while")
    assert k.info(a).phase is Phase.RUNNING and not second.started.is_set()
    first.open()
    assert second.started.wait(10)
    second.open()
    assert [i.state for i in k.wait([a, b], timeout=10)] == ["Completed", "Completed"]
    assert limit(k, "gpu").in_use == 0


def test_pausing_gives_needs_back_and_resuming_takes_them_again(make_kernel, make_gate):
    k = make_kernel(limits={"gpu": 1})
    first, second = make_gate(), make_gate()
    a = k.spawn(first.tool, needs={"gpu": 1})
    assert first.started.wait(10)
    b = k.spawn(second.tool, needs={"gpu": 1})
    k.pause(a)
    wait_phase(k, a, "paused")
    assert second.started.wait(10)  # a's gpu went to b
    k.resume(a)
    info = k.info(a)
    assert info.phase is Phase.PREEMPTED and info.detail == "waiting for resources: gpu"
    second.open()
    wait_phase(k, a, "running")
    assert limit(k, "gpu").in_use == 1
    first.open()
    assert [i.state for i in k.wait([a, b], timeout=10)] == ["Completed", "Completed"]


def test_needs_that_can_never_fit_fail_at_spawn_with_the_reason(make_kernel):
    k = make_kernel(limits={"memory_mb": 20000})
    pid = k.spawn(noop, needs={"memory_mb": 50000})
    info = k.info(pid)
    assert info.state == "Failed"
    assert info.error == "needs memory_mb=50000 but the pool has 20000; raise it with limits memory_mb=..."


def test_tools_declare_default_needs_that_spawn_overrides(make_kernel, make_gate):
    from llmunix.tools.registry import ToolRegistry, tool

    registry = ToolRegistry()

    @tool(needs={"gpu": 2}, registry=registry)
    def train(ctx: ProcessContext) -> None:
        pass

    k = make_kernel(limits={"gpu": 1}, registry=registry)
    assert "gpu=2" in k.info(k.spawn("train")).error
    ok = k.spawn("train", needs={"gpu": 1})
    assert k.wait([ok], timeout=10)[0].state == "Completed"


def test_a_long_waiting_big_process_is_not_overtaken_forever(make_kernel, make_gate, wait_until):
    k = make_kernel(limits={"gpu": 2}, aging_interval=0.1)
    holder, big_gate = make_gate(), make_gate()
    a = k.spawn(holder.tool, needs={"gpu": 1})
    assert holder.started.wait(10)
    small_early = k.spawn(noop, needs={"gpu": 1})  # fits beside a, starts at once: no one waited long
    assert k.wait([small_early], timeout=10)[0].state == "Completed"
    big = k.spawn(big_gate.tool, needs={"gpu": 2})
    spawned = time.monotonic()
    wait_until(lambda: time.monotonic() - spawned > 0.15, message="big to wait past the reservation window")
    small = k.spawn(noop, needs={"gpu": 1})
    assert k.info(small).detail == "waiting for resources: gpu"  # big reserves both gpus
    holder.open()
    assert big_gate.started.wait(10)
    big_gate.open()
    assert [i.state for i in k.wait([a, big, small], timeout=10)] == ["Completed"] * 3


def test_a_process_waits_for_tokens_until_the_bucket_refills(make_kernel):
    clock = FakeClock()
    k = make_kernel(pool=ResourcePool({"llm_tokens_per_min": 600}, clock=clock, memory_mb=1000, cpu=2))
    first = k.spawn(noop, needs={"llm_tokens_per_min": 500})
    assert k.wait([first], timeout=10)[0].state == "Completed"
    second = k.spawn(noop, needs={"llm_tokens_per_min": 500})
    assert k.info(second).detail == "waiting for resources: llm_tokens_per_min"
    clock.now += 30  # 100 left + 300 refilled = 400
    k.check_resources()
    assert k.info(second).phase is Phase.READY
    assert limit(k, "llm_tokens_per_min").level == pytest.approx(400)
    clock.now += 10  # 500
    k.check_resources()
    assert k.wait([second], timeout=10)[0].state == "Completed"
    assert limit(k, "llm_tokens_per_min").level == pytest.approx(0)


HOLD_100_MB = """import os, sys, time
b = b'x' * (100 * 1024 * 1024)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
"""


def run_holding_100_mb(k: Kernel, tmp_path, wait_until) -> str:
    """Run a `shell` process whose Python child holds 100 MiB until the monitor has seen it (then
    the test lets it end): a fixed lifetime could end before a sample on a loaded machine."""
    script = tmp_path / "hold.py"
    script.write_text(HOLD_100_MB)
    let_go = tmp_path / f"let-go-{time.monotonic_ns()}"
    pid = k.spawn("shell", cmd=f"{sys.executable} {script} {let_go}")
    wait_until(lambda: any((s.memory_mb or 0) > 100 for s in k.samples(pid)), message="a sample of 100 MB")
    let_go.touch()
    return k.wait([pid], timeout=WAIT)[0].state


def test_memory_need_is_predicted_from_the_tools_past_runs(make_kernel, tmp_path, wait_until):
    k = make_kernel(monitor=True, monitor_interval=0.05)
    for _ in range(2):
        assert run_holding_100_mb(k, tmp_path, wait_until) == "Completed"
    info = k.info(k.spawn("shell", cmd="true"))
    assert info.predicted_needs == ("memory_mb",)
    assert 95 < info.needs["memory_mb"] < 200
    assert k.info(k.spawn("shell", cmd="true", needs={"memory_mb": 10})).needs["memory_mb"] == 10  # declared wins

    # With a home, the peaks are stored (tool_runs.peak_memory_mb) and predict in a later session.
    home = tmp_path / "home"
    first = Kernel(home, monitor_interval=0.05)
    try:
        assert run_holding_100_mb(first, tmp_path, wait_until) == "Completed"
    finally:
        first.shutdown()
    later = make_kernel(home=home)
    assert 95 < later.info(later.spawn("shell", cmd="true")).needs["memory_mb"] < 200


def test_memory_pressure_defers_low_and_idle_work_until_it_ends(make_kernel):
    available = [20_000.0]
    k = make_kernel(memory_pressure_mb=1000, available_memory=lambda: available[0])
    seen: list[str] = []
    got = threading.Event()
    k.subscribe("system.memory_pressure", lambda e: (seen.append(e.data["state"]), got.set()))
    assert not k.check_resources().on
    available[0] = 500.0
    assert k.check_resources().on and k.pressure().available_mb == 500.0
    low = k.spawn(noop, priority="low")
    idle = k.spawn(noop, priority="idle")
    normal = k.spawn(noop)
    assert k.wait([normal], timeout=10)[0].state == "Completed"
    for pid in (low, idle):
        assert k.info(pid).detail == "deferred: memory pressure"
    available[0] = 20_000.0
    assert not k.check_resources().on
    assert [i.state for i in k.wait([low, idle], timeout=10)] == ["Completed", "Completed"]
    assert k.bus.flush(10)
    assert seen == ["on", "off"]


def test_memory_pressure_can_pause_running_idle_work_and_resumes_it_after(make_kernel, wait_until):
    available = [20_000.0]
    k = make_kernel(memory_pressure_mb=1000, available_memory=lambda: available[0],
                    pause_idle_under_pressure=True)
    idle = k.spawn("sleep", seconds=30, priority="idle")
    normal = k.spawn("sleep", seconds=30)
    wait_until(lambda: k.info(idle).phase == "running" and k.info(normal).phase == "running")
    user_paused = k.spawn("sleep", seconds=30, priority="idle")
    wait_until(lambda: k.info(user_paused).phase == "running")
    k.pause(user_paused)
    wait_until(lambda: k.info(user_paused).phase == "paused")
    available[0] = 500.0
    assert k.check_resources().on
    wait_until(lambda: k.info(idle).phase == "paused", message="the idle process paused by pressure")
    assert k.info(idle).detail == "paused: memory pressure"
    assert k.info(normal).phase == "running"  # only idle work is paused
    available[0] = 20_000.0
    assert not k.check_resources().on
    wait_until(lambda: k.info(idle).phase == "running", message="the idle process resumed")
    assert k.info(user_paused).phase == "paused"  # what a user paused stays paused


# ------------------------------------------------------------------ the limits command


@pytest.fixture
def session(tmp_path, capsys):
    k = Kernel(tmp_path, monitor=False, kill_grace=0.3, limits={"memory_mb": 8000})
    yield Session(k, capsys)
    k.shutdown()


def test_limits_shows_sets_and_explains(session):
    out = session.ok("limits gpu=1 llm_tokens_per_min=90000")
    assert "gpu" in out and "90000/min" in out
    pid = int(session.ok("run sleep seconds=30 --need gpu=1").strip())
    waiting = int(session.ok("run sleep seconds=30 --need gpu=1 --need memory_mb=500").strip())
    detail = session.ok(f"ps -l {waiting}")
    assert "waiting for resources: gpu" in detail and "Needs: gpu=1, memory_mb=500" in detail
    data = json.loads(session.ok("limits --json"))
    gpu = next(r for r in data["resources"] if r["name"] == "gpu")
    assert (gpu["capacity"], gpu["in_use"], gpu["waiting"]) == (1, 1, 1)
    assert data["memory_pressure"]["on"] is False
    assert "gpu='abc'" in session.bad("limits gpu=abc")
    assert "NAME=VALUE" in session.bad("limits gpu")
    assert "bad need" in session.bad("run sleep --need gpu")
    impossible = int(session.ok("run sleep --need gpu=3").strip())
    assert session.kernel.info(impossible).error.startswith("needs gpu=3 but the pool has 1;")
    session.ok("limits gpu=none")
    resources = json.loads(session.ok("limits --json"))["resources"]
    assert next(r for r in resources if r["name"] == "gpu")["capacity"] is None  # unlimited, still in use
    session.kernel.kill(pid)
    session.kernel.kill(waiting)
