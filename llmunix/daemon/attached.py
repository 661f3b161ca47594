"""The interactive client: the `llmunix$` prompt of a shell that runs in the daemon.

Line editing, history (the home's `history` file, as embedded) and the drawing of completion
menus stay here, in a local cmd2 application; what to complete is asked of the daemon (its
session shell completes exactly as an embedded one would, against the same parsers, PIDs and
tools). Each line typed goes to the daemon; while it runs, this side carries out what the
daemon asks of it (client.Terminal: output, redirections, `!`, keys for `top`, prompts such as
`debug`'s). Alerts arrive at any time and are shown above the prompt with cmd2's own add_alert,
so they look as they do embedded. `quit` (or Ctrl-D) detaches: the daemon's processes go on.
If the daemon goes away, the prompt ends at once with exit status 1.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from pathlib import Path
from typing import Any

import cmd2
from cmd2 import CompletionItem, Completions
from rich.text import Text

from llmunix import __version__
from llmunix.daemon.client import Link, Terminal, gone_message
from llmunix.daemon.protocol import ConnectionLost, DaemonError, DaemonStopped, say, terminal_size

PROMPT = "llmunix$ "
ANSWER_TIMEOUT = 10.0  # seconds to wait for completions before giving up on them


class AttachedShell(cmd2.Cmd):
    def __init__(self, link: Link, home: Path) -> None:
        self._commands: list[str] = []  # the daemon's (cmd2's own __init__ lists them already)
        self._daemon_aliases: dict[str, str] = {}
        super().__init__(allow_cli_args=False, auto_load_commands=False, include_py=False,
                         persistent_history_file=str(home / "history"), allow_clipboard=False)
        self.link = link
        self.home = home
        self.term = Terminal(link)
        self.prompt = PROMPT
        self.intro = (f"llmunix {__version__} — attached to the daemon (pid {link.pid}); `quit` leaves it and its "
                      "processes running. `help` lists commands, `tools` what can run, `run sleep seconds=5` "
                      "starts one.")
        self.gone: str | None = None
        self.leaving = False
        self.status = 0
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition()
        link.on_alert = self._on_alert
        link.on_reply = self._on_answer

    # ------------------------------------------------------------------ what the lexer knows

    def get_all_commands(self) -> list[str]:
        return self._commands or super().get_all_commands()

    @property
    def aliases(self) -> dict[str, str]:  # type: ignore[override]
        return self._daemon_aliases

    # ------------------------------------------------------------------ running a line in the daemon

    def onecmd_plus_hooks(self, line: str, **_kwargs: Any) -> bool:
        if self.gone is not None:
            return True
        if line == "_eof":  # Ctrl-D: detach
            self.leaving = True
            self.poutput()
            return True
        try:
            with self.term.forwarding_interrupts(), _resizes(self.link):
                self.link.send({"t": "cmd", "text": line, "size": terminal_size()})
                done = self.term.serve(("done",))
        except ConnectionLost as exc:
            self._lost(str(exc) if isinstance(exc, DaemonStopped) else "")
            return True
        finally:
            self.term.restore()
        self._learn(done)
        raw = done.get("history")
        if isinstance(raw, str) and raw:
            with contextlib.suppress(Exception):
                self.history.append(self.statement_parser.parse(raw))
        if done.get("stop"):
            self.leaving = True  # the daemon closes the connection next: that is no loss
            self.term.keys(False)
        return bool(done.get("stop"))

    def _learn(self, done: dict[str, Any]) -> None:
        commands = done.get("commands")
        if isinstance(commands, list):
            self._commands = [str(c) for c in commands]
        aliases = done.get("aliases")
        if isinstance(aliases, dict):
            self._daemon_aliases = {str(k): str(v) for k, v in aliases.items()}

    def read_input_for_daemon(self, message: dict[str, Any]) -> dict[str, Any]:
        """A prompt the daemon's shell asked for (`debug`'s, a question): read here, with history
        and completion (asked of the daemon, against that prompt's parser)."""
        try:
            line = self.read_input(str(message.get("prompt", "")), history=message.get("history") or None,
                                   completer=_RemoteInputCompleter(self) if message.get("complete") else None)
        except EOFError:
            return {"eof": True}
        except KeyboardInterrupt:
            return {"intr": True}
        return {"line": line}

    # ------------------------------------------------------------------ completion (asked of the daemon)

    def complete(self, text: str, line: str, begidx: int, endidx: int, custom_settings: Any = None) -> Completions:
        answer = self._ask({"t": "complete", "text": text, "line": line, "begidx": begidx, "endidx": endidx,
                            "ctx": "input" if custom_settings is not None else "main"})
        return completions_from_message(answer)

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        ident = next(self._ids)
        try:
            self.link.send({**message, "id": ident})
        except ConnectionLost:
            return {}
        with self._answered:
            self._answered.wait_for(lambda: ident in self._answers or self.gone is not None, ANSWER_TIMEOUT)
            return self._answers.pop(ident, {})

    def _on_answer(self, message: dict[str, Any]) -> None:
        with self._answered:
            self._answers[message.get("id")] = message  # type: ignore[index]
            self._answered.notify_all()

    # ------------------------------------------------------------------ alerts, and a daemon that goes away

    def _on_alert(self, message: dict[str, Any] | None) -> None:
        """The reader thread: an alert (shown above the prompt), or None: the connection ended."""
        if message is None:
            self._lost(self.link.bye or "")
            return
        if message["t"] == "alert":
            with contextlib.suppress(Exception):
                self.add_alert(msg=Text.from_markup(str(message.get("markup", ""))))
        elif message["t"] == "lagged":
            self.add_alert(msg=Text(f"({message.get('count')} alerts were not shown while this shell was not reading; "
                                    "`events` lists them)", style="yellow"))

    def _lost(self, why: str) -> None:
        if self.gone is not None or self.leaving or self.link.detached:
            return
        self.gone = why or gone_message(self.link.pid, self.home)
        self.status = 1
        with self._answered:
            self._answered.notify_all()
        # End the prompt if it is showing: its application exits as on Ctrl-D.
        app = getattr(self.active_session, "app", None)
        if app is not None and app.is_running and app.loop is not None:
            with contextlib.suppress(Exception):
                app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()) if app.is_running else None)


class _RemoteInputCompleter(cmd2.pt_utils.Cmd2Completer):
    """Completion for a prompt the daemon asked for: the daemon completes against that prompt's
    own parser (`ctx: input`)."""

    def __init__(self, shell: AttachedShell) -> None:
        super().__init__(shell, custom_settings=_INPUT)


_INPUT = object()  # (a marker: complete() asks the daemon with ctx "input")


def completions_from_message(answer: dict[str, Any]) -> Completions:
    items = [CompletionItem(i.get("value", ""), text=i.get("text", ""), display=i.get("display", ""),
                            display_meta=i.get("display_meta", "")) for i in answer.get("items") or ()]
    options = {k: v for k, v in answer.items() if k not in ("t", "id", "items", "table")}
    if answer.get("table"):
        options["table"] = Text.from_ansi(answer["table"])
    try:
        return Completions(items, **options)
    except TypeError:  # a daemon of another version with fields this cmd2 does not know
        return Completions(items)


@contextlib.contextmanager
def _resizes(link: Link) -> Any:
    """While a command runs, a resized terminal is told to the daemon (a live `top` redraws)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def resized(_signum: int, _frame: Any) -> None:
        size = terminal_size()
        if size is not None:
            with contextlib.suppress(ConnectionLost):
                threading.Thread(target=link.send, args=({"t": "winch", "size": size},), daemon=True).start()

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def run_interactive(link: Link, home: Path) -> int:
    """The attached prompt until quit, Ctrl-D or the daemon's end; the exit status."""
    try:
        shell = AttachedShell(link, home)
    except DaemonError as exc:
        say(str(exc))
        link.close()
        return 2
    shell.term.ask_line = shell.read_input_for_daemon
    try:
        try:
            shell._learn(shell.term.serve(("ready",)))
        except ConnectionLost as exc:
            shell._lost(str(exc) if isinstance(exc, DaemonStopped) else "")
            status = 1
        else:
            status = shell.cmdloop()
    finally:
        shell.term.close()
        link.close()
    if shell.gone is not None:
        say(shell.gone)
        return 1
    return status
