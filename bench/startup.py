"""Start-up benchmark: how long a one-shot `llmunix` command takes, against `python -c "import cmd2"`
run in the same loop (paired runs: each llmunix run is followed by its baseline, so load that comes
and goes touches both alike).

    python bench/startup.py             # 15 pairs per command (about 30 s on 2 cores)
    python bench/startup.py --quick     # 5 pairs
    python bench/startup.py --pairs 31

Not a test: it exits 0 whether or not the budgets are met; 1 (`INVALID: ...`) when a command
fails. Budgets (issue 15): `llmunix -c ps` within 1.5x `import cmd2` (median of the paired
ratios); `llmunix --version` and `llmunix --help` under 0.15 s (median wall time).

Each command runs as a user runs an installed llmunix: `python -m llmunix` of this checkout, with
bytecode caches written (pip compiles them at install; the first, unmeasured run writes them here,
even if PYTHONDONTWRITEBYTECODE is set in this shell), in a home made once. Wall time is what a
user waits; CPU time (user + system of the child) is printed beside it, as it moves less when
other work shares the cores. `-X importtime` of `-c ps` is summarised at the end: the modules
that cost most, to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import invalid, report_budgets, table, verdict

ROOT = Path(__file__).resolve().parent.parent
PS_BUDGET = 1.5  # x `python -c "import cmd2"`
FLAG_BUDGET_S = 0.15


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an install: .pyc files exist
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("LLMUNIX_HOME", None)
    return env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; INVALID if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        invalid(f"{' '.join(argv[2:])} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


_WATCHED = ("llmunix", "commands", "cmd2", "pydantic", "rich", "psutil", "prompt_toolkit", "networkx", "yaml",
            "cryptography")


def import_costs(home: str, env: dict[str, str], top: int = 12) -> list[tuple[str, str, str]]:
    """The top-level imports of `-c ps` that cost most (cumulative microseconds, from -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmunix", "--home", home, "-c", "ps"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        own, cum, name = line[len("import time:"):].split("|")
        if not own.strip().isdigit():
            continue  # the header line
        depth = (len(name) - len(name.lstrip()) - 1) // 2  # nesting: two spaces per level
        if depth == 0 and name.strip().split(".")[0] in _WATCHED:
            rows.append((name.strip(), int(own), int(cum)))
    rows.sort(key=lambda r: -r[2])
    return [(name, f"{cum / 1000:.1f}", f"{own / 1000:.1f}") for name, own, cum in rows[:top]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 pairs per command instead of 15")
    ap.add_argument("--pairs", type=int, default=None, help="paired runs per command (default 15; quick 5)")
    args = ap.parse_args(argv)
    pairs = args.pairs or (5 if args.quick else 15)
    env = _env()
    py = sys.executable
    print(f"llmunix start-up benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{pairs} paired runs per command")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmunix-bench-startup-") as home:
        commands = {
            "llmunix -c ps": [py, "-m", "llmunix", "--home", home, "-c", "ps"],
            "llmunix --version": [py, "-m", "llmunix", "--version"],
            "llmunix --help": [py, "-m", "llmunix", "--help"],
        }
        baseline = [py, "-c", "import cmd2"]
        for argv in (*commands.values(), baseline):  # writes .pyc files and the home; not measured
            timed(argv, env)
        rows, results = [], []
        base_walls: list[float] = []
        for label, argv in commands.items():
            walls, cpus, ratios = [], [], []
            for _ in range(pairs):
                wall, cpu = timed(argv, env)
                base_wall, _base_cpu = timed(baseline, env)
                walls.append(wall)
                cpus.append(cpu)
                base_walls.append(base_wall)
                ratios.append(wall / base_wall)
            med_wall, ratio = statistics.median(walls), statistics.median(ratios)
            rows.append((label, f"{med_wall:.3f}", f"{statistics.median(cpus):.3f}", f"{ratio:.2f}x"))
            if label == "llmunix -c ps":
                results.append((f"`llmunix -c ps`: {ratio:.2f}x `import cmd2` (median of {pairs} paired ratios; "
                                f"{med_wall:.3f} s; budget <= {PS_BUDGET}x)", verdict(ratio <= PS_BUDGET)))
            else:
                results.append((f"`{label}`: {med_wall:.3f} s (median; budget < {FLAG_BUDGET_S} s)",
                                verdict(med_wall < FLAG_BUDGET_S)))
        rows.append(('python -c "import cmd2" (baseline)', f"{statistics.median(base_walls):.3f}", "", "1.00x"))
        print(table(("command", "wall s (median)", "CPU s (median)", "x import cmd2 (median pair)"), rows))
        print("\nwhere `-c ps` spends its imports (-X importtime, one run; ms):")
        print(table(("module (top level)", "cumulative", "own"), import_costs(home, env)))
    return report_budgets(f"Budgets ({time.perf_counter() - started:.1f} s total)", results)


if __name__ == "__main__":
    raise SystemExit(main())
