"""Shared fixtures: kernels that always shut down, a condition poller, a gate tool whose body
blocks cooperatively until the test opens it, a wait for a process phase, and the real
`llmunix` prompt in a pty."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from llmunix import Kernel, ProcessContext

WAIT = 10.0  # the one upper bound for "this should happen soon"

# pytest-xdist's workers set COLUMNS=80 and LINES=24; rich (and shutil) prefer those to the size
# of the terminal a program is given, so a pty spawned from a worker (40x140) would be drawn as
# 80x24. A terminal's size comes from the terminal here, as when a person runs llmunix.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

# In CI (CI=true, as .ci/run and most CI services set it) a missing optional dependency or an
# environment that cannot run a test's real path is a failure: a skip there would turn a broken
# install into a green run. On a developer's machine it stays a skip.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_unless_ci(reason: str) -> None:
    """Skip the current test with `reason`, or fail it when running in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: this real path must run here, not be skipped)", pytrace=False)
    pytest.skip(reason)


def _wait_until(predicate: Callable[[], Any], timeout: float = WAIT, message: str = "") -> Any:
    """Poll `predicate` every 10 ms until it returns something truthy; fail clearly on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        threading.Event().wait(0.01)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """`wait_until(predicate, timeout=10, message="...")`: poll until truthy, else fail the test."""
    return _wait_until


@pytest.fixture
def make_kernel() -> Iterator[Callable[..., Kernel]]:
    """A factory for kernels with test-friendly defaults (no monitor, short kill grace); every
    kernel it made is shut down at teardown so no thread outlives its test."""
    kernels: list[Kernel] = []

    def factory(**kwargs: Any) -> Kernel:
        kwargs.setdefault("monitor", False)
        kwargs.setdefault("kill_grace", 0.3)
        k = Kernel(**kwargs)
        kernels.append(k)
        return k

    yield factory
    for k in reversed(kernels):
        k.shutdown(timeout=5.0)


class Gate:
    """A tool body (`gate.tool`) that sets `started`, then sleeps cooperatively in 10 ms steps
    until `open()` is called. It reaches a control point at every step."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()
        started, released = self.started, self.released

        def gate(ctx: ProcessContext) -> str:
            started.set()
            while not released.is_set():
                ctx.sleep(0.01)
            return "opened"

        self.tool = gate

    def open(self) -> None:
        self.released.set()


@pytest.fixture
def make_gate() -> Callable[[], Gate]:
    return Gate


def wait_phase(kernel: Kernel, pid: int, phase: str, timeout: float = WAIT) -> None:
    """Block until process `pid` is in `phase`, woken by its events (no polling)."""
    reached = threading.Event()
    sub = kernel.subscribe("*", lambda e: kernel.info(pid).phase == phase and reached.set(), pid=pid)
    try:
        if kernel.info(pid).phase != phase:
            assert reached.wait(timeout), f"process {pid} never reached {phase}"
    finally:
        sub.cancel()


def _checkout_executable() -> str:
    """An `llmunix` executable that runs this checkout's code, whatever `llmunix` is on PATH
    (an older install, or another worktree's): a script for this interpreter that puts the
    checkout first on sys.path. End-to-end tests run it, never a PATH lookup."""
    import tempfile

    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(prefix="llmunix-bin-"))
    exe = folder / "llmunix"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(root)!r})\n"
                   "from llmunix.cli import main\nsys.exit(main())\n")
    exe.chmod(0o755)
    return str(exe)


LLMUNIX = _checkout_executable()
PROMPT = r"llmunix\$"


def spawn_prompt(home: Any, *, width: int = 140, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> pexpect.spawn:
    """The real `llmunix` at its prompt in a pty. prompt_toolkit asks the terminal where the
    cursor is and waits for an answer; PROMPT_TOOLKIT_NO_CPR=1 stops it asking."""
    full_env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "LLMUNIX_HOME": str(home), "TERM": "xterm",
                **(env or {})}
    full_env.pop("NO_COLOR", None)
    child = pexpect.spawn(LLMUNIX, args or [], env=full_env, encoding="utf-8", timeout=20, dimensions=(40, width))
    child.expect(PROMPT)
    return child


def close_prompt(child: pexpect.spawn) -> None:
    if child.isalive():
        child.sendline("quit -f")
        try:
            child.expect(pexpect.EOF, timeout=10)
        except pexpect.TIMEOUT:
            child.terminate(force=True)


class Prompt:
    """The real `llmunix` at its prompt in a pty; `run(line)` returns what the command printed
    (redirected to a file: the prompt's own redrawing never mixes in)."""

    def __init__(self, home: Any, folder: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.child = spawn_prompt(home, env=env, args=args)
        self.folder = folder
        self.n = 0

    def run(self, line: str) -> str:
        self.n += 1
        out, done = self.folder / f"{self.n}.out", self.folder / f"{self.n}.done"
        self.child.sendline(f"{line} > {out}")
        self.child.sendline(f"help > {done}")  # commands run in order: once this exists, `out` is complete
        _wait_until(done.exists, message=f"{line!r} to finish")
        _drain(self.child)
        return out.read_text()

    def poll(self, line: str, predicate: Callable[[str], Any], timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(line)
            if predicate(out):
                return out
            if time.monotonic() > deadline:
                pytest.fail(f"{line!r} never showed what was expected; last: {out!r}")

    def close(self) -> None:
        close_prompt(self.child)


def _drain(child: pexpect.spawn) -> None:
    while True:
        try:
            child.read_nonblocking(65536, timeout=0.05)
        except pexpect.TIMEOUT:
            return


class Session:
    """The shell over a kernel, run without a terminal: each command's stdout is captured, and
    stderr through pytest's capsys. `ok` and `bad` assert success, or a one-line failure."""

    def __init__(self, kernel: Kernel, capsys: pytest.CaptureFixture[str], tty: bool = False) -> None:
        from llmunix.shell import LlmunixShell

        self.kernel = kernel
        self.capsys = capsys
        self.stdout = _TTYStringIO() if tty else io.StringIO()
        self.shell = LlmunixShell(kernel, interactive=False, stdout=self.stdout)

    def run(self, line: str) -> tuple[str, str, bool]:
        """Run one command line; return (stdout, stderr, failed)."""
        self.stdout.seek(0)
        self.stdout.truncate()
        self.capsys.readouterr()
        self.shell.onecmd_plus_hooks(line)
        err = self.capsys.readouterr().err
        return self.stdout.getvalue(), err, self.shell.consume_failure()

    def ok(self, line: str) -> str:
        out, err, failed = self.run(line)
        assert not failed, f"{line!r} failed: {err}"
        return out

    def bad(self, line: str) -> str:
        out, err, failed = self.run(line)
        assert failed, f"{line!r} should have failed; out={out!r}"
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1, f"expected a one-line error, got {err!r}"
        assert "Traceback" not in err
        return lines[0]


class _TTYStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def kernel(tmp_path: Any) -> Iterator[Kernel]:
    """A kernel with a home (and so a store) in the test's directory."""
    k = Kernel(tmp_path, monitor=False, kill_grace=0.3)
    yield k
    k.shutdown()


@pytest.fixture
def sh(kernel: Kernel, capsys: pytest.CaptureFixture[str]) -> Session:
    return Session(kernel, capsys)
