"""Isolated processes (llmunix/isolation.py) and nothing left behind (llmunix/reaper.py).

Engine tests run a Kernel in this process with the tools of tests/isolated_tools.py; end-to-end
tests run the real executable (`LLMUNIX`) with `--tools tests.isolated_tools`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import psutil
import pytest

from llmunix import Kernel
from llmunix.guardian import start_time
from llmunix.models import LlmunixError
from llmunix.reaper import ChildRecord, boot_id
from llmunix.retry import RetryPolicy
from llmunix.workflows.spec import spec_from_data
from tests import isolated_tools
from tests.conftest import LLMUNIX, PROMPT, close_prompt, wait_phase

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PROMPT_TOOLKIT_NO_CPR": "1"}


@pytest.fixture
def k(make_kernel, tmp_path):
    return make_kernel(home=tmp_path / "home", kill_grace=0.5)


def worker_of(k: Kernel, pid: int) -> int:
    return k.info(pid).subprocess_pid


def gone(os_pid: int) -> bool:
    try:
        return psutil.Process(os_pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ the body in its own OS process


def test_an_isolated_body_uses_the_whole_ctx_api_from_its_own_os_process(k):
    peer = k.spawn("ctx_echo_back")
    pid = k.spawn("iso_ctx", peer=peer)
    [info] = k.wait([pid], timeout=30)
    assert info.state == "Completed", info.error
    out = info.output
    assert out["os_pid"] != os.getpid() and out["os_pid"] == info.subprocess_pid
    assert out["v1"] == 1 and k.checkpoints(pid) == [(1, {"step": 1})]
    assert out["child_state"] == "Completed" and out["child_output"] == "from an isolated parent"
    assert k.info(pid + 1).parent == pid  # the child it spawned is its own, as from a thread
    assert out["shared"] == {"pid": pid} and out["count_version"] == 1 and out["locked"] is True
    assert out["buffer"] == "hello" and out["reply"] == {"echo": {"from": pid}} and out["priority"] == "normal"
    assert [line for _, line in k.logs(pid)] == ["a log line from the worker"]
    assert [e.type for e in k.events(pid, types="tool.*")] == ["tool.iso.done"]
    assert ("isolated worker", f"pid {out['os_pid']}") in [(h.event, h.details) for h in info.history]


def test_what_an_isolated_body_prints_goes_to_its_log(k):
    pid = k.spawn("iso_print", text="hi")
    [info] = k.wait([pid], timeout=30)
    assert info.output == "hi"
    assert sorted(line for _, line in k.logs(pid)) == ["err: hi", "out: hi"]


@pytest.mark.parametrize("how", ["tool", "value", "exit"])
def test_an_isolated_body_fails_exactly_as_it_would_on_a_thread(k, how):
    iso = k.spawn("iso_fail", how=how)
    thread = k.spawn("iso_fail", how=how, isolate=False)
    a, b = k.wait([iso, thread], timeout=30)
    assert a.subprocess_pid is not None and b.subprocess_pid is None
    assert (a.state, a.exit_code, a.error) == (b.state, b.exit_code, b.error)
    assert a.state == "Failed" and a.error in ("bad input, isolated", "ValueError: not a number", "SystemExit: 4")


def test_a_worker_that_exits_or_dies_fails_only_its_process_with_the_reason(k):
    exited = k.spawn("iso_exit", code=3)
    killed = k.spawn("iso_signal", sig=9)
    segv = k.spawn("iso_signal", sig=11)
    after = k.spawn("echo", text="never", after=[exited])
    a, b, c, d = k.wait([exited, killed, segv, after], timeout=30)
    assert (a.state, a.exit_code, a.error) == ("Failed", 3, "worker exited with code 3")
    assert (b.state, b.exit_code, b.error) == ("Failed", 137, "killed by signal 9 (out of memory?)")
    assert (c.state, c.exit_code, c.error) == ("Failed", 139, "killed by signal 11 (SIGSEGV)")
    assert d.state == "Failed" and d.error == f"dependency failed: {a.process_id} Failed"
    assert k.wait([k.spawn("echo", text="still here")], timeout=10)[0].output == "still here"


def test_a_worker_killed_while_llmunix_waits_in_its_ctx_recv_fails_at_once(k, tmp_path):
    mark = tmp_path / "pid"
    pid = k.spawn("iso_recv", path=str(mark))
    wait_phase(k, pid, "waiting")  # llmunix carries out its ctx.recv(), off-slot
    os.kill(int(mark.read_text()), signal.SIGKILL)  # as the OOM killer would
    [info] = k.wait([pid], timeout=30)
    assert info.state == "Failed" and info.error == "killed by signal 9 (out of memory?)"


def test_a_retry_policy_runs_a_crashed_isolated_body_again(k):
    pid = k.spawn("iso_exit", code=3, retry=RetryPolicy(max_attempts=3, initial=0.01, jitter="none"))
    [info] = k.wait([pid], timeout=30)
    assert info.state == "Failed" and info.attempts.attempt == 3 and info.error == "worker exited with code 3"


def test_kill_stops_an_isolated_body_stuck_in_c_code_at_once(k, tmp_path, wait_until):
    mark = tmp_path / "c"
    pid = k.spawn("iso_c_sleep", path=str(mark), seconds=60)
    wait_until(lambda: Path(f"{mark}.started").exists(), message="the body to start")
    worker = int(Path(f"{mark}.started").read_text())
    k.kill(pid)
    [info] = k.wait([pid], timeout=30)
    assert info.state == "Cancelled" and info.exit_code == 143 and info.runtime < 30
    wait_until(lambda: gone(worker), message="the worker to end")


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(k, tmp_path, wait_until):
    mark = tmp_path / "pid"
    pid = k.spawn("iso_ignore_term", path=str(mark))
    wait_until(mark.exists, message="the body to ignore SIGTERM")
    k.kill(pid)
    [info] = k.wait([pid], timeout=30)
    assert info.state == "Cancelled"
    wait_until(lambda: gone(int(mark.read_text())), message="SIGKILL after the grace")


def test_priority_is_the_workers_nice_value(k):
    low = k.spawn("iso_nice", priority="low", isolate=True)
    idle = k.spawn("iso_nice", priority="idle", isolate=True)
    assert [i.output for i in k.wait([low, idle], timeout=30)] == [10, 19]


def test_pause_stops_an_isolated_body_with_sigstop_and_resume_continues_it(k, tmp_path, wait_until):
    mark = tmp_path / "c"
    pid = k.spawn("iso_c_sleep", path=str(mark), seconds=1.0)
    wait_until(lambda: Path(f"{mark}.started").exists(), message="the body to start")
    worker = psutil.Process(worker_of(k, pid))
    k.pause(pid)
    assert k.info(pid).display_state == "Paused"
    wait_until(lambda: worker.status() == psutil.STATUS_STOPPED, message="the worker to be stopped")
    assert not k.wait([pid], timeout=1.5)[0].is_done  # its 1 s of C sleep does not end while it is stopped
    k.resume(pid)
    [info] = k.wait([pid], timeout=30)
    assert info.state == "Completed" and Path(f"{mark}.done").exists()


# ------------------------------------------------------------------ limits and figures


def test_a_memory_limit_stops_an_isolated_process_with_the_reason(make_kernel, tmp_path):
    k = make_kernel(home=tmp_path / "home", monitor=True, monitor_interval=0.1)
    pid = k.spawn("iso_alloc", mb=400, step=40, memory_limit="100MB")
    [info] = k.wait([pid], timeout=60)
    assert info.state == "Failed" and info.exit_code == 137  # as an OOM kill reports, not 124 "timed out"
    assert info.error.startswith("exceeded its memory limit (") and info.error.endswith(" MB > 100 MB)")


def test_a_cpu_time_limit_stops_a_spinning_python_tool(make_kernel, tmp_path):
    k = make_kernel(home=tmp_path / "home", monitor=True, monitor_interval=0.1)
    pid = k.spawn("iso_spin", seconds=60, cpu_limit="1s")
    [info] = k.wait([pid], timeout=60)
    assert info.state == "Failed"
    assert info.error.startswith("exceeded its CPU time limit (") or info.error.startswith("killed by signal 24")
    assert info.exit_code == 152, info  # 128 + SIGXCPU, whichever saw it first


def test_an_isolated_process_shows_its_own_memory_and_a_workflow_the_sum_of_its_steps(make_kernel, tmp_path,
                                                                                     wait_until):
    k = make_kernel(home=tmp_path / "home", monitor=True, monitor_interval=0.1)
    steps = [{"id": "a", "tool": "iso_alloc", "with": {"mb": 60, "seconds": 20}},
             {"id": "b", "tool": "iso_alloc", "with": {"mb": 90, "seconds": 20}}]
    wf = k.workflow_run(spec_from_data({"name": "mem", "steps": steps}))

    def measured():  # both have allocated all (100%) and been sampled since
        kids = [i for i in k.ps() if i.parent == wf and i.progress.percentage == 100]
        return len(kids) == 2 and all(
            s.time > i.history[-1].timestamp for i in kids for s in k.samples(i.pid)[-1:]) and kids

    kids = wait_until(measured, timeout=20, message="both steps measured")
    own = {round(k.info(i.pid).resources.memory_mb, -1) for i in kids}
    assert own == {60, 90}, [k.info(i.pid).resources for i in kids]  # their own memory: the pages they allocated
    assert all(i.resources.rss_mb > i.resources.memory_mb for i in kids)  # RSS counts what they share too
    wait_until(lambda: 140 <= (k.info(wf).resources.memory_mb or 0) <= 170, timeout=10,
               message="the workflow's memory to be its steps' sum")
    status = k.workflow_status(wf)
    assert 140 <= status.memory_mb <= 170
    k.kill(wf)


# ------------------------------------------------------------------ choosing where a body runs


def test_what_cannot_be_isolated_is_refused_in_one_line(k):
    with pytest.raises(LlmunixError, match=r"^tool 'inner' cannot run isolated: .*importable module"):
        k.spawn(isolated_tools.make_closure_tool(), isolate=True)
    with pytest.raises(LlmunixError, match=r"limit an isolated or subprocess tool"):
        k.spawn("echo", text="x", isolate=False, memory_limit="100MB")
    with pytest.raises(LlmunixError, match=r"bad memory limit '12 parsecs'"):
        k.spawn("iso_noop", memory_limit="12 parsecs")
    runner = k.registry.get("workflow")  # the workflow runner's body only waits: it stays a thread
    with pytest.raises(LlmunixError, match=r"^tool 'workflow' cannot run isolated: workflow bodies run as threads"):
        k.spawn(runner, isolate=True, params={"spec": {}})
    assert k.tool_isolation("echo") == "thread" and k.tool_isolation("iso_noop") == "process"


def test_the_configuration_chooses_for_users_tools_and_per_tool(make_kernel, tmp_path):
    k = make_kernel(home=tmp_path / "home", isolation="process",
                    tool_settings={"iso_noop": {"isolation": "thread"}, "echo": {"isolation": "process"}})
    users = k.spawn("iso_nice")  # a user's tool: isolated by default
    builtin = k.spawn("sleep", seconds=0)  # built-ins stay threads unless asked
    kept = k.spawn("iso_noop")  # [tools.iso_noop] isolation = "thread" beats @tool(isolation="process")
    asked = k.spawn("echo", text="x")  # [tools.echo] isolation = "process"
    forced = k.spawn("iso_nice", isolate=False)  # run --thread
    infos = k.wait([users, builtin, kept, asked, forced], timeout=30)
    assert [i.subprocess_pid is not None for i in infos] == [True, False, False, True, False]
    assert all(i.state == "Completed" for i in infos)


def test_a_recovered_process_of_an_isolated_tool_runs_isolated_again(tmp_path):
    home = tmp_path / "home"
    with Kernel(home, monitor=False) as k:
        pid = k.spawn("iso_recv", path=str(tmp_path / "pid"))
        wait_phase(k, pid, "waiting")
    with Kernel(home, monitor=False) as k:  # it was interrupted by the shutdown
        [info] = k.recover([pid])
        wait_phase(k, pid, "waiting")
        assert k.info(pid).subprocess_pid is not None and k.info(pid).subprocess_pid != info.subprocess_pid
        k.send(pid, "hello")
        assert k.wait([pid], timeout=20)[0].output == "hello"


# ------------------------------------------------------------------ nothing left behind (reaper.py)


def test_a_group_recorded_by_a_killed_llmunix_is_reaped_at_the_next_start(tmp_path, wait_until):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    child = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    wait_until(lambda: len(psutil.Process(child.pid).children()) == 2, message="the grandchildren")
    members = [p.pid for p in psutil.Process(child.pid).children()]
    (home / "children").write_text(f"boot {boot_id()}\n+ {child.pid} {start_time(child.pid)} 007 shell\n")
    with Kernel(home, monitor=False) as k:
        assert [(r.pgid, r.label, r.processes) for r in k.reaped] == [(child.pid, "007 shell", 3)]
        [event] = k.events(types="system.reaped")
        assert event.data["groups"] == [{"pgid": child.pid, "what": "007 shell", "processes": 3}]
    assert child.wait(timeout=5) == -signal.SIGKILL
    wait_until(lambda: all(gone(p) for p in members), message="the grandchildren to be reaped")


def test_a_recorded_pid_now_used_by_another_program_is_never_hit(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:  # the record says this PID started at another time: a different program
        (home / "children").write_text(f"boot {boot_id()}\n+ {other.pid} {start_time(other.pid) - 1} 001 shell\n"
                                       "+ 999999999 1 002 shell\n")
        assert ChildRecord(home).reap_leftovers() == []
        assert other.poll() is None
        (home / "children").write_text(f"boot another-boot\n+ {other.pid} {start_time(other.pid)} 001 shell\n")
        assert ChildRecord(home).reap_leftovers() == [] and other.poll() is None  # before a reboot: nothing runs
    finally:
        other.kill()
        other.wait()


# ------------------------------------------------------------------ end to end, the real executable


def run_cli(home: Path, *commands: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    args = [LLMUNIX, "--home", str(home), "--tools", "tests.isolated_tools", "--keep-going"]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)


def test_os_exit_in_an_isolated_tool_fails_it_and_the_shell_goes_on_e2e(tmp_path):
    r = run_cli(tmp_path / "home", "run iso_exit code=3", "wait", "run echo text=alive", "wait", "ps -a --json",
                "ps -l 1")
    assert r.returncode != 0, r.stderr  # the first wait reports the failure; the shell goes on (-k)
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    records = json.loads("\n".join(lines[lines.index("["):lines.index("]") + 1]))
    assert [(x["state"], x["exit_code"], x["error"], x["output"]) for x in records] == [
        ("failed", 3, "worker exited with code 3", None), ("completed", 0, None, "alive")]
    assert "Error: worker exited with code 3" in r.stdout
    assert f"Isolated: worker OS pid {records[0]['subprocess_pid']}" in r.stdout


@pytest.fixture
def prompt(tmp_path):
    child = pexpect.spawn(LLMUNIX, ["--home", str(tmp_path / "home"), "--tools", "tests.isolated_tools"],
                          env={**ENV, "TERM": "xterm"}, encoding="utf-8", timeout=30, dimensions=(40, 200))
    child.expect(PROMPT)
    yield child
    close_prompt(child)


_asked = iter(range(1_000_000))


def ask_json(child: pexpect.spawn, command: str, folder: Path) -> object:
    """Run a --json command at the prompt, its output redirected to a file (a terminal draws
    alerts and prompts between the lines), and read it back."""
    out = folder / f"answer-{next(_asked)}.json"
    child.sendline(f"{command} > {out}")
    child.expect(PROMPT)
    deadline = time.monotonic() + 10
    while True:
        try:
            return json.loads(out.read_text())
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_ps_json_shows_the_memory_an_isolated_tool_allocated_e2e(prompt, tmp_path, wait_until):
    prompt.sendline("set monitor_interval 0.2")
    prompt.expect(PROMPT)
    prompt.sendline("run iso_alloc mb=200 seconds=60")
    prompt.expect(PROMPT)
    wait_until(lambda: ask_json(prompt, "ps --json 1", tmp_path)[0]["progress"]["percentage"] == 100,
               timeout=30, message="the allocation to be made")
    allocated = time.monotonic()

    def sampled_since():  # a figure from a sample after the allocation (the monitor samples every 0.2 s)
        record = ask_json(prompt, "ps --json 1", tmp_path)[0]
        return time.monotonic() - allocated > 0.6 and record["resources"]["memory_mb"] and record

    record = wait_until(sampled_since, timeout=30, message="a sample after the allocation")
    memory = record["resources"]["memory_mb"]
    assert 190 <= memory <= 215, record["resources"]  # its own 200 MB, not the shared interpreter
    assert record["resources"]["rss_mb"] > memory and record["subprocess_pid"] is not None
    prompt.sendline("kill 1")
    prompt.expect(PROMPT)


def test_pause_freezes_an_isolated_tool_inside_c_code_and_resume_continues_it_e2e(prompt, tmp_path, wait_until):
    mark = tmp_path / "c"
    prompt.sendline(f"run iso_c_sleep path={mark} seconds=1.5")
    prompt.expect(PROMPT)
    wait_until(lambda: Path(f"{mark}.started").exists(), message="the body to start")
    worker = psutil.Process(int(Path(f"{mark}.started").read_text()))
    prompt.sendline("pause 1")
    prompt.expect(PROMPT)
    wait_until(lambda: worker.status() == psutil.STATUS_STOPPED, message="the worker to be stopped")
    prompt.sendline("wait 1 --timeout 2.5")  # longer than its sleep: it does not end while stopped
    prompt.expect(PROMPT)
    assert ask_json(prompt, "ps --json 1", tmp_path)[0]["state"] == "paused" and not Path(f"{mark}.done").exists()
    assert worker.status() == psutil.STATUS_STOPPED
    prompt.sendline("resume 1")
    prompt.expect(PROMPT)
    prompt.sendline("wait 1")
    prompt.expect(PROMPT)
    assert ask_json(prompt, "ps -a --json 1", tmp_path)[0]["state"] == "completed" and Path(f"{mark}.done").exists()


def status_of(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return "gone"


def kill_all(procs: list[psutil.Process]) -> None:
    """Whatever a failed test left running goes."""
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigkill_of_llmunix_leaves_no_process_behind_e2e(tmp_path, wait_until):
    home = tmp_path / "home"
    mark = tmp_path / "c"
    shell = subprocess.Popen([LLMUNIX, "--home", str(home), "--tools", "tests.isolated_tools"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, text=True)
    commands = ['run shell "cmd=sleep 300 & sleep 300"', 'run shell "cmd=(sleep 301 &); sleep 301"',
                """run shell "cmd=sh -c 'sleep 302 & sleep 302'" """, f"run iso_c_sleep path={mark} seconds=303",
                "run iso_alloc mb=10 seconds=304", "run iso_shell_tree seconds=305"]
    shell.stdin.write("\n".join(commands) + "\n")
    shell.stdin.flush()  # (stdin stays open: the shell keeps running, as at a prompt)

    def started():
        kids = _descendants(shell.pid)
        sleeps = [p for p in kids if p.name() == "sleep"]
        return len(sleeps) == 8 and Path(f"{mark}.started").exists() and kids

    kids = wait_until(started, timeout=30, message="3 shell tools with grandchildren and 3 isolated tools")
    shell.stdin.write("pause 1\n")  # a stopped group must go too (a SIGCONT later would let it run on)
    shell.stdin.flush()
    wait_until(lambda: any(status_of(p) == psutil.STATUS_STOPPED for p in kids), message="the paused group")
    try:
        shell.send_signal(signal.SIGKILL)
        shell.wait(timeout=5)
        t0 = time.monotonic()
        wait_until(lambda: all(gone(p.pid) for p in kids), timeout=10, message="every descendant to end")
        print(f"\nall {len(kids)} descendants gone {time.monotonic() - t0:.2f}s after SIGKILL of llmunix")
    finally:
        kill_all(kids)
        shell.stdin.close()


def test_the_next_start_reaps_what_a_killed_llmunix_and_its_guardian_left_e2e(tmp_path, wait_until):
    home = tmp_path / "home"
    shell = subprocess.Popen([LLMUNIX, "--home", str(home)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV, text=True)
    shell.stdin.write('run shell "cmd=sleep 310 & sleep 310"\n')
    shell.stdin.flush()

    def running():
        kids = _descendants(shell.pid)
        guardian = [p for p in kids if "guardian.py" in " ".join(p.cmdline())]
        sleeps = [p for p in kids if p.name() == "sleep"]
        return len(sleeps) == 2 and guardian and (guardian[0], sleeps)

    guardian, sleeps = wait_until(running, timeout=30, message="the shell tool and the guardian")
    try:
        guardian.kill()  # first the guardian, then llmunix: nothing is left to clean up after it
        wait_until(lambda: gone(guardian.pid), message="the guardian to die")
        shell.kill()
        shell.wait(5)
        assert not any(gone(p.pid) for p in sleeps)  # (the sh died with llmunix: a parent-death signal)
        r = subprocess.run([LLMUNIX, "--home", str(home), "-c", "events --type system.reaped --json"],
                           capture_output=True, text=True, env=ENV, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "llmunix: reaped 2 OS process(es) in 1 group(s) that an earlier llmunix left running when it " \
               "was killed (001 shell)" in r.stderr
        [event] = json.loads(r.stdout)
        assert event["data"]["groups"][0]["what"] == "001 shell"
        wait_until(lambda: all(gone(p.pid) for p in sleeps), message="the reaped sleeps to end")
    finally:
        kill_all(sleeps)
        shell.stdin.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
