"""`ps`: list processes, as a table, a tree (`-l`), plain text for pipes, or JSON."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import closing

import cmd2

from commands import views
from commands.base import LlmunixArgumentParser, ShellCommandSet, count_arg, parse_pid
from commands.selection import (
    SORT_COLUMNS,
    Filters,
    arrange,
    check_state,
    count_type,
    include_finished,
    parse_pid_specs,
    single_pids,
    state_choices,
    tree_order,
)
from commands.terminal_safe import json_array_chunks, json_safe, safe_text
from llmunix.models import LlmunixError, iso_time, parse_duration, parse_since


class ProcessCommands(ShellCommandSet):
    ps_parser = LlmunixArgumentParser(
        description="List processes (live ones; -a adds finished ones). Filters combine; --sort orders "
                    "the listing (-r turns it around); --tree shows each parent with its children.",
        epilog="examples:\n  ps\n  ps -a --state failed\n  ps -l 003\n  ps 3-7\n  ps -a --tool 'web_*' -n 20\n"
               "  ps --sort cpu -r\n  ps --tree\n  ps | grep Running | awk '{print $1}'\n  ps --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    ps_parser.add_argument("-a", "--all", action="store_true", help="include finished processes")
    ps_parser.add_argument("-l", "--long", action="store_true",
                           help="detailed tree view of each process (of the PIDs given, or all listed)")
    ps_parser.add_argument("--state", metavar="STATE", choices_provider=state_choices,
                           help="only processes in this state (running, paused, failed, ... or a phase)")
    ps_parser.add_argument("--tool", metavar="GLOB", choices_provider=ShellCommandSet.tool_choices,
                           help="only processes of these tools: a name or a glob such as 'web_*'")
    ps_parser.add_argument("--name", metavar="GLOB", help="only processes with these names (run --name)")
    ps_parser.add_argument("--sort", metavar="COLUMN", choices=SORT_COLUMNS,
                           help="order by " + ", ".join(SORT_COLUMNS) + " (lowest first; -r for highest)")
    ps_parser.add_argument("-r", "--reverse", action="store_true", help="reverse the order (highest first)")
    ps_parser.add_argument("-n", "--last", type=count_type(), metavar="N",
                           help="only the N newest (highest PIDs) of those listed")
    ps_parser.add_argument("--tree", action="store_true",
                           help="parents with their children: agents with their tool calls, workflows with their steps")
    ps_parser.add_argument("--json", action="store_true", help="print a JSON array of execution-state records")
    ps_parser.add_argument("pids", nargs="*", metavar="PID", help="only these processes (ranges such as 3-7 too)",
                           choices_provider=ShellCommandSet.any_pid_choices)

    @cmd2.with_argparser(ps_parser)
    def do_ps(self, args: argparse.Namespace) -> None:
        """List processes."""
        try:
            if args.state is not None:
                args.state = check_state(args.state, self._shown_states)
            filters = Filters.from_args(args)
            every = args.all or include_finished(args.state)
            if not (args.pids or args.json or args.long or args.tree or args.tool):
                # The light path: rows of the printed columns, no snapshots (100,000 rows in well under 0.2 s).
                rows = self.kernel.ps_rows(all=every, state=args.state)
                rows = arrange(Filters(name=args.name).apply(rows), sort=args.sort, reverse=args.reverse,
                               last=args.last)
                if self.plain:  # straight out: through rich, 10,000 lines cost a third of a second
                    self.out_stream([views.ps_plain(rows), "\n"])
                else:
                    self.out(views.ps_table(rows))
                return
            if args.pids:  # a PID named on its own must exist; a range lists those that do
                named = single_pids(args.pids)
                infos = filters.apply(self.kernel.info(pid) for pid in parse_pid_specs(args.pids)
                                      if pid in named or self.kernel.exists(pid))
            else:
                infos = Filters(args.tool, args.name).apply(self.kernel.ps(all=every, state=args.state))
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        infos = arrange(infos, sort=args.sort, reverse=args.reverse, last=args.last)
        entries = tree_order(infos) if args.tree else None
        if entries is not None:
            infos = [info for info, _guide, _parent in entries]
        if args.json:
            self.out_stream(json_array_chunks(views.process_record(i) for i in infos))
        elif args.long:
            if not infos:
                self.out("no processes")
            now = time.time()
            usage = self.kernel.agents.usage([i.pid for i in infos])  # LLM tokens, cost, budget
            for info in infos:
                self.out(views.ps_tree(
                    info, now=now, deadline=self.kernel.deadline(info.pid),
                    performance=self.kernel.performance(info.tool_name) if self._user_tool(info.tool_name) else None,
                    cached_from=self.kernel.cached_from(info.pid) if info.state == "Completed" else None,
                    usage=usage.get(info.pid)))
        elif entries is not None:
            self.out(views.ps_tree_plain(entries) if self.plain
                     else views.ps_table(infos, guides=[guide for _info, guide, _parent in entries]))
        elif self.plain:
            self.out(views.ps_plain(infos))
        else:
            self.out(views.ps_table(infos))

    def _user_tool(self, name: str) -> bool:
        """A tool a user runs (its figures mean something), not an internal body (a workflow, a hedge)."""
        registry = self.kernel.registry
        return name not in registry or not registry.get(name).hidden

    def _shown_states(self) -> list[str]:
        """States processes show now, for `--state` names llmunix does not know (ctx.set_state)."""
        return [s for r in self.kernel.ps_rows(all=True) for s in (r.display_state, r.state)]

    log_parser = LlmunixArgumentParser(
        description="Show a process's log: lines it wrote with ctx.log, and a subprocess tool's output.",
        epilog="examples:\n  log 003\n  log 003 --tail 20\n  log 003 --since 10m --reverse\n  log 003 --json\n"
               "  log 003 --follow",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    log_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.any_pid_choices)
    log_parser.add_argument("-n", "--tail", "--limit", dest="tail", type=count_arg, metavar="N",
                            help="only the newest N lines (read from the end of the store)")
    log_parser.add_argument("-s", "--since", metavar="WHEN",
                            help="only newer lines: a duration ago (30s, 10m, 2h) or an ISO date/time")
    log_parser.add_argument("-r", "--reverse", action="store_true", help="newest first (not with --follow)")
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
            since = parse_since(args.since) if args.since is not None else None
            lines = self.kernel.logs(parse_pid(args.pid), since=since, limit=args.tail)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.reverse:
            lines.reverse()
        if args.json:
            self.out_stream(json_array_chunks({"time": iso_time(t), "line": line} for t, line in lines))
            return
        escape = not self.plain  # piped or redirected: the bytes the tool wrote, exactly
        self.out_stream(_log_line(t, line, args.timestamps, escape) + "\n" for t, line in lines)

    def _follow_log(self, args: argparse.Namespace) -> None:
        """`log --follow`: lines as they come (JSON: one object per line); Ctrl-C is not a failure."""
        try:
            if args.reverse:
                raise LlmunixError("--reverse lists what is stored newest first; it cannot follow new lines "
                                   "(drop one of them)")
            timeout = parse_duration(args.timeout) if args.timeout is not None else None
            since = parse_since(args.since) if args.since is not None else None
            stream = self.kernel.follow_log(parse_pid(args.pid), tail=args.tail, timeout=timeout, since=since)
            with closing(stream):
                for t, line in stream:
                    if args.json:
                        text = json_safe(json.dumps({"time": iso_time(t), "line": line}, ensure_ascii=False))
                    else:
                        text = _log_line(t, line, args.timestamps, not self.plain)
                    self.out_stream([text + "\n"])
        except LlmunixError as exc:
            self.fail(str(exc))
        except KeyboardInterrupt:
            pass


def _log_line(t: float, line: str, timestamps: bool, escape: bool = True) -> str:
    """A log line as the terminal may show it: a line a tool wrote can hold anything (an escape
    sequence, a carriage return), so on a terminal it is escaped; piped, and in `--json`, it is
    kept as it was (byte for byte: the output stream writes undecodable bytes back as they were)."""
    text = safe_text(line, lines=True) if escape else line
    return f"{iso_time(t)[11:23]}  {text}" if timestamps else text
