"""Monitoring commands: `top` (a live full-screen process monitor, or plain frames in batch
mode) and `stats` (per-tool run statistics)."""

from __future__ import annotations

import argparse
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cmd2

from commands import top_views
from commands.base import LlmunixArgumentParser, ShellCommandSet
from commands.top_views import SORTS, TopFrame, TopRow
from llmunix.models import LlmunixError

RECENT = 5.0  # seconds a finished process stays listed
SORT_KEYS = {"c": "cpu", "m": "mem", "p": "priority", "n": "pid"}


def _delay(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"bad delay {value!r}; give seconds such as 1 or 0.5")
    return seconds


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"bad frame count {value!r}; give a number such as 3")
    return n


@dataclass
class TopControls:
    """What the keys change while `top` runs. `press` takes the characters read in one go."""

    sort: str = "pid"
    filter: str = ""
    editing: str | None = None  # not None while a filter is being typed after `/`
    quit: bool = False

    def press(self, keys: str) -> None:
        if keys.startswith("\x1b") and len(keys) > 1:
            return  # an escape sequence (arrow or function key): not ours
        for key in keys:
            if self.editing is not None:
                if key in "\r\n":
                    self.filter, self.editing = self.editing.strip(), None
                elif key == "\x1b":
                    self.filter, self.editing = "", None
                elif key in "\x7f\x08":
                    self.editing = self.editing[:-1]
                elif key == "\x03":
                    self.quit = True
                elif key.isprintable():
                    self.editing += key
            elif key in ("q", "Q", "\x03"):
                self.quit = True
            elif key == "/":
                self.editing = ""
            elif key == "\x1b":
                self.filter = ""
            elif key.lower() in SORT_KEYS:
                self.sort = SORT_KEYS[key.lower()]


class TopCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Monitoring commands"

    top_parser = LlmunixArgumentParser(
        description="Watch processes live: system CPU, memory and load, llmunix's own share, and "
                    "every live (or just finished) process with its CPU, memory, progress and a CPU "
                    "history. Keys: q quit, c/m/p/n sort by CPU/memory/priority/PID, / filter "
                    "(Enter applies, Esc clears). Piped, or with -b, it prints plain frames instead.",
        epilog="examples:\n  top\n  top -p processes\n  top -d 0.5 -s cpu\n  top -b -n 3 -d 2\n"
               "  top -b | grep Running\n  top --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    top_parser.add_argument("-p", "--pick", choices=["processes"], default="processes",
                            help="what to monitor (only processes, as in the seed's `top -p processes`)")
    top_parser.add_argument("-d", "--delay", type=_delay, default=1.0, metavar="SECS",
                            help="seconds between refreshes (default 1)")
    top_parser.add_argument("-s", "--sort", choices=list(SORTS), default="pid", help="initial sort order")
    top_parser.add_argument("-b", "--batch", action="store_true",
                            help="print plain-text frames instead of the live screen")
    top_parser.add_argument("-n", "--iterations", type=_count, metavar="N",
                            help="stop after N frames (batch default: 1)")
    top_parser.add_argument("--json", action="store_true", help="print one frame as JSON")

    @cmd2.with_argparser(top_parser)
    def do_top(self, args: argparse.Namespace) -> None:
        """Watch processes live."""
        controls = TopControls(sort=args.sort)
        with self._monitor_pace(args.delay):
            try:
                if args.json:
                    self._await_sample(after=0.0, timeout=args.delay + 1.0)
                    self.out_json(top_views.top_record(self._frame(controls, args.delay, {})))
                elif args.batch or self.plain:
                    self._batch(controls, args.delay, args.iterations or 1)
                else:
                    self._live(controls, args.delay, args.iterations)
            except KeyboardInterrupt:  # Ctrl-C ends top; that is not a failure
                pass

    stats_parser = LlmunixArgumentParser(
        description="Per-tool statistics from the run history (this and earlier sessions): runs, "
                    "how they ended, success rate, and mean and 95th-percentile duration of completed runs.",
        epilog="examples:\n  stats\n  stats sleep\n  stats --json\n  stats | sort -k6",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    stats_parser.add_argument("tool", nargs="?", metavar="TOOL", help="only this tool",
                              choices_provider=ShellCommandSet.tool_choices)
    stats_parser.add_argument("--json", action="store_true", help="print a JSON array")

    @cmd2.with_argparser(stats_parser)
    def do_stats(self, args: argparse.Namespace) -> None:
        """Per-tool run statistics."""
        try:
            stats = self.kernel.tool_stats(args.tool)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json([s.to_dict() for s in stats])
        elif self.plain:
            self.out(top_views.stats_plain(stats))
        else:
            self.out(top_views.stats_table(stats))

    # ------------------------------------------------------------------ frames

    def _frame(self, controls: TopControls, delay: float, progress: dict[int, float | None]) -> TopFrame:
        """One snapshot for the renderers. `progress` holds the previous frame's percentages (for
        the progress arrows) and is updated."""
        infos = self.kernel.recent(RECENT)
        rows = []
        for info in infos:
            try:
                samples = tuple(self.kernel.samples(info.pid))
            except LlmunixError:  # gone from memory between the two calls
                samples = ()
            before, now = progress.get(info.pid), info.progress.percentage
            trend = "" if before is None or now is None or now == before else \
                top_views.UP if now > before else top_views.DOWN
            rows.append(TopRow(info, samples, trend))
        progress.clear()
        progress.update((i.pid, i.progress.percentage) for i in infos)
        system = self.kernel.system()
        return TopFrame(time=time.time(), system=system[-1] if system else None,
                        rows=top_views.arrange(rows, controls.sort, controls.filter),
                        counts=top_views.count_states(infos), sort=controls.sort, filter=controls.filter,
                        editing=controls.editing, delay=delay)

    def _batch(self, controls: TopControls, delay: float, frames: int) -> None:
        progress: dict[int, float | None] = {}
        shown = 0.0  # time of the system sample the last frame showed
        start = time.monotonic()
        for n in range(frames):
            if n:
                threading.Event().wait(max(0.0, start + n * delay - time.monotonic()))
            self._await_sample(after=shown, timeout=delay + 1.0)
            frame = self._frame(controls, delay, progress)
            shown = frame.system.time if frame.system is not None else frame.time
            if n:
                self._cmd.poutput("")
            self.out(top_views.top_plain(frame))

    def _live(self, controls: TopControls, delay: float, frames: int | None) -> None:
        from rich.live import Live

        progress: dict[int, float | None] = {}
        stdin = self._cmd.stdin
        fd = stdin.fileno() if _isatty(stdin) else None
        shown = 0
        with _keys_unbuffered(fd), Live(console=self._cmd.rich_console(), screen=True, auto_refresh=False) as live:
            due = 0.0
            while not controls.quit:
                if time.monotonic() >= due:
                    live.update(top_views.top_rich(self._frame(controls, delay, progress)), refresh=True)
                    shown += 1
                    due = time.monotonic() + delay
                    if frames is not None and shown >= frames:
                        return
                wait = max(0.0, due - time.monotonic())
                if fd is None:
                    threading.Event().wait(wait)
                elif select.select([fd], [], [], wait)[0]:
                    controls.press(os.read(fd, 64).decode("utf-8", "ignore"))
                    due = 0.0  # show what the key changed now

    def _await_sample(self, after: float, timeout: float) -> None:
        """Wait (boundedly) for a system measurement newer than `after`, so that each batch frame
        shows figures taken since the previous one."""
        if self.kernel.monitor_interval is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            system = self.kernel.system()
            if system and system[-1].time > after:
                return
            threading.Event().wait(0.02)

    @contextmanager
    def _monitor_pace(self, delay: float) -> Iterator[None]:
        """While top runs, measure at least as often as it refreshes (setting the interval also
        takes a measurement at once); the user's interval comes back afterwards."""
        before = self.kernel.monitor_interval
        if before is None or delay >= before:
            yield
            return
        self.kernel.monitor_interval = delay
        try:
            yield
        finally:
            self.kernel.monitor_interval = before


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


@contextmanager
def _keys_unbuffered(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time and unechoed (cbreak: Ctrl-C still raises KeyboardInterrupt);
    the terminal's settings come back however top ends."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
