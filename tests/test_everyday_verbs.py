"""Everyday verbs on many processes at once (`kill|pause|resume|priority` with PID lists, ranges,
`--all` and filters) and `ps` that filters, sorts, keeps the last N and draws the tree: the pure
selection rules, the commands through the shell, and the real executable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading

import pytest
from conftest import LLMUNIX, PROMPT, Session, close_prompt, spawn_prompt, wait_phase
from test_shell_commands import gate_tool

from commands import views
from commands.selection import Filters, arrange, check_state, parse_pid_specs, single_pids, tree_order
from llmunix import ProcessContext
from llmunix.models import LlmunixError, Phase, PsRow


def llmunix(*commands: str, home, keep_going: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    args = [LLMUNIX, *(["--keep-going"] if keep_going else [])]
    for c in commands:
        args += ["-c", c]
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


# ---------------------------------------------------------------------- the selection rules


def test_pid_words_take_numbers_padded_numbers_and_inclusive_ranges_without_repeats():
    assert parse_pid_specs(["3", "005", "7-9", "8", "009-010"]) == [3, 5, 7, 8, 9, 10]
    assert single_pids(["3", "005", "7-9", "8", "009-010"]) == {3, 5, 8}
    for bad, fragment in (("x", "bad PID 'x'"), ("0", "start at 001"), ("9-3", "lower PID first, e.g. 003-009"),
                          ("1-", "bad PID"), ("-4", "bad PID"), ("1-9999999", "too wide"),
                          ("99999999999999999999999", "no PID is that large")):
        with pytest.raises(LlmunixError, match=fragment):
            parse_pid_specs([bad])


def row(pid: int, name: str = "sleep", state: str = "Running", priority: str = "normal", runtime: int = 0,
        cpu: float | None = None, mem: float | None = None) -> PsRow:
    phase = Phase.DONE if state in ("Completed", "Failed") else Phase.RUNNING
    return PsRow(pid, name, state, priority, runtime, mem, cpu, None, 0, state, phase)


def test_sorting_is_ascending_or_reversed_with_ties_in_pid_order_and_last_keeps_the_newest():
    rows = [row(1, cpu=5.0, priority="low"), row(2, cpu=None, priority="critical"), row(3, cpu=50.0),
            row(4, cpu=5.0, priority="critical", state="Completed"), row(5, cpu=0.5, runtime=9)]
    pids = lambda rs: [r.pid for r in rs]  # noqa: E731
    assert pids(arrange(rows, sort="cpu")) == [2, 5, 1, 4, 3]  # unmeasured first, ties by PID
    assert pids(arrange(rows, sort="cpu", reverse=True)) == [3, 1, 4, 5, 2]
    assert pids(arrange(rows, sort="priority", reverse=True)) == [2, 4, 3, 5, 1]
    assert pids(arrange(rows, sort="state")) == [4, 1, 2, 3, 5]
    assert pids(arrange(rows, sort="runtime", reverse=True)) == [5, 1, 2, 3, 4]
    assert pids(arrange(rows, last=2)) == [4, 5] and pids(arrange(rows, last=2, sort="cpu", reverse=True)) == [4, 5]
    assert pids(arrange(rows, reverse=True)) == [5, 4, 3, 2, 1] and arrange(rows) == rows


def test_filters_are_case_insensitive_globs_and_states_are_checked():
    rows = [row(1, "nightly-cleanup"), row(2, "Nightly-Report", state="Completed"), row(3, "fetch")]
    assert [r.pid for r in Filters(name="nightly-*").apply(rows)] == [1, 2]
    assert [r.pid for r in Filters(name="NIGHTLY-*", state="running").apply(rows)] == [1]
    assert [r.pid for r in Filters(name="fetch").apply(rows)] == [3]  # no wildcard: the whole name
    assert [r.pid for r in Filters(state="done").apply(rows)] == [2]  # phases too
    assert check_state("Paused", list) == "paused" and check_state("thinking", list) == "thinking"
    assert check_state("Reviewing", lambda: ["Reviewing"]) == "reviewing"  # a state a tool set itself
    with pytest.raises(LlmunixError, match=r"unknown state 'bogus'; use one of: pending, running, paused"):
        check_state("bogus", lambda: ["Reviewing"])


def test_the_tree_puts_children_under_their_parents_with_guides(make_kernel):
    k = make_kernel()

    def first(ctx: ProcessContext) -> None:
        ctx.wait([ctx.spawn("echo", text="grandchild")])

    def parent(ctx: ProcessContext) -> None:  # one at a time, so the PIDs are known
        ctx.wait([ctx.spawn(first, name="first")])
        ctx.wait([ctx.spawn("echo", text="second", name="second")])

    k.wait([k.spawn(parent, name="parent")])
    k.wait([k.spawn("echo", text="lone")])
    entries = tree_order(k.ps(all=True))
    assert [(i.pid, i.name, guide, p) for i, guide, p in entries] == [
        (1, "parent", "", None), (2, "first", "├─ ", 1), (3, "echo", "│  └─ ", 2), (4, "second", "└─ ", 1),
        (5, "echo", "", None)]
    plain = views.ps_tree_plain(entries).splitlines()
    assert [line.split()[:3] for line in plain] == [["PID", "PPID", "TOOL"], ["001", "-", "parent"],
                                                    ["002", "001", "first"], ["003", "002", "echo"],
                                                    ["004", "001", "second"], ["005", "-", "echo"]]


# ---------------------------------------------------------------------- through the shell


@pytest.fixture
def three(sh, make_gate):
    """Three live processes held by a gate: 001 `alpha` (sleep), 002 `beta` (the gate tool), 003
    `alphabet` (the gate tool, low)."""
    gate = threading.Event()
    k = sh.kernel
    pids = [k.spawn("sleep", seconds=60, name="alpha"), k.spawn(gate_tool(gate), name="beta"),
            k.spawn(gate_tool(gate), name="alphabet", priority="low")]
    for pid in pids:
        wait_phase(k, pid, "running")
    yield sh, pids
    gate.set()


def test_kill_several_pids_and_a_range_reports_each_and_fails_for_the_bad_ones(three):
    sh, pids = three
    out, err, failed = sh.run("kill 1-2 7 3")
    assert failed
    assert out.splitlines() == ["stopping 001 alpha", "stopping 002 beta", "stopping 003 alphabet"]
    assert err.strip().splitlines() == ["kill: no process 007; `ps -a` lists them"]
    assert all(i.state == "Cancelled" for i in sh.kernel.wait(pids, timeout=10))


def test_pause_and_resume_by_glob_all_and_state(three):
    sh, pids = three
    assert sh.ok("pause --name 'alpha*'").splitlines() == ["pausing 001 alpha", "pausing 003 alphabet"]
    for pid in (1, 3):
        wait_phase(sh.kernel, pid, "paused")
    assert sh.kernel.info(2).phase == "running"
    assert sh.ok("pause --all").splitlines() == ["pausing 002 beta"]  # the paused ones are left alone
    wait_phase(sh.kernel, 2, "paused")
    assert sh.ok("resume --all --name beta").splitlines() == ["resumed 002 beta"]
    assert sh.ok("resume --state paused").splitlines() == ["resumed 001 alpha", "resumed 003 alphabet"]
    assert sh.bad("resume --all") == "resume: no live process to resume (see `ps`)"
    assert sh.bad("pause --tool nosuch") == "pause: no live process to pause matching --tool 'nosuch' (see `ps`)"


def test_priority_takes_pids_ranges_and_filters_before_its_level(three):
    sh, pids = three
    assert sh.ok("priority 1-2 high").splitlines() == ["001 alpha priority high", "002 beta priority high"]
    assert sh.ok("priority --tool sleep critical").splitlines() == ["001 alpha priority critical"]
    assert [sh.kernel.info(p).priority.label for p in pids] == ["critical", "high", "low"]
    assert "unknown priority 'urgent'" in sh.bad("priority 3 urgent")
    assert sh.bad("priority high").startswith("priority: say which processes: PIDs (003), ranges (3-7), --all")


def test_json_gives_each_outcome_and_the_command_still_fails_for_a_bad_one(three):
    sh, _pids = three
    out, err, failed = sh.run("pause 2 9 --json")
    records = json.loads(out)
    assert failed and err.strip() == "pause: 1 of 2 failed: 009"
    assert [(r["process_id"], r["ok"], r["name"], r["action"]) for r in records] == [
        ("002", True, "beta", "pause"), ("009", False, None, "pause")]
    assert records[0]["result"] in ("pausing 002 beta", "paused 002 beta") and "no process 009" in records[1]["error"]


def test_bad_selections_are_one_line_errors(three):
    sh, _pids = three
    assert sh.bad("kill").startswith("kill: say which processes")
    assert sh.bad("kill 5-2") == "kill: bad PID range '5-2'; write the lower PID first, e.g. 002-005"
    assert sh.bad("kill --state bogus").startswith("kill: unknown state 'bogus'; use one of: pending, running")
    assert sh.bad("kill 99999999999999999999999") == ("kill: no process 99999999999999999999999: "
                                                      "no PID is that large; `ps -a` lists them")


def test_killing_a_workflow_with_its_steps_in_one_range_is_not_an_error(sh, wait_until):
    sh.ok("workflow run fan-out --input seconds=30")
    steps = wait_until(lambda: [i.pid for i in sh.kernel.ps() if i.parent == 1 and i.phase == "running"][2:] and
                       [i.pid for i in sh.kernel.ps() if i.parent == 1], message="three steps running")
    out = sh.ok(f"kill 1-{max(steps)}")
    assert out.splitlines()[0] == "stopping 001 fan-out"
    assert all(line.endswith("(with 001)") for line in out.splitlines()[1:]), out
    assert all(i.is_done for i in sh.kernel.wait([1, *steps], timeout=10))


def test_completion_offers_levels_after_pids_and_known_states(three):
    sh, _pids = three
    cmdset = next(cs for cs in sh.shell._installed_command_sets if hasattr(cs, "pid_or_level_choices"))
    words = [c.text for c in cmdset.pid_or_level_choices()]
    assert {"001", "002", "003", "critical", "idle"} <= set(words)
    from commands.selection import state_choices

    assert {"running", "paused", "failed", "preempted", "waiting"} <= {c.text for c in state_choices(cmdset)}


def test_ps_filters_sorts_keeps_the_last_and_draws_the_tree_on_a_terminal(kernel, capsys):
    sh = Session(kernel, capsys)
    for n in range(3):
        sh.ok(f"run echo text={n} --name job-{n}")
    sh.ok("run fail --name other")
    kernel.wait(range(1, 5), timeout=20)
    assert [r.split()[0] for r in sh.ok("ps -a --name 'JOB-*'").splitlines()[1:]] == ["001", "002", "003"]
    assert [r.split()[0] for r in sh.ok("ps -a --tool fail").splitlines()[1:]] == ["004"]
    assert [r.split()[0] for r in sh.ok("ps -a -n 2 -r").splitlines()[1:]] == ["004", "003"]
    assert [r.split()[0] for r in sh.ok("ps -a --sort state").splitlines()[1:]] == ["001", "002", "003", "004"]
    assert [r.split()[0] for r in sh.ok("ps -a --sort state -r").splitlines()[1:]] == ["004", "001", "002", "003"]
    assert json.loads(sh.ok("ps -a --tool 'ech?' --json -n 1"))[0]["name"] == "job-2"
    assert sh.bad("ps --state bogus").startswith("ps: unknown state 'bogus'; use one of: pending, running,")
    assert "invalid choice" in sh.bad("ps --sort speed")

    def parent(ctx: ProcessContext) -> None:
        ctx.wait([ctx.spawn("echo", text="child", name="kid")])

    kernel.wait([kernel.spawn(parent, name="mother")])
    tty = Session(kernel, capsys, tty=True)
    out = tty.ok("ps -a --tree")
    assert "mother" in out and re.search(r"└─ (\x1b\[0m)?kid", out)  # rich: the guide dimmed, then the name


# ---------------------------------------------------------------------- the real executable


def test_the_verbs_from_the_real_executable_report_each_process_and_exit_non_zero_on_a_bad_one(tmp_path):
    r = llmunix("run sleep seconds=30 --name a", "run sleep seconds=30 --name b", "run echo text=x",
                "run sleep seconds=30 --name c --priority low", "wait 3",
                "pause 1-2", "priority --name '[ab]' idle", "ps --sort priority -r",
                "resume --all", "kill 1-4 3", "kill 5-9", "ps -a --json", home=tmp_path, keep_going=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [  # 003 named on its own: an error; in a range it is left out
        "kill: cannot kill process 003: it has already finished (Completed)",
        "kill: no live process to kill among 5-9 (see `ps`)"]
    out = r.stdout.splitlines()
    assert "pausing 001 a" in out and "pausing 002 b" in out
    assert "001 a priority idle" in out and "002 b priority idle" in out
    assert "resumed 001 a" in out and "resumed 002 b" in out
    assert {line.split()[1] for line in out if line.startswith(("stopping ", "killed "))} == {"001", "002", "004"}
    start = out.index(next(line for line in out if line.startswith("PID ")))
    assert [(r.split()[0], r.split()[3]) for r in out[start + 1:start + 4]] == [("004", "low"), ("001", "idle"),
                                                                              ("002", "idle")]
    records = json.loads(r.stdout[r.stdout.index("[\n"):])
    assert [(x["name"], x["state"]) for x in records] == [("a", "cancelled"), ("b", "cancelled"),
                                                         ("echo", "completed"), ("c", "cancelled")]


def test_ps_from_the_real_executable_filters_sorts_and_shows_a_workflows_steps_as_a_tree(tmp_path):
    r = llmunix("workflow run fan-out --input seconds=0.1 --wait", "run fail --name broken", "wait",
                "ps -a --tree", "ps -a --tool sleep --sort pid -r -n 2", "ps --state bogus",
                home=tmp_path, keep_going=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("ps: unknown state 'bogus'; use one of:")
    out = r.stdout.splitlines()
    start = out.index(next(line for line in out if line.startswith("PID  PPID")))
    tree = [line.split()[:4] for line in out[start + 1:start + 7]]
    assert tree == [["001", "-", "fan-out", "Completed"], ["002", "001", "fan-out/left", "Completed"],
                    ["003", "001", "fan-out/middle", "Completed"], ["004", "001", "fan-out/right", "Completed"],
                    ["005", "001", "fan-out/join", "Completed"], ["006", "-", "broken", "Failed"]]
    assert [line.split()[0] for line in out[start + 8:start + 10]] == ["004", "003"]


def test_tab_completes_a_level_after_pids_and_states_at_the_real_prompt(tmp_path):
    child = spawn_prompt(tmp_path)
    try:
        child.sendline("run sleep seconds=60")
        child.expect(PROMPT)
        # What the command does proves the completion (`hi` or `runn` alone would be refused);
        # the echo of the completed word may be drawn in pieces between colour codes.
        child.send("priority 1 hi\t")
        child.expect("gh")  # the completed rest of the word
        child.send("\r")
        child.expect(r"001 sleep priority high")
        child.expect(PROMPT)
        child.send("pause --state runn\t")
        child.expect("ing")
        child.send("\r")
        child.expect(r"paus(?:ed|ing) 001 sleep")
        child.expect(PROMPT)
    finally:
        close_prompt(child)
