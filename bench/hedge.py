"""Hedged runs against single runs: the tail latency of a call whose latency is heavy-tailed.

The tool sleeps (cooperatively) for a latency drawn from a Pareto distribution (scale 20 ms,
shape 1.5: median about 32 ms, p99 about 430 ms; capped at 3 s), as a model API's latency often
is, each replica drawing its own. R requests are made one after another, each timed from the
spawn to the end of the process that answers it: a plain `spawn`, then `hedge(replicas=2)` and
`hedge(replicas=3)` (`run --replicas N --first`), interleaved in blocks of 10 so that all three
see the same machine. One in-memory kernel with enough slots for every replica
(`max_running=8`).

    python bench/hedge.py            # R=300
    python bench/hedge.py --quick    # R=100

Not a test: no figure is judged. It checks its own run: every request must complete, and a
hedged one must end with exactly one winner and its other replicas cancelled or completed (else
`INVALID: ...`, exit 1).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import invalid, settle, table  # noqa: E402
from llmunix import Kernel  # noqa: E402
from llmunix.tools.registry import tool  # noqa: E402

SCALE, SHAPE, CAP = 0.020, 1.5, 3.0
SEED = 7


@tool(name="bench_tail", idempotent=True, hidden=True)
def bench_tail(ctx) -> float:  # noqa: ANN001
    """Sleep for a Pareto-distributed latency (a seeded draw per PID)."""
    u = random.Random(SEED * 1_000_003 + ctx.pid).random()
    latency = min(CAP, SCALE / (1.0 - u) ** (1.0 / SHAPE))
    ctx.sleep(latency)
    return latency


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered))) - 1))]


def request(k: Kernel, replicas: int) -> float:
    t0 = time.perf_counter()
    pid = k.spawn("bench_tail") if replicas == 1 else k.hedge("bench_tail", replicas=replicas)
    info = k.wait([pid], timeout=60)[0]
    elapsed = time.perf_counter() - t0
    if info.state != "Completed":
        invalid(f"request {info.process_id} ({replicas} replicas) ended {info.state}: {info.error}")
    if replicas > 1:
        kids = [i for i in k.ps(all=True) if i.parent == pid]
        if len(kids) != replicas or not all(i.is_done for i in kids) or \
                sum(1 for i in kids if i.state == "Completed") < 1:
            invalid(f"hedge {info.process_id}: its replicas were {[(i.pid, i.state) for i in kids]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int)
    args = ap.parse_args()
    n = args.requests or (100 if args.quick else 300)
    modes = (1, 2, 3)
    lat: dict[int, list[float]] = {m: [] for m in modes}
    t0 = time.perf_counter()
    with Kernel(monitor=False, max_running=8) as k:
        for m in modes:  # warm up
            request(k, m)
        settle()
        for _block in range(0, n, 10):
            for m in modes:
                for _ in range(10):
                    lat[m].append(request(k, m))
    print(f"hedging a heavy-tailed call (Pareto, scale {SCALE * 1000:.0f} ms, shape {SHAPE}): {n} requests each")
    rows = []
    for m in modes:
        xs = lat[m]
        rows.append(("single run" if m == 1 else f"--replicas {m} --first",
                     *(f"{percentile(xs, p) * 1000:.0f}" for p in (50, 90, 99)), f"{max(xs) * 1000:.0f}",
                     f"{statistics.fmean(xs) * 1000:.0f}"))
    print(table(("latency, ms", "p50", "p90", "p99", "max", "mean"), rows))
    print(f"\n({time.perf_counter() - t0:.1f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
