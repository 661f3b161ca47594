"""Endpoint limits as bookkeeping (llmunix/agents/endpoints.py): which rule an endpoint follows,
first come first served under max_concurrent, tokens estimated before and corrected after, a
request too big for a minute refused, a Retry-After hold. The same against a real server and
agents is in test_agents_openai.py."""

from __future__ import annotations

import threading

import pytest
from conftest import _wait_until

from llmunix.agents.backend import stay_on_slot
from llmunix.agents.endpoints import EndpointLimits, Endpoints, Inbox, split_key
from llmunix.models import LlmunixError

URL = "http://127.0.0.1:8080/v1"


def nothing() -> None:
    pass


def test_the_most_specific_rule_names_the_endpoint():
    eps = Endpoints({f"{URL}|qwen": EndpointLimits(max_concurrent=4), "http://other:1/v1": EndpointLimits(2)})
    assert eps.key_for(URL + "/", "qwen") == f"{URL}|qwen"
    assert eps.key_for(URL, "llama") == f"{URL}|llama"  # no rule: its own, unlimited
    assert eps.key_for("http://other:1/v1", "a") == eps.key_for("http://other:1/v1", "b") == "http://other:1/v1"
    assert eps.endpoint("http://other:1/v1", "a") is eps.endpoint("http://other:1/v1", "b")  # one line for all
    eps.endpoint(URL, "llama")  # used: listed, unlimited
    assert [(i.key, i.configured) for i in eps.infos()] == [
        (f"{URL}|llama", False), (f"{URL}|qwen", True), ("http://other:1/v1", True)]


@pytest.mark.parametrize(("key", "message"), [
    ("ftp://x", "bad endpoint 'ftp://x'; write URL or URL|MODEL"),
    (f"{URL}|", "no model after '|'"),
    ("localhost:8080", "write URL or URL|MODEL"),
])
def test_a_bad_endpoint_key_is_one_line(key, message):
    with pytest.raises(LlmunixError, match=message.replace("|", r"\|")):
        split_key(key)


def test_max_concurrent_admits_first_come_first_served():
    ep = Endpoints({URL: EndpointLimits(max_concurrent=1)}).endpoint(URL, "m")
    ep.enter(10, Inbox(), nothing, stay_on_slot)  # in flight
    order: list[int] = []
    lined_up = []

    def request(n: int) -> None:
        ep.enter(10, Inbox(), nothing, stay_on_slot)
        order.append(n)
        ep.leave(10, 10)

    for n in range(3):
        t = threading.Thread(target=request, args=(n,))
        t.start()
        lined_up.append(t)
        _wait_until(lambda n=n: ep.info().waiting == n + 1, message=f"request {n} in line")  # before the next
    assert ep.info().in_flight == 1 and ep.info().waiting == 3
    ep.leave(10, 10)
    for t in lined_up:
        t.join(10)
    assert order == [0, 1, 2] and ep.info().in_flight == 0 and ep.info().requests == 4


def test_tokens_are_estimated_before_and_corrected_after(monkeypatch):
    now = [1000.0]
    ep = Endpoints({URL: EndpointLimits(tokens_per_min=100)}, clock=lambda: now[0]).endpoint(URL, "m")
    ep.enter(60, Inbox(), nothing, stay_on_slot)
    assert ep.info().tokens_level == 40.0  # the estimate taken before the request
    ep.leave(60, 90)
    assert ep.info().tokens_level == 10.0  # the reply said 90
    now[0] += 30  # half a minute refills half the bucket
    assert ep.info().tokens_level == 60.0
    with pytest.raises(LlmunixError, match="needs about 150 tokens but the endpoint .* takes 100 per minute"):
        ep.enter(150, Inbox(), nothing, stay_on_slot)


def test_a_retry_after_holds_every_request_and_a_kill_leaves_the_line():
    now = [0.0]
    ep = Endpoints(clock=lambda: now[0]).endpoint(URL, "m")
    ep.hold(30)
    assert ep.info().held_for == 30
    inbox = Inbox()
    killed = threading.Event()

    def check() -> None:
        if inbox.killed:
            killed.set()
            raise RuntimeError("killed")

    t = threading.Thread(target=lambda: pytest.raises(RuntimeError, ep.enter, 1, inbox, check, stay_on_slot))
    t.start()
    _wait_until(lambda: ep.info().waiting == 1, message="the request in line")
    inbox()  # what off_slot's on_kill does
    t.join(10)
    assert killed.is_set() and ep.info().waiting == 0 and ep.info().in_flight == 0


def test_limits_are_set_all_or_nothing_and_read_k_and_m():
    eps = Endpoints()
    info = eps.set(URL, {"max_concurrent": "4", "tokens_per_min": "90k", "requests_per_min": "1.5k"})
    assert (info.limits.max_concurrent, info.limits.tokens_per_min, info.limits.requests_per_min) == (4, 90000, 1500)
    with pytest.raises(LlmunixError, match="give a whole number of requests"):
        eps.set(URL, {"requests_per_min": "10", "max_concurrent": "2.5"})
    assert eps.infos()[0].limits.requests_per_min == 1500  # unchanged: the bad value changed nothing
    assert eps.set(URL, {"max_concurrent": "none"}).limits.max_concurrent is None
