"""End to end: the interactive `llmunix$` prompt in a real pty (pexpect)."""

from __future__ import annotations

import pexpect
import pytest
from conftest import PROMPT, close_prompt, spawn_prompt

# pexpect compiles patterns with re.DOTALL, so `.*` would run across lines: use ANY.
ANY = r"[^\n]*"


@pytest.fixture
def session(tmp_path):
    child = spawn_prompt(tmp_path)
    yield child
    close_prompt(child)


def test_run_shows_the_pid_then_a_completion_alert_and_ps_pipes_to_grep(session):
    session.sendline("run sleep seconds=0.3")
    session.expect(r"001\r\n")
    session.expect(PROMPT)
    session.expect(rf"\[001\]{ANY}sleep{ANY}completed{ANY} in (\d+\.\d)s")  # the alert, drawn above the prompt
    assert float(session.match.group(1)) >= 0.3  # how much longer depends on the machine's load
    session.sendline("ps -a | grep Completed | awk '{print $1 \"-\" $3}'")
    session.expect(r"001-Completed")
    session.expect(PROMPT)


def test_failures_are_announced_and_the_shell_keeps_running(session):
    session.sendline("run fail message=kaboom")
    session.expect(PROMPT)
    session.expect(rf"\[001\]{ANY}fail{ANY}failed{ANY}kaboom")
    session.sendline("kill 42")
    session.expect(r"kill: no process 042")
    session.expect(PROMPT)
    session.sendline("nosuchcommand")
    session.expect(r"no command 'nosuchcommand'")  # the error, not the echoed line
    session.expect(PROMPT)
    session.sendline("run echo text=still-alive")
    session.expect(rf"\[002\]{ANY}echo{ANY}completed")


def test_quit_asks_before_stopping_live_processes(session):
    session.sendline("run sleep seconds=60")
    session.expect(PROMPT)
    session.sendline("quit")
    session.expect(r"1 live process\(es\) \(001 sleep\) will be stopped\. Quit\? \[y/N\]")
    session.sendline("n")
    session.expect("not quitting")
    session.expect(PROMPT)
    session.sendline("ps")
    session.expect("Running")
    session.expect(PROMPT)
    session.sendline("quit")
    session.expect(r"Quit\? \[y/N\]")
    session.sendline("y")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0


def test_ctrl_d_with_nothing_running_leaves_at_once(session):
    session.sendeof()
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0


def test_tab_completes_tool_names_and_priority_levels(session):
    session.send("run sle\t")
    # The completion may be drawn apart from what was typed: cursor moves, and the blank lines
    # prompt_toolkit reserves for a menu while the first completion loads the tools.
    session.expect(r"sle(?:\x1b\[[0-9;?]*[A-Za-z]|[\r\n \x08])*ep")
    session.send("seconds=0.1 --priority cri\t")
    session.expect(r"tical")  # completion inserts the rest of the word
    session.send("\r")
    session.expect(r"001")
    session.expect(rf"\[001\]{ANY}completed")
    session.sendline("ps -a | awk '{print $1 \"/\" $2 \"/\" $4}'")
    session.expect(r"001/sleep/critical")


def test_wait_on_a_terminal_draws_progress_then_reports(session):
    session.sendline("run sleep seconds=1.5")
    session.expect(PROMPT)
    session.sendline("wait")
    session.expect(rf"001{ANY}sleep{ANY}\d+%{ANY}Running")  # the live progress display
    session.expect(r"\[001\] sleep completed in (\d+\.\d)s")
    assert float(session.match.group(1)) >= 1.5
    session.expect(PROMPT)


def test_ps_on_a_terminal_is_a_table_and_ps_l_a_tree(session):
    session.sendline("run sleep seconds=30 --priority low")
    session.expect(PROMPT)
    session.sendline("ps")
    session.expect(rf"PID{ANY}TOOL{ANY}STATE{ANY}PRIORITY{ANY}RUNTIME{ANY}MEMORY{ANY}CPU%{ANY}PROGRESS")
    session.expect(rf"001{ANY}sleep{ANY}Running{ANY}low")
    session.expect(PROMPT)
    session.sendline("ps -l 1")
    session.expect(rf"Process{ANY}001{ANY} - {ANY}sleep")
    session.expect(rf"State: {ANY}Running")
    session.expect(r"Priority: Low")
    session.expect(PROMPT)
