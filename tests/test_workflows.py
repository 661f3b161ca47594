"""Workflows: specs in three formats, the DAG, parallel steps, retries, timeouts, on_error, retry
from a step, pause/resume/kill, and durability of step outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmunix import Kernel
from llmunix.models import IllegalTransition, LlmunixError
from llmunix.retry import RetryPolicy
from llmunix.workflows.service import EXAMPLES
from llmunix.workflows.spec import SpecError, load_spec, spec_from_data
from llmunix.workflows.status import StepStatus, _eta
from tests import workflow_tools as wt
from tests.conftest import wait_phase


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def run(k: Kernel, data: dict, **inputs) -> tuple[int, object]:
    pid = k.workflow_run(spec_from_data(data), inputs)
    return pid, k.wait([pid], timeout=20)[0]


# ------------------------------------------------------------------ specs


def test_the_shipped_examples_load_in_all_three_formats():
    yaml_spec = load_spec(EXAMPLES / "research-pipeline.yaml")
    assert [s.id for s in yaml_spec.steps] == ["fetch", "summarize", "analyze", "report"]
    assert yaml_spec.step("fetch").retry.max_attempts == 3 and yaml_spec.step("fetch").timeout == 300
    toml_spec = load_spec(EXAMPLES / "fan-out.toml")
    assert toml_spec.step("join").needs == ["left", "middle", "right"]
    md = load_spec(EXAMPLES / "research-trace.md")
    assert [(s.id, s.tool, s.needs) for s in md.steps] == [
        ("step1", "web_fetch", []), ("step2", "summarize", ["step1"]), ("step3", "report", ["step2"])]
    assert md.step("step1").retry.max_attempts == 3  # retry_count 2 = three attempts in all


def test_markdown_trace_with_fallback_and_dependencies_in_the_block(tmp_path):
    f = tmp_path / "trace.md"
    f.write_text("""---
name: traced
---
### Step 1: First
```yaml
tool: echo
parameters: {text: "a, b and 'c'"}
on_error: {action: fail, fallback_step: 3}
```
### Step 2: Second
```yaml
tool: echo
parameters: {text: two}
depends_on: ["Step 1"]
```
### Step 3: Rescue
```yaml
tool: echo
parameters: {text: rescued}
```
""")
    spec = load_spec(f)
    assert spec.name == "traced"
    assert spec.step("step1").fallback == "step3"
    assert spec.step("step1").with_ == {"text": "a, b and 'c'"}
    assert spec.step("step2").needs == ["step1"]


@pytest.mark.parametrize("text,expected", [
    ("name: x\nsteps:\n  - id: a\n    tool: echo\n   bad: [\n", "line 5: malformed YAML"),
    ("name: x\nsteps:\n  - id: a\n    tool: echo\n    retry: {max_attempts: 0}\n",
     "step 'a', field 'retry.max_attempts': Input should be greater than or equal to 1"),
    ("name: x\nsteps:\n  - id: a\n    tool: echo\n    timeout: soon\n", "step 'a', field 'timeout': bad duration"),
    ("name: x\nsteps:\n  - id: a\n", "step 'a': a step names exactly one of 'tool' or 'agent'"),
    ("name: x\nsteps:\n  - id: a\n    tool: echo\n    colour: red\n", "step 'a', field 'colour': is not a known field"),
    ("name: x\nsteps:\n  - id: a\n    tool: echo\n    on_error: explode\n",
     "step 'a', field 'on_error': must be fail, skip, retry or {fallback: STEP}"),
    ("name: x\nsteps: []\n", "field 'steps': a workflow needs at least one step"),
])
def test_bad_specs_name_the_file_the_step_and_the_field(tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(f)
    assert str(err.value).startswith(str(f)) and expected in str(err.value), str(err.value)


def test_malformed_toml_and_markdown_are_refused(tmp_path):
    t = tmp_path / "bad.toml"
    t.write_text("name = 'x'\n[[steps]\n")
    with pytest.raises(SpecError, match=r"bad.toml: malformed TOML"):
        load_spec(t)
    m = tmp_path / "bad.md"
    m.write_text("---\nname: [x\n---\n### Step 1: a\n```yaml\ntool: echo\n```\n")
    with pytest.raises(SpecError, match=r"bad.md: line 2: malformed frontmatter"):
        load_spec(m)
    m.write_text("---\nname: x\n---\n### Step 1: a\n```yaml\ntool: echo\nneeds_more: 1\n```\n")
    with pytest.raises(SpecError, match=r"line 4: Step 1: unknown key 'needs_more'"):
        load_spec(m)


def test_a_cycle_is_rejected_with_the_cycle_printed(make_kernel):
    k = make_kernel()
    data = {"name": "loop", "steps": [{"id": "a", "tool": "echo", "needs": ["c"]},
                                      {"id": "b", "tool": "echo", "needs": ["a"]},
                                      {"id": "c", "tool": "echo", "needs": ["b"]}]}
    cycle = r"the steps form a cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    with pytest.raises(SpecError, match=cycle):
        k.workflow_run(spec_from_data(data))
    assert k.ps(all=True) == []  # nothing started half-way


@pytest.mark.parametrize("steps,expected", [
    ([{"id": "a", "tool": "echo", "needs": ["nope"]}], "step 'a' needs unknown step 'nope'"),
    ([{"id": "a", "tool": "no_such_tool"}], "step 'a': unknown tool 'no_such_tool'"),
    ([{"id": "a", "agent": "no-such-agent", "goal": "x"}], "step 'a': unknown agent 'no-such-agent'"),
    ([{"id": "a", "tool": "shell", "with": {"line": "ls"}}], "tool 'shell' needs parameter 'cmd' in 'with'"),
    ([{"id": "a", "tool": "echo", "with": {"text": "x", "colour": 1}}], "tool 'echo' has no parameter 'colour'"),
    ([{"id": "a", "tool": "echo", "with": {"text": "{{ steps.zz.output }}"}}], "needs unknown step 'zz'"),
    ([{"id": "a", "tool": "echo", "with": {"text": "{{ secrets.x }}"}}], "it starts with one of: inputs, steps"),
    ([{"id": "a", "tool": "echo", "with": {"text": "{{ inputs.nope }}"}}], "{{ inputs.nope }} names no input"),
    ([{"id": "a", "tool": "echo", "on_error": {"fallback": "b"}}, {"id": "b", "tool": "echo"},
      {"id": "c", "tool": "echo", "needs": ["b"]}], "step 'b' is a fallback"),
])
def test_bad_graphs_and_references_are_refused_before_anything_starts(make_kernel, steps, expected):
    k = make_kernel()
    with pytest.raises(LlmunixError) as err:
        k.workflow_run(spec_from_data({"name": "bad", "steps": steps}))
    assert expected in str(err.value)
    assert k.ps(all=True) == []


def test_inputs_are_typed_defaulted_and_required(make_kernel):
    k = make_kernel()
    data = {"name": "typed", "inputs": {"n": {"type": "int"}, "words": {"type": "list", "default": ["a"]}},
            "steps": [{"id": "a", "tool": "echo", "with": {"text": "{{ inputs.n }} {{ inputs.words }}"}}]}
    with pytest.raises(LlmunixError, match="needs input 'n'"):
        k.workflow_run(spec_from_data(data))
    with pytest.raises(LlmunixError, match="input 'n' must be int"):
        k.workflow_run(spec_from_data(data), {"n": "three"})
    with pytest.raises(LlmunixError, match="has no input 'm'"):
        k.workflow_run(spec_from_data(data), {"m": 1})
    pid = k.workflow_run(spec_from_data(data), {"n": "3", "words": "x, y"})
    [info] = k.wait([pid], timeout=10)
    assert info.output["steps"]["a"] == '3 ["x", "y"]'


# ------------------------------------------------------------------ running


def test_steps_run_in_dependency_order_and_outputs_flow_downstream(make_kernel):
    k = make_kernel()
    pid, info = run(k, {"name": "chain", "inputs": {"who": "world"}, "steps": [
        {"id": "c", "tool": "echo", "needs": ["b"], "with": {"text": "c after {{ steps.b.output }}"}},
        {"id": "a", "tool": "echo", "with": {"text": "hello {{ inputs.who }}"}},
        {"id": "b", "tool": "echo", "with": {"text": "{{ steps.a.output }}!"}},
    ]})
    assert info.state == "Completed", info.error
    assert info.output["steps"] == {"a": "hello world", "b": "hello world!", "c": "c after hello world!"}
    children = sorted((p for p in k.ps(all=True) if p.parent == pid), key=lambda p: p.started)
    assert [c.name for c in children] == ["chain/a", "chain/b", "chain/c"]  # ps shows parent and child


def test_independent_steps_really_run_at_the_same_time(make_kernel):
    wt.reset()
    k = make_kernel(max_running=3)
    pid, info = run(k, {"name": "par", "steps": [
        {"id": f"s{i}", "tool": "wft_parallel", "with": {"expect": 3}} for i in range(3)
    ] + [{"id": "join", "tool": "echo", "needs": ["s0", "s1", "s2"], "with": {"text": "joined"}}]})
    wt.release.set()
    assert info.state == "Completed", info.error
    assert wt.peak == 3
    assert info.output["steps"]["join"] == "joined"


def test_parallelism_is_bounded_by_the_schedulers_slots(make_kernel, wait_until):
    wt.reset()
    k = make_kernel(max_running=2, time_slice=1000)  # no round robin: a started body keeps its slot
    pid = k.workflow_run(spec_from_data({"name": "bounded", "steps": [
        {"id": f"s{i}", "tool": "wft_parallel", "with": {"expect": 4}} for i in range(4)]}))
    # Each waits for 4 to run at once, which two slots never allow: let them go once two run
    # together and the other two wait for a slot.
    wait_until(lambda: wt.peak == 2 and sum(i.parent == pid and i.phase == "ready" for i in k.ps()) == 2,
               message="two steps running and two waiting for a slot")
    wt.release.set()
    [info] = k.wait([pid], timeout=20)
    assert info.state == "Completed" and wt.peak == 2


def test_a_failing_step_is_retried_with_backoff_until_it_succeeds(make_kernel, tmp_path):
    k = make_kernel()
    retries = []
    k.subscribe("workflow.step_retry", lambda e: retries.append(e.data))
    counter = tmp_path / "n"
    pid, info = run(k, {"name": "flaky", "steps": [
        {"id": "f", "tool": "wft_flaky", "with": {"path": str(counter), "fail_times": 2},
         "retry": {"max_attempts": 3, "initial": 0.01, "factor": 2, "max": 0.02, "jitter": "none"}}]})
    assert info.state == "Completed", info.error
    k.bus.flush()
    assert [(r["attempt"], r["delay"]) for r in retries] == [(2, 0.01), (3, 0.02)]
    st = k.workflow_status(pid)
    assert st.steps[0].attempts == 3 and counter.read_text() == "3"


def test_retry_gives_up_after_max_attempts_and_only_on_matching_errors(make_kernel, tmp_path):
    k = make_kernel()
    pid, info = run(k, {"name": "gives-up", "steps": [
        {"id": "f", "tool": "wft_flaky", "with": {"path": str(tmp_path / "n"), "fail_times": 5},
         "retry": {"max_attempts": 2, "initial": 0.01}}]})
    assert info.state == "Failed" and info.error == "step f failed: flaky failure 2"
    pid, info = run(k, {"name": "picky", "steps": [
        {"id": "f", "tool": "wft_flaky", "with": {"path": str(tmp_path / "m"), "fail_times": 5},
         "retry": {"max_attempts": 5, "initial": 0.01, "retry_on": ["timed out*", "HTTP 5*"]}}]})
    assert info.error == "step f failed: flaky failure 1"  # not a retryable error: one attempt


def test_backoff_delays_stay_within_their_jitter_bounds():
    full = RetryPolicy(max_attempts=6, initial=1, factor=2, max=10, jitter="full")
    assert [full.cap(n) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert full.delay(3, rand=lambda: 0.0) == 0.0 and full.delay(3, rand=lambda: 0.999) == pytest.approx(3.996)
    frac = RetryPolicy(initial=2, factor=3, max=100, jitter=0.25)
    lo, hi = frac.bounds(2)
    assert (lo, hi) == (4.5, 7.5)
    assert frac.delay(2, rand=lambda: 0.0) == 4.5 and frac.delay(2, rand=lambda: 1.0) == 7.5
    import random

    rng = random.Random(7)
    for attempt in range(1, 6):
        for policy in (full, frac):
            low, high = policy.bounds(attempt)
            assert all(low <= policy.delay(attempt, rng.random) <= high for _ in range(200))
    with pytest.raises(LlmunixError):
        RetryPolicy(jitter=2.0)
    assert RetryPolicy(retry_on=("HTTP 5*",)).retries("HTTP 503 from host") is True
    assert RetryPolicy(retry_on=("timed out",)).retries("refused") is False


def test_on_error_skip_lets_dependents_run_with_a_null_output(make_kernel, tmp_path):
    k = make_kernel()
    flag = tmp_path / "flag"
    flag.touch()
    pid, info = run(k, {"name": "skipper", "steps": [
        {"id": "a", "tool": "wft_fail_if", "with": {"flag": str(flag)}, "on_error": "skip"},
        {"id": "b", "tool": "echo", "needs": ["a"], "with": {"text": "a gave [{{ steps.a.output }}]"}}]})
    assert info.state == "Completed", info.error
    assert info.output["steps"] == {"b": "a gave []"}
    assert [s.state for s in k.workflow_status(pid).steps] == ["skipped", "completed"]


def test_on_error_fail_stops_the_workflow_and_dependents_never_run(make_kernel, tmp_path):
    k = make_kernel()
    flag = tmp_path / "flag"
    flag.touch()
    count = tmp_path / "count"
    pid, info = run(k, {"name": "failer", "steps": [
        {"id": "a", "tool": "wft_fail_if", "with": {"flag": str(flag)}},
        {"id": "b", "tool": "wft_count", "needs": ["a"], "with": {"path": str(count)}}]})
    assert (info.state, info.error) == ("Failed", "step a failed: flag flag is set")
    assert lines(count) == 0
    assert [s.state for s in k.workflow_status(pid).steps] == ["failed", "pending"]


def test_on_error_fallback_runs_the_fallback_and_dependents_get_its_output(make_kernel, tmp_path):
    k = make_kernel()
    flag = tmp_path / "flag"
    flag.touch()
    pid, info = run(k, {"name": "fallback", "steps": [
        {"id": "primary", "tool": "wft_fail_if", "with": {"flag": str(flag), "text": "primary"},
         "on_error": {"fallback": "backup"}},
        {"id": "backup", "tool": "echo", "with": {"text": "from backup"}},
        {"id": "use", "tool": "echo", "needs": ["primary"], "with": {"text": "got {{ steps.primary.output }}"}}]})
    assert info.state == "Completed", info.error
    assert info.output["steps"]["use"] == "got from backup"
    st = {s.id: s for s in k.workflow_status(pid).steps}
    assert st["primary"].state == "completed" and st["primary"].via == "backup"


def test_on_error_retry_uses_a_default_policy():
    spec = spec_from_data({"name": "r", "steps": [{"id": "a", "tool": "echo", "on_error": "retry"}]})
    assert spec.step("a").retry.max_attempts == 3


def test_a_timeout_ends_a_hung_step(make_kernel):
    k = make_kernel()
    pid, info = run(k, {"name": "hung", "steps": [{"id": "h", "tool": "wft_hang", "timeout": "200ms"}]})
    assert (info.state, info.error) == ("Failed", "step h failed: timed out after 0.2s")
    assert k.workflow_status(pid).steps[0].state == "failed"


def test_a_bad_reference_at_run_time_fails_that_step_clearly(make_kernel):
    k = make_kernel()
    pid, info = run(k, {"name": "badref", "steps": [
        {"id": "a", "tool": "echo", "with": {"text": "plain"}},
        {"id": "b", "tool": "echo", "with": {"text": "{{ steps.a.output.title }}"}}]})
    assert info.state == "Failed"
    assert info.error == "step b failed: {{ steps.a.output.title }}: steps.a.output is str, not a mapping or a list"


def test_retry_of_one_step_reruns_it_and_its_dependents_only(make_kernel, tmp_path):
    k = make_kernel()
    files = {n: tmp_path / n for n in "abcd"}
    data = {"name": "rerun", "steps": [
        {"id": "a", "tool": "wft_count", "with": {"path": str(files["a"]), "text": "A"}},
        {"id": "b", "tool": "wft_count", "needs": ["a"],
         "with": {"path": str(files["b"]), "text": "{{ steps.a.output }}B"}},
        {"id": "c", "tool": "wft_count", "needs": ["b"],
         "with": {"path": str(files["c"]), "text": "{{ steps.b.output }}C"}},
        {"id": "d", "tool": "wft_count", "needs": ["a"], "with": {"path": str(files["d"])}}]}
    pid, info = run(k, data)
    assert info.state == "Completed"
    again = k.workflow_retry(pid, step="b")
    assert again.pid == pid
    [info] = k.wait([pid], timeout=20)
    assert info.state == "Completed" and info.output["steps"]["c"] == "ABC"
    assert {n: lines(f) for n, f in files.items()} == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert k.workflow_status(pid).attempt == 2
    assert any(h.event == "spawned" and "retry attempt 2: b, c" in h.details for h in info.history)
    k.workflow_retry(str(pid), step="1")  # by number: everything depends on a
    [info] = k.wait([pid], timeout=20)
    assert {n: lines(f) for n, f in files.items()} == {"a": 2, "b": 3, "c": 3, "d": 2}


def test_retry_without_a_step_reruns_the_failed_ones_reusing_upstream_outputs(make_kernel, tmp_path):
    k = make_kernel()
    flag = tmp_path / "flag"
    flag.touch()
    up = tmp_path / "up"
    pid, info = run(k, {"name": "fix-and-retry", "steps": [
        {"id": "up", "tool": "wft_count", "with": {"path": str(up), "text": "data"}},
        {"id": "down", "tool": "wft_fail_if", "needs": ["up"], "with": {"flag": str(flag),
                                                                        "text": "used {{ steps.up.output }}"}}]})
    assert info.state == "Failed"
    with pytest.raises(LlmunixError, match="no step 'nope'"):
        k.workflow_retry(pid, step="nope")
    flag.unlink()
    k.workflow_retry("fix-and-retry")  # by name: its newest run
    [info] = k.wait([pid], timeout=20)
    assert info.state == "Completed" and info.output["steps"]["down"] == "used data"
    assert lines(up) == 1
    with pytest.raises(LlmunixError, match="has no failed steps"):
        k.workflow_retry(pid)


def test_retrying_a_running_workflow_is_refused(make_kernel, tmp_path):
    k = make_kernel()
    gate = tmp_path / "gate"
    pid = k.workflow_run(spec_from_data({"name": "busy", "steps": [
        {"id": "g", "tool": "wft_gate", "with": {"path": str(gate)}}]}))
    with pytest.raises(IllegalTransition, match="is still running"):
        k.workflow_retry(pid)
    gate.touch()
    assert k.wait([pid], timeout=10)[0].state == "Completed"


def test_pausing_a_workflow_pauses_its_running_steps_and_starts_no_new_ones(make_kernel, tmp_path, wait_until):
    k = make_kernel(max_running=4)
    gate = tmp_path / "gate"
    after = tmp_path / "after"
    pid = k.workflow_run(spec_from_data({"name": "pausable", "steps": [
        {"id": "g", "tool": "wft_gate", "with": {"path": str(gate)}},
        {"id": "next", "tool": "wft_count", "needs": ["g"], "with": {"path": str(after)}}]}))
    wait_until(lambda: Path(str(gate) + ".started").exists(), message="the gate step to start")
    k.pause(pid)
    step_pid = k.workflow_status(pid).steps[0].pid
    wait_phase(k, step_pid, "paused")
    wait_phase(k, pid, "paused")
    gate.touch()  # the step could finish now, but it is paused
    assert k.wait([pid], timeout=0.3)[0].phase == "paused"
    assert lines(after) == 0 and k.info(step_pid).phase == "paused"
    k.resume(pid)
    [info] = k.wait([pid], timeout=20)
    assert info.state == "Completed" and lines(after) == 1


def test_killing_a_workflow_cancels_every_step(make_kernel, tmp_path, wait_until):
    k = make_kernel(max_running=4)
    gates = [tmp_path / f"g{i}" for i in range(2)]
    pid = k.workflow_run(spec_from_data({"name": "doomed", "steps": [
        {"id": f"g{i}", "tool": "wft_gate", "with": {"path": str(g)}} for i, g in enumerate(gates)]}))
    wait_until(lambda: all(Path(str(g) + ".started").exists() for g in gates), message="both steps to start")
    k.kill(pid)
    steps = [s.pid for s in k.workflow_status(pid).steps]
    infos = k.wait([pid, *steps], timeout=10)
    assert [i.state for i in infos] == ["Cancelled"] * 3
    assert [s.state for s in k.workflow_status(pid).steps] == ["cancelled", "cancelled"]


def test_step_outputs_are_committed_and_retry_works_after_a_restart(tmp_path):
    home = tmp_path / "home"
    flag = tmp_path / "flag"
    flag.touch()
    count = tmp_path / "count"
    data = {"name": "durable", "steps": [
        {"id": "a", "tool": "wft_count", "with": {"path": str(count), "text": "kept"}},
        {"id": "b", "tool": "wft_fail_if", "needs": ["a"],
         "with": {"flag": str(flag), "text": "{{ steps.a.output }}!"}}]}
    with Kernel(home, monitor=False) as k:
        pid = k.workflow_run(spec_from_data(data))
        assert k.wait([pid], timeout=20)[0].state == "Failed"
    flag.unlink()
    with Kernel(home, monitor=False) as k:
        st = k.workflow_status("durable")
        assert st.pid == pid and [s.state for s in st.steps] == ["completed", "failed"]
        k.workflow_retry(pid)
        [info] = k.wait([pid], timeout=20)
        assert info.state == "Completed" and info.output["steps"]["b"] == "kept!"
        assert lines(count) == 1  # a's committed output was reused, not recomputed
        assert Path(k.workflow_status(pid).run_dir).parent == home / "runs"


def test_eta_follows_the_longest_chain_of_remaining_work():
    import networkx as nx

    g = nx.DiGraph([("a", "b")])
    g.add_node("c")

    def step(sid: str, state: str, elapsed: float | None = None) -> StepStatus:
        return StepStatus(sid, sid, "echo", (), state, None, 0, 1, None, elapsed, None, None, None, False, None)

    typical = {"a": 2.0, "b": 3.0, "c": 4.0}
    steps = [step("a", "running", 0.5), step("b", "pending"), step("c", "pending")]
    assert _eta(g, steps, typical.get, 10.0, 1, 3) == 4.5  # a's remaining 1.5 + b's 3 > c's 4
    # without a history for every remaining step: the run's own rate so far
    assert _eta(g, steps, lambda s: None, 10.0, 1.0, 4) == 30.0


def test_workflow_status_json_has_steps_progress_and_eta_fields(make_kernel):
    k = make_kernel()
    pid, info = run(k, {"name": "js", "steps": [{"id": "a", "tool": "echo", "with": {"text": "x"}}]})
    d = json.loads(json.dumps(k.workflow_status(pid).to_dict()))
    assert d["state"] == "Completed" and d["progress"] == {"done": 1, "total": 1, "percentage": 100.0}
    assert d["steps"][0]["id"] == "a" and d["steps"][0]["state"] == "completed" and "eta" in d


def test_an_interrupted_workflow_recovers_and_reruns_only_its_unfinished_steps(tmp_path, wait_until):
    home = tmp_path / "home"
    gate = tmp_path / "gate"
    first = tmp_path / "first"
    data = {"name": "recoverable", "steps": [
        {"id": "first", "tool": "wft_count", "with": {"path": str(first), "text": "one"}},
        {"id": "held", "tool": "wft_gate", "needs": ["first"], "with": {"path": str(gate)}}]}
    k = Kernel(home, monitor=False, kill_grace=0.3)
    pid = k.workflow_run(spec_from_data(data))
    wait_until(lambda: Path(str(gate) + ".started").exists(), message="the held step to start")
    old_step = k.workflow_status(pid).steps[1].pid
    k.shutdown()  # llmunix stops: both end Interrupted
    with Kernel(home, monitor=False, kill_grace=0.3) as k:
        assert {i.pid: i.state for i in k.ps(all=True, state="interrupted")} == {pid: "Interrupted",
                                                                                 old_step: "Interrupted"}
        gate.touch()
        infos = {i.pid: i for i in k.recover()}
        assert infos[old_step].state == "Cancelled"
        assert infos[old_step].error == f"interrupted; its workflow {pid:03d} runs it again"
        [info] = k.wait([pid], timeout=20)
        assert info.state == "Completed", info.error
        assert lines(first) == 1  # the finished step was not run again
        new_step = k.workflow_status(pid).steps[1].pid
        assert new_step != old_step and k.info(new_step).state == "Completed"


def test_long_runs_checkpoint_deltas_and_fold_back_to_the_whole_state(make_kernel):
    from llmunix.workflows.runner import FULL_EVERY, fold

    k = make_kernel()
    n = FULL_EVERY + 15
    steps = [{"id": "s0", "tool": "echo", "with": {"text": "0"}}]
    steps += [{"id": f"s{i}", "tool": "echo", "needs": [f"s{i - 1}"], "with": {"text": str(i)}} for i in range(1, n)]
    pid, info = run(k, {"name": "long", "steps": steps})
    assert info.state == "Completed"
    versions = [s for _v, s in k.checkpoints(pid)]
    deltas = [v for v in versions if v.get("delta")]
    assert deltas and len(versions) - len(deltas) >= 2  # mostly deltas, a full one now and then
    assert all(len(d["steps"]) <= 2 for d in deltas)  # a delta carries only what changed
    state = fold(versions)
    assert [state["steps"][f"s{i}"]["output"] for i in range(n)] == [str(i) for i in range(n)]
    k.workflow_retry(pid, step=f"s{n - 3}")
    [info] = k.wait([pid], timeout=20)
    st = k.workflow_status(pid)
    assert info.state == "Completed" and st.attempt == 2
    assert [s.attempts for s in st.steps][-4:] == [1, 1, 1, 1] and st.steps[0].pid < st.steps[-1].pid
