"""Agents at scale: N agents x R rounds against a local OpenAI-compatible server that answers in
L seconds, against a plain client making the same N x R requests with the same concurrency.

The server is tests/fake_llm.py in a process of its own (no limits; every conversation gets R
replies, the last a final answer). Each side runs in a child process of its own, so their peak
thread counts and RSS are their own:

* **plain client**: N threads, each makes R requests one after the other (urllib, the messages
  growing as an agent's do). Its wall time is the floor: R x L plus what the machine adds.
* **llmunix**: a Kernel with a home (the store on, as the shell runs it; `--memory`: none), the
  default max_running (8) and the shell's default max_threads (config.toml's, 1024), and N
  `agent run summarization-agent --backend openai` processes, timed from the first spawn until
  every one has completed and its end is committed.

Two workloads, each with its own plain client:

1. **model calls** (the budget): the first R-1 replies say nothing, so the agent asks again;
   llmunix's cost is the agents' processes, their waits for the model and their checkpoints.
2. **with tools** (for information): each of the first R-1 replies calls `read_file` on a small
   file, which an agent runs as a child process (the plain client reads it in place): N x (R-1)
   more processes, each with its durable end.

Budget (issue 18): llmunix within 1.5x the plain client's wall time in workload 1 at N=1,000,
R=3, L=1 s. Checks: every agent Completed with R model calls, and the server answered N x R
requests for each side; else INVALID and exit status 1.

    python bench/agents.py              # N=1000, R=3, L=1 s
    python bench/agents.py --quick      # N=200
    python bench/agents.py --n 1000 --rounds 3 --latency 1 --memory --only calls
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGET = 1.5
DOC = Path(__file__).resolve().parent.parent / "llmunix" / "agents" / "examples" / "samples" / "scheduling.md"


def peak_threads() -> tuple[threading.Event, dict[str, int]]:
    """Sample the thread count every 20 ms until the event is set; the peak goes in the dict."""
    stop = threading.Event()
    seen = {"peak": threading.active_count()}

    def sample() -> None:
        while not stop.wait(0.02):
            seen["peak"] = max(seen["peak"], threading.active_count())

    threading.Thread(target=sample, daemon=True).start()
    return stop, seen


def plain(url: str, n: int, rounds: int) -> dict:
    import urllib.request

    errors: list[str] = []

    def agent(i: int) -> None:
        messages = [{"role": "system", "content": f"You are agent {i}."},
                    {"role": "user", "content": "Goal: summarise"}]
        for _ in range(rounds):
            data = json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode()
            req = urllib.request.Request(f"{url}/chat/completions", data=data, method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": "Bearer x"})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    reply = json.loads(resp.read())
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors.append(str(exc))
                return
            message = reply["choices"][0]["message"]
            messages.append(message)
            for call in message.get("tool_calls") or ():
                text = Path(DOC).read_text()
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": text})

    stop, seen = peak_threads()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    return {"wall": wall, "threads": seen["peak"], "errors": errors[:3], "failed": len(errors)}


def agents(url: str, n: int, rounds: int, memory: bool) -> dict:
    from llmunix import Kernel
    from llmunix.agents import attach
    from llmunix.config import Config, LlmConfig

    threads = int(os.environ.get("BENCH_MAX_THREADS", "0")) or Config().max_threads  # the shell's default

    os.environ["OPENAI_API_KEY"] = "sk-bench"
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        (Path(tmp) / "workspace").mkdir()
        (Path(tmp) / "workspace" / "doc.txt").write_text(DOC.read_text())
        home = None if memory else Path(tmp) / "home"
        with Kernel(home, monitor=False, max_threads=threads) as k:
            service = attach(k, Config(llm=LlmConfig(backend="openai", base_url=url, timeout=60)),
                             env={"OPENAI_API_KEY": "sk-bench"})
            stop, seen = peak_threads()
            t0 = time.perf_counter()
            pids = [service.run("summarization-agent", f"Summarise document {i}", backend="openai",
                                max_iterations=rounds) for i in range(n)]
            infos = k.wait(pids, timeout=600)
            flushed = True if memory else k.flush(timeout=120)
            wall = time.perf_counter() - t0
            stop.set()
            bad = [i for i in infos if i.state != "Completed" or (i.output or {}).get("iterations") != rounds]
            return {"wall": wall, "threads": seen["peak"], "failed": len(bad), "flushed": flushed,
                    "errors": [f"{i.process_id} {i.state}: {i.error or i.output}" for i in bad[:3]],
                    "over_cap": k.table.executor.over_cap_starts, "max_threads": k.table.executor.max_threads}


def child(side: str, url: str, n: int, rounds: int, memory: bool) -> dict:
    """Run one side in a child process; its result, with its own peak RSS."""
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r}); "
            f"import agents as b; r = b.{side}({url!r}, {n}, {rounds}"
            + (f", {memory}" if side == "agents" else "") + "); "
            "import resource; r['rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(f"INVALID: the {side} run crashed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def served(server: subprocess.Popen) -> dict:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("stats\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())


def workload(name: str, tools: bool, n: int, rounds: int, latency: float, memory: bool) -> tuple[dict, dict, list]:
    """Both sides against one server: (plain, llmunix, problems)."""
    args = [sys.executable, str(ROOT / "tests" / "fake_llm.py"), "--latency", str(latency), "--rounds", str(rounds)]
    server = subprocess.Popen(args + ([] if tools else ["--no-tools"]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        before = served(server)["served"]
        base = child("plain", url, n, rounds, memory)
        mid = served(server)["served"]
        ours = child("agents", url, n, rounds, memory)
        after = served(server)["served"]
    finally:
        server.terminate()
        server.wait(10)
    problems = []
    if base["failed"]:
        problems.append(f"{name}: the plain client failed {base['failed']} conversations: {base['errors']}")
    if ours["failed"]:
        problems.append(f"{name}: {ours['failed']} agents did not complete {rounds} rounds: {ours['errors']}")
    if not ours["flushed"]:
        problems.append(f"{name}: the store did not catch up within 120 s")
    if mid - before != n * rounds or after - mid != n * rounds:
        problems.append(f"{name}: the server answered {mid - before} and {after - mid} requests, "
                        f"expected {n * rounds} each")
    return base, ours, problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="agents (and client threads)")
    p.add_argument("--rounds", type=int, default=3, help="model calls per agent")
    p.add_argument("--latency", type=float, default=1.0, help="seconds the server takes per reply")
    p.add_argument("--memory", action="store_true", help="llmunix without a store")
    p.add_argument("--only", choices=["calls", "tools"], help="run one workload")
    p.add_argument("--quick", action="store_true", help="N=200")
    args = p.parse_args()
    n = 200 if args.quick else args.n
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    print(f"{n} agents x {args.rounds} rounds, server latency {args.latency:g}s, "
          f"llmunix {'in memory' if args.memory else 'with a store'}\n")
    results, problems = [], []
    for name, tools in (("model calls", False), ("with tools", True)):
        if args.only and args.only != name.split()[-1]:
            continue
        base, ours, found = workload(name, tools, n, args.rounds, args.latency, args.memory)
        results.append((name, base, ours))
        problems += found
    print(f"{'workload':13}{'side':14}{'wall s':>8}{'peak threads':>14}{'peak RSS MB':>13}")
    for name, base, ours in results:
        for side, r in (("plain client", base), ("llmunix", ours)):
            print(f"{name:13}{side:14}{r['wall']:8.2f}{r['threads']:14d}{r['rss_mb']:13.0f}")
        print(f"{'':13}{'ratio':14}{ours['wall'] / base['wall']:8.2f}x   (llmunix max_threads "
              f"{ours['max_threads']}, {ours['over_cap']} started past it)")
    for line in problems:
        print(f"!! {line}")
    print("\nbudgets:")
    for name, base, ours in results:
        ratio = ours["wall"] / base["wall"]
        if name != "model calls":
            print(f"  [info] {name}: {ratio:.2f}x the plain client ({ours['wall']:.2f}s vs {base['wall']:.2f}s)")
            continue
        verdict = "INVALID" if problems else "met" if ratio <= BUDGET else "MISSED"
        print(f"  [{verdict}] agents: {n} x {args.rounds} model calls within {BUDGET}x the plain client "
              f"({ours['wall']:.2f}s vs {base['wall']:.2f}s: {ratio:.2f}x)"
              + ("" if n == 1000 and args.rounds == 3 else " (budget set at 1,000 x 3)"))
    if problems:
        print("INVALID: a correctness check of this run failed (see the `!!` lines above)")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
