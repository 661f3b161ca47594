"""Per-host connection limits for tools that fetch from the web (`web_fetch`): at most N
connections open at once to one host, across every process of this llmunix.

N is `connections_per_host` (default 6, what browsers allow per host; 0: unlimited), or the
host's own entry in `host_connections` (`{"api.example.com" = 2, "127.0.0.1:8000" = 1}`: a
host:port entry first, then the host's). A tool holds one of a host's connections with
`ctx.connection(url)` around the request; past the limit it waits its turn, first come, first
served, off its slot: `ps` says "waiting for a connection to example.com (6 of 6 in flight)",
and a kill reaches it at once. The line is gate.Endpoint's, the LLM endpoints' own (max_concurrent).
A redirect to another host is counted against the first URL's host only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llmunix.gate import Endpoint, EndpointInfo, EndpointLimits, Inbox
from llmunix.models import LlmunixError
from llmunix.pool import Clock

if TYPE_CHECKING:
    from llmunix.process import ProcessContext

DEFAULT_PER_HOST = 6


def host_key(url: str) -> str:
    """`example.com` or `example.com:8080` (the URL's port when it has one), lowercase."""
    try:
        parts = urlsplit(url if "//" in url else f"//{url}")
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise LlmunixError(f"bad URL {url!r}; give scheme://host[:port]/...") from None
    if not host:
        raise LlmunixError(f"bad URL {url!r}: no host")
    return f"{host}:{port}" if port else host


class HostConnections:
    """Every host's line (made at its first use). Limits: as given, else read from the active
    configuration at the first use (llmunix.config). Thread-safe."""

    def __init__(self, per_host: int | None = None, hosts: Mapping[str, int] | None = None, *,
                 clock: Clock = time.monotonic) -> None:
        self._default = per_host
        self._hosts = {host_key(k): v for k, v in hosts.items()} if hosts is not None else None
        self.clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, Endpoint] = {}

    def _rules(self) -> tuple[int, dict[str, int]]:
        if self._default is None or self._hosts is None:
            from llmunix.config import active_config

            config = active_config()
            if self._default is None:
                self._default = config.connections_per_host
            if self._hosts is None:
                self._hosts = {host_key(k): v for k, v in config.host_connections.items()}
        return self._default, self._hosts

    def limit(self, key: str) -> int | None:
        """The connections allowed at once to host `key` (None: unlimited)."""
        default, hosts = self._rules()
        n = hosts.get(key, hosts.get(key.rsplit(":", 1)[0], default))
        return n or None

    def line(self, url: str) -> Endpoint:
        key = host_key(url)
        with self._lock:
            ep = self._live.get(key)
            if ep is None:
                limit = self.limit(key)
                ep = self._live[key] = Endpoint(key, EndpointLimits(max_concurrent=limit), limit is not None,
                                                self.clock, what="a connection to ")
            return ep

    @contextmanager
    def connection(self, ctx: ProcessContext, url: str) -> Iterator[None]:
        """Hold one of the URL host's connections for the block (see the module docstring)."""
        ep = self.line(url)
        ep.enter(0, Inbox(), ctx.check, ctx.off_slot)
        try:
            yield
        finally:
            ep.leave(0, None)

    def infos(self) -> list[EndpointInfo]:
        """The hosts used so far, by name: in flight, waiting, requests."""
        with self._lock:
            live = sorted(self._live.values(), key=lambda e: e.key)
        return [e.info() for e in live]
