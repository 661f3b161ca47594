"""`limits`: the resource pool processes are admitted against — show it, or change capacities."""

from __future__ import annotations

import argparse

import cmd2

from commands import limits_views as views
from commands.base import LlmunixArgumentParser, ShellCommandSet
from llmunix.models import LlmunixError


class LimitsCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Monitoring commands"

    limits_parser = LlmunixArgumentParser(
        description="Show the resource pool: each resource's capacity, what running processes hold, "
                    "what is free and how many processes wait for it; token buckets (NAME_per_min) show "
                    "their level; then memory pressure, and max_running (with `set max_running auto`, what "
                    "it is now and why). With NAME=VALUE, set capacities first (0 or none removes a limit).",
        epilog="examples:\n  limits\n  limits gpu=1 memory_mb=8000\n  limits llm_tokens_per_min=90000\n"
               "  limits gpu=none\n  limits --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    limits_parser.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="capacities to set")
    limits_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(limits_parser)
    def do_limits(self, args: argparse.Namespace) -> None:
        """Show or set resource limits."""
        try:
            settings: dict[str, str] = {}
            for pair in args.settings:
                name, sep, value = pair.partition("=")
                if not sep or not name.strip() or not value.strip():
                    raise LlmunixError(f"bad limit {pair!r}; write NAME=VALUE, e.g. limits gpu=1")
                settings[name.strip()] = value.strip()
            infos = self.kernel.set_limits(settings) if settings else self.kernel.limits()
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        pressure = self.kernel.pressure()
        slots = self.kernel.max_running_info()
        if args.json:
            self.out_json({"resources": [i.to_dict() for i in infos], "memory_pressure": pressure.to_dict(),
                           "max_running": slots.to_dict()})
        elif self.plain:
            self.out(views.limits_plain(infos, pressure, slots))
        else:
            self.out(views.limits_table(infos, pressure, slots))
