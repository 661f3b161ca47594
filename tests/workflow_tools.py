"""Hidden test tools for the workflow tests (one module, so their state exists once however the
tests import it; `llmunix --tools tests.workflow_tools` loads them in end-to-end runs)."""

from __future__ import annotations

import threading
from pathlib import Path

from llmunix import ProcessContext
from llmunix.models import ToolError
from llmunix.tools.registry import tool

active = 0
peak = 0
_lock = threading.Lock()
release = threading.Event()


def reset() -> None:
    global active, peak
    with _lock:
        active = peak = 0
    release.clear()


@tool(name="wft_count", hidden=True)
def wft_count(ctx: ProcessContext, path: str, text: str = "") -> str:
    """Append a line to a file (to count how often a step ran) and return `text`."""
    with open(path, "a") as f:
        f.write("x\n")
    return text


@tool(name="wft_flaky", hidden=True)
def wft_flaky(ctx: ProcessContext, path: str, fail_times: int) -> int:
    """Fail the first `fail_times` calls (counted in a file), then succeed."""
    p = Path(path)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < fail_times:
        raise ToolError(f"flaky failure {n + 1}")
    return n + 1


@tool(name="wft_fail_if", hidden=True)
def wft_fail_if(ctx: ProcessContext, flag: str, text: str = "ok") -> str:
    """Fail while the file `flag` exists."""
    if Path(flag).exists():
        raise ToolError(f"flag {Path(flag).name} is set")
    return text


@tool(name="wft_hang", hidden=True)
def wft_hang(ctx: ProcessContext) -> None:
    while True:
        ctx.sleep(0.01)


@tool(name="wft_parallel", hidden=True)
def wft_parallel(ctx: ProcessContext, expect: int) -> int:
    """Wait (cooperatively) until `expect` of these run at once, or `release` is set."""
    global active, peak
    with _lock:
        active += 1
        peak = max(peak, active)
    try:
        for _ in range(1000):
            with _lock:
                if peak >= expect:
                    break
            if release.is_set():
                break
            ctx.sleep(0.005)
        return peak
    finally:
        with _lock:
            active -= 1


@tool(name="wft_gate", hidden=True)
def wft_gate(ctx: ProcessContext, path: str) -> str:
    """Run until the file `path` exists (a step a test can hold open)."""
    Path(path + ".started").touch()
    while not Path(path).exists():
        ctx.sleep(0.01)
    return "opened"
