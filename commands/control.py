"""Process control: kill, pause, resume, priority, wait. Parse, call one Kernel method, report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cmd2

from commands import views
from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid, parse_pids
from llmunix.models import LlmunixError, ProcessInfo, format_duration, parse_duration


def _parser(description: str, epilog: str) -> LlmunixArgumentParser:
    return LlmunixArgumentParser(description=description, epilog=epilog,
                                   formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)


class ControlCommands(ShellCommandSet):
    kill_parser = _parser("Stop processes. Cooperative code stops at its next control point; code that "
                          "never reaches one is interrupted after the grace period; subprocess groups get "
                          "SIGTERM, then SIGKILL.", "examples:\n  kill 003\n  kill 003 004 --force")
    kill_parser.add_argument("pids", nargs="+", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)
    kill_parser.add_argument("-f", "--force", action="store_true",
                             help="skip the grace period: interrupt the thread / SIGKILL the group at once")

    @cmd2.with_argparser(kill_parser)
    def do_kill(self, args: argparse.Namespace) -> None:
        """Stop processes."""
        self._each(args.pids, lambda pid: self.kernel.kill(pid, force=args.force), self._killed)

    pause_parser = _parser("Pause processes. A running one stops at its next control point (a subprocess "
                           "group at once, with SIGSTOP) and gives its slot to another.",
                           "examples:\n  pause 003\n  pause 003 004")
    pause_parser.add_argument("pids", nargs="+", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)

    @cmd2.with_argparser(pause_parser)
    def do_pause(self, args: argparse.Namespace) -> None:
        """Pause processes."""
        self._each(args.pids, self.kernel.pause,
                   lambda i: f"{'paused' if i.phase == 'paused' else 'pausing'} {i.process_id} {i.name}")

    resume_parser = _parser("Resume paused processes (they run again when a slot is free).",
                            "examples:\n  resume 003")
    resume_parser.add_argument("pids", nargs="+", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)

    @cmd2.with_argparser(resume_parser)
    def do_resume(self, args: argparse.Namespace) -> None:
        """Resume paused processes."""
        self._each(args.pids, self.kernel.resume, lambda i: f"resumed {i.process_id} {i.name}")

    priority_parser = _parser("Change a live process's priority level: critical, high, normal, low, idle.",
                              "examples:\n  priority 003 high\n  priority 004 idle")
    priority_parser.add_argument("pid", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)
    priority_parser.add_argument("level", metavar="LEVEL", choices_provider=ShellCommandSet.priority_choices)

    @cmd2.with_argparser(priority_parser)
    def do_priority(self, args: argparse.Namespace) -> None:
        """Change a process's priority."""
        try:
            info = self.kernel.renice(parse_pid(args.pid), args.level)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        self.out(f"{info.process_id} {info.name} priority {info.priority.label}")

    wait_parser = _parser("Wait until processes finish (default: every live process). Ctrl-C stops "
                          "waiting; the processes go on. Fails if a process did not complete or the "
                          "timeout passed.", "examples:\n  wait\n  wait 003 004 --timeout 30s")
    wait_parser.add_argument("pids", nargs="*", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)
    wait_parser.add_argument("-t", "--timeout", metavar="DURATION", help="give up after this long (30, 5s, 2m)")

    @cmd2.with_argparser(wait_parser)
    def do_wait(self, args: argparse.Namespace) -> None:
        """Wait for processes to finish."""
        try:
            pids = parse_pids(args.pids) if args.pids else self.kernel.live_pids()
            timeout = parse_duration(args.timeout) if args.timeout is not None else None
            for pid in pids:
                self.kernel.info(pid)  # unknown PIDs fail before any waiting
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if not pids:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self.plain or not self._cmd.interactive:
                infos = self.kernel.wait(pids, timeout=timeout)
            else:
                infos = self._wait_with_progress(pids, deadline)
        except KeyboardInterrupt:
            self.fail("stopped waiting; the processes go on (see `ps`)")
            return
        for info in infos:
            if info.is_done:
                self.out(views.finished_line(info))
        pending = [i for i in infos if not i.is_done]
        bad = [i for i in infos if i.is_done and not i.finished_ok]
        if pending:
            self.fail(f"timed out after {format_duration(timeout)}; still running: "
                      + ", ".join(i.process_id for i in pending))
        elif bad:
            self.fail(f"{len(bad)} of {len(infos)} processes did not complete: "
                      + ", ".join(f"{i.process_id} {i.state}" for i in bad))

    def _wait_with_progress(self, pids: list[int], deadline: float | None) -> list[ProcessInfo]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = self._cmd.rich_console()
        columns = (TextColumn("[cyan]{task.fields[pid]}"), TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[state]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            tasks = {}
            for pid in pids:
                info = self.kernel.info(pid)
                tasks[pid] = bar.add_task(info.name, total=100, pid=info.process_id, state=info.display_state)
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                infos = self.kernel.wait(pids, timeout=0.1 if remaining is None else min(0.1, remaining))
                for info in infos:
                    pct = 100.0 if info.finished_ok else (info.progress.percentage or 0.0)
                    bar.update(tasks[info.pid], completed=pct, state=info.display_state)
                if all(i.is_done for i in infos) or (deadline is not None and time.monotonic() >= deadline):
                    return infos

    # ------------------------------------------------------------------ helpers

    def _each(self, pids: list[str], action: Callable[[int], ProcessInfo],
              describe: Callable[[ProcessInfo], str]) -> None:
        """Apply `action` to each PID; a bad one is reported and the others still go ahead."""
        for text in pids:
            try:
                info = action(parse_pid(text))
            except LlmunixError as exc:
                self.fail(str(exc))
                continue
            self.out(describe(info))

    @staticmethod
    def _killed(info: ProcessInfo) -> str:
        if info.is_done:
            return f"killed {info.process_id} {info.name}"
        return f"stopping {info.process_id} {info.name}"
