"""The daemon's per-client alert feed (daemon/server.py AlertFeed): the engine's event thread only
appends to a bounded queue, never waits for a client; a client that stops reading has the rest
counted, and once it reads again gets them from the event log, each exactly once and in order, or
one `lagged` notice when too many went by."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from conftest import WAIT, _wait_until

from llmunix.daemon.server import CATCH_UP, AlertFeed


@dataclass
class Event:
    seq: int
    time: float


class SlowClient:
    """A client whose socket is full until `unblock()`: send waits, as a blocked sendall would."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.open = threading.Event()
        self.sending = threading.Event()

    def send(self, message: dict) -> None:
        self.sending.set()
        assert self.open.wait(WAIT), "the test never unblocked the client"
        self.sent.append(message)


def feed_with_log(client: SlowClient, log: list[Event], limit: int) -> AlertFeed:
    def catch_up(since: float, first: int, last: int) -> list[Event]:
        return [e for e in log if first <= e.seq <= last and e.time >= since - 1.0]

    return AlertFeed(client.send, lambda e: f"[{e.seq:03d}] done", catch_up, limit=limit)


def test_a_client_that_stops_reading_gets_every_alert_once_in_order_from_the_log() -> None:
    client = SlowClient()
    log = [Event(seq, 1000.0 + seq) for seq in range(1, 41)]
    feed = feed_with_log(client, log, limit=5)
    try:
        feed.offer(log[0])
        assert client.sending.wait(WAIT)  # the writer is stuck sending the first alert
        for event in log[1:]:
            feed.offer(event)  # the engine's thread: never waits (the test would hang here)
        client.open.set()
        _wait_until(lambda: len(client.sent) == 40, message="every alert to reach the client")
        assert [m["markup"] for m in client.sent] == [f"[{seq:03d}] done" for seq in range(1, 41)]
        assert {m["t"] for m in client.sent} == {"alert"}
    finally:
        feed.close()


def test_past_the_catch_up_limit_the_client_is_told_how_many_it_missed() -> None:
    client = SlowClient()
    n = CATCH_UP + 50
    log = [Event(seq, 1000.0 + seq) for seq in range(1, n + 1)]
    feed = feed_with_log(client, log, limit=5)
    try:
        feed.offer(log[0])
        assert client.sending.wait(WAIT)
        for event in log[1:]:
            feed.offer(event)
        client.open.set()
        _wait_until(lambda: client.sent and client.sent[-1]["t"] == "lagged", message="the lagged notice")
        alerts = [m for m in client.sent if m["t"] == "alert"]
        assert len(alerts) == 1 + 5  # the one being sent, then the queue's five
        assert client.sent[-1]["count"] == n - 6
    finally:
        feed.close()
