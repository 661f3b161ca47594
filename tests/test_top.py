"""`top` (batch frames, JSON, the live screen in a pty) and `stats` (per-tool run history)."""

from __future__ import annotations

import json
import os
import subprocess
import termios
import threading

import pytest
from conftest import LLMUNIX, PROMPT, close_prompt, spawn_prompt
from test_shell_commands import Session

from commands.top import TopControls
from commands.top_views import TopRow, arrange, cpu_trend, sparkline
from llmunix import Kernel, ProcessContext
from llmunix.monitor import ResourceSample
from llmunix.shell import keys_unbuffered

ANY = r"[^\n]*"  # pexpect compiles with re.DOTALL: `.*` would run across lines
STYLE = r"(?:\x1b\[[0-9;]*m)*"  # colour codes rich may put between a label and its value
HEADER_KEYS = ("time", "cpu", "memory", "load", "llmunix", "processes", "sort")


def frames_of(out: str) -> list[list[str]]:
    return [block.splitlines() for block in out.strip("\n").split("\n\n")]


def header_of(frame: list[str]) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in frame if ": " in line)


def table_of(frame: list[str]) -> list[list[str]]:
    start = next(i for i, line in enumerate(frame) if line.startswith("PID "))
    return [line.split() for line in frame[start:]]


def blocking(gate: threading.Event):
    def held(ctx: ProcessContext) -> str:
        while not gate.is_set():
            ctx.sleep(0.01)
        return "done"

    return held


@pytest.fixture
def monitored(tmp_path, capsys):
    kernel = Kernel(tmp_path, monitor=True, monitor_interval=0.2, kill_grace=0.3)
    yield Session(kernel, capsys)
    kernel.shutdown()


# ---------------------------------------------------------------------- top through the shell


def test_top_batch_prints_two_plain_frames_with_header_and_processes(monitored):
    gate = threading.Event()
    pid = monitored.kernel.spawn(blocking(gate), name="holder", priority="high")
    out = monitored.ok("top -b -n 2 -d 0.2")
    gate.set()
    frames = frames_of(out)
    assert len(frames) == 2
    for frame in frames:
        header = header_of(frame)
        assert set(HEADER_KEYS) <= set(header)
        assert "%" in header["cpu"] and "total" in header["memory"] and "CPU" in header["llmunix"]
        assert header["processes"].startswith("1 total") and header["sort"] == "pid"
        table = table_of(frame)
        assert table[0] == ["PID", "TOOL", "STATE", "PRIORITY", "CPU%", "MEM", "TOKENS", "PROGRESS", "TREND"]
        assert table[1][:4] == [f"{pid:03d}", "holder", "Running", "high"]
    assert not any(ch in out for ch in "─│┃━\x1b")  # no box characters, no colour


def test_top_when_piped_prints_one_frame_and_accepts_the_seeds_form(monitored):
    assert len(frames_of(monitored.ok("top"))) == 1
    out = monitored.ok("top -p processes -b")
    assert len(frames_of(out)) == 1 and "processes: 0 total" in out


def test_top_lists_processes_that_just_finished_and_sorts_by_the_chosen_key(monitored):
    k = monitored.kernel
    first = k.spawn("echo", text="hi", priority="low")
    k.wait([first])
    gate = threading.Event()
    second = k.spawn(blocking(gate), name="holder", priority="critical")
    rows = table_of(frames_of(monitored.ok("top -b -s priority"))[0])[1:]
    gate.set()
    assert [r[0] for r in rows] == [f"{second:03d}", f"{first:03d}"]
    assert rows[1][2] == "Completed"


def test_top_json_is_one_frame(monitored):
    gate = threading.Event()
    pid = monitored.kernel.spawn(blocking(gate), name="holder")
    data = json.loads(monitored.ok("top --json"))
    gate.set()
    assert data["system"]["cpu_count"] >= 1 and data["system"]["memory_total_mb"] > 0
    assert data["counts"] == {"Running": 1} and data["sort"] == "pid"
    (proc,) = data["processes"]
    assert proc["pid"] == pid and proc["name"] == "holder" and proc["state"] == "running"
    assert isinstance(proc["cpu_history"], list)


@pytest.mark.parametrize("line", ["top -d zero", "top -d 0", "top -n 0", "top --bogus", "top -p threads"])
def test_top_bad_options_give_a_one_line_error(monitored, line):
    assert monitored.bad(line).startswith("top: ")


# ---------------------------------------------------------------------- top via the real executable


def test_llmunix_c_top_batch_shows_the_spinning_process_with_a_cpu_figure(tmp_path):
    env = {**os.environ, "LLMUNIX_HOME": str(tmp_path), "NO_COLOR": "1"}
    # Three frames: the spin's body may start just after the first measurement, and a CPU figure
    # needs two measurements of its thread; the last frame always has one.
    done = subprocess.run([LLMUNIX, "-c", "run spin seconds=3", "-c", "top -b -n 3 -d 0.5", "-c", "wait"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    frames = frames_of(done.stdout.split("\n", 1)[1].rsplit("\n[001]", 1)[0])  # between `run`'s PID and `wait`
    assert len(frames) == 3
    for frame in frames:
        assert set(HEADER_KEYS) <= set(header_of(frame))
    spin = table_of(frames[-1])[1]
    assert spin[:3] == ["001", "spin", "Running"]
    assert float(spin[4]) > 10  # a busy thread, measured since the previous frame


# ---------------------------------------------------------------------- the live screen in a pty


def test_top_on_a_terminal_sorts_on_a_key_quits_on_q_and_then_shows_the_alert(tmp_path):
    child = spawn_prompt(tmp_path)
    let_go = tmp_path / "let-go"  # the process ends when the test says, not after a fixed time
    try:
        child.sendline(f'run shell "cmd=until [ -e {let_go} ]; do sleep 0.02; done"')
        child.expect(PROMPT)
        child.sendline("top -d 0.2")
        child.expect(rf"sort: {STYLE}pid")
        child.expect(rf"001{ANY}shell{ANY}Running")
        child.send("c")
        child.expect(rf"sort: {STYLE}cpu")
        let_go.touch()
        child.expect(rf"001{ANY}shell{ANY}Completed")  # it finishes while top is open
        child.send("q")
        child.expect(PROMPT)
        child.expect(rf"\[001\]{ANY}shell{ANY}completed")  # the alert queued meanwhile
        child.sendline("ps -a")
        child.expect(rf"001{ANY}shell{ANY}Completed")
        child.expect(PROMPT)
        child.sendline("shell stty -a")  # top gave the terminal's settings back
        child.expect(r"[^-]icanon")
        child.expect(PROMPT)
    finally:
        close_prompt(child)


def test_key_reading_mode_is_undone_even_when_top_fails():
    leader, follower = os.openpty()
    try:
        before = termios.tcgetattr(follower)
        with pytest.raises(RuntimeError), keys_unbuffered(follower):
            assert not termios.tcgetattr(follower)[3] & termios.ICANON  # keys one at a time
            raise RuntimeError("boom")
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)


# ---------------------------------------------------------------------- stats


def test_stats_counts_outcomes_success_rate_and_durations(tmp_path, capsys):
    kernel = Kernel(tmp_path, monitor=False, kill_grace=0.3)
    try:
        sh = Session(kernel, capsys)
        pids = [kernel.spawn("sleep", seconds=0.05), kernel.spawn("sleep", seconds=0.15),
                kernel.spawn("fail", message="no"), kernel.spawn("echo", text="x")]
        kernel.wait(pids)
        kernel.flush()
        table = [line.split() for line in sh.ok("stats").splitlines()]
        assert table[0] == ["TOOL", "RUNS", "COMPLETED", "FAILED", "CANCELLED", "SUCCESS", "MEAN", "P95"]
        rows = {r[0]: r for r in table[1:]}
        assert rows["sleep"][1:6] == ["2", "2", "0", "0", "100%"]
        assert rows["fail"][1:6] == ["1", "0", "1", "0", "0%"] and rows["fail"][6:] == ["-", "-"]
        (sleep,) = json.loads(sh.ok("stats sleep --json"))
        assert sleep["runs"] == 2 and sleep["success_rate"] == 100.0
        assert 0.05 <= sleep["mean_duration"] < sleep["p95_duration"] and sleep["p95_duration"] >= 0.15
        assert sh.bad("stats nosuchtool") == "stats: no tool 'nosuchtool' and no runs of it; `tools` lists them"
        assert json.loads(sh.ok("stats spin --json"))[0]["runs"] == 0  # known, never run
    finally:
        kernel.shutdown()


def test_stats_without_a_store_uses_this_sessions_processes(capsys):
    kernel = Kernel(monitor=False)
    try:
        kernel.wait([kernel.spawn("echo", text="a"), kernel.spawn("fail")])
        stats = {s["tool"]: s for s in json.loads(Session(kernel, capsys).ok("stats --json"))}
        assert stats["echo"]["completed"] == 1 and stats["fail"]["failed"] == 1
        assert stats["fail"]["success_rate"] == 0.0
    finally:
        kernel.shutdown()


# ---------------------------------------------------------------------- keys and pure pieces


def test_keys_change_sort_filter_and_quit():
    c = TopControls()
    c.press("m")
    assert c.sort == "mem"
    c.press("/sle")
    assert c.editing == "sle" and c.filter == ""
    c.press("\x7fep\r")
    assert c.filter == "slep" and c.editing is None
    c.press("/x\x1b")
    assert c.filter == "" and c.editing is None
    c.press("\x1b[A")  # an arrow key moves the cursor (nothing listed: it stays put)
    assert c.selected is None and c.press("p") == [] and c.status == "no process selected"
    c.press("P")  # p pauses; P sorts by priority
    assert c.sort == "priority" and not c.quit
    c.press("q")
    assert c.quit


def test_trend_arrows_and_sparkline_follow_the_samples():
    def s(cpu):
        return ResourceSample(0.0, cpu, None, None)

    assert cpu_trend([s(10.0), s(50.0)]) == "↑" and cpu_trend([s(50.0), s(10.0)]) == "↓"
    assert cpu_trend([s(10.0), s(10.2)]) == "" and cpu_trend([s(None), s(10.0)]) == ""
    assert sparkline([s(0.0), s(50.0), s(100.0), s(None)]) == "▁▅█ "


def test_filter_matches_tool_name_or_state(make_kernel):
    k = make_kernel()
    k.wait([k.spawn("echo", text="a"), k.spawn("fail")])
    rows = [TopRow(i, ()) for i in k.ps(all=True)]
    assert [r.info.tool_name for r in arrange(rows, "pid", "FAIL")] == ["fail"]
    assert [r.info.tool_name for r in arrange(rows, "pid", "completed")] == ["echo"]


# ---------------------------------------------------------------------- acting from top (issue 16)


def test_top_on_a_terminal_selects_pauses_reprioritises_shows_details_and_kills(tmp_path):
    child = spawn_prompt(tmp_path)
    try:
        for _ in range(3):
            child.sendline("run sleep seconds=60")
            child.expect(PROMPT)
        child.sendline("top -d 0.3")
        child.expect("↑↓ select")  # the keys, in the footer
        child.expect(rf"{STYLE}\x1b\[7;36m001")  # the cursor starts on the first row (reverse video)
        child.send("\x1b[B")  # down
        child.expect(r"\x1b\[7;36m002")
        child.send("p")
        child.expect(r"paus(?:ed|ing) 002 sleep")
        child.send("+")
        child.expect(r"002 sleep priority high")
        child.send("\r")  # Enter: the ps -l view of the selected process
        child.expect(r"Process [^\n]*002[^\n]* - [^\n]*sleep")
        child.expect(r"State: [^\n]*Paused")
        child.send("\x1b")  # back to the list
        child.expect("↑↓ select")
        child.send("k")
        child.expect(r"kill 002\? y to confirm")
        child.send("n")
        child.expect("kill cancelled")
        child.send("k")
        child.expect(r"kill 002\? y to confirm")
        child.send("y")
        child.expect(r"(?:stopping|killed) 002 sleep")
        child.send("t")
        child.expect(r"view: [^\n]*tree")
        child.send("q")
        child.expect(PROMPT)
        child.sendline("ps -a")
        child.expect(rf"001{ANY}sleep{ANY}Running")
        child.expect(rf"002{ANY}sleep{ANY}Cancelled{ANY}high")
        child.expect(rf"003{ANY}sleep{ANY}Running")
        child.expect(PROMPT)
    finally:
        close_prompt(child)


def test_top_n_1_in_a_read_only_second_shell_ends_and_lists_the_owners_processes(tmp_path):
    owner = spawn_prompt(tmp_path)
    try:
        owner.sendline("run sleep seconds=60")
        owner.expect(PROMPT)
        env = {**os.environ, "LLMUNIX_HOME": str(tmp_path), "NO_COLOR": "1"}
        r = subprocess.run([LLMUNIX, "-c", "top -n 1"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "read-only" in r.stderr
        assert table_of(frames_of(r.stdout)[0])[1][:3] == ["001", "sleep", "Running"]
    finally:
        close_prompt(owner)


def test_columns_keep_their_places_between_frames():
    from commands.base import plain_text
    from commands.top_views import TopFrame, stable_widths, top_rich
    from llmunix.models import Context, Priority, ProcessInfo, ProcessKind, Progress, Resources

    def info(pid: int, name: str, cpu: float | None, state: str = "Running") -> ProcessInfo:
        return ProcessInfo(pid, name, "sleep", ProcessKind.TOOL, "running", state, "running", Priority.NORMAL,
                           Priority.NORMAL, "me", None, (), 0.0, 0.0, None, 1.0, None, None, None, Progress(),
                           Resources(cpu_percent=cpu), Context(), ())

    def sample(cpu: float) -> ResourceSample:
        return ResourceSample(0.0, cpu, None, None)

    frames = [
        [TopRow(info(1, "a", None), ()), TopRow(info(2, "b", 1.0), (sample(1.0),))],
        [TopRow(info(1, "a", 99.5), (sample(1.0), sample(99.5)), "↑"), TopRow(info(2, "b", 1.0), ())],
        [TopRow(info(1, "a-much-longer-name-than-before", 5.0), ()), TopRow(info(2, "b", None, "Completed"), ())],
        [TopRow(info(1, "a", None), ())],
    ]
    widths = None
    headers = []
    for rows in frames:
        frame = TopFrame(time=0.0, system=None, rows=tuple(rows), counts={})
        widths = stable_widths(frame, widths)
        header = next(line for line in plain_text(top_rich(TopFrame(
            time=0.0, system=None, rows=tuple(rows), counts={}, widths=widths))).splitlines() if line.startswith("PID"))
        headers.append(header)
    assert headers[0] == headers[1]  # CPU figures and arrows fit the columns as they are
    assert headers[2] == headers[3] != headers[1]  # a longer name widened TOOL once, for good
    assert headers[2].index("STATE") > headers[1].index("STATE")


def test_the_cursor_follows_its_process_and_keys_ask_for_actions_on_it():
    from commands.top import Action, split_keys

    assert split_keys("a\x1b[Bb\x1bOA\x1b\x1b[5~") == ["a", "\x1b[B", "b", "\x1bOA", "\x1b", "\x1b[5~"]
    c = TopControls()
    c.show([1, 2, 3, 4])
    assert c.selected == 1
    c.press("\x1b[B\x1b[B")
    assert c.selected == 3
    c.show([4, 3, 2, 1])  # sorted another way: the cursor stays on 003
    assert c.selected == 3
    c.show([4, 2, 1])  # 003 is gone: the cursor keeps its height (the second row)
    assert c.selected == 2
    c.press("\x1b[H")
    assert c.selected == 4 and c.press("\x1b[F") == [] and c.selected == 1
    assert c.press("p+-") == [Action("toggle-pause", 1), Action("priority", 1, 1), Action("priority", 1, -1)]
    assert c.press("k") == [] and c.confirm == 1
    assert c.press("x") == [] and c.confirm is None and c.status == "kill cancelled"
    assert c.press("ky") == [Action("kill", 1)]
    c.press("\r")  # details of 001; the arrows move them along
    assert c.detail == 1
    c.press("\x1b[A")
    assert c.detail == 2 and c.selected == 2 and c.press("p") == [Action("toggle-pause", 2)]
    c.show([4, 1])  # 002 left the list: its details stay on screen
    assert c.detail == 2 and c.press("k") == [] and c.confirm == 2
    c.press("n")
    c.press("q")  # q leaves the details first, then top
    assert c.detail is None and not c.quit
    c.press("t")
    assert c.tree
    c.press("q")
    assert c.quit
