"""Agent processes: the offline loop doing real work, tools as child processes, learning memory,
pause and kill mid-run, and the `agent` / `agents` / `memory` commands (cmd2 app and `llmunix -c`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import LLMUNIX, PROMPT, Session, close_prompt, spawn_prompt, wait_phase

from commands.base import plain_text
from commands.views import ps_tree
from llmunix import Kernel, ProcessContext
from llmunix.agents import attach
from llmunix.agents.service import EXAMPLES, default_directories
from llmunix.config import Config
from llmunix.tools.markdown import AGENT
from llmunix.tools.registry import REGISTRY, ToolRegistry, make_tool

SUMMARY_GOAL = "Summarize samples/scheduling.md into summary.md in 2 sentences"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working directory with the sample texts in its workspace."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES / "samples", tmp_path / "workspace" / "samples")
    return tmp_path


def test_the_summarization_agent_reads_summarises_and_writes_offline(here):
    with Kernel(here / "home", monitor=False, kill_grace=0.3) as k:
        service = attach(k, Config())
        pid = service.run("summarization-agent", SUMMARY_GOAL)
        info = k.wait([pid], timeout=20)[0]
        assert (info.kind, info.state) == ("agent", "Completed"), info.error
        answer = info.output["answer"]
        assert answer.startswith("# Summary of samples/scheduling.md") and answer.endswith("Written to summary.md.")
        summary = (here / "workspace" / "summary.md").read_text()
        assert summary.count(". ") + 1 == 2 or summary.count(".") == 2
        assert "A scheduler chooses which of the waiting processes runs next" in summary
        assert info.output["tools_used"] == ["read_file", "write_file"] and info.output["iterations"] == 3
        children = [i for i in k.ps(all=True) if i.parent == pid]
        assert [(c.name, c.kind, c.state) for c in children] == [("read_file", "tool", "Completed"),
                                                                ("write_file", "tool", "Completed")]
        states = [h.details.split(":")[0] for h in info.history if h.event == "state"]
        # It starts Thinking (an agent's first state); history notes each change after that.
        assert states[:3] == ["Acting", "Learning", "Thinking"] and states[-1] == "Learning"


def test_the_research_agent_searches_ranks_reads_and_reports(here):
    with Kernel(here / "home", monitor=False, kill_grace=0.3) as k:
        service = attach(k, Config())
        info = k.wait([service.run("research-agent", "Research priority aging in samples/ and write aging.md")],
                      timeout=20)[0]
        assert info.state == "Completed", info.error
        actions = info.context.intermediate_results["checkpoint"]["actions"]
        assert [(a["tool"], a["args"]) for a in actions[:3]] == [
            ("list_files", '{"path": "samples"}'), ("grep", '{"pattern": "priority|aging", "path": "samples"}'),
            ("read_file", '{"path": "samples/scheduling.md"}')]  # the file with the most matches first
        report = (here / "workspace" / "aging.md").read_text()
        assert report.startswith("# Findings: priority aging")
        assert "## samples/scheduling.md" in report and "## Matches" in report


def test_memory_gives_the_eta_and_stops_the_planner_repeating_failed_calls(here):
    with Kernel(here / "home", monitor=False, kill_grace=0.3) as k:
        service = attach(k, Config())
        totals: dict[int, list[int]] = {}
        k.subscribe("process.progress", lambda e: totals.setdefault(e.pid, []).append(e.data["total"]))
        first = k.wait([service.run("summarization-agent", SUMMARY_GOAL)], timeout=20)[0]
        second = k.wait([service.run("summarization-agent", SUMMARY_GOAL)], timeout=20)[0]
        k.flush()
        assert totals[first.pid][0] == 6 and totals[first.pid][-1] == 3  # nothing remembered: max_iterations
        assert set(totals[second.pid]) == {3}  # the median of the completed runs
        for _ in range(2):
            failed = k.wait([service.run("summarization-agent", "Summarize missing.txt")], timeout=20)[0]
            assert "no such file: missing.txt" in failed.output["answer"]
        third = k.wait([service.run("summarization-agent", "Summarize missing.txt")], timeout=20)[0]
        checkpoint = third.context.intermediate_results["checkpoint"]
        assert [a["tool"] for a in checkpoint["actions"]] == ["write_file"]
        assert "not repeating read_file" in checkpoint["reasoning"]
        runs = service.memory.runs("summarization-agent")
        assert [r.outcome for r in runs] == ["Completed"] * 5
        assert service.memory.runs(search="missing.txt")[0].goal == "Summarize missing.txt"
        assert ("read_file", 4, 2, "no such file: missing.txt (in workspace " + str(here / "workspace") + ")") \
            in service.memory.tool_summary("summarization-agent")


def gated_service(kernel: Kernel, agent_dir: Path, gate: threading.Event, started: threading.Event):
    def slow_step(ctx: ProcessContext) -> str:
        started.set()
        while not gate.is_set():
            ctx.sleep(0.01)
        return "step done"

    kernel.registry.register(make_tool(slow_step, name="slow_step", touches=()))  # confinable: it touches nothing
    agent_dir.mkdir(exist_ok=True)
    (agent_dir / "waiter.md").write_text("---\nname: waiter\ndescription: waits on a slow step\n"
                                         "tools: slow-step, Read\n---\nWait for the step.\n")
    return attach(kernel, Config(), directories=[(agent_dir, AGENT)])


@pytest.fixture
def registry():
    import llmunix.tools.builtin  # noqa: F401 - the built-in tools, registered on import

    r = ToolRegistry()
    for t in REGISTRY:
        r.register(t)
    return r


def test_pausing_an_agent_mid_run_pauses_its_tool_and_resume_finishes_it(tmp_path, registry):
    gate, started = threading.Event(), threading.Event()
    with Kernel(tmp_path / "home", monitor=False, kill_grace=0.3, registry=registry) as k:
        service = gated_service(k, tmp_path / "agents", gate, started)
        pid = service.run("waiter", "do the slow step")
        assert started.wait(10)
        child = next(i for i in k.ps() if i.parent == pid)
        wait_phase(k, pid, "waiting")  # it waits for its tool without holding a slot
        agent = k.info(pid)
        assert (agent.state, child.name) == ("Acting", "slow_step")
        shown = plain_text(ps_tree(agent))
        assert f"State: Acting (waiting for {child.process_id})" in shown
        assert "Reasoning: Analysis phase 1/2: run slow_step on the goal" in shown
        assert "◐ 1. slow_step {} (running)" in shown and "Tools Used: [slow_step]" in shown
        k.pause(pid)
        wait_phase(k, pid, "paused")
        wait_phase(k, child.pid, "paused")
        gate.set()  # the step may finish only once resumed: it is paused at a control point
        assert not k.wait([child.pid], timeout=0.2)[0].is_done
        k.resume(pid)
        info = k.wait([pid], timeout=10)[0]
        assert info.state == "Completed", info.error
        assert k.info(child.pid).output == "step done"


def test_killing_an_agent_mid_run_cancels_its_tool_and_is_remembered(tmp_path, registry):
    gate, started = threading.Event(), threading.Event()
    with Kernel(tmp_path / "home", monitor=False, kill_grace=0.3, registry=registry) as k:
        service = gated_service(k, tmp_path / "agents", gate, started)
        pid = service.run("waiter", "do the slow step")
        assert started.wait(10)
        child = next(i for i in k.ps() if i.parent == pid)
        k.kill(pid)
        agent, step = k.wait([pid, child.pid], timeout=10)
        assert (agent.state, step.state) == ("Cancelled", "Cancelled")
        assert service.memory.runs("waiter")[-1].outcome == "Cancelled"


def test_agent_commands_through_the_shell(here, kernel, capsys):
    sh = Session(kernel, capsys)
    assert sh.ok(f'agent run summarization-agent --goal "{SUMMARY_GOAL}" --priority high').strip() == "001"
    sh.ok("wait 1 --timeout 20")
    assert kernel.info(1).priority.label == "high"
    long = sh.ok("ps -l 1")
    for line in ("Agent: summarization-agent", "Reasoning: Answer phase 3/3", "Tools Used: [read_file, write_file]",
                 "✓ 1. read_file", "Learning: remembered this run", "Goal: Summarize samples/scheduling.md"):
        assert line in long, line
    listing = sh.ok("agents")
    assert listing.splitlines()[0].split() == ["AGENT", "TOOLS", "SOURCE"]
    assert ["summarization-agent", "read_file,write_file", "builtin"] in [x.split() for x in listing.splitlines()]
    data = json.loads(sh.ok("agents --json"))
    assert {a["name"] for a in data} == {"research-agent", "summarization-agent"}
    assert data[1]["tools"] == [{"granted": "Read", "tool": "read_file"}, {"granted": "Write", "tool": "write_file"}]
    shown = sh.ok("agent show summarization-agent")
    assert "Read → read_file" in shown and "Memory: 1 run(s), 1 completed" in shown
    memory = sh.ok("memory")
    assert memory.splitlines()[0].split()[:4] == ["TIME", "AGENT", "PID", "OUTCOME"]
    assert "summarization-agent  001  Completed" in memory
    assert sh.ok("memory search scheduling SENTENCES").count("\n") == 2
    assert len(sh.ok("memory search nothing-like-this").strip().splitlines()) == 1  # the header alone
    assert json.loads(sh.ok("memory --json"))[0]["tools"] == ["read_file", "write_file"]
    assert "read_file" in sh.ok("memory --tools")
    assert "Tool read_file" in sh.ok("tools Read") and "Tool read_file" in sh.ok("tools read-file")


def test_ps_l_of_an_earlier_sessions_agent_and_workflow_keeps_their_last_checkpoint(here, capsys):
    from llmunix.workflows.spec import spec_from_data

    home = here / "home"
    with Kernel(home, monitor=False, kill_grace=0.3) as k:
        agent = attach(k, Config()).run("summarization-agent", SUMMARY_GOAL)
        flow = k.workflow_run(spec_from_data({"name": "two", "steps": [
            {"id": "a", "tool": "echo", "with": {"text": "one"}},
            {"id": "b", "tool": "echo", "with": {"text": "two"}, "needs": ["a"]}]}), {})
        assert [i.state for i in k.wait([agent, flow], timeout=20)] == ["Completed", "Completed"]
    with Kernel(home, monitor=False, kill_grace=0.3) as k:
        long = Session(k, capsys).ok(f"ps -l {agent}")
        for line in ("Reasoning: Answer phase 3/3", "Tools Used: [read_file, write_file]", "Actions: 2",
                     "✓ 1. read_file"):
            assert line in long, line
        steps = k.info(flow).context.intermediate_results["checkpoint"]["steps"]  # folded from its deltas
        assert {s: st["state"] for s, st in steps.items()} == {"a": "completed", "b": "completed"}
        assert all(not i.context.intermediate_results for i in k.ps(all=True))  # the bulk listing stays slim


def test_gc_ages_out_agent_memory_and_messages_left_to_finished_processes(here):
    import sqlite3

    home = here / "home"

    def rows(table: str) -> list:
        with sqlite3.connect(home / "llmunix.db") as db:
            return db.execute(f"SELECT * FROM {table}").fetchall()

    with Kernel(home, monitor=False, kill_grace=0.3) as k:
        interrupted = k.spawn(lambda ctx: ctx.sleep(30))
        k.send(interrupted, "for after recover", persistent=True)
        agent = attach(k, Config()).run("summarization-agent", SUMMARY_GOAL)
        assert k.wait([agent], timeout=20)[0].state == "Completed"
    with sqlite3.connect(home / "llmunix.db") as db:  # as a crash can leave it: mail to a finished process
        db.execute("INSERT INTO messages (id, recipient, type, body, sent) VALUES ('m-left', ?, 'text', '\"x\"', 0)",
                   (agent,))
    with Kernel(home, monitor=False, kill_grace=0.3) as k:
        k.gc(days=1)  # nothing is a day old yet
        k.flush()
        assert (len(rows("agent_runs")), len(rows("agent_tool_uses")), len(rows("messages"))) == (1, 2, 2)
        k.gc(days=0)
        k.flush()
        assert (len(rows("agent_runs")), len(rows("agent_tool_uses"))) == (0, 0)
        assert [r[1] for r in rows("messages")] == [interrupted]  # an interrupted process keeps its mail


@pytest.mark.parametrize(("line", "fragment"), [
    ("agent run nobody --goal x", "unknown agent 'nobody'; `agents` lists them"),
    ("agent run sumarization-agent --goal x", "did you mean 'summarization-agent'?"),
    ("agent run summarization-agent", "the following arguments are required: -g/--goal"),
    ("agent run summarization-agent --goal x --backend gpt", "unknown backend 'gpt'; use one of: offline, openai"),
    ("agent run summarization-agent --goal '  '", "needs a goal"),
    ("agent run summarization-agent --goal x --max-iterations 0", "--max-iterations must be at least 1"),
    ("agent show nobody", "unknown agent 'nobody'"),
    ("memory forget", "use `memory search TEXT`"),
    ("memory search", "memory search needs TEXT"),
])
def test_bad_agent_input_is_one_line(here, kernel, capsys, line, fragment):
    sh = Session(kernel, capsys)
    assert fragment in sh.bad(line)


def test_a_malformed_definition_is_reported_by_agents_and_the_others_still_load(here, kernel, capsys):
    (here / "agents").mkdir()
    (here / "agents" / "broken.md").write_text("---\nname: broken\nno colon here\n---\n")
    (here / "agents" / "Helper.md").write_text("# Component: HelperAgent\n\n- **Name**: HelperAgent\n"
                                               "- **Type**: AGENT\n- **Claude Tools**: Read, WebFetch, Task\n")
    sh = Session(kernel, capsys)
    out, err, failed = sh.run("agents")
    assert not failed and "HelperAgent" in out
    assert f"could not load {here / 'agents' / 'broken.md'}:3: expected 'key: value'" in err
    assert "read_file,web_fetch,Task?" in out  # Task: granted but no such tool here
    assert [d for d, _k in default_directories(None, here)][-2:] == [here / "agents", here / "tools"]


def test_agent_run_from_llmunix_c_prints_the_pid_and_the_run_is_remembered(tmp_path):
    env = {**os.environ, "LLMUNIX_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    r = subprocess.run([LLMUNIX, "-c", "agent samples", "-c", f'agent run summarization-agent --goal "{SUMMARY_GOAL}"',
                        "-c", "wait", "-c", "ps -a", "-c", "memory"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == [str(tmp_path / "workspace" / "samples" / "agents.md"),
                         str(tmp_path / "workspace" / "samples" / "scheduling.md"), "001"]
    assert any(line.split()[:3] == ["001", "summarization-agent", "Completed"] for line in lines)
    assert (tmp_path / "workspace" / "summary.md").exists()
    assert any("summarization-agent  001  Completed" in line for line in lines)
    bad = subprocess.run([LLMUNIX, "-c", "agent run nobody --goal x"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip() == "agent: unknown agent 'nobody'; `agents` lists them"


def test_an_interrupted_agent_is_recovered_from_its_last_checkpoint(tmp_path, registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "notes.txt").write_text("Checkpoints let interrupted work continue later on.\n")
    gate, started = threading.Event(), threading.Event()
    k = Kernel(tmp_path / "home", monitor=False, kill_grace=0.3, registry=registry)
    service = gated_service(k, tmp_path / "agents", gate, started)
    pid = service.run("waiter", "Read notes.txt, then do the slow step")
    assert started.wait(10)
    k.shutdown()  # llmunix stops while the agent is Acting: it is interrupted, not cancelled
    gate.set()
    with Kernel(tmp_path / "home", monitor=False, kill_grace=0.3, registry=registry) as k2:
        again = attach(k2, Config(), directories=[(tmp_path / "agents", AGENT)])
        assert pid in [i.pid for i in k2.recover()]
        info = k2.wait([pid], timeout=10)[0]
        assert info.state == "Completed", info.error
        steps = [(i.name, i.state) for i in k2.ps(all=True) if i.parent == pid]
        assert steps[0] == ("read_file", "Completed") and steps[-1] == ("slow_step", "Completed")
        assert [n for n, _s in steps].count("read_file") == 1  # iteration 1 was not done again
        assert [r.outcome for r in again.memory.runs("waiter")] == ["Completed"]  # remembered once


def test_agent_names_complete_at_the_prompt_and_the_run_is_announced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES / "samples", tmp_path / "workspace" / "samples")
    child = spawn_prompt(tmp_path / "home")
    try:
        child.send("agent run summ\t")
        child.expect("arization-agent")  # completed after what was typed
        child.send(' --goal "Summarize samples/agents.md"\r')
        child.expect(r"001\r\n")
        child.expect(r"\[001\][^\n]*summarization-agent[^\n]*completed")
        child.sendline("memory")
        child.expect(r"summarization-agent[^\n]*001[^\n]*Completed")
        child.expect(PROMPT)
    finally:
        close_prompt(child)


def test_a_workflow_step_can_be_an_agent(here, kernel, capsys):
    spec = here / "digest.yaml"
    spec.write_text("name: digest\nsteps:\n"
                    "  - id: summarise\n    agent: summarization-agent\n"
                    "    goal: \"Summarize samples/agents.md into digest.md in 2 sentences\"\n"
                    "  - id: announce\n    tool: echo\n    needs: [summarise]\n"
                    "    with: {text: \"{{ steps.summarise.output.answer }}\"}\n")
    sh = Session(kernel, capsys)
    assert "Starting workflow: digest (PID: 001)" in sh.ok(f"workflow run {spec}")
    pid = 1
    info = kernel.wait([pid], timeout=20)[0]
    assert info.state == "Completed", info.error
    agent = next(i for i in kernel.ps(all=True) if i.kind == "agent")
    assert (agent.parent, agent.name, agent.state) == (pid, "digest/summarise", "Completed")
    assert (here / "workspace" / "digest.md").exists()
    announce = next(i for i in kernel.ps(all=True) if i.name == "digest/announce")
    assert announce.output.startswith("# Summary of samples/agents.md")


def test_an_agent_can_delegate_to_another_but_never_back_to_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "boss.md").write_text("---\nname: boss\ndescription: delegates\ntools: helper\n---\n")
    (tmp_path / "agents" / "helper.md").write_text("---\nname: helper\ndescription: helps\ntools: Boss\n---\n")
    with Kernel(tmp_path / "home", monitor=False, kill_grace=0.3) as k:
        service = attach(k, Config(), directories=[(tmp_path / "agents", AGENT)])
        boss = k.wait([service.run("boss", "plan the week")], timeout=20)[0]
        assert boss.state == "Completed", boss.error
        helper = next(i for i in k.ps(all=True) if i.parent == boss.pid)
        assert (helper.name, helper.kind, helper.state) == ("helper", "agent", "Completed")
        assert helper.context.input_parameters["goal"] == "plan the week"  # the offline planner passes the goal on
        refused = helper.context.intermediate_results["checkpoint"]["actions"][0]
        assert refused["tool"] == "boss" and refused["status"] == "failed"
        assert "an agent cannot call itself" in helper.output["answer"]


def test_offline_goal_reading_and_focused_findings():
    from llmunix.agents.offline import content_words, focused_sentences

    assert content_words("Research priority aging and write the report") == ["priority", "aging"]
    text = ("Schedulers choose which process runs next. Aging raises the priority of waiting work. "
            "Round robin shares a level fairly among its peers. Admission keeps the machine out of swap.")
    assert focused_sentences(text, ["aging"], 3) == ["Aging raises the priority of waiting work."]
    assert len(focused_sentences(text, ["nothing"], 2)) == 2  # no sentence has a term: all compete
