"""The event bus: slow subscribers cannot stall the engine, drops are counted, high-rate events
coalesce, batches, filters on type and PID, replay from the store, and tool events."""

from __future__ import annotations

import threading
import time

import pytest

from llmunix import Kernel, LlmunixError, ProcessContext
from llmunix.ipc.bus import EventBus


def blocked_subscriber(k: Kernel, pattern: str = "*", **kw):
    """A subscriber whose callback blocks until `release` is set; returns (release, seen, sub)."""
    release = threading.Event()
    seen: list = []

    def slow(event) -> None:
        seen.append(event)
        release.wait(60)  # longer than any wait below: the tests let it go themselves

    return release, seen, k.subscribe(pattern, slow, **kw)


def test_a_blocked_subscriber_does_not_stall_spawning_or_the_store(tmp_path):
    k = Kernel(tmp_path, monitor=False, max_running=8)
    offered = [0]
    k.subscribe("*", lambda e: offered.__setitem__(0, offered[0] + 1), queue=None)  # inline: counts all
    release, seen, sub = blocked_subscriber(k, queue=100)
    try:
        first = k.spawn("echo", text="a")
        # A dependent runs only once its dependency's end is committed: the store must keep up.
        chained = k.spawn("echo", text="b", after=[first])
        pids = [k.spawn("echo", text=str(i)) for i in range(300)]
        infos = k.wait([first, chained, *pids], timeout=20)
        assert all(i.finished_ok for i in infos)
        assert k.flush(timeout=20), "the store fell behind a blocked subscriber"
        # All of it happened while the subscriber sat in its first callback (it is let go below).
        assert len(seen) == 1 and not release.is_set()
        stats = {s.id: s for s in k.bus_info().subscriptions}[sub.id]
        assert stats.mode == "queued" and stats.queued == 100 and stats.dropped > 0
        assert len(k.events(types="process.completed")) == 302  # the store lost nothing
        release.set()
        assert k.bus.flush(10)
        stats = {s.id: s for s in k.bus_info().subscriptions}[sub.id]
        assert len(seen) == stats.delivered and stats.delivered + stats.dropped == offered[0]  # each one counted
        assert seen[-1].seq == max(e.seq for e in seen)  # in order, the newest last
    finally:
        release.set()
        k.shutdown()


def test_drop_policy_newest_keeps_the_first_events():
    bus = EventBus()
    release = threading.Event()
    seen = []

    def slow(e) -> None:
        seen.append(e.data["i"])
        release.wait(10)

    sub = bus.subscribe("t", slow, queue=3, policy="newest")
    bus.publish("t", None, {"i": 0})
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(1, 10):
        bus.publish("t", None, {"i": i})
    assert bus.flush(5, queued=False)
    release.set()
    assert bus.flush(5)
    assert seen == [0, 1, 2, 3] and sub.stats().dropped == 6
    bus.close()


def test_progress_coalesces_for_a_lagging_subscriber_and_batches_arrive_as_lists(make_kernel):
    k = make_kernel()
    release, seen, sub = blocked_subscriber(k, "process.progress", coalesce="process.progress")
    batches: list = []
    k.subscribe("process.progress", batches.append, batch=True)

    def chatty(ctx: ProcessContext) -> None:
        for i in range(1, 201):
            ctx.progress(i, 200)

    pid = k.wait([k.spawn(chatty)], timeout=10)[0].pid
    assert k.bus.flush(5, queued=False)
    release.set()
    assert k.bus.flush(10)
    steps = [e.data["step"] for e in seen if e.pid == pid]
    assert steps[-1] == 200 and len(steps) < 10, steps  # the first, then the newest waiting
    assert sub.stats().coalesced >= 190
    assert all(isinstance(b, list) for b in batches)
    assert [e.data["step"] for b in batches for e in b] == list(range(1, 201))


def test_subscribe_filters_on_type_glob_pid_glob_and_a_predicate(make_kernel):
    k = make_kernel()
    by_glob: list = []
    by_filter: list = []
    k.subscribe("process.completed|process.failed", by_glob.append, pid="00[12]")
    k.subscribe("process.*", by_filter.append, filter=lambda e: e.data.get("exit_code") == 1)
    pids = [k.spawn("echo", text="x"), k.spawn("fail"), k.spawn("echo", text="y")]
    k.wait(pids, timeout=10)
    assert k.bus.flush(10)
    assert sorted((e.pid, e.type) for e in by_glob) == sorted([(1, "process.completed"), (2, "process.failed")])
    assert [(e.pid, e.type) for e in by_filter] == [(2, "process.failed")]


def test_replay_gives_stored_events_then_live_ones_without_gaps_or_repeats(tmp_path):
    k = Kernel(tmp_path, monitor=False)
    k.wait([k.spawn("echo", text=str(i)) for i in range(3)])
    k.shutdown()
    k = Kernel(tmp_path, monitor=False)
    try:
        k.wait([k.spawn("echo", text="this session")])
        seen: list = []
        k.subscribe("process.completed", seen.append, replay=True)
        k.wait([k.spawn("echo", text="live")], timeout=10)
        assert k.bus.flush(10)
        assert sorted(e.pid for e in seen) == [1, 2, 3, 4, 5] and [e.pid for e in seen][3:] == [4, 5]
    finally:
        k.shutdown()


def test_tool_events_are_published_as_tool_name_and_stored(tmp_path):
    k = Kernel(tmp_path, monitor=False)
    try:
        seen: list = []
        k.subscribe("tool.*", seen.append)

        def fetcher(ctx: ProcessContext) -> None:
            ctx.emit("fetched", {"url": "https://example.com", "bytes": 1234, "type": "html"})
            with pytest.raises(LlmunixError, match="bad event name"):
                ctx.emit("no spaces", {})

        k.wait([k.spawn(fetcher)], timeout=10)
        assert k.bus.flush(10)
        [e] = seen
        assert e.type == "tool.fetched" and e.data["bytes"] == 1234 and e.data["name"] == "fetcher"
        assert [x.type for x in k.events(types="tool.*")] == ["tool.fetched"]
    finally:
        k.shutdown()


def test_bus_info_lists_subscriptions_and_inline_ones_cannot_batch(make_kernel):
    k = make_kernel()
    sub = k.subscribe("process.*", lambda e: None)
    info = k.bus_info()
    mine = [s for s in info.subscriptions if s.id == sub.id][0]
    assert mine.pattern == "process.*" and mine.maxsize == 10_000 and mine.policy == "oldest"
    assert info.to_dict()["dropped"] == 0
    with pytest.raises(LlmunixError, match="need a queued subscription"):
        k.subscribe("*", lambda e: None, queue=None, batch=True)
    sub.cancel()
    assert sub.id not in {s.id for s in k.bus_info().subscriptions}
