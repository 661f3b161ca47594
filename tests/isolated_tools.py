"""Tools for the isolation tests (`--tools tests.isolated_tools`). Each runs in a worker OS
process (isolation="process") unless a test says otherwise; they tell the test what happened
through files and their outputs, since they share no memory with it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from llmunix import ProcessContext
from llmunix.models import ToolError
from llmunix.tools.registry import tool


def _mark(path: str, text: str) -> None:
    """Write a file a test waits for, whole or not at all: a test that sees it exist must never
    read it empty (write_text creates the file before it writes)."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


@tool(name="iso_noop", isolation="process")
def iso_noop(ctx: ProcessContext) -> int:
    """Nothing: the cost of an isolated process's lifecycle."""
    return os.getpid()


@tool(name="thread_noop")
def thread_noop(ctx: ProcessContext) -> int:
    """Nothing, on a thread: the baseline."""
    return os.getpid()


@tool(name="iso_exit", isolation="process")
def iso_exit(ctx: ProcessContext, code: int = 3) -> None:
    """End the worker at once, as a crashing C extension would: no exception, no cleanup."""
    ctx.progress(1, 2, "about to exit")
    os._exit(code)


@tool(name="iso_signal", isolation="process")
def iso_signal(ctx: ProcessContext, sig: int = 9) -> None:
    """Kill the worker with a signal (9: as the OOM killer does)."""
    os.kill(os.getpid(), sig)
    time.sleep(5)


@tool(name="iso_alloc", isolation="process")
def iso_alloc(ctx: ProcessContext, mb: int = 200, seconds: float = 30.0, step: int = 0) -> int:
    """Hold `mb` megabytes (touched, so resident) for `seconds`; with `step`, grow by `step` MB
    a second up to `mb`."""
    blocks = []
    have = 0
    while have < mb:
        n = min(step or mb, mb - have)
        block = bytearray(n * 1_000_000)
        block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # every page touched: resident
        blocks.append(block)
        have += n
        ctx.progress(have, mb, f"{have} MB")
        if step:
            ctx.sleep(1.0)
    ctx.sleep(seconds)
    return have


@tool(name="iso_c_sleep", isolation="process")
def iso_c_sleep(ctx: ProcessContext, path: str, seconds: float = 60.0) -> str:
    """Write `path`.started, sleep in C (time.sleep: no control point, as a library call), then
    write `path`.done."""
    _mark(path + ".started", str(os.getpid()))
    time.sleep(seconds)
    Path(path + ".done").write_text("done")
    return "slept"


@tool(name="iso_spin", isolation="process")
def iso_spin(ctx: ProcessContext, seconds: float = 30.0) -> int:
    """Burn CPU without reaching a control point."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@tool(name="iso_fail", isolation="process")
def iso_fail(ctx: ProcessContext, how: str = "tool") -> None:
    """Fail the way `how` says: tool (ToolError, exit 5), value (ValueError), exit (sys.exit(4))."""
    if how == "tool":
        raise ToolError("bad input, isolated", exit_code=5)
    if how == "value":
        raise ValueError("not a number")
    raise SystemExit(4)


@tool(name="iso_print", isolation="process")
def iso_print(ctx: ProcessContext, text: str = "hello") -> str:
    """Print to stdout and stderr: both lines go to the process log."""
    print(f"out: {text}", flush=True)
    os.write(2, f"err: {text}\n".encode())
    return text


@tool(name="iso_ctx", isolation="process")
def iso_ctx(ctx: ProcessContext, peer: int = 0) -> dict:
    """Use the ctx API from a worker: progress, log, set_state, checkpoint, spawn and wait, the
    blackboard, a lock, a buffer, an event, and messages (with `peer`, a process to talk to)."""
    ctx.set_state("Running", "exercising ctx")
    ctx.progress(1, 4, "starting")
    ctx.log("a log line from the worker")
    v1 = ctx.checkpoint({"step": 1})
    child = ctx.spawn("echo", text="from an isolated parent")
    [info] = ctx.wait([child])
    ctx.shared["iso"] = {"pid": ctx.pid}
    version = ctx.shared.update("iso_count", lambda n: (n or 0) + 1, default=0)
    with ctx.lock("iso-lock") as held:
        locked = bool(held.held)
    buf = ctx.buffer("iso-buf", 16)
    buf[0:5] = b"hello"
    ctx.emit("iso.done", {"child": child})
    reply = None
    if peer:
        ctx.send(peer, {"from": ctx.pid})
        msg = ctx.recv(timeout=10)
        reply = msg.body if msg is not None else None
    ctx.progress(4, 4, "done")
    return {"v1": v1, "child_state": info.state, "child_output": info.output, "shared": ctx.shared.get("iso"),
            "count_version": version, "locked": locked, "buffer": bytes(buf.read(5)).decode(), "reply": reply,
            "parent": ctx.parent, "os_pid": os.getpid(), "priority": ctx.priority.label}


@tool(name="ctx_echo_back")
def ctx_echo_back(ctx: ProcessContext) -> dict:
    """On a thread: receive one message and answer its sender."""
    msg = ctx.recv(timeout=10)
    if msg is None:
        raise ToolError("no message")
    ctx.send(msg.sender, {"echo": msg.body})
    return msg.body


@tool(name="iso_shell_tree", isolation="process")
def iso_shell_tree(ctx: ProcessContext, seconds: float = 60.0) -> int:
    """Start a child and a grandchild from the worker and wait (they are in its group)."""
    child = ctx.popen(f"sleep {seconds} & sleep {seconds}", shell=True)
    return child.wait()


@tool(name="iso_ignore_term", isolation="process")
def iso_ignore_term(ctx: ProcessContext, path: str) -> None:
    """Ignore SIGTERM (as a careless library might), say so in `path`, and sleep in C."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(path, str(os.getpid()))
    time.sleep(60)


@tool(name="iso_nice")
def iso_nice(ctx: ProcessContext) -> int:
    """This process's nice value (isolation comes from the caller or the configuration)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def make_closure_tool():
    """A tool defined inside a function: no other process can import it."""

    def inner(ctx: ProcessContext) -> str:
        return "closure"

    return inner


@tool(name="iso_recv", isolation="process")
def iso_recv(ctx: ProcessContext, path: str) -> object:
    """Write this worker's pid to `path`, then wait for a message: llmunix waits for it, off-slot."""
    _mark(path, str(os.getpid()))
    ctx.checkpoint({"waiting": True})  # resumable: `recover` runs it again
    msg = ctx.recv()
    return msg.body if msg is not None else None
