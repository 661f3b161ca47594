"""Maintenance: `gc` compacts old finished processes now (it also runs on its own)."""

from __future__ import annotations

import argparse

import cmd2

from commands.base import LlmunixArgumentParser, ShellCommandSet, setting_arg
from llmunix.models import LlmunixError


class MaintenanceCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Durable state commands"

    gc_parser = LlmunixArgumentParser(
        description="Compact finished processes now: those older than retention_days, or beyond the "
                    "newest retention_count, keep a summary row (still in `ps -a`); their events, log "
                    "lines and checkpoints are deleted. Live and interrupted processes are never "
                    "touched. llmunix also does this at start and as processes finish.",
        epilog="examples:\n  gc\n  gc --days 7\n  gc --keep 0 --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    gc_parser.add_argument("--days", type=setting_arg("retention_days"), metavar="DAYS",
                           help="compact processes that finished more than DAYS ago (default: retention_days)")
    gc_parser.add_argument("--keep", type=setting_arg("retention_count"), metavar="N",
                           help="keep the newest N finished processes in full (default: retention_count)")
    gc_parser.add_argument("--json", action="store_true", help="print the counts as a JSON object")

    @cmd2.with_argparser(gc_parser)
    def do_gc(self, args: argparse.Namespace) -> None:
        """Compact old finished processes."""
        try:
            counts = self.kernel.gc(days=args.days, keep=args.keep)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json(counts)
            return
        self.out(f"compacted {counts['processes']} processes, freed {counts['events']} events "
                 f"and {counts['checkpoints']} checkpoints")
