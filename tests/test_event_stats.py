"""Event analytics (issue 20 item 9): `events stats` over a window — rates by type, failure
patterns per tool and per host, bursts, the slowest tools and workflow steps — computed by SQL
aggregation in the store. Synthetic events with chosen times make the window arithmetic exact;
real runs and the real executable show it end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from conftest import LLMUNIX, Session

from llmunix import Event, LlmunixError
from llmunix.observe.analytics import event_stats, pattern
from llmunix.store import Store

T0 = 1_800_000_000.0  # a fixed clock for synthetic events


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "llmunix.db")
    yield s
    s.close()


def put(store: Store, events: list[tuple[float, str, int | None, dict]]) -> None:
    for seq, (t, type_, pid, data) in enumerate(events, 1):
        store.consume(Event(seq=seq, time=t, type=type_, pid=pid, data=data))
    assert store.flush()


def test_rates_by_type_over_the_window_only(store):
    put(store, [(T0 - 10, "process.spawned", 1, {})]  # before the window
        + [(T0 + i, "process.spawned", i, {}) for i in range(1, 31)]
        + [(T0 + i, "process.completed", i, {"tool": "echo", "runtime": 0.5}) for i in range(1, 11)])
    st = event_stats(store, T0, T0 + 60)
    assert [(t.type, t.count) for t in st.types] == [("process.spawned", 30), ("process.completed", 10)]
    assert st.total == 40 and st.types[0].per_minute == pytest.approx(30.0)


def test_failures_read_as_patterns_per_tool_and_per_host(store):
    worker = "tcp://10.0.0.5:40001"
    failures = [("fetch", "timed out after 12.4s"), ("fetch", "timed out after 9.1s"),
                ("fetch", "HTTP 503 from a.example"), ("parse", "dependency failed: 003 Failed"),
                ("parse", "dependency failed: 017 Failed")]
    put(store, [(T0 + i, "process.failed", 10 + i, {"tool": tool, "error": err})
                for i, (tool, err) in enumerate(failures)] + [(T0 + 9, "process.remote", 11, {"worker": worker})])
    store.execute("INSERT INTO processes (pid, tool, worker) VALUES (11, 'fetch', ?)", (worker,))
    assert store.flush()
    st = event_stats(store, T0, T0 + 60)
    by_tool = [(f.key, f.pattern, f.count) for f in st.failures_by_tool]
    assert by_tool == [("fetch", "timed out after <n>s", 2), ("fetch", "HTTP 503 from a.example", 1),
                       ("parse", "dependency failed: <pid> Failed", 2)]
    newest = st.failures_by_tool[0]
    assert newest.example == "timed out after 9.1s" and newest.last_pid == 11
    hosts = {(f.key, f.pattern): f.count for f in st.failures_by_host}
    assert hosts[("10.0.0.5", "timed out after <n>s")] == 1
    assert hosts[(socket.gethostname(), "timed out after <n>s")] == 1


def test_bursts_are_buckets_well_above_the_mean(store):
    quiet = [(T0 + 10 * i, "process.log", 1, {}) for i in range(60)]  # one event every 10 s
    burst = [(T0 + 300 + j / 100, "process.spawned", 100 + j, {}) for j in range(50)]  # 50 in half a second
    put(store, quiet + burst)
    st = event_stats(store, T0, T0 + 600, bucket=10)
    assert len(st.bursts) == 1
    b = st.bursts[0]
    assert b.start == T0 + 300 and b.count == 51 and b.top_type == "process.spawned" and b.top_count == 50
    assert b.ratio > 10
    assert event_stats(store, T0, T0 + 600, bucket=600).bursts == ()  # one bucket: nothing stands out


def test_slowest_tools_and_steps(store):
    put(store, [(T0 + 1, "process.completed", 1, {"tool": "sleep", "runtime": 2.0}),
                (T0 + 2, "process.completed", 2, {"tool": "sleep", "runtime": 4.0}),
                (T0 + 3, "process.failed", 3, {"tool": "fetch", "runtime": 9.0, "error": "x"}),
                (T0 + 4, "process.completed", 4, {"tool": "workflow", "name": "nightly", "runtime": 20.0}),
                (T0 + 5, "workflow.step_completed", 4, {"name": "nightly", "step": "fetch", "duration": 7.0,
                                                        "child": 5}),
                (T0 + 6, "workflow.step_completed", 4, {"name": "nightly", "step": "fetch", "duration": 0.0,
                                                        "child": 6, "cached_from": 5}),
                (T0 + 7, "workflow.step_completed", 4, {"name": "nightly", "step": "sum", "duration": 1.0,
                                                        "child": 7})])
    st = event_stats(store, T0, T0 + 60)
    assert [(s.name, s.runs, s.max, s.max_pid) for s in st.slowest_tools] == [
        ("workflow nightly", 1, 20.0, 4), ("fetch", 1, 9.0, 3), ("sleep", 2, 4.0, 2)]
    assert st.slowest_tools[2].mean == 3.0
    assert [(s.name, s.runs, s.max, s.max_pid) for s in st.slowest_steps] == [
        ("nightly/fetch", 1, 7.0, 5), ("nightly/sum", 1, 1.0, 7)]  # the cached step is not a run


def test_bad_windows_and_no_store():
    with pytest.raises(LlmunixError, match="without a home directory"):
        event_stats(None)
    assert pattern(None) == "(no error message)" and pattern("  \n") == "(no error message)"


def test_the_shell_command_on_real_runs(kernel, capsys):
    sh = Session(kernel, capsys)
    sh.run("run fail message='upstream returned 503'")
    sh.run("run fail message='upstream returned 503'")
    sh.run("run sleep seconds=0.2")
    sh.run("wait")
    kernel.flush()
    out = sh.ok("events stats --since 1h")
    assert out.startswith("Events ") and "# Failures by tool" in out
    section = out.split("# Failures by tool\n")[1].split("\n\n")[0].splitlines()
    assert section[0].split() == ["TOOL", "COUNT", "LAST", "PATTERN"]
    assert section[1].split()[:3] == ["fail", "2", "002"] and section[1].endswith("upstream returned 503")
    slow = out.split("# Slowest tools\n")[1].splitlines()
    assert slow[1].split()[0] == "sleep"
    data = json.loads(sh.ok("events stats --json"))
    assert {t["type"]: t["count"] for t in data["types"]}["process.failed"] == 2
    assert data["failures_by_tool"][0]["pattern"] == "upstream returned 503"
    for line, says in (("events stats --pid 1", "not --pid"), ("events stats --since soon", "bad time 'soon'"),
                       ("events stats --bucket 0", "--bucket must be more than 0"),
                       ("events --bucket 1m", "--bucket is for `events stats`")):
        assert says in sh.bad(line)


def test_e2e_events_stats_through_the_executable(tmp_path):
    env = {**os.environ, "LLMUNIX_HOME": str(tmp_path), "NO_COLOR": "1"}

    def llmunix(*commands: str) -> subprocess.CompletedProcess:
        args = [LLMUNIX, "-k"]
        for c in commands:
            args += ["-c", c]
        return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)

    llmunix("run fail message='disk full at block 123456'", "run fail message='disk full at block 654321'", "wait")
    r = llmunix("events stats", "events stats --since 2h --bucket 1m --json")
    assert r.returncode == 0, r.stderr
    text, _, rest = r.stdout.partition("\n{")
    assert "disk full at block <n>" in text
    data = json.loads("{" + rest)
    assert data["bucket_seconds"] == 60 and data["failures_by_host"][0]["count"] == 2
    r = llmunix("events stats --follow")
    assert r.returncode != 0
    assert r.stderr.strip() == "events: `events stats` takes --since, --bucket and --json, not --follow"
