"""What `debug PID memory` costs (llmunix/observe/memory.py): tracemalloc on, against off, in
the same run.

    python bench/memory.py [--n 20000] [--runs 7]

A thread tool that allocates (`alloc_work`: N small dicts and lists, and a JSON round trip each)
is run RUNS times, one at a time, and its median wall time taken:

(a) off — nothing traced;
(b) on — `debug PID memory --frames F` on another thread process (tracemalloc is process-wide:
    every thread tool pays, not only the one traced), at 1, 10 (the default) and 25 frames;
(c) off again — after `debug PID memory --stop` (tracing ended, the previous state restored);
(d) isolated target — `debug PID memory` on an isolated process: it traces in its worker, so
    llmunix's thread tools pay nothing.

Also the time of one look (`debug PID memory --diff`) with the workload's traces live.

Budget: (c) within 10% of (a): stopping gives back what starting took. (b)/(a) is a figure, not
a budget: it is the price of looking, paid only while someone looks. Every run's workload must
complete (else INVALID).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from baseline import invalid, report_budgets, settle, table, verdict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout, not an install

import isolation_tools  # noqa: E402, F401 - registers bench_isolated_sleep (an isolated target)

from llmunix import Kernel, ProcessContext  # noqa: E402
from llmunix.observe.memory import DEFAULT_FRAMES  # noqa: E402
from llmunix.tools.registry import tool  # noqa: E402

RESTORE_BUDGET = 0.10


@tool(name="alloc_work")
def alloc_work(ctx: ProcessContext, n: int = 20000) -> int:
    """Allocate: n small dicts and lists, and a JSON round trip of each."""
    kept = []
    for i in range(n):
        d = {"i": i, "name": f"item {i}", "tags": [i, i + 1, i + 2]}
        kept.append(json.loads(json.dumps(d)))
    return len(kept)


@tool(name="mem_target")
def mem_target(ctx: ProcessContext, seconds: float = 600.0) -> None:
    """A thread process to look at: it waits."""
    ctx.sleep(seconds)


def median_run(k: Kernel, n: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        settle()
        t0 = time.perf_counter()
        [info] = k.wait([k.spawn("alloc_work", n=n)], timeout=600)
        times.append(time.perf_counter() - t0)
        if info.state != "Completed":
            invalid(f"the workload ended {info.state}: {info.error}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    if tracemalloc.is_tracing():
        invalid("tracemalloc is on already (PYTHONTRACEMALLOC?): nothing to compare with")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    rows: list[tuple[str, str, str]] = []
    with Kernel(monitor=False) as k:
        median_run(k, args.n, 2)  # warm up
        off = median_run(k, args.n, args.runs)
        rows.append(("(a) off", f"{off * 1000:.1f} ms", "1.00x"))
        target = k.spawn("mem_target")
        look_ms = traced = 0.0
        for frames in (1, DEFAULT_FRAMES, 25):
            k.debug_memory(target, frames=frames)
            if not tracemalloc.is_tracing() or tracemalloc.get_traceback_limit() != frames:
                invalid(f"debug PID memory --frames {frames} did not trace at {frames} frames")
            on = median_run(k, args.n, args.runs)
            label = f"on, {frames} frame{'s' if frames > 1 else ''}"
            label += " (default)" if frames == DEFAULT_FRAMES else ""
            rows.append((f"(b) {label}", f"{on * 1000:.1f} ms", f"{on / off:.2f}x"))
            if frames == DEFAULT_FRAMES:
                k.spawn("alloc_work", n=args.n)  # (its allocations are what a look goes through)
                t0 = time.perf_counter()
                look = k.debug_memory(target, diff=True)
                look_ms = (time.perf_counter() - t0) * 1000
                traced = look.look.total_traced
            k.stop_memory_trace(target)
        if tracemalloc.is_tracing():
            invalid("--stop did not turn tracemalloc off")
        again = median_run(k, args.n, args.runs)
        rows.append(("(c) off again", f"{again * 1000:.1f} ms", f"{again / off:.2f}x"))
        iso = k.spawn("bench_isolated_sleep")
        deadline = time.monotonic() + 30
        while k.info(iso).progress.current_step < 1:
            if time.monotonic() > deadline:
                invalid("the isolated target did not start")
            time.sleep(0.01)
        k.debug_memory(iso)
        if tracemalloc.is_tracing():
            invalid("tracing an isolated process turned tracemalloc on in llmunix")
        isolated = median_run(k, args.n, args.runs)
        rows.append(("(d) isolated target traced", f"{isolated * 1000:.1f} ms", f"{isolated / off:.2f}x"))
        k.kill(target)
        k.kill(iso)
    print(f"\nalloc_work n={args.n} (a thread tool), median of {args.runs} runs:")
    print(table(("TRACING", "WALL", "VS OFF"), rows))
    print(f"\none look (--diff) with {traced / 1e6:.1f} MB traced: {look_ms:.0f} ms")
    return report_budgets("budgets", [
        (f"(c) off again after --stop within {RESTORE_BUDGET:.0%} of off: {again / off:.2f}x",
         verdict(abs(again / off - 1) <= RESTORE_BUDGET)),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
