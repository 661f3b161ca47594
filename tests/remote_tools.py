"""Hidden remote tools for the dask backend tests. They run on Dask worker processes, which import
this module by name (`tests.remote_tools`): LocalCluster's workers inherit the test's sys.path.
They talk to the test through files, since they share no memory with it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from llmunix import ProcessContext
from llmunix.models import ToolError
from llmunix.tools.registry import tool


def _worker() -> dict:
    from distributed import get_worker

    w = get_worker()
    return {"worker": str(w.name), "address": w.address, "os_pid": os.getpid()}


@tool(name="rt_where", hidden=True, remote=True)
def rt_where(ctx: ProcessContext, seconds: float = 0.0, text: str = "") -> dict:
    """Sleep cooperatively, then say which worker ran it (and echo `text`)."""
    ctx.sleep(seconds)
    return {**_worker(), "text": text}


@tool(name="rt_ticks", hidden=True, remote=True)
def rt_ticks(ctx: ProcessContext, n: int = 5, delay: float = 0.0, db: str = "") -> dict:
    """`n` ticks, each with progress, a log line and a checkpoint; resumes from `ctx.restored`.
    With `db` (the llmunix store), counts the checkpoints stored there after each one returns."""
    start = (ctx.restored or {}).get("tick", 0)
    versions, stored = [], []
    ctx.set_state("Running", "ticking")
    for i in range(start, n):
        ctx.sleep(delay)
        ctx.progress(i + 1, n, f"tick {i + 1}")
        ctx.log(f"tick {i + 1} on {_worker()['worker']}")
        versions.append(ctx.checkpoint({"tick": i + 1}))
        if db:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                stored.append(conn.execute("SELECT count(*) FROM checkpoints WHERE pid=?", (ctx.pid,)).fetchone()[0])
    return {"start": start, "versions": versions, "stored": stored, **_worker()}


@tool(name="rt_count", hidden=True, remote=True)
def rt_count(ctx: ProcessContext, path: str) -> None:
    """Count ticks into the file `path` until stopped; write `path`.stopped when it ends."""
    n = 0
    try:
        while True:
            n += 1
            Path(path).write_text(str(n))
            ctx.progress(n)
            ctx.sleep(0.01)
    finally:
        Path(path + ".stopped").write_text(str(n))


@tool(name="rt_fail", hidden=True, remote=True)
def rt_fail(ctx: ProcessContext, code: int = 3) -> None:
    raise ToolError(f"failed on {_worker()['worker']}", exit_code=code)


@tool(name="rt_crash", hidden=True, remote=True)
def rt_crash(ctx: ProcessContext) -> None:
    raise ValueError("not a ToolError")


@tool(name="rt_local", hidden=True)
def rt_local(ctx: ProcessContext) -> int:
    """Not remote: runs in the llmunix process even with the dask backend."""
    return os.getpid()


@tool(name="rt_gate", hidden=True, remote=True)
def rt_gate(ctx: ProcessContext, path: str) -> dict:
    """Run until the file `path` exists; then say where it ran."""
    while not Path(path).exists():
        ctx.sleep(0.01)
    return _worker()


@tool(name="rt_value", hidden=True, remote=True)
def rt_value(ctx: ProcessContext, big: bool = False) -> object:
    """A value that is not JSON-native (so it is fetched from the worker), or a large one."""
    return "x" * 100_000 if big else (1, {2: "two"})


@tool(name="rt_spawner", hidden=True, remote=True)
def rt_spawner(ctx: ProcessContext) -> None:
    """Declared remote by mistake: it uses what only the kernel has."""
    ctx.recv(timeout=0.1)
