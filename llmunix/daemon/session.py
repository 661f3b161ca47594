"""A daemon's client session: the shell the client would have run embedded, run here.

Why this gives the embedded output byte for byte: each client gets its own `LlmunixShell` (a
`SessionShell`), and each line goes through the very code an embedded llmunix runs — cmd2's
parsing, the command sets, the views — with the shell's output a stream back to the client
that answers `isatty()` as the client's stdout does, drawn for the client's terminal (its size,
its TERM, NO_COLOR...). What must happen in the client's process is asked of it: `> FILE`,
`| COMMAND` and `!COMMAND` (its files, its shell, its terminal), lines of input, keys for `top`.

What is per client, and how:

* stdout — `shell.stdout`, a `ClientOutput`. stderr and stdin — cmd2 and a few commands use
  `sys.stderr`/`sys.stdin`, one per process: in the daemon they are `Routed` streams that send
  a session thread's writes to its client (`install_routing`). The terminal size that rich,
  cmd2 and argparse ask `os.get_terminal_size` for is the client's on its session's thread.
* working directory — the session thread has a file-system context of its own (Linux
  `unshare(CLONE_FS)`) and changes to the client's directory, so relative paths in commands
  (`send --file`, `workflow run ./x.yaml`, cmd2's `run_script`) mean what they would in the
  client; processes it spawns default to the client's directory (`Kernel.working_directory`).
* Ctrl-C — the client forwards it; the session injects KeyboardInterrupt into its thread, as
  the signal would in an embedded llmunix's main thread.
* settings — a shell's own (`echo`, `timing`, aliases, macros, `wait`'s mark) are per session;
  the engine's (`max_running`, `loglevel`) are the daemon's, shared, as they must be.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import cmd2
from cmd2 import plugin
from cmd2 import rich_utils as ru
from cmd2 import string_utils as su
from cmd2.exceptions import RedirectionError
from cmd2.parsing import Statement
from rich.console import Console, ConsoleDimensions

from commands.base import LlmunixArgumentParser
from llmunix.daemon.protocol import CHUNK, ConnectionLost
from llmunix.daemon.server import AlertFeed, Connection
from llmunix.executor import drain_async_exception, inject_exception
from llmunix.kernel import Kernel
from llmunix.shell import ALERT_EVENTS, LlmunixShell

log = logging.getLogger("llmunix.daemon")

CLONE_FS = 0x00000200
_current = threading.local()  # .session: the Session whose thread this is


def current_session() -> Session | None:
    return getattr(_current, "session", None)


# ---------------------------------------------------------------------- streams


class ClientOutput(io.TextIOBase):
    """Text for one of the client's streams (`kind` "out" or "err"), sent as messages; isatty()
    says what the client's stream is. Writes after the client has gone are dropped."""

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, kind: str, tty: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.tty = tty
        self.connection: Connection | None = None
        self._parts: list[str] = []
        self._size = 0
        self._lock = threading.RLock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a client's stream has no descriptor in the daemon")

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            if self._size >= CHUNK:
                self._send()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._send()

    def _send(self) -> None:
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        connection = self.connection
        if connection is None or connection.closed:
            return
        with contextlib.suppress(ConnectionLost):
            connection.send({"t": self.kind, "d": text})


class ClientInput(io.TextIOBase):
    """The client's stdin, read on request (`send PID -` reads it all; a line for read_input)."""

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self) -> None:
        super().__init__()
        self.connection: Connection | None = None

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # the daemon never drives the client's terminal itself (see key_input)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a client's stream has no descriptor in the daemon")

    def read(self, size: int | None = -1) -> str:
        if self.connection is None:
            return ""
        return str(self.connection.request({"t": "read"}).get("d", ""))

    def readline(self, size: int | None = -1) -> str:
        if self.connection is None:
            return ""
        reply = self.connection.request({"t": "input", "prompt": "", "show_prompt": False})
        return "" if reply.get("eof") else str(reply.get("line", "")) + "\n"


class Routed(io.TextIOBase):
    """`sys.stdin`, `sys.stdout` or `sys.stderr` of the daemon: on a session's thread, that
    session's client's stream; on any other thread, the daemon's own."""

    def __init__(self, name: str, own: Any) -> None:
        super().__init__()
        self._name = name
        self._own = own

    def _target(self) -> Any:
        session = current_session()
        return session.stream(self._name) if session is not None else self._own

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        target = self._target()
        if target is not None:
            target.flush()

    def read(self, size: int | None = -1) -> str:
        return self._target().read(size)

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        return self._target().readline(size)

    def isatty(self) -> bool:
        target = self._target()
        return bool(target is not None and target.isatty())

    def fileno(self) -> int:
        return self._target().fileno()

    def writable(self) -> bool:
        return self._name != "stdin"

    def readable(self) -> bool:
        return self._name == "stdin"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target(), "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._target(), "errors", None) or "surrogateescape"


_get_terminal_size = os.get_terminal_size


def _terminal_size(fd: int = 1) -> os.terminal_size:
    """os.get_terminal_size as the client would answer it, on a session's thread."""
    session = current_session()
    if session is None or fd not in (0, 1, 2):
        return _get_terminal_size(fd)
    size = session.terminal_size()
    if size is None or not session.tty.get(("in", "out", "err")[fd]):
        raise OSError(25, "Inappropriate ioctl for device")
    return os.terminal_size(size)


def _shutil_terminal_size(fallback: tuple[int, int] = (80, 24)) -> os.terminal_size:
    session = current_session()
    if session is None:
        return _shutil_get_terminal_size(fallback)
    env = session.env
    try:
        size = _terminal_size(1)
        columns, lines = size.columns, size.lines
    except OSError:
        columns, lines = fallback
    columns = int(env["COLUMNS"]) if env.get("COLUMNS", "").isdigit() else columns
    lines = int(env["LINES"]) if env.get("LINES", "").isdigit() else lines
    return os.terminal_size((columns or fallback[0], lines or fallback[1]))


_shutil_get_terminal_size = shutil.get_terminal_size


def install_routing() -> None:
    """Make the daemon's standard streams and terminal size per session (module docstring)."""
    if not isinstance(sys.stderr, Routed):
        sys.stdin = Routed("stdin", sys.stdin)
        sys.stdout = Routed("stdout", sys.stdout)
        sys.stderr = Routed("stderr", sys.stderr)
    os.get_terminal_size = _terminal_size
    shutil.get_terminal_size = _shutil_terminal_size  # (argparse's help width)


def own_working_directory(path: str) -> bool:
    """Give the calling thread a working directory of its own and make it `path`. False where
    that is not possible (not Linux): relative paths then mean the daemon's directory."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_FS) != 0:
        log.warning("unshare(CLONE_FS) failed (errno %d): sessions share the daemon's directory", ctypes.get_errno())
        return False
    try:
        os.chdir(path)
    except OSError as exc:
        log.warning("cannot enter the client's directory %s: %s", path, exc)
        return False
    return True


# ---------------------------------------------------------------------- consoles


class SessionConsole(Console):
    """A rich Console drawing for the client's terminal: its environment, and its size read
    each time (a live display follows a resized window), whichever thread draws."""

    def __init__(self, session: Session, **options: Any) -> None:
        self._session = session
        super().__init__(_environ=session.env, **options)

    @property  # type: ignore[override]
    def size(self) -> ConsoleDimensions:
        if self._width is not None and self._height is not None:
            return ConsoleDimensions(self._width, self._height)
        return self._session.console_size(self.is_dumb_terminal, self._width, self._height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


# ---------------------------------------------------------------------- the shell


class SessionShell(LlmunixShell):
    """An `LlmunixShell` whose terminal is a client's (see the module docstring)."""

    def __init__(self, kernel: Kernel, *, interactive: bool) -> None:
        self._client_out = ClientOutput("out")
        self._client_in = ClientInput()
        self.session: Session | None = None
        super().__init__(kernel, interactive=interactive, stdin=self._client_in, stdout=self._client_out,
                         alerts=False)
        self._saved_stdout: Any = None
        self.started: set[int] = set()  # PIDs this client's commands spawned (`wait`'s own)
        self._input_settings: Any = None  # what a read_input prompt completes against
        self._consoles: dict[tuple[Any, ...], Any] = {}
        self.register_postparsing_hook(self._redirect_in_client)
        self.register_cmdfinalization_hook(self._end_redirection)

    def bind(self, session: Session) -> None:
        self.session = session
        connection = session.connection
        self._client_out.connection = connection
        self._client_out.tty = session.tty.get("out", False)
        self._client_in.connection = connection
        editor = session.env.get("VISUAL") or session.env.get("EDITOR")
        if editor:
            self.editor = editor
        self.wait_mark = self.kernel.last_seq  # `wait` reports ends from now on, not the daemon's past

    def own(self, infos: Any) -> list[Any]:
        """What `wait` without PIDs waits for: what this client started; a client that started
        nothing (`llmunix -c 'run build'` then `llmunix -c wait`: two clients) waits for every
        live process, as pueue's `wait` and an embedded shell do — never a silent exit 0."""
        infos = list(infos)
        if not self.started:
            return infos
        return [i for i in infos if i.pid in self.started]

    # ------------------------------------------------------------------ drawing for the client

    def rich_console(self) -> Console:
        assert self.session is not None
        return SessionConsole(self.session, file=self.stdout, markup=False, emoji=False)  # as LlmunixShell's

    def live(self, renderable: Any = None, **options: Any) -> Any:
        # Never rich's process-wide sys.stdout/sys.stderr redirection: they are every session's.
        from rich.live import Live

        return Live(renderable, console=self.rich_console(), redirect_stdout=False, redirect_stderr=False,
                    **options)

    def _get_core_print_console(self, *, file: Any, emoji: bool, markup: bool, highlight: bool) -> Any:
        """cmd2's consoles (poutput, perror...), drawn for the client: its environment and size."""
        assert self.session is not None
        size = self.session.console_size(self.session.env.get("TERM", "").lower() in ("dumb", "unknown"), None, None)
        key = (id(file), emoji, markup, highlight, tuple(size), ru.ALLOW_STYLE, file.isatty())
        console = self._consoles.get(key)
        if console is None:
            if len(self._consoles) > 32:
                self._consoles.clear()
            console = ru.Cmd2BaseConsole(file=file, emoji=emoji, markup=markup, highlight=highlight,
                                         width=size.width, height=size.height, _environ=self.session.env)
            self._consoles[key] = console
        return console

    # ------------------------------------------------------------------ what happens in the client

    def _redirect_in_client(self, data: plugin.PostparsingData) -> plugin.PostparsingData:
        """`> FILE`, `>> FILE`, `| COMMAND`: opened or started in the client, the command's
        output sent there; errors worded as cmd2's own (the shell's perror words them)."""
        statement = data.statement
        if not statement.redirector or not self.allow_redirection:
            return data
        assert self.session is not None
        if statement.redirector == "|":
            request = {"kind": "pipe", "to": statement.redirect_to}
        elif statement.redirect_to:
            request = {"kind": "file", "to": su.strip_quotes(statement.redirect_to),
                       "mode": "a" if statement.redirector == ">>" else "w"}
        else:
            raise RedirectionError("Clipboard access not allowed")
        self.stdout.flush()
        reply = self.session.connection.request({"t": "redirect", **request})
        if not reply.get("ok"):
            if request["kind"] == "pipe":
                raise RedirectionError(f"Pipe process exited with code {reply.get('exited')} before command could run")
            raise RedirectionError("Failed to redirect output") from OSError(
                reply.get("errno"), reply.get("strerror"), reply.get("filename"))
        self._saved_stdout = self.stdout
        redirected = ClientOutput("out", tty=False)
        redirected.connection = self.session.connection
        self.stdout = redirected
        plain = Statement.from_dict({**statement.to_dict(), "redirector": "", "redirect_to": ""})
        return plugin.PostparsingData(data.stop, plain)

    def _end_redirection(self, data: plugin.CommandFinalizationData) -> plugin.CommandFinalizationData:
        if self._saved_stdout is not None:
            redirected, self.stdout, self._saved_stdout = self.stdout, self._saved_stdout, None
            redirected.flush()
            if self.session is not None and not self.session.connection.closed:
                with contextlib.suppress(ConnectionLost):
                    self.session.connection.send({"t": "restore"})
        return data

    @cmd2.with_argparser(cmd2.Cmd._build_shell_parser, preserve_quotes=True)
    def do_shell(self, args: Any) -> None:
        """Execute a command as if at the OS prompt (in the client: its shell, its directory)."""
        assert self.session is not None
        tokens = [args.command, *args.command_args]
        self.stdout.flush()
        reply = self.session.connection.request({"t": "system", "cmd": " ".join(tokens)})
        self.last_result = reply.get("rc")
        if reply.get("rc") == -2:  # the client's Ctrl-C ended it: as cmd2 does, interrupt the command too
            raise KeyboardInterrupt

    def read_input(self, prompt: str = "", *, history: Any = None, preserve_quotes: bool = False,
                   choices: Any = None, choices_provider: Any = None, completer: Any = None,
                   parser: Any = None) -> str:
        """A line from the client: at its terminal (with completion asked of this shell, against
        the same parser or choices), or from its stdin."""
        assert self.session is not None
        resolved = self._resolve_completer(preserve_quotes=preserve_quotes, choices=choices,
                                           choices_provider=choices_provider, completer=completer, parser=parser)
        self._input_settings = getattr(resolved, "custom_settings", None)
        self.stdout.flush()
        reply = self.session.connection.request({
            "t": "input", "prompt": prompt, "history": [str(h) for h in history or ()],
            "complete": self._input_settings is not None, "show_prompt": False})
        if reply.get("intr"):
            raise KeyboardInterrupt
        if reply.get("eof"):
            raise EOFError
        return str(reply.get("line", ""))

    @contextlib.contextmanager
    def key_input(self) -> Iterator[int | None]:
        """`top`'s keys: the client sets its terminal to cbreak and forwards each key; they come
        out of a pipe here."""
        assert self.session is not None
        connection = self.session.connection
        if not self.session.tty.get("in"):
            yield None
            return
        r, w = os.pipe()
        connection.keys_fd = w
        try:
            connection.request({"t": "keys", "on": True})
            yield r
        finally:
            connection.keys_fd = None
            if not connection.closed:
                with contextlib.suppress(ConnectionLost):
                    connection.request({"t": "keys", "on": False})
            os.close(r)
            os.close(w)

    def pexcept(self, exception: BaseException, **kwargs: Any) -> None:  # type: ignore[override]
        if isinstance(exception, ConnectionLost):
            return  # the client left while its command asked it something: nobody to tell
        super().pexcept(exception, **kwargs)

    # ------------------------------------------------------------------ leaving

    quit_parser = LlmunixArgumentParser(description="Leave: detach from the daemon. Processes keep running.")
    quit_parser.add_argument("-f", "--force", action="store_true", help="(no question is asked when attached)")

    @cmd2.with_argparser(quit_parser)
    def do_quit(self, _args: Any) -> bool | None:
        """Detach from the daemon (its processes keep running)."""
        self.last_result = True
        return True

    do_exit = do_quit

    def do__eof(self, _: Any) -> bool | None:
        """Ctrl-D: detach."""
        self.poutput()
        self.last_result = True
        return True

    # ------------------------------------------------------------------ completion

    def answer_completion(self, message: dict[str, Any]) -> dict[str, Any]:
        """Completions for the client's prompt (or for a read_input prompt: "ctx": "input")."""
        settings = self._input_settings if message.get("ctx") == "input" else None
        try:
            completions = self.complete(str(message.get("text", "")), str(message.get("line", "")),
                                        int(message.get("begidx", 0)), int(message.get("endidx", 0)),
                                        custom_settings=settings)
        except Exception:  # noqa: BLE001 - completion must never take the session down
            log.exception("completion failed")
            return {"items": []}
        return completions_to_message(completions, self.rich_console())


def completions_to_message(completions: Any, console: Console) -> dict[str, Any]:
    """A cmd2 Completions as JSON: its fields, its items' text and display, its table drawn."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(completions):
        if not f.init:
            continue
        value = getattr(completions, f.name)
        if f.name == "items":
            out["items"] = [{"value": str(i.value), "text": i.text, "display": i.display,
                             "display_meta": i.display_meta} for i in value]
        elif f.name == "table":
            if value is not None:
                with console.capture() as capture:
                    console.print(value, end="", soft_wrap=False)
                out["table"] = capture.get()
        elif isinstance(value, str | int | float | bool) or value is None:
            out[f.name] = value
    return out


# ---------------------------------------------------------------------- the session


class Session:
    """One attached client: its shell, the facts of its terminal, and the loop that runs what it
    sends (`run`: lines, then the exit status; `cmd`: one interactive line at a time)."""

    def __init__(self, kernel: Kernel, connection: Connection, shell: SessionShell) -> None:
        self.kernel = kernel
        self.connection = connection
        hello = connection.hello
        tty = hello.get("tty") if isinstance(hello.get("tty"), dict) else {}
        self.tty = {k: bool(tty.get(k)) for k in ("in", "out", "err")}
        env = hello.get("env") if isinstance(hello.get("env"), dict) else {}
        self.env = {str(k): str(v) for k, v in env.items()}
        self.cwd = str(hello.get("cwd") or "/")
        self.err = ClientOutput("err", self.tty["err"])
        self.err.connection = connection
        self.shell = shell
        shell.bind(self)
        self._thread: int | None = None
        self._busy = False
        self._injected = False  # a Ctrl-C was injected into the running command (drained after it)
        self._busy_lock = threading.Lock()
        connection.on_interrupt = self.interrupt
        connection.on_complete = shell.answer_completion
        connection.on_close.append(self.interrupt)
        self.alerts: Any = None

    # ------------------------------------------------------------------ facts

    def stream(self, name: str) -> Any:
        if name == "stderr":
            return self.err
        if name == "stdout":
            return self.shell.stdout
        return self.shell.stdin

    def terminal_size(self) -> tuple[int, int] | None:
        size = self.connection.size
        return (size[0], size[1]) if size else None

    def console_size(self, dumb: bool, width: int | None, height: int | None) -> ConsoleDimensions:
        """What rich's Console.size says in the client: 80x25 on a dumb terminal; else the size
        of the first of its standard streams that is a terminal, COLUMNS/LINES over it."""
        if dumb and self.tty.get("out"):
            return ConsoleDimensions(80, 25)
        size = self.terminal_size() if any(self.tty.values()) else None
        w, h = size if size is not None else (None, None)
        columns, lines = self.env.get("COLUMNS", ""), self.env.get("LINES", "")
        w = int(columns) if columns.isdigit() else w
        h = int(lines) if lines.isdigit() else h
        return ConsoleDimensions(width if width is not None else (w or 80), height if height is not None else (h or 25))

    # ------------------------------------------------------------------ Ctrl-C, leaving

    def interrupt(self) -> None:
        """The client's Ctrl-C (or its leaving): interrupt the command running now, if any, as
        the signal would interrupt an embedded llmunix's main thread.

        Not while a thread is starting: CPython (3.11) gives a thread being started the ident of
        the thread starting it until it runs, and PyThreadState_SetAsyncExc raises in the newest
        thread with that ident — the new one, which then dies before telling its starter it has
        started, and the session would wait for it forever (seen with `wait`'s progress bars)."""
        deadline = time.monotonic() + 1.0
        while any(t.ident is None for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.001)
        with self._busy_lock:
            if self._busy and self._thread is not None:
                self._injected = inject_exception(self._thread, KeyboardInterrupt) or self._injected

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        with self._busy_lock:
            self._busy = True
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy = False
                injected, self._injected = self._injected, False
            if injected:
                # A Ctrl-C that came as the command ended must not land in what follows it. This
                # is the session's thread: it consumes the pending one (never a clear with NULL,
                # which on CPython 3.11 leaves every traced thread spinning: executor.py).
                drain_async_exception()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        self._thread = thread = threading.get_ident()
        _current.session = self
        own_working_directory(self.cwd)
        # What this client starts: spawns made on this thread (inline: the bus calls this on the
        # spawning thread, the session's own, before spawn returns).
        spawned = self.kernel.subscribe("process.spawned", lambda e: self.shell.started.add(e.pid),
                                        filter=lambda _e: threading.get_ident() == thread, queue=None)
        self.connection.on_close.append(spawned.cancel)
        try:
            with self.kernel.working_directory(self.cwd):
                self._loop()
        finally:
            _current.session = None
            if self.alerts is not None:
                self.alerts.close()
            with contextlib.suppress(ConnectionLost, OSError):
                self.shell.stdout.flush()
                self.err.flush()

    def _loop(self) -> None:
        connection = self.connection
        if self.shell.interactive:
            self.alerts = AlertFeed(connection.send, self._alert_markup, self._missed_alerts)
            connection.alerts = self.alerts
            subscription = self.kernel.subscribe(ALERT_EVENTS, self.alerts.offer)
            connection.on_close.append(subscription.cancel)
            connection.send({"t": "ready", "commands": self.shell.get_all_commands()})
        while True:
            try:
                message = connection.next_message()
                if message is None:
                    return
                t = message["t"]
                if t == "run":
                    status = self._run_lines(message)
                    self._flush()
                    connection.send({"t": "exit", "status": status})
                    return
                if t == "cmd" and self._command(message):
                    return
            except KeyboardInterrupt:
                continue  # a Ctrl-C that landed between commands: nothing to interrupt

    def _run_lines(self, message: dict[str, Any]) -> int:
        lines = message.get("lines")
        source = str(message.get("source") or "")
        keep_going = bool(message.get("keep_going"))

        def pulled() -> Iterator[str]:  # stdin: each line asked for when the last has run
            while not self.connection.closed:
                reply = self.connection.request({"t": "next"})
                if reply.get("eof"):
                    return
                yield str(reply.get("text", ""))

        def given() -> Iterator[str]:
            for line in lines or ():
                if self.connection.closed:
                    return
                yield str(line)

        try:
            with self._running():
                return self.shell.run_lines(given() if lines is not None else pulled(),
                                            keep_going=keep_going, source=source)
        except KeyboardInterrupt:
            return 130

    def _command(self, message: dict[str, Any]) -> bool:
        """One line typed at an attached prompt; True when the session ends (quit)."""
        if _is_pair(message.get("size")):
            self.connection.size = message["size"]
        shell = self.shell
        before = len(shell.history)
        try:
            with self._running():
                stop = shell.onecmd_plus_hooks(str(message.get("text", "")))
        except KeyboardInterrupt:
            stop = False
        failed = shell.consume_failure()
        self._flush()
        added = shell.history[-1].raw if len(shell.history) > before else None
        self.connection.send({"t": "done", "stop": bool(stop), "failed": failed, "history": added,
                              "aliases": dict(shell.aliases)})
        return bool(stop)

    def _flush(self) -> None:
        with contextlib.suppress(ConnectionLost, OSError):
            self.shell.stdout.flush()
            self.err.flush()

    # ------------------------------------------------------------------ alerts

    def _alert_markup(self, event: Any) -> str | None:
        text = self.shell.alert_text(event)
        return None if text is None else text.markup

    def _missed_alerts(self, since: float, first: int, last: int) -> list[Any]:
        self.kernel.flush(timeout=5.0)
        events = self.kernel.events(types=ALERT_EVENTS, since=since - 1.0)
        return [e for e in events if first <= e.seq <= last]


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(n, int) and 0 < n < 100_000 for n in value)


class SessionFactory:
    """Makes a client's Session; keeps a non-interactive shell built ahead (building one costs
    ~10 ms of the ~50 an attached `llmunix -c ps` takes)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._spare: SessionShell | None = None
        self._lock = threading.Lock()
        self._prepare()

    def _prepare(self) -> None:
        def build() -> None:
            shell = SessionShell(self.kernel, interactive=False)
            with self._lock:
                if self._spare is None:
                    self._spare = shell

        threading.Thread(target=build, name="llmunix-daemon-spare", daemon=True).start()

    def __call__(self, connection: Connection) -> Session:
        interactive = connection.hello.get("mode") == "shell"
        shell = None
        if not interactive:
            with self._lock:
                shell, self._spare = self._spare, None
            self._prepare()
        if shell is None:
            shell = SessionShell(self.kernel, interactive=interactive)
        return Session(self.kernel, connection, shell)
