"""Scheduler benchmark: lifecycle overhead, queue-length independence, and `ps` over many records.

    python bench/scheduler.py            # full run (about a minute on 2 cores)
    python bench/scheduler.py --quick    # smaller sizes (about 15 s)
    python bench/scheduler.py --n 20000 --queued 100000 --records 100000 --workers 2

Not a test: it makes no timed assertions and always exits 0 (unless the engine itself breaks,
e.g. events go missing). It prints one table per section and, for each design budget, whether
this run met it. Budgets (docs/performance.md):

* lifecycle overhead per no-op process (spawn, schedule, run on a worker thread, complete,
  events published and delivered) within 3x of a raw ThreadPoolExecutor.submit round trip
  measured in the same run;
* submitting the 100,000th process costs the same as the first (ratio about 1);
* `ps` over 100,000 records: under 0.2 s.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from llmunix import Kernel
from llmunix.tools.registry import ToolRegistry, tool

from commands.views import ps_plain

LIFECYCLE_BUDGET = 3.0  # x a raw ThreadPoolExecutor round trip
QUEUE_BUDGET = 1.0  # spawn cost at depth Q / at depth 0; "about 1": met when <= QUEUE_TOLERANCE
QUEUE_TOLERANCE = 1.5  # timing noise allowance for "about 1"
PS_BUDGET = 0.2  # seconds for 100,000 records
PS_BUDGET_RECORDS = 100_000
EVENTS_PER_NOOP = 3  # process.spawned, process.started, process.completed

BENCH_TOOLS = ToolRegistry()  # keep the bench's tools out of the global registry


@tool(registry=BENCH_TOOLS, name="bench-noop")
def noop(ctx):
    """Does nothing (registered: its Tool is built once)."""
    return None


def noop_raw(ctx):
    """Does nothing (unregistered: `spawn` builds a Tool for it on every call)."""
    return None


def noop_plain():
    return None


_gate_release = threading.Event()


@tool(registry=BENCH_TOOLS, name="bench-gate")
def gate(ctx):
    """Holds the only slot until released (no control points, so it is never preempted)."""
    _gate_release.wait()


# ---------------------------------------------------------------------------- helpers


def us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    for r in rows:
        out.append("  ".join(f.ljust(w) if c == 0 else f.rjust(w)
                             for c, (f, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def median(values: list[float]) -> float:
    return statistics.median(values)


def settle() -> None:
    """Start each measurement from the same place: no pending garbage."""
    gc.collect()


# ---------------------------------------------------------------------------- 1. lifecycle


def kernel_throughput(n: int, workers: int, target: Callable, *, subscribe: bool = False) -> tuple[float, int]:
    """Spawn n processes, wait for all, flush the event bus. Returns (seconds, events seen)."""
    seen = [0]

    def on_event(event) -> None:
        seen[0] += 1

    with Kernel(monitor=False, max_running=workers) as k:
        if subscribe:
            k.subscribe("process.*", on_event)
        k.wait([k.spawn(target) for _ in range(4)])  # warm the worker threads
        k.bus.flush()
        seen[0] = 0
        settle()
        t0 = time.perf_counter()
        pids = [k.spawn(target) for _ in range(n)]
        infos = k.wait(pids)
        k.bus.flush(timeout=60)
        elapsed = time.perf_counter() - t0
        bad = [i for i in infos if i.state != "Completed"]
        if bad:
            raise SystemExit(f"lifecycle: {len(bad)} processes did not complete, e.g. {bad[0]}")
    return elapsed, seen[0]


def kernel_roundtrip(n: int, workers: int, target: Callable) -> float:
    with Kernel(monitor=False, max_running=workers) as k:
        for _ in range(4):
            k.wait([k.spawn(target)])
        settle()
        t0 = time.perf_counter()
        for _ in range(n):
            k.wait([k.spawn(target)])
        k.bus.flush(timeout=60)
        return time.perf_counter() - t0


def pool_throughput(n: int, workers: int) -> float:
    with ThreadPoolExecutor(max_workers=workers) as ex:
        wait([ex.submit(noop_plain) for _ in range(workers * 2)])
        settle()
        t0 = time.perf_counter()
        futures = [ex.submit(noop_plain) for _ in range(n)]
        wait(futures)
        return time.perf_counter() - t0


def pool_roundtrip(n: int, workers: int) -> float:
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for _ in range(4):
            ex.submit(noop_plain).result()
        settle()
        t0 = time.perf_counter()
        for _ in range(n):
            ex.submit(noop_plain).result()
        return time.perf_counter() - t0


def bench_lifecycle(n: int, n_rt: int, n_raw: int, workers: int, repeats: int) -> list[tuple[str, bool]]:
    print(f"\n1. Lifecycle overhead per no-op process (max_running = max_workers = {workers}, "
          f"median of {repeats})")
    k_tp, k_sub, p_tp, k_rt, p_rt = [], [], [], [], []
    events_ok = True
    for _ in range(repeats):  # interleaved, so drift hits both sides alike
        p_tp.append(pool_throughput(n, workers))
        k_tp.append(kernel_throughput(n, workers, noop)[0])
        elapsed, seen = kernel_throughput(n, workers, noop, subscribe=True)
        k_sub.append(elapsed)
        if seen != EVENTS_PER_NOOP * n:
            events_ok = False
            print(f"   !! subscriber saw {seen} events, expected {EVENTS_PER_NOOP * n}")
        p_rt.append(pool_roundtrip(n_rt, workers))
        k_rt.append(kernel_roundtrip(n_rt, workers, noop))
    raw_tp, _ = kernel_throughput(n_raw, workers, noop_raw)

    pool_tp_us, pool_rt_us = us(median(p_tp), n), us(median(p_rt), n_rt)
    rows = []
    results = []

    def row(label: str, count: int, k_us: float, base_us: float, budgeted: bool) -> None:
        ratio = k_us / base_us
        ok = ratio <= LIFECYCLE_BUDGET
        rows.append((label, f"{count:,}", f"{k_us:.1f}", f"{base_us:.1f}", f"{ratio:.1f}x",
                     f"<= {LIFECYCLE_BUDGET:.0f}x" if budgeted else "(info)",
                     verdict(ok) if budgeted else ""))
        if budgeted:
            results.append((f"lifecycle {label}: {ratio:.1f}x (budget {LIFECYCLE_BUDGET:.0f}x)", ok))

    row("(a) throughput", n, us(median(k_tp), n), pool_tp_us, True)
    row("(a) throughput + subscriber", n, us(median(k_sub), n), pool_tp_us, True)
    row("(b) round trip", n_rt, us(median(k_rt), n_rt), pool_rt_us, True)
    row("(a) throughput, unregistered fn", n_raw, us(raw_tp, n_raw), pool_tp_us, False)
    print(table(("variant", "n", "llmunix us/proc", "pool us/task", "ratio", "budget", "result"), rows))
    print(f"   events delivered to the subscriber: "
          f"{'all ' + str(EVENTS_PER_NOOP) + ' per process' if events_ok else 'MISSING (see above)'}")
    print("   (a) spawn n, k.wait(pids), k.bus.flush()  vs  submit n, wait(futures)")
    print("   (b) k.wait([k.spawn(noop)]) one at a time  vs  submit(noop).result() one at a time")
    print("   unregistered fn: k.spawn(plain_function) builds a Tool (pydantic model) on every call")
    if not events_ok:
        results.append(("lifecycle events: some were not delivered", False))
    return results


# ---------------------------------------------------------------------------- 2. queue length


def bench_queue(queued: int, batch: int, blocks: int) -> list[tuple[str, bool]]:
    print(f"\n2. Queue-length independence (max_running=1, one gate holds the slot, "
          f"{queued:,} queued, batches of {batch:,})")
    _gate_release.clear()
    k = Kernel(monitor=False, max_running=1, time_slice=3600.0, kill_grace=3600.0)
    g = k.spawn(gate)
    deadline = time.monotonic() + 10
    while k.info(g).phase != "running":
        if time.monotonic() > deadline:
            raise SystemExit("queue: the gate process never started")
        time.sleep(0.001)

    settle()
    t0 = time.perf_counter()
    for _ in range(batch):
        k.spawn(noop)
    first = us(time.perf_counter() - t0, batch)

    # Fill the queue, timing it in blocks to show any growth along the way.
    remaining = queued - batch
    block = max(1, remaining // blocks)
    curve = []
    t_fill = time.perf_counter()
    while remaining > 0:
        m = min(block, remaining)
        t0 = time.perf_counter()
        for _ in range(m):
            k.spawn(noop)
        curve.append(us(time.perf_counter() - t0, m))
        remaining -= m
    fill_s = time.perf_counter() - t_fill

    settle()
    t0 = time.perf_counter()
    for _ in range(batch):
        last = k.spawn(noop)
    deep = us(time.perf_counter() - t0, batch)
    depth = queued
    ratio = deep / first

    # Shutdown cancels every queued process (they have no thread, so at once), in PID order. The
    # gate ignores the kill request (no control point); it is let go when the last queued
    # process's cancellation is delivered, so no queued process ever runs.
    k.subscribe("process.cancelled", lambda e: _gate_release.set(), pid=last)
    k.bus.flush()
    settle()
    t0 = time.perf_counter()
    k.shutdown(timeout=600)
    shutdown_s = time.perf_counter() - t0
    infos = k.ps(all=True)
    cancelled = sum(1 for i in infos if i.state == "Cancelled")
    expected = queued + batch
    _gate_release.set()

    ok = ratio <= QUEUE_TOLERANCE
    rows = [
        ("spawn with 0 queued", f"{first:.1f}", "", "", ""),
        (f"spawn with {depth:,} queued", f"{deep:.1f}", f"{ratio:.2f}x", f"~{QUEUE_BUDGET:.0f}x", verdict(ok)),
        (f"shutdown, {expected:,} queued", f"{shutdown_s:.2f} s", f"{us(shutdown_s, expected):.1f} us/proc",
         "(info)", ""),
    ]
    print(table(("measure", "us/spawn", "ratio", "budget", "result"), rows))
    print("   spawn cost while filling, per block of {:,} (us/spawn): {}".format(
        block, " ".join(f"{c:.1f}" for c in curve)))
    print(f"   filling {queued - batch:,} took {fill_s:.2f} s; shutdown cancelled {cancelled:,} of {expected:,}")
    if cancelled != expected:
        print("   !! not every queued process was cancelled")
    results = [(f"queue: spawn at {depth:,} queued / at 0 = {ratio:.2f}x (budget ~1x)", ok)]
    del k, infos
    settle()
    return results


# ---------------------------------------------------------------------------- 3. ps


def bench_ps(records: int, workers: int) -> list[tuple[str, bool]]:
    print(f"\n3. ps over {records:,} finished processes")
    finished = threading.Event()
    count = [0]

    def on_done(event) -> None:  # count completions without k.wait, which would snapshot them
        count[0] += 1
        if count[0] == records:
            finished.set()

    with Kernel(monitor=False, max_running=workers) as k:
        k.subscribe("process.completed", on_done)
        t0 = time.perf_counter()
        for _ in range(records):
            k.spawn(noop)
        if not finished.wait(600):
            raise SystemExit(f"ps: only {count[0]:,} of {records:,} processes completed")
        k.bus.flush(timeout=60)
        fill_s = time.perf_counter() - t0

        settle()
        t0 = time.perf_counter()
        infos = k.ps(all=True)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        infos = k.ps(all=True)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = ps_plain(infos)
        render = time.perf_counter() - t0
        assert len(infos) == records and text.count("\n") == records

    scale = PS_BUDGET_RECORDS / records
    note = "" if records == PS_BUDGET_RECORDS else f" (scaled x{scale:g} to {PS_BUDGET_RECORDS:,})"
    rows = []
    results = []
    for label, secs in (("k.ps(all=True), first call", cold), ("k.ps(all=True), again", warm),
                        ("ps_plain(infos) render", render), ("ps -a total (first call + render)", cold + render)):
        at_budget = secs * scale
        ok = at_budget < PS_BUDGET
        rows.append((label, f"{secs:.3f}", f"{at_budget:.3f}", f"< {PS_BUDGET}", verdict(ok)))
        results.append((f"ps: {label}: {at_budget:.3f} s at {PS_BUDGET_RECORDS:,}{note} (budget {PS_BUDGET} s)", ok))
    print(table(("measure", "seconds", f"at {PS_BUDGET_RECORDS // 1000}k", "budget", "result"), rows))
    print(f"   (making {records:,} finished processes took {fill_s:.1f} s; "
          f"the first ps builds and caches their snapshots)")
    return results


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="processes per lifecycle throughput run (default 10000)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, about 15 s")
    ap.add_argument("--queued", type=int, default=None, help="processes queued behind the gate (default 100000)")
    ap.add_argument("--records", type=int, default=None, help="finished processes for ps (default 100000)")
    ap.add_argument("--workers", type=int, default=2, help="max_running and pool max_workers (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="lifecycle repeats (default 3; quick 2)")
    args = ap.parse_args(argv)
    quick = args.quick
    n = args.n or (2_000 if quick else 10_000)
    queued = args.queued or (20_000 if quick else 100_000)
    records = args.records or (20_000 if quick else 100_000)
    repeats = args.repeats or (2 if quick else 3)
    n_rt = max(100, n // 5)
    n_raw = max(100, n // 5)
    batch = min(1_000, max(1, queued // 20))

    print(f"llmunix scheduler benchmark{' (quick)' if quick else ''}: Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {_cpu_model()}")
    started = time.perf_counter()
    results = []
    results += bench_lifecycle(n, n_rt, n_raw, args.workers, repeats)
    results += bench_queue(queued, batch, blocks=10)
    results += bench_ps(records, args.workers)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nBudgets ({time.perf_counter() - started:.1f} s total, peak RSS {peak_mb:.0f} MB):")
    for text, ok in results:
        print(f"  [{'met' if ok else 'MISSED':>6}] {text}")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
