"""`ps`: list processes, as a table, a tree (`-l`), plain text for pipes, or JSON."""

from __future__ import annotations

import argparse
import json
from contextlib import closing

import cmd2

from commands import views
from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid
from llmunix.models import LlmunixError, iso_time, parse_duration


class ProcessCommands(ShellCommandSet):
    ps_parser = LlmunixArgumentParser(
        description="List processes (live ones; -a adds finished ones).",
        epilog="examples:\n  ps\n  ps -a --state failed\n  ps -l 003\n  ps | grep Running | awk '{print $1}'\n"
               "  ps --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    ps_parser.add_argument("-a", "--all", action="store_true", help="include finished processes")
    ps_parser.add_argument("-l", "--long", action="store_true",
                           help="detailed tree view of each process (of the PIDs given, or all listed)")
    ps_parser.add_argument("--state", metavar="STATE",
                           help="only processes in this state (running, paused, failed, ... or a phase)")
    ps_parser.add_argument("--json", action="store_true", help="print a JSON array of execution-state records")
    ps_parser.add_argument("pids", nargs="*", metavar="PID", help="only these processes",
                           choices_provider=ShellCommandSet.any_pid_choices)

    @cmd2.with_argparser(ps_parser)
    def do_ps(self, args: argparse.Namespace) -> None:
        """List processes."""
        try:
            if not args.pids and not args.json and not args.long:  # the light path: no snapshots
                rows = self.kernel.ps_rows(all=args.all or bool(args.state and args.state.lower() in _FINISHED),
                                           state=args.state)
                self.out(views.ps_plain(rows) if self.plain else views.ps_table(rows))
                return
            if args.pids:
                infos = [self.kernel.info(parse_pid(p)) for p in args.pids]
                if args.state:
                    want = args.state.lower()
                    infos = [i for i in infos if want in (i.display_state.lower(), i.phase, i.state.lower())]
            else:
                infos = self.kernel.ps(all=args.all or bool(args.state and args.state.lower() in _FINISHED),
                                       state=args.state)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json([views.process_record(i) for i in infos])
        elif args.long:
            if not infos:
                self.out("no processes")
            for info in infos:
                self.out(views.ps_tree(info))
        elif self.plain:
            self.out(views.ps_plain(infos))
        else:
            self.out(views.ps_table(infos))

    log_parser = LlmunixArgumentParser(
        description="Show a process's log: lines it wrote with ctx.log, and a subprocess tool's output.",
        epilog="examples:\n  log 003\n  log 003 --tail 20\n  log 003 --json\n  log 003 --follow",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    log_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.any_pid_choices)
    log_parser.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines")
    log_parser.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    log_parser.add_argument("--json", action="store_true", help="print a JSON array of {time, line}")
    log_parser.add_argument("-f", "--follow", action="store_true",
                            help="keep printing new lines until the process finishes (or Ctrl-C)")
    log_parser.add_argument("--timeout", metavar="DURATION", help="with --follow: stop after this long")

    @cmd2.with_argparser(log_parser)
    def do_log(self, args: argparse.Namespace) -> None:
        """Show a process's log."""
        if args.follow:
            self._follow_log(args)
            return
        try:
            lines = self.kernel.logs(parse_pid(args.pid))
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.tail is not None:
            lines = lines[-args.tail:] if args.tail > 0 else []
        if args.json:
            self.out_json([{"time": iso_time(t), "line": line} for t, line in lines])
            return
        for t, line in lines:
            self._cmd.poutput(f"{iso_time(t)[11:23]}  {line}" if args.timestamps else line)

    def _follow_log(self, args: argparse.Namespace) -> None:
        """`log --follow`: lines as they come (JSON: one object per line); Ctrl-C is not a failure."""
        try:
            timeout = parse_duration(args.timeout) if args.timeout is not None else None
            stream = self.kernel.follow_log(parse_pid(args.pid), tail=args.tail, timeout=timeout)
            with closing(stream):
                for t, line in stream:
                    if args.json:
                        self._cmd.poutput(json.dumps({"time": iso_time(t), "line": line}, ensure_ascii=False))
                    else:
                        self._cmd.poutput(f"{iso_time(t)[11:23]}  {line}" if args.timestamps else line)
        except LlmunixError as exc:
            self.fail(str(exc))
        except KeyboardInterrupt:
            pass


_FINISHED = {"completed", "failed", "cancelled", "interrupted", "done"}
