"""Learned scheduling against FIFO: mean completion time of a mixed workload, and deadlines met.

The workload: N processes submitted at once, in a shuffled (seeded) order, to a kernel with
`max_running=M`: 60% short (10 ms), 30% medium (50 ms), 10% long (300 ms) cooperative sleeps, of
which D medium ones (submitted last) carry a deadline of `--deadline` seconds. Each tool first
runs 3 times so that its expected duration is known (the learned order reads it; FIFO ignores
it). Each policy runs the same workload, K times, interleaved (FIFO, learned, FIFO, ...), each in
a fresh in-memory kernel; completion time = a process's end - its spawn (wall clock).

    python bench/learned.py            # N=200, M=2, K=3
    python bench/learned.py --quick    # N=80, K=2

Not a test: no figure is judged. It checks its own run: every process must complete (else
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

DURATIONS = {"bench_short": 0.010, "bench_medium": 0.050, "bench_long": 0.300}
MIX = (("bench_short", 0.6), ("bench_medium", 0.3), ("bench_long", 0.1))


def _sleeper(seconds: float):  # noqa: ANN202
    def body(ctx) -> float:  # noqa: ANN001
        ctx.sleep(seconds)
        return seconds
    return body


for _name, _seconds in DURATIONS.items():
    tool(name=_name, hidden=True)(_sleeper(_seconds))


def workload(n: int, deadlines: int, seed: int) -> list[tuple[str, bool]]:
    """(tool, has a deadline) in submission order: the mix shuffled, then the deadline jobs."""
    rng = random.Random(seed)
    jobs = [name for name, share in MIX for _ in range(round(share * (n - deadlines)))]
    rng.shuffle(jobs)
    return [(j, False) for j in jobs] + [("bench_medium", True)] * deadlines


def run(policy: str, jobs: list[tuple[str, bool]], workers: int, deadline: float) -> dict[str, float]:
    with Kernel(monitor=False, max_running=workers, scheduling=policy) as k:
        for name in DURATIONS:  # teach each tool's duration (3 runs each)
            k.wait([k.spawn(name) for _ in range(3)])
        settle()
        pids = [k.spawn(name, deadline=deadline if has_deadline else None) for name, has_deadline in jobs]
        infos = k.wait(pids, timeout=600)
        bad = [i for i in infos if i.state != "Completed"]
        if bad:
            invalid(f"{policy}: process {bad[0].process_id} ended {bad[0].state}: {bad[0].error}")
        done = {i.pid: i.finished - i.created for i in infos}
        by_tool: dict[str, list[float]] = {}
        for pid, (name, _dl) in zip(pids, jobs, strict=True):
            by_tool.setdefault(name, []).append(done[pid])
        met = sum(1 for pid, (_n, dl) in zip(pids, jobs, strict=True)
                  if dl and (d := k.deadline(pid)) is not None and d.met)
        times = sorted(done.values())
        return {"mean": statistics.fmean(times), "p99": times[min(len(times) - 1, int(0.99 * len(times)))],
                "makespan": max(i.finished for i in infos) - min(i.created for i in infos),
                "short": statistics.fmean(by_tool["bench_short"]), "long": max(by_tool["bench_long"]),
                "met": met}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--deadlines", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=1.0, help="seconds each deadline job is given")
    args = ap.parse_args()
    n = args.n or (80 if args.quick else 200)
    repeats = args.repeats or (2 if args.quick else 3)
    jobs = workload(n, args.deadlines, seed=42)
    print(f"learned vs FIFO: {len(jobs)} processes (60% 10 ms, 30% 50 ms, 10% 300 ms; {args.deadlines} of the "
          f"50 ms ones last, with a {args.deadline:g} s deadline), max_running={args.workers}, {repeats} repeats")
    results: dict[str, list[dict[str, float]]] = {"fifo": [], "learned": []}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for policy in ("fifo", "learned"):
            results[policy].append(run(policy, jobs, args.workers, args.deadline))

    def med(policy: str, key: str) -> float:
        return statistics.median(r[key] for r in results[policy])

    rows = []
    for key, label in (("mean", "mean completion (s)"), ("p99", "p99 completion (s)"),
                       ("short", "mean completion, 10 ms jobs (s)"), ("long", "slowest 300 ms job (s)"),
                       ("makespan", "makespan (s)")):
        f, lrn = med("fifo", key), med("learned", key)
        rows.append((label, f"{f:.3f}", f"{lrn:.3f}", f"{lrn / f:.2f}x"))
    rows.append((f"deadlines met (of {args.deadlines})", f"{med('fifo', 'met'):.0f}", f"{med('learned', 'met'):.0f}",
                 ""))
    print(table(("median of the repeats", "fifo", "learned", "learned/fifo"), rows))
    print(f"\n({time.perf_counter() - t0:.1f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
