"""What every command family shares: the kernel handle, output that follows the terminal,
one-line failures, PID parsing and completion providers."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import cmd2
from cmd2 import Choices, CompletionItem
from rich.console import Console

from llmunix.config import allowed_values, check_setting
from llmunix.kernel import Kernel
from llmunix.models import LlmunixError, Priority, format_pid, parse_duration
from llmunix.tools.markdown import REFUSED, FileCheck

MAX_PID = 2**63 - 1  # the store's integers: no PID is larger

if TYPE_CHECKING:
    pass


class ShellCommandSet(cmd2.CommandSet["LlmunixShell"]):
    """Base for llmunix command sets. Commands talk to the engine only through `self.kernel`
    (Kernel methods returning snapshots)."""

    DEFAULT_CATEGORY = "Process commands"

    @property
    def kernel(self) -> Kernel:
        return self._cmd.kernel

    @property
    def plain(self) -> bool:
        """True when output goes to a pipe or file: print plain text, not rich renderables."""
        return self._cmd.output_is_plain()

    def out(self, renderable: Any) -> None:
        if self.plain and not isinstance(renderable, str):
            renderable = plain_text(renderable)
        self._cmd.poutput(renderable)

    def out_json(self, data: Any) -> None:
        self._cmd.poutput(json.dumps(data, indent=2, ensure_ascii=False), soft_wrap=True)

    def fail(self, message: str) -> None:
        """Report a failed command: one line on stderr, and a non-zero exit status in scripts."""
        self._cmd.fail(message)

    def report_check(self, check: Callable[[], Sequence[FileCheck]], directory: str, as_json: bool) -> None:
        """Print a `--check DIR` report (agents, tools, workflows); the command fails, in one
        line, when a file was refused."""
        try:
            results = check()
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        from commands import check_views

        root = Path(directory).expanduser().resolve()
        if as_json:
            self.out_json(check_views.check_json(results, root))
        else:
            self.out(check_views.check_plain(results, root) if self.plain else check_views.check_table(results, root))
        refused = [r for r in results if r.status == REFUSED]
        if refused:
            self.fail(f"{len(refused)} of {len(results)} file{'s' if len(results) != 1 else ''} refused")
        elif not results:
            self.fail(f"no markdown files under {directory}")

    # ------------------------------------------------------------------ streamed output (issue 16b)

    def out_stream(self, chunks: Iterable[str]) -> None:
        """Write text as it is produced, straight to the command's output (a terminal, a pipe or
        a redirection): for outputs too big to build whole and hand to rich (`ps -a --json` of
        10,000 processes). A reader that goes away (`| head`) ends it quietly."""
        stdout = self._cmd.stdout
        try:
            for chunk in chunks:
                stdout.write(chunk)
            stdout.flush()
        except BrokenPipeError:
            pass

    # ------------------------------------------------------------------ completion providers

    def live_pid_choices(self) -> Choices:
        items = [CompletionItem(format_pid(i.pid), display_meta=f"{i.name} {i.display_state}")
                 for i in self.kernel.ps()]
        return Choices(items=items, is_sorted=True)

    def any_pid_choices(self) -> Choices:
        # Live and recently finished ones only: `ps(all=True)` would load every earlier session's
        # record from the store on each Tab press.
        items = [CompletionItem(format_pid(i.pid), display_meta=f"{i.name} {i.display_state}")
                 for i in self.kernel.recent(3600)[-200:]]
        return Choices(items=items, is_sorted=True)

    def priority_choices(self) -> Choices:
        return Choices.from_values([p.label for p in sorted(Priority, reverse=True)], is_sorted=True)

    def tool_choices(self) -> Choices:
        items = [CompletionItem(t.name, display_meta=t.description[:60]) for t in self.kernel.registry]
        return Choices(items=items, is_sorted=True)


def parse_pid(text: str) -> int:
    try:
        pid = int(str(text).strip())
    except ValueError:
        raise LlmunixError(f"bad PID {text!r}; PIDs are numbers such as 003 (see `ps`)") from None
    if pid < 1:
        raise LlmunixError(f"bad PID {text!r}; PIDs start at 001")
    if pid > MAX_PID:
        raise LlmunixError(f"no process {str(text).strip()[:30]}: no PID is that large; `ps -a` lists them")
    return pid


def parse_pids(texts: Iterable[str]) -> list[int]:
    return [parse_pid(t) for t in texts]


def count_arg(value: str) -> int:
    """An argparse type for a count such as `--tail N`: a whole number, 0 or more."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"bad count {value!r}; give a whole number such as 20")
    return n


def positive_duration(flag: str, text: str) -> float:
    """A `--timeout`-style option's value in seconds: a duration more than 0, else a one-line error."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise LlmunixError(f"bad {flag} {text!r}; it must be more than 0")
    return seconds


def parse_params(pairs: Iterable[str]) -> dict[str, str | list[str]]:
    """`key=value` words (quotes already removed by the shell, see cmdline.py) as a mapping;
    a key given more than once maps to the list of its values, in order (Tool.from_text decides
    whether that is allowed)."""
    params: dict[str, str | list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = pair if len(pair) <= 40 else pair[:40] + "..."
            raise LlmunixError(f"bad parameter {shown!r}; write tool parameters as key=value")
        before = params.get(key)
        if before is None:
            params[key] = value
        elif isinstance(before, list):
            before.append(value)
        else:
            params[key] = [before, value]
    return params


def setting_type(name: str, *, duration: bool = False) -> Callable[[Any], Any]:
    """A settable's value converter: the setting's range from the configuration (config.py), and
    for seconds also durations such as 2m. Raises ValueError with one line (what `set` expects)."""

    def convert(value: Any) -> Any:
        try:
            seconds = parse_duration(value) if duration else value
        except LlmunixError:
            raise ValueError(f"{name} must be {allowed_values(name)} (seconds, or a duration such as 2m), "
                             f"not {value!r}") from None
        try:
            return check_setting(name, seconds)
        except LlmunixError as exc:
            raise ValueError(str(exc)) from None

    convert.__name__ = f"{name}_value"
    return convert


def setting_arg(name: str) -> Callable[[str], Any]:
    """An option's argparse type checked like the setting `name` (e.g. `gc --days` like
    retention_days): a bad value is a usage error saying what is allowed."""

    def convert(value: str) -> Any:
        try:
            return check_setting(name, value)
        except LlmunixError:
            raise argparse.ArgumentTypeError(f"must be {allowed_values(name)}, not {value!r}") from None

    convert.__name__ = name
    return convert


class UsageError(SystemExit):
    """A command's arguments are wrong. Raised by the parsers (cmd2 turns a SystemExit from one into
    Cmd2ArgparseError); the shell prints `text` as the command's one-line error."""

    def __init__(self, text: str) -> None:
        super().__init__(2)
        self.text = text


class LlmunixArgumentParser(cmd2.Cmd2ArgumentParser):
    """Usage errors in one line: what was wrong and where to look."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        first = message.splitlines()[0] if message else "bad arguments"
        if len(first) > 300:  # it quotes what was typed, which may be anything
            first = first[:300] + "..."
        raise UsageError(f"{self.prog}: {first} (see '{self.prog} -h')")


def plain_text(renderable: Any) -> str:
    """Render for a pipe: no colour, and wide enough that no line is wrapped or cropped. Strings
    are never read as rich markup (a workflow named `[bold]x` is printed as it is), as on a
    terminal, where cmd2's consoles have markup off."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=10_000, color_system=None, force_terminal=False, no_color=True,
                      highlight=False, emoji=False, markup=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())
