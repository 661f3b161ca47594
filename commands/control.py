"""Process control: kill, pause, resume, priority, migrate, wait, and restart and clean for
finished processes. Parse, call one Kernel method per process, report. The verbs take PIDs,
ranges, --all and filters (commands/selection.py)."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import cmd2
from cmd2 import Choices

from commands import views
from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pids
from commands.selection import Filters, check_state, parse_pid_specs, single_pids, state_choices
from commands.terminal_safe import json_array_chunks, safe_text
from llmunix.backends.placement import PLACES
from llmunix.models import (
    IllegalTransition,
    LlmunixError,
    NoSuchProcess,
    Priority,
    ProcessInfo,
    format_pid,
    parse_duration,
)

WAIT = 60.0  # seconds `migrate --wait` waits for each process to leave its old place


def _parser(description: str, epilog: str) -> LlmunixArgumentParser:
    return LlmunixArgumentParser(description=description, epilog=epilog,
                                   formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)


def _selection_parser(verb: str, description: str, examples: str, *,
                      level_after: Callable[..., Choices] | None = None,
                      finished: bool = False) -> LlmunixArgumentParser:
    """The arguments every control verb shares: PIDs and ranges, or --all and the filters.
    `level_after` (priority): a LEVEL follows the PIDs; it completes the PID words. `finished`
    (restart, clean): the verb acts on finished processes, not live ones."""
    which = "finished" if finished else "live"
    parser = _parser(description + f" Give PIDs (003; each must be {which}, or it is an error), ranges "
                     f"(3-7), --all or filters (--tool, --name, --state): those act on the {which} processes "
                     "they match. Each process gets a line; the command fails if any failed, or none matched.",
                     "examples:\n" + examples)
    parser.add_argument("pids", nargs="*", metavar="PID", help="process IDs or ranges, e.g. 003 or 3-7",
                        choices_provider=level_after or (ShellCommandSet.any_pid_choices if finished
                                                         else ShellCommandSet.live_pid_choices))
    if level_after is not None:
        parser.add_argument("level", metavar="LEVEL", choices_provider=ShellCommandSet.priority_choices,
                            help="critical, high, normal, low or idle")
    group = parser.add_argument_group("selection")
    group.add_argument("--all", action="store_true", help=f"{verb} every {which} process (the filters narrow it)")
    group.add_argument("--tool", metavar="GLOB", choices_provider=ShellCommandSet.tool_choices,
                       help="only processes of these tools: a name or a glob such as 'web_*'")
    group.add_argument("--name", metavar="GLOB", help="only processes with these names (run --name)")
    group.add_argument("--state", metavar="STATE", choices_provider=state_choices,
                       help="only processes in this state (" + ("completed, failed, cancelled" if finished
                                                                 else "running, pending, paused") + ", ...)")
    if finished:
        group.add_argument("--older-than", metavar="DURATION",
                           help="only processes that finished more than this long ago (30m, 2h, 7d)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON array with each process's outcome (pid, name, ok, result, state, error)")
    return parser


class ControlCommands(ShellCommandSet):
    def pid_or_level_choices(self) -> Choices:
        """`priority 3 4 hi<Tab>`: the words before the level are PIDs, the last one a level."""
        return Choices(items=[*self.live_pid_choices(), *self.priority_choices()], is_sorted=True)

    kill_parser = _selection_parser(
        "kill", "Stop processes (and their children). Cooperative code stops at its next control point; code "
        "that never reaches one is interrupted after the grace period; subprocess groups get SIGTERM, then "
        "SIGKILL.", "  kill 003\n  kill 3 4 7-9 --force\n  kill --tool 'web_*'\n  kill --all --state pending")
    kill_parser.add_argument("-f", "--force", action="store_true",
                             help="skip the grace period: interrupt the thread / SIGKILL the group at once")

    @cmd2.with_argparser(kill_parser)
    def do_kill(self, args: argparse.Namespace) -> None:
        """Stop processes."""
        self._act(args, "kill", lambda pid: self.kernel.kill(pid, force=args.force), _killed)

    pause_parser = _selection_parser(
        "pause", "Pause processes (and their children). A running one stops at its next control point (a "
        "subprocess group at once, with SIGSTOP) and gives its slot to another.",
        "  pause 003\n  pause 3-5\n  pause --all --name 'nightly-*'")

    @cmd2.with_argparser(pause_parser)
    def do_pause(self, args: argparse.Namespace) -> None:
        """Pause processes."""
        self._act(args, "pause", self.kernel.pause,
                  lambda i: f"{'paused' if i.phase == 'paused' else 'pausing'} {i.process_id} {safe_text(i.name)}")

    resume_parser = _selection_parser(
        "resume", "Resume paused processes (they run again when a slot is free); their children paused "
        "with them resume too.", "  resume 003\n  resume 3-5\n  resume --all")

    @cmd2.with_argparser(resume_parser)
    def do_resume(self, args: argparse.Namespace) -> None:
        """Resume paused processes."""
        self._act(args, "resume", self.kernel.resume, lambda i: f"resumed {i.process_id} {safe_text(i.name)}")

    priority_parser = _selection_parser(
        "reprioritise", "Change live processes' priority level: critical, high, normal, low, idle.",
        "  priority 003 high\n  priority 3 4 7-9 idle\n  priority --tool summarize critical",
        level_after=pid_or_level_choices)

    @cmd2.with_argparser(priority_parser)
    def do_priority(self, args: argparse.Namespace) -> None:
        """Change processes' priority."""
        try:
            level = Priority.parse(args.level)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        self._act(args, "priority", lambda pid: self.kernel.renice(pid, level),
                  lambda i: f"{i.process_id} {safe_text(i.name)} priority {i.priority.label}", cascades=False)

    migrate_parser = _selection_parser(
        "migrate", "Move live processes' bodies between this machine (local) and the Dask cluster (dask): each "
        "is stopped at its next control point and runs again under its PID in the new place, from its last "
        "checkpoint (a tool that has none must be idempotent: it starts over). To go to dask a tool must be "
        "declared remote=True and llmunix must run with --backend dask. A paused process stays paused.",
        "  migrate 003 --to local      (bring it here: debug, profile)\n  migrate 3-5 --to dask --wait\n"
        "  migrate --tool 'crawl*' --to dask")
    migrate_parser.add_argument("--to", required=True, choices=PLACES, help="where its body should run")
    migrate_parser.add_argument("-w", "--wait", action="store_true",
                                help="return once each has left its old place and is queued in the new one")

    @cmd2.with_argparser(migrate_parser)
    def do_migrate(self, args: argparse.Namespace) -> None:
        """Move processes between this machine and the cluster."""
        self._act(args, "migrate", lambda pid: self.kernel.migrate(pid, args.to, wait=WAIT if args.wait else None),
                  lambda i: _migrated(i, args.to), cascades=False)

    restart_parser = _selection_parser(
        "restart", "Run finished processes again, each as a new process (a new PID) with the same tool, "
        "parameters, name, priority, resource needs and dependencies. (`recover` continues an interrupted "
        "one under its own PID; `rollback` reruns one from a checkpoint.)",
        "  restart 003\n  restart 3-7 --state failed\n  restart --all --tool 'web_*' --state failed", finished=True)

    @cmd2.with_argparser(restart_parser)
    def do_restart(self, args: argparse.Namespace) -> None:
        """Run finished processes again as new ones."""
        def restart(pid: int) -> ProcessInfo:
            new = self.kernel.restart(pid)
            olds[new.pid] = pid
            return new

        olds: dict[int, int] = {}
        self._act(args, "restart", restart,
                  lambda i: f"restarted {format_pid(olds[i.pid])} as {i.process_id} {safe_text(i.name)}",
                  cascades=False, finished=True)

    clean_parser = _selection_parser(
        "clean", "Take finished processes out of `ps -a`. The store keeps their record, events and log "
        "(`ps -l PID`, `log PID`, `events --pid PID` and `audit` still show them); `gc` compacts old ones "
        "on its own.", "  clean 003\n  clean --all\n  clean --all --state completed --older-than 1d\n"
        "  clean --tool 'web_*'", finished=True)

    @cmd2.with_category("Durable state commands")
    @cmd2.with_argparser(clean_parser)
    def do_clean(self, args: argparse.Namespace) -> None:
        """Take finished processes out of the listings."""
        try:
            pids, strict, filters = self._choose(args, finished=True)
            cleaned, refused = self.kernel.clean(pids)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        outcomes = [_outcome(i.pid, i, "clean", result=f"cleaned {i.process_id} {safe_text(i.name)}")
                    for i in cleaned]
        outcomes += [_outcome(pid, None, "clean", error=why) for pid, why in refused.items() if pid in strict]
        outcomes.sort(key=lambda o: o["pid"])
        self._report(args, outcomes, "clean", filters, finished=True)

    wait_parser = _parser(
        "Wait until processes finish (default: every live process started here — attached to a daemon, by "
        "this client — and reports those that ended since the last wait). Each end is shown as it happens. "
        "A process that nobody will wake (paused, or waiting only for paused ones) is not waited on "
        "forever: wait stops, says which, and fails. Ctrl-C stops waiting; the processes go on. Fails if a process did "
        "not complete or the timeout passed (waiting for every process, a child whose parent was "
        "waited for is its parent's to judge: a hedge's cancelled replica, a retried step).",
        "examples:\n  wait\n  wait 003 004 --timeout 30s\n  wait 5 --include-paused")
    wait_parser.add_argument("pids", nargs="*", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)
    wait_parser.add_argument("-t", "--timeout", metavar="DURATION", help="give up after this long (30, 5s, 2m)")
    wait_parser.add_argument("--include-paused", action="store_true",
                             help="keep waiting for paused processes (until someone resumes them)")

    @cmd2.with_argparser(wait_parser)
    def do_wait(self, args: argparse.Namespace) -> None:
        """Wait for processes to finish."""
        shell = self._cmd
        try:
            timeout = parse_duration(args.timeout) if args.timeout is not None else None
            if args.pids:
                pids, earlier = parse_pids(args.pids), []
                for pid in pids:
                    self.kernel.info(pid)  # unknown PIDs fail before any waiting
            else:  # the live top-level ones, and those that ended since the last `wait`
                # (not those the last wait reported: one may have ended after its mark was taken)
                ended = shell.own(self.kernel.ended_after(shell.wait_mark))
                earlier = [i for i in ended if i.pid not in shell.wait_seen]
                pids = [i.pid for i in shell.own(self.kernel.ps()) if i.parent is None]
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        mark = self.kernel.last_seq
        watch = self.kernel.wait_each(pids, timeout, include_paused=args.include_paused)
        ended = list(earlier)
        try:
            for info in earlier:
                self._report_end(info)
            if self.plain or not shell.interactive:
                for info in watch:
                    ended.append(info)
                    self._report_end(info)
            else:
                ended.extend(self._wait_with_progress(watch, pids))
        except KeyboardInterrupt:
            self.fail("stopped waiting; the processes go on (see `ps`)")
            return
        if not args.pids:
            shell.wait_mark, shell.wait_seen = mark, {i.pid for i in ended}
            # A child is its parent's business: a hedge's cancelled loser, a retried step.
            waited = {*pids, *(i.pid for i in ended)}
            ended = [i for i in ended if i.parent not in waited]
        bad = [i for i in ended if not i.finished_ok]
        left = ", ".join(f"{i.process_id} ({i.display_state.lower()})" for i in watch.left)
        if watch.reason == "paused":
            self.fail(f"stopped waiting for {left}: nothing will wake them; `resume PID` lets them go on, "
                      "`wait --include-paused` waits for them")
        elif watch.reason == "timeout":
            shown = f"{args.timeout}s" if args.timeout.replace(".", "", 1).isdigit() else args.timeout
            self.fail(f"timed out after {shown}; still running: {left}")
        elif bad:
            self.fail(f"{len(bad)} of {len(ended)} processes did not complete: "
                      + ", ".join(f"{i.process_id} {i.state}" for i in bad))

    def _report_end(self, info: ProcessInfo) -> None:
        """One line as a process ends (at once, even piped); its alert is not shown again."""
        self._cmd.reported.add(info.pid)
        self.out(views.finished_line(info))
        try:
            self._cmd.stdout.flush()
        except (OSError, ValueError):
            pass

    def _wait_with_progress(self, watch: Any, pids: list[int]) -> list[ProcessInfo]:
        """On a terminal: a live bar per process, each end printed above the bars as it happens."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        live = self._cmd.live(transient=True, auto_refresh=False)
        console = live.console
        columns = (TextColumn("[cyan]{task.fields[pid]}"), TextColumn("{task.description}", markup=False),
                   BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[state]}"),
                   TimeElapsedColumn())
        bar = Progress(*columns, console=console, transient=True, auto_refresh=False)
        tasks = {}
        for pid in pids:
            info = self.kernel.info(pid)
            if not info.is_done:
                tasks[pid] = bar.add_task(safe_text(info.name), total=100, pid=info.process_id,
                                          state=info.display_state)
        ended: list[ProcessInfo] = []
        done = threading.Event()

        def refresh() -> None:  # the bars follow progress between ends
            while not done.wait(0.2):
                for pid, task in list(tasks.items()):
                    try:
                        info = self.kernel.info(pid)
                    except LlmunixError:
                        continue
                    bar.update(task, completed=info.progress.percentage or 0.0, state=info.display_state)
                bar.refresh()

        live.update(bar)
        with live:
            ticker = threading.Thread(target=refresh, name="llmunix-wait-bars", daemon=True)
            ticker.start()
            try:
                for info in watch:
                    ended.append(info)
                    self._cmd.reported.add(info.pid)
                    task = tasks.pop(info.pid, None)
                    if task is not None:
                        bar.remove_task(task)
                    live.console.print(views.finished_line(info), markup=False, highlight=False)
                    live.refresh()
            finally:
                done.set()
                ticker.join(timeout=1)
        return ended

    # ------------------------------------------------------------------ acting on a selection

    def _act(self, args: argparse.Namespace, verb: str, action: Callable[[int], ProcessInfo],
             describe: Callable[[ProcessInfo], str], *, cascades: bool = True, finished: bool = False) -> None:
        """Apply `action` to each process chosen by `args` (see `_choose`), in PID order: one line
        per process, a one-line error for each that failed (the others still go ahead), and a
        failed command if any did. A PID named on its own must be acted on; of those chosen by
        a range, --all or a filter, the ones the verb does not apply to (no such PID, already
        finished, pause of a paused one, resume of a running one) are left out quietly. With
        `cascades` (kill, pause, resume reach a process's children), a child whose parent was
        just acted on is reported with it, never as an error."""
        try:
            pids, strict, filters = self._choose(args, finished=finished)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        outcomes: list[dict[str, Any]] = []
        done: set[int] = set()
        for pid in pids:
            parent = self._acted_ancestor(pid, done) if cascades and done else None
            try:
                info = action(pid)
            except (IllegalTransition, NoSuchProcess) as exc:
                if parent is not None:  # the parent's kill/pause/resume reached it first
                    info = self.kernel.info(pid)
                elif pid not in strict:
                    continue
                else:
                    outcomes.append(_outcome(pid, None, verb, error=str(exc)))
                    continue
            except LlmunixError as exc:
                outcomes.append(_outcome(pid, None, verb, error=str(exc)))
                continue
            with_parent = "" if parent is None else f" (with {format_pid(parent)})"
            outcomes.append(_outcome(pid, info, verb, result=describe(info) + with_parent))
            done.add(pid)
        self._report(args, outcomes, verb, filters, finished=finished)

    def _report(self, args: argparse.Namespace, outcomes: list[dict[str, Any]], verb: str, filters: Filters, *,
                finished: bool = False) -> None:
        """A line per process (or `--json`), an error line for each that failed; the command
        fails if any did, or if nothing matched."""
        if not outcomes:
            doing = {"priority": "reprioritise"}.get(verb, verb)
            among = f" among {' '.join(args.pids)}" if args.pids else ""
            which = f" matching {filters.describe()}" if filters else ""
            older = f" finished more than {args.older_than} ago" if getattr(args, "older_than", None) else ""
            self.fail(f"no {'finished' if finished else 'live'} process to {doing}{among}{which}{older} "
                      f"(see `ps{' -a' if finished else ''}`)")
            return
        failed = [o for o in outcomes if not o["ok"]]
        if args.json:
            self.out_stream(json_array_chunks(outcomes))
            if failed:
                self.fail(f"{len(failed)} of {len(outcomes)} failed: "
                          + ", ".join(o["process_id"] for o in failed))
            return
        for o in outcomes:
            if o["ok"]:
                self.out(o["result"])
            else:
                self.fail(o["error"])

    def _choose(self, args: argparse.Namespace, *, finished: bool = False) -> tuple[list[int], set[int], Filters]:
        """The PIDs to act on, by PID; those of them that were named on their own (without
        filters: each must be acted on, or its error reported); the filters. Filters narrow
        the PIDs and ranges given; --all or filters alone choose among every live process (with
        `finished`: every finished one, and `--older-than` narrows by when it finished)."""
        if args.state is not None:
            args.state = check_state(args.state, lambda: [s for i in self.kernel.ps(all=finished)
                                                         for s in (i.display_state, i.state)])
        older = getattr(args, "older_than", None)
        cutoff = time.time() - parse_duration(older) if older is not None else None

        def wanted(info: ProcessInfo) -> bool:
            if cutoff is not None and (info.finished is None or info.finished > cutoff):
                return False
            return filters.match(info)

        filters = Filters.from_args(args)
        narrowed = bool(filters) or cutoff is not None
        if args.pids:
            pids = sorted(parse_pid_specs(args.pids))
            if not narrowed:
                return pids, single_pids(args.pids), filters
            return [p for p in pids if self.kernel.exists(p) and wanted(self.kernel.info(p))], set(), filters
        if not (args.all or narrowed):
            raise LlmunixError("say which processes: PIDs (003), ranges (3-7), --all, or a filter "
                               "(--tool, --name, --state" + (", --older-than" if finished else "") + ")")
        if finished:
            return [i.pid for i in self.kernel.ps(all=True) if i.is_done and wanted(i)], set(), filters
        return [i.pid for i in filters.apply(self.kernel.ps())], set(), filters

    def _acted_ancestor(self, pid: int, done: set[int]) -> int | None:
        """The nearest ancestor of `pid` that this command already acted on, if any."""
        try:
            parent = self.kernel.info(pid).parent
            seen: set[int] = set()
            while parent is not None and parent not in seen:
                if parent in done:
                    return parent
                seen.add(parent)
                parent = self.kernel.info(parent).parent
        except LlmunixError:
            pass
        return None


def _migrated(info: ProcessInfo, to: str) -> str:
    """`migrated 003 crawl to local (from checkpoint 9)`, or `migrating ...` while it stops."""
    entry = next((h for h in reversed(info.history) if h.event in ("migrated", "migrating")), None)
    where = ""
    if entry is not None and "checkpoint" in entry.details:
        where = " (from checkpoint " + entry.details.split("checkpoint ", 1)[1].split()[0].rstrip(",") + ")"
    elif entry is not None and "scratch" in entry.details:
        where = " (from scratch)"
    done = entry is not None and entry.event == "migrated"
    return f"{'migrated' if done else 'migrating'} {info.process_id} {safe_text(info.name)} to {to}{where}"


def _killed(info: ProcessInfo) -> str:
    return f"{'killed' if info.is_done else 'stopping'} {info.process_id} {safe_text(info.name)}"


def _outcome(pid: int, info: ProcessInfo | None, verb: str, *, result: str | None = None,
             error: str | None = None) -> dict[str, Any]:
    """One process's line, and its `--json` record (the real name, unescaped)."""
    return {"process_id": format_pid(pid), "pid": pid, "name": None if info is None else info.name,
            "action": verb, "ok": error is None, "result": result, "error": error,
            "state": None if info is None else info.display_state.lower(),
            "priority": None if info is None else info.priority.label}
