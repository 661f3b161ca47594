"""Helpers for the daemon's end-to-end tests: start `llmunix serve -d` on a home, run clients,
and make sure no daemon outlives its test (`Served.ensure_gone`, `no_daemon_left`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import LLMUNIX, WAIT, _wait_until

STARTED: list[Served] = []  # every daemon a test started, checked by no_daemon_left


def process_start(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int, start: int | None = None) -> bool:
    now = process_start(pid)
    if now is None:
        return False
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    if stat[stat.rindex(b")") + 2:].split()[0] == b"Z":
        return False
    return start is None or now == start


class Served:
    """A daemon on `home` (with a private runtime directory of the test's own), and clients of it."""

    def __init__(self, home: Path, runtime: Path, launcher: str = LLMUNIX) -> None:
        self.home = Path(home)
        self.runtime = Path(runtime)
        self.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.launcher = launcher
        self.pid: int | None = None
        self.start_ticks: int | None = None
        STARTED.append(self)

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "LLMUNIX_HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime)}
        env.pop("NO_COLOR", None)
        return env

    def serve(self, *args: str, launcher: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([launcher or self.launcher, "serve", *args], env=self.env, capture_output=True,
                              text=True, timeout=90)

    def start(self, *args: str, launcher: str | None = None) -> subprocess.CompletedProcess[str]:
        done = self.serve("-d", *args, launcher=launcher)
        assert done.returncode == 0, f"serve -d failed: {done.stderr}"
        self.note_pid()
        return done

    def note_pid(self) -> int:
        record = self.record()
        assert record is not None, "no daemon.json after serve -d"
        self.pid, self.start_ticks = int(record["pid"]), record["start"]
        return self.pid

    def record(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.home / "daemon.json").read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.pid is not None and alive(self.pid, self.start_ticks)

    def run(self, *args: str, input: str | None = None, cwd: str | Path | None = None,  # noqa: A002
            env: dict[str, str] | None = None, launcher: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([launcher or self.launcher, *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, input=input, cwd=cwd, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def stop(self) -> None:
        if self.alive():
            self.serve("--stop")
        self.ensure_gone()

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        _wait_until(lambda: not self.alive(), message="the killed daemon to be gone")

    def ensure_gone(self) -> bool:
        """Kill the daemon if it is still there; True if it had to be killed."""
        if not self.alive():
            return False
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return True


def no_daemon_left() -> list[str]:
    """Every daemon a test started, stopped; the ones that were not (killed now) named."""
    left = []
    for served in STARTED:
        if served.ensure_gone():
            left.append(f"daemon pid {served.pid} on {served.home}")
    STARTED.clear()
    return left


def launcher_for(root: Path) -> str:
    """An `llmunix` executable for a copy of the checkout at `root` (another version of it)."""
    exe = root / "llmunix-bin"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(root)!r})\n"
                   "from llmunix.cli import main\nsys.exit(main())\n")
    exe.chmod(0o755)
    return str(exe)
