"""The benchmarks check their own results: run at small sizes on this checkout they report no
INVALID budget and exit 0; with a correctness failure injected into the run (a `ps` row lost, a
monitor whose every sample fails) the budgets concerned say INVALID, never `met`, and the script
exits 1. The figures themselves are not judged here: speed belongs in bench/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs a bench script as `python bench/NAME.py ARGS` would, after applying INJECT (Python source).
WRAPPER = """
import runpy, sys
script = sys.argv[1]
sys.path[:0] = [{bench!r}, {root!r}]
{inject}
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def bench(name: str, *args: str, inject: str = "") -> subprocess.CompletedProcess[str]:
    code = WRAPPER.format(bench=str(ROOT / "bench"), root=str(ROOT), inject=inject)
    return subprocess.run([sys.executable, "-c", code, str(ROOT / "bench" / f"{name}.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def verdicts(stdout: str) -> list[str]:
    """The result of each budget in the summary: met, MISSED or INVALID."""
    return [line.split("]", 1)[0].strip(" [") for line in stdout.splitlines() if line.startswith("  [")]


SCHEDULER_SMALL = ("--only", "queue", "--only", "ps", "--queued", "1000", "--records", "500")
MONITOR_SMALL = ("--n", "20", "--seconds", "1", "--interval", "0.1")


def test_the_scheduler_bench_reports_valid_budgets_on_a_correct_engine():
    r = bench("scheduler", *SCHEDULER_SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    found = verdicts(r.stdout)
    assert len(found) == 6 and set(found) <= {"met", "MISSED"}, r.stdout  # 2 queue and 4 ps budgets
    assert "!!" not in r.stdout
    assert "measured over 500 records (budget 0.2 s at 100,000; pro rata 0.001 s at 500)" in r.stdout


def test_a_lost_ps_row_makes_the_scheduler_bench_invalid_and_exit_1():
    lose_a_row = ("import commands.views as views\n"
                  "real = views.ps_plain\n"
                  "views.ps_plain = lambda items: real(items[1:])")
    r = bench("scheduler", *SCHEDULER_SMALL, inject=lose_a_row)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "!! ps listed 500 records (499 lines), expected 500" in r.stdout
    summary = [line for line in r.stdout.splitlines() if line.startswith("  [")]
    assert [line.split("]")[0] for line in summary if "] ps:" in line] == ["  [INVALID"] * 4
    assert all("INVALID" not in line for line in summary if "] queue:" in line)  # that section was fine
    assert r.stdout.rstrip().endswith("INVALID: a correctness check of this run failed (see the `!!` lines above)")


def test_the_monitor_bench_is_valid_only_when_the_monitor_sampled():
    r = bench("monitor", *MONITOR_SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert verdicts(r.stdout) in (["met"], ["MISSED"]) and "20 of 20 processes sampled" in r.stdout

    # The monitor loop swallows a failing sample: the bench must not take its silence for cheapness.
    every_sample_fails = ("import llmunix.monitor as resources\n"
                          "def sample(self):\n"
                          "    raise RuntimeError('injected')\n"
                          "resources.Monitor.sample = sample")
    r = bench("monitor", *MONITOR_SMALL, inject=every_sample_fails)
    assert r.returncode == 1, r.stdout + r.stderr
    assert verdicts(r.stdout) == ["INVALID"] and "0 of 20 processes sampled" in r.stdout


def test_the_agents_bench_checks_every_agent_and_request():
    r = bench("agents", "--n", "20", "--latency", "0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert verdicts(r.stdout)[0] in ("met", "MISSED") and verdicts(r.stdout)[1] == "info", r.stdout
    assert "!!" not in r.stdout and "20 agents x 3 rounds" in r.stdout


@pytest.mark.parametrize(("name", "args", "says"), [
    ("learned", ("--n", "30", "--repeats", "1", "--deadlines", "3"), "deadlines met (of 3)"),
    ("hedge", ("--requests", "10"), "--replicas 3 --first"),
    ("cache", ("--repeats", "5", "--stored", "50"), "echo, 50 results stored, next session"),
])
def test_the_issue_20_benches_run_at_small_sizes(name, args, says):
    r = bench(name, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert says in r.stdout and "INVALID" not in r.stdout


def test_the_isolation_bench_is_valid_only_when_isolated_bodies_ran_elsewhere():
    r = bench("isolation", "--n", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(verdicts(r.stdout)) == 2 and set(verdicts(r.stdout)) <= {"met", "MISSED"}, r.stdout

    # An "isolated" body that ran on the thread (in the benchmark's own OS process) measures nothing.
    not_isolated = ("import llmunix.isolation as iso\n"
                    "iso.Isolation.wants = lambda self, proc: False")
    r = bench("isolation", "--n", "10", inject=not_isolated)
    assert r.returncode == 1 and "INVALID: bench_isolated_noop process" in r.stderr, r.stdout + r.stderr
