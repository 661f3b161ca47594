"""Hot standby and live reload: how long a takeover takes, and what `tools reload` costs.

    python bench/standby_reload.py                 # 100 tool files, 3 takeovers of each kind
    python bench/standby_reload.py --files 300 --rounds 5

Not a test: no timed assertions; it exits 1 with `INVALID: ...` when the engine misbehaves (a
reload that does not register the new tools, a standby that does not take over or does not
recover what the owner left). There is no budget for these figures; docs/performance.md keeps them.

(a) `tools reload` with F tool files of 3 tools each: the first load (as at start), a reload with
    nothing changed, with one file changed, and with every file changed.
(b) takeover by `llmunix --standby -c ...` (waits before making its kernel): from the owner's
    SIGKILL to the standby's "recovered" line, and what the standby itself reports (from the
    lock's release to its processes running again).
(c) takeover by an interactive standby at its prompt (a pty: it replaces itself with the owner's
    program): from the owner's SIGKILL to the "recovered" line.
Each owner runs 4 checkpointing `sleep` processes; each takeover must recover all 4.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import invalid, table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout, not an install

from llmunix.tools import loader  # noqa: E402
from llmunix.tools.registry import REGISTRY  # noqa: E402

PROCESSES = 4
TOOL = '''from llmunix import tool


@tool(hidden=True)
def bench_{n}_a(ctx, x: int = 0) -> int:
    """One."""
    return x + {v}


@tool(hidden=True)
def bench_{n}_b(ctx, text: str = "") -> str:
    """Two."""
    return text * {v}


@tool(hidden=True)
def bench_{n}_c(ctx, items: list[int] | None = None) -> int:
    """Three."""
    return sum(items or []) + {v}
'''


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_reload(files: int) -> list[tuple[str, str]]:
    folder = Path(tempfile.mkdtemp(prefix="llmunix-bench-reload-")) / "tools"
    folder.mkdir()
    for n in range(files):
        (folder / f"t{n}.py").write_text(TOOL.format(n=n, v=1))
    t0 = time.perf_counter()
    errors = loader.load_user_tools([folder])
    first = time.perf_counter() - t0
    if errors or REGISTRY.find(f"bench_{files - 1}_c") is None:
        invalid(f"the first load failed: {errors[:1]}")
    rows = [("first load (as at start)", ms(first))]
    same = loader.reload_user_tools()
    if same.sources or same.unchanged != files:
        invalid(f"a reload with nothing changed reloaded {len(same.sources)} sources")
    rows.append(("reload, nothing changed", ms(same.seconds)))
    (folder / "t0.py").write_text(TOOL.format(n=0, v=2))
    one = loader.reload_user_tools()
    if [s.status for s in one.sources] != ["reloaded"] or REGISTRY.find("bench_0_a").func(None) != 2:
        invalid("a reload of one changed file did not register its new code")
    rows.append(("reload, 1 file changed", ms(one.seconds)))
    for n in range(files):
        (folder / f"t{n}.py").write_text(TOOL.format(n=n, v=3))
    every = loader.reload_user_tools()
    if len(every.sources) != files or REGISTRY.find(f"bench_{files - 1}_a").func(None) != 3:
        invalid("a reload of every file did not register all the new code")
    rows.append((f"reload, all {files} changed", ms(every.seconds)))
    return rows


def owner(home: Path, exe: str) -> subprocess.Popen[str]:
    commands = [a for i in range(PROCESSES) for a in ("-c", f"run sleep seconds=30 --name job{i}")] + ["-c", "wait"]
    proc = subprocess.Popen([exe, "--home", str(home), *commands], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    lock = home / "lock"
    while True:  # until it owns the home and its store has all of them running
        owned = lock.exists() and lock.read_text().strip() == str(proc.pid)
        r = subprocess.run([exe, "--home", str(home), "-c", "ps"], capture_output=True, text=True) if owned else None
        if r is not None and r.stdout.count("Running") >= PROCESSES:
            return proc
        if time.monotonic() > deadline:
            invalid("the owner's processes did not start")
        time.sleep(0.1)


def bench_takeover_commands(exe: str, rounds: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(rounds):
        home = Path(tempfile.mkdtemp(prefix="llmunix-bench-standby-")) / "home"
        first = owner(home, exe)
        standby = subprocess.Popen([exe, "--home", str(home), "--standby", "-c", "kill 1-4"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if "waiting for" not in (standby.stderr.readline() if standby.stderr else ""):
            invalid("the standby did not wait for the owner")
        t0 = time.perf_counter()
        first.send_signal(signal.SIGKILL)
        first.wait()
        took = recovered = None
        assert standby.stderr is not None
        for line in standby.stderr:
            if m := re.search(r"took over .* ([0-9.]+)s after it stopped", line):
                took = float(m.group(1))
            if f"recovered {PROCESSES} interrupted" in line:
                recovered = time.perf_counter() - t0
                break
        standby.wait(timeout=60)
        if took is None or recovered is None:
            invalid("the standby did not take over and recover every process")
        out.append((recovered, took))
    return out


def bench_takeover_prompt(exe: str, rounds: int) -> list[float]:
    import pexpect

    out = []
    for _ in range(rounds):
        home = Path(tempfile.mkdtemp(prefix="llmunix-bench-standby-")) / "home"
        first = owner(home, exe)
        env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
        child = pexpect.spawn(exe, ["--home", str(home), "--standby"], env=env, encoding="utf-8", timeout=60)
        child.expect(r"llmunix\$")
        t0 = time.perf_counter()
        first.send_signal(signal.SIGKILL)
        first.wait()
        child.expect(f"recovered {PROCESSES} interrupted")
        out.append(time.perf_counter() - t0)
        child.sendline("quit -f")
        child.expect(pexpect.EOF)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100, help="tool files for (a)")
    parser.add_argument("--rounds", type=int, default=3, help="takeovers of each kind for (b) and (c)")
    args = parser.parse_args()
    exe = str(Path(tempfile.mkdtemp(prefix="llmunix-bench-bin-")) / "llmunix")
    Path(exe).write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                         "from llmunix.cli import main\nsys.exit(main())\n")
    os.chmod(exe, 0o755)

    print(f"(a) tools reload, {args.files} files of 3 tools each")
    print(table(("what", "time"), bench_reload(args.files)))
    commands = bench_takeover_commands(exe, args.rounds)
    print(f"\n(b) takeover by `llmunix --standby -c ...`, {PROCESSES} processes recovered, {args.rounds} rounds")
    print(table(("from", "median", "max"), [
        ("owner killed -> recovered", ms(statistics.median(r for r, _ in commands)), ms(max(r for r, _ in commands))),
        ("lock released -> recovered (its note)", ms(statistics.median(t for _, t in commands)),
         ms(max(t for _, t in commands)))]))
    prompt = bench_takeover_prompt(exe, args.rounds)
    print(f"\n(c) takeover by an interactive standby (exec), {PROCESSES} processes recovered, {args.rounds} rounds")
    print(table(("from", "median", "max"), [
        ("owner killed -> recovered", ms(statistics.median(prompt)), ms(max(prompt)))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
