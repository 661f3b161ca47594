"""Built-in tools. Their parameter names are part of the interface."""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections import deque

from llmunix.models import ToolError
from llmunix.process import ProcessContext, terminate_group
from llmunix.tools.registry import Seconds, tool

POLL = 0.05  # how often a subprocess tool reaches a control point while its child runs
OUTPUT_LIMIT = 64 * 1024


@tool(idempotent=True, remote=True, touches=())
def sleep(ctx: ProcessContext, seconds: Seconds = 1.0) -> float:
    """Sleep cooperatively, reporting progress every tick (a tenth of a second, at most 100 ticks).

    Args:
        seconds: how long to sleep (running time; time spent paused does not count)
    """
    ticks = max(1, min(100, math.ceil(seconds / 0.1)))
    # The reference resumable tool: a checkpoint every tick, and after a crash or a restart
    # `ctx.restored` is the last one, so it continues from the tick it had reached.
    done = (ctx.restored or {}).get("tick", 0)
    for i in range(done, ticks):
        ctx.sleep(seconds / ticks)
        ctx.progress(i + 1, ticks)
        ctx.checkpoint({"tick": i + 1})
    return seconds


@tool(touches=())
def spin(ctx: ProcessContext, seconds: Seconds = 1.0) -> int:
    """Burn CPU in a pure-Python loop that reaches no control point (tests kill escalation).

    Args:
        seconds: how long to spin
    """
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@tool(idempotent=True, remote=True, touches=())
def echo(ctx: ProcessContext, text: str) -> str:
    """Return the text (and write it to the process log).

    Args:
        text: what to echo
    """
    ctx.log(text)
    return text


@tool(remote=True, touches=())
def fail(ctx: ProcessContext, message: str = "failed on purpose") -> None:
    """Fail with the given message.

    Args:
        message: the error the process ends with
    """
    raise ToolError(message)


@tool(subprocess=True, remote=True, touches=("anything",))  # agents: only with allow_shell_tools
def shell(ctx: ProcessContext, cmd: str) -> str:
    """Run a shell command in its own process group; its output goes to the process log.

    Pause stops the whole group (SIGSTOP), resume continues it (SIGCONT), kill sends SIGTERM and
    then SIGKILL; the priority maps to the group's nice value. A non-zero exit fails the process
    with that exit status.

    Args:
        cmd: the command line, run by /bin/sh
    """
    child = ctx.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return collect_output(ctx, child)


def collect_output(ctx: ProcessContext, child: subprocess.Popen[bytes]) -> str:
    """Wait for a child started with `ctx.popen(..., stdout=PIPE)`, reaching a control point every
    POLL seconds; its output goes to the process log and the last OUTPUT_LIMIT bytes are returned.
    A non-zero exit raises ToolError with that exit status (shared by `shell` and markdown shell
    tools)."""
    tail: deque[str] = deque()
    size = 0
    lock = threading.Lock()

    def pump() -> None:
        nonlocal size
        assert child.stdout is not None
        # The reader owns the pipe and closes it at EOF: the Popen object lives on in the process
        # record (ps, retention), so nothing else ever would (one fd per shell process leaked).
        # Closing it from the waiting thread instead could block: a reader in readline() holds
        # the buffer's lock for as long as a grandchild keeps the pipe open.
        with child.stdout:
            for raw in iter(child.stdout.readline, b""):
                line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
                ctx.output(line)  # not ctx.log: this thread must not block on pause
                with lock:
                    tail.append(line)
                    size += len(line) + 1
                    while size > OUTPUT_LIMIT and tail:
                        size -= len(tail.popleft()) + 1

    reader = threading.Thread(target=pump, name=f"llmunix-output-{ctx.pid}", daemon=True)
    reader.start()
    try:
        while True:
            try:
                code = child.wait(timeout=POLL)
                break
            except subprocess.TimeoutExpired:
                ctx.check()
    finally:
        if child.poll() is None:
            terminate_group(child, ctx.kill_grace)
        reader.join(timeout=2)
    if code != 0:
        raise ToolError(f"exit status {code}" if code > 0 else f"killed by signal {-code}",
                        exit_code=code if code > 0 else 128 - code)
    with lock:
        return "\n".join(tail)


import llmunix.tools.files  # noqa: E402, F401 - the workspace file tools: read_file, write_file, list_files, grep
import llmunix.tools.research  # noqa: E402, F401 - registers web_fetch, summarize, analyze and report
