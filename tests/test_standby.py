"""Hot standby (`llmunix --standby`): a second llmunix on a home waits for the owner to stop, then
takes over as the owner and recovers what it left; the home lock passes on without a gap."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import LLMUNIX, Prompt, _wait_until

from llmunix.home import HomeInUse, HomeLock, prepare_home


def start_owner(home, *commands: str, running: int = 1) -> subprocess.Popen[str]:
    """An owner running `commands`; returns once `running` processes show Running in its store."""
    owner = subprocess.Popen([LLMUNIX, "--home", str(home), *(a for c in commands for a in ("-c", c))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: (home / "lock").exists() and (home / "lock").read_text().strip() == str(owner.pid),
                message="the owner to take the home")

    def stored() -> bool:  # read-only, from outside: what a standby would see
        r = subprocess.run([LLMUNIX, "--home", str(home), "-c", "ps --json"], capture_output=True, text=True)
        return r.returncode == 0 and sum(x["state"] == "running" for x in json.loads(r.stdout or "[]")) >= running

    _wait_until(stored, timeout=20, message="the owner's processes to be stored as running")
    return owner


def ps_json(text: str) -> dict[int, dict]:
    """The records of `ps --json` in a command's output (alerts may come before it)."""
    return {r["pid"]: r for r in json.loads(text[text.index("[\n"):text.rindex("]") + 1])}


def test_a_standby_running_commands_waits_then_takes_over_and_recovers(tmp_path):
    home = tmp_path / "home"
    owner = start_owner(home, "run sleep seconds=30 --name long", "run sleep seconds=4 --name short",
                        "wait 2", "wait", running=2)
    standby = subprocess.Popen([LLMUNIX, "--home", str(home), "--standby", "-c", "wait 2", "-c", "ps -a --json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting = standby.stderr.readline()
    assert waiting == f"llmunix: standby: waiting for llmunix pid {owner.pid} to release {home}\n"
    assert standby.poll() is None
    time.sleep(0.3)  # let the sleeps make a checkpoint or two (they checkpoint every 0.1 s)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    out, err = standby.communicate(timeout=60)
    assert standby.returncode == 0, err
    notes = err.splitlines()
    assert re.fullmatch(rf"llmunix: took over {home} from llmunix pid {owner.pid} [0-9.]+s after it stopped", notes[0])
    assert notes[1] == "llmunix: recovered 2 interrupted process(es): 001, 002"
    rows = ps_json(out)
    assert rows[2]["state"] == "completed" and rows[1]["state"] == "running"  # (interrupted as the standby exits)
    assert any(h["event"] == "spawned" and "recovered" in h["details"] for h in rows[2]["history"])


def test_an_interactive_standby_is_read_only_then_takes_over_at_the_prompt(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "out").mkdir()
    owner = start_owner(home, "run sleep seconds=6 --name job", "wait")
    shell = Prompt(home, tmp_path / "out", args=["--standby"])
    try:
        assert "001  job" in shell.run("ps")
        shell.run("run echo text=no")  # read-only: refused (one line on the terminal, nothing printed)
        assert "002" not in shell.run("ps -a")
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        shell.child.expect(f"llmunix pid {owner.pid} has stopped; taking over")
        shell.child.expect(r"took over \S+ from llmunix pid \d+ ([0-9.]+)s after it stopped")
        shell.child.expect(r"recovered 1 interrupted process\(es\): 001")
        shell.child.expect(r"llmunix\$")
        shell.run("wait 1")
        rows = ps_json(shell.run("ps -a --json"))
        assert rows[1]["state"] == "completed"
        pid = int(shell.run("run echo text=owner").strip())
        assert ps_json(shell.run(f"ps --json -a {pid}"))[pid]["state"] in ("completed", "running", "pending")
        assert (home / "lock").read_text().strip() == str(shell.child.pid)  # the same process, now the owner
    finally:
        shell.close()
    shell.child.close()
    assert shell.child.exitstatus == 0  # it left as the owner does: stopping cleanly


def test_a_standby_on_a_free_home_is_the_owner_at_once_and_recovers(tmp_path):
    home = tmp_path / "home"
    owner = start_owner(home, "run sleep seconds=30 --name left", "wait")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    r = subprocess.run([LLMUNIX, "--home", str(home), "--standby", "-c", "kill 1", "-c", "ps -a"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["llmunix: recovered 1 interrupted process(es): 001"]
    assert "001  left  Cancelled" in r.stdout


def test_ctrl_c_while_a_standby_waits_ends_it_quietly(tmp_path):
    home = tmp_path / "home"
    owner = start_owner(home, "run sleep seconds=30", "wait")
    try:
        standby = subprocess.Popen([LLMUNIX, "--home", str(home), "--standby", "-c", "ps"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "waiting for llmunix pid" in standby.stderr.readline()
        standby.send_signal(signal.SIGINT)
        out, err = standby.communicate(timeout=20)
        assert standby.returncode == 130 and out == "" and "Traceback" not in err
    finally:
        owner.kill()
        owner.wait()


def test_a_handed_over_lock_is_adopted_without_ever_being_free(tmp_path):
    home = tmp_path / "home"
    prepare_home(home)
    first = HomeLock(home)
    first.acquire()
    first.hand_over()
    assert os.get_inheritable(int(os.environ[HomeLock.ENV]))
    other = HomeLock(tmp_path)  # another home: not for it
    prepare_home(tmp_path)
    other.acquire()
    assert HomeLock.ENV in os.environ
    other.release()
    taker = HomeLock(home)
    taker.acquire()  # the same open file: ours at once, no wait, no gap
    assert HomeLock.ENV not in os.environ and taker.held
    assert not os.get_inheritable(taker._fd)  # noqa: SLF001 - what a child process would inherit
    with pytest.raises(HomeInUse):
        HomeLock(home).acquire()  # still held: nobody else can take it
    taker.release()
