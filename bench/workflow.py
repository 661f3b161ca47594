"""Workflow overhead: what running a no-op step through a workflow costs, against a raw
ThreadPoolExecutor doing the same no-op in the same run.

Two shapes: a *chain* of L steps (each needs the one before: latency per step, compared with one
pool submit-then-result round trip) and a *fan-out* of W independent steps (throughput per step,
compared with W pool submits and a wait). Each shape runs in memory and with a store (a home in a
temporary directory), where every step start and end is a durable checkpoint; a durable run is
timed until `k.flush()` returns (the workflow's end committed too). A workflow that does not
complete stops the run with `INVALID: ...` and exit status 1.

    python bench/workflow.py            # L=200, W=500
    python bench/workflow.py --quick    # L=50, W=100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import invalid, pool_roundtrip, pool_throughput, settle, table, us  # noqa: E402
from llmunix import Kernel  # noqa: E402
from llmunix.tools.registry import tool  # noqa: E402
from llmunix.workflows.spec import spec_from_data  # noqa: E402


@tool(name="bench_noop", hidden=True)
def bench_noop(ctx) -> None:  # noqa: ANN001
    return None


def chain(n: int) -> dict:
    steps = [{"id": "s0", "tool": "bench_noop"}]
    steps += [{"id": f"s{i}", "tool": "bench_noop", "needs": [f"s{i - 1}"]} for i in range(1, n)]
    return {"name": f"chain-{n}", "steps": steps}


def fan(n: int) -> dict:
    return {"name": f"fan-{n}", "steps": [{"id": f"s{i}", "tool": "bench_noop"} for i in range(n)]}


def run_workflow(data: dict, home: Path | None, workers: int) -> float:
    with Kernel(home, monitor=False, max_running=workers) as k:
        spec = spec_from_data(data)
        k.wait([k.workflow_run(spec_from_data(chain(3)))])  # warm up
        settle()
        t0 = time.perf_counter()
        pid = k.workflow_run(spec)
        info = k.wait([pid])[0]
        if home is not None and not k.flush(timeout=120):
            invalid(f"{data['name']}: the store did not catch up within 120 s")
        elapsed = time.perf_counter() - t0
        if info.state != "Completed":
            invalid(f"{data['name']}: the workflow ended {info.state}: {info.error}")
        return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--chain", type=int, default=None, help="steps in the chain (200; quick 50)")
    ap.add_argument("--fan", type=int, default=None, help="steps in the fan-out (500; quick 100)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    length = a.chain or (50 if a.quick else 200)
    width = a.fan or (100 if a.quick else 500)
    rows = []
    for label, data, n, baseline in (
        (f"chain of {length} (per step)", chain(length), length, lambda: pool_roundtrip(length, a.workers)),
        (f"fan-out of {width} (per step)", fan(width), width, lambda: pool_throughput(width, a.workers)),
    ):
        for durable in (False, True):
            times, base = [], []
            for _ in range(a.repeats):
                base.append(baseline())
                if durable:
                    with tempfile.TemporaryDirectory() as d:
                        times.append(run_workflow(data, Path(d), a.workers))
                else:
                    times.append(run_workflow(data, None, a.workers))
            t, b = statistics.median(times), statistics.median(base)
            rows.append((label + (" durable" if durable else " in memory"), f"{us(t, n):.0f}", f"{us(b, n):.1f}",
                         f"{t / b:.0f}x"))
    print(table(("workflow", "us/step", "pool us/task", "ratio"), rows))


if __name__ == "__main__":
    main()
