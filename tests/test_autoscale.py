"""`max_running = "auto"`: slots follow CPU and memory headroom — one more while the machine has
room and work waits, a quarter fewer when it is busy, within bounds, only after several readings
agree; `limits` and `health` say the value and why."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
from conftest import LLMUNIX, _wait_until

from llmunix import ProcessContext
from llmunix.autoscale import GROW, HOLD, SHRINK, Autoscaler, AutoSettings, step, vote
from llmunix.models import LlmunixError
from llmunix.monitor import SystemSample


def reading(cpu: float, available_mb: float = 50_000.0) -> SystemSample:
    return SystemSample(time.time(), cpu, 2, 64_000.0, available_mb, (0.0, 0.0, 0.0), 1.0, 100.0)


def test_each_reading_votes_by_cpu_memory_and_whether_work_waits():
    s = AutoSettings(cpu_low=60, cpu_high=85)
    assert vote(reading(30), 1000, True, s)[0] == GROW
    assert vote(reading(30), 1000, False, s) == (HOLD, "CPU 30%, 50.0 GB available; no process waits for a slot")
    assert vote(reading(70), 1000, True, s)[0] == HOLD  # the dead band
    assert vote(reading(90), 1000, False, s)[0] == SHRINK
    assert vote(reading(30, available_mb=1500), 1000, True, s)[0] == SHRINK  # under twice the threshold
    assert vote(reading(30, available_mb=3000), 1000, True, s)[0] == HOLD  # under four times
    s = AutoSettings(maximum=12)
    assert [step(8, GROW, s), step(8, SHRINK, s), step(3, SHRINK, s), step(1, SHRINK, s)] == [9, 6, 2, 1]
    assert step(8, GROW, AutoSettings(maximum=8)) == 8


def test_settings_are_checked():
    for bad in ({"minimum": 0}, {"minimum": 5, "maximum": 4}, {"cpu_low": 90, "cpu_high": 80}, {"samples": 0}):
        with pytest.raises(LlmunixError):
            AutoSettings(**bad)


def slots_kernel(make_kernel, **settings):
    k = make_kernel(max_running=4)
    auto = Autoscaler(k.table, AutoSettings(**settings))
    auto.enable(True)
    return k, auto


def busy(k, n: int, stop: threading.Event) -> list[int]:
    def hold(ctx: ProcessContext) -> None:
        while not stop.is_set():
            ctx.sleep(0.01)

    return [k.spawn(hold, name=f"hold{i}") for i in range(n)]


def test_it_grows_by_one_after_agreeing_readings_while_work_waits(make_kernel):
    k, auto = slots_kernel(make_kernel, minimum=2, maximum=6, samples=3)
    stop = threading.Event()
    pids = busy(k, 8, stop)
    _wait_until(lambda: len([i for i in k.ps() if i.phase == "running"]) == 4)
    assert [auto.observe(reading(20)) for _ in range(3)] == [4, 4, 5]  # the third agreeing reading
    assert auto.info().reason.startswith("grew from 4 to 5 at ")
    assert auto.info().reason.endswith(": CPU 20% (under 60%), 50.0 GB available, processes wait for a slot")
    _wait_until(lambda: len([i for i in k.ps() if i.phase == "running"]) == 5)  # dispatched at once
    assert [auto.observe(reading(20)) for _ in range(3)] == [5, 5, 6]
    assert [auto.observe(reading(20)) for _ in range(3)] == [6, 6, 6]  # the maximum
    assert auto.info().reason.startswith("held at 6 (at its maximum): CPU 20% (under 60%)")
    stop.set()
    k.wait(pids, timeout=10)


def test_busy_readings_shrink_it_by_a_quarter_and_running_work_goes_on(make_kernel):
    k, auto = slots_kernel(make_kernel, minimum=2, maximum=16, samples=2)
    stop = threading.Event()
    pids = busy(k, 4, stop)
    _wait_until(lambda: len([i for i in k.ps() if i.phase == "running"]) == 4)
    assert [auto.observe(reading(95)) for _ in range(2)] == [4, 3]
    assert [auto.observe(reading(95)) for _ in range(2)] == [3, 2]
    assert [auto.observe(reading(95)) for _ in range(2)] == [2, 2]  # the minimum
    assert len([i for i in k.ps() if i.phase == "running"]) == 4  # nothing was stopped
    stop.set()
    k.wait(pids, timeout=10)


def test_readings_that_disagree_change_nothing(make_kernel):
    k, auto = slots_kernel(make_kernel, samples=2)
    stop = threading.Event()
    pids = busy(k, 6, stop)
    _wait_until(lambda: len([i for i in k.ps() if i.phase == "running"]) == 4)
    assert {auto.observe(reading(cpu)) for cpu in (20, 95, 20, 95, 70, 20, 95)} == {4}
    stop.set()
    k.wait(pids, timeout=10)


def test_a_fixed_setting_turns_auto_off_and_limits_and_health_say_so(tmp_path, capsys):
    from conftest import Session

    from llmunix import Kernel

    k = Kernel(tmp_path, kill_grace=0.3, max_running="auto", monitor_interval=3600)
    try:
        sh = Session(k, capsys)
        assert sh.ok("set max_running").split()[4] == "auto"
        assert "max_running: auto, now 8 (1 to " in sh.ok("limits")
        k.autoscaler.observe(reading(95))
        data = json.loads(sh.ok("limits --json"))["max_running"]
        assert data["setting"] == "auto" and data["value"] == 8 and "1 of 3 readings" in data["reason"]
        assert "max_running         ok      auto, now 8" in sh.ok("health")
        sh.ok("set max_running 3")
        assert k.max_running_setting == 3 and not k.autoscaler.enabled
        assert "max_running: 3 (fixed; `set max_running auto` follows CPU and memory)" in sh.ok("limits")
        assert "or auto, not 'lots'" in sh.bad("set max_running lots")
    finally:
        k.shutdown()


def test_auto_needs_the_monitor(make_kernel):
    with pytest.raises(LlmunixError, match="needs the monitor"):
        make_kernel(max_running="auto")
    k = make_kernel()
    with pytest.raises(LlmunixError, match="without one"):
        k.set_max_running("auto")


def run_llmunix(home, *commands: str, config: str = "") -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(config)
    return subprocess.run([LLMUNIX, "--home", str(home), *(a for c in commands for a in ("-c", c))],
                          capture_output=True, text=True, timeout=60)


def test_e2e_a_machine_short_of_memory_shrinks_it_to_its_minimum(tmp_path):
    config = ('max_running = "auto"\nmonitor_interval = 0.05\nmemory_pressure_mb = 1000000000\n'
              "[max_running_auto]\nminimum = 3\nsamples = 1\n")
    home = tmp_path / "home"
    r = run_llmunix(home, "run sleep seconds=0.1", "wait", config=config)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    while True:
        r = run_llmunix(home, "run sleep seconds=1", "wait", "limits --json", config=config)
        data = json.loads(r.stdout[r.stdout.index("{"):])["max_running"]
        if data["value"] == 3 or time.monotonic() > deadline:
            break
    assert data["value"] == 3 and data["reason"].startswith("held at 3 (at its minimum):"), data
    assert "under twice the pressure threshold" in data["reason"]
    events = run_llmunix(home, "events --type system.max_running", config=config).stdout.splitlines()[1:]
    assert [e.split("value=")[1].split()[0] for e in events][:2] == ["6", "5"]  # 8, then a quarter less each time
    assert 'reason="shrank from 8 to 6 at ' in events[0] and "(under twice the pressure threshold" in events[0]
