"""Tools for bench/isolation.py, in their own module so that the isolation pool process can import
them by name (the benchmark script itself runs as __main__, which no other process can import)."""

from __future__ import annotations

import os

from llmunix.tools.registry import tool


@tool(name="bench_thread_noop", hidden=True)
def bench_thread_noop(ctx) -> int:  # noqa: ANN001
    return os.getpid()


@tool(name="bench_isolated_noop", hidden=True, isolation="process")
def bench_isolated_noop(ctx) -> int:  # noqa: ANN001
    return os.getpid()


@tool(name="bench_isolated_progress", hidden=True, isolation="process")
def bench_isolated_progress(ctx, n: int = 100) -> int:  # noqa: ANN001
    """`n` progress reports (one-way messages) and one checkpoint (a round trip, durable)."""
    for i in range(n):
        ctx.progress(i + 1, n)
    ctx.checkpoint({"n": n})
    return n


@tool(name="bench_thread_progress", hidden=True)
def bench_thread_progress(ctx, n: int = 100) -> int:  # noqa: ANN001
    for i in range(n):
        ctx.progress(i + 1, n)
    ctx.checkpoint({"n": n})
    return n


@tool(name="bench_isolated_sleep", hidden=True, isolation="process")
def bench_isolated_sleep(ctx, seconds: float = 600.0) -> None:  # noqa: ANN001
    """An isolated process that waits (bench/memory.py traces it)."""
    ctx.progress(1, 2, "asleep")
    ctx.sleep(seconds)
