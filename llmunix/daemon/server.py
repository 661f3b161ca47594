"""The daemon's socket: who may connect, each connection's threads, and its bounded alert feed.

Who may connect, checked in this order on every connection, before anything is read from it:

1. the socket is in a private directory and bound 0600 (protocol.bind_private): others cannot
   even reach it;
2. the peer's uid (SO_PEERCRED) is ours: a process of another user is closed at once;
3. its hello — at most HELLO_LIMIT bytes, within HELLO_TIMEOUT seconds (a peer that sends a
   100 MB line or dribbles is cut off having cost at most that) — names our protocol and carries
   the home's token, compared in constant time.

Threads of a connection (none of them is ever an engine thread, so no client can slow the
engine down):

* the session thread runs the client's commands (daemon/session.py) — it is the one that
  accepted the connection;
* the reader takes the client's messages off the socket: commands and lines for the session,
  replies to its requests, keys, Ctrl-C, window sizes; it answers completion itself;
* an interactive client's alert writer sends alerts from a bounded queue. The engine's event
  thread only appends to that queue (never a socket write); when it is full the newest are
  counted instead, and once the client reads again the writer catches up from the event log —
  each alert still shown exactly once, in order — or, past CATCH_UP of them, says how many it
  skipped (`lagged`).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmunix.daemon.protocol import (
    HELLO_LIMIT,
    HELLO_TIMEOUT,
    MESSAGE_LIMIT,
    PROTOCOL,
    Channel,
    ConnectionLost,
    DaemonError,
    ProtocolError,
    bind_private,
    make_private_dir,
    passing_record,
    peer_uid,
    process_start,
    socket_path,
    version,
    write_record,
)

log = logging.getLogger("llmunix.daemon")

MAX_CONNECTIONS = 256
ALERT_QUEUE = 1000  # alerts waiting for one client before the rest are counted, not kept
CATCH_UP = 200  # alerts re-read from the event log for a client that lagged, at most
WAIT_STEP = 0.1  # a blocked session thread looks up this often (so a Ctrl-C injected into it lands)


class Daemon:
    """Listens on the home's socket and runs a session per client (`open_session(connection)`,
    which returns an object with `run()`, called on the connection's own thread)."""

    def __init__(self, home: Path, open_session: Callable[[Connection], Any]) -> None:
        self.home = Path(home)
        self.open_session = open_session
        self.token = secrets.token_hex(32)
        self.path = socket_path(self.home)
        self.sock: socket.socket | None = None
        self.connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the socket and write the home's record (daemon.json): from then on clients attach."""
        make_private_dir(self.path.parent)
        try:
            self.sock = bind_private(self.path)
        except OSError as exc:
            raise DaemonError(f"cannot listen on {self.path}: {exc.strerror}") from None
        pid = os.getpid()
        write_record(self.home, {"pid": pid, "start": process_start(pid), "socket": str(self.path),
                                 "protocol": PROTOCOL, "version": version(), "token": self.token})
        self._thread = threading.Thread(target=self._accept, name="llmunix-daemon-accept", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        assert self.sock is not None
        while not self._closing:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.05)  # out of descriptors, most likely: do not spin
                continue
            threading.Thread(target=self._serve, args=(sock,), name="llmunix-daemon-session", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        connection = self._welcome(sock)
        if connection is None:
            return
        try:
            session = self.open_session(connection)
            connection.start()
            session.run()
        except ConnectionLost:
            pass
        except Exception:  # a bug in one session must not take the daemon down
            log.exception("session of client pid %s failed", connection.hello.get("pid"))
        finally:
            connection.close()
            with self._lock:
                self.connections.discard(connection)

    def _welcome(self, sock: socket.socket) -> Connection | None:
        """The checks in the module docstring; the connection, or None (closed, told why when it
        is one of ours that may hear it)."""
        try:
            if peer_uid(sock) != os.getuid():
                sock.close()
                return None
        except OSError:
            sock.close()
            return None
        channel = Channel(sock, limit=HELLO_LIMIT)
        try:
            hello = channel.recv(deadline=time.monotonic() + HELLO_TIMEOUT)
        except (ProtocolError, OSError) as exc:
            log.warning("refused a connection: %s", exc)
            channel.close()
            return None
        if hello is None:
            channel.close()
            return None
        about = {"proto": PROTOCOL, "version": version(), "pid": os.getpid()}
        refusal = None
        if hello.get("t") != "hello" or hello.get("proto") != PROTOCOL:
            refusal = {"why": "protocol", "message": f"this daemon speaks protocol {PROTOCOL}"}
        elif not isinstance(hello.get("token"), str) or not hmac.compare_digest(
                hello["token"].encode("utf-8", "replace"), self.token.encode()):
            refusal = {"why": "token", "message": "wrong token (is the client using the same home?)"}
        elif hello.get("mode") not in ("run", "shell"):
            refusal = {"why": "mode", "message": f"unknown mode {str(hello.get('mode'))[:20]!r}"}
        else:
            with self._lock:
                if self._closing:
                    refusal = {"why": "stopping", "message": "the daemon is stopping"}
                elif len(self.connections) >= MAX_CONNECTIONS:
                    refusal = {"why": "busy", "message": f"{MAX_CONNECTIONS} clients are attached already"}
        if refusal is not None:
            log.warning("refused client pid %s: %s", hello.get("pid"), refusal["message"])
            with contextlib.suppress(ConnectionLost):
                channel.send({"t": "refused", **refusal, **about})
            channel.close()
            return None
        channel.limit = MESSAGE_LIMIT
        connection = Connection(channel, hello)
        with self._lock:
            self.connections.add(connection)
        try:
            channel.send({"t": "welcome", **about})
        except ConnectionLost:
            connection.close()
            return None
        return connection

    def stop(self, message: str, *, restarting: bool = False) -> None:
        """Stop accepting; tell every client why and close its connection (their sessions end).
        The record says the daemon is stopping (or starting again), so that clients wait for it
        rather than run embedded on the home it still holds; the caller removes it once it has
        let the home go (serve.run)."""
        with self._lock:
            self._closing = True
            connections = list(self.connections)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.sock.close()
        for connection in connections:
            connection.say_bye(message)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        write_record(self.home, passing_record(os.getpid(), "starting" if restarting else "stopping"))


class Connection:
    """One attached client: its hello (mode, cwd, terminal facts), its messages, requests the
    session makes of it, and its alert feed."""

    _ids = itertools.count(1)

    def __init__(self, channel: Channel, hello: dict[str, Any]) -> None:
        self.channel = channel
        self.hello = hello
        self.inbox: collections.deque[dict[str, Any] | None] = collections.deque()
        self._inbox_ready = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._replies_ready = threading.Condition()
        self.closed = False
        self.size: list[int] | None = hello.get("size") if _is_size(hello.get("size")) else None
        self.keys_fd: int | None = None  # write end of the pipe `top` reads keys from
        self.on_interrupt: Callable[[], None] | None = None
        self.on_complete: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.on_close: list[Callable[[], None]] = []
        self.alerts: AlertFeed | None = None
        self._reader = threading.Thread(target=self._read, name="llmunix-daemon-reader", daemon=True)

    def start(self) -> None:
        self._reader.start()

    # ------------------------------------------------------------------ receiving

    def _read(self) -> None:
        try:
            while True:
                message = self.channel.recv()
                if message is None:
                    break
                self._dispatch(message)
        except (OSError, DaemonError) as exc:
            if not self.closed:
                log.warning("client pid %s: %s", self.hello.get("pid"), exc)
        self.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        t = message["t"]
        if t == "reply":
            with self._replies_ready:
                self._replies[message.get("id")] = message  # type: ignore[index]
                self._replies_ready.notify_all()
        elif t == "keys":
            if self.keys_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(self.keys_fd, str(message.get("d", "")).encode("utf-8", "ignore"))
        elif t == "intr":
            if self.on_interrupt is not None:
                self.on_interrupt()
        elif t == "winch":
            if _is_size(message.get("size")):
                self.size = message["size"]
        elif t == "complete":
            answer = self.on_complete(message) if self.on_complete is not None else {}
            self.send({"t": "answer", "id": message.get("id"), **answer})
        else:
            with self._inbox_ready:
                self.inbox.append(message)
                self._inbox_ready.notify_all()

    def next_message(self) -> dict[str, Any] | None:
        """The next command-type message for the session (run, cmd); None once the client left."""
        with self._inbox_ready:
            while not self.inbox and not self.closed:
                self._inbox_ready.wait(WAIT_STEP)
            return self.inbox.popleft() if self.inbox else None

    # ------------------------------------------------------------------ sending

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Ask the client something and wait for its reply; ConnectionLost if it leaves first.
        Waits in short steps, so that an interrupt injected into the waiting thread lands."""
        ident = next(self._ids)
        self.send({**message, "id": ident})
        with self._replies_ready:
            while ident not in self._replies:
                if self.closed:
                    raise ConnectionLost("the client left")
                self._replies_ready.wait(WAIT_STEP)
            return self._replies.pop(ident)

    def say_bye(self, message: str) -> None:
        with contextlib.suppress(ConnectionLost):
            self.send({"t": "bye", "message": message})
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        with self._inbox_ready:
            self._inbox_ready.notify_all()
        with self._replies_ready:
            self._replies_ready.notify_all()
        if self.alerts is not None:
            self.alerts.close()
        for callback in self.on_close:
            with contextlib.suppress(Exception):
                callback()


def _is_size(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(n, int) and 0 < n < 100_000 for n in value))


class AlertFeed:
    """An interactive client's alerts: `offer(event)` (the engine's event thread: append or
    count, never block); a writer thread renders and sends them (`render(event)` is the text, or
    None for an event this shell does not announce); `missed` ones are read back from the event
    log once the client reads again."""

    def __init__(self, send: Callable[[dict[str, Any]], None], render: Callable[[Any], str | None],
                 catch_up: Callable[[float, int, int], list[Any]], limit: int = ALERT_QUEUE) -> None:
        self._send = send
        self._render = render
        self._catch_up = catch_up  # (since time, first seq, last seq) -> the events, from the log
        self._limit = limit
        self._queue: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._missed: tuple[float, int, int, int] | None = None  # (time, first seq, last seq, count)
        self._closed = False
        self.sent = 0
        self._thread = threading.Thread(target=self._write, name="llmunix-daemon-alerts", daemon=True)
        self._thread.start()

    def offer(self, event: Any) -> None:
        with self._cond:
            if self._closed:
                return
            if self._missed is None and len(self._queue) < self._limit:
                self._queue.append(event)
            elif self._missed is None:
                self._missed = (event.time, event.seq, event.seq, 1)
            else:
                t, first, _, n = self._missed
                self._missed = (t, first, event.seq, n + 1)
            self._cond.notify()

    def _write(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._missed is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = list(self._queue)
                self._queue.clear()
                missed = None if batch else self._missed
                if missed is not None:
                    self._missed = None
            try:
                for event in batch:
                    self._emit(event)
                if missed is not None:
                    self._recover(missed)
            except ConnectionLost:
                return

    def _emit(self, event: Any) -> None:
        text = self._render(event)
        if text is not None:
            self._send({"t": "alert", "markup": text})
            self.sent += 1

    def _recover(self, missed: tuple[float, int, int, int]) -> None:
        since, first, last, count = missed
        try:
            events = self._catch_up(since, first, last)
        except Exception:  # noqa: BLE001 - the log may be unreadable; then say what was skipped
            log.exception("could not read missed alerts back from the event log")
            events = []
        if 0 < len(events) <= CATCH_UP:
            for event in events:
                self._emit(event)
            return
        self._send({"t": "lagged", "count": count, "since": since})

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
