"""Monitor cost: the sampler thread's CPU time with many live processes, as a share of one core.

    python bench/monitor.py [--n 1000] [--seconds 10] [--interval 1.0]

N thread-backed processes sleep cooperatively (each holds a slot and a worker thread, so the
monitor measures every one of them each interval). The sampler thread's own CPU time is read
from its native thread id over the measuring window. Budget (ARCHITECTURE section 12): under 2%
of one core at 1,000 running. Prints the figures and whether the budget is met; no assertions.

A monitor that measures nothing costs nothing, so the verdict counts only if the window really
held samples: every process sampled at least once in it, and the system sampled at least half as
often as the interval asks. Otherwise the verdict is INVALID and the script exits 1.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

import psutil
from baseline import invalid, report_budgets, verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # measure this checkout, not an install

from llmunix import Kernel, ProcessContext  # noqa: E402

BUDGET_PERCENT = 2.0


def sleeper(ctx: ProcessContext, seconds: float) -> None:
    ctx.sleep(seconds)


def thread_cpu(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    invalid("the monitor thread is gone")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    ap.add_argument("--interval", type=float, default=1.0, help="monitor interval")
    ap.add_argument("--quick", action="store_true", help="--seconds 4")
    args = ap.parse_args()
    window = 4.0 if args.quick else args.seconds
    k = Kernel(max_running=args.n, max_threads=args.n + 8, monitor_interval=args.interval)
    try:
        pids = [k.spawn(sleeper, seconds=window + 30) for _ in range(args.n)]
        deadline = time.monotonic() + 60
        while sum(1 for i in k.ps() if i.phase == "running") < args.n:
            if time.monotonic() > deadline:
                invalid("not all processes started")
            time.sleep(0.05)
        monitor = next((t for t in threading.enumerate() if t.name == "llmunix-monitor"), None)
        if monitor is None or monitor.native_id is None:
            invalid("no monitor thread")
        threading.Event().wait(args.interval * 1.5)  # let one sample pass so every process is known
        cpu0, wall0, t0 = thread_cpu(monitor.native_id), time.monotonic(), time.time()
        threading.Event().wait(window)
        cpu1, wall1, t1 = thread_cpu(monitor.native_id), time.monotonic(), time.time()
        # What the monitor measured within the window (sample times are time.time()).
        sampled = sum(1 for p in pids if any(t0 <= s.time <= t1 for s in k.samples(p)))
        system_samples = sum(1 for s in k.system() if t0 <= s.time <= t1)
    finally:
        k.shutdown(timeout=30)
    share = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    per_sample_ms = 1000.0 * (cpu1 - cpu0) / max(1, system_samples)
    expected = (wall1 - wall0) / args.interval
    valid = sampled == args.n and system_samples >= expected / 2
    print(f"machine: {psutil.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.n} live sleeping processes, monitor interval {args.interval:g} s, window {window:g} s")
    print(f"monitor thread CPU: {share:.2f}% of one core ({per_sample_ms:.1f} ms per sample)")
    print(f"in the window: {system_samples} system samples (about {expected:.0f} expected); "
          f"{sampled} of {args.n} processes sampled at least once")
    if not valid:
        print("   !! the monitor did not sample what it should have: its cost says nothing")
    return report_budgets("Budget", [(f"monitor cost under {BUDGET_PERCENT:g}% of one core at {args.n} running",
                                      verdict(share < BUDGET_PERCENT, valid))])


if __name__ == "__main__":
    sys.exit(main())
