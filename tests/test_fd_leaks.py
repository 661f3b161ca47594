"""File descriptors: a `shell` process closes the pipe it read its child's output from, so a
long-lived llmunix does not run out of descriptors (the issue: +1 fd per shell process, and
under `ulimit -n 1024` every run from ~994 on failed with "Too many open files")."""

from __future__ import annotations

import json
import os
import resource
import subprocess

from conftest import LLMUNIX, _wait_until

from llmunix import Kernel


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_shell_processes_give_their_descriptors_back(make_kernel):
    k: Kernel = make_kernel()
    [warm] = k.wait([k.spawn("shell", cmd="echo warm")], timeout=20)  # pools and threads made
    assert warm.state == "Completed"
    baseline = _fds()
    pids = [k.spawn("shell", cmd="echo out; echo err >&2") for _ in range(200)]
    assert {i.state for i in k.wait(pids, timeout=120)} == {"Completed"}
    _wait_until(lambda: _fds() <= baseline, message=f"fds back to {baseline} (now {_fds()})")


def test_the_llmunix_process_keeps_no_descriptor_per_shell_process(tmp_path):
    # Measured from inside: a shell process lists /proc/<llmunix>/fd before and after 300 others.
    count = 'run shell "cmd=ls /proc/$PPID/fd | wc -l"'
    script = "\n".join([count, "wait", *["run shell cmd=true"] * 300, "wait", count, "wait"]) + "\n"
    run = subprocess.run([LLMUNIX, "--home", str(tmp_path)], input=script, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    logs = subprocess.run([LLMUNIX, "--home", str(tmp_path), "-c", "log 1", "-c", "log 302"],
                          capture_output=True, text=True, timeout=60)
    before, after = (int(x) for x in logs.stdout.split())
    # A leak is one descriptor per process (300). A few may differ: `ls` can run before llmunix's
    # thread has closed its copies of the pipes it made for that very process (both ends of two),
    # and on a loaded machine more worker threads (each with its own store reader) may be alive.
    assert after <= before + 25, (before, after)


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_1200_shell_processes_all_complete_under_ulimit_n_256(tmp_path):
    script = "run shell cmd=true\n" * 1200 + "wait\n"
    run = subprocess.run([LLMUNIX, "--home", str(tmp_path)], input=script, capture_output=True, text=True,
                         timeout=600, preexec_fn=_low_fd_limit)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Too many open files" not in run.stderr
    listing = subprocess.run([LLMUNIX, "--home", str(tmp_path), "-c", "ps -a --json"], capture_output=True,
                             text=True, timeout=120)
    states = [r["state"] for r in json.loads(listing.stdout)]
    assert len(states) == 1200 and set(states) == {"completed"}, {s: states.count(s) for s in set(states)}
