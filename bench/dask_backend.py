"""The dask backend's cost per process: a no-op remote tool run through llmunix against plain
`client.submit(f).result()` round trips on the same cluster, in the same run.

A local cluster of worker processes (`LocalCluster(processes=True)`, 2 workers x 1 thread by
default) is started once. Measured, each the median of --repeats runs, interleaved with the
baseline:

* round trip: `k.wait([k.spawn("bench_remote_noop")])`, one at a time, against
  `client.submit(plain_noop, pure=False).result()`;
* throughput: spawn N and wait for all (`max_running` = the cluster's threads x 4), against
  submitting N and gathering them;
* both in memory and with a store (durable: each round trip, and each throughput run, until
  `k.flush()` has returned, i.e. the processes' ends are committed);
* `ctx.checkpoint()` on a worker (durable here before it returns) and pause latency (pause asked
  -> the body has stopped at a control point -> phase paused).

    python bench/dask_backend.py            # N=400, 5 repeats
    python bench/dask_backend.py --quick    # N=100, 3 repeats

It checks its own results: a process that does not complete, a store that does not catch up or a
pause that never takes stops the run with `INVALID: ...` and exit status 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # workers inherit it: bench.dask_tools

import distributed  # noqa: E402

from bench.baseline import invalid, settle, table  # noqa: E402
from bench.dask_tools import plain_noop  # noqa: E402
from llmunix import Kernel  # noqa: E402
from llmunix.backends.dask import DaskBackend  # noqa: E402


def ms(seconds: float, n: int) -> float:
    return seconds / n * 1e3


def plain_roundtrip(client: distributed.Client, n: int) -> float:
    settle()
    t0 = time.perf_counter()
    for _ in range(n):
        client.submit(plain_noop, pure=False).result()
    return time.perf_counter() - t0


def plain_throughput(client: distributed.Client, n: int) -> float:
    settle()
    t0 = time.perf_counter()
    futures = [client.submit(plain_noop, pure=False) for _ in range(n)]
    client.gather(futures)
    return time.perf_counter() - t0


def kernel(address: str, home: Path | None, slots: int) -> Kernel:
    return Kernel(home, monitor=False, max_running=slots, backend=DaskBackend(address))


def check(infos, what: str) -> None:
    bad = [i for i in infos if i.state != "Completed"]
    if bad:
        invalid(f"{what}: {len(bad)} processes did not complete, e.g. {bad[0].state}: {bad[0].error}")


def durable(k: Kernel, what: str) -> None:
    """With a store: until every event so far (the processes' ends included) is committed."""
    if k.store is not None and not k.flush(timeout=120):
        invalid(f"{what}: the store did not catch up within 120 s")


def llmunix_roundtrip(k: Kernel, n: int) -> float:
    settle()
    t0 = time.perf_counter()
    for _ in range(n):
        check(k.wait([k.spawn("bench_remote_noop")]), "round trip")
        durable(k, "round trip")
    return time.perf_counter() - t0


def llmunix_throughput(k: Kernel, n: int) -> float:
    settle()
    t0 = time.perf_counter()
    infos = k.wait([k.spawn("bench_remote_noop") for _ in range(n)])
    durable(k, "throughput")
    elapsed = time.perf_counter() - t0
    check(infos, "throughput")
    return elapsed


def checkpoint_latency(k: Kernel, n: int) -> float:
    t0 = time.perf_counter()
    check(k.wait([k.spawn("bench_remote_checkpoint", n=n)]), "checkpoint")
    return time.perf_counter() - t0


def until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            invalid(f"{what} within {timeout:g} s")
        time.sleep(0.0005)


def pause_latency(k: Kernel, repeats: int) -> float:
    """Seconds from pause() to phase paused (the body stopped at a control point on its worker)."""
    times = []
    for _ in range(repeats):
        pid = k.spawn("sleep", seconds=30)
        until(lambda pid=pid: k.info(pid).worker is not None, "pause: the process did not reach a worker")
        t0 = time.perf_counter()
        k.pause(pid)
        until(lambda pid=pid: k.info(pid).phase == "paused", "pause: the process did not pause")
        times.append(time.perf_counter() - t0)
        k.kill(pid)
        k.wait([pid])
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="processes per measurement (400; quick 100)")
    ap.add_argument("--workers", type=int, default=2, help="cluster worker processes (1 thread each)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (5; quick 3)")
    a = ap.parse_args()
    n = a.n or (100 if a.quick else 400)
    repeats = a.repeats or (3 if a.quick else 5)
    cluster = distributed.LocalCluster(processes=True, n_workers=a.workers, threads_per_worker=1,
                                       dashboard_address=":0", silence_logs=50)
    client = distributed.Client(cluster, set_as_default=False)
    slots = 4 * a.workers
    try:
        client.submit(plain_noop, pure=False).result()
        rows = []
        with tempfile.TemporaryDirectory() as d:
            for durable in (False, True):
                home = Path(d) / "home" if durable else None
                with kernel(cluster.scheduler_address, home, slots) as k:
                    llmunix_roundtrip(k, 10)  # warm up: workers import llmunix and the tools
                    rt, rt_base, tp, tp_base = [], [], [], []
                    for _ in range(repeats):
                        rt_base.append(plain_roundtrip(client, n // 2))
                        rt.append(llmunix_roundtrip(k, n // 2))
                        tp_base.append(plain_throughput(client, n))
                        tp.append(llmunix_throughput(k, n))
                    where = "durable" if durable else "in memory"
                    for label, times, base, count in (("round trip", rt, rt_base, n // 2),
                                                      ("throughput", tp, tp_base, n)):
                        t, b = statistics.median(times), statistics.median(base)
                        rows.append((f"{label}, {where}", f"{ms(t, count):.2f}", f"{ms(b, count):.2f}",
                                     f"{ms(t - b, count):+.2f}", f"{t / b:.1f}x"))
                    if durable:
                        per_cp = statistics.median(checkpoint_latency(k, 50) for _ in range(repeats)) / 50
                        pause = pause_latency(k, repeats)
        print(f"cluster: {a.workers} worker processes x 1 thread; N={n}, median of {repeats}\n")
        print(table(("per process", "llmunix ms", "client.submit ms", "overhead ms", "ratio"), rows))
        print(f"\nctx.checkpoint() on a worker, durable here before it returns: {per_cp * 1e3:.1f} ms each")
        print(f"pause -> body stopped at its next control point -> Paused: {pause * 1e3:.1f} ms")
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
