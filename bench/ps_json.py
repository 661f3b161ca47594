"""`ps -a --json` at scale: time and peak memory of the real executable over N finished processes.

    python bench/ps_json.py                      # N=10,000, 3 repeats
    python bench/ps_json.py --quick              # N=2,000
    python bench/ps_json.py --before f3cecc7     # also an earlier revision of this repository, for a ratio

Not a test: no timed assertions, always exits 0 (unless the output is not the JSON array it
should be). It builds a home with N completed processes (one Kernel, `echo` tool), then runs
`llmunix --home H -c CMD` as a child process for `ps` (start-up and an empty listing: the
baseline), `ps -a` (the plain listing) and `ps -a --json`, each K times, and reads each child's
own peak resident memory from `wait4`. It prints the best wall time, the peak RSS, and the RSS
above the baseline's. With `--before REV` the same runs are made with the code of revision REV
(extracted with `git archive`), the two JSON outputs are compared byte for byte, and the ratios
are printed. Issue 19 measured 8-10 s and +500 MB at 10,000 before records were streamed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("ps", "ps -a", "ps -a --json")


def build_home(home: Path, n: int) -> float:
    """N completed `echo` processes in `home`'s store. Returns the seconds it took. In a child
    process: Linux carries a process's peak RSS over fork and exec, so this process stays small
    for the children it measures."""
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from llmunix import Kernel\n"
              f"with Kernel({str(home)!r}, monitor=False, max_running=8) as k:\n"
              f"    k.wait([k.spawn('echo', text=f'record {{i}}') for i in range({n})])\n"
              "    k.flush()\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True)
    return time.perf_counter() - start


def run(checkout: Path, home: Path, command: str, out: Path) -> tuple[float, float]:
    """One `llmunix -c COMMAND` of `checkout`'s code, stdout to `out`: (seconds, peak RSS in MB)."""
    launcher = f"import sys; sys.path.insert(0, {str(checkout)!r}); from llmunix.cli import main; sys.exit(main())"
    env = {**os.environ, "NO_COLOR": "1"}
    with out.open("w") as stdout:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", launcher, "--home", str(home), "-c", command],
                                 stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
        _pid, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{command!r} with {checkout} exited {child.returncode}: {child.stderr.read().decode()[-500:]}")
    child.stderr.close()
    return seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def measure(checkout: Path, home: Path, repeats: int, work: Path) -> dict[str, tuple[float, float]]:
    """Best time and the peak RSS (the largest of the repeats) of each command."""
    figures: dict[str, tuple[float, float]] = {}
    for command in COMMANDS:
        runs = [run(checkout, home, command, work / f"{checkout.name}-{command.replace(' ', '_')}.out")
                for _ in range(repeats)]
        figures[command] = (min(t for t, _ in runs), max(m for _, m in runs))
    return figures


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def report(label: str, figures: dict[str, tuple[float, float]]) -> None:
    base = figures["ps"][1]
    print(f"\n{label}")
    print(f"  {'command':<14} {'best time':>10} {'peak RSS':>10} {'above ps':>10}")
    for command, (seconds, rss) in figures.items():
        print(f"  {command:<14} {seconds:>9.2f}s {rss:>8.0f}MB {rss - base:>+8.0f}MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="finished processes in the home (default 10,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (best time, peak RSS)")
    parser.add_argument("--before", metavar="REV", help="also measure this git revision, for ratios")
    parser.add_argument("--quick", action="store_true", help="N=2,000, 2 repeats")
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 10_000)
    repeats = 2 if args.quick and args.repeats == 3 else args.repeats
    work = Path(tempfile.mkdtemp(prefix="llmunix-bench-ps-json-"))
    try:
        home = work / "home"
        print(f"building a home with {n:,} finished processes ... {build_home(home, n):.1f}s")
        now = measure(ROOT, home, repeats, work)
        records = json.loads((work / f"{ROOT.name}-ps_-a_--json.out").read_text())
        if len(records) != n:
            sys.exit(f"ps -a --json listed {len(records)} records, not {n}")
        report(f"this checkout ({ROOT})", now)
        if args.before:
            before_root = extract(args.before, work / "before")
            before = measure(before_root, home, repeats, work)
            report(f"revision {args.before}", before)
            same = ((work / f"{ROOT.name}-ps_-a_--json.out").read_bytes()
                    == (work / "before-ps_-a_--json.out").read_bytes())
            t0, m0 = before["ps -a --json"]
            t1, m1 = now["ps -a --json"]
            print(f"\nps -a --json, {args.before} -> this checkout: "
                  f"time {t0:.2f}s -> {t1:.2f}s ({t0 / t1:.1f}x faster), "
                  f"RSS above `ps` {m0 - before['ps'][1]:+.0f}MB -> {m1 - now['ps'][1]:+.0f}MB; "
                  f"output {'byte-identical' if same else 'DIFFERENT'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
