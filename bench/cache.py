"""Step caching: what a cache hit costs against running the tool, and what keying inputs costs.

With a store (a home in a temporary directory), one round trip at a time (`spawn` + `wait` +
`flush`: until the end is committed), median of R:

* `echo` run for real (a no-op tool), and the same call as a cache hit (`cache=True`);
* a 200 ms tool (`sleep seconds=0.2`), run and hit: what a cached step saves;
* a hit with N results already stored (the lookup is by primary key: about flat);
* keying a tool that reads a 10 MB input file (its content is hashed on every run).

    python bench/cache.py            # R=200, N=10,000
    python bench/cache.py --quick    # R=50, N=2,000

Not a test: no figure is judged. It checks its own run: each hit must end Completed with the
stored output and name its source (else `INVALID: ...`, exit 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import invalid, settle, table  # noqa: E402
from llmunix import Kernel  # noqa: E402
from llmunix.tools.registry import tool  # noqa: E402


@tool(name="bench_read", idempotent=True, hidden=True, touches=("paths:path",))
def bench_read(ctx, path: str, workspace: str = "") -> int:  # noqa: ANN001
    """Return the size of a file (its content is the cache key's input)."""
    return Path(ctx.cwd, path).stat().st_size


def round_trip(k: Kernel, tool: str, params: dict, cache: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    pid = k.spawn(tool, params=params, cache=True if cache else None)
    info = k.wait([pid])[0]
    k.flush()
    elapsed = time.perf_counter() - t0
    if info.state != "Completed":
        invalid(f"{tool}: process {info.process_id} ended {info.state}: {info.error}")
    return elapsed, pid


def median_ms(k: Kernel, tool: str, params: dict, n: int, *, hit: bool) -> float:
    times = []
    for _ in range(n):
        elapsed, pid = round_trip(k, tool, params, cache=hit)
        if hit and k.cached_from(pid) is None:
            invalid(f"{tool}: process {pid:03d} ran although a result was stored")
        times.append(elapsed)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--stored", type=int)
    args = ap.parse_args()
    r = args.repeats or (50 if args.quick else 200)
    stored = args.stored or (2_000 if args.quick else 10_000)
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with Kernel(home, monitor=False) as k:
            round_trip(k, "echo", {"text": "warm"}, cache=True)  # stores it
            settle()
            run_echo = median_ms(k, "echo", {"text": "warm"}, r, hit=False)
            hit_echo = median_ms(k, "echo", {"text": "warm"}, r, hit=True)
            rows.append(("echo (no-op)", f"{run_echo:.2f}", f"{hit_echo:.2f}", f"{hit_echo / run_echo:.2f}x"))
            round_trip(k, "sleep", {"seconds": 0.2}, cache=True)
            run_sleep = median_ms(k, "sleep", {"seconds": 0.2}, max(5, r // 10), hit=False)
            hit_sleep = median_ms(k, "sleep", {"seconds": 0.2}, r, hit=True)
            rows.append(("sleep seconds=0.2", f"{run_sleep:.2f}", f"{hit_sleep:.2f}",
                         f"{hit_sleep / run_sleep:.3f}x"))
            for i in range(stored):  # fill the cache table
                k.spawn("echo", text=f"fill {i}", cache=True)
            k.wait()
            k.flush(timeout=300)
        with Kernel(home, monitor=False) as k:  # a new session: every hit is read from the store
            hit_full = median_ms(k, "echo", {"text": "warm"}, r, hit=True)
            rows.append((f"echo, {stored:,} results stored, next session", "", f"{hit_full:.2f}", ""))
            data = Path(tmp) / "input.bin"
            data.write_bytes(b"x" * (10 << 20))
            t0 = time.perf_counter()
            for _ in range(5):
                k.cache.key(k.registry.get("bench_read"), {"path": str(data), "workspace": ""}, tmp)
            key_ms = (time.perf_counter() - t0) / 5 * 1000
    print(f"step caching: round trips until committed (spawn + wait + flush), median of {r}")
    print(table(("ms per round trip", "run", "cache hit", "hit/run"), rows))
    print(f"\nkeying a run whose input is a 10 MB file (SHA-256 of its content): {key_ms:.1f} ms")
    print(f"\n({time.perf_counter() - t_start:.1f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
