"""What every benchmark here shares: the raw ThreadPoolExecutor baseline that llmunix is measured
against in the same run, and the small report helpers (tables, verdicts)."""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor, wait


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


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


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
