"""`llmunix serve` and attached clients, end to end: the real executable, a real daemon, real
sockets and terminals. One daemon serves most of this module (`served`); the tests that kill,
restart or race daemons make their own. No daemon outlives the module (`_no_daemon_left`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from conftest import LLMUNIX, PROMPT, WAIT, _wait_until
from daemon_support import Served, alive, launcher_for, no_daemon_left

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _no_daemon_left() -> Iterator[None]:
    yield
    left = no_daemon_left()
    assert not left, f"daemons outlived their tests: {left}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("served")
    # The runtime directory others may traverse (as /run/user/UID is), so that a process of
    # another user can be shown the door by the socket's own directory, then by the daemon;
    # the test's tmp_path is private to us.
    runtime = Path(f"/tmp/llmunix-test-run-{os.getpid()}")
    runtime.mkdir(mode=0o711)
    runtime.chmod(0o711)
    s = Served(base / "home", runtime)
    try:
        s.start()
        yield s
        s.stop()
        assert not s.alive()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def own_daemon(tmp_path: Path) -> Served:
    return Served(tmp_path / "home", tmp_path / "run")


def state_of(served: Served, pid: str) -> str:
    [info] = json.loads(served.run("-c", f"ps {pid} --json").stdout)
    return info["state"]


def pids_of(text: str) -> list[str]:
    return re.findall(r"^(\d{3,})$", text, re.M)


def attached_prompt(served: Served, cwd: str | Path | None = None, width: int = 120) -> pexpect.spawn:
    env = {**served.env, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    child = pexpect.spawn(LLMUNIX, env=env, encoding="utf-8", timeout=20, dimensions=(40, width),
                          cwd=str(cwd) if cwd else None)
    child.expect("attached to the daemon")
    child.expect(PROMPT)
    return child


def leave(child: pexpect.spawn) -> None:
    if child.isalive():
        child.sendline("quit")
        try:
            child.expect(pexpect.EOF, timeout=10)
        except pexpect.TIMEOUT:
            child.terminate(force=True)
    child.close()


# ---------------------------------------------------------------------- attaching, exactly as embedded


def test_commands_run_in_the_daemon_and_keep_running_after_the_client(served: Served) -> None:
    done = served.run("-c", "run sleep seconds=0.3", "-c", "ps")
    assert done.returncode == 0, done.stderr
    [pid] = pids_of(done.stdout)
    assert "sleep" in done.stdout and done.stderr == ""
    # The client has gone; the process has not: it ends Completed in the daemon.
    done = served.run("-c", f"wait {pid}")
    assert done.returncode == 0 and f"[{pid}] sleep completed" in done.stdout


def test_a_wait_in_a_client_that_started_nothing_waits_for_every_live_process(tmp_path: Path) -> None:
    # `llmunix -c 'run build'` then `llmunix -c wait` are two clients: the second one's `wait`
    # returned at once, exit 0, while the first one's process still ran.
    served = own_daemon(tmp_path)
    try:
        assert served.start().returncode == 0
        started = served.run("-c", "run sleep seconds=1 --name build")
        [pid] = pids_of(started.stdout)
        waited = served.run("-c", "wait")
        assert waited.returncode == 0, waited.stderr
        assert f"[{pid}] build completed" in waited.stdout
        assert state_of(served, pid) == "completed"
        # A client that started something waits for its own only (the other one's runs on).
        other = served.run("-c", "run sleep seconds=30 --name long")
        [long_pid] = pids_of(other.stdout)
        mine = served.run("-c", "run echo text=x", "-c", "wait")
        assert mine.returncode == 0 and "echo completed" in mine.stdout
        assert state_of(served, long_pid) == "running"
    finally:
        served.stop()


def test_the_thin_client_imports_no_engine_and_no_terminal_library(served: Served) -> None:
    probe = (f"import sys, json\nsys.path.insert(0, {str(ROOT)!r})\nfrom llmunix.cli import main\n"
             "status = main(['-c', 'ps'])\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('cmd2', 'rich', 'pydantic', 'psutil', 'prompt_toolkit', 'networkx', 'yaml') "
             "or m in ('llmunix.kernel', 'llmunix.models', 'llmunix.shell', 'llmunix.config', 'commands'))\n"
             "sys.stderr.write(json.dumps({'status': status, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=served.env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"status": 0, "heavy": []}
    assert done.stdout.startswith("PID  TOOL")


GOLDEN = ["ps -a", "ps -a --json", "tools", "help", "help run", "run -h", "log 1", "ps -l 2", "set",
          "kill 99", "nosuch", "wait 1", "ps 1 --json", "agents", "audit --help"]
FAILING = ["wait 2"]  # (2: the process that failed; kill 99 and nosuch fail the -k run and the script)


def test_outputs_and_exit_statuses_are_byte_identical_to_embedded_piped(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    first = served.run("-c", "run echo text=hello --name [bold]hi[/bold]", "-c", "run fail message=boom",
                       "-c", "wait")
    assert first.returncode == 1, first.stderr  # (embedded: a failed process fails the wait)
    script = tmp_path / "jobs.llmunix"
    script.write_text("ps -a\nkill 99\n# a comment\nps\n")
    # Every golden command in one -k run (an embedded start costs a second), `wait` of a failed
    # process on its own, and the script and stdin forms.
    runs = {"-k GOLDEN": ["-k", *(arg for cmd in GOLDEN for arg in ("-c", cmd))],
            **{cmd: ["-c", cmd] for cmd in FAILING},
            "FILE": [str(script)], "-k FILE": ["-k", str(script)]}
    stdin = {"stdin": ([], "tools\nkill 77\nps\n"), "-k stdin": (["-k"], "kill 5\nps -a\n")}

    def outputs() -> dict[str, subprocess.CompletedProcess[str]]:
        return {**{name: served.run(*args) for name, args in runs.items()},
                **{name: served.run(*args, input=text) for name, (args, text) in stdin.items()}}

    embedded = outputs()
    served.start()
    try:
        attached = outputs()
    finally:
        served.stop()
    for name, e in embedded.items():
        a = attached[name]
        assert (a.stdout, a.stderr, a.returncode) == (e.stdout, e.stderr, e.returncode), name
    assert [embedded[name].returncode for name in ("-k GOLDEN", *FAILING, "FILE", "-k FILE")] == [1, 1, 1, 1]
    assert "jobs.llmunix:2: kill: no process 099" in attached["FILE"].stderr


def pty_output(served: Served, *args: str) -> tuple[bytes, int]:
    env = {**served.env, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(LLMUNIX, list(args), env=env, dimensions=(30, 97))
    out = child.read()
    child.close()
    return out, child.exitstatus


def test_outputs_are_byte_identical_to_embedded_on_a_terminal(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    served.run("-c", "run echo text=hello --name [bold]hi[/bold]", "-c", "run fail message=boom", "-c", "wait")
    commands = ["ps -a", "tools", "help", "ps -l 2", "kill 99", "set", "run -h"]
    runs = [["-k", *(arg for cmd in commands for arg in ("-c", cmd))], ["-c", "kill 99"]]
    embedded = [pty_output(served, *args) for args in runs]
    served.start()
    try:
        attached = [pty_output(served, *args) for args in runs]
    finally:
        served.stop()
    assert attached == embedded
    assert b"\x1b[" in attached[0][0]  # (a terminal: colours, a table)
    assert b"[bold]hi[/bold]" in attached[0][0]  # (a name is never rich markup)
    assert embedded[1][1] == 1


def test_pipes_redirection_and_shell_escapes_happen_in_the_client(served: Served, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    done = served.run("-c", "run shell 'cmd=pwd'", "-c", "wait", "-c", "ps -a | grep -c shell",
                      "-c", "ps -a > listing.txt", "-c", "!pwd", "-c", "tools >> listing.txt", cwd=work)
    assert done.returncode == 0, done.stderr
    [pid] = pids_of(done.stdout)[:1]
    lines = done.stdout.splitlines()
    assert str(work) in lines  # `!pwd`: run by the client, in its directory
    assert (work / "listing.txt").read_text().startswith("PID  TOOL")  # a file of the client's
    assert "TOOL" in (work / "listing.txt").read_text().split("\n", 2)[-1]  # appended
    log = served.run("-c", f"log {pid}")
    assert log.stdout.strip() == str(work)  # `run` starts the process in the client's directory
    bad = served.run("-c", "ps > /nonexistent/dir/out.txt")
    assert bad.returncode == 1
    assert bad.stderr == "ps: cannot write /nonexistent/dir/out.txt: No such file or directory\n"


def test_stdin_lines_are_read_as_a_shell_would(served: Served) -> None:
    # A command that reads stdin itself gets what follows it, as embedded.
    target = served.run("-c", "run sleep seconds=30 --name inbox")
    [pid] = pids_of(target.stdout)
    try:
        done = served.run(input=f"send {pid} -\n")
        assert done.returncode == 0, done.stderr
    finally:
        served.run("-c", f"kill {pid}")


def test_a_daemon_owned_home_refuses_engine_options_with_one_line(served: Served) -> None:
    done = served.run("--max-running", "3", "-c", "ps")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "llmunix serve" in done.stderr


# ---------------------------------------------------------------------- interactive, many shells


def test_work_outlives_the_terminal_that_started_it(served: Served) -> None:
    child = attached_prompt(served)
    child.sendline("run sleep seconds=2")
    child.expect(r"(\d{3,})\r\n")
    pid = child.match.group(1)
    child.expect(PROMPT)
    child.close(force=True)  # the terminal goes away (SIGHUP, then SIGKILL)
    done = served.run("-c", f"wait {pid}")
    assert done.returncode == 0, done.stderr
    assert state_of(served, pid) == "completed"
    events = served.run("-c", f"events {pid} --json")
    assert "interrupted" not in events.stdout


def test_every_attached_shell_sees_every_alert_exactly_once(served: Served) -> None:
    import io

    shells = [attached_prompt(served) for _ in range(3)]
    transcripts = []
    for child in shells:
        transcripts.append(io.StringIO())
        child.logfile_read = transcripts[-1]
    try:
        done = served.run(*[a for i in range(10) for a in ("-c", f"run echo text={i} --name ping{i}")], "-c", "wait")
        pids = pids_of(done.stdout)
        assert len(pids) == 10
        for child, transcript in zip(shells, transcripts, strict=True):
            _wait_until(lambda t=transcript, c=child: _drain(c) or all(f"[{p}]" in t.getvalue() for p in pids),
                        message="every alert in every shell")
            child.sendline("ps")  # one more round trip: a duplicate would have come by its end
            child.expect(PROMPT)
            child.expect(PROMPT)
            text = transcript.getvalue()
            assert [text.count(f"[{pid}]") for pid in pids] == [1] * 10
    finally:
        for child in shells:
            leave(child)


def _drain(child: pexpect.spawn) -> None:
    try:
        child.read_nonblocking(65536, timeout=0.05)
    except (pexpect.TIMEOUT, pexpect.EOF):
        pass


def test_quit_detaches_and_the_prompt_completes_from_the_daemon(served: Served) -> None:
    child = attached_prompt(served)
    try:
        child.send("wai\t")
        child.expect("wait")
        child.sendline("")
        child.expect(PROMPT)
        child.sendline("run sleep seconds=30 --name keeps-going")
        child.expect(r"(\d{3,})\r\n")
        pid = child.match.group(1)
        child.expect(PROMPT)
        child.sendline("quit")  # no question: the daemon keeps its processes
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        done = served.run("-c", f"ps {pid}")
        assert "keeps-going" in done.stdout and "Running" in done.stdout
    finally:
        served.run("-c", f"kill {pid}")
        if child.isalive():
            child.terminate(force=True)


def test_top_debug_prompts_and_ctrl_c_work_attached(served: Served) -> None:
    child = attached_prompt(served, width=100)
    pid = ""
    try:
        child.sendline("run sleep seconds=60 --name longnap")
        child.expect(r"(\d{3,})\r\n")
        pid = child.match.group(1)
        child.expect(PROMPT)
        child.sendline("top")  # drawn in the daemon, keys read here
        child.expect("longnap")
        child.send("/longnap\r")  # (only it: top may select a row of a process that has just ended)
        child.expect("longnap")
        child.send("p")  # pause the selected process from top
        child.expect(r"paus(ed|ing) \d{3}")  # (its status line)
        child.send("q")
        child.expect(PROMPT)
        _wait_until(lambda: state_of(served, pid) == "paused", message="top's pause to take hold")
        child.sendline(f"resume {pid}")
        child.expect(PROMPT)
        child.sendline(f"debug {pid}")  # the debug(PID)> prompt is asked of this terminal
        child.expect(r"debug\(\d+\)>")
        child.send("wher\t")  # completed by the daemon against the prompt's own parser
        child.expect("e")
        child.sendline("")
        child.expect(r"debug\(\d+\)>")
        child.sendline("quit")
        child.expect(PROMPT)
        child.sendline(f"wait {pid}")  # progress bars; Ctrl-C interrupts the wait in the daemon
        child.expect("longnap")
        child.sendcontrol("c")
        child.expect("stopped waiting")
        child.expect(PROMPT)
        assert "Running" in served.run("-c", f"ps {pid}").stdout  # the process goes on
    finally:
        if pid:
            served.run("-c", f"kill {pid}")
        leave(child)


def test_the_debugger_steps_attached_after_other_commands(served: Served) -> None:
    # Each attached command ends by dropping a Ctrl-C that came too late; cleared with
    # PyThreadState_SetAsyncExc(id, NULL), CPython 3.11's "pending" flag stayed up and the next
    # debugger step spun for ever holding the GIL: the whole daemon froze.
    [pid] = pids_of(served.run("-c", "run sleep seconds=60 --name stepme").stdout)
    try:
        assert served.run("-c", f"debug {pid} break --when 'step >= 1'").returncode == 0
        _wait_until(lambda: state_of(served, pid) == "paused", message="the breakpoint to stop it")
        for _ in range(2):
            done = served.run("-c", f"debug {pid} step", timeout=WAIT * 3)
            assert done.returncode == 0 and "Stopped at builtin.py:" in done.stdout, done.stdout + done.stderr
    finally:
        served.run("-c", f"kill {pid}")


def test_eight_clients_at_once_start_four_hundred_processes(served: Served) -> None:
    args = [a for i in range(50) for a in ("-c", f"run echo text={i}")] + ["-c", "wait"]
    procs = [subprocess.Popen([LLMUNIX, *args], env=served.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    pids = [pid for out, _ in outs for pid in pids_of(out)]
    assert len(pids) == 400 and len(set(pids)) == 400
    listing = served.run("-c", "ps -a --json")
    states = {f"{int(p['pid']):03d}": p["state"] for p in json.loads(listing.stdout)}
    assert {states[pid] for pid in pids} == {"completed"}


# ---------------------------------------------------------------------- a client that never reads


def test_a_client_that_never_reads_does_not_hold_the_engine_up(served: Served) -> None:
    from llmunix.daemon.protocol import PROTOCOL, Channel

    record = served.record()
    assert record is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(record["socket"])
    channel = Channel(sock)
    channel.send({"t": "hello", "proto": PROTOCOL, "version": "test", "token": record["token"], "mode": "shell",
                  "pid": os.getpid(), "cwd": "/", "tty": {"in": True, "out": True, "err": True},
                  "size": [80, 24], "env": {}})
    for _ in range(40):  # output it never reads: its socket fills, and every send to it blocks
        channel.send({"t": "cmd", "text": "help -v"})
    try:
        rss_before = _rss_mb(served.pid)
        # Alerts for 1,500 ends go to a client that reads none of them.
        script = "".join(f"run echo text={i}\n" for i in range(1500)) + "wait\n"
        done = served.run(input=script, timeout=180)
        assert done.returncode == 0, done.stderr[-500:]
        assert len(pids_of(done.stdout)) == 1500
        assert _rss_mb(served.pid) - rss_before < 50
        assert served.run("-c", "ps").returncode == 0  # still answering
    finally:
        sock.close()


def _rss_mb(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------------- who may connect


def test_the_socket_is_private_and_strangers_are_refused_quickly(served: Served) -> None:
    from llmunix.daemon.protocol import PROTOCOL, Channel

    record = served.record()
    assert record is not None
    path = Path(record["socket"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.parent.stat().st_uid == os.getuid()
    assert stat.S_IMODE((served.home / "daemon.json").stat().st_mode) == 0o600

    # A wrong token: refused, in one line, at once.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    channel = Channel(sock)
    channel.send({"t": "hello", "proto": PROTOCOL, "version": "x", "token": "0" * 64, "mode": "run"})
    reply = channel.recv(deadline=time.monotonic() + WAIT)
    assert reply is not None and reply["t"] == "refused" and reply["why"] == "token"
    assert channel.recv(deadline=time.monotonic() + WAIT) is None  # and closed
    channel.close()

    # Silence: cut off after the hello's time limit, having said nothing.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(WAIT)
    assert sock.recv(100) == b""
    sock.close()


def test_a_huge_unauthenticated_line_is_cut_off_without_costing_memory(served: Served) -> None:
    record = served.record()
    assert record is not None
    before = _rss_mb(served.pid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(record["socket"])
    sock.settimeout(WAIT)
    chunk = b"x" * (1 << 20)
    sent = 0
    with pytest.raises(OSError):  # the daemon closes the connection long before 100 MB
        while sent < 100 * (1 << 20):
            sock.sendall(chunk)
            sent += len(chunk)
    sock.close()
    assert sent < 100 * (1 << 20)
    assert _rss_mb(served.pid) - before < 10


@pytest.mark.skipif(os.getuid() != 0, reason="acting as another user needs root")
def test_a_process_of_another_user_is_refused(served: Served) -> None:
    record = served.record()
    assert record is not None
    path = Path(record["socket"])
    probe = ("import socket, os, sys\nos.setgid(65534); os.setuid(65534)\n"
             "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('connect', e.errno); sys.exit(0)\n"
             "s.settimeout(10)\ntry:\n    s.sendall(b'{\"t\":\"hello\"}\\n'); print('read', s.recv(100))\n"
             "except OSError as e:\n    print('closed', e.errno)\n")
    # Layer one: the socket's directory (0700) keeps them out.
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "connect 13"  # EACCES
    # Layer two, the directory and socket opened up for the test: the uid check closes it unanswered.
    try:
        path.parent.chmod(0o711)
        path.chmod(0o666)
        done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=30)
        assert done.stdout.strip() in ("read b''", "closed 104", "closed 32"), done.stdout + done.stderr
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)


def test_the_socket_is_private_from_the_moment_it_is_bound(tmp_path: Path) -> None:
    from llmunix.daemon.protocol import bind_private

    old = os.umask(0)  # the most permissive umask a daemon could inherit
    try:
        sock = bind_private(tmp_path / "s.sock")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE((tmp_path / "s.sock").stat().st_mode) == 0o600
    finally:
        sock.close()


# ---------------------------------------------------------------------- starting, stopping, dying


def test_two_daemons_started_at_once_make_one(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    procs = [subprocess.Popen([LLMUNIX, "serve", "-d"], env=served.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=90), p.stderr.read()) for p in procs]
    try:
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        served.note_pid()
        loser = next(err for code, err in results if code == 2)
        assert len(loser.strip().splitlines()) == 1
        assert f"pid {served.pid}" in loser
    finally:
        served.stop()


def test_a_home_held_by_a_shell_is_not_taken_by_a_daemon(tmp_path: Path) -> None:
    """The home's lock held by a program that is not a daemon (this test, as a shell would hold
    it): `serve` says who holds it and that it is not a daemon, once, and exits 2."""
    from llmunix.home import HomeLock

    served = own_daemon(tmp_path)
    served.home.mkdir(parents=True)
    lock = HomeLock(served.home)
    lock.acquire()
    try:
        done = subprocess.run([LLMUNIX, "serve", "-d"], env=served.env, capture_output=True, text=True,
                              timeout=60)
    finally:
        lock.release()
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        f"llmunix: {served.home} is in use by llmunix pid {os.getpid()} (a shell or a script); quit it "
        "first, then start the daemon"], done.stderr


def test_a_killed_daemon_ends_its_clients_and_everything_it_started(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    served.start()
    marker = tmp_path / "child.pid"
    child = attached_prompt(served)  # (first: an interactive client is the slowest to start)
    try:
        done = served.run("-c", "run sleep seconds=3 --name resumable",
                          "-c", f"run shell 'cmd=echo $$ > {marker}; exec sleep 300'")
        resumable, shell_pid = pids_of(done.stdout)
        _wait_until(lambda: marker.exists() and marker.read_text().strip(), message="the shell tool to start")
        child_pid = int(marker.read_text())
        _wait_until(lambda: _progress(served, resumable) >= 10, message="the resumable process to checkpoint")
        waiter = subprocess.Popen([LLMUNIX, "-c", f"ps {resumable}", "-c", f"wait {resumable}"], env=served.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiter.stdout is not None
        assert waiter.stdout.readline().startswith("PID")  # (attached: it is waiting in the daemon)
        assert _progress(served, resumable) < 100
        served.kill()
        child.expect(pexpect.EOF, timeout=WAIT)
        child.close()
        assert child.exitstatus == 1 and "has gone away" in child.before
        out, err = waiter.communicate(timeout=WAIT)
        assert waiter.returncode == 1
        assert "has gone away" in err and "serve -d --recover" in err and len(err.splitlines()) == 1
        # Nothing the daemon started survives it (the guardian).
        _wait_until(lambda: not alive(child_pid), message="the shell tool's command to die with the daemon")
        # The next serve needs no cleanup, and --recover continues the checkpointed process.
        served.start("--recover")
        done = served.run("-c", f"wait {resumable}")
        assert done.returncode == 0, done.stderr
        assert state_of(served, resumable) == "completed"
    finally:
        if child.isalive():
            child.terminate(force=True)
        served.stop()


def _progress(served: Served, pid: str) -> float:
    [info] = json.loads(served.run("-c", f"ps {pid} --json").stdout)
    return info["progress"]["percentage"] or 0.0


def test_stop_and_restart(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    assert served.serve("--stop").returncode == 1  # nothing to stop: said in one line
    served.start()
    gate = tmp_path / "gate"
    started: list[subprocess.Popen[str]] = []
    try:
        first = served.pid
        done = served.run("-c", "run sleep seconds=2 --name across")
        [pid] = pids_of(done.stdout)
        # The restarted daemon loads a tool file that waits for `gate` to go: a client started
        # meanwhile finds the home held by a daemon that is starting, and must wait, then attach
        # (not open the home read-only, where `wait` would not see the process finish).
        gate.touch()
        (served.home / "tools").mkdir(mode=0o700)
        (served.home / "tools" / "gate.py").write_text(
            f"import os, time\nwhile os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n")
        restart = subprocess.Popen([LLMUNIX, "serve", "--restart"], env=served.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(restart)
        _wait_until(lambda: (served.record() or {}).get("state") == "starting",
                    message="the daemon's record to say it is starting")
        client = subprocess.Popen([LLMUNIX, "-c", f"wait {pid}"], env=served.env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(client)
        assert client.stderr is not None
        assert "is starting; waiting for it" in client.stderr.readline()
        gate.unlink()
        _, err = client.communicate(timeout=WAIT * 3)
        assert client.returncode == 0, err  # interrupted by the restart, recovered, completed
        assert "read-only" not in err
        _, said = restart.communicate(timeout=90)
        assert restart.returncode == 0 and said.startswith("llmunix: restarted the daemon"), said
        assert served.note_pid() == first  # in place: the same process (systemd keeps following it)
        assert state_of(served, pid) == "completed"
        stopped = served.serve("--stop")
        assert stopped.returncode == 0 and not served.alive()
        assert served.run("-c", "ps").returncode == 0  # no daemon: embedded again
    finally:
        gate.unlink(missing_ok=True)
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        served.stop()


# ---------------------------------------------------------------------- versions


def copy_checkout(dest: Path, edit: tuple[str, str, str]) -> str:
    """A copy of this checkout with one line changed (another version of llmunix) and a launcher."""
    for name in ("llmunix", "commands"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    path = dest / edit[0]
    text = path.read_text()
    assert edit[1] in text
    path.write_text(text.replace(edit[1], edit[2]))
    return launcher_for(dest)


def test_another_protocol_is_refused_with_the_restart_hint(served: Served, tmp_path: Path) -> None:
    from llmunix.daemon.protocol import PROTOCOL

    # A client of protocol N+1 (the package was upgraded) against the daemon of protocol N.
    newer = copy_checkout(tmp_path / "newer", ("llmunix/daemon/protocol.py", f"PROTOCOL = {PROTOCOL}\n",
                                               f"PROTOCOL = {PROTOCOL + 1}\n"))
    done = served.run("-c", "ps", launcher=newer)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert f"(protocol {PROTOCOL})" in done.stderr and f"(protocol {PROTOCOL + 1})" in done.stderr
    assert "restart it to use this version: llmunix serve --restart" in done.stderr


def test_another_version_under_the_same_protocol_is_one_note_on_stderr(served: Served, tmp_path: Path) -> None:
    other = copy_checkout(tmp_path / "other", ("llmunix/__init__.py", '__version__ = "', '__version__ = "9.9.'))
    done = served.run("-c", "ps -a --json", launcher=other)
    assert done.returncode == 0
    json.loads(done.stdout)  # stdout untouched
    assert len(done.stderr.splitlines()) == 1 and "this is 9.9." in done.stderr


# ---------------------------------------------------------------------- systemd


def test_the_daemon_speaks_systemds_notify_protocol(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(WAIT)
    proc = subprocess.Popen([LLMUNIX, "serve"], env={**served.env, "NOTIFY_SOCKET": str(tmp_path / "notify")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        message = notify.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.pid}" in message
        served.note_pid()
        assert served.run("-c", "ps").returncode == 0
        proc.send_signal(signal.SIGTERM)  # what systemd sends first (KillMode=mixed: to the daemon alone)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        notify.close()


def test_the_printed_unit_is_valid_and_runs_where_systemd_does(tmp_path: Path) -> None:
    served = own_daemon(tmp_path)
    done = served.serve("--print-unit")
    assert done.returncode == 0
    unit = done.stdout
    assert "Type=notify" in unit and "KillMode=mixed" in unit and "loginctl enable-linger" in unit
    path = tmp_path / "llmunix-test.service"
    path.write_text(unit)
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    if not shutil.which("systemctl") or subprocess.run(["systemctl", "--user", "show-environment"],
                                                       capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no systemd user instance here (systemctl --user cannot reach one); the unit was verified "
                    "and the notify protocol is tested above")
    unit_dir = Path.home() / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    name = f"llmunix-test-{os.getpid()}.service"
    (unit_dir / name).write_text(unit)
    try:
        subprocess.run(["systemctl", "--user", "daemon-reload"], check=True, timeout=30)
        subprocess.run(["systemctl", "--user", "start", name], check=True, timeout=30)
        served.note_pid()
        assert served.run("-c", "ps").returncode == 0
        subprocess.run(["systemctl", "--user", "stop", name], check=True, timeout=90)
        assert not served.alive()
    finally:
        subprocess.run(["systemctl", "--user", "stop", name], capture_output=True, timeout=90)
        (unit_dir / name).unlink(missing_ok=True)
        subprocess.run(["systemctl", "--user", "daemon-reload"], capture_output=True, timeout=30)

