"""Daemon benchmark (issue 22): what an attached client costs, many clients at once, alerts to
several shells, a client that never reads, and what a stranger can cost the daemon.

    python bench/daemon.py            # 20 start-up runs, 1,000 processes per throughput run (about 60 s)
    python bench/daemon.py --quick    # 10 runs, 300 processes

Not a test: it exits 0 whether or not the budgets are met; 1 (`INVALID: ...`) when something the
figures rely on went wrong (a lost process, a missing or duplicated alert, a heavy module in the
thin client, a daemon that did not start). Budgets (issue 22, "done when"):

* 2: with a daemon up, `llmunix -c ps` median <= 150 ms over 20 runs; no heavy module (cmd2, rich,
  pydantic, psutil, prompt_toolkit, the kernel) in the client's `sys.modules`;
* 3: 8 concurrent clients x 50 `run echo`: 400 distinct PIDs, all Completed; 3 attached shells
  each get every alert exactly once, within 500 ms of the process's end;
* 4: a subscriber that never reads: throughput within 10% of the same run without it; the
  daemon's RSS grows by less than 50 MB;
* 5: a bad token refused within 1 s; a 100 MB unauthenticated line adds < 10 MB RSS;
* 7: the daemon SIGKILLed, a client waiting in it exits 1 within 1 s.

The daemon runs this checkout (`python -m llmunix serve -d`) on a temporary home, with a private
runtime directory of its own; it is stopped (killed if need be) however the run ends. Clients run
as a user runs them: `python -m llmunix ...` with bytecode caches written (the first, unmeasured
run writes them).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import termios
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from baseline import invalid, report_budgets, table, verdict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmunix.daemon.protocol import PROTOCOL, Channel  # noqa: E402 - this checkout's, after the path

PS_BUDGET_S = 0.150
ALERT_BUDGET_S = 0.500
THROUGHPUT_BUDGET = 1.10  # stuck subscriber / without
STUCK_RSS_BUDGET_MB = 50
REFUSE_BUDGET_S = 1.0
HUGE_RSS_BUDGET_MB = 10
HEAVY = ("cmd2", "rich", "pydantic", "psutil", "prompt_toolkit", "networkx", "yaml")
HEAVY_LLMUNIX = ("llmunix.kernel", "llmunix.models", "llmunix.shell", "llmunix.config", "commands")


class Daemon:
    """`llmunix serve -d` on a temporary home; `llmunix ...` clients of it."""

    def __init__(self, base: Path) -> None:
        self.home = base / "home"
        runtime = base / "run"
        runtime.mkdir(mode=0o700)
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an install: .pyc files exist
        env.pop("NO_COLOR", None)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(LLMUNIX_HOME=str(self.home), XDG_RUNTIME_DIR=str(runtime))
        self.env = env
        self.pid: int | None = None

    def llmunix(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "llmunix", *args], env=self.env, capture_output=True,
                              text=True, cwd=ROOT, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)
        if check and done.returncode != 0:
            invalid(f"llmunix {' '.join(args)[:80]} exited {done.returncode}: {done.stderr[-300:]}")
        return done

    def start(self) -> None:
        self.llmunix("serve", "-d")
        self.pid = int(self.record()["pid"])

    def record(self) -> dict[str, Any]:
        return json.loads((self.home / "daemon.json").read_text())

    def stop(self) -> None:
        if self.pid is None:
            return
        self.llmunix("serve", "--stop", check=False, timeout=90)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # (only if --stop did not end it)
        self.pid = None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        invalid("no VmRSS for the daemon")

    def raw(self, mode: str = "shell", token: str | None = None, rcvbuf: int | None = None) -> Channel:
        """A client speaking the protocol itself (an interactive one: alerts come to it)."""
        record = self.record()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(record["socket"])
        channel = Channel(sock)
        channel.send({"t": "hello", "proto": PROTOCOL, "version": "bench", "token": token or record["token"],
                      "mode": mode, "pid": os.getpid(), "cwd": "/", "size": [100, 40], "env": {},
                      "tty": {"in": True, "out": True, "err": True}})
        return channel


def timed(daemon: Daemon, *args: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    daemon.llmunix(*args)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def pids_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.isdigit()]


# ---------------------------------------------------------------------- 2: start-up


def bench_startup(daemon: Daemon, runs: int, embedded: list[float]) -> tuple[list[tuple[str, ...]], list[Any]]:
    timed(daemon, "-c", "ps")  # bytecode caches, the daemon's spare session
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = timed(daemon, "-c", "ps")
        walls.append(wall)
        cpus.append(cpu)
    probe = (f"import sys, json\nsys.path.insert(0, {str(ROOT)!r})\nfrom llmunix.cli import main\n"
             "status = main(['-c', 'ps'])\n"
             f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY_LLMUNIX!r})\n"
             "sys.stderr.write(json.dumps({'status': status, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=daemon.env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    if report["status"] != 0:
        invalid(f"the probe's -c ps exited {report['status']}")
    med = statistics.median(walls)
    rows = [("llmunix -c ps, attached", f"{med * 1000:.0f}", f"{min(walls) * 1000:.0f}",
             f"{max(walls) * 1000:.0f}", f"{statistics.median(cpus) * 1000:.0f}")]
    if embedded:
        rows.append(("llmunix -c ps, embedded (no daemon)", f"{statistics.median(embedded) * 1000:.0f}",
                     f"{min(embedded) * 1000:.0f}", f"{max(embedded) * 1000:.0f}", ""))
    heavy = report["heavy"]
    print(f"heavy modules in the attached client's sys.modules: {heavy or 'none'}")
    if heavy:
        print(f"!! the thin client imported {heavy}")
    return rows, [(f"attached `llmunix -c ps`: median {med * 1000:.0f} ms of {runs} runs (budget <= "
                   f"{PS_BUDGET_S * 1000:.0f} ms), heavy modules: {len(heavy)}",
                   verdict(med <= PS_BUDGET_S, valid=not heavy))]


# ---------------------------------------------------------------------- 3: many clients, alerts


def bench_clients(daemon: Daemon) -> list[Any]:
    args = [a for i in range(50) for a in ("-c", f"run echo text={i}")] + ["-c", "wait"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "llmunix", *args], env=daemon.env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    wall = time.perf_counter() - t0
    pids = [pid for out, _ in outs for pid in pids_of(out)]
    states = {f"{p['pid']:03d}": p["state"] for p in json.loads(daemon.llmunix("-c", "ps -a --json").stdout)}
    ok = (all(p.returncode == 0 for p in procs) and len(pids) == 400 and len(set(pids)) == 400
          and {states.get(pid) for pid in pids} == {"completed"})
    if not ok:
        print(f"!! 8 x 50: {len(set(pids))} distinct PIDs, states {sorted({states.get(p) for p in pids}, key=str)}")
    print(f"8 concurrent clients x 50 `run echo` + wait: {wall:.2f} s, {len(set(pids))} distinct PIDs")
    return [(f"8 clients x 50 `run echo`: 400 distinct PIDs, all Completed ({wall:.2f} s)", verdict(ok, valid=ok))]


def bench_alerts(daemon: Daemon, n: int = 30) -> list[Any]:
    shells = [daemon.raw("shell") for _ in range(3)]
    got: list[list[tuple[float, str]]] = [[] for _ in shells]

    def read(i: int, channel: Channel) -> None:
        with contextlib.suppress(Exception):
            while (message := channel.recv()) is not None:
                if message["t"] == "alert":
                    got[i].append((time.time(), message["markup"]))

    threads = [threading.Thread(target=read, args=(i, c), daemon=True) for i, c in enumerate(shells)]
    for t in threads:
        t.start()
    try:
        args = [a for i in range(n) for a in ("-c", f"run sleep seconds=0.05 --name alert{i}")] + ["-c", "wait"]
        pids = pids_of(daemon.llmunix(*args).stdout)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                all(any(f"[{p}]" in text for _, text in g) for p in pids) for g in got):
            time.sleep(0.02)
        daemon.llmunix("-c", "ps")  # one more round trip: a duplicate would have come by its end
        infos = {f"{p['pid']:03d}": p for p in json.loads(daemon.llmunix("-c", "ps -a --json").stdout)}
    finally:
        for c in shells:
            c.close()
    latencies, ok = [], len(pids) == n
    for g in got:
        for pid in pids:
            hits = [t for t, text in g if f"[{pid}]" in text]
            if len(hits) != 1:
                ok = False
                print(f"!! alert for {pid}: {len(hits)} times in one shell")
                continue
            finished = datetime.fromisoformat(infos[pid]["finished"]).timestamp()
            latencies.append(max(0.0, hits[0] - finished))
    if not latencies:
        invalid("no alert arrived")
    worst, med = max(latencies), statistics.median(latencies)
    print(f"alerts, 3 shells x {n} processes: latency from the process's end median {med * 1000:.0f} ms, "
          f"max {worst * 1000:.0f} ms (the end time is stored to the millisecond)")
    return [(f"3 shells each get every alert exactly once: max {worst * 1000:.0f} ms after the end (budget <= "
             f"{ALERT_BUDGET_S * 1000:.0f} ms)", verdict(ok and worst <= ALERT_BUDGET_S, valid=ok))]


# ---------------------------------------------------------------------- 4: a client that never reads


def stuff(channel: Channel) -> int:
    """Fill a client's socket (the daemon's sends to it block from then on): ask for listings and
    never read them. The bytes waiting unread, once they stop growing."""
    for _ in range(40):
        channel.send({"t": "cmd", "text": "help -v"})
    sock = channel.sock
    last, steady = -1, 0
    while steady < 15:  # unchanged for 0.3 s
        queued = int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4), "little")
        steady = steady + 1 if queued == last else 0
        last = queued
        time.sleep(0.02)
    return last


def bench_stuck(daemon: Daemon, n: int, repeats: int) -> list[Any]:
    args = [a for i in range(n) for a in ("-c", f"run echo text={i}")] + ["-c", "wait"]
    daemon.llmunix(*args)  # warm: the daemon's first batch allocates what later ones reuse
    plain, stuck = [], []
    rss_growth = 0.0
    for i in range(repeats):
        if i % 2 == 0:  # (in turn first and second: a run's cost depends a little on what ran before)
            t0 = time.perf_counter()
            daemon.llmunix(*args)
            plain.append(time.perf_counter() - t0)
        before = daemon.rss_mb()
        channel = daemon.raw("shell", rcvbuf=4096)  # reads nothing, ever
        queued = stuff(channel)
        try:
            t0 = time.perf_counter()
            done = daemon.llmunix(*args)
            stuck.append(time.perf_counter() - t0)
            if len(pids_of(done.stdout)) != n:
                invalid(f"{len(pids_of(done.stdout))} of {n} processes started beside the stuck subscriber")
            rss_growth = max(rss_growth, daemon.rss_mb() - before)
        finally:
            channel.close()
        if i % 2 == 1:
            t0 = time.perf_counter()
            daemon.llmunix(*args)
            plain.append(time.perf_counter() - t0)
    ratio = statistics.median(stuck) / statistics.median(plain)
    print(table(("run of " + str(n) + " `run echo` + wait", "median s", "runs"),
                [("no subscriber", f"{statistics.median(plain):.3f}", " ".join(f"{t:.2f}" for t in plain)),
                 ("a subscriber that never reads", f"{statistics.median(stuck):.3f}",
                  " ".join(f"{t:.2f}" for t in stuck))]))
    print(f"daemon RSS growth during a run beside the stuck subscriber: {rss_growth:.1f} MB (largest); "
          f"{queued} bytes unread in its socket before each run")
    return [(f"a subscriber that never reads: throughput {ratio:.2f}x the time without (budget <= "
             f"{THROUGHPUT_BUDGET:.2f}x)", verdict(ratio <= THROUGHPUT_BUDGET)),
            (f"... and the daemon's RSS grows {rss_growth:.1f} MB (budget < {STUCK_RSS_BUDGET_MB} MB)",
             verdict(rss_growth < STUCK_RSS_BUDGET_MB))]


# ---------------------------------------------------------------------- 5: strangers


def bench_strangers(daemon: Daemon) -> list[Any]:
    refusals = []
    for _ in range(5):
        t0 = time.perf_counter()
        channel = daemon.raw("run", token="0" * 64)
        reply = channel.recv(deadline=time.monotonic() + 10)
        refusals.append(time.perf_counter() - t0)
        channel.close()
        if reply is None or reply.get("why") != "token":
            invalid(f"a bad token was answered {reply}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.record()["socket"])
    sock.settimeout(10)
    t0 = time.perf_counter()
    silent = sock.recv(100)
    silent_s = time.perf_counter() - t0
    sock.close()
    before = daemon.rss_mb()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.record()["socket"])
    sock.settimeout(10)
    chunk, sent = b"x" * (1 << 20), 0
    with contextlib.suppress(OSError):
        while sent < 100 * (1 << 20):
            sock.sendall(chunk)
            sent += len(chunk)
    sock.close()
    growth = daemon.rss_mb() - before
    cut = sent < 100 * (1 << 20)
    print(f"a bad token refused in {max(refusals) * 1000:.1f} ms (worst of 5); a silent peer cut off after "
          f"{silent_s:.2f} s{' having been sent nothing' if silent == b'' else ''}; a 100 MB line cut off after "
          f"{sent >> 20} MB sent, daemon RSS {growth:+.1f} MB")
    return [(f"a bad token refused within {max(refusals) * 1000:.1f} ms (budget < {REFUSE_BUDGET_S:.0f} s)",
             verdict(max(refusals) < REFUSE_BUDGET_S)),
            (f"a 100 MB unauthenticated line: cut off after {sent >> 20} MB, RSS {growth:+.1f} MB (budget < "
             f"{HUGE_RSS_BUDGET_MB} MB)", verdict(cut and growth < HUGE_RSS_BUDGET_MB, valid=cut))]


# ---------------------------------------------------------------------- 7: the daemon killed


def bench_killed(daemon: Daemon) -> list[Any]:
    """SIGKILL the daemon under a client waiting for a process: how soon the client exits, and how."""
    [pid] = pids_of(daemon.llmunix("-c", "run sleep seconds=60 --name victim").stdout)
    client = subprocess.Popen([sys.executable, "-m", "llmunix", "-c", f"ps {pid}", "-c", f"wait {pid}"],
                              env=daemon.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    assert client.stdout is not None
    if not client.stdout.readline().startswith("PID"):  # (attached, and waiting in the daemon)
        invalid("the waiting client did not attach")
    assert daemon.pid is not None
    t0 = time.perf_counter()
    os.kill(daemon.pid, signal.SIGKILL)
    _, err = client.communicate(timeout=30)
    gone = time.perf_counter() - t0
    daemon.pid = None
    ok = client.returncode == 1 and "has gone away" in err and len(err.splitlines()) == 1
    if not ok:
        print(f"!! the client of a killed daemon exited {client.returncode}: {err.strip()[:200]}")
    print(f"daemon SIGKILLed: its waiting client exited {client.returncode} after {gone * 1000:.0f} ms")
    return [(f"a killed daemon's client exits 1 within {gone * 1000:.0f} ms (budget < 1 s)",
             verdict(gone < 1.0, valid=ok))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 start-up runs, 300 processes per throughput run")
    ap.add_argument("--runs", type=int, default=None, help="attached `-c ps` runs (default 20; quick 10)")
    ap.add_argument("--n", type=int, default=None, help="processes per throughput run (default 1000; quick 300)")
    ap.add_argument("--repeats", type=int, default=4, help="throughput runs with and without the stuck client")
    args = ap.parse_args(argv)
    runs = args.runs or (10 if args.quick else 20)
    n = args.n or (300 if args.quick else 1000)
    print(f"llmunix daemon benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    started = time.perf_counter()
    results: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="llmunix-bench-daemon-") as base:
        daemon = Daemon(Path(base))
        daemon.llmunix("-c", "ps")  # the home, bytecode caches
        embedded = [timed(daemon, "-c", "ps")[0] for _ in range(5)]
        daemon.start()
        try:
            rows, found = bench_startup(daemon, runs, embedded)
            print(table(("command", "median ms", "min", "max", "CPU ms (median)"), rows))
            results += found
            results += bench_clients(daemon)
            results += bench_alerts(daemon)
            results += bench_stuck(daemon, n, args.repeats)
            results += bench_strangers(daemon)
            results += bench_killed(daemon)  # (last: it ends the daemon)
        finally:
            daemon.stop()
    return report_budgets(f"Budgets ({time.perf_counter() - started:.1f} s total)", results)


if __name__ == "__main__":
    raise SystemExit(main())
