"""I/O limits: `run --io-rate` (cgroup v2 io.max where a delegation allows, else the SIGSTOP/SIGCONT
duty cycle, tested for real here), and I/O priority by level (ionice) for subprocess and isolated
process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import LLMUNIX, WAIT, Session, wait_phase

from llmunix import Kernel, ProcessContext
from llmunix.iolimit import find_io_cgroup, held_command, make_limited_cgroup
from llmunix.ioprio import group_io_priority
from llmunix.isolation import fmt_rate, parse_io_rate
from llmunix.models import LlmunixError
from llmunix.pool import TokenBucket
from llmunix.tools.registry import tool

MB = 1_000_000


def writer(path: Path, mb: int = 256) -> str:
    """A `dd` that writes `mb` megabytes as fast as it can (gigabytes a second into the page cache)."""
    return f"dd if=/dev/zero of={path} bs=64k count={mb * 16} status=none"


def os_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def tree_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            c = psutil.Process(p).io_counters()
            total += c.read_chars + c.write_chars
        except psutil.Error:
            pass
    return total


@pytest.fixture
def limited_kernel(tmp_path):
    k = Kernel(tmp_path / "home", monitor=False, kill_grace=0.3)
    yield k
    k.shutdown()


# ---------------------------------------------------------------------- parsing, the bucket, the method


def test_rates_parse_with_or_without_per_second_and_bad_ones_say_how():
    assert parse_io_rate("10MB/s") == 10 * MB
    assert parse_io_rate("500kB/s") == 500_000
    assert parse_io_rate("1MiB/s") == 1024 * 1024
    assert parse_io_rate("2M") == 2 * MB
    assert parse_io_rate(4096) == 4096
    assert parse_io_rate("5000000") == 5 * MB  # a bare number: bytes per second
    assert parse_io_rate(None) is None
    for bad in ("fast", "10", "-5MB/s", "0MB/s", "10MB/h"):
        with pytest.raises(LlmunixError, match="I/O rate"):
            parse_io_rate(bad)
    assert fmt_rate(5 * MB) == "5 MB/s"
    assert fmt_rate(1.5 * MB) == "1.5 MB/s"


def test_a_token_bucket_with_a_ceiling_holds_no_more_than_it_and_repays_a_debt_at_its_rate():
    now = [0.0]
    b = TokenBucket(60 * 100.0, lambda: now[0], ceiling=50.0)  # 100 a second, 50 at most
    assert b.level == 50.0
    now[0] = 10.0
    assert b.refill() == 50.0  # an idle stretch is no licence for a long burst
    b.take(250.0)
    assert b.level == -200.0
    assert b.seconds_until(0.0) == pytest.approx(2.0)


def test_this_machine_says_why_it_has_no_cgroup_io_delegation_or_which_one_it_uses(tmp_path):
    root, why = find_io_cgroup()
    assert (root is None) == bool(why)
    root, why = find_io_cgroup(str(tmp_path))  # not a cgroup directory at all
    assert root is None and "not a cgroup v2 directory" in why


def test_a_writable_cgroup_io_delegation_gets_a_limited_child_for_the_tree(tmp_path):
    root, why = find_io_cgroup(os.environ.get("LLMUNIX_TEST_IO_CGROUP"))
    if root is None:
        pytest.skip(f"no writable cgroup v2 io delegation here ({why}); the duty cycle below is what runs")
    child = subprocess.Popen(["sleep", "5"])
    try:
        group = make_limited_cgroup(root, f"llmunix-test-{os.getpid()}", 5 * MB, [child.pid])
        assert str(child.pid) in (group / "cgroup.procs").read_text().split()
        assert "wbps=5000000" in (group / "io.max").read_text()
    finally:
        child.kill()
        child.wait()
        (root / "cgroup.procs").write_text("0")  # (nothing left in it)
        group.rmdir()


# ---------------------------------------------------------------------- the duty cycle, for real


def test_a_writer_limited_to_2_mb_a_second_is_stopped_and_continued_and_moves_a_fraction_of_its_speed(
        limited_kernel, tmp_path, wait_until):
    k = limited_kernel
    kind, _why = k.io_limit_method()
    if kind == "cgroup":
        pytest.skip("this machine holds rates with cgroup io.max; the duty cycle is not used here")
    pid = k.spawn("shell", cmd=writer(tmp_path / "out"), io_rate="2MB/s")
    info = wait_until(lambda: (i := k.io_limit(pid)) is not None and i.stops >= 3 and i)
    child = k.info(pid).subprocess_pid
    assert child is not None
    # Unlimited, the 256 MB are written in a fraction of a second; held to 2 MB/s they take minutes.
    wait_until(lambda: (i := k.io_limit(pid)) is not None and i.seconds >= 1.0)
    assert not k.info(pid).is_done
    info = k.io_limit(pid)
    assert info.method == "duty-cycle"
    assert tree_bytes(child) < 200 * MB
    assert info.read + info.written <= tree_bytes(child)
    assert "2 MB/s each way (duty cycle)" in info.describe()
    assert any(os_state(p) == "T" for p in tree(child)) or info.stops > 0
    k.kill(pid)
    [done] = k.wait([pid], timeout=WAIT)  # a kill reaches a stopped tree (it is continued to die)
    assert done.state == "Cancelled"
    assert any(h.event == "io limit" and "by a SIGSTOP/SIGCONT duty cycle" in h.details for h in done.history)
    assert any(h.event == "io limit" and "stopped" in h.details for h in done.history)  # the summary at its end


@pytest.mark.parametrize(("cmd", "shell"), [("printf '%s|' \"a b\" c; echo", True),
                                            (["printf", "%s|", "a b", "c"], False)])
def test_a_held_command_stops_itself_before_it_runs_and_is_the_command_once_continued(cmd, shell, wait_until):
    child = subprocess.Popen(held_command(cmd, shell), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: os_state(child.pid) == "T", message="stopped before the command ran")
        os.killpg(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=WAIT)
    finally:
        if child.poll() is None:
            child.kill()
    assert out.startswith("a b|c|") and child.returncode == 0


def test_a_limited_subprocess_tools_command_starts_held_and_an_unlimited_ones_does_not(limited_kernel, tmp_path,
                                                                                        wait_until):
    k = limited_kernel
    limited = k.spawn("shell", cmd="sleep 30", io_rate="1MB/s")
    free = k.spawn("shell", cmd="sleep 30")
    assert k.io_starts_held(limited) and not k.io_starts_held(free)
    wait_until(lambda: k.io_limit(limited) is not None)
    k.kill(limited)
    k.kill(free)
    k.wait([limited, free], timeout=WAIT)


def test_restart_runs_again_under_the_same_io_rate(limited_kernel, wait_until):
    k = limited_kernel
    first = k.spawn("shell", cmd="sleep 30", io_rate="3MB/s")
    wait_until(lambda: k.io_limit(first) is not None)
    k.kill(first)
    k.wait([first], timeout=WAIT)
    again = k.restart(first).pid
    info = wait_until(lambda: k.io_limit(again))
    assert info.rate == 3 * MB
    k.kill(again)
    k.wait([again], timeout=WAIT)


def test_a_pause_wins_over_the_regulator_and_a_resume_lets_it_go_on(limited_kernel, tmp_path, wait_until):
    k = limited_kernel
    if k.io_limit_method()[0] == "cgroup":
        pytest.skip("this machine holds rates with cgroup io.max; the duty cycle is not used here")
    pid = k.spawn("shell", cmd=writer(tmp_path / "out"), io_rate="20MB/s")
    wait_until(lambda: (i := k.io_limit(pid)) is not None and i.written > 0 and i.stops >= 2)
    k.pause(pid)
    wait_phase(k, pid, "paused")
    child = k.info(pid).subprocess_pid
    before = tree_bytes(child)
    looks = k.io_limit(pid).looks
    wait_until(lambda: k.io_limit(pid).looks >= looks + 5, message="the regulator to look again")
    assert all(os_state(p) == "T" for p in tree(child))  # the regulator did not continue it
    assert tree_bytes(child) - before <= 64 * 1024  # (one write in flight at most)
    paused_at = k.io_limit(pid).written
    k.resume(pid)  # (a tree the regulator holds stays held: the on_continue hook, not a SIGCONT)
    wait_until(lambda: tree_bytes(child) > before + MB, message="it to write again once resumed")
    stops = k.io_limit(pid).stops
    wait_until(lambda: k.io_limit(pid).stops > stops + 3, message="the regulator to stop it again")
    # Continued by the table, dd wrote about 150 MB at page-cache speed before the next look.
    assert k.io_limit(pid).written - paused_at < 100 * MB
    assert k.io_limit(pid).written < 200 * MB
    k.kill(pid)
    k.wait([pid], timeout=WAIT)


def test_an_isolated_python_writer_is_limited_too(limited_kernel, tmp_path, wait_until):
    k = limited_kernel
    if k.io_limit_method()[0] == "cgroup":
        pytest.skip("this machine holds rates with cgroup io.max; the duty cycle is not used here")
    pid = k.spawn("python_writer", params={"path": str(tmp_path / "out")}, io_rate="1MB/s")
    info = wait_until(lambda: (i := k.io_limit(pid)) is not None and i.stops >= 3 and i.seconds >= 1.0 and i)
    assert k.info(pid).subprocess_pid is not None  # a worker OS process of its own
    assert info.written < 200 * MB
    assert not k.info(pid).is_done
    k.kill(pid)
    assert k.wait([pid], timeout=WAIT)[0].state == "Cancelled"


@tool(name="python_writer")
def python_writer(ctx: ProcessContext, path: str, mb: int = 500) -> int:
    """Write `mb` MB of zeros as fast as it can (a Python tool: --io-rate isolates it)."""
    block = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(block)
    return mb


# ---------------------------------------------------------------------- ionice


def test_idle_and_low_priorities_get_the_idle_and_lowest_best_effort_io_classes(kernel, wait_until):
    pid = kernel.spawn("shell", cmd="sleep 30", priority="idle")
    child = wait_until(lambda: kernel.info(pid).subprocess_pid)
    assert group_io_priority(child) == ("idle", 0)
    kernel.renice(pid, "low")
    assert group_io_priority(child) == ("best-effort", 7)
    kernel.renice(pid, "normal")
    assert group_io_priority(child) == ("none", 0)  # the default again: from the nice value
    kernel.kill(pid)
    kernel.wait([pid], timeout=WAIT)


# ---------------------------------------------------------------------- the command


def test_run_io_rate_on_the_command_line_and_its_errors(sh: Session, tmp_path, wait_until):
    out = sh.ok(f"run shell cmd='{writer(tmp_path / 'out')}' --io-rate 2MB/s").strip()
    pid = int(out)
    wait_until(lambda: (i := sh.kernel.io_limit(pid)) is not None and i.stops >= 1)
    text = sh.ok(f"debug {out}")
    assert "I/O Limit: 2 MB/s each way (" in text
    sh.ok(f"kill {out}")
    assert "bad I/O rate 'fast'" in sh.bad("run shell cmd=true --io-rate fast")
    assert "--io-rate limit an isolated or subprocess tool" in sh.bad(
        f"run python_writer path={tmp_path / 'x'} --thread --io-rate 1MB/s")
    assert "--io-rate do not apply" in sh.bad("run echo text=x --replicas 2 --io-rate 1MB/s")


def test_io_rate_end_to_end_through_the_executable(tmp_path):
    target = tmp_path / "out"
    r = subprocess.run(
        [LLMUNIX, "--home", str(tmp_path / "home"),
         "-c", f"run shell cmd='{writer(target)}' --io-rate 1MB/s --name limited",
         "-c", "run sleep seconds=1.5", "-c", "wait 002", "-c", "debug 001", "-c", "ps -l 001", "-c", "kill 001"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert "I/O Limit: 1 MB/s each way (" in r.stdout
    assert "io limit" in r.stdout
    assert target.stat().st_size < 100 * MB  # the 256 MB were not written


def test_io_rate_bad_input_end_to_end_one_line_and_a_failing_status(tmp_path):
    for rate, says in (("banana", "run: bad I/O rate 'banana'; give bytes per second such as 10MB/s"),
                       ("0", "run: bad I/O rate '0'; give from 1kB/s to 10TB/s"),
                       ("inf", "run: bad I/O rate 'inf'; give bytes per second")):
        r = subprocess.run([LLMUNIX, "--home", str(tmp_path / "home"), "-c", f"run shell cmd=true --io-rate {rate}"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
        assert r.returncode != 0 and r.stdout == ""
        assert r.stderr.startswith(says) and len(r.stderr.splitlines()) == 1, r.stderr


def test_io_priority_end_to_end_even_a_short_command_starts_in_its_class(tmp_path):
    # The class is set in the child before its command runs (not only on the group once it is
    # attached, by which time a short command has done its I/O).
    r = subprocess.run(
        [LLMUNIX, "--home", str(tmp_path / "home"), "-c", "run shell cmd='ionice -p $$' --priority idle",
         "-c", "run shell cmd='ionice -p $$' --priority low", "-c", "run shell cmd='ionice -p $$'",
         "-c", "wait 001 002 003", "-c", "log 001", "-c", "log 002", "-c", "log 003"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-3:] == ["idle", "best-effort: prio 7", "none: prio 0"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
