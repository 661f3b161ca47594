"""Debugging commands: `debug` (a process's stack, locals, resources and child process; the
interactive debugger: breakpoints, step / next / continue, where, inspect, modify, trace, replay)
and `profile` (a sampling profiler with collapsed-stack and speedscope exports).

Every debugger action is a sub-command of `debug PID` (`debug 001 break --when "step >= 3"`), for
scripts and `-c`. On a terminal, `debug PID` alone shows the report and then a `debug(001)>`
prompt that takes the same actions without the `debug PID` prefix: a small loop here over the
shell's own `read_input` (with completion from the same parser), not a second cmd2 application.
"""

from __future__ import annotations

import argparse
import shlex
import threading
import time
from pathlib import Path

import cmd2
from cmd2 import Choices, CompletionItem

from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, format_pid, parse_duration
from llmunix.observe.debug import ProfileReport
from llmunix.observe.debugger import DebugStatus
from llmunix.observe.memory import DEFAULT_FRAMES, DEFAULT_TOP, MAX_FRAMES

views = lazy_module("commands.debug_views")

POLL = 0.1  # how often a wait wakes to notice Ctrl-C
PROMPT_ONLY = ("help", "quit", "q", "exit")


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


def _count(what: str, most: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {value!r}; give a whole number") from None
        if not 1 <= n <= most:
            raise argparse.ArgumentTypeError(f"bad {what} {value!r}; give 1 to {most}")
        return n

    parse.__name__ = what
    return parse


def _step_number(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad step {value!r}; give a whole number such as 3") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"bad step {value!r}; steps count from 0")
    return n


class DebugCompletion(ShellCommandSet):
    """Completion for the debugger's actions (a base of DebugCommands, so that the parsers built
    before DebugCommands exists can name its providers). The PID comes from the command line, or
    from the debug(PID)> prompt being used."""

    _prompt_pid: int | None = None

    def _completion_pid(self, arg_tokens: dict[str, list[str]]) -> int | None:
        tokens = arg_tokens.get("pid") or []
        try:
            return parse_pid(tokens[0]) if tokens else self._prompt_pid
        except LlmunixError:
            return None

    def breakpoint_choices(self, arg_tokens: dict[str, list[str]]) -> Choices:
        pid = self._completion_pid(arg_tokens)
        items = [CompletionItem("all", display_meta="every breakpoint")]
        if pid is not None:
            try:
                items += [CompletionItem(str(b.number), display_meta=b.describe())
                          for b in self.kernel.breakpoints(pid)]
            except LlmunixError:
                pass
        return Choices(items=items)

    def _names(self, arg_tokens: dict[str, list[str]], with_locals: bool) -> Choices:
        pid = self._completion_pid(arg_tokens)
        items: list[CompletionItem] = []
        if pid is None:
            return Choices(items=items)
        try:
            info = self.kernel.debug_info(pid) if with_locals else None
            snapshot = info.info if info is not None else self.kernel.info(pid)
        except LlmunixError:
            return Choices(items=items)
        if info is not None and info.stack:
            items += [CompletionItem(n, display_meta=f"local = {v}"[:60]) for n, v in info.stack[-1].locals.items()
                      if n != "ctx"]
        items += [CompletionItem(n, display_meta="parameter") for n in snapshot.context.input_parameters]
        checkpoint = snapshot.context.intermediate_results.get("checkpoint")
        if checkpoint is not None:
            items.append(CompletionItem("checkpoint", display_meta="the last checkpoint state"))
            if isinstance(checkpoint, dict):
                items += [CompletionItem(f"checkpoint.{key}", display_meta="checkpoint state") for key in checkpoint]
        if with_locals:
            items.append(CompletionItem("params", display_meta="all parameters"))
        unique = {i.text: i for i in items}
        return Choices(items=list(unique.values()))

    def inspect_choices(self, arg_tokens: dict[str, list[str]]) -> Choices:
        return self._names(arg_tokens, with_locals=True)

    def modify_choices(self, arg_tokens: dict[str, list[str]]) -> Choices:
        return self._names(arg_tokens, with_locals=False)


def _add_actions(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The debugger's actions, as sub-commands of `debug PID` and of the `debug(001)>` prompt."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=required, title="debugger actions")

    p = sub.add_parser("break", aliases=["b"], help="stop at a control point when a condition holds",
                       description="Set a breakpoint: the process stops at a control point (ctx.progress, "
                                   "ctx.checkpoint, ctx.sleep, ctx.check, ...) when its condition becomes true. "
                                   "Given together, all conditions must hold.",
                       epilog="EXPR uses step, total, percentage, params (params.n or params[\"n\"]) and checkpoint "
                              "(the last checkpoint state) with comparisons, and/or/not and arithmetic.\n"
                              "examples:\n  break --at-step 3\n  break --when \"step >= 3 and params.n > 10\"\n"
                              "  break --on-checkpoint --when \"checkpoint.tick == 5\"",
                       formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)
    p.add_argument("--at-step", type=_step_number, metavar="N", help="once its progress reaches step N")
    p.add_argument("--when", metavar="EXPR", help="when EXPR becomes true")
    p.add_argument("--on-checkpoint", action="store_true", help="right after each checkpoint it records")

    p = sub.add_parser("delete", help="delete a breakpoint (or all)", description="Delete breakpoint N, or all.")
    p.add_argument("number", metavar="N|all", choices_provider=DebugCompletion.breakpoint_choices)

    p = sub.add_parser("breakpoints", aliases=["bl"], help="list the breakpoints",
                       description="List the process's breakpoints with their hit counts.")
    p.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("step", aliases=["s"], help="run to the next line of the tool's code (into calls)",
                   description="Run to the next line of the tool's own code, into calls, and stop there. A "
                               "running process starts tracing at its next control point.")
    sub.add_parser("next", aliases=["n"], help="run to the next line in this function (over calls)",
                   description="Run to the next line in the same function or the one it returns to; calls are "
                               "run without stopping.")
    p = sub.add_parser("continue", aliases=["c"], help="let a stopped process go on",
                       description="Let a process stopped by a breakpoint or a step go on (and cancel a step not "
                                   "taken yet). At the debug(PID)> prompt it then waits for the next stop or the end.")
    p.add_argument("-w", "--wait", action="store_true", help="wait for the next stop or the end")
    p = sub.add_parser("wait", help="wait until it stops at a breakpoint or ends",
                       description="Wait until the process is stopped by the debugger or has finished.")
    p.add_argument("-t", "--timeout", type=_positive_duration("timeout"), metavar="TIME",
                   help="give up after this long (fails)")

    p = sub.add_parser("where", aliases=["w", "bt"], help="show the tool's stack",
                       description="Show the stack of the tool's code, outermost first, with file:line and the "
                                   "source line.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("inspect", aliases=["p"], help="show a local variable, a parameter or the checkpoint",
                       description="Show NAME: a local variable of the tool's innermost frame (outer frames next), "
                                   "else a parameter; `params` for all of them; `checkpoint` or `checkpoint.KEY` "
                                   "for the last checkpoint state.")
    p.add_argument("name", metavar="NAME", choices_provider=DebugCompletion.inspect_choices)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("modify", help="change a parameter or checkpoint state",
                       description="Change a parameter (validated by the tool; the tool sees it the next time it "
                                   "reads ctx.params) or checkpoint state (checkpoint.KEY, recorded as a new "
                                   "checkpoint version). VALUE is taken as text, else as JSON. Recorded in the audit "
                                   "trail.", epilog="examples:\n  modify n 10\n  modify checkpoint.tick 0",
                       formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)
    p.add_argument("name", metavar="NAME", choices_provider=DebugCompletion.modify_choices)
    p.add_argument("value", metavar="VALUE")
    p = sub.add_parser("trace", help="record calls, returns and control points (on|off)",
                       description="Record the calls, returns and exceptions in the tool's code and its control "
                                   "points (the last 10,000), from its next control point; `debug PID replay` "
                                   "plays them back.")
    p.add_argument("switch", choices=["on", "off"])
    p = sub.add_parser("replay", help="play back the recorded trace",
                       description="Print the recorded trace in order, with times relative to its start.")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("memory", aliases=["mem"], help="where its Python memory was allocated; --diff: what grew",
                       description="Show the sites (file:line) holding the most live Python memory the process "
                                   "allocated, traced with tracemalloc: in llmunix for a thread tool (the "
                                   "allocations whose traceback passes through its tool's code; tracemalloc is "
                                   "turned on for it now and off again when it ends or --stop), in its worker for "
                                   "an isolated one. Allocations made before tracing began are not seen. --diff "
                                   "shows what grew since the previous look (leak detection); --dump writes the "
                                   "snapshot to FILE (tracemalloc.Snapshot.load reads it).",
                       epilog="examples:\n  memory\n  memory --diff\n  memory --top 20 --frames 40\n"
                              "  memory --dump /tmp/042.snapshot\n  memory --stop",
                       formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)
    p.add_argument("--diff", action="store_true", help="what grew (or shrank) since the previous look")
    p.add_argument("--top", type=_count("--top", 1000), default=DEFAULT_TOP, metavar="N",
                   help=f"sites shown (default {DEFAULT_TOP})")
    p.add_argument("--frames", type=_count("--frames", MAX_FRAMES), default=DEFAULT_FRAMES, metavar="N",
                   help=f"traceback depth traced, when tracing starts (default {DEFAULT_FRAMES})")
    p.add_argument("--dump", metavar="FILE", completer=cmd2.Cmd.path_complete,
                   help="also write the snapshot (its allocations only) to FILE")
    p.add_argument("--stop", action="store_true", help="end tracing after this look")
    p.add_argument("--json", action="store_true", help="print JSON")


class DebugCommands(DebugCompletion):
    DEFAULT_CATEGORY = "Debugging commands"

    def __init__(self) -> None:
        super().__init__()
        self._prompt_pid: int | None = None  # the process of the debug(PID)> prompt we are in
        self._prompt_history: list[str] = []
        self._prompt_parser: LlmunixArgumentParser | None = None

    debug_parser = LlmunixArgumentParser(
        usage="debug [-h] [--lines] [--json] PID [ACTION ...]",
        description="Look inside a process now: its state, the stack of its tool's code (outermost "
                    "first), the innermost frame's local variables (reprs truncated, secrets redacted), "
                    "CPU and memory from the monitor, and for subprocess tools the child's command line, "
                    "status, open files and connections. A finished process has no stack. With an ACTION, "
                    "run one debugger action; on a terminal, `debug PID` alone then opens a debug(PID)> "
                    "prompt for them.",
        epilog="examples:\n  debug 001\n  debug 001 --lines\n  debug 001 --json\n"
               "  debug 001 break --when \"step >= 3\"\n  debug 001 wait\n  debug 001 inspect total\n"
               "  debug 001 modify n 10\n  debug 001 step\n  debug 001 continue\n"
               "  debug 001 trace on\n  debug 001 replay\n  debug 001 memory\n  debug 001 memory --diff",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    debug_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.any_pid_choices)
    debug_parser.add_argument("--lines", action="store_true", help="show file:line for each stack frame")
    debug_parser.add_argument("--json", action="store_true", help="print a JSON object")
    _add_actions(debug_parser, required=False)

    @cmd2.with_argparser(debug_parser)
    def do_debug(self, args: argparse.Namespace) -> None:
        """Show a process's stack, variables and resources; debug it."""
        try:
            pid = parse_pid(args.pid)
            if args.action is not None:
                self._act(pid, args)
                return
            info = self.kernel.debug_info(pid)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        io_limit = self.kernel.io_limit(pid)
        if args.json:
            self.out_json({**info.to_dict(), "io_limit": None if io_limit is None else io_limit.to_dict()})
            return
        system = self.kernel.system()
        llmunix_mb = system[-1].llmunix_memory_mb if system else None
        if self.plain:
            self.out(views.debug_plain(info, lines=args.lines, llmunix_mb=llmunix_mb, io_limit=io_limit))
        else:
            self.out(views.debug_rich(info, lines=args.lines, llmunix_mb=llmunix_mb, io_limit=io_limit))
        if self._cmd.interactive and not self.plain and self._prompt_pid is None and not info.info.is_done:
            self._prompt(pid)

    # ------------------------------------------------------------------ the debug(PID)> prompt

    def _prompt(self, pid: int) -> None:
        """A nested loop over the shell's input: actions without the `debug PID` prefix, until
        quit, q or Ctrl-D. Leaving does not resume the process (`quit --continue` does)."""
        parser = self._actions_parser()
        self.out(f"debug({format_pid(pid)}): `help` lists the actions, `quit` (or Ctrl-D) leaves; "
                 "leaving does not resume the process")
        self._prompt_pid = pid
        try:
            while True:
                try:
                    line = self._cmd.read_input(f"debug({format_pid(pid)})> ", history=self._prompt_history,
                                                parser=parser).strip()
                except EOFError:
                    self._cmd.poutput("")
                    break
                except KeyboardInterrupt:
                    self._cmd.poutput("^C")
                    continue
                if not line:
                    continue
                self._prompt_history.append(line)
                if self._prompt_line(pid, parser, line):
                    break
        finally:
            self._prompt_pid = None
        self._left(pid)

    def _prompt_line(self, pid: int, parser: LlmunixArgumentParser, line: str) -> bool:
        """Run one line typed at the debug prompt; True to leave it."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.fail(f"{exc}; quote a VALUE with spaces")
            self._cmd.consume_failure()
            return False
        head = words[0]
        if head in ("quit", "q", "exit"):
            if any(w in ("-c", "--continue") for w in words[1:]):
                try:
                    self.kernel.continue_(pid)
                except LlmunixError as exc:
                    self.fail(str(exc))
            return True
        if head in ("help", "?", "h"):
            self.out(views.prompt_help(self._help_rows(parser)))
            return False
        try:
            args = parser.parse_args(words)
        except SystemExit as exc:  # a usage error (reported in one line) or -h
            self._cmd.report_usage(exc)
            self._cmd.consume_failure()
            return False
        try:
            self._act(pid, args)
        except LlmunixError as exc:
            self.fail(str(exc))
        failed = self._cmd.consume_failure()
        self.kernel.record_command(f"debug {format_pid(pid)} {line}", 1 if failed else 0)
        return False

    def _left(self, pid: int) -> None:
        try:
            status = self.kernel.debug_status(pid)
        except LlmunixError:
            return
        if status.stopped:
            detail = status.detail[:1].lower() + status.detail[1:]
            self.out(f"{format_pid(pid)} stays {detail}; `debug {format_pid(pid)} continue` lets it go on")

    def _actions_parser(self) -> LlmunixArgumentParser:
        if self._prompt_parser is None:
            parser = LlmunixArgumentParser(prog="debug", add_help=False)
            _add_actions(parser, required=True)
            self._prompt_parser = parser
        return self._prompt_parser

    @staticmethod
    def _help_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for action in parser._subparsers._group_actions if parser._subparsers else ():  # type: ignore[union-attr]
            for choice in action._choices_actions:  # type: ignore[attr-defined]
                rows.append((choice.metavar or choice.dest, choice.help or ""))
        rows += [("help", "this list (ACTION -h: its options)"),
                 ("quit", "leave the prompt (q, Ctrl-D); --continue lets the process go on first")]
        return rows

    # ------------------------------------------------------------------ the actions

    def _act(self, pid: int, args: argparse.Namespace) -> None:
        """Run one debugger action (raises LlmunixError for the caller to report)."""
        action = {"b": "break", "bl": "breakpoints", "s": "step", "n": "next", "c": "continue", "w": "where",
                  "bt": "where", "p": "inspect", "mem": "memory"}.get(args.action, args.action)
        k = self.kernel
        if action == "break":
            bp = k.set_breakpoint(pid, at_step=args.at_step, when=args.when, on_checkpoint=args.on_checkpoint)
            self.out(f"breakpoint {bp.number} on {format_pid(pid)}: {bp.describe()}")
        elif action == "delete":
            number = args.number if args.number == "all" else self._breakpoint_number(args.number)
            gone = k.clear_breakpoint(pid, number)
            self.out(f"deleted {len(gone)} breakpoint{'s' if len(gone) != 1 else ''}"
                     + (f": {', '.join(str(b.number) for b in gone)}" if gone else ""))
        elif action == "breakpoints":
            bps = k.breakpoints(pid)
            if args.json:
                self.out_json([b.to_dict() for b in bps])
            else:
                self.out(views.breakpoints_text(pid, bps))
        elif action in ("step", "next"):
            status = k.step(pid) if action == "step" else k.next_(pid)
            self._report_stop(self._wait(pid, since=status.stops, timeout=None if self._prompt_pid else 10.0))
        elif action == "continue":
            status = k.continue_(pid)
            if args.wait or self._prompt_pid is not None:
                self._report_stop(self._wait(pid, since=status.stops))
            else:
                self.out(f"continued {format_pid(pid)} {status.name}")
        elif action == "wait":
            status = self._wait(pid, timeout=args.timeout)
            if not (status.stopped or status.finished):
                raise LlmunixError(f"timed out; {format_pid(pid)} is {status.state} ({status.detail})")
            self._report_stop(status)
        elif action == "where":
            info = k.debug_info(pid)
            if args.json:
                self.out_json({"pid": pid, "stack": [f.to_dict() for f in info.stack], "reason": info.reason})
            else:
                self.out(views.where_text(info))
        elif action == "inspect":
            found = k.inspect_value(pid, args.name)
            self.out_json(found.to_dict()) if args.json else self.out(views.inspected_text(found))
        elif action == "modify":
            self.out(views.modification_text(k.modify(pid, args.name, args.value)))
        elif action == "trace":
            status = k.set_trace(pid, args.switch == "on")
            self.out(f"tracing {format_pid(pid)} {status.name}: {'on' if status.tracing else 'off'}"
                     + (" (from its next control point)" if status.tracing else ""))
        elif action == "replay":
            log = k.trace_log(pid)
            self.out_json(log.to_dict()) if args.json else self.out(views.replay_text(log))
        elif action == "memory":
            report = k.debug_memory(pid, diff=args.diff, top=args.top, dump=args.dump, stop=args.stop,
                                    frames=args.frames)
            if args.json:
                self.out_json(report.to_dict())
            else:
                self.out(views.memory_plain(report) if self.plain else views.memory_rich(report))
        else:  # pragma: no cover - argparse allows only the choices above
            raise LlmunixError(f"unknown action {args.action!r}")

    def _wait(self, pid: int, *, since: int | None = None, timeout: float | None = None) -> DebugStatus:
        """Wait for a debugger stop or the end; Ctrl-C stops waiting (the process goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
            try:
                status = self.kernel.debug_wait(pid, left, since=since)
            except KeyboardInterrupt:
                status = self.kernel.debug_status(pid)
                self.out(f"stopped waiting; {format_pid(pid)} is {status.state} ({status.detail})")
                return status
            if status.finished or (status.stopped and (since is None or status.stops > since)):
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status

    def _report_stop(self, status: DebugStatus) -> None:
        self.out(views.status_text(status))

    @staticmethod
    def _breakpoint_number(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise LlmunixError(f"bad breakpoint {text!r}; give its number (see `breakpoints`) or all") from None

    # ------------------------------------------------------------------ profile

    profile_parser = LlmunixArgumentParser(
        description="Sample a process's stack every INTERVAL for DURATION (or until it ends; Ctrl-C "
                    "stops early and still reports), then report CPU and memory (average and peak, from "
                    "the monitor), I/O operations, network connections (subprocess tools) and hotspots: the "
                    "functions the samples found running (self share) and on the stack (inclusive share). "
                    "--output exports the samples as collapsed stacks (flamegraph.pl) or speedscope JSON. "
                    "A subprocess tool running Python is sampled with py-spy when it is installed. "
                    "--memory also traces its Python allocations over the window (tracemalloc) and lists "
                    "the sites that grew. The report ends with suggestions drawn from its figures "
                    "(docs/debugging.md lists the rules).",
        epilog="examples:\n  profile 001\n  profile 001 --duration 60s\n  profile 001 -d 5s -i 5ms\n"
               "  profile 001 --memory\n"
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
    profile_parser.add_argument("-m", "--memory", action="store_true",
                                help="also trace its Python allocations over the window (tracemalloc)")
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
            report = self._sample(pid, args.duration, args.interval, live=not (self.plain or args.json),
                                  memory=args.memory)
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

    def _sample(self, pid: int, duration: float, interval: float, live: bool, memory: bool = False) -> ProfileReport:
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
                result.append(self.kernel.profile(pid, duration, interval, stop=stop, on_tick=tick, memory=memory))
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

