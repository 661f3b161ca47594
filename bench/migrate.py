"""`migrate`: how long moving a process between this machine and a Dask cluster takes.

    python bench/migrate.py                # 10 round trips on a LocalCluster of 2 workers
    python bench/migrate.py --rounds 20

Not a test: no timed assertions; it exits 1 with `INVALID: ...` when a move does not happen (the
process does not run in its new place, or does not go on from its checkpoint). No budget;
docs/performance.md keeps the figures.

One built-in `sleep` process (remote, a checkpoint every 0.6 s) is moved to this machine and back
R times. For each move: `stop` (the old place stopped the body: the `seconds` of its
`process.migrated` event), and `running again` (from `migrate` being called to the body running
in its new place: its detail says `running` here, or `running on tcp://...` on a worker).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from baseline import invalid, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # measure this checkout, not an install

import distributed  # noqa: E402

from llmunix import Kernel  # noqa: E402
from llmunix.backends.dask import DaskBackend  # noqa: E402


def until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            invalid(f"timed out waiting for {predicate.__doc__ or predicate}")
        time.sleep(0.002)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0",
                                       silence_logs=logging.CRITICAL)
    home = Path(tempfile.mkdtemp(prefix="llmunix-bench-migrate-")) / "home"
    moves: dict[str, list[tuple[float, float]]] = {"dask -> local": [], "local -> dask": []}
    with Kernel(home, monitor=False, backend=DaskBackend(cluster.scheduler_address)) as k:
        pid = k.spawn("sleep", seconds=60)  # a checkpoint every 0.6 s
        until(lambda: k.info(pid).detail.startswith("running on tcp://") and k.checkpoints(pid))
        for _ in range(args.rounds):
            for to, running in (("local", lambda: k.info(pid).detail == "running"),
                                ("dask", lambda: k.info(pid).detail.startswith("running on tcp://"))):
                before = len(k.checkpoints(pid))
                t0 = time.perf_counter()
                k.migrate(pid, to)
                until(running)
                again = time.perf_counter() - t0
                until(lambda before=before: len(k.checkpoints(pid)) > before)  # it goes on, and checkpoints
                k.flush()
                stop = k.events(pid, types="process.migrated")[-1].data["seconds"]
                moves["dask -> local" if to == "local" else "local -> dask"].append((stop, again))
        ticks = [s["tick"] for _v, s in k.checkpoints(pid)]
        if ticks != sorted(ticks):
            invalid("a move did not go on from its last checkpoint")
        k.kill(pid)
    cluster.close()
    rows = []
    for name, got in moves.items():
        stops, agains = [s for s, _ in got], [a for _, a in got]
        rows.append((name, f"{statistics.median(stops) * 1000:.1f} ms", f"{max(stops) * 1000:.1f} ms",
                     f"{statistics.median(agains) * 1000:.1f} ms", f"{max(agains) * 1000:.1f} ms"))
    print(f"migrate, {args.rounds} round trips of one checkpointing process (LocalCluster, 2 workers)")
    print(table(("move", "stop median", "stop max", "running again median", "max"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
