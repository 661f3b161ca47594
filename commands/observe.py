"""Observability commands: `events` (the event log, replayed and followed) and `audit`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import closing

import cmd2

from commands.base import LlmunixArgumentParser, ShellCommandSet, count_arg, parse_pid
from commands.terminal_safe import json_array_chunks, json_safe
from llmunix.lazy import lazy_module
from llmunix.models import Event, LlmunixError, parse_duration, parse_since

views = lazy_module("commands.observe_views")


def _parser(description: str, epilog: str) -> LlmunixArgumentParser:
    return LlmunixArgumentParser(description=description, epilog=epilog,
                                 formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)


class ObserveCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Observability commands"

    events_parser = _parser(
        "Show the event log: every lifecycle, state, progress and log event, of this session and "
        "earlier ones. With --follow, keep printing new events until Ctrl-C, the --timeout, or "
        "(with --pid) the end of that process. `events stats` analyses a window of it instead: rates "
        "by type, failure patterns per tool and host, bursts, the slowest tools and steps.",
        "examples:\n  events --tail 20\n  events --tail 20 --reverse\n  events --pid 003\n"
        "  events --type 'process.failed|process.cancelled' "
        "--since 2h\n  events --follow --type 'process.*'\n  events --pid 003 --follow --json\n"
        "  events stats\n  events stats --since 24h --bucket 1h --json")
    events_parser.add_argument("stats", nargs="?", choices=["stats"], metavar="stats",
                               help="analyse the window (--since, default the last hour) instead of listing it")
    events_parser.add_argument("-p", "--pid", metavar="PID", help="only this process's events",
                               choices_provider=ShellCommandSet.any_pid_choices)
    events_parser.add_argument("-t", "--type", metavar="GLOB",
                               help="only these types: a glob such as 'process.*'; '|' between alternatives")
    events_parser.add_argument("-s", "--since", metavar="WHEN",
                               help="only newer ones: a duration ago (30s, 10m, 2h) or an ISO date/time")
    events_parser.add_argument("-n", "--tail", "--limit", dest="tail", type=count_arg, metavar="N",
                               help="only the newest N (then follow); read from the end of the store")
    events_parser.add_argument("-r", "--reverse", action="store_true", help="newest first (not with --follow)")
    events_parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    events_parser.add_argument("--timeout", metavar="DURATION", help="with --follow: stop after this long")
    events_parser.add_argument("--bucket", metavar="DURATION",
                               help="with stats: the width of the time buckets bursts are found in (default: "
                                    "about a sixtieth of the window)")
    events_parser.add_argument("--json", action="store_true",
                               help="a JSON array (with --follow: one JSON object per line; with stats: an object)")

    @cmd2.with_argparser(events_parser)
    def do_events(self, args: argparse.Namespace) -> None:
        """Show the event log."""
        if args.stats:
            self._stats(args)
            return
        if args.bucket is not None:
            self.fail("--bucket is for `events stats`")
            return
        try:
            pid = parse_pid(args.pid) if args.pid is not None else None
            since = parse_since(args.since) if args.since is not None else None
            timeout = parse_duration(args.timeout) if args.timeout is not None else None
            if args.follow:
                if args.reverse:
                    raise LlmunixError("--reverse lists what is stored newest first; it cannot follow new "
                                       "events (drop one of them)")
                self._follow(self.kernel.follow_events(pid=pid, types=args.type, since=since, limit=args.tail,
                                                       timeout=timeout), args.json)
                return
            events = self.kernel.events(pid=pid, types=args.type, since=since, limit=args.tail)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.reverse:
            events.reverse()
        if args.json:
            self.out_stream(json_array_chunks(views.event_record(e) for e in events))
        elif self.plain:
            self.out(views.events_plain(events))
        else:
            self.out(views.events_rich(events))

    def _stats(self, args: argparse.Namespace) -> None:
        """`events stats`: the analytics of a window (llmunix/observe/analytics.py)."""
        for flag, given in (("--pid", args.pid), ("--type", args.type), ("--tail", args.tail),
                            ("--follow", args.follow), ("--timeout", args.timeout)):
            if given:
                self.fail(f"`events stats` takes --since, --bucket and --json, not {flag}")
                return
        try:
            since = parse_since(args.since) if args.since is not None else None
            bucket = parse_duration(args.bucket) if args.bucket is not None else None
            stats = self.kernel.event_stats(since, bucket=bucket)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json(stats.to_dict())
        else:
            self.out(views.stats_plain(stats) if self.plain else views.stats_rich(stats))

    def _follow(self, stream: Iterator[Event], as_json: bool) -> None:
        """Print events as they come (JSON: one object per line) until the stream ends or Ctrl-C.
        The header goes out with the first event, so an error is not preceded by one."""
        header = not as_json
        try:
            with closing(stream):
                for e in stream:
                    if header:
                        self._header()
                        header = False
                    if as_json:
                        self.out_stream([json_safe(json.dumps(views.event_record(e), ensure_ascii=False)) + "\n"])
                    else:
                        self.out(views.event_plain(e) if self.plain else views.event_line(e))
        except KeyboardInterrupt:  # Ctrl-C ends following; that is not a failure
            pass
        if header:
            self._header()

    def _header(self) -> None:
        self.out(views.events_header() if self.plain else views.events_header_rich())

    audit_parser = _parser(
        "Show the audit trail: every command run in the shell (who, when, exit status) and every "
        "control action (kill, pause, resume, priority, recover, rollback) with the process it changed.",
        "examples:\n  audit --tail 20\n  audit --tail 20 --reverse\n  audit --since 1h\n  audit --json")
    audit_parser.add_argument("-s", "--since", metavar="WHEN",
                              help="only newer ones: a duration ago (30s, 10m, 2h) or an ISO date/time")
    audit_parser.add_argument("-n", "--tail", "--limit", dest="tail", type=count_arg, metavar="N",
                              help="only the newest N; read from the end of the store")
    audit_parser.add_argument("-r", "--reverse", action="store_true", help="newest first")
    audit_parser.add_argument("--json", action="store_true", help="print a JSON array")

    @cmd2.with_argparser(audit_parser)
    def do_audit(self, args: argparse.Namespace) -> None:
        """Show the audit trail."""
        try:
            since = parse_since(args.since) if args.since is not None else None
            entries = self.kernel.audit(since=since, limit=args.tail)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.reverse:
            entries.reverse()
        if args.json:
            self.out_stream(json_array_chunks(views.audit_record(a) for a in entries))
        elif self.plain:
            self.out(views.audit_plain(entries))
        else:
            self.out(views.audit_table(entries))
