"""`profile` beyond CPU: reads and writes apart, a subprocess tree's TCP bytes and connections,
and the rule-based suggestions (each rule on made-up figures, and the main ones on real runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from commands import debug_views as views
from llmunix.observe.advice import CPU_BOUND, suggestions
from llmunix.observe.debug import IoFigures, NetworkFigures, ProfileReport
from llmunix.observe.memory import MemoryLook, MemorySite
from llmunix.observe.network import parse_ss
from tests import memory_tools
from tests.conftest import LLMUNIX, WAIT

SS_SAMPLE = """\
ESTAB 0      0      127.0.0.1:55663 127.0.0.1:58114
\t bbr wscale:10,10 rto:204 mss:53760 cwnd:11 bytes_sent:5000 bytes_acked:5000 bytes_received:100000 segs_out:3
ESTAB 0      0      [::ffff:10.0.0.2]:443 [::ffff:10.0.0.9]:40000
\t cubic bytes_sent:70 bytes_received:12
ESTAB 0      0      [::1]:8080 [::1]:50000
\t cubic bytes_acked:1 segs_in:1
"""


def test_ss_output_is_read_as_bytes_per_connection():
    got = parse_ss(SS_SAMPLE)
    assert got[(("127.0.0.1", 55663), ("127.0.0.1", 58114))] == (5000, 100000)
    assert got[(("10.0.0.2", 443), ("10.0.0.9", 40000))] == (70, 12)
    assert got[(("::1", 8080), ("::1", 50000))] == (0, 0)


# ---------------------------------------------------------------------- the rules, one by one


BASE = ProfileReport(pid=7, name="t", tool="t", duration=10.0, requested=10.0, interval=0.01, samples=0,
                     ended_by="duration", frames=(), timeline=(), weights=(), hotspots=(), cpu_average=None,
                     cpu_peak=None, memory_average=None, memory_peak=None, io_operations=None, monitor_samples=0,
                     thread_backed=True)


def rules(r: ProfileReport, **kw) -> set[str]:
    return {s.rule for s in suggestions(r, **kw)}


def test_each_rule_fires_on_its_figures_and_only_then():
    assert rules(BASE) == set()
    json_file = sys.modules["json"].__file__.replace("__init__.py", "decoder.py")
    frames = (("tool", "/x/tool.py", 1), ("raw_decode", json_file, 343))
    hot = dataclasses.replace(BASE, frames=frames, timeline=((0, 1),) * 3 + ((0,),) * 7)
    assert rules(hot) == {"json"}  # 30% of the samples
    assert rules(dataclasses.replace(hot, timeline=((0, 1),) + ((0,),) * 9)) == set()  # 10%
    waiting = dataclasses.replace(BASE, cpu_average=4.0, monitor_samples=10, io_operations=120)
    assert rules(waiting) == {"io-wait"}
    assert "waits on I/O about 96%" in suggestions(waiting)[0].text
    idle = dataclasses.replace(waiting, io_operations=0)
    assert "with no I/O" in suggestions(idle)[0].text
    assert rules(dataclasses.replace(BASE, cpu_average=97.0, monitor_samples=10)) == {"cpu-bound-thread"}
    assert rules(dataclasses.replace(BASE, cpu_average=97.0, monitor_samples=10, thread_backed=False)) == set()
    small = dataclasses.replace(BASE, io=IoFigures(1500, 1500, 30_000, 60_000))
    assert rules(small) == {"small-io"}
    assert rules(dataclasses.replace(BASE, io=IoFigures(1500, 1500, 30_000_000, 60_000))) == set()
    conns = dataclasses.replace(BASE, thread_backed=False, network=NetworkFigures(40, 2, 1, 20))
    assert rules(conns) == {"connections"}
    look = MemoryLook(25, 10.0, 5_000_000, 500, (MemorySite("/x/tool.py", 12, "", 5_000_000, 500, 4_000_000, 400),),
                      True, None, 4_000_000, 400, 9_000_000, 100_000, False, False)
    assert rules(dataclasses.replace(BASE, allocations=look)) == {"memory-growth"}
    assert "most at tool.py:12" in suggestions(dataclasses.replace(BASE, allocations=look))[0].text
    assert rules(BASE, idempotent=True, repeat_of=3) == {"cacheable"}
    assert rules(BASE, idempotent=False, repeat_of=3) == set()  # a tool with side effects is not cached


# ---------------------------------------------------------------------- real runs


@pytest.fixture
def mk(make_kernel, tmp_path):
    return make_kernel(home=tmp_path / "home", monitor=True, monitor_interval=0.1)


def test_a_json_hot_spot_is_suggested_and_a_busy_thread_when_it_had_the_core(mk):
    pid = mk.spawn("json_cruncher")
    report = mk.profile(pid, 1.5)
    found = {s.rule for s in report.suggestions}
    assert "json" in found
    # It would keep a core busy; whether it got 80% of one depends on what else the machine runs.
    busy = report.cpu_average is not None and report.monitor_samples >= 2 and report.cpu_average >= CPU_BOUND
    assert ("cpu-bound-thread" in found) == busy
    text = views.profile_plain(report)
    assert "Suggestions:\n  json: JSON decoding is on the stack in" in text
    mk.kill(pid)
    mk.wait([pid], timeout=WAIT)


def test_a_repeated_idempotent_run_is_said_to_be_cacheable(mk):
    first = mk.spawn("slow_idempotent", label="same")
    assert mk.wait([first], timeout=WAIT)[0].state == "Completed"
    mk.flush()
    memory_tools.HOLD.set()
    try:
        again = mk.spawn("slow_idempotent", label="same")
        report = mk.profile(again, 0.5)
        found = [s for s in report.suggestions if s.rule == "cacheable"]
        assert found and f"{first:03d} ran the same tool with the same parameters" in found[0].text
        other = mk.spawn("slow_idempotent", label="different")
        assert "cacheable" not in {s.rule for s in mk.profile(other, 0.3).suggestions}
    finally:
        memory_tools.HOLD.clear()
    mk.wait([again, other], timeout=WAIT)


def profile_python_child(k, script: str, seconds: float = 1.5) -> ProfileReport:
    """Profile a `shell` tool running `script` in a Python child for `seconds`, then kill it."""
    pid = k.spawn("shell", cmd=f"{sys.executable} -c \"{script}\"")
    try:
        return k.profile(pid, seconds)
    finally:
        k.kill(pid)
        k.wait([pid], timeout=WAIT)


def test_reads_and_writes_are_counted_apart_for_a_subprocess_tree(mk, tmp_path):
    report = profile_python_child(mk, f"import time\nf=open({str(tmp_path / 'w')!r},'wb')\nend=time.time()+30\n"
                                      "while time.time()<end:\n    f.write(b'x'*4096); f.flush(); time.sleep(0.001)\n")
    io = report.io
    assert io is not None and io.write_ops and io.write_ops > 100 and io.write_bytes >= io.write_ops * 4000
    assert io.read_ops is not None
    line = views.io_text(report)
    assert f"{io.write_ops:,} writes" in line and "written)" in line


@pytest.fixture
def echo_server() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # (a killed client resets its connection)
            while data := conn.recv(65536):
                conn.sendall(data[:100])  # a short answer to each chunk

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_a_subprocess_trees_tcp_bytes_and_connections_are_measured(mk, echo_server):
    report = profile_python_child(
        mk, f"import socket,time\ns=socket.create_connection(('127.0.0.1',{echo_server}))\nend=time.time()+30\n"
            "while time.time()<end:\n    s.sendall(b'y'*20000); s.recv(65536); time.sleep(0.01)\n")
    n = report.network
    assert n is not None and n.seen >= 1 and n.peak >= 1
    if n.bytes_note:
        pytest.skip(n.bytes_note)  # (no `ss` on this machine: connections only)
    assert n.sent is not None and n.sent >= 20000 * 20  # about 100 sends a second: most of them counted
    assert n.received is not None and n.received >= 100 * 20
    assert "transferred on TCP" in views.network_text(report)


def test_an_isolated_trees_network_is_measured_and_its_workers_reader_is_not_profiled(mk, echo_server):
    pid = mk.spawn("tcp_chatter_iso", port=echo_server)
    try:
        report = mk.profile(pid, 1.5)
    finally:
        mk.kill(pid)
    mk.wait([pid], timeout=WAIT)
    n = report.network
    assert not report.thread_backed and n is not None and n.seen == 1  # its TCP connection, not its llmunix socket
    if not n.bytes_note:
        assert n.sent is not None and n.sent >= 20000 * 10
    if report.sampler == "py-spy":  # the worker's stacks: the tool's, without llmunix's reader thread
        names = {f[0] for f in report.frames}
        assert "tcp_chatter_iso" in names and "WorkerContext._read" not in names


def test_profile_end_to_end_reads_writes_network_and_suggestions(echo_server, tmp_path):
    # A Python child that writes a file 100 bytes at a time and talks to a local server over one
    # kept-alive connection: profiled through the executable, in plain text and as JSON.
    child = tmp_path / "child.py"
    child.write_text(f"import socket,time\nf=open({str(tmp_path / 'w')!r},'wb')\n"
                     f"s=socket.create_connection(('127.0.0.1',{echo_server}))\nend=time.time()+60\n"
                     "while time.time()<end:\n    s.sendall(b'y'*20000); s.recv(65536)\n"
                     "    for _ in range(20):\n        f.write(b'x'*100); f.flush()\n    time.sleep(0.005)\n")
    r = subprocess.run([LLMUNIX, "--home", str(tmp_path / "home"), "-c", f"run shell cmd='{sys.executable} {child}'",
                        "-c", "profile 001 --duration 2.5s", "-c", "profile 001 --duration 2.5s --json"],
                       capture_output=True, text=True, timeout=90, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    plain, _, raw = r.stdout.partition("\n{\n")
    assert "├── I/O Operations: " in plain and " writes (" in plain and " written)" in plain
    assert "├── Network: 1 connection seen (1 open at the end, 1 at most at once)" in plain
    assert "Suggestions:\n" in plain and "  small-io: " in plain
    data = json.loads("{\n" + raw)
    io, net = data["io"], data["network"]
    assert io["write_ops"] >= 1000 and io["write_bytes"] < io["write_ops"] * 512
    assert net["connections_seen"] == 1 and net["connections_peak"] == 1
    if net.get("bytes_note"):
        pytest.skip(net["bytes_note"])  # (no `ss` here: connections only)
    assert net["bytes_sent"] >= 20000 * 10 and net["bytes_received"] >= 100 * 10
    assert "small-io" in {s["rule"] for s in data["suggestions"]}
