"""`debug PID memory` (tracemalloc: on demand for thread tools, in the worker for isolated ones;
`--diff`, `--dump`, `--stop`) and `profile --memory`, on real threads and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from llmunix.models import LlmunixError
from llmunix.observe.memory import Tracer
from tests import memory_tools
from tests.conftest import LLMUNIX, WAIT, Session, wait_phase

ROOT = Path(__file__).resolve().parent.parent
TOOLS = os.path.abspath(memory_tools.__file__)


def progressed(k, pid: int, steps: int):
    """A condition: process `pid` has reached at least `steps` more steps than now."""
    start = k.info(pid).progress.current_step
    return lambda: k.info(pid).progress.current_step >= start + steps


def leak_site(look):
    return next((s for s in look.sites if s.file == TOOLS and s.line == memory_tools.LEAK_LINE), None)


@pytest.fixture
def no_tracing():
    """Tests start and end with tracemalloc off (as llmunix finds it)."""
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()


# ---------------------------------------------------------------------- the tracer's bookkeeping


def test_the_tracer_turns_tracemalloc_on_for_its_first_owner_and_off_after_its_last(no_tracing):
    t = Tracer()
    assert t.start("a", frames=7) and tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 7
    assert t.start("b")
    assert not t.start("a")  # already tracing for it
    t.stop("a")
    assert tracemalloc.is_tracing()
    t.stop("b")
    assert not tracemalloc.is_tracing()


def test_the_tracer_leaves_tracemalloc_as_it_found_it_when_it_was_on_already(no_tracing):
    tracemalloc.start(3)
    t = Tracer()
    look = t.look("a", None)
    assert look.already_on and look.frames == 3
    t.stop("a")
    assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3


# ---------------------------------------------------------------------- a thread tool


def test_a_thread_tools_leak_is_found_by_its_site_and_what_grew(kernel, no_tracing, wait_until):
    pid = kernel.spawn("mem_leaker")
    wait_until(lambda: kernel.info(pid).progress.current_step > 0)
    first = kernel.debug_memory(pid)
    assert first.where == "thread" and first.look.started_now and tracemalloc.is_tracing()
    assert first.files == (TOOLS,)
    wait_until(progressed(kernel, pid, 10))
    grown = kernel.debug_memory(pid, diff=True)
    assert grown.look.diff and grown.look.previous_age is not None
    site = leak_site(grown.look)
    assert site is not None and site.source.endswith("# the leak")
    assert grown.look.sites[0] == site  # what grew most: 10 blocks of 10 kB a tick
    assert site.size_diff >= 10 * 10 * 10_000 and site.count_diff >= 100
    assert grown.look.size_diff > 0
    # Allocations by other code (this test's thread, another file) are not the process's.
    ballast = [bytearray(50_000) for _ in range(100)]  # noqa: F841 - 5 MB held by the test, not the tool
    again = kernel.debug_memory(pid, diff=True)
    assert again.look.size_diff < 5_000_000
    kernel.kill(pid)
    kernel.wait([pid], timeout=WAIT)
    wait_until(lambda: not tracemalloc.is_tracing(), message="tracing to stop with the process")
    assert kernel.memory.traced(pid) == ()


def test_dump_and_stop_restore_the_state_tracing_was_found_in(kernel, no_tracing, tmp_path, wait_until):
    pid = kernel.spawn("mem_leaker")
    kernel.debug_memory(pid)
    wait_until(progressed(kernel, pid, 3))
    dump = tmp_path / "leak.snapshot"
    report = kernel.debug_memory(pid, dump=str(dump), stop=True)
    assert report.stopped and report.look.dump == str(dump)
    assert not tracemalloc.is_tracing()
    snapshot = tracemalloc.Snapshot.load(str(dump))
    mine = snapshot.filter_traces([tracemalloc.Filter(True, TOOLS, all_frames=True)])
    assert any(s.traceback[-1].lineno == memory_tools.LEAK_LINE for s in mine.statistics("traceback"))
    assert not kernel.stop_memory_trace(pid)  # nothing left to stop
    kernel.kill(pid)
    kernel.wait([pid], timeout=WAIT)


def test_two_processes_of_the_same_tool_are_said_to_share_the_count(kernel, no_tracing, wait_until):
    a = kernel.spawn("mem_leaker")
    b = kernel.spawn("mem_leaker")
    wait_until(lambda: kernel.info(b).progress.current_step > 0)
    report = kernel.debug_memory(a)
    assert any(f"also counts {b:03d}" in n for n in report.notes)
    kernel.kill(a)
    kernel.kill(b)
    kernel.wait([a, b], timeout=WAIT)


def test_what_cannot_be_traced_says_why(kernel, no_tracing, wait_until):
    shell = kernel.spawn("shell", cmd="sleep 30")
    wait_until(lambda: kernel.info(shell).subprocess_pid)
    with pytest.raises(LlmunixError, match="external command: tracemalloc traces Python code only"):
        kernel.debug_memory(shell)
    kernel.kill(shell)
    done = kernel.spawn("echo", text="hi")
    kernel.wait([done, shell], timeout=WAIT)
    with pytest.raises(LlmunixError, match="has finished; memory is traced only while it runs"):
        kernel.debug_memory(done)
    with pytest.raises(LlmunixError, match="no process 999"):
        kernel.debug_memory(999)
    assert not tracemalloc.is_tracing()


# ---------------------------------------------------------------------- an isolated tool


def test_an_isolated_tool_is_traced_in_its_worker_and_llmunix_pays_nothing(kernel, no_tracing, wait_until):
    pid = kernel.spawn("mem_leaker_iso")
    wait_until(lambda: kernel.info(pid).progress.current_step > 0)
    first = kernel.debug_memory(pid)
    assert first.where == "isolated" and first.look.started_now
    assert not tracemalloc.is_tracing()  # llmunix's own process is not traced
    wait_until(progressed(kernel, pid, 10))
    grown = kernel.debug_memory(pid, diff=True)
    site = leak_site(grown.look)
    assert site is not None and site.size_diff >= 10 * 10 * 10_000
    kernel.pause(pid)
    wait_phase(kernel, pid, "paused")
    with pytest.raises(LlmunixError, match="is paused: SIGSTOP holds its worker, which cannot answer; resume it"):
        kernel.memory.memory(pid, diff=True)
    kernel.resume(pid)
    assert kernel.debug_memory(pid, stop=True).stopped
    kernel.kill(pid)
    kernel.wait([pid], timeout=WAIT)


def test_a_question_to_an_isolated_process_just_started_waits_for_its_worker(kernel, no_tracing):
    # Running, but its worker is still being handed over (or the pool itself is starting, the
    # session's first isolated run): the look waits for it instead of failing.
    pid = kernel.spawn("mem_leaker_iso")
    wait_phase(kernel, pid, "running")
    report = kernel.debug_memory(pid, stop=True)
    assert report.where == "isolated"
    kernel.kill(pid)
    kernel.wait([pid], timeout=WAIT)


# ---------------------------------------------------------------------- profile --memory


def test_profile_memory_lists_what_the_window_allocated_and_suggests_a_leak_hunt(kernel, no_tracing):
    pid = kernel.spawn("mem_leaker", decode=True)
    report = kernel.profile(pid, 1.5, memory=True)
    assert report.allocations is not None and leak_site(report.allocations) is not None
    assert report.allocations.size_diff > 1_000_000
    rules = {s.rule for s in report.suggestions}
    assert "memory-growth" in rules
    assert not tracemalloc.is_tracing()  # the window's tracing ended with it
    data = report.to_dict()
    assert data["allocations"]["sites"] and "suggestions" in data
    kernel.kill(pid)
    kernel.wait([pid], timeout=WAIT)


# ---------------------------------------------------------------------- the command


def test_debug_memory_command_plain_diff_json_and_errors(sh: Session, no_tracing, wait_until):
    pid = sh.kernel.spawn("mem_leaker")
    wait_until(lambda: sh.kernel.info(pid).progress.current_step > 0)
    text = sh.ok(f"debug {pid:03d} memory")
    assert f"Memory of Process {pid:03d} (mem_leaker):" in text
    assert "tracemalloc in llmunix (a thread tool), 10 frames, started now" in text
    assert "tracing began just now" in text
    wait_until(progressed(sh.kernel, pid, 5))
    text = sh.ok(f"debug {pid:03d} mem --diff --top 3")
    assert "GROWTH" in text and f"memory_tools.py:{memory_tools.LEAK_LINE}" in text and "# the leak" in text
    data = json.loads(sh.ok(f"debug {pid:03d} memory --json"))
    assert data["where"] == "thread" and data["sites"] and data["files"] == [TOOLS]
    assert "bad --top '0'" in sh.bad(f"debug {pid:03d} memory --top 0")
    sh.ok(f"debug {pid:03d} memory --stop")
    assert not tracemalloc.is_tracing()
    sh.ok(f"kill {pid:03d}")


def test_debug_memory_end_to_end_through_the_executable(tmp_path):
    script = tmp_path / "s.llmunix"
    script.write_text("run mem_leaker seconds=30\nrun sleep seconds=0.3\nwait 002\ndebug 001 memory\n"
                      "run sleep seconds=0.5\nwait 003\ndebug 001 memory --diff --top 5\nkill 001\n")
    r = subprocess.run([LLMUNIX, "--home", str(tmp_path / "home"), "--tools", "tests.memory_tools", str(script)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert "Memory of Process 001 (mem_leaker):" in r.stdout
    assert "Grew: +" in r.stdout and f"memory_tools.py:{memory_tools.LEAK_LINE}" in r.stdout


def test_an_isolated_tools_memory_its_dump_and_profile_memory_end_to_end(tmp_path):
    dump = tmp_path / "iso.snap"
    script = tmp_path / "s.llmunix"
    script.write_text("run mem_leaker_iso seconds=30\nrun mem_leaker seconds=30\nrun sleep seconds=0.5\nwait 003\n"
                      f"debug 001 memory --dump {dump}\nrun sleep seconds=0.5\nwait 004\n"
                      "debug 001 memory --diff --top 3\nprofile 002 --memory --duration 1s\nkill 001 002\n")
    r = subprocess.run([LLMUNIX, "--home", str(tmp_path / "home"), "--tools", "tests.memory_tools", str(script)],
                       capture_output=True, text=True, timeout=90,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Memory of Process 001 (mem_leaker_iso):" in out and "in its worker" in out
    assert f"memory_tools.py:{memory_tools.LEAK_LINE}" in out.split("Memory of Process 001", 2)[2]  # the --diff look
    snap = tracemalloc.Snapshot.load(str(dump))  # what the worker wrote: a snapshot tracemalloc reads
    assert snap.traces is not None
    profiled = out.split("Profiling Process 002", 1)[1]
    assert "├── Allocations: +" in profiled and "GROWTH" in profiled
    assert "memory-growth: its live allocations grew by" in profiled


def test_debug_memory_bad_input_end_to_end_one_line_and_a_failing_status(tmp_path):
    for n, (line, says) in enumerate((
            ("debug 099 memory", "debug: no process 099; `ps -a` lists them"),
            ("debug 001 memory --top 0", "debug: debug PID memory: argument --top: bad --top '0'; give 1 to 1000"),
            ("debug 001 memory --frames 500", "debug: debug PID memory: argument --frames: bad --frames '500'"),
            ("profile 099 --memory", "profile: no process 099"))):
        r = subprocess.run([LLMUNIX, "--home", str(tmp_path / f"home{n}"), "-c", "run sleep seconds=5", "-c", line],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
        errors = [x for x in r.stderr.splitlines() if not x.startswith("llmunix: ")]  # (the sleep interrupted)
        assert r.returncode != 0 and len(errors) == 1 and errors[0].startswith(says), r.stderr
