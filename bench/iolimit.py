"""How closely `run --io-rate` holds a rate (llmunix/iolimit.py), and what holding it costs.

    python bench/iolimit.py [--rate 5MB/s] [--seconds 10] [--runs 3]

A `dd`-like writer (`dd if=/dev/zero of=FILE bs=64k`, as fast as it can: gigabytes a second into
the page cache) runs as a `shell` tool limited to RATE, RUNS times. The limit holds reads and
writes each at RATE; dd reads /dev/zero as fast as it writes, so both are held. For each run,
measured here and not by the regulator: the bytes its OS process tree wrote (/proc/PID/io wchar,
the figure the write limit is on) over SECONDS from its start, so the achieved write rate; the
most it wrote in any one second (bursts); the share of the time it was stopped; and the regulator
thread's CPU time. The same writer unlimited, for a sense of the duty cycle.

Budget: the median run's achieved write rate over SECONDS within 20% of RATE. On a machine with a
writable cgroup v2 io delegation the limit is io.max (disk bytes, not system-call bytes), and the
script says so: its figures are then not comparable.

Every run counts only if the writer was still running at the end of the window (else INVALID).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from baseline import invalid, report_budgets, table, verdict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout, not an install

from llmunix import Kernel  # noqa: E402
from llmunix.isolation import fmt_rate, parse_io_rate  # noqa: E402

SAMPLE = 0.05  # seconds between the bench's own readings
TOLERANCE = 0.2


def tree_bytes(pid: int) -> int:
    """Bytes the tree has written (wchar)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.io_counters().write_chars
        except psutil.Error:
            continue
    return total


def thread_cpu(name: str) -> float:
    for t in threading.enumerate():
        if t.name == name and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                    return int(f.read().split()[0]) / 1e9
            except OSError:
                return 0.0
    return 0.0


def one_run(k: Kernel, out: Path, rate: str | None, seconds: float) -> dict[str, float]:
    cmd = f"dd if=/dev/zero of={out} bs=64k count=100000000 status=none"
    cpu0 = thread_cpu("llmunix-io-regulator")
    pid = k.spawn("shell", cmd=cmd, io_rate=rate)
    deadline = time.monotonic() + 10
    while k.info(pid).subprocess_pid is None:
        if time.monotonic() > deadline:
            invalid("the writer did not start")
        time.sleep(0.001)
    child = k.info(pid).subprocess_pid
    assert child is not None
    t0 = time.monotonic()
    readings = [(0.0, tree_bytes(child))]
    while (now := time.monotonic() - t0) < seconds:
        time.sleep(SAMPLE)
        readings.append((min(now + SAMPLE, seconds), tree_bytes(child)))
    info = k.io_limit(pid)
    if k.info(pid).is_done:
        invalid(f"the writer ended before the window did ({k.info(pid).state})")
    k.kill(pid, force=True)
    k.wait([pid], timeout=30)
    total = readings[-1][1] - readings[0][1]
    peak = 0
    for i, (t, b) in enumerate(readings):  # the most moved in any one second
        j = i
        while j + 1 < len(readings) and readings[j + 1][0] - t <= 1.0:
            j += 1
        peak = max(peak, readings[j][1] - b)
    return {"bytes": total, "rate": total / seconds, "peak": peak,
            "held": (info.held / info.seconds) if info is not None and info.seconds else 0.0,
            "stops": info.stops if info is not None else 0,
            "cpu": thread_cpu("llmunix-io-regulator") - cpu0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="5MB/s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    target = parse_io_rate(args.rate)
    assert target is not None
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp, Kernel(monitor=False) as k:
        kind, where = k.io_limit_method()
        print(f"--io-rate is held by: {kind} ({where})")
        out = Path(tmp) / "dd.out"
        free = one_run(k, out, None, min(2.0, args.seconds))
        print(f"unlimited writer: {fmt_rate(free['rate'])} written over {min(2.0, args.seconds):g}s")
        runs = [one_run(k, out, args.rate, args.seconds) for _ in range(args.runs)]
    rows = [(str(i + 1), f"{r['bytes'] / 1e6:.1f} MB", fmt_rate(r["rate"]), f"{r['rate'] / target:.2f}x",
             f"{r['peak'] / 1e6:.1f} MB", f"{r['held']:.1%}", str(r["stops"]), f"{r['cpu'] * 1000:.0f} ms")
            for i, r in enumerate(runs)]
    print(f"\n{args.rate} for {args.seconds:g}s, a dd writer (bs=64k) as fast as it can:")
    print(table(("RUN", "WRITTEN", "ACHIEVED", "OF TARGET", "MOST IN 1s", "STOPPED", "STOPS", "REGULATOR CPU"), rows))
    median = statistics.median(r["rate"] for r in runs)
    ok = abs(median / target - 1) <= TOLERANCE
    return report_budgets("budgets", [
        (f"median achieved write rate over {args.seconds:g}s within {TOLERANCE:.0%} of {args.rate}: "
         f"{fmt_rate(median)} ({median / target:.2f}x)", verdict(ok)),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
