"""`limits`: the resource pool processes are admitted against, and the LLM endpoints model calls
wait for — show them, or change capacities."""

from __future__ import annotations

import argparse

import cmd2

from commands.base import LlmunixArgumentParser, ShellCommandSet
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError

views = lazy_module("commands.limits_views")


class LimitsCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Monitoring commands"

    limits_parser = LlmunixArgumentParser(
        description="Show the resource pool: each resource's capacity, what running processes hold, "
                    "what is free and how many processes wait for it; token buckets (NAME_per_min) show "
                    "their level; then memory pressure, and max_running (with `set max_running auto`, what "
                    "it is now and why). With NAME=VALUE, set capacities first (0 or none removes a limit). Then "
                    "the LLM endpoints (base URL and model): requests in flight and waiting, and their limits; "
                    "--endpoint URL[|MODEL] with max_concurrent=, requests_per_min=, tokens_per_min= sets them.",
        epilog="examples:\n  limits\n  limits gpu=1 memory_mb=8000\n  limits llm_tokens_per_min=90000\n"
               "  limits gpu=none\n  limits --json\n"
               "  limits --endpoint 'http://127.0.0.1:8080/v1|qwen2.5' max_concurrent=4\n"
               "  limits --endpoint https://api.openai.com/v1 requests_per_min=500 tokens_per_min=200000",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    limits_parser.add_argument("settings", nargs="*", metavar="NAME=VALUE", help="capacities to set")
    limits_parser.add_argument("--endpoint", metavar="URL[|MODEL]",
                               help="set this LLM endpoint's limits (a URL alone: one limit for every model there)")
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
            agents = self.kernel.agents
            if args.endpoint is not None:
                if not settings:
                    raise LlmunixError("limits --endpoint needs NAME=VALUE, e.g. max_concurrent=4 "
                                       "(or requests_per_min=, tokens_per_min=)")
                agents.set_endpoint_limits(args.endpoint, settings)
                infos = self.kernel.limits()
            else:
                infos = self.kernel.set_limits(settings) if settings else self.kernel.limits()
            endpoints = agents.endpoint_limits()
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        pressure = self.kernel.pressure()
        slots = self.kernel.max_running_info()
        if args.json:
            self.out_json({"resources": [i.to_dict() for i in infos], "memory_pressure": pressure.to_dict(),
                           "max_running": slots.to_dict(), "endpoints": [e.to_dict() for e in endpoints]})
        elif self.plain:
            self.out(views.limits_plain(infos, pressure, slots, endpoints))
        else:
            self.out(views.limits_table(infos, pressure, slots, endpoints))
