"""`debug` (stack, locals, child process) and `profile` (sampling profiler, exports): the
engine's records and the shell commands, on real threads and subprocesses."""

from __future__ import annotations

import json
import re
import sys
import threading

import pytest
from conftest import PROMPT, Session, close_prompt, skip_unless_ci, spawn_prompt

from llmunix import ProcessContext
from llmunix.observe import pyspy
from llmunix.observe.debug import is_engine_file


def known_blocking_function(ctx: ProcessContext, gate: threading.Event, entered: threading.Event) -> str:
    known_variable = "needle-42"
    api_key = "hunter2-very-secret"  # noqa: S105 - a secret-named local, to be redacted
    entered.set()
    while not gate.is_set():
        ctx.sleep(0.01)
    return known_variable + api_key[:0]


def blocked_tool(gate: threading.Event, entered: threading.Event):
    def outer_tool(ctx: ProcessContext) -> str:
        return known_blocking_function(ctx, gate, entered)

    return outer_tool


def hot_function(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cold_function() -> int:
    return sum(range(10))


def busy_tool(stop: threading.Event, entered: threading.Event):
    def busy(ctx: ProcessContext) -> str:
        entered.set()
        while not stop.is_set():
            hot_function(20_000)
            cold_function()
            ctx.check()
        return "done"

    return busy


@pytest.fixture
def blocked(kernel):
    gate, entered = threading.Event(), threading.Event()
    pid = kernel.spawn(blocked_tool(gate, entered), name="blocked")
    assert entered.wait(10)
    yield pid
    gate.set()
    kernel.wait([pid], timeout=10)


@pytest.fixture
def busy(kernel):
    stop, entered = threading.Event(), threading.Event()
    pid = kernel.spawn(busy_tool(stop, entered), name="busy")
    assert entered.wait(10)
    yield pid
    stop.set()
    kernel.wait([pid], timeout=10)


# ---------------------------------------------------------------------- debug: the engine


def test_stack_names_the_known_function_with_its_locals_and_redacts_secrets(kernel, blocked):
    d = kernel.debug_info(blocked)
    assert d.reason == ""
    names = [f.function for f in d.stack]
    assert names == ["outer_tool", "known_blocking_function"]  # the tool's frames only, innermost last
    assert not any(is_engine_file(f.file) for f in d.stack)
    inner = d.stack[-1]
    assert inner.file.endswith("test_debug_profile.py") and inner.line > 0
    assert inner.locals["known_variable"] == "'needle-42'"
    assert inner.locals["api_key"] == "***"
    assert "hunter2" not in json.dumps(d.to_dict())
    assert d.thread_backed and d.child is None


def test_long_reprs_are_truncated(kernel):
    entered, gate = threading.Event(), threading.Event()

    def long_local(ctx: ProcessContext) -> None:
        big = "x" * 10_000  # noqa: F841 - inspected by the test
        entered.set()
        while not gate.is_set():
            ctx.sleep(0.01)

    pid = kernel.spawn(long_local)
    assert entered.wait(10)
    try:
        value = kernel.debug_info(pid).stack[-1].locals["big"]
        assert len(value) <= 80 and value.endswith("…")
    finally:
        gate.set()
        kernel.wait([pid], timeout=10)


def test_finished_process_has_no_stack_and_says_so(kernel):
    pid = kernel.spawn("echo", text="hi")
    kernel.wait([pid], timeout=10)
    d = kernel.debug_info(pid)
    assert d.stack == () and "finished" in d.reason


# ---------------------------------------------------------------------- profile: the engine


def test_profiler_finds_the_hot_function(kernel, busy):
    report = kernel.profile(busy, duration=1.0, interval=0.005)
    assert report.samples >= 20 and report.ended_by == "duration"
    top = report.hotspots[0]
    assert top.function == "hot_function", report.hotspots
    assert top.self_share > 0.5
    busy_spot = next(h for h in report.hotspots if h.function == "busy")
    assert busy_spot.inclusive == 1.0 and busy_spot.self_share < 0.5


def test_exports_collapsed_and_speedscope(kernel, busy):
    stop = threading.Event()
    ticks: list[int] = []

    def on_tick(elapsed: float, samples: int) -> None:
        ticks.append(samples)
        if samples >= 15:
            stop.set()  # stops early, and the report is still made

    report = kernel.profile(busy, duration=30, interval=0.005, stop=stop, on_tick=on_tick)
    assert report.ended_by == "stopped" and report.samples >= 15 and ticks
    lines = report.collapsed()
    assert lines
    for line in lines:
        assert re.fullmatch(r"[^ ]+( [0-9]+)", line), line
        assert line.split(";")[0].startswith("busy@")
    assert sum(int(x.rsplit(" ", 1)[1]) for x in lines) == report.samples
    assert any("hot_function@test_debug_profile.py:" in x for x in lines)
    doc = json.loads(json.dumps(report.speedscope()))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    profile = doc["profiles"][0]
    assert profile["type"] == "sampled" and profile["unit"] == "milliseconds"
    assert len(profile["samples"]) == len(profile["weights"]) == report.samples
    assert profile["startValue"] == 0 and profile["endValue"] >= 0
    assert all(0 <= i < len(frames) for s in profile["samples"] for i in s)
    assert {"hot_function", "busy"} <= {f["name"] for f in frames}


def test_profile_ends_with_the_process(kernel):
    entered, release = threading.Event(), threading.Event()
    pid = kernel.spawn(busy_tool(release, entered))
    assert entered.wait(10)

    def tick(elapsed: float, samples: int) -> None:
        if samples >= 5:
            release.set()  # the tool returns; the profiler notices its end

    report = kernel.profile(pid, duration=30, interval=0.005, on_tick=tick)
    assert report.ended_by == "process ended" and report.samples >= 5


# ---------------------------------------------------------------------- through the shell


def test_debug_command_prints_the_seed_tree(sh, blocked):
    out = sh.ok(f"debug {blocked}")
    lines = out.splitlines()
    assert lines[0] == f"Debugging Process {blocked:03d} (blocked):"
    assert "├── Current State: Running" in lines
    assert "├── Stack Trace: outer_tool() → known_blocking_function()" in lines
    variables = next(x for x in lines if x.startswith("├── Variables: "))
    assert "known_variable='needle-42'" in variables and "api_key=***" in variables
    assert lines[-1].startswith("└── ")
    assert "\x1b[" not in out  # piped: no colour
    assert re.search(r"known_blocking_function\(\) \(test_debug_profile\.py:\d+\)", sh.ok(f"debug {blocked} --lines"))
    data = json.loads(sh.ok(f"debug {blocked} --json"))
    assert data["stack"][-1]["function"] == "known_blocking_function"


def test_debug_command_errors_and_finished_process(sh):
    assert sh.bad("debug 999") == "debug: no process 999; `ps -a` lists them"
    assert "bad PID" in sh.bad("debug abc")
    pid = sh.kernel.spawn("echo", text="hi")
    sh.kernel.wait([pid], timeout=10)
    assert "├── Stack Trace: none: the process has finished (Completed)" in sh.ok(f"debug {pid}")


def test_debug_shows_a_subprocess_tools_command_line(sh, wait_until):
    pid = sh.kernel.spawn("shell", cmd="sleep 5")
    try:
        wait_until(lambda: sh.kernel.info(pid).subprocess_pid, message="the child to start")
        out = sh.ok(f"debug {pid}")
        command = next(x for x in out.splitlines() if x.startswith("├── Command: "))
        assert "sleep 5" in command
        assert any(x.startswith("├── Status: ") for x in out.splitlines())
        assert "Open files:" in out and "Connections:" in out
    finally:
        sh.kernel.kill(pid)
        sh.kernel.wait([pid], timeout=10)


def test_profile_command_reports_and_exports(sh, busy, tmp_path):
    folded, speed = tmp_path / "out.folded", tmp_path / "prof.json"
    out = sh.ok(f"profile {busy} --duration 500ms --interval 5ms --output {folded}")
    lines = out.splitlines()
    assert lines[0] == f"Profiling Process {busy:03d} for 0.5 seconds..."
    assert any(x.startswith("├── CPU Usage: ") for x in lines)
    assert any(x.startswith("├── I/O Operations: ") for x in lines)
    assert "├── Network: n/a for thread tools (they share llmunix's own connections)" in lines
    hot = next(x for x in lines if x.startswith("└── Hotspots: "))
    assert hot.startswith("└── Hotspots: hot_function() ")
    assert re.search(r"^hot_function\(\)\s+test_debug_profile\.py:\d+\s+\d+\.\d%\s+\d+\.\d%$", out, re.M)
    assert f"Wrote collapsed stacks to {folded}" in out
    assert all(re.fullmatch(r"[^ ]+( [0-9]+)", x) for x in folded.read_text().splitlines())

    sh.ok(f"profile {busy} -d 200ms -i 5ms -o {speed}")
    assert json.loads(speed.read_text())["profiles"][0]["type"] == "sampled"
    data = json.loads(sh.ok(f"profile {busy} -d 200ms -i 5ms --json"))
    assert data["samples"] > 0 and data["hotspots"][0]["function"] == "hot_function"


def test_profile_command_rejects_bad_input(sh, busy):
    assert "bad duration 'abc'" in sh.bad(f"profile {busy} --duration abc")
    assert "must be more than 0" in sh.bad(f"profile {busy} --interval 0")
    assert sh.bad("profile 999") == "profile: no process 999; `ps -a` lists them"
    pid = sh.kernel.spawn("echo", text="hi")
    sh.kernel.wait([pid], timeout=10)
    assert "already finished" in sh.bad(f"profile {pid} -d 1s")


def test_profile_of_a_subprocess_tool_that_is_not_python(sh, wait_until):
    pid = sh.kernel.spawn("shell", cmd="sleep 5")
    try:
        wait_until(lambda: sh.kernel.info(pid).subprocess_pid, message="the child to start")
        out = sh.ok(f"profile {pid} -d 100ms")
        assert "its child is not a Python program, so its code is not sampled" in out
        assert "├── Network: 0 connections seen (0 open at the end, 0 at most at once)" in out
    finally:
        sh.kernel.kill(pid)
        sh.kernel.wait([pid], timeout=10)


PYTHON_CHILD = """
import socket, time
def hot_loop(n):
    t = 0
    for i in range(n):
        t += i * i
    return t
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print("ready", flush=True)
end = time.time() + 30
while time.time() < end:
    hot_loop(20000)
"""


@pytest.fixture
def python_child(sh, tmp_path, wait_until):
    script = tmp_path / "child.py"
    script.write_text(PYTHON_CHILD)
    pid = sh.kernel.spawn("shell", cmd=f"{sys.executable} {script}")
    wait_until(lambda: any(line == "ready" for _t, line in sh.kernel.logs(pid)), message="the child to listen")
    yield pid
    sh.kernel.kill(pid)
    sh.kernel.wait([pid], timeout=10)


@pytest.fixture
def py_spy() -> str:
    """py-spy as llmunix finds it; its absence skips the test, or fails it in CI."""
    path = pyspy.py_spy_path()
    if path is None:
        skip_unless_ci("py-spy is not on PATH: pip install 'llmunix[dev]' (or 'llmunix[profile]')")
    return path


def test_a_python_subprocess_is_sampled_with_py_spy(sh, py_spy, python_child):
    out = sh.ok(f"profile {python_child} -d 1s")
    if "ptrace is not permitted" in out:  # the report said so in one line
        skip_unless_ci("py-spy may not attach here (ptrace)")
    assert "the stacks are its Python child's" in out and "sampled by py-spy" in out
    assert "└── Hotspots: hot_loop() " in out
    share = re.search(r"^hot_loop\(\)\s+child\.py:3\s+(\d+\.\d)%", out, re.M)
    assert share and float(share.group(1)) >= 50  # nearly all; a loaded machine may catch it starting up
    assert "├── Network: 1 connection seen (1 open at the end, 1 at most at once)" in out
    data = json.loads(sh.ok(f"profile {python_child} -d 300ms --json"))
    assert data["sampler"] == "py-spy" and data["network"]["connections_open"] == 1
    child_stack = next(x for x in sh.ok(f"debug {python_child}").splitlines() if x.startswith("├── Child Stack: "))
    assert "<module>() → hot_loop()" in child_stack and "by py-spy" in child_stack


def test_when_py_spy_may_not_attach_the_report_says_so_and_falls_back(sh, python_child, monkeypatch, tmp_path):
    fake = tmp_path / "py-spy"  # a py-spy refused by the system, as under a strict ptrace_scope
    fake.write_text("#!/bin/sh\necho 'Error: Failed to open process - Operation not permitted (os error 1)' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(pyspy, "py_spy_path", lambda: str(fake))
    out = sh.ok(f"profile {python_child} -d 200ms")
    assert "subprocess tool: py-spy cannot attach: ptrace is not permitted here" in out
    assert "the stacks are the tool thread's" in out and "_wait()" in out
    assert "├── Child Stack: none: py-spy cannot attach: ptrace is not permitted" in sh.ok(f"debug {python_child}")


def test_without_py_spy_the_reports_say_so(sh, python_child, monkeypatch):
    monkeypatch.setattr(pyspy, "PY_SPY", "no-such-py-spy")
    out = sh.ok(f"profile {python_child} -d 200ms")
    assert "subprocess tool: py-spy not installed (`pip install py-spy` samples its Python child)" in out
    assert "├── Child Stack: none: py-spy not installed" in sh.ok(f"debug {python_child}")


def test_profile_on_a_tty_shows_progress_and_reports(kernel, capsys, busy):
    tty = Session(kernel, capsys, tty=True)
    out = tty.ok(f"profile {busy} -d 300ms -i 5ms")
    assert "Hotspots" in out and "hot_function()" in out


def test_profile_in_a_pty_stops_on_ctrl_c_and_still_reports(tmp_path):
    child = spawn_prompt(tmp_path / "home")
    try:
        child.sendline("run spin seconds=60")
        child.expect(r"001\r\n")
        child.expect(PROMPT)
        child.sendline("profile 001 --duration 60s")
        child.expect(r"Profiling Process 001 for 60 seconds\.\.\.")
        child.expect(r"[1-9]\d* samples")  # the live bar counts samples
        child.sendintr()
        child.expect(r"stopped early")
        child.expect(r"Hotspots:[^\n]*spin\(\)")
        child.expect(PROMPT)
        child.sendline("kill 001")
        child.expect(PROMPT)
    finally:
        close_prompt(child)
