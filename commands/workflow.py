"""`workflow`: list, show, run, status, pause, resume and retry workflows. Parse, call one Kernel
method, render with workflow_views."""

from __future__ import annotations

import argparse
from pathlib import Path

import cmd2
from cmd2 import Choices, CompletionItem

from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, format_pid

wv = lazy_module("commands.workflow_views")
spec_files = lazy_module("llmunix.workflows.spec")



class WorkflowCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Workflow commands"

    def spec_choices(self) -> Choices:
        items = [CompletionItem(s.name, display_meta=(s.description or s.error or "")[:60])
                 for s in self.kernel.workflow_specs()]
        return Choices(items=items, is_sorted=True)

    def run_choices(self) -> Choices:
        """Workflow runs: live and recent ones by PID, and their names."""
        runs = [i for i in self.kernel.recent(24 * 3600) if i.kind == "workflow"]
        items = [CompletionItem(i.process_id, display_meta=f"{i.name} {i.display_state}") for i in runs[-50:]]
        items += [CompletionItem(n, display_meta="newest run") for n in sorted({i.name for i in runs})]
        return Choices(items=items, is_sorted=True)

    def step_choices(self, arg_tokens: dict[str, list[str]]) -> Choices:
        target = (arg_tokens.get("target") or [""])[0]
        try:
            info = self.kernel.info(self.kernel.workflow_pid(target))
            steps = info.context.input_parameters["spec"]["steps"]
        except (LlmunixError, KeyError, TypeError):
            return Choices(items=[])
        return Choices(items=[CompletionItem(s["id"], display_meta=s.get("title") or s.get("tool") or "")
                              for s in steps])

    parser = LlmunixArgumentParser(
        description="Run and steer workflows: DAGs of steps (tools or agents) that run as child processes.",
        epilog="examples:\n  workflow list\n  workflow show research-pipeline\n  workflow check traces/\n"
               "  workflow run research-pipeline --wait\n  workflow run research-pipeline --input urls=https://a.example\n"
               "  workflow status research-pipeline\n  workflow pause 003\n  workflow retry 003 --step summarize",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p_list = sub.add_parser("list", help="specs found in ./workflows, the home directory and the examples")
    p_list.add_argument("--json", action="store_true", help="print JSON")

    p_check = sub.add_parser("check", help="read every markdown file under DIR as a workflow and say what loads")
    p_check.add_argument("dir", metavar="DIR", completer=cmd2.Cmd.path_complete,
                         help="a directory (its .md files, searched recursively) or one spec file")
    p_check.add_argument("--json", action="store_true", help="print JSON")

    p_show = sub.add_parser("show", help="a spec's steps as a tree: tool, needs, retry, timeout")
    p_show.add_argument("name", metavar="NAME", help="a spec name (see `workflow list`) or a file path",
                        choices_provider=spec_choices)
    p_show.add_argument("--json", action="store_true", help="print the validated spec as JSON")

    p_run = sub.add_parser("run", help="start a workflow; prints its PID")
    p_run.add_argument("name", metavar="NAME", help="a spec name (see `workflow list`) or a file path",
                       choices_provider=spec_choices)
    p_run.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE",
                       help="an input value (repeatable); a bare VALUE sets the first input")
    p_run.add_argument("-p", "--priority", metavar="LEVEL", choices_provider=ShellCommandSet.priority_choices,
                       help="critical, high, normal, low or idle (steps inherit it)")
    p_run.add_argument("-w", "--wait", action="store_true",
                       help="show its progress until it ends; the exit status is the workflow's")
    p_run.add_argument("--no-cache", action="store_true",
                       help="steps with `cache: true` run afresh (their new results are stored)")
    p_run.add_argument("--json", action="store_true", help="print the PID as JSON")

    p_status = sub.add_parser("status", help="the run's step tree: done, running, pending, failed; ETA")
    p_status.add_argument("target", metavar="NAME|PID", help="a run's PID, or a workflow name (its newest run)",
                          choices_provider=run_choices)
    p_status.add_argument("--json", action="store_true", help="print JSON")

    p_pause = sub.add_parser("pause", help="pause a run: its running steps pause, no new ones start")
    p_pause.add_argument("target", metavar="NAME|PID", choices_provider=run_choices)

    p_resume = sub.add_parser("resume", help="resume a paused run and its steps")
    p_resume.add_argument("target", metavar="NAME|PID", choices_provider=run_choices)

    p_retry = sub.add_parser("retry", help="re-run a finished run's failed steps (or --step and its dependents)")
    p_retry.add_argument("target", metavar="NAME|PID", choices_provider=run_choices)
    p_retry.add_argument("-s", "--step", metavar="N|ID", help="the step to re-run (number from 1, or id)",
                         choices_provider=step_choices)
    p_retry.add_argument("-w", "--wait", action="store_true", help="show its progress until it ends")

    @cmd2.with_argparser(parser)
    def do_workflow(self, args: argparse.Namespace) -> None:
        """Run and steer workflows."""
        try:
            target = getattr(args, "target", None)
            if target and target.strip().isdigit():
                parse_pid(target)  # a PID the store cannot hold is "no process", not an overflow
            getattr(self, f"_{args.action}")(args)
        except LlmunixError as exc:
            self.fail(str(exc))

    # ------------------------------------------------------------------ actions

    def _list(self, args: argparse.Namespace) -> None:
        specs = self.kernel.workflow_specs()
        if args.json:
            self.out_json([s.to_dict() for s in specs])
        elif not specs:
            self.out("no workflow specs found; put .yaml, .toml or .md specs in ./workflows")
        else:
            self.out(wv.specs_table(specs))

    def _check(self, args: argparse.Namespace) -> None:
        root = Path(args.dir).expanduser()
        if not root.exists():
            raise LlmunixError(f"no such file or directory: {args.dir}")
        self.report_check(lambda: spec_files.check_spec_files(root.resolve(), self.kernel.workflow_spec),
                          args.dir, args.json)

    def _show(self, args: argparse.Namespace) -> None:
        spec = self.kernel.workflow_spec(args.name)
        if args.json:
            self.out_json(spec.model_dump(by_alias=True, exclude_none=True))
        else:
            self.out(wv.spec_tree(spec))

    def _run(self, args: argparse.Namespace) -> None:
        spec = self.kernel.workflow_spec(args.name)
        inputs: dict[str, str] = {}
        for item in args.input:
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in spec.inputs:
                if not spec.inputs:
                    raise LlmunixError(f"workflow {spec.name!r} takes no inputs")
                if sep and key.strip().isidentifier():
                    raise LlmunixError(f"workflow {spec.name!r} has no input {key.strip()!r} "
                                       f"(its inputs: {', '.join(spec.inputs)})")
                key, value = next(iter(spec.inputs)), item  # a bare value: the first input
            inputs[key.strip()] = value
        pid = self.kernel.workflow_run(spec, inputs, priority=args.priority, no_cache=args.no_cache)
        if args.json:
            self.out_json({"pid": format_pid(pid), "name": spec.name})
        else:
            self.out(wv.planned_tree(spec, pid))
        if args.wait:
            self._follow(pid)

    def _status(self, args: argparse.Namespace) -> None:
        st = self.kernel.workflow_status(args.target)
        if args.json:
            self.out_json(st.to_dict())
        else:
            self.out(wv.status_tree(st))

    def _pause(self, args: argparse.Namespace) -> None:
        info = self.kernel.pause(self.kernel.workflow_pid(args.target))
        self.out(f"{'paused' if info.phase == 'paused' else 'pausing'} workflow {info.process_id} {info.name} "
                 "and its running steps")

    def _resume(self, args: argparse.Namespace) -> None:
        info = self.kernel.resume(self.kernel.workflow_pid(args.target))
        self.out(f"resumed workflow {info.process_id} {info.name}")

    def _retry(self, args: argparse.Namespace) -> None:
        started = self.kernel.workflow_retry(args.target, step=args.step)
        info = started.info
        self.out(f"retrying workflow {info.process_id} {info.name} (attempt {started.attempt}): "
                 + ", ".join(started.steps))
        if args.wait:
            self._follow(info.pid)

    # ------------------------------------------------------------------ following a run

    def _follow(self, pid: int) -> None:
        """Show the run until it ends (live tree on a terminal); fail unless it completed."""
        live = not (self.plain or not self._cmd.interactive)
        try:
            info = self._live(pid) if live else self.kernel.wait([pid])[0]
        except KeyboardInterrupt:
            self.fail(f"stopped watching; workflow {format_pid(pid)} goes on (see `workflow status {format_pid(pid)}`)")
            return
        if not live:  # the live display's last frame is already the final tree
            self.out(wv.status_tree(self.kernel.workflow_status(pid)))
        if not info.finished_ok:
            self.fail(f"workflow {info.process_id} {info.name} {info.state.lower()}: {info.error}")

    def _live(self, pid: int):  # noqa: ANN202 - a ProcessInfo
        with self._cmd.live(wv.status_tree(self.kernel.workflow_status(pid)), refresh_per_second=8) as live:
            while True:
                info = self.kernel.wait([pid], timeout=0.2)[0]
                live.update(wv.status_tree(self.kernel.workflow_status(pid)))
                if info.is_done:
                    return info
