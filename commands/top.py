"""Monitoring commands: `top` (a live full-screen process monitor, or plain frames in batch
mode) and `stats` (per-tool run statistics)."""

from __future__ import annotations

import argparse
import os
import select
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import cmd2

from commands.base import LlmunixArgumentParser, ShellCommandSet
from commands.selection import count_type
from commands.top_views import SORTS, TopFrame, TopRow
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, Priority, format_pid
from llmunix.monitor import ResourceSample

top_views = lazy_module("commands.top_views")

RECENT = 5.0  # seconds a finished process stays listed
# p pauses, so priority sorts on P; the others take either case.
SORT_KEYS = {"c": "cpu", "C": "cpu", "m": "mem", "M": "mem", "P": "priority", "n": "pid", "N": "pid"}


def _delay(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"bad delay {value!r}; give seconds such as 1 or 0.5")
    return seconds


_count = count_type("frame count", 3)


# Keys that arrive as escape sequences (normal and application cursor mode).
ARROWS = {"\x1b[A": "up", "\x1bOA": "up", "\x1b[B": "down", "\x1bOB": "down", "\x1b[5~": "page-up",
          "\x1b[6~": "page-down", "\x1b[H": "home", "\x1bOH": "home", "\x1b[1~": "home",
          "\x1b[F": "end", "\x1bOF": "end", "\x1b[4~": "end"}
PAGE = 10


def split_keys(text: str) -> list[str]:
    """Characters read in one go, as keys: an escape sequence (`ESC [ ... final`, `ESC O x`) is
    one key; a lone ESC is the Esc key."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\x1b" and i + 1 < len(text) and text[i + 1] in "[O":
            j = i + 2
            if text[i + 1] == "[":
                while j < len(text) and not ("\x40" <= text[j] <= "\x7e"):
                    j += 1
            keys.append(text[i:j + 1])
            i = j + 1
        else:
            keys.append(text[i])
            i += 1
    return keys


@dataclass(frozen=True, slots=True)
class Action:
    """What a key asks of the kernel, for the command to carry out: `kill`, `toggle-pause`,
    `priority` (by `step` levels) on process `pid`."""

    verb: str
    pid: int
    step: int = 0


@dataclass
class TopControls:
    """What the keys change while `top` runs. `press` takes the characters read in one go and
    returns the actions they ask for; `show` tells it which PIDs the screen lists, in order."""

    sort: str = "pid"
    filter: str = ""
    editing: str | None = None  # not None while a filter is being typed after `/`
    quit: bool = False
    tree: bool = False
    selected: int | None = None  # the PID under the cursor
    detail: int | None = None  # the PID whose `ps -l` view is shown (Enter), even after it leaves the list
    confirm: int | None = None  # a kill waiting for y
    status: str = ""
    order: tuple[int, ...] = ()  # the PIDs listed, top to bottom, as last shown

    def show(self, pids: Sequence[int]) -> None:
        """The list now shows `pids`: keep the cursor on its process, or, if that one is gone,
        at the same height (the first row at the start)."""
        pids = tuple(pids)
        if self.selected not in pids:
            if not pids:
                self.selected = None
            elif self.selected is None or self.selected not in self.order:
                self.selected = pids[0]
            else:
                self.selected = pids[min(self.order.index(self.selected), len(pids) - 1)]
        self.order = pids

    def press(self, keys: str) -> list[Action]:
        actions: list[Action] = []
        for key in split_keys(keys):
            action = self._key(key)
            if action is not None:
                actions.append(action)
        return actions

    def _key(self, key: str) -> Action | None:
        if self.confirm is not None:  # "kill 003 sleep? y/N": only y goes ahead
            pid, self.confirm = self.confirm, None
            if key in ("y", "Y"):
                return Action("kill", pid)
            self.status = "kill cancelled"
            return None
        if self.editing is not None:
            self._edit(key)
            return None
        target = self.selected if self.detail is None else self.detail
        if key in ARROWS:
            self._move(ARROWS[key])
            if self.detail is not None:  # the details follow the cursor
                self.detail = self.selected
        elif len(key) > 1:
            pass  # another function key: not ours
        elif key == "\x03" or (key in "qQ" and self.detail is None):
            self.quit = True
        elif self.detail is not None and key in "\x1b\r\nqQ\x7f\x08":
            self.detail = None
        elif key in "\r\n":
            self.detail = self.selected
        elif key == "/":
            self.editing = ""
        elif key == "\x1b":
            self.filter = ""
        elif key == "t":
            self.tree = not self.tree
        elif key in SORT_KEYS:
            self.sort = SORT_KEYS[key]
        elif target is None:
            if key in "kp+=-_":
                self.status = "no process selected"
        elif key == "k":
            self.confirm = target
        elif key == "p":
            return Action("toggle-pause", target)
        elif key in "+=":
            return Action("priority", target, +1)
        elif key in "-_":
            return Action("priority", target, -1)
        return None

    def _edit(self, key: str) -> None:
        assert self.editing is not None
        if key in ("\r", "\n"):
            self.filter, self.editing = self.editing.strip(), None
        elif key == "\x1b":
            self.filter, self.editing = "", None
        elif key in ("\x7f", "\x08"):
            self.editing = self.editing[:-1]
        elif key == "\x03":
            self.quit = True
        elif len(key) == 1 and key.isprintable():
            self.editing += key

    def _move(self, where: str) -> None:
        if not self.order:
            return
        at = self.order.index(self.selected) if self.selected in self.order else 0
        at = {"up": at - 1, "down": at + 1, "page-up": at - PAGE, "page-down": at + PAGE,
              "home": 0, "end": len(self.order) - 1}[where]
        self.selected = self.order[max(0, min(at, len(self.order) - 1))]


class TopCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Monitoring commands"

    top_parser = LlmunixArgumentParser(
        description="Watch processes live and act on them: system CPU, memory and load, llmunix's own "
                    "share, and every live (or just finished) process with its CPU, memory, progress and a "
                    "CPU history. Keys: up/down select, Enter details (ps -l), k kill (asks), p pause/resume, "
                    "+/- priority, t tree, c/m/P/n sort by CPU/memory/priority/PID, / filter (Enter applies, "
                    "Esc clears), q quit. Piped, or with -b, it prints plain frames instead.",
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
                    "how they ended, success rate, and mean and 95th-percentile duration of completed runs. "
                    "With --tokens: LLM tokens and cost per top-level process (its children's included: an "
                    "agent's tools and sub-agents, a workflow's steps) and per model and endpoint.",
        epilog="examples:\n  stats\n  stats sleep\n  stats --json\n  stats | sort -k6\n  stats --tokens\n"
               "  stats --tokens -n 10\n  stats --tokens --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    stats_parser.add_argument("tool", nargs="?", metavar="TOOL", help="only this tool",
                              choices_provider=ShellCommandSet.tool_choices)
    stats_parser.add_argument("--tokens", action="store_true",
                              help="LLM tokens and cost per process tree and per model (prices: [llm.prices])")
    stats_parser.add_argument("-n", "--last", type=count_type("process count", 1), metavar="N",
                              help="with --tokens: only the N newest top-level processes")
    stats_parser.add_argument("--json", action="store_true", help="print a JSON array (--tokens: an object)")

    @cmd2.with_argparser(stats_parser)
    def do_stats(self, args: argparse.Namespace) -> None:
        """Per-tool run statistics."""
        if args.tokens or args.last is not None:
            self._token_stats(args)
            return
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

    def _token_stats(self, args: argparse.Namespace) -> None:
        if not args.tokens:
            self.fail("-n goes with --tokens: stats --tokens -n 10")
            return
        if args.tool:
            self.fail("stats --tokens takes no TOOL; it rolls up processes and models")
            return
        try:
            report = self.kernel.agents.token_report(args.last)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json(report.to_dict())
        elif self.plain:
            self.out(top_views.tokens_plain(report))
        else:
            self.out(top_views.tokens_table(report))

    # ------------------------------------------------------------------ frames

    def _frame(self, controls: TopControls, delay: float, progress: dict[int, float | None]) -> TopFrame:
        """One snapshot for the renderers. `progress` holds the previous frame's percentages (for
        the progress arrows) and is updated."""
        infos = self.kernel.recent(RECENT)
        usage = self.kernel.agents.usage([i.pid for i in infos])  # LLM tokens, children's included
        rows = []
        for info in infos:
            rows.append(TopRow(info, self._samples(info.pid), _trend(progress.get(info.pid),
                                                                     info.progress.percentage), usage.get(info.pid)))
        progress.clear()
        progress.update((i.pid, i.progress.percentage) for i in infos)
        system = self.kernel.system()
        arranged = top_views.arrange(rows, controls.sort, controls.filter)
        guides: tuple[str, ...] = ()
        if controls.tree:
            arranged, guides = top_views.as_tree(arranged)
        controls.show([r.info.pid for r in arranged])
        return TopFrame(time=time.time(), system=system[-1] if system else None, rows=arranged,
                        counts=top_views.count_states(infos), sort=controls.sort, filter=controls.filter,
                        editing=controls.editing, delay=delay, selected=controls.selected, tree=controls.tree,
                        guides=guides, status=self._status(controls))

    def _samples(self, pid: int) -> tuple[ResourceSample, ...]:
        try:
            return tuple(self.kernel.samples(pid))
        except LlmunixError:  # gone from memory between the two calls
            return ()

    @staticmethod
    def _status(controls: TopControls) -> str:
        if controls.confirm is not None:
            return f"kill {format_pid(controls.confirm)}? y to confirm, any other key to cancel"
        return controls.status

    def _batch(self, controls: TopControls, delay: float, frames: int) -> None:
        progress: dict[int, float | None] = {}
        shown = 0.0  # time of the system sample the last frame showed
        start = time.monotonic()
        widths: dict[str, int] | None = None
        for n in range(frames):
            if n:
                threading.Event().wait(max(0.0, start + n * delay - time.monotonic()))
            self._await_sample(after=shown, timeout=delay + 1.0)
            frame = self._frame(controls, delay, progress)
            widths = _plain_widths(frame, widths)
            shown = frame.system.time if frame.system is not None else frame.time
            if n:
                self._cmd.poutput("")
            self.out(top_views.top_plain(replace(frame, widths=widths)))

    def _live(self, controls: TopControls, delay: float, frames: int | None) -> None:
        progress: dict[int, float | None] = {}
        widths: dict[str, int] | None = None
        shown = 0
        with self._cmd.key_input() as fd, self._cmd.live(screen=True, auto_refresh=False) as live:
            due = 0.0
            while not controls.quit:
                if time.monotonic() >= due:
                    frame = self._frame(controls, delay, progress)
                    widths = top_views.stable_widths(frame, widths)
                    live.update(self._screen(controls, replace(frame, widths=widths)), refresh=True)
                    shown += 1
                    due = time.monotonic() + delay
                    if frames is not None and shown >= frames:
                        return
                wait = max(0.0, due - time.monotonic())
                if fd is None:
                    threading.Event().wait(wait)
                elif select.select([fd], [], [], wait)[0]:
                    controls.status = ""
                    for action in controls.press(os.read(fd, 64).decode("utf-8", "ignore")):
                        controls.status = self._carry_out(action)
                    due = 0.0  # show what the key changed now

    def _screen(self, controls: TopControls, frame: TopFrame) -> Any:
        if controls.detail is None:
            return top_views.top_rich(frame)
        try:
            info = self.kernel.info(controls.detail)
        except LlmunixError:
            info = None
        usage = self.kernel.agents.usage([controls.detail]).get(controls.detail) if info is not None else None
        return top_views.top_detail(frame, info, usage)

    def _carry_out(self, action: Action) -> str:
        """Do what a key asked (through the same Kernel verbs as `kill`, `pause`, `resume` and
        `priority`); returns the line the status bar shows."""
        try:
            if action.verb == "kill":
                info = self.kernel.kill(action.pid)
                return f"{'killed' if info.is_done else 'stopping'} {info.process_id} {info.name}"
            if action.verb == "toggle-pause":
                if self.kernel.info(action.pid).phase == "paused":
                    info = self.kernel.resume(action.pid)
                    return f"resumed {info.process_id} {info.name}"
                info = self.kernel.pause(action.pid)
                return f"{'paused' if info.phase == 'paused' else 'pausing'} {info.process_id} {info.name}"
            info = self.kernel.info(action.pid)
            level = int(info.priority) + action.step
            if not int(min(Priority)) <= level <= int(max(Priority)):
                return f"{info.process_id} {info.name} is already {info.priority.label}"
            info = self.kernel.renice(action.pid, Priority(level))
            return f"{info.process_id} {info.name} priority {info.priority.label}"
        except LlmunixError as exc:
            return str(exc)

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


def _trend(before: float | None, now: float | None) -> str:
    if before is None or now is None or now == before:
        return ""
    return top_views.UP if now > before else top_views.DOWN


def _plain_widths(frame: TopFrame, previous: dict[str, int] | None) -> dict[str, int]:
    """Batch frames' column widths: each as wide as the widest value so far (no minimum)."""
    widths = dict(previous or {})
    for r in frame.rows:
        for col, text in zip((*top_views.TOP_COLUMNS, "TREND"), top_views.top_plain_cells(r), strict=True):
            widths[col] = max(widths.get(col, 0), len(text))
    return widths
