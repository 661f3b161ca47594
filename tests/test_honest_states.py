"""What a user sees is what happens (issue 16 items 1, 2 and 5; issue 19 item 8): states that do
not hide preemption or waiting, a `wait` that reports as it goes and never hangs on a paused
process, an exit status that counts failures that happened before `wait`, and an interrupted
process that `kill` dismisses. Through the real executable."""

from __future__ import annotations

import json
import os
import subprocess
import threading

from conftest import LLMUNIX, WAIT, wait_phase

from llmunix import Kernel, ProcessContext


def llmunix(*commands: str, home, extra: tuple[str, ...] = (), timeout: float = 60) -> subprocess.CompletedProcess:
    args = [LLMUNIX, "--home", str(home), *extra]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1"})


def test_a_preempted_process_says_preempted_and_only_slot_holders_say_running(tmp_path):
    """The issue's repro, driven line by line on stdin: `ps --json` is asked again until the low
    sleep has been preempted by the critical one; no listing ever shows two Running rows."""
    proc = subprocess.Popen([LLMUNIX, "--home", str(tmp_path), "--max-running", "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        for line in ("run sleep seconds=5 --priority low", "run sleep seconds=0.3",
                     "run sleep seconds=3 --priority critical"):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip().isdigit()
        seen = set()
        for _ in range(200):  # each round trip is a real `ps` of the real shell
            proc.stdin.write("ps --json\n")
            proc.stdin.flush()
            text = ""
            while not text.rstrip().endswith("]"):
                chunk = proc.stdout.readline()
                assert chunk, proc.stderr.read()
                text += chunk
            states = {row["process_id"]: row["state"] for row in json.loads(text)}
            assert list(states.values()).count("running") <= 1, states
            seen.add(states["001"])
            if states["001"] == "preempted":
                break
        assert "preempted" in seen, seen
    finally:
        proc.kill()
        proc.wait(timeout=WAIT)


def test_the_kernel_never_shows_more_running_than_slots(make_kernel, make_gate):
    k = make_kernel(max_running=1, time_slice=0.01, aging_interval=0)
    gates = [make_gate() for _ in range(3)]
    pids = [k.spawn(g.tool, priority=level) for g, level in zip(gates, ["low", "normal", "critical"], strict=True)]
    for _ in range(50):
        shown = [i.display_state for i in k.ps()]
        assert shown.count("Running") <= 1, shown
    for g in gates:
        g.open()
    assert [i.state for i in k.wait(pids, timeout=WAIT)] == ["Completed"] * 3


def test_a_waiting_tool_says_waiting_with_the_reason(make_kernel):
    started = threading.Event()

    def listener(ctx: ProcessContext) -> str:
        started.set()
        msg = ctx.recv(timeout=WAIT)
        return "" if msg is None else str(msg.body)

    k = make_kernel()
    pid = k.spawn(listener)
    assert started.wait(WAIT)
    wait_phase(k, pid, "waiting")
    info = k.info(pid)
    assert info.display_state == "Waiting" and "waiting for a message" in info.detail
    assert info.to_dict()["state"] == "waiting"
    k.send(pid, "hello")
    assert k.wait([pid], timeout=WAIT)[0].output == "hello"


def test_deadlocked_lock_waiters_say_deadlocked(tmp_path):
    k = Kernel(tmp_path / "home", monitor=False, kill_grace=0.3)
    try:
        a = k.spawn("hold-locks", names="x,y", seconds=30, step=0.2)
        b = k.spawn("hold-locks", names="y,x", seconds=30, step=0.2)
        deadline = threading.Event()
        for _ in range(int(WAIT / 0.05)):
            shown = {k.info(a).display_state, k.info(b).display_state}
            if "Deadlocked" in shown:
                break
            deadline.wait(0.05)
        assert "Deadlocked" in shown, (k.info(a).detail, k.info(b).detail)
    finally:
        k.shutdown(interrupt=False)


def test_a_script_that_pauses_a_process_then_waits_ends_and_says_why(tmp_path):
    r = llmunix("run sleep seconds=60", "run sleep seconds=0.2", "pause 1", "wait", home=tmp_path, timeout=30)
    assert r.returncode == 1
    assert "[002] sleep completed" in r.stdout
    assert "wait: stopped waiting for 001 (paused)" in r.stderr and "--include-paused" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_fail_then_wait_fails_every_time(tmp_path):
    for n in range(5):
        r = llmunix("run fail message=boom", "wait", home=tmp_path / str(n))
        assert r.returncode == 1, (n, r.stdout, r.stderr)
        assert "fail failed" in r.stdout and "1 of 1 processes did not complete: 001 Failed" in r.stderr


def test_wait_prints_each_end_when_it_happens_even_piped(tmp_path):
    proc = subprocess.Popen([LLMUNIX, "--home", str(tmp_path), "-c", "run sleep seconds=0.1", "-c",
                             "run sleep seconds=30", "-c", "wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        lines = []
        while not any(line.startswith("[001]") for line in lines):
            line = proc.stdout.readline()
            assert line, "llmunix ended before reporting 001"
            lines.append(line)
        assert proc.poll() is None, "the first end is reported while the second process still runs"
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT)


def test_killing_an_interrupted_process_dismisses_it_for_good(tmp_path):
    r = llmunix("run sleep seconds=60", home=tmp_path)  # the script ends: 001 is interrupted
    assert "interrupted 1 live process" in r.stderr
    r = llmunix("ps -a", home=tmp_path)
    assert "process(es) were interrupted" in r.stderr and "Interrupted" in r.stdout
    r = llmunix("kill 1", home=tmp_path)
    assert r.returncode == 0, r.stderr
    r = llmunix("ps -a --json", home=tmp_path)
    [row] = json.loads(r.stdout)
    assert row["state"] == "cancelled" and "were interrupted" not in r.stderr
