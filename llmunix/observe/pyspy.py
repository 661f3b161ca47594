"""Looking inside a subprocess tool's Python child with py-spy (optional: used when installed).

A subprocess tool's own thread only waits for its child, so its stack says nothing about where the
child spends its time. When the child (or one of its descendants: `sh -c "python x.py"`) is a
Python program and `py-spy` is on PATH, `debug` shows its stack (`py-spy dump`) and `profile`
samples it (`py-spy record --format raw`, flamegraph.pl's collapsed format, aggregated by function).
py-spy attaches with ptrace; where that is not permitted it fails, and the reports say so in one
line and fall back to what psutil and the monitor can tell.

Also here: the child tree's network connections over a profile window (psutil), for the report's
`Network` line. Bytes transferred are not measurable per process on Linux without privileges.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llmunix.lazy import lazy_module
from llmunix.observe.debug import FrameId, StackFrame
from llmunix.reaper import die_with_parent

psutil = lazy_module("psutil")  # imported when first used: start-up does not need it

PY_SPY = "py-spy"
DUMP_TIMEOUT = 5.0
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>.*):(?P<line>\d+)\)$")
_DUMP_FRAME = re.compile(r"^\s+(?P<name>.+?) \((?P<file>[^()]*):(?P<line>\d+)\)\s*$")
_PTRACE = ("permission denied", "operation not permitted", "ptrace", "eperm")


def py_spy_path() -> str | None:
    return shutil.which(PY_SPY)


def python_target(child_pid: int) -> psutil.Process | None:
    """The first Python program in a child's process tree (the child itself, else the shallowest
    descendant), or None."""
    try:
        root = psutil.Process(child_pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    for p in tree:
        try:
            names = [p.name(), *(p.cmdline()[:1])]
        except psutil.Error:
            continue
        if any(os.path.basename(n).startswith("python") for n in names if n):
            return p
    return None


def explain_failure(stderr: str, code: int | None) -> str:
    """One line for a failed py-spy run."""
    text = stderr.strip()
    first = next((line.strip() for line in text.splitlines() if line.strip().lower().startswith("error")), "")
    if not first:
        first = next((line.strip() for line in text.splitlines() if line.strip()), f"exit status {code}")
    if any(word in text.lower() for word in _PTRACE):
        return ("py-spy cannot attach: ptrace is not permitted here (run llmunix as root, give py-spy "
                "CAP_SYS_PTRACE, or set /proc/sys/kernel/yama/ptrace_scope to 0)")
    return f"py-spy failed: {first.removeprefix('Error: ')}"


# ---------------------------------------------------------------------- dump (debug)


@dataclass(frozen=True, slots=True)
class ChildStack:
    pid: int | None  # the Python process dumped
    frames: tuple[StackFrame, ...] = ()  # outermost first
    note: str = ""  # why there are none, or what went wrong


def dump(child_pid: int) -> ChildStack:
    """The main thread's stack of the Python program in a child's tree, by `py-spy dump`."""
    exe = py_spy_path()
    target = python_target(child_pid)
    if target is None:
        return ChildStack(None, (), "")
    if exe is None:
        return ChildStack(target.pid, (), "py-spy not installed (`pip install py-spy` shows the Python child's stack)")
    try:
        r = subprocess.run([exe, "dump", "--pid", str(target.pid)], capture_output=True, text=True,  # noqa: S603
                           timeout=DUMP_TIMEOUT, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        return ChildStack(target.pid, (), f"py-spy dump did not answer within {DUMP_TIMEOUT:g}s")
    except OSError as exc:
        return ChildStack(target.pid, (), f"py-spy failed: {exc.strerror or exc}")
    if r.returncode != 0:
        return ChildStack(target.pid, (), explain_failure(r.stderr, r.returncode))
    return ChildStack(target.pid, parse_dump(r.stdout))


def parse_dump(text: str) -> tuple[StackFrame, ...]:
    """The first thread's frames from `py-spy dump` output (innermost first there), outermost first."""
    frames: list[StackFrame] = []
    seen_thread = False
    for line in text.splitlines():
        if line.startswith("Thread "):
            if seen_thread:
                break
            seen_thread = True
            continue
        m = _DUMP_FRAME.match(line)
        if seen_thread and m:
            frames.append(StackFrame(m["name"], m["file"], int(m["line"])))
    return tuple(reversed(frames))


# ---------------------------------------------------------------------- record (profile)


class Recording:
    """A `py-spy record` running over a profile window; `finish()` stops it and parses its samples."""

    def __init__(self, target: psutil.Process, exe: str, interval: float) -> None:
        self.target_pid = target.pid
        self.interval = interval
        fd, self.path = tempfile.mkstemp(prefix="llmunix-pyspy-", suffix=".txt")
        os.close(fd)
        rate = max(1, min(1000, round(1 / interval)))
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed command line
            [exe, "record", "--pid", str(target.pid), "--rate", str(rate), "--format", "raw", "--function",
             "--full-filenames", "--nonblocking", "--subprocesses", "--output", self.path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=die_with_parent)  # (the thread that profiles outlives it)

    def finish(self) -> tuple[list[tuple[tuple[FrameId, ...], int]], str]:
        """Stop recording (SIGINT: py-spy then writes its file). Returns (stacks with sample
        counts, note); the note is non-empty when py-spy failed."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                _out, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _out, err = self.proc.communicate()
                return [], "py-spy did not stop within 10s"
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                text = ""
            stacks = parse_collapsed(text.splitlines())
            if not stacks:
                if self.proc.returncode not in (0, None) or "error" in err.lower():
                    return [], explain_failure(err, self.proc.returncode)
                return [], "py-spy recorded no samples"
            return stacks, ""
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def parse_collapsed(lines: Iterable[str]) -> list[tuple[tuple[FrameId, ...], int]]:
    """py-spy's raw output (`a (f.py:1);b (f.py:5) 12`) as (stack of FrameIds, count). Frames that
    are not Python functions (py-spy's `process 123:"..."` prefix with --subprocesses) are left out."""
    stacks: list[tuple[tuple[FrameId, ...], int]] = []
    for line in lines:
        line = line.rstrip()
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        ids: list[FrameId] = []
        for part in stack_text.split(";"):
            m = _FRAME.match(part)
            if m:
                ids.append((m["name"], m["file"], int(m["line"])))
        if ids:
            stacks.append((tuple(ids), int(count)))
    return stacks


# ---------------------------------------------------------------------- network


@dataclass
class NetworkWatch:
    """Connections of a child tree, sampled over a window (psutil)."""

    seen: set[tuple[Any, ...]] = field(default_factory=set)
    peak: int = 0
    last: int = 0
    samples: int = 0
    denied: bool = False

    def sample(self, child_pid: int) -> None:
        try:
            root = psutil.Process(child_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        now: set[tuple[Any, ...]] = set()
        for p in tree:
            try:
                for c in p.net_connections(kind="inet"):
                    now.add((p.pid, c.fd, c.laddr, c.raddr, c.type))
            except psutil.AccessDenied:
                self.denied = True
            except psutil.Error:
                continue
        self.samples += 1
        self.seen |= now
        self.peak = max(self.peak, len(now))
        self.last = len(now)
