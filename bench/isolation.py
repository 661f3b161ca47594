"""Isolated processes against thread ones, in the same run: what a worker OS process costs.

    python bench/isolation.py [--n 200] [--quick]

(a) round trip, one at a time: spawn a no-op and wait for it, N times, on a thread and isolated
    (llmunix/isolation.py: a worker handed over by the pre-forked pool process). The budget
    (docs/processes.md): an isolated no-op costs at most a few milliseconds more than a thread
    one — here, at most 5 ms more per process.
(b) throughput: spawn N no-ops, wait for all (8 slots), on threads and isolated.
(c) relayed ctx calls: 100 progress reports and a durable checkpoint from the body, both ways.
(d) nothing left behind: SIGKILL of the llmunix command running 3 `shell` tools with
    grandchildren and 3 isolated tools; seconds until none of its descendants is left (the
    target: none after 2 s).

Every figure counts only if its processes completed, and the isolated ones really ran in another
OS process; otherwise INVALID and exit 1. A store is used (a home in a temporary directory), as
the llmunix command does; (a)-(c) run without the monitor.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from baseline import invalid, report_budgets, settle, table, verdict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout, not an install

import isolation_tools  # noqa: E402, F401 - registers the bench_* tools

from llmunix import Kernel  # noqa: E402

EXTRA_MS_BUDGET = 5.0
SURVIVOR_BUDGET = 2.0


def roundtrips(k: Kernel, tool: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        [info] = k.wait([k.spawn(tool)])
        check(info, tool)
    return time.perf_counter() - t0


def throughput(k: Kernel, tool: str, n: int, params: dict | None = None) -> float:
    t0 = time.perf_counter()
    pids = [k.spawn(tool, params=params) for _ in range(n)]
    for info in k.wait(pids):
        check(info, tool)
    return time.perf_counter() - t0


def check(info, tool: str) -> None:  # noqa: ANN001
    if info.state != "Completed":
        invalid(f"{tool} process {info.process_id} ended {info.state}: {info.error}")
    isolated = "isolated" in tool
    if "noop" in tool and (info.output != os.getpid()) != isolated:
        invalid(f"{tool} process {info.process_id} ran in OS process {info.output}, not where it should")


def survivors_after_sigkill(home: Path) -> tuple[float, int]:
    """(seconds until no descendant of a SIGKILLed llmunix is left, how many there were)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}"}
    mark = home.parent / "c"
    shell = subprocess.Popen([sys.executable, "-m", "llmunix", "--home", str(home), "--tools", "isolation_tools",
                              "--tools", "tests.isolated_tools"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, text=True, cwd=ROOT)
    commands = ['run shell "cmd=sleep 300 & sleep 300"', 'run shell "cmd=(sleep 301 &); sleep 301"',
                """run shell "cmd=sh -c 'sleep 302 & sleep 302'" """, f"run iso_c_sleep path={mark} seconds=303",
                "run iso_alloc mb=10 seconds=304", "run iso_shell_tree seconds=305"]
    shell.stdin.write("\n".join(commands) + "\n")
    shell.stdin.flush()
    deadline = time.monotonic() + 60
    while True:
        kids = psutil.Process(shell.pid).children(recursive=True)
        if sum(1 for p in kids if _name(p) == "sleep") == 8 and Path(f"{mark}.started").exists():
            break
        if time.monotonic() > deadline:
            shell.kill()
            invalid("the 6 processes of (d) did not all start")
        time.sleep(0.01)
    shell.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    shell.wait()
    while True:
        left = [p for p in kids if _alive(p)]
        if not left:
            return time.monotonic() - t0, len(kids)
        if time.monotonic() - t0 > 30:
            for p in left:
                p.kill()
            invalid(f"{len(left)} descendants of a SIGKILLed llmunix still alive after 30 s")
        time.sleep(0.005)


def _name(p: psutil.Process) -> str:
    """Its name, or "" if it ended meanwhile (a shell's short-lived helper)."""
    try:
        return p.name()
    except psutil.Error:
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="--n 50")
    args = ap.parse_args()
    n = 50 if args.quick else args.n
    with tempfile.TemporaryDirectory() as tmp:
        k = Kernel(Path(tmp) / "home", monitor=False)
        try:
            for tool in ("bench_thread_noop", "bench_isolated_noop"):  # warm: the pool process starts once
                roundtrips(k, tool, 5)
            settle()
            rt = {tool: roundtrips(k, tool, n) for tool in ("bench_thread_noop", "bench_isolated_noop")}
            settle()
            tp = {tool: throughput(k, tool, n) for tool in ("bench_thread_noop", "bench_isolated_noop")}
            settle()
            ctx = {tool: throughput(k, tool, max(10, n // 10), {"n": 100})
                   for tool in ("bench_thread_progress", "bench_isolated_progress")}
            workers = k.isolation.pool.started_workers
        finally:
            k.shutdown()
        gone_after, descendants = survivors_after_sigkill(Path(tmp) / "home-d")
    if workers < 2 * n:
        invalid(f"only {workers} isolated workers were started for {2 * n}+ isolated processes")
    ms = {t: s / n * 1000 for t, s in rt.items()}
    tms = {t: s / n * 1000 for t, s in tp.items()}
    cms = {t: s / max(10, n // 10) * 1000 for t, s in ctx.items()}
    extra = ms["bench_isolated_noop"] - ms["bench_thread_noop"]
    print(f"machine: {psutil.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
          f"{n} processes each")
    print(table(("", "thread", "isolated", "ratio", "isolated extra"), [
        ("(a) round trip, one at a time (ms/process)", f"{ms['bench_thread_noop']:.3f}",
         f"{ms['bench_isolated_noop']:.3f}", f"{ms['bench_isolated_noop'] / ms['bench_thread_noop']:.0f}x",
         f"{extra:.2f} ms"),
        ("(b) throughput, 8 slots (ms/process)", f"{tms['bench_thread_noop']:.3f}",
         f"{tms['bench_isolated_noop']:.3f}", f"{tms['bench_isolated_noop'] / tms['bench_thread_noop']:.0f}x",
         f"{tms['bench_isolated_noop'] - tms['bench_thread_noop']:.2f} ms"),
        ("(c) 100 progress + 1 checkpoint (ms/process)", f"{cms['bench_thread_progress']:.3f}",
         f"{cms['bench_isolated_progress']:.3f}",
         f"{cms['bench_isolated_progress'] / cms['bench_thread_progress']:.1f}x",
         f"{cms['bench_isolated_progress'] - cms['bench_thread_progress']:.2f} ms"),
    ]))
    print(f"(d) SIGKILL of llmunix with 3 shell tools (grandchildren) and 3 isolated tools: all {descendants} "
          f"descendants gone {gone_after:.2f} s later")
    return report_budgets("budgets", [
        (f"isolated no-op round trip: {extra:.2f} ms more than on a thread (budget: at most "
         f"{EXTRA_MS_BUDGET:g} ms more)", verdict(extra <= EXTRA_MS_BUDGET)),
        (f"no survivor of a SIGKILLed llmunix after {SURVIVOR_BUDGET:g} s: {gone_after:.2f} s",
         verdict(gone_after <= SURVIVOR_BUDGET)),
    ])


if __name__ == "__main__":
    sys.exit(main())
