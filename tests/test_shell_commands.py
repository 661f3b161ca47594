"""Shell commands through the cmd2 app, with captured output (no terminal)."""

from __future__ import annotations

import json
import re
import threading

import pytest
from conftest import Session, wait_phase

from llmunix import ProcessContext


def gate_tool(gate: threading.Event):
    def gated(ctx: ProcessContext) -> str:
        while not gate.is_set():
            ctx.sleep(0.01)
        return "opened"

    return gated


def test_run_prints_the_new_pid_and_wait_reports_completion(sh):
    assert sh.ok("run echo text=hello").strip() == "001"
    out = sh.ok("wait 1 --timeout 10")
    assert "[001] echo completed" in out
    info = sh.kernel.info(1)
    assert info.state == "Completed" and info.output == "hello"


def test_ps_plain_output_is_whitespace_separated_with_a_header(sh):
    gate = threading.Event()
    pid = sh.kernel.spawn(gate_tool(gate), name="my job")
    out = sh.ok("ps")
    lines = out.strip().splitlines()
    assert lines[0].split() == ["PID", "TOOL", "STATE", "PRIORITY", "RUNTIME", "MEMORY", "CPU%", "PROGRESS"]
    fields = lines[1].split()
    assert fields[0] == f"{pid:03d}" and fields[1] == "my_job" and fields[3] == "normal"
    assert not any(ch in out for ch in "│─┃━╭")
    gate.set()
    sh.kernel.wait([pid], timeout=10)
    assert len(sh.ok("ps").strip().splitlines()) == 1  # finished ones need -a
    assert f"{pid:03d}" in sh.ok("ps -a")


def test_ps_state_filter_and_json_carry_the_seed_structure(sh):
    sh.ok("run fail message=boom")
    sh.ok("run echo text=x")
    sh.run("wait --timeout 10")
    failed = sh.ok("ps --state failed").strip().splitlines()
    assert len(failed) == 2 and "Failed" in failed[1]
    records = json.loads(sh.ok("ps -a --json"))
    assert [r["process_id"] for r in records] == ["001", "002"]
    rec = records[0]
    for key in ("process_id", "tool_name", "state", "progress", "resources", "context", "history"):
        assert key in rec
    assert set(rec["progress"]) >= {"current_step", "total_steps", "percentage", "eta"}
    assert set(rec["resources"]) >= {"memory_mb", "cpu_percent", "io_operations"}
    assert set(rec["context"]) >= {"working_directory", "input_parameters", "intermediate_results"}
    assert rec["state"] == "failed" and rec["error"] == "boom" and rec["exit_code"] == 1
    assert [h["event"] for h in rec["history"]][-1] == "failed"


def test_ps_long_shows_the_tree(sh):
    sh.ok("run sleep seconds=0.05")
    sh.ok("wait --timeout 10")
    out = sh.ok("ps -l 1")
    assert out.startswith("Process 001 - sleep")
    for label in ("State: Completed", "Priority: Normal", "Resources:", "Progress: 100% complete",
                  "Runtime:", "Context:", 'Input: {"seconds": 0.05}', "Output:", "History:"):
        assert label in out


def test_ps_table_on_a_terminal_is_rich(kernel, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)  # states are coloured unless the user opts out
    sh = Session(kernel, capsys, tty=True)
    sh.ok("run echo text=x")
    sh.ok("wait --timeout 10")
    out = sh.ok("ps -a")
    plain = Session(kernel, capsys).ok("ps -a")  # not a terminal: plain text for pipes
    # rich's table: a bold header and a styled state, which the plain listing never has
    assert "\x1b[1mPID\x1b[0m" in out and re.search(r"\x1b\[[\d;]+mCompleted\x1b\[0m", out), repr(out)
    assert "\x1b" not in plain
    table = re.sub(r"\x1b\[[\d;]*m", "", out)
    assert table.split() == plain.split() and table != plain  # the same cells, laid out by rich


def test_pause_resume_priority_and_kill_report_what_they_did(sh):
    gate = threading.Event()
    pid = sh.kernel.spawn(gate_tool(gate))
    p = f"{pid:03d}"
    assert p in sh.ok(f"pause {p}")
    wait_phase(sh.kernel, pid, "paused")
    assert "Paused" in sh.ok("ps")
    assert sh.ok(f"resume {p}").startswith(f"resumed {p}")
    assert sh.ok(f"priority {p} high").strip().endswith("priority high")
    assert sh.kernel.info(pid).priority.label == "high"
    assert p in sh.ok(f"kill {p}")
    [info] = sh.kernel.wait([pid], timeout=10)
    assert info.state == "Cancelled" and info.error == "killed by user"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("kill 999", "no process 999"),
        ("pause abc", "bad PID 'abc'"),
        ("run nosuchtool", "unknown tool 'nosuchtool'"),
        ("run sleeep", "did you mean 'sleep'"),
        ("run sleep seconds=abc", "parameter 'seconds'"),
        ("run echo", "needs parameter 'text'"),
        ("run echo text=a colour=red", "has no parameter 'colour'"),
        ("run echo text", "write tool parameters as key=value"),
        ("run echo text=a --priority urgent", "unknown priority 'urgent'"),
        ("run echo text=a --after 77", "no process 077"),
        ("wait 5 --timeout soon", "bad duration 'soon'"),
        ("ps --bogus", "unrecognized arguments: --bogus"),
        ("frobnicate", "frobnicate"),
    ],
)
def test_bad_input_gets_one_line_and_fails(sh, line, expected):
    assert expected in sh.bad(line)


def test_illegal_transitions_fail_with_one_line_and_others_are_unaffected(sh):
    gate = threading.Event()
    live = sh.kernel.spawn(gate_tool(gate))
    sh.ok("run echo text=done")
    sh.ok("wait 2 --timeout 10")
    assert "already finished (Completed)" in sh.bad("pause 2")
    assert "already finished" in sh.bad("priority 2 high")
    assert "not paused" in sh.bad(f"resume {live}")
    assert "unknown priority" in sh.bad(f"priority {live} urgent")
    assert sh.kernel.info(live).phase == "running"
    gate.set()
    assert sh.kernel.wait([live], timeout=10)[0].state == "Completed"


def test_help_flag_is_not_a_failure(sh):
    out = sh.ok("kill -h")
    assert "usage" in out.lower() and "kill 003" in out


def test_wait_fails_when_a_process_fails_or_time_runs_out(sh):
    sh.ok("run fail message=nope")
    assert "did not complete" in sh.bad("wait 1 --timeout 10")
    gate = threading.Event()
    pid = sh.kernel.spawn(gate_tool(gate))
    assert "timed out" in sh.bad(f"wait {pid} --timeout 0.1")
    gate.set()


def test_tools_lists_builtins_and_shows_parameters(sh):
    out = sh.ok("tools")
    for name in ("echo", "fail", "shell", "sleep", "spin"):
        assert any(line.split()[0] == name for line in out.splitlines()[1:])
    detail = sh.ok("tools sleep")
    assert "seconds: float = 1.0" in detail and "Example: run sleep" in detail
    data = json.loads(sh.ok("tools echo --json"))
    assert data[0]["parameters"][0]["name"] == "text" and data[0]["parameters"][0]["required"]
    assert "unknown tool" in sh.bad("tools nope")


def test_set_max_running_applies_to_the_kernel(sh):
    sh.ok("set max_running 3")
    assert sh.kernel.max_running == 3
    sh.bad("set max_running 0")
    assert sh.kernel.max_running == 3


def test_run_after_waits_for_the_dependency(sh):
    gate = threading.Event()
    first = sh.kernel.spawn(gate_tool(gate))
    sh.ok(f"run echo text=then --after {first}")
    info = sh.kernel.info(first + 1)
    assert info.phase == "waiting" and f"{first:03d}" in info.detail
    gate.set()
    assert sh.kernel.wait([first + 1], timeout=10)[0].state == "Completed"


def test_completion_offers_live_pids_tools_and_levels(sh):
    gate = threading.Event()
    pid = sh.kernel.spawn(gate_tool(gate))
    cmdset = next(cs for cs in sh.shell._installed_command_sets if hasattr(cs, "live_pid_choices"))
    assert f"{pid:03d}" in [c.text for c in cmdset.live_pid_choices()]
    assert "sleep" in [c.text for c in cmdset.tool_choices()]
    assert [c.text for c in cmdset.priority_choices()] == ["critical", "high", "normal", "low", "idle"]
    gate.set()


def test_quoted_values_with_spaces_reach_the_tool_whole(sh):
    sh.ok("run echo text='hello world' --name 'my job'")
    sh.ok('run echo "text=a; b | c"')
    sh.ok("wait --timeout 10")
    first, second = sh.kernel.ps(all=True)
    assert (first.output, first.name) == ("hello world", "my job")
    assert second.output == "a; b | c"


def test_log_shows_a_shell_tools_output(sh):
    sh.ok("run shell 'cmd=echo one; echo two; echo three'")
    sh.ok("wait --timeout 20")
    assert sh.ok("log 1").splitlines() == ["one", "two", "three"]
    assert sh.ok("log 1 --tail 1").splitlines() == ["three"]
    assert "no process 009" in sh.bad("log 9")


def test_the_family_table_names_every_command_of_every_family():
    # A lazy (one-shot) shell finds a command's family in this table without importing it.
    import inspect

    from commands import FAMILIES, command_set

    for module, (cls_name, names) in FAMILIES.items():
        cs = command_set(module)
        assert type(cs).__name__ == cls_name
        defined = tuple(sorted(n[3:] for n, _ in inspect.getmembers(type(cs)) if n.startswith("do_")))
        assert defined == tuple(sorted(names)), module


def test_a_one_shot_ps_imports_only_what_it_needs(tmp_path):
    # Start-up budget (issue 15): `llmunix -c ps` registers the ps family only, reads no agent
    # definitions and does not import pydantic (no config.toml to check).
    import subprocess
    import sys

    code = ("import io, contextlib, sys\nfrom llmunix import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    status = cli.main(['--home', {str(tmp_path)!r}, '-c', 'ps'])\n"
            "heavy = sorted(m for m in sys.modules if m in ('pydantic', 'networkx', 'yaml', 'cryptography')\n"
            "               or m.startswith(('llmunix.agents.', 'llmunix.workflows.', 'commands.agents',\n"
            "                                'commands.workflow', 'commands.debug')))\n"
            "print(status, heavy)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "0 []", r.stdout + r.stderr
