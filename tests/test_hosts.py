"""Per-host connection limits for web_fetch (llmunix/hosts.py): at most N connections at once to
one host across processes; the others wait their turn off-slot, and a kill reaches them."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import LLMUNIX, WAIT

from llmunix import Kernel
from llmunix.config import Config, activate
from llmunix.hosts import DEFAULT_PER_HOST, HostConnections, host_key
from llmunix.models import LlmunixError


class SlowSite:
    """A local server whose page answers only when the test releases it, counting requests in
    flight (and the most at once)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.served = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with site.lock:
                    site.in_flight += 1
                    site.most = max(site.most, site.in_flight)
                try:
                    site.release.wait(WAIT)
                    body = b"<title>slow</title><p>finally.</p>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with site.lock:
                        site.in_flight -= 1
                        site.served += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/page") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow() -> Iterator[SlowSite]:
    s = SlowSite()
    yield s
    s.close()


@pytest.fixture
def k(make_kernel, tmp_path) -> Kernel:
    """A kernel with a store; the configuration's host limits are read at its first connection."""
    return make_kernel(home=tmp_path / "home")


@pytest.fixture
def configured():
    """Activate a configuration for the test, and the defaults again after it."""
    def use(**settings: Any) -> None:
        activate(Config(**settings))

    yield use
    activate(None)


def test_host_keys_and_limits_from_the_configuration(configured):
    assert host_key("https://Example.com/a?b") == "example.com"
    assert host_key("http://127.0.0.1:8000/x") == "127.0.0.1:8000"
    with pytest.raises(LlmunixError, match="no host"):
        host_key("http:///nohost")
    assert HostConnections().limit("example.com") == DEFAULT_PER_HOST
    configured(connections_per_host=3, host_connections={"api.example.com": 1, "127.0.0.1:8000": 2,
                                                         "unlimited.example.com": 0})
    hosts = HostConnections()
    assert hosts.limit("example.com") == 3
    assert hosts.limit("api.example.com") == 1
    assert hosts.limit("api.example.com:443") == 1  # the host's entry covers its ports
    assert hosts.limit("127.0.0.1:8000") == 2
    assert hosts.limit("127.0.0.1:9000") == 3
    assert hosts.limit("unlimited.example.com") is None


def test_fetches_beyond_the_hosts_limit_wait_their_turn_off_slot(configured, k, slow, tmp_path, wait_until):
    configured(host_connections={f"127.0.0.1:{slow.port}": 2})
    pids = [k.spawn("web_fetch", urls=slow.url(f"/p{i}"), dest=str(tmp_path / f"d{i}")) for i in range(4)]
    wait_until(lambda: slow.in_flight == 2, message="two requests at the server")
    waiting = wait_until(lambda: [p for p in pids if "waiting for a connection to 127.0.0.1" in k.info(p).detail])
    assert len(waiting) == 2
    info = k.info(waiting[0])
    assert info.phase == "waiting"  # off its slot
    assert "(2 of 2 in flight)" in info.detail
    slow.release.set()
    for done in k.wait(pids, timeout=WAIT):
        assert done.state == "Completed", done.error
    wait_until(lambda: slow.served == 4, message="the server to count every request")  # (after replying)
    assert slow.most == 2


def test_a_fetch_waiting_for_a_connection_is_killed_at_once(configured, k, slow, tmp_path, wait_until):
    configured(host_connections={f"127.0.0.1:{slow.port}": 1})
    first = k.spawn("web_fetch", urls=slow.url(), dest=str(tmp_path / "a"))
    wait_until(lambda: slow.in_flight == 1)
    second = k.spawn("web_fetch", urls=slow.url(), dest=str(tmp_path / "b"))
    wait_until(lambda: "waiting for a connection" in k.info(second).detail)
    k.kill(second)
    [done] = k.wait([second], timeout=WAIT)
    assert done.state == "Cancelled"
    slow.release.set()
    assert k.wait([first], timeout=WAIT)[0].state == "Completed"
    # (the server counts a request after its reply is sent: the fetch may be done before that)
    wait_until(lambda: slow.served >= 1, message="the server to count the first request")
    assert slow.served == 1 and slow.most == 1  # the killed one never reached the server
    assert [h.in_flight for h in k.hosts.infos()] == [0]


def test_the_limit_end_to_end_with_a_config_file(slow, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[host_connections]\n"127.0.0.1:{slow.port}" = 1\n')
    script = tmp_path / "s.llmunix"
    script.write_text(f"run web_fetch urls={slow.url('/a')} dest={tmp_path / 'a'}\n"
                      f"run web_fetch urls={slow.url('/b')} dest={tmp_path / 'b'}\n"
                      "run sleep seconds=1\nwait 003\nps -l 001\nps -l 002\nlimits\n")
    proc = subprocess.Popen([LLMUNIX, "--home", str(tmp_path / "home"), "--config", str(config), str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        slow.release.set()  # (the script ends with both fetches interrupted)
    assert proc.returncode == 0, err
    assert "waiting for a connection to 127.0.0.1" in out
    assert slow.most == 1
    # `limits` lists the host's line: one in flight of one allowed, one waiting, one admitted
    assert "WEB_HOST" in out
    assert [line.split() for line in out.splitlines() if line.startswith(f"127.0.0.1:{slow.port}")] == [
        [f"127.0.0.1:{slow.port}", "1/1", "1", "1"]]


def test_web_fetch_waits_in_the_kernel_for_an_isolated_run_too(configured, k, slow, tmp_path, wait_until):
    configured(host_connections={f"127.0.0.1:{slow.port}": 1})
    first = k.spawn("web_fetch", urls=slow.url(), dest=str(tmp_path / "a"))
    wait_until(lambda: slow.in_flight == 1)
    second = k.spawn("web_fetch", urls=slow.url(), dest=str(tmp_path / "b"), isolate=True)
    wait_until(lambda: "waiting for a connection" in k.info(second).detail)
    assert k.info(second).subprocess_pid is not None
    slow.release.set()
    assert [i.state for i in k.wait([first, second], timeout=WAIT)] == ["Completed", "Completed"]
    assert slow.most == 1
