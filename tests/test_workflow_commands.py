"""The `workflow` command family through the cmd2 app, and end to end through the real executable
(subprocess for -c and pipes, a pty for the live display)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import tests.workflow_tools  # noqa: F401 - registers the wft_* test tools
from llmunix import Kernel
from tests.conftest import LLMUNIX, PROMPT, Session, close_prompt, spawn_prompt

BAD_SPEC = "name: broken\nsteps:\n  - id: a\n    tool: echo\n    needs: [ghost]\n"


@pytest.fixture
def wsh(tmp_path, monkeypatch, capsys):
    """A shell whose working directory has a ./workflows folder with two specs of the user's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "mine.yaml").write_text(
        "name: mine\ndescription: the user's own\ninputs:\n  who: {type: str, default: you}\n"
        "steps:\n  - id: hello\n    tool: echo\n    with: {text: 'hello {{ inputs.who }}'}\n"
        "  - id: bye\n    tool: echo\n    needs: [hello]\n    with: {text: '{{ steps.hello.output }}, bye'}\n")
    (tmp_path / "workflows" / "broken.yaml").write_text(BAD_SPEC)
    k = Kernel(tmp_path / "home", monitor=False, kill_grace=0.3)
    yield Session(k, capsys)
    k.shutdown()


def test_list_shows_user_and_example_specs_and_marks_invalid_ones(wsh):
    out = wsh.ok("workflow list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "mine" in rows and "./workflows" in rows["mine"] and "the user's own" in rows["mine"]
    assert "fan-out" in rows and "examples" in rows["fan-out"]
    assert "invalid:" in rows["broken"] and "needs unknown step 'ghost'" in rows["broken"]
    data = json.loads(wsh.ok("workflow list --json"))
    assert {d["name"] for d in data} >= {"mine", "fan-out", "broken"}


def test_show_draws_the_dag_in_stages(wsh):
    out = wsh.ok("workflow show fan-out")
    assert "Stage 1 (in parallel)" in out and "join: echo  [needs left, middle, right]" in out
    assert "right: sleep  [retry 2x; timeout 00:01:00]" in out
    spec = json.loads(wsh.ok("workflow show mine --json"))
    assert [s["id"] for s in spec["steps"]] == ["hello", "bye"]


def test_run_wait_prints_the_plan_and_the_final_tree(wsh):
    out = wsh.ok("workflow run mine --input who=world --wait")
    assert "Starting workflow: mine (PID: 001)" in out
    assert "Step 1: hello → Queued" in out and "Step 2: bye → Waiting" in out
    assert "[✓] hello: Completed" in out and "[✓] bye: Completed" in out
    info = wsh.kernel.info(1)
    assert info.output["steps"]["bye"] == "hello world, bye"
    assert wsh.kernel.info(2).parent == 1  # steps are child processes


def test_a_bare_input_value_sets_the_first_input(wsh):
    wsh.ok("workflow run mine --input everyone --wait")
    assert wsh.kernel.info(1).output["steps"]["hello"] == "hello everyone"


@pytest.mark.parametrize("line,expected", [
    ("workflow run nope", "no workflow named 'nope'"),
    ("workflow run minee", "did you mean 'mine'?"),
    ("workflow run mine --input bogus=1", "workflow 'mine' has no input 'bogus' (its inputs: who)"),
    ("workflow run broken", "broken.yaml: step 'a' needs unknown step 'ghost'"),
    ("workflow run workflows/missing.yaml", "missing.yaml: cannot read it"),
    ("workflow status 999", "no process 999"),
    ("workflow status mine", "no run of workflow 'mine'"),
    ("workflow frobnicate", "invalid choice"),
])
def test_bad_input_gets_one_line_and_starts_nothing(wsh, line, expected):
    assert expected in wsh.bad(line)
    assert wsh.kernel.ps(all=True) == []


def test_status_retry_and_errors_about_steps(wsh, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    (tmp_path / "workflows" / "fixable.yaml").write_text(
        f"name: fixable\nsteps:\n  - id: up\n    tool: echo\n    with: {{text: data}}\n"
        f"  - id: down\n    tool: wft_fail_if\n    needs: [up]\n    with: {{flag: '{flag}'}}\n")
    out, err, failed = wsh.run("workflow run fixable --wait")
    assert failed and "workflow 001 fixable failed: step down failed: flag flag is set" in err
    assert "[✗] down: Failed (flag flag is set, PID 003)" in out
    status = wsh.ok("workflow status fixable")
    assert "State: Failed (step down failed: flag flag is set)" in status and "[✓] up: Completed" in status
    assert "has no step 'nope' (steps: 1=up, 2=down)" in wsh.bad("workflow retry fixable --step nope")
    flag.unlink()
    out = wsh.ok("workflow retry 1 --wait")
    assert "retrying workflow 001 fixable (attempt 2): down" in out and "[✓] down: Completed" in out
    data = json.loads(wsh.ok("workflow status 001 --json"))
    assert data["attempt"] == 2 and [s["attempts"] for s in data["steps"]] == [1, 1]


def test_pause_and_resume_by_name(wsh, tmp_path, wait_until):
    gate = tmp_path / "gate"
    (tmp_path / "workflows" / "held.yaml").write_text(
        f"name: held\nsteps:\n  - id: g\n    tool: wft_gate\n    with: {{path: '{gate}'}}\n")
    wsh.ok("workflow run held")
    wait_until(lambda: Path(str(gate) + ".started").exists(), message="the step to start")
    assert "(held) is still running (Monitoring)" in wsh.bad("workflow retry held")
    assert "workflow 001 held and its running steps" in wsh.ok("workflow pause held")
    wait_until(lambda: wsh.kernel.info(2).phase == "paused", message="the step to pause")
    assert "[◐] g: Paused" in wsh.ok("workflow status held")
    assert "resumed workflow 001 held" in wsh.ok("workflow resume held")
    gate.touch()
    assert wsh.kernel.wait([1], timeout=10)[0].state == "Completed"


# ------------------------------------------------------------------ end to end


def _llmunix(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMUNIX_HOME": str(home), "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run([LLMUNIX, "--tools", "tests.workflow_tools", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_e2e_run_wait_exit_status_and_piped_status(tmp_path):
    home = tmp_path / "home"
    ok = _llmunix("-c", "workflow run fan-out --input seconds=0.05 --wait", cwd=tmp_path, home=home)
    assert ok.returncode == 0, ok.stderr
    assert "[✓] join: Completed" in ok.stdout
    piped = _llmunix("-c", "workflow status fan-out", cwd=tmp_path, home=home)
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout  # plain when piped
    assert "Workflow: fan-out (PID: 001)" in piped.stdout
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "fails.yaml").write_text(
        "name: fails\nsteps:\n  - id: boom\n    tool: fail\n    with: {message: kaput}\n")
    bad = _llmunix("-c", "workflow run fails --wait", cwd=tmp_path, home=home)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "fails failed: step boom failed" in bad.stderr


def test_e2e_status_and_live_wait_in_a_pty(tmp_path):
    child = spawn_prompt(tmp_path / "home")
    try:
        child.sendline("workflow run fan-out --input seconds=0.2 --wait")
        child.expect(r"\[✓\][^\n]*join[^\n]*Completed", timeout=20)
        child.expect(PROMPT)
        child.sendline("workflow status fan-out")
        child.expect(r"Workflow: [^\n]*fan-out[^\n]*\(PID: 001\)")
        child.expect(r"Progress: 100% complete")
        child.expect(r"\[✓\][^\n]*left")
        child.expect(PROMPT)
    finally:
        close_prompt(child)


def test_run_refuses_the_workflow_body_and_says_what_to_use(wsh):
    assert "use `workflow run NAME`" in wsh.bad("run workflow")
    assert wsh.kernel.ps(all=True) == []


def test_step_ends_are_not_announced_only_the_workflows_own(wsh):
    """A workflow's steps (and an agent's tool calls) are children: their ends would flood the
    prompt, so only the parent's end becomes an alert."""
    shown: list[str] = []
    shell = wsh.shell
    shell.add_alert = lambda msg, **_: shown.append(str(msg))  # capture what would be drawn
    sub = wsh.kernel.subscribe("process.completed|process.failed|process.cancelled", shell._alert)
    try:
        wsh.ok("workflow run mine --wait")
        wsh.kernel.bus.flush()
    finally:
        sub.cancel()
    assert len(shown) == 1 and shown[0].startswith("[001] mine completed")


def test_retrying_a_step_whose_upstream_failed_says_which_to_retry(wsh, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    (tmp_path / "workflows" / "chain.yaml").write_text(
        f"name: chain\nsteps:\n  - id: up\n    tool: wft_fail_if\n    with: {{flag: '{flag}'}}\n"
        "  - id: down\n    tool: echo\n    needs: [up]\n    with: {text: x}\n")
    wsh.run("workflow run chain --wait")
    assert "step 'down' needs up, which did not complete; retry 'up'" in wsh.bad("workflow retry chain --step down")
