"""Observability end to end: the real `llmunix` executable on a real home directory — events and
logs of an earlier session, following until a process ends or Ctrl-C, the audit trail across
sessions, the JSON log file and its rotation, and a secret that is never written where people
read, while `recover` still gets it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import LLMUNIX, close_prompt, spawn_prompt

LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def llmunix(*commands: str, home: Path, keep_going: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    args = [LLMUNIX, *(["-k"] if keep_going else [])]
    for c in commands:
        args += ["-c", c]
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def log_lines(home: Path) -> list[dict]:
    """Every line of llmunix.log and its rotated files, oldest first, parsed (a bad line fails the test)."""
    lines = []
    for path in sorted(home.glob("llmunix.log*"), key=lambda p: -int(p.suffix[1:] if p.suffix != ".log" else 0)):
        lines.extend(json.loads(line) for line in path.read_text().splitlines())
    return lines


def test_events_and_log_of_an_earlier_session(tmp_path):
    r = llmunix('run shell "cmd=echo one; echo two"', "run fail message=boom", "wait", home=tmp_path,
                keep_going=True)
    assert r.stdout.splitlines()[:2] == ["001", "002"]

    r = llmunix("events --pid 1 --json", "log 1", "events --type process.failed", "events --tail 1 --json",
                home=tmp_path)
    assert r.returncode == 0, r.stderr
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(r.stdout)
    assert [e["type"] for e in first] == ["process.spawned", "process.started", "process.subprocess",
                                          "process.log", "process.log", "process.completed"]
    rest = r.stdout[end:].lstrip("\n").splitlines()
    assert rest[:2] == ["one", "two"]  # log 1, from the store
    assert rest[2].split() == ["TIME", "PID", "TYPE", "DETAILS"]
    assert rest[3].split()[1:3] == ["002", "process.failed"] and "error=boom" in rest[3]
    last = json.loads("\n".join(rest[4:]))
    assert last[0]["type"] == "shell.command" and last[0]["data"]["command"] == "events --type process.failed"


def test_log_follow_in_a_script_ends_when_the_process_ends(tmp_path):
    r = llmunix('run shell "cmd=for i in 1 2 3; do echo line $i; sleep 0.1; done"', "log 1 --follow", "ps -a",
                home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["001", "line 1", "line 2", "line 3"]
    assert lines[5].split()[:3] == ["001", "shell", "Completed"]  # it ended with the process


def test_events_follow_stops_on_ctrl_c_and_the_script_goes_on(tmp_path):
    env = {**os.environ, "LLMUNIX_HOME": str(tmp_path), "NO_COLOR": "1"}
    commands = ["-c", "run sleep seconds=30", "-c", "events --follow", "-c", "run echo text=after"]
    proc = subprocess.Popen([LLMUNIX, *commands], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = []
        for line in proc.stdout:  # wait (by reading, not sleeping) until it is following
            seen.append(line)
            if "process.started" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert seen[0].strip() == "001" and seen[1].split() == ["TIME", "PID", "TYPE", "DETAILS"]
    assert out.splitlines()[-1] == "002"  # the next command ran
    assert "Traceback" not in err


def test_audit_trail_across_sessions(tmp_path):
    llmunix("run sleep seconds=30", "pause 1", "priority 1 high", "resume 1", "kill 42", "kill 1", "wait 1",
            home=tmp_path, keep_going=True)
    r = llmunix("audit --json", "audit", home=tmp_path)
    assert r.returncode == 0, r.stderr
    records, end = json.JSONDecoder().raw_decode(r.stdout)
    commands = [(a["command"], a["status"]) for a in records if a["kind"] == "command"]
    assert commands == [("run sleep seconds=30", 0), ("pause 1", 0), ("priority 1 high", 0), ("resume 1", 0),
                        ("kill 42", 1), ("kill 1", 0), ("wait 1", 1)]
    actions = [(a["command"], a["target"]) for a in records if a["kind"] == "action"]
    assert actions == [("pause", "001"), ("priority normal -> high", "001"), ("resume", "001"), ("kill", "001")]
    assert all(a["user"] and a["time"] for a in records)
    table = r.stdout[end:].strip().splitlines()
    assert table[0].split() == ["TIME", "USER", "KIND", "TARGET", "STATUS", "COMMAND"]
    assert table[-1].split()[2:] == ["command", "-", "0", "audit", "--json"]


def test_the_log_file_is_json_lines_with_levels_and_pids_and_rotates(tmp_path):
    (tmp_path / "config.toml").write_text('log_level = "debug"\nlog_max_bytes = 4000\nlog_backups = 2\n')
    r = llmunix('run shell "cmd=for i in $(seq 1 60); do echo line $i; done"', "wait", home=tmp_path)
    assert r.returncode == 0, r.stderr
    r = llmunix("set loglevel info", 'run shell "cmd=echo quiet"', "wait", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "llmunix.log.1").exists() and not (tmp_path / "llmunix.log.3").exists()
    for path in tmp_path.glob("llmunix.log*"):
        assert path.stat().st_size < 4000 + 1000
    assert (tmp_path / "llmunix.log").stat().st_mode & 0o777 == 0o600
    lines = log_lines(tmp_path)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line) and line["level"] in LEVELS
    logged = [line for line in lines if line.get("event") == "process.log"]
    assert logged and all(line["level"] == "DEBUG" and line["pid"] == 1 and line["process"] == "shell"
                          for line in logged)
    assert logged[-1]["message"] == "001 shell log: line 60"
    quiet = [line for line in lines if line.get("pid") == 2]
    assert quiet and {line["level"] for line in quiet} == {"INFO"}  # after `set loglevel info`: no DEBUG


KEEPER = textwrap.dedent('''
    import os
    from llmunix import tool

    @tool(idempotent=True)
    def keeper(ctx, api_key: str, record: str) -> str:
        """Append the key it was given to `record`; while `record`.hold exists, wait (to be interrupted)."""
        with open(record, "a") as f:
            f.write(api_key + "\\n")
        ctx.log("working")
        while os.path.exists(record + ".hold"):
            ctx.sleep(0.05)
        return "done"
''')


def test_a_secret_param_is_never_written_where_people_read_but_recover_gets_it(tmp_path):
    home = tmp_path / "home"
    (home / "tools").mkdir(parents=True)
    (home / "tools" / "keeper.py").write_text(KEEPER)
    (home / "config.toml").write_text('log_level = "debug"\n')
    secret = "sk-test-0123456789abcdef"
    record = tmp_path / "received"
    Path(f"{record}.hold").touch()
    first = llmunix(f"run keeper api_key={secret} record={record}", "ps -l 1", "ps --json", "audit", "events --json",
                    home=home)
    assert first.returncode == 0, first.stderr
    assert "interrupted 1 live process(es)" in first.stderr
    Path(f"{record}.hold").unlink()
    record.write_text("")
    second = llmunix("recover", "wait", "ps -a --json", "ps -l 1", "audit --json", "events --json",
                     "events --pid 1 --follow", home=home)
    assert second.returncode == 0, second.stderr
    assert record.read_text() == secret + "\n"  # the recovered run got the real value

    for out in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert secret not in out
    assert '"api_key": "***"' in second.stdout and "api_key=***" in second.stdout
    assert secret not in "".join(p.read_text() for p in home.glob("llmunix.log*"))
    assert any(line.get("event") == "process.spawned" and line["data"]["params"]["api_key"] == "***"
               for line in log_lines(home))
    db = sqlite3.connect(home / "llmunix.db")
    for table in ("events", "audit"):
        assert secret not in json.dumps(db.execute(f"SELECT * FROM {table}").fetchall())
    [(params,)] = db.execute("SELECT params FROM processes WHERE pid=1").fetchall()
    assert json.loads(params)["api_key"] == secret  # kept for recover, in a file only its owner can read
    assert (home / "llmunix.db").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def shell(tmp_path):
    child = spawn_prompt(tmp_path, width=200)
    yield child
    close_prompt(child)


def test_ctrl_c_ends_following_in_the_interactive_shell_and_is_not_a_failure(shell):
    shell.sendline("run sleep seconds=30")
    shell.expect(r"001")
    shell.expect(r"llmunix\$")
    shell.sendline("events --follow --pid 1")
    shell.expect(r"process\.progress")  # live: sleep reports progress as it goes
    shell.sendintr()
    shell.expect(r"llmunix\$")
    shell.sendline("audit --tail 1 --json")
    shell.expect(r'"command": "events --follow --pid 1",\s+"target": null,\s+"status": 0')
    shell.expect(r"llmunix\$")


def test_a_sensitive_message_and_secret_params_are_never_written_to_disk(tmp_path):
    secrets = ["pw-secret-one", "pw-secret-two", "pw-secret-three"]
    r = llmunix("run sleep seconds=30", f"send 1 --sensitive {secrets[0]}", f"send 001 -ps '{secrets[1]} x' -t text",
                f"broadcast news --sensitive {secrets[2]}", "audit", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "send 1 --sensitive ***" in r.stdout and "send 001 -ps *** -t text" in r.stdout
    assert "broadcast news --sensitive ***" in r.stdout
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for secret in secrets:
        assert secret.encode() not in on_disk


def test_the_history_file_never_holds_a_secret(tmp_path):
    import lzma

    from llmunix.kernel import Kernel
    from llmunix.shell import LlmunixShell

    with Kernel(tmp_path, monitor=False) as k, open(os.devnull, "w") as devnull:
        shell = LlmunixShell(k, interactive=True, home=tmp_path, stdout=devnull)
        for line in ("run sleep seconds=30", "send 1 --sensitive pw-hist-one", "run sleep seconds=1 api_key=pw-hist-2",
                     "send 1 hello"):
            shell.onecmd_plus_hooks(line)
        shell._persist_history()
        k.kill(1)
    history = lzma.decompress((tmp_path / "history").read_bytes()).decode()
    assert "pw-hist" not in history and "send 1 --sensitive ***" in history and "send 1 hello" in history
