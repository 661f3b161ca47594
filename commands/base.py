"""What every command family shares: the kernel handle, output that follows the terminal,
one-line failures, PID parsing and completion providers."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import cmd2
from cmd2 import Choices, CompletionItem
from rich.console import Console

from llmunix.kernel import Kernel
from llmunix.models import LlmunixError, Priority, format_pid
from llmunix.tools.markdown import REFUSED, FileCheck

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
    return pid


def parse_pids(texts: Iterable[str]) -> list[int]:
    return [parse_pid(t) for t in texts]


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if value[:1] in ("'", '"') and not (len(value) > 1 and value[-1] == value[0]):
            raise LlmunixError(
                f"parameter {key!r} has an unclosed quote; quote the whole pair to pass spaces or ; | >, "
                f"e.g. \"{key}=a value; more\""
            )
        if not sep or not key:
            raise LlmunixError(f"bad parameter {pair!r}; write tool parameters as key=value")
        if value[:1] in ("'", '"') and value[-1:] == value[:1]:
            value = value[1:-1]
        params[key.strip()] = value
    return params


class LlmunixArgumentParser(cmd2.Cmd2ArgumentParser):
    """Usage errors in one line: what was wrong and where to look."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        first = message.splitlines()[0] if message else "bad arguments"
        sys.stderr.write(f"{self.prog}: {first} (see '{self.prog} -h')\n")
        sys.stderr.flush()
        self.exit(2)


def plain_text(renderable: Any) -> str:
    """Render for a pipe: no colour, and wide enough that no line is wrapped or cropped."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=10_000, color_system=None, force_terminal=False, no_color=True,
                      highlight=False, emoji=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())
