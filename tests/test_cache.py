"""Step caching and preloading (issue 20 item 2): a run may reuse a stored result of the same
tool, version, parameters and input files; the reusing process still exists, ends Completed at
once with the stored output and says where it came from; workflow steps do the same with
`cache: true`; `--no-cache` refreshes; results outlive the session. Modules named in `preload`
are imported at start. Engine, shell and the real executable."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import LLMUNIX, Session

from llmunix import Kernel, LlmunixError
from llmunix.cache import CachePolicy
from llmunix.tools import preload as preload_module
from llmunix.tools.registry import make_tool


def _read(ctx, path: str, workspace: str = "") -> str:
    return Path(path).read_text()


READER = make_tool(_read, name="reader", source="test", touches=("paths:path",))  # its input: the file


def test_a_second_identical_run_reuses_the_result_and_still_is_a_process(kernel):
    first = kernel.spawn("sleep", seconds=0.05, cache=True)
    kernel.wait([first])
    seen = []
    sub = kernel.subscribe("process.cached", seen.append)
    second = kernel.spawn("sleep", seconds=0.05, cache=True)
    info = kernel.wait([second])[0]
    kernel.bus.flush()
    sub.cancel()
    assert info.state == "Completed" and info.output == 0.05 and info.exit_code == 0
    assert info.started is None  # it never ran
    assert [h.event for h in info.history] == ["spawned", "cached", "completed"]
    assert info.history[1].details.startswith(f"from {first:03d} (")
    assert kernel.cached_from(second) == first and kernel.cached_from(first) is None
    assert [e.data["source"] for e in seen] == [first]
    kernel.flush()
    runs = kernel.store.query("SELECT pid FROM tool_runs WHERE tool='sleep'")
    assert [r[0] for r in runs] == [first]  # a reused result is not a run of the tool
    assert kernel.performance("sleep").runs == 1


def test_dependents_of_a_cached_process_go_on_as_after_a_run(kernel):
    kernel.wait([kernel.spawn("echo", text="hi", cache=True)])
    cached = kernel.spawn("echo", text="hi", cache=True)
    after = kernel.spawn("echo", text="next", after=[cached])
    assert [i.state for i in kernel.wait([cached, after])] == ["Completed", "Completed"]


def test_other_parameters_other_versions_and_changed_inputs_miss(kernel, tmp_path):
    a = kernel.spawn("echo", text="a", cache=True)
    kernel.wait([a])
    b = kernel.spawn("echo", text="b", cache=True)
    kernel.wait([b])
    assert kernel.cached_from(b) is None

    def v1(ctx, n: int) -> int:
        return n
    kernel.wait([kernel.spawn(make_tool(v1, name="versioned", source="test", version="1"), n=1, cache=True)])
    hit = kernel.spawn(make_tool(v1, name="versioned", source="test", version="1"), n=1, cache=True)
    miss = kernel.spawn(make_tool(v1, name="versioned", source="test", version="2"), n=1, cache=True)
    kernel.wait([hit, miss])
    assert kernel.cached_from(hit) is not None and kernel.cached_from(miss) is None

    notes = tmp_path / "notes.txt"
    notes.write_text("one\n")
    first = kernel.spawn(READER, path=str(notes), cache=True)
    kernel.wait([first])
    same = kernel.spawn(READER, path=str(notes), cache=True)
    kernel.wait([same])
    assert kernel.cached_from(same) == first
    notes.write_text("two\n")
    changed = kernel.spawn(READER, path=str(notes), cache=True)
    info = kernel.wait([changed])[0]
    assert kernel.cached_from(changed) is None and info.output == "two\n"


def test_a_ttl_limits_the_age_of_what_is_reused(kernel):
    kernel.wait([kernel.spawn("echo", text="t", cache=True)])
    old = kernel.spawn("echo", text="t", cache=CachePolicy(ttl=1e-6))  # anything stored is older
    young = kernel.spawn("echo", text="t", cache=CachePolicy(ttl=3600))
    kernel.wait([old, young])
    assert kernel.cached_from(old) is None and kernel.cached_from(young) is not None
    with pytest.raises(LlmunixError, match="cache TTL must be a positive number"):
        CachePolicy(ttl=0)


def test_refresh_runs_afresh_and_the_next_hit_gets_its_result(kernel):
    first = kernel.spawn("echo", text="r", cache=True)
    fresh = kernel.spawn("echo", text="r", cache=CachePolicy(refresh=True), after=[first])
    kernel.wait([first, fresh])
    assert kernel.cached_from(fresh) is None
    hit = kernel.spawn("echo", text="r", cache=True)
    kernel.wait([hit])
    assert kernel.cached_from(hit) == fresh


def test_outputs_that_are_not_json_are_not_stored(kernel):
    def odd(ctx) -> object:
        return {1: "int keys come back as strings"}
    t = make_tool(odd, name="odd", source="test")
    first = kernel.spawn(t, cache=True)
    info = kernel.wait([first])[0]
    assert ("not cached", "its output is not JSON data that reads back the same") in \
        [(h.event, h.details) for h in info.history]
    again = kernel.spawn(t, cache=True)
    kernel.wait([again])
    assert kernel.cached_from(again) is None



def test_inputs_too_large_to_hash_run_uncached_and_say_why(kernel, tmp_path, monkeypatch):
    import llmunix.cache

    monkeypatch.setattr(llmunix.cache, "MAX_INPUT_FILES", 2)
    big = tmp_path / "corpus"
    big.mkdir()
    for n in range(3):
        (big / f"{n}.txt").write_text(str(n))
    pid = kernel.spawn(READER, path=str(big), cache=True)
    info = kernel.wait([pid])[0]
    assert ("not cached", f"{big} holds over 2 files") in [(h.event, h.details) for h in info.history]


def test_results_outlive_the_session_and_ps_l_says_where_one_came_from(tmp_path, capsys):
    with Kernel(tmp_path, monitor=False) as k:
        k.wait([k.spawn("echo", text="kept", cache=True)])
    with Kernel(tmp_path, monitor=False) as k:
        pid = k.spawn("echo", text="kept", cache=True)
        assert k.wait([pid])[0].output == "kept"
        assert k.cached_from(pid) == 1
    with Kernel(tmp_path, monitor=False) as k:  # the reusing process is history now
        out = Session(k, capsys).ok("ps -l 2")
        assert "State: Completed (cached from PID 001)" in out
        hits = k.store.query("SELECT hits FROM cache")[0][0]
        assert hits == 1


def test_gc_ages_out_cached_results_with_everything_else(tmp_path):
    with Kernel(tmp_path, monitor=False) as k:
        k.wait([k.spawn("echo", text="old", cache=True)])
        k.flush()
        assert k.store.query("SELECT count(*) FROM cache")[0][0] == 1
        k.gc(days=0, keep=0)
        assert k.store.query("SELECT count(*) FROM cache")[0][0] == 0


CACHED_SPEC = """\
name: cached
steps:
  - id: slow
    tool: sleep
    with: {seconds: 0.05}
    cache: true
    cache_ttl: 1d
  - id: report
    tool: echo
    needs: [slow]
    with: {text: "slept {{ steps.slow.output }}"}
"""


def test_a_cached_workflow_step_completes_from_the_store_and_status_says_so(kernel, capsys):
    (kernel.home / "workflows").mkdir()
    (kernel.home / "workflows" / "cached.yaml").write_text(CACHED_SPEC)
    sh = Session(kernel, capsys)
    sh.ok("workflow run cached --wait")
    out = sh.ok("workflow run cached --wait")
    line = next(x for x in out.splitlines() if "slow:" in x and "Completed" in x)
    assert "cached from PID 002" in line
    st = json.loads(sh.ok("workflow status 4 --json"))
    assert st["steps"][0]["cached_from"] == "002" and st["steps"][1]["cached_from"] is None
    assert st["steps"][1]["state"] == "completed"
    out = sh.ok("workflow run cached --no-cache --wait")
    assert "cached from" not in out
    spec = sh.ok("workflow show cached")
    assert "[cached up to 1d old]" in spec


def test_spec_cache_fields_are_checked(tmp_path):
    from llmunix.workflows.spec import SpecError, load_spec

    bad = tmp_path / "bad.yaml"
    for step, says in (("{id: a, agent: helper, goal: x, cache: true}", "cache is for tool steps"),
                       ("{id: a, tool: echo, cache_ttl: 1h}", "cache_ttl needs cache: true"),
                       ("{id: a, tool: echo, cache: true, cache_ttl: soon}", "bad duration 'soon'")):
        bad.write_text(f"name: bad\nsteps:\n  - {step}\n")
        with pytest.raises(SpecError, match=says):
            load_spec(bad)


def test_preload_imports_modules_and_calls_registered_warmers(make_kernel, monkeypatch):
    k = make_kernel()
    warmed: list[list[str]] = []
    monkeypatch.setattr(preload_module, "_warmers", {})
    monkeypatch.setattr(preload_module, "_preloaded", [])
    preload_module.register_warmer("isolated", lambda modules: warmed.append(modules) or None)
    seen = []
    sub = k.subscribe("system.preloaded", seen.append)
    results = k.preload(["json", "colorsys", "no_such_module_xyz"])
    k.bus.flush()
    sub.cancel()
    assert [(m, e is None) for m, e in results] == [("json", True), ("colorsys", True), ("no_such_module_xyz", False)]
    assert "ModuleNotFoundError" in results[2][1]
    assert warmed == [["json", "colorsys"]]
    assert seen[0].data["modules"] == ["json", "colorsys"] and "no_such_module_xyz" in seen[0].data["failed"]
    late: list[list[str]] = []
    preload_module.register_warmer("late", lambda modules: late.append(modules) or None)
    assert late == [["json", "colorsys"]]  # a pool made after start is warmed at once


# ---------------------------------------------------------------------------- the real executable


def llmunix(*commands: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    args = [LLMUNIX]
    for c in commands:
        args += ["-c", c]
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
                          cwd=cwd)


def test_e2e_run_cache_across_sessions_ttl_and_bad_options(tmp_path):
    home = tmp_path / "home"
    r = llmunix("run sleep seconds=0.1 --cache", "wait", home=home)
    assert r.returncode == 0 and r.stdout.startswith("001"), r.stderr
    r = llmunix("run sleep seconds=0.1 --cache --cache-ttl 1h", "wait", "ps -l 2", "run sleep seconds=0.1 --no-cache",
                "wait", "run sleep seconds=0.1 --cache", "wait", "ps -l 4", home=home)
    assert r.returncode == 0, r.stderr
    assert "State: Completed (cached from PID 001)" in r.stdout
    assert "State: Completed (cached from PID 003)" in r.stdout  # --no-cache stored its own
    db = sqlite3.connect(home / "llmunix.db")
    assert db.execute("SELECT cached_from FROM processes ORDER BY pid").fetchall() == [(None,), (1,), (None,), (3,)]
    for bad, says in (("run echo text=x --cache --no-cache", "give one of them"),
                      ("run echo text=x --cache-ttl 1h", "--cache-ttl needs --cache"),
                      ("run echo text=x --cache --cache-ttl 0", "--cache-ttl '0'; it must be more than 0")):
        r = llmunix(bad, home=home)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and says in lines[0], r.stderr


def test_e2e_preload_from_config(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('preload = ["json", "no_such_module_xyz"]\n')
    r = llmunix("events --type system.preloaded --json", home=home)
    assert r.returncode == 0, r.stderr
    assert "llmunix: could not preload no_such_module_xyz: ModuleNotFoundError" in r.stderr
    [event] = json.loads(r.stdout)
    assert event["data"]["modules"] == ["json"]


def test_e2e_a_cached_workflow_step(tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "cached.yaml").write_text(textwrap.dedent(CACHED_SPEC))
    home = tmp_path / "home"
    r = llmunix("workflow run cached --wait", "workflow run cached --wait", "workflow status 4 --json",
                home=home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[✓] slow: Completed (cached from PID 002, PID 005)" in r.stdout
    status = json.loads(r.stdout[r.stdout.index("{"):])
    assert status["steps"][0]["cached_from"] == "002"
