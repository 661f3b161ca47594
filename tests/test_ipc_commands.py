"""The communication commands through the cmd2 app (send, broadcast, mailbox, locks, shared, bus,
the deadlock_policy setting) and end to end with `llmunix -c`."""

from __future__ import annotations

import json
import threading

from conftest import _wait_until
from test_e2e_cli import llmunix

from llmunix import ProcessContext


def parked(gate: threading.Event):
    def park(ctx: ProcessContext) -> None:
        while not gate.is_set():
            ctx.sleep(0.01)

    return park


def test_send_then_mailbox_lists_messages_and_hides_sensitive_bodies(sh):
    gate = threading.Event()
    pid = sh.kernel.spawn(parked(gate))
    assert sh.ok("send 1 hello there").strip() == "sent 1.1 to 001 (text)"
    assert sh.ok("send 1 '{\"job\": 7}' --persistent").strip() == "sent 1.2 to 001 (json, persistent)"
    sh.ok("send 1 --sensitive top-secret-value")
    out = sh.ok("mailbox 1")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "FROM", "TYPE", "TOPIC", "AGE", "STATE", "FLAGS", "BODY"]
    assert lines[1].split()[:3] == ["1.1", "shell", "text"] and lines[1].endswith('"hello there"')
    assert lines[2].split()[6:] == ["P", '{"job":7}']
    assert lines[3].split()[6:] == ["S", "<sensitive>"] and "top-secret-value" not in out
    records = json.loads(sh.ok("mailbox 1 --json"))
    assert [r["type"] for r in records] == ["text", "json", "text"] and records[2]["body"] == "<sensitive>"
    gate.set()
    sh.kernel.wait([pid], timeout=10)
    assert sh.ok("mailbox 1").strip() == " ".join(["ID", "FROM", "TYPE", "TOPIC", "AGE", "STATE", "FLAGS", "BODY"])\
        .replace(" ", "  ")


def test_send_and_mailbox_refuse_bad_input_in_one_line(sh):
    assert sh.bad("send abc hi") == "send: bad PID 'abc'; PIDs are numbers such as 003 (see `ps`)"
    assert sh.bad("send 42 hi") == "send: no process 042; `ps -a` lists them"
    assert sh.bad("mailbox 42") == "mailbox: no process 042; `ps -a` lists them"
    assert sh.bad("send 1") == "send: no message; give it after the PID (JSON or text) or with --file"
    gate = threading.Event()
    sh.kernel.spawn(parked(gate))
    assert sh.bad("send 1 x --type nope") == ("send: unknown message type 'nope'; "
                                              "register_message_type('nope', schema) first")
    gate.set()


def test_a_secret_given_with_file_stays_out_of_the_audit_trail_and_the_output(sh, tmp_path):
    pid = int(sh.ok("run inbox delay=0.3").strip())
    secret = tmp_path / "secret.txt"
    secret.write_text("sk-live-0000-secret-value\n")
    sh.ok(f"send {pid} --persistent --sensitive --file {secret}")
    assert sh.bad("send 1 x --file nowhere.txt") == ("send: give the message on the command line or with --file, "
                                                    "not both")
    assert sh.bad("send 1 --file nowhere.txt").startswith("send: cannot read the message from nowhere.txt: ")
    sh.ok(f"wait {pid} --timeout 10")
    assert sh.kernel.info(pid).output == ["<sensitive>"]
    sh.kernel.flush()
    raw = b"".join(p.read_bytes() for p in sh.kernel.home.glob("llmunix.db*"))
    assert b"secret.txt" in raw and b"sk-live-0000-secret-value" not in raw


def test_broadcast_reaches_inbox_listeners(sh, wait_until):
    pid = int(sh.ok("run inbox count=1 topic=news.*").strip())
    wait_until(lambda: "waiting for a message" in sh.kernel.info(pid).detail)
    assert sh.ok("broadcast news.weather sunny").strip() == "sent to 1 process(es): 001"
    assert sh.ok("broadcast sport goal").strip() == "no live process listens to 'sport'"
    sh.ok("wait 1 --timeout 10")
    assert "from the shell (text, topic news.weather): 'sunny'" in sh.ok("log 1")


def test_locks_shows_holders_waiters_and_a_deadlock(sh):
    assert sh.ok("locks").strip() == "NAME  KIND  STATE  HOLDERS  WAITERS"
    sh.ok("run hold-locks names=a,b seconds=0.1 step=0.2")
    sh.ok("run hold-locks names=b,a seconds=0.1 step=0.2")
    _wait_until(lambda: sh.kernel.locks().deadlocks, message="the deadlock")
    lines = sh.ok("locks").splitlines()
    assert lines[1].split()[:4] == ["a", "mutex", "held", "001"] and lines[1].split()[4] == "002"
    assert lines[2].split()[:4] == ["b", "mutex", "held", "002"] and lines[2].split()[4] == "001"
    assert lines[3].startswith("deadlock 1: ") and lines[3].endswith("[unresolved (policy: report)]")
    data = json.loads(sh.ok("locks --json"))
    assert data["deadlock_policy"] == "report" and sorted(data["deadlocks"][0]["members"]) == ["001", "002"]
    assert "deadlocked: " in sh.ok("ps -l 2")
    sh.ok("kill 2")
    sh.ok("wait 1 --timeout 10")
    assert sh.ok("locks").splitlines()[-1].endswith("[resolved: 002 killed while waiting]")


def test_deadlock_policy_is_a_setting(sh):
    sh.ok("set deadlock_policy kill-lowest")
    assert sh.kernel.deadlock_policy == "kill-lowest"
    assert "deadlock_policy" in sh.ok("set deadlock_policy")
    sh.run("set deadlock_policy never")
    assert sh.kernel.deadlock_policy == "kill-lowest"


def test_shared_lists_sets_shows_one_key_and_buffers(sh):
    assert sh.ok("shared").strip() == "KEY  VERSION  WRITER  AGE  VALUE"
    sh.ok("shared config --set '{\"depth\": 2}'")
    sh.ok("shared results/a --set 1")
    sh.ok("shared results/b --set two words")
    lines = sh.ok("shared 'results/*'").splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [["results/a", "1", "shell"], ["results/b", "1", "shell"]]
    assert lines[2].endswith('"two words"')
    assert sh.ok("shared config").splitlines()[1:] == ["{", '  "depth": 2', "}"]
    assert json.loads(sh.ok("shared config --json"))["value"] == {"depth": 2}
    assert [e["key"] for e in json.loads(sh.ok("shared --json"))] == ["config", "results/a", "results/b"]
    assert sh.bad("shared nope") == "shared: no shared key 'nope'; `shared` lists them"
    assert sh.bad("shared --set 1") == "shared: --set needs a KEY, e.g. shared config --set 42"
    assert sh.ok("shared --buffers").strip() == "NAME  SIZE  USERS  PATH"
    assert json.loads(sh.ok("shared --buffers --json")) == []


def test_bus_lists_subscriptions_with_their_drops(sh):
    sh.kernel.subscribe("process.*", lambda e: None)
    out = sh.ok("bus")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "PATTERN", "PID", "MODE", "QUEUED", "MAX", "DELIVERED", "DROPPED",
                                "COALESCED", "CALLBACK"]
    modes = {line.split()[1]: line.split()[3] for line in lines[1:-1]}
    assert modes["*"] == "inline" and modes["process.*"] == "queued"  # the store, then ours
    assert lines[-1].endswith("dropped")
    data = json.loads(sh.ok("bus --json"))
    assert data["dropped"] == 0 and any(s["pattern"] == "process.*" for s in data["subscriptions"])


def test_e2e_messages_map_reduce_and_deadlock_policy_from_the_config(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('deadlock_policy = "kill-lowest"\n')
    r = llmunix("-c", "run inbox count=2", "-c", "send 1 hello", "-c", """send 1 '{"n": 2}'""", "-c", "wait",
                "-c", "log 1", "-c", "run wordcount 'text=b a b c b a' chunks=3 parallel=2", "-c", "wait",
                "-c", "ps --json 2",
                "-c", "run hold-locks names=x,y seconds=0.2 step=0.3",
                "-c", "run hold-locks names=y,x seconds=0.2 step=0.3 --priority low", "-k", "-c", "wait -t 20",
                "-c", "ps -a", "-c", "locks", home=home)
    assert r.returncode == 1, r.stderr  # the deadlock's victim did not complete: `wait` says so
    assert "1.1 from the shell (text): 'hello'" in r.stdout and "1.2 from the shell (json): {'n': 2}" in r.stdout
    record = json.loads(r.stdout[r.stdout.index("[\n"):r.stdout.index("\n]") + 2])
    assert record[0]["output"] == {"b": 3, "a": 2, "c": 1}
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line[:3].isdigit()}
    victim = max(p for p in rows if rows[p][1] == "hold-locks")
    assert rows[victim][2] == "Cancelled" and rows[f"{int(victim) - 1:03d}"][2] == "Completed"
    assert f"killed {victim}" not in r.stdout  # nobody typed kill: the policy did
    assert "[resolved: " in r.stdout and "wait: 1 of" in r.stderr


def test_a_deadlock_becomes_a_shell_alert(sh):
    import time

    from llmunix import Event

    data = {"summary": "001 -> 002 -> 001: 001 waits for mutex b (held by 002); 002 waits for mutex a (held by 001)",
            "victim": "002"}
    sh.shell._alert(Event(1, time.time(), "ipc.deadlock", None, data))
    text = sh.shell._alert_queue[-1].msg.plain
    assert text == f"deadlock {data['summary']}; killing 002 (lowest priority)"


def test_the_rich_views_render_on_a_terminal(kernel, capsys):
    from conftest import Session

    tty = Session(kernel, capsys, tty=True)
    gate = threading.Event()
    pid = kernel.spawn(parked(gate))
    tty.ok(f"send {pid} hello")
    tty.ok("shared k --set 1")
    assert "hello" in tty.ok(f"mailbox {pid}")
    assert "no locks" in tty.ok("locks")
    assert "k" in tty.ok("shared") and "no shared buffers" in tty.ok("shared --buffers")
    assert "1 subscription, 0 dropped" in tty.ok("bus")
    gate.set()
    kernel.wait([pid], timeout=10)
    assert "no messages waiting for 001" in tty.ok(f"mailbox {pid}")
