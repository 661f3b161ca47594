"""HTTP for model calls: persistent connections, a request on the caller's own thread, and an
abort that reaches it at once from any thread.

A thousand agents waiting for a model are a thousand requests in flight; each waits on its own
process's thread (off its slot), so no helper thread is made per request and nothing polls: a
kill calls `Call.abort()`, which shuts the socket down, and the blocked read returns. Connections
are kept alive and reused per host (`Transport`, one per kernel's agents), so a round costs no
TCP handshake and the server no new connection; a connection the server has closed meanwhile is
replaced once, transparently, before anything was sent on it that could have been acted on.

Errors look like urllib's, which callers already speak: `urllib.error.HTTPError` for a status of
400 and up (its body readable once), `OSError` for the network (a `http.client.HTTPException`
becomes a `ConnectionError`). The environment's proxies (`https_proxy`, `no_proxy`, ...) are
honoured: plain HTTP through the proxy, HTTPS through a CONNECT tunnel.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

IDLE_KEPT = 1024  # idle connections kept per host


class Aborted(ConnectionError):
    """The call was aborted (its process is being killed)."""


class Transport:
    """Keep-alive connections by (scheme, host, port, proxy), shared by every caller. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[Any, ...], list[http.client.HTTPConnection]] = defaultdict(list)
        self._ssl: ssl.SSLContext | None = None
        # The environment's proxies, read once (reading them walks os.environ: slow per request).
        self.proxies = urllib.request.getproxies()

    def call(self, url: str, data: bytes, headers: Mapping[str, str], timeout: float) -> Call:
        return Call(self, url, data, dict(headers), timeout)

    def take(self, key: tuple[Any, ...]) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give_back(self, key: tuple[Any, ...], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle[key]
            if len(idle) < IDLE_KEPT:
                idle.append(conn)
                return
        conn.close()

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()


class Call:
    """One POST. `send()` on the caller's thread returns the response (status < 400) to read;
    `abort()` from any thread makes whatever it blocks in fail at once; `finish(reusable)` gives
    the connection back (or closes it)."""

    def __init__(self, transport: Transport, url: str, data: bytes, headers: dict[str, str], timeout: float) -> None:
        self.transport = transport
        self.url = url
        self.data = data
        self.headers = headers
        self.timeout = timeout
        self._lock = threading.Lock()
        self._aborted = False
        self._conn: http.client.HTTPConnection | None = None
        # The socket, kept apart: a response that closes its connection takes it from `_conn`.
        self._sock: socket.socket | None = None
        self._key: tuple[Any, ...] = ()
        self.response: http.client.HTTPResponse | None = None

    def abort(self) -> None:
        """Stop the call (thread-safe, never blocks): shut its socket down, so the server stops
        generating and the caller's blocked read returns."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def send(self) -> http.client.HTTPResponse:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise urllib.error.URLError(f"not an http(s) URL: {self.url}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        proxy = _proxy(self.url, self.transport.proxies)
        self._key = (parts.scheme, parts.hostname, parts.port, proxy)
        for fresh in (False, True):
            conn = None if fresh else self.transport.take(self._key)
            reused = conn is not None
            if conn is None:
                conn, target = self._connect(parts, proxy, target)
            with self._lock:
                if self._aborted:
                    conn.close()
                    raise Aborted("aborted")
                self._conn = conn
            try:
                if conn.sock is None:
                    conn.connect()
                with self._lock:
                    self._sock = conn.sock
                    if self._aborted:  # (abort saw no socket yet)
                        raise Aborted("aborted")
                conn.request("POST", target, body=self.data, headers=self.headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused and not self._aborted:
                    continue  # the server closed a kept-alive connection: once more on a new one
                raise self._aborted_or(exc) from None
            except http.client.HTTPException as exc:
                conn.close()
                raise self._aborted_or(ConnectionError(f"bad HTTP reply: {exc!r}")) from None
            except OSError as exc:
                conn.close()
                raise self._aborted_or(exc) from None
            self.response = resp
            if resp.status >= 400:
                try:
                    body = resp.read()
                except (OSError, http.client.HTTPException):
                    body = b""
                self.finish(reusable=not resp.will_close)
                raise urllib.error.HTTPError(self.url, resp.status, resp.reason, resp.headers, io.BytesIO(body))
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _aborted_or(self, exc: BaseException) -> BaseException:
        return Aborted("aborted") if self._aborted else exc

    def check(self) -> None:
        """Raise Aborted if the call was aborted (a read that ended early may look complete)."""
        if self._aborted:
            raise Aborted("aborted")

    def failure(self, exc: http.client.HTTPException) -> OSError:
        """A reply that broke off while it was read, as the network error it is."""
        return Aborted("aborted") if self._aborted else ConnectionError(f"the reply broke off: {exc!r}")

    def _connect(self, parts: Any, proxy: str | None, target: str) -> tuple[http.client.HTTPConnection, str]:
        host, port = parts.hostname, parts.port
        if proxy is None:
            if parts.scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                   context=self.transport.ssl_context()), target
            return http.client.HTTPConnection(host, port, timeout=self.timeout), target
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        auth = {}
        if p.username:
            token = base64.b64encode(f"{unquote(p.username)}:{unquote(p.password or '')}".encode()).decode()
            auth = {"Proxy-Authorization": f"Basic {token}"}
        if parts.scheme == "https":  # a CONNECT tunnel through the proxy
            conn = http.client.HTTPSConnection(p.hostname, p.port or 8080, timeout=self.timeout,
                                               context=self.transport.ssl_context())
            conn.set_tunnel(host, port or 443, headers=auth)
            return conn, target
        self.headers.update(auth)  # plain HTTP: the proxy gets the whole URL
        return http.client.HTTPConnection(p.hostname, p.port or 8080, timeout=self.timeout), self.url

    def finish(self, reusable: bool) -> None:
        """The call is over: give the connection back for the next call (its response read to
        the end, not aborted, not to be closed), or close it."""
        with self._lock:
            conn, self._conn, self._sock = self._conn, None, None
            aborted = self._aborted
        if conn is None:
            return
        resp = self.response
        if reusable and not aborted and resp is not None and resp.isclosed() and not resp.will_close:
            self.transport.give_back(self._key, conn)
        else:
            conn.close()


def _proxy(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy the environment names for `url`, or None (none, or `no_proxy` covers it)."""
    scheme = urlsplit(url).scheme
    proxy = proxies.get(scheme)
    if not proxy:
        return None
    host = urlsplit(url).hostname or ""
    try:
        if urllib.request.proxy_bypass(host):
            return None
    except OSError:
        pass
    return proxy
