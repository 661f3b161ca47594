"""What every benchmark here shares: the raw ThreadPoolExecutor baseline that llmunix is measured
against in the same run, and the small report helpers (tables, verdicts).

A budget's verdict is `met` or `MISSED` (a result: the script still exits 0), or `INVALID` when
the run's own correctness check failed, so the figure means nothing; then the script exits 1. A
check that leaves nothing to measure stops the run at once with `INVALID: ...` (exit 1)."""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NoReturn

MET, MISSED, INVALID = "met", "MISSED", "INVALID"


def noop_plain() -> None:
    return None


def settle() -> None:
    """Start each measurement from the same place: no pending garbage."""
    gc.collect()


def pool_throughput(n: int, workers: int) -> float:
    """Seconds to submit n no-ops to a raw pool and wait for all of them."""
    with ThreadPoolExecutor(max_workers=workers) as ex:
        wait([ex.submit(noop_plain) for _ in range(workers * 2)])
        settle()
        t0 = time.perf_counter()
        wait([ex.submit(noop_plain) for _ in range(n)])
        return time.perf_counter() - t0


def pool_roundtrip(n: int, workers: int) -> float:
    """Seconds for n submit-then-result round trips, one at a time."""
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for _ in range(4):
            ex.submit(noop_plain).result()
        settle()
        t0 = time.perf_counter()
        for _ in range(n):
            ex.submit(noop_plain).result()
        return time.perf_counter() - t0


def us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def verdict(ok: bool, valid: bool = True) -> str:
    """`met` or `MISSED`; `INVALID` whatever the figure when the run's correctness check failed."""
    if not valid:
        return INVALID
    return MET if ok else MISSED


def invalid(why: str) -> NoReturn:
    """Stop the run: the engine did something wrong, so there is nothing valid to report."""
    raise SystemExit(f"INVALID: {why}")


def report_budgets(title: str, results: list[tuple[str, str]]) -> int:
    """Print each budget's verdict under `title`; the exit status: 1 if any is INVALID, else 0."""
    print(f"\n{title}:")
    for text, result in results:
        print(f"  [{result:>7}] {text}")
    if any(result == INVALID for _text, result in results):
        print("INVALID: a correctness check of this run failed (see the `!!` lines above)")
        return 1
    return 0


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain table: first column left-aligned, the others right-aligned."""
    cells = [headers, *rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(f.ljust(w) if c == 0 else f.rjust(w)
                             for c, (f, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)
