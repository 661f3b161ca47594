"""Tools for the memory-debugging and profile tests (`--tools tests.memory_tools`): the leakers
keep what they allocate at one known line (LEAK_LINE), so that `debug PID memory --diff` has a
site to find, until it has done `ticks` steps (or for `seconds`)."""

from __future__ import annotations

import inspect
import json
import threading

from llmunix import ProcessContext
from llmunix.tools.registry import tool

KEPT: list[bytearray] = []


def leak(n: int) -> None:
    for _ in range(n):
        KEPT.append(bytearray(10_000))  # the leak


LEAK_LINE = next(i for i, line in enumerate(inspect.getsource(leak).splitlines()) if "# the leak" in line) + \
    inspect.getsourcelines(leak)[1]


def _leak_loop(ctx: ProcessContext, seconds: float, per_tick: int, decode: bool = False) -> int:
    ticks = int(seconds / 0.02)
    for i in range(ticks):
        leak(per_tick)
        if decode:
            for _ in range(20):
                json.loads(json.dumps({"tick": i, "data": list(range(200))}))
        ctx.progress(i + 1, ticks)
        ctx.sleep(0.02)
    return len(KEPT)


@tool(name="mem_leaker")
def mem_leaker(ctx: ProcessContext, seconds: float = 60.0, per_tick: int = 20, decode: bool = False) -> int:
    """Keep 10 kB blocks, `per_tick` each 20 ms, on a thread (and decode JSON each tick)."""
    return _leak_loop(ctx, seconds, per_tick, decode)


@tool(name="mem_leaker_iso", isolation="process")
def mem_leaker_iso(ctx: ProcessContext, seconds: float = 60.0, per_tick: int = 20) -> int:
    """The same, in a worker OS process of its own."""
    return _leak_loop(ctx, seconds, per_tick)


@tool(name="json_cruncher")
def json_cruncher(ctx: ProcessContext, seconds: float = 60.0) -> int:
    """Decode the same JSON document over and over, on a thread (a profile's JSON hot spot)."""
    import time

    text = json.dumps({"items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(2000)]})
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        json.loads(text)
        n += 1
        ctx.check()
    return n


HOLD = threading.Event()  # while set, slow_idempotent runs on (same parameters, another duration)


@tool(name="slow_idempotent", idempotent=True)
def slow_idempotent(ctx: ProcessContext, label: str = "") -> str:
    """Return `label`, once HOLD is clear: safe to run again, so its result could be cached."""
    while HOLD.is_set():
        ctx.sleep(0.02)
    return label


@tool(name="tcp_chatter_iso", isolation="process")
def tcp_chatter_iso(ctx: ProcessContext, port: int, seconds: float = 60.0) -> int:
    """Send 20 kB and read the answer over one connection to 127.0.0.1:`port`, every 10 ms, in a
    worker OS process of its own (a profile's network figures for an isolated tree)."""
    import socket
    import time

    n = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.sendall(b"y" * 20000)
            s.recv(65536)
            n += 1
            ctx.sleep(0.01)
    return n
