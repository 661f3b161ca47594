"""The thin client: `llmunix -c`, scripts and stdin, attached to the daemon. Standard library only.

The daemon runs each command in a shell of this client's own (daemon/session.py) and streams
what it prints back; this side does what must happen here, in this process, with this
process's files, terminal and working directory:

* `out` / `err`       write to stdout (or to the redirection in force) / stderr
* `redirect`          open `> FILE` / `>> FILE` here, or start `| COMMAND` here (with $SHELL, as
                      cmd2 does), and answer whether it worked; `restore` ends it
* `system`            run `!COMMAND` (cmd2's `shell`) here; answer its exit status
* `next`              the next command line from stdin (the daemon asks for each in turn, so a
                      command that reads stdin itself gets what a shell would give it)
* `input` / `read`    a line of input / all of stdin (`send PID -`)
* `keys`              put the terminal in cbreak mode and forward each key (`top`), or stop
* `exit`              the session's exit status; `bye`: the daemon is stopping

A Ctrl-C is forwarded (`intr`): the command running in the daemon is interrupted, as it would be
in an embedded llmunix. If the daemon dies, the socket closes and the client exits 1 at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llmunix.daemon.protocol import (
    PROTOCOL,
    Channel,
    ConnectionLost,
    DaemonError,
    DaemonStopped,
    ProtocolError,
    peer_uid,
    private_dir_problem,
    read_record,
    record_alive,
    say,
    terminal_facts,
    version,
    waiting_state,
)

WELCOME_TIMEOUT = 10.0  # seconds a live daemon has to answer a hello (it may be busy starting)
STARTING_WAIT = 60.0  # seconds a client waits for a daemon that is starting, restarting or stopping
STARTING_NOTE = 1.0  # seconds of that wait before the client says what it waits for
DEAF_WAIT = 2.0  # seconds a live daemon may not answer at its socket before the client says so
PIPE_GRACE = 0.2  # as cmd2: a pipe command that exits this soon could not take the output


def restart_hint(home: Path) -> str:
    return f"llmunix serve --restart{_home_arg(home)}"


def _home_arg(home: Path) -> str:
    import shlex

    return "" if os.environ.get("LLMUNIX_HOME") == str(home) else f" --home {shlex.quote(str(home))}"


def gone_message(pid: Any, home: Path) -> str:
    return (f"the daemon (pid {pid}) has gone away; `llmunix serve -d --recover{_home_arg(home)}` starts it "
            "again and continues what it was running")


# ---------------------------------------------------------------------- connecting


def attach(home: Path, mode: str, **hello: Any) -> Link | None:
    """Connect to the daemon serving `home` and introduce ourselves; None when no daemon serves
    it (no record, or a record a dead daemon left). Raises DaemonError for what the user must
    hear: a daemon that refuses us (another protocol: exit 2), a socket in a directory that is
    not private, a daemon that does not answer.

    A daemon that is starting, restarting in place or stopping holds the home without a socket:
    we wait for it (`_ready_record`), and also when it began to stop just after we read its
    record (the connection refused or closed): the record then says so, or names a new daemon."""
    deadline = time.monotonic() + STARTING_WAIT
    failed: tuple[Any, float] | None = None  # the token nobody answered for, since when
    while True:
        record = _ready_record(home, deadline)
        if record is None or not isinstance(record.get("socket"), str) or not isinstance(record.get("token"), str):
            return None
        link = _attach_to(record, home, mode, hello)
        if link is not None:
            return link
        if not record_alive(record):
            return None  # a record the last daemon left behind: nobody serves this home
        now = time.monotonic()
        if failed is None or failed[0] != record["token"]:
            failed = (record["token"], now)
        elif now - failed[1] >= DEAF_WAIT:
            raise DaemonError(f"the daemon (pid {record.get('pid')}) holds {home} but does not listen at "
                              f"{record['socket']}; `{restart_hint(home)}` restarts it")
        time.sleep(0.02)  # it is stopping: its record says so in a moment


def _attach_to(record: dict[str, Any], home: Path, mode: str, hello: dict[str, Any]) -> Link | None:
    """One try at the daemon `record` names: the link, or None if nobody answered at its socket
    (or it was stopping)."""
    path = Path(record["socket"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fsencode(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        return None
    except OSError as exc:
        sock.close()
        raise DaemonError(f"cannot reach the daemon at {path}: {exc.strerror}") from None
    # The token goes only to a daemon of ours: the socket's directory is private, and the
    # process at the other end runs as us.
    problem = private_dir_problem(path.parent)
    if problem is None and peer_uid(sock) != os.getuid():
        problem = f"the process listening at {path} runs as uid {peer_uid(sock)}"
    if problem:
        sock.close()
        raise DaemonError(f"not attaching to the daemon: {problem}")
    channel = Channel(sock)
    try:
        channel.send({"t": "hello", "proto": PROTOCOL, "version": version(), "token": record["token"],
                      "mode": mode, "pid": os.getpid(), "cwd": _cwd(), **terminal_facts(), **hello})
        reply = channel.recv(deadline=time.monotonic() + WELCOME_TIMEOUT)
    except ProtocolError:
        channel.close()
        raise DaemonError(f"the daemon (pid {record.get('pid')}) does not answer; `{restart_hint(home)}` "
                          "restarts it") from None
    except ConnectionLost:
        reply = None
    if reply is None or reply.get("why") == "stopping":
        channel.close()
        return None
    if reply.get("t") == "refused" or reply.get("proto") != PROTOCOL:
        channel.close()
        if reply.get("why") == "protocol" or reply.get("proto") != PROTOCOL:
            raise DaemonError(f"the daemon (pid {reply.get('pid', record.get('pid'))}) runs llmunix "
                              f"{reply.get('version', '?')} (protocol {reply.get('proto')}), this is llmunix "
                              f"{version()} (protocol {PROTOCOL}); restart it to use this version: "
                              f"{restart_hint(home)}")
        raise DaemonError(f"the daemon refused this client: {reply.get('message', reply.get('why'))}")
    if reply.get("version") != version():
        say(f"note: the daemon (pid {reply.get('pid')}) runs llmunix {reply.get('version')}, this is {version()}; "
            f"`{restart_hint(home)}` runs this version")
    return Link(channel, reply, home)


def _ready_record(home: Path, deadline: float) -> dict[str, Any] | None:
    """The daemon's record; while a live daemon says it is starting (or restarting in place) or
    stopping, wait for it (until `deadline`) rather than run embedded on a home it has locked.
    Past STARTING_NOTE seconds of that, one line on stderr says what we wait for."""
    noted = time.monotonic() + STARTING_NOTE
    while True:
        record = read_record(home)
        state = waiting_state(record)
        if state is None:
            return record
        assert record is not None
        now = time.monotonic()
        if now >= deadline:
            raise DaemonError(f"the daemon (pid {record.get('pid')}) has been {state} for {STARTING_WAIT:.0f} s; "
                              f"see {home / 'serve.log'}")
        if noted is not None and now >= noted:
            say(f"the daemon (pid {record.get('pid')}) is {state}; waiting for it")
            noted = None
        time.sleep(0.02)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"


# ---------------------------------------------------------------------- the connection


class Link:
    """An attached connection: a reader thread takes each message off the socket and queues it
    (or hands an alert straight to `on_alert`), and wakes the main thread through a pipe it can
    select on with stdin and Ctrl-C."""

    def __init__(self, channel: Channel, welcome: dict[str, Any], home: Path) -> None:
        self.channel = channel
        self.welcome = welcome
        self.home = home
        self.pid = welcome.get("pid")
        self.messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.on_alert: Any = None  # callable(message) for alerts, from the reader thread
        self.on_reply: Any = None  # callable(message) for replies to our own requests (completion)
        self.bye: str | None = None  # what the daemon said as it stopped
        self.detached = False  # the session ended as asked (quit): its close is no loss
        self._reader = threading.Thread(target=self._read, name="llmunix-client-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                message = self.channel.recv()
                if message is None:
                    break
                t = message["t"]
                if t == "bye":
                    self.bye = str(message.get("message") or "the daemon stopped")
                elif t == "done" and message.get("stop"):
                    self.detached = True  # (set here, before the daemon's close can be seen as a loss)
                if t in ("alert", "lagged") and self.on_alert is not None:
                    self.on_alert(message)
                elif t == "answer" and self.on_reply is not None:
                    self.on_reply(message)
                else:
                    self._put(message)
        except (OSError, DaemonError):
            pass
        self._put(None)  # the end: the daemon closed the connection or died
        if self.on_alert is not None:
            self.on_alert(None)

    def _put(self, message: dict[str, Any] | None) -> None:
        self.messages.put(message)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)

    def reply(self, request: dict[str, Any], **answer: Any) -> None:
        self.send({"t": "reply", "id": request.get("id"), **answer})

    @property
    def wake_fd(self) -> int:
        return self._wake_r

    def take(self) -> dict[str, Any] | None:
        """The next queued message without waiting; raises queue.Empty. (The wake-up bytes are
        drained first: a message queued after that wakes the next select again.)"""
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)
        return self.messages.get_nowait()

    def close(self) -> None:
        self.channel.close()
        self._reader.join(timeout=2.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------------- carrying out the daemon's requests


class Terminal:
    """This process's side of a session: its stdout (or redirection), stderr, stdin, keys, Ctrl-C.
    `serve(link, until)` handles messages until one of type `until` (returned) arrives."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.target: Any = None  # a redirection in force: an open file, or a Popen whose stdin we feed
        self.stdout_broken = False
        self._stdin_buf = bytearray()
        self._stdin_eof = False
        self._keys_saved: Any = None
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_w, False)
        self.interrupts = 0
        # How a line the daemon asks for is read (the interactive client reads it at its prompt).
        self.ask_line: Any = None

    # ------------------------------------------------------------------ Ctrl-C

    @contextlib.contextmanager
    def forwarding_interrupts(self) -> Any:
        """While a command runs in the daemon, Ctrl-C interrupts it there (the handler only notes
        it; the loop sends it between messages)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(_signum: int, _frame: Any) -> None:
            self.interrupts += 1
            with contextlib.suppress(OSError):
                os.write(self._sig_w, b"i")

        previous = signal.signal(signal.SIGINT, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # ------------------------------------------------------------------ the loop

    def serve(self, until: tuple[str, ...]) -> dict[str, Any]:
        """Handle the daemon's messages until one whose type is in `until`; raise
        ConnectionLost if the connection ends first."""
        while True:
            message = self._next()
            t = message["t"]
            if t in until:
                return message
            self.handle(message)

    def _next(self, stdin: bool = False) -> dict[str, Any]:
        """The next message, forwarding keys and Ctrl-C meanwhile. With `stdin`, returns
        {"t": "_stdin"} as soon as stdin has data instead (for a request that reads it)."""
        while True:
            try:
                message = self.link.take()
            except queue.Empty:
                pass
            else:
                if message is None:
                    raise ConnectionLost("the daemon closed the connection")
                return message
            fds = [self.link.wake_fd, self._sig_r]
            watch_stdin = stdin or self._keys_saved is not None
            if watch_stdin and not self._stdin_eof:
                fds.append(0)
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if self._sig_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._sig_r, 64)
                self.link.send({"t": "intr"})
            if 0 in ready:
                if self._keys_saved is not None and not stdin:
                    data = self._read_stdin()
                    if data:
                        self.link.send({"t": "keys", "d": data.decode("utf-8", "ignore")})
                elif stdin:
                    return {"t": "_stdin"}

    def handle(self, message: dict[str, Any]) -> None:
        t = message["t"]
        if t == "out":
            self.write_out(message["d"])
        elif t == "err":
            _write(sys.stderr, message["d"])
        elif t == "redirect":
            self.link.reply(message, **self.redirect(message))
        elif t == "restore":
            self.restore()
        elif t == "system":
            self.link.reply(message, rc=self.system(message["cmd"]))
        elif t == "next":
            line = self.read_line()
            self.link.reply(message, **({"eof": True} if line is None else {"text": line}))
        elif t == "input":
            self.link.reply(message, **self.input(message))
        elif t == "read":
            self.link.reply(message, d=self.read_all())
        elif t == "keys":
            self.keys(bool(message.get("on")))
            self.link.reply(message, ok=True)
        elif t == "bye":
            raise DaemonStopped(str(message.get("message") or "the daemon stopped"))
        # anything else (a newer daemon's message this client does not know) is not ours to act on

    # ------------------------------------------------------------------ output

    def write_out(self, text: str) -> None:
        if self.target is not None:
            stream = self.target if not isinstance(self.target, subprocess.Popen) else self.target.stdin
            try:
                stream.write(text)
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # the pipe's reader left (`| head -1`): cmd2 drops the rest quietly too
            return
        if self.stdout_broken:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            self.stdout_broken = True
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())  # (no "Exception ignored" at exit either)
                os.close(devnull)

    def redirect(self, message: dict[str, Any]) -> dict[str, Any]:
        """`> FILE`, `>> FILE` or `| COMMAND`, here: as cmd2 does it (a pipe command that has
        already exited after a moment could not take the output: an error)."""
        to = message["to"]
        if message.get("kind") == "file":
            try:
                self.target = open(to, message.get("mode", "w"), buffering=1, encoding="utf-8",  # noqa: SIM115
                                   errors="surrogateescape")
            except OSError as exc:
                return {"ok": False, "errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
            return {"ok": True}
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        shell = os.environ.get("SHELL")
        proc = subprocess.Popen(to, shell=True, stdin=subprocess.PIPE, encoding="utf-8",  # noqa: S602
                                errors="surrogateescape", **({"executable": shell} if shell else {}))
        try:
            proc.wait(PIPE_GRACE)
        except subprocess.TimeoutExpired:
            self.target = proc
            return {"ok": True}
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        return {"ok": False, "exited": proc.returncode}

    def restore(self) -> None:
        target, self.target = self.target, None
        if target is None:
            return
        if isinstance(target, subprocess.Popen):
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                target.stdin.close()  # type: ignore[union-attr]
            target.wait()
        else:
            with contextlib.suppress(OSError):
                target.close()

    def system(self, command: str) -> int:
        """`!COMMAND`: run here, its output where ours goes now."""
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        stdout: Any = None
        if isinstance(self.target, subprocess.Popen):
            stdout = self.target.stdin
        elif self.target is not None:
            self.target.flush()
            stdout = self.target
        shell = os.environ.get("SHELL")
        try:
            proc = subprocess.Popen(os.path.expanduser(command) if command.startswith("~") else command,  # noqa: S602
                                    shell=True, stdout=stdout, **({"executable": shell} if shell else {}))
        except OSError as exc:
            _write(sys.stderr, f"{exc}\n")
            return 127
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # (the child has the Ctrl-C too; wait for it to end)
                continue

    # ------------------------------------------------------------------ input

    def read_line(self) -> str | None:
        """The next line of stdin (without its newline), or None at end of file; the daemon's
        messages are handled meanwhile (Ctrl-C, a daemon that goes away)."""
        while True:
            end = self._stdin_buf.find(b"\n")
            if end >= 0:
                line = bytes(self._stdin_buf[:end])
                del self._stdin_buf[:end + 1]
                return _decode(line)
            if self._stdin_eof:
                if not self._stdin_buf:
                    return None
                line = bytes(self._stdin_buf)
                self._stdin_buf.clear()
                return _decode(line)
            message = self._next(stdin=True)
            if message["t"] == "_stdin":
                data = self._read_stdin()
                if data:
                    self._stdin_buf += data
            else:
                self.handle(message)

    def read_all(self) -> str:
        parts = [bytes(self._stdin_buf)]
        self._stdin_buf.clear()
        while not self._stdin_eof:
            message = self._next(stdin=True)
            if message["t"] == "_stdin":
                parts.append(self._read_stdin())
            else:
                self.handle(message)
        return _decode(b"".join(parts))

    def input(self, message: dict[str, Any]) -> dict[str, Any]:
        """A line asked for by a command (cmd2's read_input on a stream that is not a terminal)."""
        if self.ask_line is not None:
            return self.ask_line(message)
        if message.get("show_prompt"):
            self.write_out(message.get("prompt", ""))
        line = self.read_line()
        return {"eof": True} if line is None else {"line": line}

    def _read_stdin(self) -> bytes:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            self._stdin_eof = True
        return data

    # ------------------------------------------------------------------ keys (top)

    def keys(self, on: bool) -> None:
        """Keys one at a time, unechoed, forwarded as they come (as `top` sets the terminal
        embedded: cbreak, so Ctrl-C still interrupts)."""
        import termios
        import tty

        if on and self._keys_saved is None and os.isatty(0):
            self._keys_saved = termios.tcgetattr(0)
            tty.setcbreak(0, termios.TCSANOW)  # (keys typed ahead are kept)
        elif not on and self._keys_saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSADRAIN, self._keys_saved)
            self._keys_saved = None

    def close(self) -> None:
        self.keys(False)
        self.restore()
        for fd in (self._sig_r, self._sig_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _decode(data: bytes) -> str:
    encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
    return data.decode(encoding, "surrogateescape")


def _write(stream: Any, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------- -c, scripts, stdin


def run_attached(link: Link, *, lines: list[str] | None, source: str, keep_going: bool) -> int:
    """Run `lines` (-c, a script), or the lines of stdin when None, in the daemon; return the
    exit status exactly as an embedded llmunix would."""
    term = Terminal(link)
    if _isatty(0) and _isatty(1):
        # What an embedded llmunix writes first on a terminal (prompt_toolkit shows the cursor as
        # its shell is made): the same bytes here, so that output is the same byte for byte.
        term.write_out("\x1b[?12l\x1b[?25h")
    try:
        with term.forwarding_interrupts():
            link.send({"t": "run", "lines": lines, "source": source, "keep_going": keep_going})
            done = term.serve(("exit",))
        return int(done.get("status", 1))
    except DaemonStopped as exc:
        say(str(exc))
        return 1
    except ConnectionLost:
        say(gone_message(link.pid, link.home))
        return 1
    finally:
        term.close()
        link.close()


def status_from_signal(signum: int) -> int:
    return 128 + signum
