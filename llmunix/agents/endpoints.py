"""LLM endpoints and their limits: how many requests may be in flight at one endpoint, and how
many requests and tokens it takes per minute.

A model call waits off-slot (`ctx.off_slot`), so CPU slots do not bound how many are in flight:
the endpoint does. An endpoint is a base URL and a model. Its limits come from the most specific
rule configured (config.toml `[llm.endpoints."URL|MODEL"]`, else `[llm.endpoints."URL"]`, or the
`limits --endpoint KEY` command), and the rule's key is the endpoint's identity: a `URL` rule is
one endpoint shared by every model served there (a llama.cpp server with `--parallel 4`), a
`URL|MODEL` rule is that model's alone (an API with per-model rate limits). Without a rule an
endpoint is `URL|MODEL`, unlimited, and listed by `limits` once used.

* `max_concurrent` — requests in flight at once;
* `requests_per_min`, `tokens_per_min` — token buckets (pool.TokenBucket: refilled
  continuously, starting full). A request takes one request and its estimated prompt tokens
  (JSON size / 4) before it is sent; once the reply's usage is known, the difference is taken
  or given back.

A 429 (or 503) with Retry-After holds the whole endpoint back until then, not only the request
that got it. Requests wait their turn first come, first served: only the head of the line is
admitted; the others wait for its signal, so a release wakes one waiter, not all of them. A
waiter's wake-ups come through its `Inbox`, which the process table also uses to reach it on a
kill, so nothing polls. The line and its limits are llmunix/gate.py's (`Endpoint`), which web
hosts' connection limits share (hosts.py); here are the rules that say which endpoint a request
goes to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from llmunix.agents.transport import Transport
from llmunix.gate import SETTINGS, WAKE, Check, Endpoint, EndpointInfo, EndpointLimits, Inbox, OffSlot
from llmunix.models import LlmunixError
from llmunix.pool import Clock

CHARS_PER_TOKEN = 4  # the estimate of a request's prompt tokens, before the reply says


def split_key(key: str) -> tuple[str, str | None]:
    """`URL|MODEL` -> (URL, MODEL); `URL` -> (URL, None). The URL without a trailing slash."""
    url, sep, model = key.strip().rpartition("|") if "|" in key else (key.strip(), "", "")
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        raise LlmunixError(f"bad endpoint {key!r}; write URL or URL|MODEL, e.g. http://127.0.0.1:8080/v1|qwen2.5")
    if sep and not model.strip():
        raise LlmunixError(f"bad endpoint {key!r}: no model after '|'; write URL or URL|MODEL")
    return url, (model.strip() or None) if sep else None


def join_key(url: str, model: str | None) -> str:
    return f"{url}|{model}" if model else url


class Endpoints:
    """Every endpoint of one kernel's agents, and the rules that limit them. Thread-safe."""

    def __init__(self, rules: Mapping[str, EndpointLimits] | None = None, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._rules: dict[str, EndpointLimits] = {}
        self._live: dict[str, Endpoint] = {}
        self.transport = Transport()
        for key, limits in (rules or {}).items():
            url, model = split_key(key)
            self._rules[join_key(url, model)] = limits

    def key_for(self, url: str, model: str) -> str:
        """The endpoint a request to `model` at `url` belongs to (see the module docstring)."""
        url = url.rstrip("/")
        specific = join_key(url, model)
        with self._lock:
            if specific in self._rules or url not in self._rules:
                return specific
            return url

    def endpoint(self, url: str, model: str) -> Endpoint:
        key = self.key_for(url, model)
        with self._lock:
            ep = self._live.get(key)
            if ep is None:
                rule = self._rules.get(key)
                ep = self._live[key] = Endpoint(key, rule or EndpointLimits(), rule is not None, self.clock)
            return ep

    def set(self, key: str, settings: Mapping[str, Any]) -> EndpointInfo:
        """Change a rule (`limits --endpoint KEY name=value ...`); all or nothing. Requests made
        from now on follow it; those in flight finish where they are."""
        url, model = split_key(key)
        key = join_key(url, model)
        with self._lock:
            limits = self._rules.get(key, EndpointLimits())
            for name, value in settings.items():
                limits = limits.with_setting(name, value)
            self._rules[key] = limits
            ep = self._live.get(key)
            if ep is None:
                ep = self._live[key] = Endpoint(key, limits, True, self.clock)
        ep.apply(limits)
        return ep.info()

    def infos(self) -> list[EndpointInfo]:
        """Every configured or used endpoint, by key."""
        with self._lock:
            for key, rule in self._rules.items():
                if key not in self._live:
                    self._live[key] = Endpoint(key, rule, True, self.clock)
            live = sorted(self._live.values(), key=lambda e: e.key)
        return [e.info() for e in live]


__all__ = ["CHARS_PER_TOKEN", "SETTINGS", "WAKE", "Check", "Endpoint", "EndpointInfo", "EndpointLimits",
           "Endpoints", "Inbox", "OffSlot", "join_key", "split_key"]
