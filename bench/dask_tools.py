"""Remote tools for bench/dask_backend.py, in their own module so that Dask workers can import
them by name (the benchmark script itself runs as __main__, which workers cannot import)."""

from __future__ import annotations

from llmunix.tools.registry import tool


def plain_noop() -> None:
    """The baseline task: what `client.submit(plain_noop).result()` runs."""
    return None


@tool(name="bench_remote_noop", hidden=True, remote=True)
def bench_remote_noop(ctx) -> None:  # noqa: ANN001
    return None


@tool(name="bench_remote_checkpoint", hidden=True, remote=True)
def bench_remote_checkpoint(ctx, n: int = 20) -> None:  # noqa: ANN001
    for i in range(n):
        ctx.checkpoint({"i": i})
