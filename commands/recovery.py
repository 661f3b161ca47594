"""Durable-state commands: recover interrupted processes, roll one back to a checkpoint."""

from __future__ import annotations

import argparse

import cmd2

from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid, parse_pids
from llmunix.models import LlmunixError, ProcessInfo


class RecoveryCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Durable state commands"

    def interrupted_choices(self) -> cmd2.Choices:
        items = [cmd2.CompletionItem(i.process_id, display_meta=i.name)
                 for i in self.kernel.ps(all=True, state="interrupted")]
        return cmd2.Choices(items=items, is_sorted=True)

    recover_parser = LlmunixArgumentParser(
        description="Continue processes that were interrupted when llmunix stopped: from their last "
                    "checkpoint, or from scratch if the tool is idempotent. Others end Failed "
                    "(\"interrupted; not resumable\").",
        epilog="examples:\n  recover\n  recover 003 007\n  ps -a --state interrupted",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    recover_parser.add_argument("pids", nargs="*", metavar="PID", help="only these (default: all interrupted)",
                                choices_provider=interrupted_choices)

    @cmd2.with_argparser(recover_parser)
    def do_recover(self, args: argparse.Namespace) -> None:
        """Continue interrupted processes."""
        try:
            infos = self.kernel.recover(parse_pids(args.pids) if args.pids else None)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if not infos:
            self.out("nothing to recover")
        for info in infos:
            self.out(_recovered_line(info))

    rollback_parser = LlmunixArgumentParser(
        description="Run a finished or interrupted process again, under the same PID, from one of its "
                    "checkpoints (default: its last).",
        epilog="examples:\n  rollback 003\n  rollback 003 --to 2",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    rollback_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.any_pid_choices)
    rollback_parser.add_argument("--to", type=int, metavar="VERSION", help="the checkpoint version to start from")

    @cmd2.with_argparser(rollback_parser)
    def do_rollback(self, args: argparse.Namespace) -> None:
        """Restart a process from a checkpoint."""
        try:
            info = self.kernel.rollback(parse_pid(args.pid), to=args.to)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        self.out(_recovered_line(info))


def _recovered_line(info: ProcessInfo) -> str:
    if info.state == "Failed":
        return f"{info.process_id} {info.name} failed: {info.error}"
    how = info.history[0].details if info.history else "restarted"
    return f"{info.process_id} {info.name} {how}"
