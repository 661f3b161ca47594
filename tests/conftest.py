"""Shared fixtures for the engine tests: kernels that always shut down, a condition poller,
and a gate tool whose body blocks cooperatively until the test opens it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmunix import Kernel, ProcessContext

WAIT = 10.0  # the one upper bound for "this should happen soon"


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
