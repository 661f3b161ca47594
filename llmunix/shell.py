"""The `llmunix$` shell: a cmd2 application over one Kernel.

The shell is a thin client (STYLE: supervisorctl): command sets in `commands/` parse, call one
Kernel method and render a snapshot. This module adds what is shell-wide: the prompt, alerts
for background completions, exit status tracking for scripts, settables and leaving safely.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cmd2
from cmd2 import Cmd2ArgparseError
from cmd2.constants import COMMAND_ATTR_HELP_CATEGORY as HELP_CATEGORY
from cmd2.history import HistoryItem
from cmd2.utils import get_defining_class
from rich.console import Console
from rich.text import Text

from commands import all_command_sets
from commands.base import LlmunixArgumentParser
from commands.ipc import redact_sensitive_message
from commands.resilience_views import ALERT_EVENTS as RESILIENCE_ALERTS
from commands.resilience_views import ALERT_TYPES as RESILIENCE_ALERT_TYPES
from commands.resilience_views import alert_text as resilience_alert
from commands.terminal_safe import safe_text
from commands.views import STATE_STYLES
from llmunix import __version__
from llmunix.kernel import Kernel
from llmunix.models import Event, LlmunixError, format_pid
from llmunix.observe.logging import LEVELS, current_level, parse_level, set_level
from llmunix.observe.redact import redact_text

log = logging.getLogger("llmunix.shell")

PROMPT = "llmunix$ "


def audit_text(line: str) -> str:
    """A command line as it is written down (audit trail, log, history): secret parameters
    (`api_key=...`) and the message of `send`/`broadcast --sensitive` replaced by `***`."""
    return redact_text(redact_sensitive_message(line))


CHILD_QUIET = frozenset({"process.completed", "process.failed", "process.cancelled"})
ALERT_EVENTS = ("process.completed|process.failed|process.cancelled|process.unkillable|ipc.deadlock"
                "|process.breakpoint|" + RESILIENCE_ALERTS)


class LlmunixShell(cmd2.Cmd):
    DEFAULT_CATEGORY = "Shell commands"  # cmd2's own: alias, history, set, quit, ...

    def __init__(self, kernel: Kernel, *, interactive: bool, home: Path | None = None,
                 stdin: Any = None, stdout: Any = None) -> None:
        cmd2.set_default_argument_parser(LlmunixArgumentParser)
        history = str(home / "history") if (interactive and home is not None) else ""
        super().__init__(
            stdin=stdin,
            stdout=stdout,
            allow_cli_args=False,
            auto_load_commands=False,
            command_sets=all_command_sets(),
            persistent_history_file=history,
            include_py=False,
            suggest_similar_command=True,
        )
        # cmd2's own commands (alias, history, set, ...) join ours under one heading.
        for name in self.get_all_commands():
            func = self.get_command_func(name)
            if func is not None and get_defining_class(func) is cmd2.Cmd:
                setattr(func.__func__, HELP_CATEGORY, self.DEFAULT_CATEGORY)
        self.kernel = kernel
        self.interactive = interactive
        self.prompt = PROMPT
        self.failed = False  # set by any error report; read and reset by consume_failure()
        self.intro = (f"llmunix {__version__} — `help` lists commands, `tools` what can run, "
                      "`run sleep seconds=5` starts one.") if interactive else ""
        self.add_settable(cmd2.Settable("max_running", _positive_int, "processes allowed to run at once",
                                        kernel, onchange_cb=self._max_running_changed))
        self.add_settable(cmd2.Settable("kill_grace", _non_negative_float,
                                        "seconds between kill escalation steps", kernel))
        if kernel.monitor_interval is not None:
            self.add_settable(cmd2.Settable("monitor_interval", _positive_float,
                                            "seconds between CPU / memory / I/O samples", kernel))
        self.add_settable(cmd2.Settable("time_slice", _positive_float,
                                        "seconds a process runs before yielding to its peers", kernel))
        self.add_settable(cmd2.Settable("deadlock_policy", str, "on a deadlock: report, or kill-lowest (its "
                                        "lowest-priority member)", kernel, choices=("report", "kill-lowest")))
        self.loglevel = current_level()
        self.add_settable(cmd2.Settable("loglevel", _log_level, "what llmunix.log records: " + ", ".join(LEVELS),
                                        self, choices=LEVELS, onchange_cb=self._loglevel_changed))
        self._alerts = kernel.subscribe(ALERT_EVENTS, self._alert) if interactive else None

    # ------------------------------------------------------------------ output

    def output_is_plain(self) -> bool:
        try:
            return not self.stdout.isatty()
        except (AttributeError, ValueError):
            return True

    def rich_console(self) -> Console:
        return Console(file=self.stdout)

    def fail(self, message: str) -> None:
        """A command failed: one line on stderr, and remember it for the exit status."""
        name = self.current_command.command if self.current_command is not None else "llmunix"
        self.perror(f"{name}: {message}")

    def perror(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.failed = True
        super().perror(*objects, **kwargs)

    def pexcept(self, exception: BaseException, **kwargs: Any) -> None:
        """An unexpected error: one line for the user, the traceback to the log."""
        log.error("command failed", exc_info=exception)
        self.perror(f"internal error: {type(exception).__name__}: {exception}")

    def consume_failure(self) -> bool:
        failed, self.failed = self.failed, False
        return failed

    def onecmd_plus_hooks(self, line: str, **kwargs: Any) -> bool:
        """Run one command line and record it in the audit trail with its exit status."""
        earlier, self.failed = self.failed, False
        try:
            return super().onecmd_plus_hooks(line, **kwargs)
        finally:
            text = line.strip()
            if text and text != "_eof" and not text.startswith("#"):
                self.kernel.record_command(audit_text(text), 1 if self.failed else 0)
            self.failed = self.failed or earlier

    def onecmd(self, statement: Any, *, add_to_history: bool = True) -> bool:
        try:
            return super().onecmd(statement, add_to_history=add_to_history)
        except Cmd2ArgparseError as exc:
            code = getattr(exc.__cause__, "code", 0)
            if code:  # `-h` exits 0; a usage error exits 2 (cmd2 would report success)
                self.failed = True
            raise
        finally:
            self._redact_last_history()

    def _redact_last_history(self) -> None:
        """The history (kept in the home's `history` file) never holds a secret: the command just
        added is stored with secret parameters and a sensitive message replaced by `***`."""
        if not self.history:
            return
        raw = self.history[-1].raw
        redacted = audit_text(raw)
        if redacted != raw:
            self.history[-1] = HistoryItem(self.statement_parser.parse(redacted))

    # ------------------------------------------------------------------ alerts

    def _alert(self, event: Event) -> None:
        """Runs on the event thread: queue a line above the prompt (cmd2's thread-safe way)."""
        d = event.data
        if d.get("parent") is not None and event.type in CHILD_QUIET:
            return  # a workflow's step or an agent's tool call: its parent's own end is announced
        pid = format_pid(event.pid or 0)
        name = safe_text(d.get("name", ""))  # names, errors, summaries: never raw to the terminal
        if event.type == "process.completed":
            text = Text.assemble((f"[{pid}] ", "cyan"), f"{name} ",
                                 ("completed", STATE_STYLES["Completed"]), f" in {d.get('runtime', 0):.1f}s")
        elif event.type in RESILIENCE_ALERT_TYPES:  # stalls, degraded mode on/off (there is no toolbar to show it)
            text = resilience_alert(event)
        elif event.type == "ipc.deadlock":
            victim = f"; killing {d['victim']} (lowest priority)" if d.get("victim") else "; see `locks`"
            text = Text.assemble(("deadlock", "bold red"), f" {safe_text(d.get('summary', ''))}{victim}")
        elif event.type == "process.breakpoint":
            text = Text.assemble((f"[{pid}] ", "cyan"), f"{name} ", ("stopped", STATE_STYLES["Paused"]),
                                 f" at breakpoint {d.get('number')} ({safe_text(d.get('description', ''))}); "
                                 f"`debug {pid}` to look, `debug {pid} continue` to go on")
        elif event.type == "process.unkillable":
            text = Text.assemble((f"[{pid}] ", "cyan"), f"{name} ", ("unkillable", "bold red"),
                                 f": {safe_text(d.get('reason', ''))}")
        else:
            state = event.type.split(".", 1)[1]
            text = Text.assemble((f"[{pid}] ", "cyan"), f"{name} ", (state, STATE_STYLES[state.title()]),
                                 f": {safe_text(d.get('error') or '')}")
        self.add_alert(msg=text)

    # ------------------------------------------------------------------ running and leaving

    def run_lines(self, lines: Iterable[str], *, keep_going: bool = False) -> int:
        """Run commands non-interactively; stop at the first failure unless `keep_going`.
        Returns the exit status: 0 if every command succeeded, 1 otherwise."""
        status = 0
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            stop = self.onecmd_plus_hooks(line)
            if self.consume_failure():
                status = 1
                if not keep_going:
                    break
            if stop:
                break
        return status or self.exit_code

    quit_parser = LlmunixArgumentParser(description="Leave llmunix. Live processes are stopped; "
                                                    "the interactive shell asks first.")
    quit_parser.add_argument("-f", "--force", action="store_true", help="do not ask")

    @cmd2.with_argparser(quit_parser)
    def do_quit(self, args: argparse.Namespace) -> bool | None:
        """Leave llmunix."""
        live = self.kernel.ps()
        if live and self.interactive and not args.force:
            names = ", ".join(f"{i.process_id} {i.name}" for i in live[:5]) + (" ..." if len(live) > 5 else "")
            try:
                answer = self.read_input(f"{len(live)} live process(es) ({names}) will be stopped. Quit? [y/N] ")
            except EOFError:
                answer = "y"
            if answer.strip().lower() not in ("y", "yes"):
                self.poutput("not quitting")
                return None
        self.last_result = True
        return True

    def do__eof(self, _: Any) -> bool | None:
        """Ctrl-D: leave (asking first if processes are live)."""
        self.poutput()
        return self.do_quit("")

    do_exit = do_quit

    def _max_running_changed(self, _name: str, _old: Any, new: Any) -> None:
        self.kernel.set_max_running(new)

    def _loglevel_changed(self, _name: str, _old: Any, new: Any) -> None:
        set_level(new)


def _positive_int(value: Any) -> int:
    n = int(value)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _log_level(value: Any) -> str:
    try:
        return parse_level(value)
    except LlmunixError as exc:
        raise ValueError(str(exc)) from None


def _positive_float(value: Any) -> float:
    x = float(value)
    if x <= 0:
        raise ValueError("must be greater than 0")
    return x


def _non_negative_float(value: Any) -> float:
    x = float(value)
    if x < 0:
        raise ValueError("must not be negative")
    return x
