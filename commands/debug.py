"""Debugging commands: `debug` (a process's stack, locals, resources and child process) and
`profile` (a sampling profiler with collapsed-stack and speedscope exports)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import cmd2

from commands import debug_views as views
from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid
from llmunix.models import LlmunixError, parse_duration
from llmunix.observe.debug import ProfileReport


def _positive_duration(what: str):
    def parse(value: str) -> float:
        try:
            seconds = parse_duration(value)
        except LlmunixError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not seconds > 0:
            raise argparse.ArgumentTypeError(f"bad {what} {value!r}; it must be more than 0")
        return seconds

    parse.__name__ = what  # argparse names the type in its messages
    return parse


class DebugCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Debugging commands"

    debug_parser = LlmunixArgumentParser(
        description="Look inside a process now: its state, the stack of its tool's code (outermost "
                    "first), the innermost frame's local variables (reprs truncated, secrets redacted), "
                    "CPU and memory from the monitor, and for subprocess tools the child's command line, "
                    "status, open files and connections. A finished process has no stack.",
        epilog="examples:\n  debug 001\n  debug 001 --lines\n  debug 001 --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    debug_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.any_pid_choices)
    debug_parser.add_argument("--lines", action="store_true", help="show file:line for each stack frame")
    debug_parser.add_argument("--json", action="store_true", help="print a JSON object")

    @cmd2.with_argparser(debug_parser)
    def do_debug(self, args: argparse.Namespace) -> None:
        """Show a process's stack, variables and resources."""
        try:
            info = self.kernel.debug_info(parse_pid(args.pid))
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json(info.to_dict())
            return
        system = self.kernel.system()
        llmunix_mb = system[-1].llmunix_memory_mb if system else None
        if self.plain:
            self.out(views.debug_plain(info, lines=args.lines, llmunix_mb=llmunix_mb))
        else:
            self.out(views.debug_rich(info, lines=args.lines, llmunix_mb=llmunix_mb))

    profile_parser = LlmunixArgumentParser(
        description="Sample a process's stack every INTERVAL for DURATION (or until it ends; Ctrl-C "
                    "stops early and still reports), then report CPU and memory (average and peak, from "
                    "the monitor), I/O operations and hotspots: the functions the samples found running "
                    "(self share) and on the stack (inclusive share). --output exports the samples as "
                    "collapsed stacks (flamegraph.pl) or speedscope JSON. Subprocess tools have no Python "
                    "stacks: their report has the monitor's figures only.",
        epilog="examples:\n  profile 001\n  profile 001 --duration 60s\n  profile 001 -d 5s -i 5ms\n"
               "  profile 001 --output out.folded      # flamegraph.pl out.folded > flame.svg\n"
               "  profile 001 --output prof.json       # open in https://www.speedscope.app\n"
               "  profile 001 --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    profile_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.live_pid_choices)
    profile_parser.add_argument("-d", "--duration", type=_positive_duration("duration"), default=10.0,
                                metavar="TIME", help="how long to sample: 10s, 1m, 500ms (default 10s)")
    profile_parser.add_argument("-i", "--interval", type=_positive_duration("interval"), default=0.01,
                                metavar="TIME", help="time between samples (default 10ms)")
    profile_parser.add_argument("-o", "--output", metavar="FILE", completer=cmd2.Cmd.path_complete,
                                help="write the samples to FILE")
    profile_parser.add_argument("-f", "--format", choices=["collapsed", "speedscope"],
                                help="export format (default: speedscope for .json files, else collapsed)")
    profile_parser.add_argument("--json", action="store_true", help="print the report as JSON")

    @cmd2.with_argparser(profile_parser)
    def do_profile(self, args: argparse.Namespace) -> None:
        """Profile a process by sampling its stack."""
        try:
            pid = parse_pid(args.pid)
            self.kernel.info(pid)  # unknown PIDs fail before anything is shown
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        try:
            report = self._sample(pid, args.duration, args.interval, live=not (self.plain or args.json))
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.output:
            fmt = views.format_for(args.output, args.format)
            try:
                Path(args.output).expanduser().write_text(views.export_text(report, fmt), encoding="utf-8")
            except OSError as exc:
                self.fail(f"cannot write {args.output}: {exc.strerror or exc}")
                return
        if args.json:
            data = report.to_dict()
            if args.output:
                data["output"] = {"file": args.output, "format": views.format_for(args.output, args.format)}
            self.out_json(data)
            return
        self.out(views.profile_plain(report) if self.plain else views.profile_rich(report))
        if args.output:
            self.out(f"Wrote {views.format_for(args.output, args.format)} stacks to {args.output}")

    def _sample(self, pid: int, duration: float, interval: float, live: bool) -> ProfileReport:
        """Run the profiler in a helper thread so that Ctrl-C here stops it early and still reports."""
        stop = threading.Event()
        result: list[ProfileReport] = []
        error: list[BaseException] = []
        bar = task = None

        def tick(elapsed: float, samples: int) -> None:
            if bar is not None:
                bar.update(task, completed=min(elapsed, duration), samples=samples)

        finished = threading.Event()

        def run() -> None:
            try:
                result.append(self.kernel.profile(pid, duration, interval, stop=stop, on_tick=tick))
            except BaseException as exc:  # noqa: BLE001 - handed to the command's thread
                error.append(exc)
            finally:
                finished.set()

        worker = threading.Thread(target=run, name=f"llmunix-profile-{pid}", daemon=True)
        progress = None
        if live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn(views.profile_title(pid, duration)), BarColumn(),
                                TextColumn("{task.fields[samples]} samples"), TimeElapsedColumn(),
                                console=self._cmd.rich_console(), transient=True)
            progress.start()
            bar, task = progress, progress.add_task("profile", total=duration, samples=0)
        try:
            worker.start()
            # Wait on an Event, not Thread.join: on CPython 3.11 a join cut short by Ctrl-C can
            # leave is_alive() False while the thread still runs (and the result not there yet).
            while not finished.is_set():
                try:
                    finished.wait(0.1)
                except KeyboardInterrupt:
                    stop.set()
        finally:
            stop.set()
            finished.wait()
            if progress is not None:
                progress.stop()
        if error:
            raise error[0]
        return result[0]
