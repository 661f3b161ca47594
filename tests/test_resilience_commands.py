"""Resilience through the shell: `run --retry/--timeout/--restart`, `ps -l` attempts, `breakers`,
`health`, the chaos and watchdog settables, alerts, and `llmunix -c health` exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess

from conftest import LLMUNIX, PROMPT, close_prompt, spawn_prompt

from commands.resilience_views import alert_text, attempt_lines
from llmunix.models import AttemptInfo, Event
from llmunix.retry import RetryPolicy

ANY = r"[^\n]*"


def test_run_retry_shows_attempts_in_ps_and_json(sh):
    out = sh.ok("run fail message=flaky --retry 2 --backoff 10ms..20ms --retry-on flak")
    pid = int(out)
    info = sh.kernel.wait([pid], timeout=10)[0]
    assert (info.state, info.error) == ("Failed", "flaky")
    assert "Attempt: 3 of 3" in sh.ok(f"ps -l {pid}")
    [record] = json.loads(sh.ok(f"ps -a --json {pid}"))
    assert (record["attempt"], record["max_attempts"], record["next_attempt"]) == (3, 3, None)
    plain = json.loads(sh.ok("ps -a --json"))
    assert all("attempt" in r and "max_attempts" in r for r in plain)


def test_ps_long_shows_the_next_attempt_while_a_retry_waits(sh, wait_until):
    pid = sh.kernel.spawn("fail", retry=RetryPolicy(max_attempts=4, initial=30, jitter="none"))
    wait_until(lambda: sh.kernel.info(pid).phase == "waiting")
    out = sh.ok(f"ps -l {pid}")
    assert re.search(r"State: Pending \(retry 1 of 3 in 30s \(last error: failed on purpose\)\)", out), out
    assert re.search(r"Attempt: 2 of 4, next at \d\d:\d\d:\d\d", out), out
    [record] = json.loads(sh.ok(f"ps --json {pid}"))
    assert record["phase"] == "waiting" and record["attempt"] == 2 and record["next_attempt"]
    sh.ok(f"kill {pid}")
    assert sh.kernel.info(pid).state == "Cancelled"


def test_run_timeout_fails_with_the_reason(sh):
    pid = int(sh.ok("run sleep seconds=5 --timeout 0.2s"))
    info = sh.kernel.wait([pid], timeout=10)[0]
    assert (info.state, info.error, info.exit_code) == ("Failed", "timed out after 0.2s", 124)
    assert "Error: timed out after 0.2s" in sh.ok(f"ps -l {pid}")


def test_run_restart_stops_after_max_restarts(sh):
    pid = int(sh.ok("run fail --restart on-failure --max-restarts 2 --backoff 10ms..20ms --min-uptime 5s"))
    info = sh.kernel.wait([pid], timeout=10)[0]
    assert info.error == ("restart limit reached (2 restarts in a row, each run up less than 5s); "
                          "last error: failed on purpose")
    assert "Restarts: 2 of 2 (on-failure)" in sh.ok(f"ps -l {pid}")


def test_bad_run_options_are_one_line_errors(sh):
    for line, fragment in (
        ("run echo text=x --retry-on 503", "--retry-on needs --retry N"),
        ("run echo text=x --retry 2 --backoff 5s..1s", "less than the initial delay"),
        ("run echo text=x --backoff 1s..2s", "--backoff needs --retry N or --restart"),
        ("run echo text=x --max-restarts 3", "--max-restarts and --min-uptime need --restart"),
        ("run echo text=x --timeout 0", "bad --timeout '0'"),
        ("run echo text=x --retry -1", "bad --retry -1"),
        ("run echo text=x --restart sometimes", "invalid choice: 'sometimes'"),
        ("run echo text=x --retry many", "invalid int value"),
    ):
        assert fragment in sh.bad(line), line
    assert sh.kernel.ps(all=True) == []


def test_breakers_list_reset_and_json(sh):
    assert sh.ok("breakers").split() == ["NAME", "STATE", "FAILURES", "TRIPS", "NEXT_PROBE", "LAST_ERROR"]
    sh.ok("set breaker_threshold 2")
    sh.ok("set breaker_cooldown 1m")
    for _ in range(2):
        sh.kernel.wait([int(sh.ok("run fail message='HTTP 503'"))], timeout=10)
    lines = sh.ok("breakers").splitlines()
    assert lines[0].split() == ["NAME", "STATE", "FAILURES", "TRIPS", "NEXT_PROBE", "LAST_ERROR"]
    assert lines[1].split()[:4] == ["tool:fail", "open", "2/2", "1"] and lines[1].endswith("HTTP 503")
    [record] = json.loads(sh.ok("breakers --json"))
    assert (record["name"], record["kind"], record["target"], record["state"]) == ("tool:fail", "tool", "fail", "open")
    assert record["next_probe"] and record["last_error"] == "HTTP 503"
    info = sh.kernel.wait([int(sh.ok("run fail"))], timeout=10)[0]
    assert info.error.startswith("circuit open for tool fail (2 consecutive failures; next probe in ")
    assert sh.ok("breakers reset fail").strip() == "tool:fail closed"
    assert json.loads(sh.ok("breakers --json"))[0]["state"] == "closed"
    assert "needs a NAME" in sh.bad("breakers reset")
    assert "no breaker 'nope'" in sh.bad("breakers reset nope")
    assert "invalid choice: 'fail' (choose from 'reset')" in sh.bad("breakers fail")


def test_health_prints_checks_and_fails_when_unhealthy(sh):
    out = sh.ok("health")
    assert out.splitlines()[0] == "health: healthy"
    assert re.search(r"^store\s+ok\s+\S+llmunix\.db writable \(writer (process \d+|thread)\)$", out, re.M)
    report = json.loads(sh.ok("health --json"))
    assert report["status"] == "healthy"
    assert [c["name"] for c in report["checks"]] == ["store", "disk space", "memory", "breakers",
                                                      "stalled processes", "unkillable threads", "worker threads",
                                                      "max_running"]
    sh.kernel.health_min_disk_mb = 1e12
    assert sh.bad("health") == "health: unhealthy: disk space"


def test_chaos_and_watchdog_settables(sh):
    sh.ok('set chaos "fail=1,seed=7"')
    assert sh.kernel.chaos == "fail=1,delay=1s,seed=7"
    info = sh.kernel.wait([int(sh.ok("run echo text=x"))], timeout=10)[0]
    assert (info.state, info.error) == ("Failed", "chaos: injected failure")
    assert [h.event for h in info.history if h.event == "chaos"] == ["chaos"]
    assert "between 0 and 1" in sh.bad('set chaos "fail=2"')
    sh.ok("set chaos off")
    assert sh.kernel.chaos == "off"
    sh.ok("set stall_timeout 90s")
    sh.ok("set stall_action kill")
    assert (sh.kernel.stall_timeout, sh.kernel.stall_action) == (90.0, "kill")
    assert "invalid choice" in sh.bad("set stall_action panic")
    assert sh.bad("set breaker_threshold 0") == ("set: breaker_threshold must be a whole number from 1 to 1,000,000, "
                                                 "not '0'")


def test_views_for_attempts_and_alerts():
    a = AttemptInfo(attempt=2, max_attempts=5, next_attempt=0.0 + 3600 * 10)
    assert re.fullmatch(r"Attempt: 2 of 5, next at \d\d:\d\d:\d\d", attempt_lines(a)[0])
    r = AttemptInfo(attempt=1, max_attempts=1, next_attempt=None, restarts=3, max_restarts=10, restart="always")
    assert attempt_lines(r) == ["Restarts: 3 of 10 (always)"]
    stalled = Event(1, 0.0, "process.stalled", 7, {"name": "fetch", "idle": 61.2, "action": "alert"})
    assert alert_text(stalled).plain == "[007] fetch stalled: no progress for 61s"
    on = Event(2, 0.0, "system.degraded", None, {"state": "on", "reasons": ["circuit open for tool fetch"]})
    assert alert_text(on).plain == "degraded: circuit open for tool fetch (low and idle work deferred)"
    off = Event(3, 0.0, "system.degraded", None, {"state": "off", "reasons": [], "was": ["memory pressure"]})
    assert alert_text(off).plain == "degraded mode over (was: memory pressure)"


def _llmunix(*args: str, home, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLMUNIX, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1", **(env or {})})


def test_health_exit_codes_from_the_command_line(tmp_path):
    ok = _llmunix("-c", "health", home=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("health: healthy"), ok.stderr
    (tmp_path / "config.toml").write_text("health_min_disk_mb = 1e12\n")
    bad = _llmunix("-c", "health", home=tmp_path)
    assert bad.returncode == 1 and bad.stdout.startswith("health: unhealthy")
    assert bad.stderr.strip() == "health: unhealthy: disk space"
    (tmp_path / "config.toml").write_text('chaos = "fail=3"\n')
    conf = _llmunix("-c", "health", home=tmp_path)
    assert conf.returncode == 2 and "chaos rate fail=3 must be between 0 and 1" in conf.stderr
    assert "Traceback" not in conf.stderr


def test_degraded_mode_is_announced_at_the_prompt(tmp_path):
    child = spawn_prompt(tmp_path)
    try:
        child.sendline("set breaker_threshold 1")
        child.expect(PROMPT)
        child.sendline("run fail message=down")
        child.expect(PROMPT)
        child.expect(rf"degraded:{ANY}circuit open for tool fail{ANY}low and idle work deferred")
        child.sendline("breakers reset fail")
        child.expect(r"tool:fail closed")
        child.expect(rf"degraded mode over{ANY}circuit open for tool fail")
    finally:
        close_prompt(child)
