"""`ps`: list processes, as a table, a tree (`-l`), plain text for pipes, or JSON."""

from __future__ import annotations

import argparse

import cmd2

from commands import views
from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid
from llmunix.models import LlmunixError


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
            self.out_json([i.to_dict() for i in infos])
        elif args.long:
            if not infos:
                self.out("no processes")
            for info in infos:
                self.out(views.ps_tree(info))
        elif self.plain:
            self.out(views.ps_plain(infos))
        else:
            self.out(views.ps_table(infos))


_FINISHED = {"completed", "failed", "cancelled", "done"}
