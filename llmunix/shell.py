"""The `llmunix$` shell: a cmd2 application over one Kernel.

The shell is a thin client (STYLE: supervisorctl): command sets in `commands/` parse, call one
Kernel method and render a snapshot. This module adds what is shell-wide: the prompt, alerts
for background completions, exit status tracking for scripts, settables and leaving safely.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cmd2
from cmd2 import Cmd2ArgparseError
from cmd2 import string_utils as su
from cmd2.constants import COMMAND_ATTR_HELP_CATEGORY as HELP_CATEGORY
from cmd2.exceptions import RedirectionError
from cmd2.history import HistoryItem
from cmd2.utils import get_defining_class
from rich.console import Console
from rich.table import Table
from rich.text import Text

from commands import FAMILIES, SETTINGS_FAMILIES, all_command_sets, command_set, family_of
from commands.base import LlmunixArgumentParser, UsageError, setting_type
from commands.cmdline import MAX_LINE, LineError, command_word, prepare_line
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
_NAMED = re.compile(r"^[\w.!?@-]+( [\w.!?@-]+)?: ")  # an error that starts with its command's name (or
                                                   # a subcommand's: "agent run: ...")


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
                 stdin: Any = None, stdout: Any = None, notes: list[str] | None = None, lazy: bool = False,
                 alerts: bool | None = None) -> None:
        """`lazy`: register each command family when a line first uses it (one-shot runs: `-c`,
        scripts, piped input), not all at start (commands/__init__.py, FAMILIES). `alerts`: show
        alerts above the prompt (default: when interactive)."""
        cmd2.set_default_argument_parser(LlmunixArgumentParser)
        history = str(home / "history") if (interactive and home is not None) else ""
        super().__init__(
            stdin=stdin,
            stdout=stdout,
            allow_cli_args=False,
            auto_load_commands=False,
            command_sets=[] if lazy else all_command_sets(),
            persistent_history_file=history,
            include_py=False,
            allow_clipboard=False,  # `ps >` is a missing file name, not "copy to the clipboard"
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
        self.location = ""  # "FILE:LINE" while a script's line runs: every error starts with it
        self._families: set[str] = set() if lazy else set(FAMILIES)  # command families registered
        # Lines for stderr that a component found while a command ran (a definition that did not
        # load when the agent service was first made): printed after that command.
        self.notes: list[str] = notes if notes is not None else []
        # `wait` with no PIDs reports the processes started here that ended since the last one
        # (their failures make it fail: a script's `run fail` then `wait` exits non-zero).
        self.wait_mark = 0
        self.wait_seen: set[int] = set()  # what the last `wait` reported (it may have ended after its mark)
        self.reported: set[int] = set()  # ends `wait` has printed: their alerts are not repeated
        self.command_name = "llmunix"  # the command of the line being run, for errors that name it
        self.intro = (f"llmunix {__version__} — `help` lists commands, `tools` what can run, "
                      "`run sleep seconds=5` starts one.") if interactive else ""
        # Each number is checked against the same range as in config.toml (config.py).
        self.add_settable(cmd2.Settable("max_running", setting_type("max_running"),
                                        "processes allowed to run at once, or auto (follows CPU and memory; "
                                        "`limits` says the value now and why)", kernel,
                                        settable_attrib_name="max_running_setting"))
        self.add_settable(cmd2.Settable("kill_grace", setting_type("kill_grace", duration=True),
                                        "seconds between kill escalation steps", kernel))
        if kernel.monitor_interval is not None:
            self.add_settable(cmd2.Settable("monitor_interval", setting_type("monitor_interval", duration=True),
                                            "seconds between CPU / memory / I/O samples", kernel))
        self.add_settable(cmd2.Settable("time_slice", setting_type("time_slice", duration=True),
                                        "seconds a process runs before yielding to its peers", kernel))
        self.add_settable(cmd2.Settable("scheduling", str, "the order within a priority level: fifo, or learned "
                                        "(shortest expected first, deadlines earliest first)", kernel,
                                        choices=("fifo", "learned")))
        self.add_settable(cmd2.Settable("deadlock_policy", str, "on a deadlock: report, or kill-lowest (its "
                                        "lowest-priority member)", kernel, choices=("report", "kill-lowest")))
        self.loglevel = current_level()
        self.add_settable(cmd2.Settable("loglevel", _log_level, "what llmunix.log records: " + ", ".join(LEVELS),
                                        self, choices=LEVELS, onchange_cb=self._loglevel_changed))
        # Alerts: an interactive shell's own (a daemon's session shell feeds them to its client itself).
        subscribe = interactive if alerts is None else alerts
        self._alerts = kernel.subscribe(ALERT_EVENTS, self._alert) if subscribe else None

    # ------------------------------------------------------------------ output

    def output_is_plain(self) -> bool:
        try:
            return not self.stdout.isatty()
        except (AttributeError, ValueError):
            return True

    def rich_console(self) -> Console:
        return Console(file=self.stdout, markup=False, emoji=False)  # names are never markup

    def own(self, infos: Iterable[Any]) -> list[Any]:
        """Of `infos` (process snapshots), the processes this shell started: `wait` with no PIDs
        waits for these. Embedded, every process of the kernel is the shell's; a daemon's session
        shell keeps those its client started (daemon/session.py)."""
        return list(infos)

    def live(self, renderable: Any = None, **options: Any) -> Any:
        """A rich Live display on this shell's output (`wait`'s bars, `top`, `workflow --wait`)."""
        from rich.live import Live

        return Live(renderable, console=self.rich_console(), **options)

    @contextmanager
    def key_input(self) -> Iterator[int | None]:
        """Keys one at a time and unechoed, for a full-screen command (`top`): a descriptor to
        select on and read, or None when input is not a terminal. Cbreak mode, so Ctrl-C still
        raises KeyboardInterrupt; the terminal's settings come back however the command ends."""
        try:
            fd = self.stdin.fileno() if self.stdin.isatty() else None
        except (AttributeError, ValueError, OSError):
            fd = None
        with keys_unbuffered(fd):
            yield fd

    def fail(self, message: str) -> None:
        """A command failed: one line on stderr, and remember it for the exit status."""
        name = self.current_command.command if self.current_command is not None else self.command_name
        self.perror(f"{name}: {message}")

    def perror(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Every error: one line that names the command (cmd2's own messages are given its name),
        after `FILE:LINE: ` in a script; it makes the exit status non-zero."""
        if (kwargs.get("style", True) is None and objects and isinstance(objects[0], str)
                and objects[0].startswith("Elapsed: ")):
            super().perror(*objects, **kwargs)  # `set timing true` reports here: not an error
            return
        self.failed = True
        if objects and isinstance(objects[0], str | Exception):
            text = str(objects[0])
            cause = objects[0].__cause__ if isinstance(objects[0], RedirectionError) else None
            if isinstance(cause, OSError):  # cmd2 says "Failed to redirect output": say which file, and why
                text = f"cannot write {cause.filename or 'the file'}: {cause.strerror or cause}"
            if not _NAMED.match(text):
                text = f"{self.command_name}: {text}"
            objects = (f"{self.location}: {text}" if self.location else text, *objects[1:])
        super().perror(*objects, **kwargs)

    def pexcept(self, exception: BaseException, **kwargs: Any) -> None:
        """An unexpected error: one line for the user, the traceback to the log."""
        log.error("command failed", exc_info=exception)
        detail = (str(exception).splitlines() or [""])[0][:200]
        self.perror(f"{self.command_name}: internal error: {type(exception).__name__}: {detail} "
                    "(the traceback is in llmunix.log)")

    def default(self, statement: Any) -> bool | None:  # type: ignore[override]
        """An unknown command: one line, with the nearest command if there is one."""
        name = statement.command
        close = difflib.get_close_matches(name, self.get_visible_commands(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.perror(f"llmunix: no command {name[:40]!r}{hint} (`help` lists them)")
        return None

    def load_families(self, *modules: str) -> None:
        """Register these command families (module names; all of them if none are given) now."""
        for module in modules or tuple(FAMILIES):
            if module not in self._families:
                self._families.add(module)
                self.register_command_set(command_set(module))

    def _load_families_for(self, line: str) -> None:
        """A lazy shell registers what `line` needs: its command's family; for `help` the one it
        asks about (all for a listing), for `set` those with settings, for anything else (an
        unknown word: its suggestion looks at every command) all of them."""
        if len(self._families) == len(FAMILIES):
            return
        word = self.command_name
        family = family_of(word)
        if family is not None:
            self.load_families(family)
        elif word == "help":
            topic = family_of(line.split()[1]) if len(line.split()) > 1 else None
            self.load_families(*((topic,) if topic else ()))
        elif word == "set":
            self.load_families(*SETTINGS_FAMILIES)
        elif word not in self.get_all_commands():
            self.load_families()

    def consume_failure(self) -> bool:
        failed, self.failed = self.failed, False
        return failed

    def onecmd_plus_hooks(self, line: str, **kwargs: Any) -> bool:
        """Run one command line and record it in the audit trail with its exit status. The line
        is read first as a POSIX shell would (commands/cmdline.py): a syntax error is one line
        naming the command, and cmd2 gets the line in a form it splits the same way."""
        earlier, self.failed = self.failed, False
        self.command_name = command_word(line)
        try:
            try:
                prepared = prepare_line(line)
            except LineError as exc:
                self.command_name = exc.command
                self.perror(str(exc))
                return False
            if not prepared:  # blank, or only a comment
                return False
            self.command_name = command_word(prepared)
            self._load_families_for(prepared)
            return super().onecmd_plus_hooks(prepared, **kwargs)
        finally:
            text = line.strip()[:MAX_LINE]
            if text and text != "_eof" and not text.startswith("#"):
                self.kernel.record_command(audit_text(text), 1 if self.failed else 0)
            self.failed = self.failed or earlier
            while self.notes:  # what a component found while this command ran (load errors)
                print(self.notes.pop(0), file=sys.stderr)

    def onecmd(self, statement: Any, *, add_to_history: bool = True) -> bool:
        try:
            return super().onecmd(statement, add_to_history=add_to_history)
        except Cmd2ArgparseError as exc:
            if isinstance(exc.__cause__, UsageError):
                self.perror(exc.__cause__.text)
            elif getattr(exc.__cause__, "code", 0):  # `-h` exits 0 (cmd2 would report success for both)
                self.failed = True
            raise
        finally:
            self._redact_last_history()

    def report_usage(self, exc: SystemExit) -> None:
        """For a command that runs a parser itself: print its usage error (`-h` is not one)."""
        if isinstance(exc, UsageError):
            self.perror(exc.text)
        elif exc.code:
            self.failed = True

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
        text = self.alert_text(event)
        if text is not None:
            self.add_alert(msg=text)

    def alert_text(self, event: Event) -> Text | None:
        """The line an alert event shows above the prompt, or None for one this shell does not
        announce (a child's end; an end `wait` has printed already)."""
        d = event.data
        if d.get("parent") is not None and event.type in CHILD_QUIET:
            return None  # a workflow's step or an agent's tool call: its parent's own end is announced
        if event.type in CHILD_QUIET and event.pid in self.reported:
            self.reported.discard(event.pid)
            return None  # `wait` has shown this end already
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
        return text

    # ------------------------------------------------------------------ running and leaving

    def run_lines(self, lines: Iterable[str], *, keep_going: bool = False, source: str = "") -> int:
        """Run commands non-interactively; stop at the first failure unless `keep_going`.
        With a `source` (a script's name), each error starts with `SOURCE:LINE: `.
        Returns the exit status: 0 if every command succeeded, 1 otherwise."""
        status = 0
        try:
            for number, raw in enumerate(lines, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                self.location = f"{source}:{number}" if source else ""
                stop = self.onecmd_plus_hooks(line)
                if self.consume_failure():
                    status = 1
                    if not keep_going:
                        break
                if stop:
                    break
        finally:
            self.location = ""
        return status or self.exit_code

    quit_parser = LlmunixArgumentParser(description="Leave llmunix. Live processes are stopped; "
                                                    "the interactive shell asks first.")
    quit_parser.add_argument("-f", "--force", action="store_true", help="do not ask")

    # `set` as cmd2 has it, but with llmunix's errors (one line naming `set`, a read-only home
    # refused), and a listing that follows the terminal (plain, never wrapped, when piped; --json).
    @cmd2.with_argparser(cmd2.Cmd._build_set_parser, preserve_quotes=True)
    def do_set(self, args: argparse.Namespace) -> None:
        """Show the settings, show one, or change one: `set NAME VALUE`."""
        self.last_result = False
        if args.param:
            settable = self.settables.get(args.param)
            if settable is None:
                close = difflib.get_close_matches(args.param, list(self.settables), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(f"no setting {args.param!r}{hint} (`set` lists them)")
                return
            if args.value is not None:
                self._set(args.param, settable, su.strip_quotes(args.value))
                return
        names = [args.param] if args.param else sorted(self.settables, key=str.lower)
        self.last_result = {name: self.settables[name].value for name in names}
        if self.output_is_plain():
            self.poutput(_settings_plain(self.settables, names), soft_wrap=True)
        else:
            self.poutput(_settings_table(self.settables, names))

    def _set(self, name: str, settable: cmd2.Settable, value: str) -> None:
        if self.kernel.read_only and settable.settable_obj is not self:  # the kernel's, not this shell's
            self.fail(f"read-only: {self.kernel.home} is in use by llmunix pid {self.kernel.home_owner}; "
                      f"change {name} there")
            return
        try:
            settable.value = value
        except (ValueError, TypeError, LlmunixError) as exc:
            self.fail(str(exc) if name in str(exc) else f"bad value {value!r} for {name}: {exc}")
            return
        self.pfeedback(Text.assemble(f"{name} ─> ", (f"{settable.value!r}", "green")))
        self.last_result = True

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

    def _loglevel_changed(self, _name: str, _old: Any, new: Any) -> None:
        set_level(new)


@contextmanager
def keys_unbuffered(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time and unechoed (cbreak: Ctrl-C still raises KeyboardInterrupt);
    the terminal's settings come back however the command ends. None: nothing to do."""
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _settings_plain(settables: dict[str, cmd2.Settable], names: list[str]) -> str:
    """`set` for a pipe: NAME VALUE DESCRIPTION, one line each, never wrapped; a value is one
    field (JSON-quoted when it is empty or has spaces), so `awk '{print $2}'` is safe."""
    def field(value: Any) -> str:
        text = str(value)
        return json.dumps(text) if not text or any(c.isspace() for c in text) else text

    rows = [("NAME", "VALUE", "DESCRIPTION")] + [(n, field(settables[n].value), settables[n].description)
                                                 for n in names]
    widths = [max(len(r[c]) for r in rows) for c in range(2)]
    return "\n".join(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip() for r in rows)


def _settings_table(settables: dict[str, cmd2.Settable], names: list[str]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("NAME", style="cyan", no_wrap=True)
    table.add_column("VALUE", no_wrap=True, overflow="fold")
    table.add_column("DESCRIPTION")
    for name in names:
        table.add_row(name, str(settables[name].value), Text.from_ansi(settables[name].description))
    return table


def _log_level(value: Any) -> str:
    try:
        return parse_level(value)
    except LlmunixError as exc:
        raise ValueError(str(exc)) from None

