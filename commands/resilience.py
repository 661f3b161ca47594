"""Resilience commands: `breakers`, `health`; the settables `chaos`, `stall_timeout`,
`stall_action`, `breaker_threshold`, `breaker_cooldown`; and `run`'s --retry/--timeout/--restart
options (added to its parser from here, so `run.py` stays one room)."""

from __future__ import annotations

import argparse
from typing import Any

import cmd2
from cmd2 import Choices, CompletionItem

from commands.base import LlmunixArgumentParser, ShellCommandSet, positive_duration, setting_type
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, parse_duration
from llmunix.resilience.chaos import ChaosSpec
from llmunix.resilience.restart import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MIN_UPTIME,
    RESTART_MODES,
    RestartPolicy,
    backoff_policy,
)
from llmunix.resilience.watchdog import STALL_ACTIONS

views = lazy_module("commands.resilience_views")

# ------------------------------------------------------------------ `run` options

MAX_RETRIES = 1000
MAX_RESTARTS = 1_000_000


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """`run --retry N --backoff 1s..60s --retry-on PATTERN --timeout 30s --restart MODE
    --max-restarts N --min-uptime 10s`."""
    # (help titles are title-cased: "resilience (see docs/...)" read "Resilience (See Docs/Resilience.Md)")
    group = parser.add_argument_group("resilience", "retries, timeouts and restarts: see docs/resilience.md")
    group.add_argument("--retry", type=int, metavar="N",
                       help="run a failed attempt again, up to N more times, under the same PID")
    group.add_argument("--backoff", metavar="MIN..MAX",
                       help="the wait before a retry or restart: exponential from MIN to MAX, full jitter "
                            "(default 1s..60s)")
    group.add_argument("--retry-on", action="append", default=[], metavar="PATTERN",
                       help="retry only errors matching PATTERN, a glob or substring (repeatable)")
    group.add_argument("--timeout", metavar="DURATION",
                       help="stop an attempt after this much running time: it fails 'timed out after 30s'")
    group.add_argument("--restart", choices=RESTART_MODES, metavar="MODE",
                       help="never (default), on-failure, or always (after completing too)")
    group.add_argument("--max-restarts", type=int, metavar="N",
                       help=f"give up after N restarts in a row (default {DEFAULT_MAX_RESTARTS})")
    group.add_argument("--min-uptime", metavar="DURATION",
                       help="a run up this long resets the backoff and the count of restarts "
                            f"(default {DEFAULT_MIN_UPTIME:g}s)")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """`Kernel.spawn`'s retry, restart and timeout arguments from `run`'s options."""
    out: dict[str, Any] = {}
    if args.timeout is not None:
        out["timeout"] = positive_duration("--timeout", args.timeout)
    restarting = args.restart not in (None, "never")
    if args.retry is not None and not 0 <= args.retry <= MAX_RETRIES:
        raise LlmunixError(f"bad --retry {args.retry}; give the number of retries, 0 to {MAX_RETRIES:,}")
    if args.max_restarts is not None and not 0 <= args.max_restarts <= MAX_RESTARTS:
        raise LlmunixError(f"bad --max-restarts {args.max_restarts}; give a number from 0 to {MAX_RESTARTS:,}")
    if args.retry_on and not args.retry:
        raise LlmunixError("--retry-on needs --retry N")
    if args.backoff is not None and not args.retry and not restarting:
        raise LlmunixError("--backoff needs --retry N or --restart on-failure|always")
    if (args.max_restarts is not None or args.min_uptime is not None) and not restarting:
        raise LlmunixError("--max-restarts and --min-uptime need --restart on-failure|always")
    if args.retry:
        out["retry"] = backoff_policy(args.backoff, attempts=args.retry + 1, retry_on=args.retry_on)
    if restarting:
        max_restarts = DEFAULT_MAX_RESTARTS if args.max_restarts is None else args.max_restarts
        min_uptime = DEFAULT_MIN_UPTIME if args.min_uptime is None else parse_duration(args.min_uptime)
        out["restart"] = RestartPolicy(args.restart, max_restarts=max_restarts, min_uptime=min_uptime,
                                       backoff=backoff_policy(args.backoff))
    return out


# ------------------------------------------------------------------ settables' value checks


def _chaos_value(value: Any) -> str:
    try:
        spec = ChaosSpec.parse(str(value))
    except LlmunixError as exc:
        raise ValueError(str(exc)) from None
    return str(spec) if spec is not None else "off"


class ResilienceCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Resilience commands"

    def __init__(self) -> None:
        super().__init__()
        for name, val_type, description, choices in (
            ("chaos", _chaos_value, 'fault injection for tool processes: "fail=0.2,hang=0.05,slow=0.1,seed=42" '
             "or off", None),
            ("stall_timeout", setting_type("stall_timeout", duration=True),
             "seconds without progress before the watchdog marks a running process stalled (0: off)", None),
            ("stall_action", str, "what the watchdog does with a stalled process: alert, restart or kill",
             STALL_ACTIONS),
            ("breaker_threshold", setting_type("breaker_threshold"),
             "consecutive failures that open a tool's or host's circuit", None),
            ("breaker_cooldown", setting_type("breaker_cooldown", duration=True),
             "seconds an open circuit waits before a probe", None),
        ):
            self.add_settable(cmd2.Settable(name, val_type, description, self, choices=choices))

    # The settables read and write the kernel's settings through these.
    @property
    def chaos(self) -> str:
        return self.kernel.chaos

    @chaos.setter
    def chaos(self, value: str) -> None:
        self.kernel.set_chaos(value)

    @property
    def stall_timeout(self) -> float:
        return self.kernel.stall_timeout

    @stall_timeout.setter
    def stall_timeout(self, value: float) -> None:
        self.kernel.stall_timeout = value

    @property
    def stall_action(self) -> str:
        return self.kernel.stall_action

    @stall_action.setter
    def stall_action(self, value: str) -> None:
        self.kernel.stall_action = value

    @property
    def breaker_threshold(self) -> int:
        return self.kernel.breaker_threshold

    @breaker_threshold.setter
    def breaker_threshold(self, value: int) -> None:
        self.kernel.breaker_threshold = value

    @property
    def breaker_cooldown(self) -> float:
        return self.kernel.breaker_cooldown

    @breaker_cooldown.setter
    def breaker_cooldown(self, value: float) -> None:
        self.kernel.breaker_cooldown = value

    def breaker_choices(self) -> Choices:
        items = [CompletionItem(b.name, display_meta=b.state) for b in self.kernel.breakers()]
        return Choices(items=items, is_sorted=True)

    breakers_parser = LlmunixArgumentParser(
        description="Show the circuit breakers (one per tool, one per external host): state, consecutive "
                    "failures, times opened, when the next probe may go, the last error. "
                    "`breakers reset NAME` closes one by hand.",
        epilog="examples:\n  breakers\n  breakers --json\n  breakers reset fetch\n  breakers reset host:example.com",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    breakers_parser.add_argument("action", nargs="?", choices=["reset"], help="reset: close breaker NAME")
    breakers_parser.add_argument("name", nargs="?", metavar="NAME", choices_provider=breaker_choices,
                                 help="a breaker: tool:NAME, host:NAME, or just the tool or host")
    breakers_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(breakers_parser)
    def do_breakers(self, args: argparse.Namespace) -> None:
        """Show or reset circuit breakers."""
        try:
            if args.action == "reset":
                if not args.name:
                    raise LlmunixError("breakers reset needs a NAME; `breakers` lists them")
                info = self.kernel.breaker_reset(args.name)
                if args.json:
                    self.out_json(info.to_dict())
                else:
                    self.out(f"{info.name} closed")
                return
            infos = self.kernel.breakers()
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json([i.to_dict() for i in infos])
        elif self.plain:
            self.out(views.breakers_plain(infos))
        else:
            self.out(views.breakers_table(infos))

    health_parser = LlmunixArgumentParser(
        description="Check that llmunix can keep working: the store is writable, disk space in the home, "
                    "memory, open circuit breakers, stalled processes, unkillable threads. Fails (non-zero "
                    "in scripts and -c) when unhealthy; degraded (an open breaker, memory pressure) does not fail.",
        epilog="examples:\n  health\n  health --json\n  llmunix -c health || alert-someone",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    health_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(health_parser)
    def do_health(self, args: argparse.Namespace) -> None:
        """Run the health checks."""
        report = self.kernel.health()
        if args.json:
            self.out_json(report.to_dict())
        elif self.plain:
            self.out(views.health_plain(report))
        else:
            self.out(views.health_tree(report))
        if not report.healthy:
            failed = ", ".join(c.name for c in report.checks if c.status == "fail")
            self.fail(f"unhealthy: {failed}")
