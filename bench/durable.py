"""Durable-state benchmark: what the SQLite store costs, and whether that cost grows with history.

    python bench/durable.py            # full run (under a minute on 2 cores)
    python bench/durable.py --quick    # smaller sizes (under 15 s)
    python bench/durable.py --n 5000 --history 100000 --workers 2

Not a test: it makes no timed assertions and exits 0 whether or not the budgets are met; it exits
1 with `INVALID: ...` when the engine itself misbehaves (a process does not complete, the store
does not catch up). Every kernel here has a home directory (a fresh temporary one), so every
event goes through the store's writer thread into SQLite. Durable means what a user relies on:
`kernel.flush()` has returned, so every event so far (a process's end included) is committed.
Sections:

(a) lifecycle overhead per no-op process with durable persistence on, against a raw
    ThreadPoolExecutor in the same run (budget: within 8x); throughput (spawn N, wait for all,
    flush) and round trip (one at a time, each until its end is committed: wait, then flush);
    the flush after the throughput run is also timed on its own, and an in-memory kernel is
    measured alongside for reference;
(b) events committed per second: processes emitting many ctx.progress / ctx.log events, until
    `kernel.flush()` returns;
(c) the cost of writes with H finished processes already in the store against an empty store
    (budget: ratio about 1); also kernel start and the automatic compaction over that history;
(d) checkpoint latency: the `ctx.checkpoint()` round trip, which returns once the checkpoint is
    committed; idle, and while another process floods the store with events;
(e) `shutdown()` of a durable kernel with Q processes queued behind running ones (budget: under
    3 s for 100,000; the quick run scales the budget to its Q): every queued process ends
    Interrupted, committed, before shutdown returns;
(f) a cold listing: `llmunix -c "ps -a"` in a new session over a home holding H finished
    processes, against `llmunix -c ps` of the same home (paired runs; budget: under 0.5 s more
    for 100,000, scaled to H in a quick run), output to a pipe as a script reads it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from baseline import invalid, pool_roundtrip, pool_throughput, report_budgets, settle, table, us, verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # measure this checkout, not an install

from llmunix import Kernel  # noqa: E402
from llmunix.store import Store  # noqa: E402
from llmunix.tools.registry import ToolRegistry, tool  # noqa: E402

LIFECYCLE_BUDGET = 8.0  # x a raw ThreadPoolExecutor, with durable persistence on
HISTORY_TOLERANCE = 1.25  # "about 1": cost with H finished processes stored / with none

BENCH_TOOLS = ToolRegistry()  # keep the bench's tools out of the global registry


@tool(registry=BENCH_TOOLS, name="bench-noop")
def noop(ctx):
    """Does nothing."""
    return None


@tool(registry=BENCH_TOOLS, name="bench-chatty")
def chatty(ctx, n: int = 1000):
    """Emits 2n events: a progress report and a log line per step."""
    for i in range(n):
        ctx.progress(i + 1, n)
        ctx.log(f"line {i}")


_latencies: list[float] = []
_flood_stop = threading.Event()


@tool(registry=BENCH_TOOLS, name="bench-checkpointer")
def checkpointer(ctx, n: int = 200):
    """Checkpoints n times, timing each round trip (recorded in _latencies)."""
    for i in range(n):
        t0 = time.perf_counter()
        ctx.checkpoint({"i": i, "payload": "x" * 100})
        _latencies.append(time.perf_counter() - t0)


@tool(registry=BENCH_TOOLS, name="bench-flood")
def flood(ctx):
    """Logs as fast as it can until told to stop (background load for section d)."""
    i = 0
    while not _flood_stop.is_set():
        ctx.log(f"flood {i}")
        i += 1
    return i


_shutdown_gate = threading.Event()


@tool(registry=BENCH_TOOLS, name="bench-gate")
def gate(ctx):
    """Holds a slot until section (e) lets it go (no control point: shutdown waits for it)."""
    _shutdown_gate.wait(600)


# ---------------------------------------------------------------------------- helpers


class Homes:
    """Fresh home directories under one temporary directory, removed at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="llmunix-bench-"))
        self._n = 0

    def new(self) -> Path:
        self._n += 1
        path = self.root / f"home{self._n}"
        path.mkdir()
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def kernel(home: Path | None, workers: int, **kwargs) -> Kernel:
    return Kernel(home, monitor=False, max_running=workers, registry=BENCH_TOOLS, **kwargs)


def check_completed(infos, what: str) -> None:
    bad = [i for i in infos if i.state != "Completed"]
    if bad:
        invalid(f"{what}: {len(bad)} processes did not complete, e.g. {bad[0]}")


def flush(k: Kernel, what: str, timeout: float = 120) -> None:
    """Until every event so far is committed (what "durable" means here), or the run is invalid."""
    if not k.flush(timeout=timeout):
        invalid(f"{what}: the store did not catch up within {timeout:g} s")


# ---------------------------------------------------------------------------- (a) lifecycle


def durable_throughput(home: Path | None, n: int, workers: int) -> tuple[float, float]:
    """Spawn n no-ops, wait for all; then flush. Returns (seconds to wait, seconds to flush)."""
    with kernel(home, workers) as k:
        k.wait([k.spawn("bench-noop") for _ in range(4)])
        k.flush()
        settle()
        t0 = time.perf_counter()
        infos = k.wait([k.spawn("bench-noop") for _ in range(n)])
        t1 = time.perf_counter()
        flush(k, "lifecycle")
        t2 = time.perf_counter()
        check_completed(infos, "lifecycle")
    return t1 - t0, t2 - t1


def durable_roundtrip(home: Path | None, n: int, workers: int) -> float:
    """n round trips, one at a time, each until the process's end is committed (as a user who
    acts on a result only once it is durable would wait)."""
    with kernel(home, workers) as k:
        for _ in range(4):
            k.wait([k.spawn("bench-noop")])
            flush(k, "round trip")
        settle()
        t0 = time.perf_counter()
        for _ in range(n):
            k.wait([k.spawn("bench-noop")])
            flush(k, "round trip")
        return time.perf_counter() - t0


def bench_lifecycle(homes: Homes, n: int, n_rt: int, workers: int, repeats: int) -> list[tuple[str, str]]:
    print(f"\n(a) Lifecycle overhead per no-op process, durable (Kernel(home=tmp)); max_running = "
          f"max_workers = {workers}; median of {repeats}")
    d_wait, d_flush, m_wait, p_tp, d_rt, p_rt = [], [], [], [], [], []
    for _ in range(repeats):  # interleaved, so drift and neighbours hit every side alike
        p_tp.append(us(pool_throughput(n, workers), n))
        w, f = durable_throughput(homes.new(), n, workers)
        d_wait.append(us(w, n))
        d_flush.append(us(f, n))
        m_wait.append(us(durable_throughput(None, n, workers)[0], n))
        p_rt.append(us(pool_roundtrip(n_rt, workers), n_rt))
        d_rt.append(us(durable_roundtrip(homes.new(), n_rt, workers), n_rt))
    med = statistics.median
    d_total = [w + f for w, f in zip(d_wait, d_flush, strict=True)]
    rows, results = [], []

    def row(label: str, count: int, k_us: list[float], base_us: list[float], budgeted: bool) -> None:
        ratio = med(k_us) / med(base_us)
        ok = ratio <= LIFECYCLE_BUDGET
        rows.append((label, f"{count:,}", f"{med(k_us):.1f}", f"{med(base_us):.1f}", f"{ratio:.1f}x",
                     f"<= {LIFECYCLE_BUDGET:.0f}x" if budgeted else "(info)", verdict(ok) if budgeted else ""))
        if budgeted:
            results.append((f"(a) durable {label}: {ratio:.1f}x a raw pool ({med(k_us):.0f} vs "
                            f"{med(base_us):.1f} us; budget {LIFECYCLE_BUDGET:.0f}x)", verdict(ok)))

    row("throughput: spawn N + wait + flush", n, d_total, p_tp, True)  # durable: until committed
    row("throughput: spawn N + wait", n, d_wait, p_tp, False)
    row("round trip until committed (wait + flush), one at a time", n_rt, d_rt, p_rt, True)
    row("in-memory kernel, spawn N + wait", n, m_wait, p_tp, False)
    print(table(("variant", "n", "llmunix us", "pool us", "ratio", "budget", "result"), rows))
    print(f"   flush after the wait (until the store has committed every event): median "
          f"{med(d_flush) * n / 1e6 * 1e3:.0f} ms for {n:,} processes = {med(d_flush):.1f} us/process")
    print(f"   durable / in-memory kernel, spawn N + wait: {med(d_wait) / med(m_wait):.2f}x; "
          f"incl. flush: {med(d_total) / med(m_wait):.2f}x")
    return results


# ---------------------------------------------------------------------------- (b) events/s


def bench_events(homes: Homes, procs: int, per_proc: int, workers: int) -> list[tuple[str, str]]:
    total = procs * per_proc * 2
    print(f"\n(b) Events committed per second: {procs} processes x {per_proc:,} steps "
          f"(ctx.progress + ctx.log each) = {total:,} events")
    rows = []
    for label, home in (("durable", homes.new()), ("in memory (bus only)", None)):
        with kernel(home, workers) as k:
            k.wait([k.spawn("bench-noop")])
            k.flush()
            settle()
            t0 = time.perf_counter()
            infos = k.wait([k.spawn("bench-chatty", n=per_proc) for _ in range(procs)])
            t1 = time.perf_counter()
            if not (k.flush(timeout=300) if home is not None else k.bus.flush(timeout=300)):
                invalid(f"events: the {label} kernel did not catch up within 300 s")
            t2 = time.perf_counter()
            check_completed(infos, "events")
            stored = None
            if k.store is not None:
                stored = k.store.query("SELECT count(*) AS n FROM events")[0]["n"]
        rows.append((label, f"{t1 - t0:.2f}", f"{t2 - t1:.2f}", f"{total / (t2 - t0):,.0f}",
                     f"{us(t2 - t0, total):.1f}", "-" if stored is None else f"{stored:,}"))
    print(table(("kernel", "emit s", "drain s", "events/s", "us/event", "rows"), rows))
    print("   emit: until the processes finished; drain: then until flush() returned (bus + store)")
    return []


# ---------------------------------------------------------------------------- (c) history


def fill_history(home: Path, count: int) -> float:
    """A store holding `count` finished processes (3 events and a tool run each), written with
    direct SQL into the store's own schema (quicker than running them). Returns seconds."""
    t0 = time.perf_counter()
    Store(home / "llmunix.db").close()  # creates the schema
    conn = sqlite3.connect(home / "llmunix.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    base = time.time() - count * 0.001 - 60
    params = json.dumps({"seconds": 0})
    conn.executemany(
        "INSERT INTO processes (pid, session, name, tool, kind, priority, owner, after, cwd, params, state, phase, "
        "detail, exit_code, output, created, started, finished, runtime) "
        "VALUES (?,1,'bench-noop','bench-noop','tool','normal','bench','[]','/',?,'Completed','done','exit 0',0,"
        "'null',?,?,?,0.0001)",
        ((pid, params, base + pid * 0.001, base + pid * 0.001, base + pid * 0.001 + 0.0001)
         for pid in range(1, count + 1)))
    conn.executemany(
        "INSERT INTO events (session, seq, time, type, pid, data) VALUES (1,?,?,?,?,'{}')",
        ((pid * 3 + j, base + pid * 0.001, t, pid) for pid in range(1, count + 1)
         for j, t in enumerate(("process.spawned", "process.started", "process.completed"))))
    conn.executemany(
        "INSERT INTO tool_runs (tool, pid, started, finished, duration, outcome) VALUES "
        "('bench-noop',?,?,?,0.0001,'Completed')",
        ((pid, base + pid * 0.001, base + pid * 0.001) for pid in range(1, count + 1)))
    conn.execute("COMMIT")
    conn.close()
    (home / "pids").write_text(f"{count + 1}\n")
    return time.perf_counter() - t0


def write_cycle(k: Kernel, n: int) -> tuple[float, float]:
    """(us per process for spawn n + wait + flush, us per process for n one-at-a-time round trips
    each followed by a flush)."""
    settle()
    t0 = time.perf_counter()
    check_completed(k.wait([k.spawn("bench-noop") for _ in range(n)]), "history")
    flush(k, "history")
    batch = us(time.perf_counter() - t0, n)
    m = max(50, n // 10)
    t0 = time.perf_counter()
    for _ in range(m):
        k.wait([k.spawn("bench-noop")])
        flush(k, "history")
    single = us(time.perf_counter() - t0, m)
    return batch, single


def bench_history(homes: Homes, history: int, n: int, workers: int, repeats: int) -> list[tuple[str, str]]:
    print(f"\n(c) Writes with {history:,} finished processes in the store vs an empty store "
          f"({n:,} spawn+complete+flush, then {max(50, n // 10)} single ones with a flush each; median of {repeats})")
    big = homes.new()
    fill_s = fill_history(big, history)
    empty = homes.new()
    starts: dict[str, float] = {}
    batch: dict[str, list[float]] = {"empty": [], "full": []}
    single: dict[str, list[float]] = {"empty": [], "full": []}
    kernels: dict[str, Kernel] = {}
    try:
        # retention_count above the history: nothing is compacted while we measure writes.
        for label, home in (("empty", empty), ("full", big)):
            t0 = time.perf_counter()
            kernels[label] = kernel(home, workers, retention_count=10 * history)
            starts[label] = time.perf_counter() - t0
            kernels[label].wait([kernels[label].spawn("bench-noop") for _ in range(4)])
            kernels[label].flush()
        for _ in range(repeats):  # interleaved, so drift hits both alike
            for label, k in kernels.items():
                b, s = write_cycle(k, n)
                batch[label].append(b)
                single[label].append(s)
    finally:
        for k in kernels.values():
            k.shutdown()
    med = statistics.median
    r_batch = med(batch["full"]) / med(batch["empty"])
    r_single = med(single["full"]) / med(single["empty"])
    ok_b, ok_s = r_batch <= HISTORY_TOLERANCE, r_single <= HISTORY_TOLERANCE

    # The automatic compaction at start, over the same history (default retention: newest 10,000).
    t0 = time.perf_counter()
    k = kernel(big, workers)
    start_full = time.perf_counter() - t0
    job = k.durable.compaction_in_flight()
    if not job.done.wait(600):
        invalid("history: the automatic compaction did not finish within 600 s")
    gc_s = time.perf_counter() - t0
    counts = job.as_dict()
    t0 = time.perf_counter()
    k.wait([k.spawn("bench-noop")])
    k.flush()
    after = time.perf_counter() - t0
    k.shutdown()
    size_mb = (big / "llmunix.db").stat().st_size / 1e6

    rows = [
        ("spawn N + wait + flush", f"{med(batch['empty']):.1f}", f"{med(batch['full']):.1f}", f"{r_batch:.2f}x",
         f"<= {HISTORY_TOLERANCE}x", verdict(ok_b)),
        ("one round trip + flush", f"{med(single['empty']):.1f}", f"{med(single['full']):.1f}",
         f"{r_single:.2f}x", f"<= {HISTORY_TOLERANCE}x", verdict(ok_s)),
    ]
    print(table(("us per process", "empty", f"{history // 1000}k stored", "ratio", "budget", "result"), rows))
    print(f"   filling the store with {history:,} processes and {3 * history:,} events by direct SQL: {fill_s:.1f} s")
    print(f"   Kernel start: {starts['empty'] * 1e3:.0f} ms empty, {starts['full'] * 1e3:.0f} ms with "
          f"{history:,} stored")
    print(f"   automatic compaction at start (retention_count 10,000): {counts['processes']:,} processes, "
          f"{counts['events']:,} events in {gc_s:.2f} s on the writer thread (start itself {start_full * 1e3:.0f} ms); "
          f"a spawn+wait+flush right after it {after * 1e3:.1f} ms; db file {size_mb:.0f} MB")
    return [
        (f"(c) spawn+complete+flush with {history:,} stored / empty = {r_batch:.2f}x (budget ~1x)", verdict(ok_b)),
        (f"(c) single round trip + flush with {history:,} stored / empty = {r_single:.2f}x (budget ~1x)",
         verdict(ok_s)),
    ]


# ---------------------------------------------------------------------------- (d) checkpoints


def raw_commit_latency(home: Path, n: int) -> list[float]:
    """The floor: one INSERT + COMMIT on a WAL database with synchronous=NORMAL, same disk."""
    conn = sqlite3.connect(home / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (pid INTEGER, version INTEGER, state TEXT, PRIMARY KEY (pid, version))")
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1, ?, ?)", (i, json.dumps({"i": i, "payload": "x" * 100})))
        conn.execute("COMMIT")
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_checkpoints(homes: Homes, n: int, workers: int) -> list[tuple[str, str]]:
    print(f"\n(d) Checkpoint latency: ctx.checkpoint() round trip (returns once committed), {n} checkpoints")
    results: dict[str, list[float]] = {}
    for label, load in (("idle", False), ("while another process floods the log", True)):
        with kernel(homes.new(), workers) as k:
            _latencies.clear()
            _flood_stop.clear()
            bg = k.spawn("bench-flood") if load else None
            if bg is not None:
                time.sleep(0.2)  # let the flood get going
            settle()
            check_completed(k.wait([k.spawn("bench-checkpointer", n=n)]), "checkpoints")
            _flood_stop.set()
            if len(_latencies) != n:
                invalid(f"checkpoints: {len(_latencies)} of {n} timed")
            if bg is not None:
                flooded = k.wait([bg])[0].output
                print(f"   (the flood wrote {flooded:,} log events meanwhile)")
            results[label] = list(_latencies)
    results["raw SQLite INSERT + COMMIT (floor)"] = raw_commit_latency(homes.new(), n)
    rows = []
    for label, values in results.items():
        rows.append((label, f"{statistics.median(values) * 1e3:.3f}", f"{pct(values, 0.9) * 1e3:.3f}",
                     f"{pct(values, 0.99) * 1e3:.3f}", f"{max(values) * 1e3:.3f}"))
    print(table(("checkpoint", "median ms", "p90 ms", "p99 ms", "max ms"), rows))
    floor = statistics.median(results["raw SQLite INSERT + COMMIT (floor)"])
    print(f"   idle median / raw commit: {statistics.median(results['idle']) / floor:.1f}x")
    return []


# ---------------------------------------------------------------------------- main


# ---------------------------------------------------------------------------- (e) shutdown

SHUTDOWN_BUDGET_S = 3.0  # for 100,000 queued


def bench_shutdown(homes: Homes, queued: int, workers: int) -> list[tuple[str, str]]:
    print(f"\n(e) shutdown of a durable kernel with {queued:,} queued ({workers} running)")
    _shutdown_gate.clear()
    home = homes.new()
    k = kernel(home, workers)
    for _ in range(workers):
        k.spawn("bench-gate", priority="critical")
    t0 = time.perf_counter()
    for _ in range(queued):
        k.spawn("bench-noop")
    fill_s = time.perf_counter() - t0
    flush(k, "filling the queue")
    settle()
    _shutdown_gate.set()  # the running ones end as soon as they are asked; the queued never start
    t0 = time.perf_counter()
    stopped = k.shutdown(timeout=600)
    shutdown_s = time.perf_counter() - t0
    conn = sqlite3.connect(k.store.path)  # what a later start reads
    try:
        counts = dict(conn.execute("SELECT state, count(*) FROM processes GROUP BY state").fetchall())
    finally:
        conn.close()
    if counts.get("Interrupted", 0) < queued:
        invalid(f"shutdown: {counts} — not every queued process was recorded Interrupted")
    budget = SHUTDOWN_BUDGET_S * queued / 100_000
    ok = verdict(shutdown_s <= budget)
    print(table(("measure", "value", "budget", "result"), [
        (f"shutdown with {queued:,} queued", f"{shutdown_s:.2f} s ({us(shutdown_s, queued):.1f} us each)",
         f"< {budget:.1f} s", ok),
        ("filling the queue (spawn)", f"{fill_s:.2f} s ({us(fill_s, queued):.1f} us each)", "", ""),
    ]))
    print(f"   stopped {len(stopped):,}; stored states after: {counts}")
    return [(f"(e) shutdown with {queued:,} queued, durable: {shutdown_s:.2f} s (budget < {budget:.1f} s)", ok)]


# ---------------------------------------------------------------------------- (f) cold listing

COLD_PS_BUDGET_S = 0.5  # over the bare start-up, for 100,000 stored


def _cli(home: Path, command: str) -> tuple[float, int]:
    """Wall seconds of `llmunix --home HOME -c COMMAND` of this checkout, and the lines it printed."""
    import subprocess

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an install: bytecode cached
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmunix", "--home", str(home), "-c", command], env=env,
                          capture_output=True, cwd=root)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        invalid(f"llmunix -c {command!r} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}")
    return wall, proc.stdout.count(b"\n")


def bench_cold_ps(homes: Homes, history: int, pairs: int) -> list[tuple[str, str]]:
    print(f"\n(f) cold `ps -a` over {history:,} stored finished processes (new session each; {pairs} pairs)")
    home = homes.new()
    fill_history(home, history)
    _cli(home, "ps")  # the first start compacts what retention says (measured in (c)); bytecode cached
    extra, listed, bare_walls, all_walls = [], 0, [], []
    for _ in range(pairs):
        bare, _lines = _cli(home, "ps")
        full, listed = _cli(home, "ps -a")
        bare_walls.append(bare)
        all_walls.append(full)
        extra.append(full - bare)
    if listed < history:
        invalid(f"cold ps -a listed {listed:,} lines for {history:,} stored processes")
    over = statistics.median(extra)
    budget = COLD_PS_BUDGET_S * history / 100_000
    ok = verdict(over < budget)
    print(table(("measure", "seconds (median)", "budget", "result"), [
        ("llmunix -c ps (start-up, live only)", f"{statistics.median(bare_walls):.3f}", "", ""),
        (f"llmunix -c 'ps -a' ({listed:,} lines)", f"{statistics.median(all_walls):.3f}", "", ""),
        ("ps -a over start-up (median of paired differences)", f"{over:.3f}", f"< {budget:.2f}", ok),
    ]))
    return [(f"(f) cold ps -a over {history:,} stored: {over:.3f} s over start-up (budget < {budget:.2f} s)", ok)]


def main(argv: list[str] | None = None) -> int:
    gc.freeze()  # as llmunix's CLI does once started (cli.py): the startup heap is never collected
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (under 15 s instead of about a minute)")
    ap.add_argument("--n", type=int, default=None, help="processes per throughput run (default 5000; quick 1500)")
    ap.add_argument("--history", type=int, default=None,
                    help="finished processes already stored in (c) (default 100000; quick 20000)")
    ap.add_argument("--workers", type=int, default=2, help="max_running and pool max_workers (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of (a) and (c) (default 5; quick 2)")
    args = ap.parse_args(argv)
    quick = args.quick
    n = args.n or (1_500 if quick else 5_000)
    history = args.history or (20_000 if quick else 100_000)
    repeats = args.repeats or (2 if quick else 5)
    print(f"llmunix durable-state benchmark{' (quick)' if quick else ''}: Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    started = time.perf_counter()
    homes = Homes()
    results: list[tuple[str, str]] = []
    try:
        results += bench_lifecycle(homes, n, max(100, n // 5), args.workers, repeats)
        results += bench_events(homes, 4, 1_000 if quick else 5_000, args.workers)
        results += bench_history(homes, history, max(500, n // 5), args.workers, repeats)
        results += bench_checkpoints(homes, 100 if quick else 300, args.workers)
        results += bench_shutdown(homes, 20_000 if quick else 100_000, args.workers)
        results += bench_cold_ps(homes, history, 3 if quick else 7)
    finally:
        homes.cleanup()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report_budgets(f"Budgets ({time.perf_counter() - started:.1f} s total, peak RSS {peak_mb:.0f} MB)",
                          results)


if __name__ == "__main__":
    raise SystemExit(main())
