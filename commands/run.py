"""`run` starts a tool as a process; `tools` lists what can be run."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

import cmd2
from cmd2 import Choices, CompletionItem

from commands import tools_views as views
from commands.agents import add_budget_options, budget_options
from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_params, parse_pids, positive_duration
from commands.resilience import add_run_options, run_options
from llmunix.cache import CachePolicy
from llmunix.config import MAX_AMOUNT
from llmunix.models import LlmunixError, format_pid
from llmunix.pool import parse_needs
from llmunix.tools.markdown import TOOL, find_tool_name


class RunCommands(ShellCommandSet):
    def param_choices(self, arg_tokens: dict[str, list[str]]) -> Choices:
        names = arg_tokens.get("tool") or []
        if not names or names[0] not in self.kernel.registry:
            return Choices(items=[])
        t = self.kernel.registry.get(names[0])
        return Choices(items=[CompletionItem(f"{p.name}=", display_meta=p.type) for p in t.params],
                       is_sorted=True)

    run_parser = LlmunixArgumentParser(
        description="Start a tool as a background process and print its PID.",
        epilog="examples:\n  run sleep seconds=5\n  run shell cmd='make test' --priority high\n"
               "  run echo text=done --after 003 --name notify\n  run shell cmd='./train.sh' --need gpu=1\n"
               "  run web_fetch urls=https://example.com --retry 4 --backoff 1s..60s --timeout 30s\n"
               "  run summarize documents=notes/ --cache --cache-ttl 1d\n  run report --deadline 10m\n"
               "  run ask question=... --replicas 3 --first\n  run classify text=... --replicas 5 --quorum 3\n"
               "  run brief-writer topic=scheduling --max-tokens 20000 --max-cost 0.05\n"

               "  run embed path=corpus.txt --isolate --memory 2GB --cpu-time 10m",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    run_parser.add_argument("tool", metavar="TOOL", choices_provider=ShellCommandSet.tool_choices,
                            help="a tool name (see `tools`)")
    run_parser.add_argument("params", nargs="*", metavar="KEY=VALUE", choices_provider=param_choices,
                            help="tool parameters; a list takes a,b, JSON or the key repeated, a dict JSON "
                                 "(`tools TOOL` shows each one's forms)")
    run_parser.add_argument("-p", "--priority", default="normal", metavar="LEVEL",
                            choices_provider=ShellCommandSet.priority_choices,
                            help="critical, high, normal (default), low or idle")
    run_parser.add_argument("--after", nargs="+", default=[], metavar="PID",
                            choices_provider=ShellCommandSet.any_pid_choices,
                            help="start only when these processes have completed")
    run_parser.add_argument("-n", "--name", help="a name for the process (default: the tool's)")
    run_parser.add_argument("--need", action="append", default=[], metavar="NAME=VALUE",
                            help="a resource it must hold to run, e.g. memory_mb=500, gpu=1, "
                                 "llm_tokens_per_min=2000 (repeatable; see `limits`)")
    run_parser.add_argument("--isolate", action="store_true",
                            help="run the body in a worker OS process of its own: true memory figures, pause "
                                 "and kill even inside C code, a crash fails only this process (a few ms more)")
    run_parser.add_argument("--thread", action="store_true",
                            help="run the body on a thread even if the tool or the configuration isolates it")
    run_parser.add_argument("--memory", metavar="SIZE",
                            help="stop it (Failed) when its OS process tree holds more than SIZE, e.g. 500MB or "
                                 "2GB; a Python tool is isolated for it")
    run_parser.add_argument("--cpu-time", metavar="DURATION",
                            help="stop it (Failed) after DURATION of CPU time, e.g. 60s or 5m; a Python tool is "
                                 "isolated for it")
    add_run_options(run_parser)  # resilience: --retry --backoff --retry-on --timeout --restart ...
    add_budget_options(run_parser)  # LLM tokens and money: --max-tokens --max-cost
    learned = run_parser.add_argument_group(
        "deadlines, caching and replicas", "see docs/control.md (deadlines), docs/tools.md (caching, replicas)")
    learned.add_argument("--deadline", metavar="DURATION",
                         help="it should be done within this long: with `set scheduling learned` it runs "
                              "earliest-deadline first while it can make it; it is flagged when it cannot")
    learned.add_argument("--cache", action="store_true",
                         help="reuse a stored result of the same tool, version, parameters and input files "
                              "(the process then ends Completed at once); else run and store this one")
    learned.add_argument("--cache-ttl", metavar="DURATION", help="with --cache: only a result at most this old")
    learned.add_argument("--no-cache", action="store_true", help="run afresh, and store the result for --cache")
    learned.add_argument("--replicas", type=int, metavar="N",
                         help="start N copies as children of one hedge process (`ps --tree`)")
    learned.add_argument("--first", action="store_true",
                         help="with --replicas: keep the first copy that completes, cancel the rest (the default)")
    learned.add_argument("--quorum", metavar="K",
                         help="with --replicas: wait for K equal results ('majority': more than half), "
                              "cancel the rest; fail saying how they differed")

    @cmd2.with_argparser(run_parser)
    def do_run(self, args: argparse.Namespace) -> None:
        """Start a tool as a process."""
        try:
            # cmd2 honours quotes only at the start of a word, so `text='a b'` arrives in pieces:
            # re-read the raw arguments the way a POSIX shell would.
            # (The shell re-quotes such words whole, see cmdline.py; one holding both ' and " is left.)
            tokens = shlex.split(args.cmd2_statement.args)
            if tokens != args.cmd2_statement.arg_list:
                try:
                    args = self.run_parser.parse_args(tokens)
                except SystemExit as exc:
                    self._cmd.report_usage(exc)
                    return
            self._refuse_internal(args.tool)
            params = parse_params(args.params)
            if args.tool in self.kernel.registry:  # lists and dicts from text (Tool.from_text)
                params = self.kernel.registry.get(args.tool).from_text(params)
            if args.isolate and args.thread:
                raise LlmunixError("--isolate and --thread contradict each other; give one")
            isolate = True if args.isolate else False if args.thread else None
            budget = budget_options(args)  # checked before anything starts
            options = run_options(args)  # resilience: retry, restart, timeout
            options.update(_learned_options(args))  # deadline, cache
            if args.replicas is not None:
                if isolate is not None or args.memory is not None or args.cpu_time is not None:
                    raise LlmunixError("--replicas runs copies where their tool says; --isolate, --thread, "
                                       "--memory and --cpu-time do not apply to them (drop those)")
                pid = self.kernel.hedge(args.tool, replicas=args.replicas, quorum=_quorum(args), priority=args.priority,
                                        name=args.name, params=params, needs=_needs(args.need) or None,
                                        **_hedge_options(args, options))
            else:
                pid = self.kernel.spawn(args.tool, priority=args.priority, after=parse_pids(args.after),
                                        name=args.name, params=params, needs=_needs(args.need), isolate=isolate,
                                        memory_limit=args.memory, cpu_limit=args.cpu_time, **options)
            if budget:
                self.kernel.agents.set_budget(pid, **budget)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        self._cmd.last_result = pid
        self.out(format_pid(pid))

    def _refuse_internal(self, name: str) -> None:
        """Workflow and agent bodies are tools too, but they are started by their own commands."""
        if name in self.kernel.registry and self.kernel.registry.get(name).hidden:
            kind = self.kernel.registry.get(name).kind
            how = {"workflow": "workflow run NAME", "agent": f"agent run {name} --goal ..."}.get(str(kind))
            raise LlmunixError(f"{name!r} is not a tool to run by hand" + (f"; use `{how}`" if how else ""))

    tools_parser = LlmunixArgumentParser(
        description="List the tools that can be run, or show one tool's parameters. --check DIR reports on every "
                    "markdown file under DIR: loaded, loaded with warnings (what), or refused (why). `tools reload` "
                    "loads your tool files and modules again without a restart: running processes keep the code "
                    "they started with, new ones get the new code, and a file that fails to load is refused "
                    "and keeps its old tools.",
        epilog="examples:\n  tools\n  tools sleep\n  tools Read      (LLMunix spellings find read_file)\n"
               "  tools --check components/tools\n  tools reload\n  tools reload --json",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    def tools_choices(self) -> Choices:
        """The tools, and `reload`."""
        items = [CompletionItem("reload", display_meta="load your tool files and modules again"),
                 *self.tool_choices().items]
        return Choices(items=items, is_sorted=False)

    tools_parser.add_argument("name", nargs="?", metavar="TOOL", choices_provider=tools_choices,
                              help="a tool to show, or `reload`")
    tools_parser.add_argument("--check", metavar="DIR", completer=cmd2.Cmd.path_complete,
                              help="read every markdown file under DIR as a tool definition and say what loads "
                                   "(non-zero exit if any is refused)")
    tools_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(tools_parser)
    def do_tools(self, args: argparse.Namespace) -> None:
        """List tools."""
        if args.name == "reload" and args.check is None:
            self._reload(args.json)
            return
        if args.check is not None:
            if args.name:
                self.fail("tools --check DIR takes no TOOL name")
                return
            self.report_check(lambda: self.kernel.agents.check(args.check, TOOL), args.check, args.json)
            return
        try:
            if args.name is not None:
                # Any spelling of a tool's name finds it: `Read`, `read-file`, `read_file` (tools/markdown.py).
                found = args.name if args.name in self.kernel.registry else find_tool_name(
                    self.kernel.registry.names(), args.name)
                tools = [self.kernel.registry.get(found or args.name)]
            else:
                tools = list(self.kernel.registry)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json([
                {"name": t.name, "description": t.description, "source": t.source, "overrides": t.overrides,
                 "version": t.version,
                 "subprocess": t.subprocess, "idempotent": t.idempotent,
                 "isolation": self.kernel.tool_isolation(t),
                 "parameters": [{"name": p.name, "type": p.type, "required": p.required,
                                 "default": None if p.required else p.default, "description": p.description,
                                 "range": p.allowed or None, "from_shell": views.param_forms(p) if p.shape else None}
                                for p in t.params]}
                for t in tools
            ])
        elif args.name:
            self.out(views.tool_tree(tools[0], self.kernel.tool_isolation(tools[0])))
        elif self.plain:
            self.out(views.tools_plain(tools))
        else:
            self.out(views.tools_table(tools))

    def _reload(self, as_json: bool) -> None:
        report = self.kernel.reload_tools()
        if as_json:
            self.out_json(report.to_dict())
        else:
            self.out(views.reload_plain(report) if self.plain else views.reload_table(report))
        refused = report.refused
        if refused:
            first = refused[0]
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            kept = "its old tools are kept" if first.kept else "nothing of it is loaded"
            self.fail(f"refused {views.shown_source(first.label)}: {first.error}{more}; {kept}")


def _learned_options(args: argparse.Namespace) -> dict[str, Any]:
    """`Kernel.spawn`'s deadline and cache arguments from `run`'s options."""
    out: dict[str, Any] = {}
    if args.deadline is not None:
        out["deadline"] = positive_duration("--deadline", args.deadline)
    if args.cache and args.no_cache:
        raise LlmunixError("--cache reuses a stored result and --no-cache refuses one: give one of them")
    if args.cache_ttl is not None and not args.cache:
        raise LlmunixError("--cache-ttl needs --cache")
    if args.cache:
        ttl = positive_duration("--cache-ttl", args.cache_ttl) if args.cache_ttl is not None else None
        out["cache"] = CachePolicy(ttl=ttl)
    elif args.no_cache:
        out["cache"] = CachePolicy(refresh=True)
    return out


def _quorum(args: argparse.Namespace) -> int | None:
    """`--quorum K` (or `majority`) for `--replicas N`; None with `--first`."""
    if args.quorum is None:
        return None
    if args.first:
        raise LlmunixError("--first keeps the first result and --quorum waits for equal ones: give one of them")
    if args.quorum.strip().lower() == "majority":
        return args.replicas // 2 + 1 if args.replicas else None
    try:
        return int(args.quorum)
    except ValueError:
        raise LlmunixError(f"bad --quorum {args.quorum!r}; give a number of equal results, or majority") from None


def _hedge_options(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """What a replicated run passes on to each replica (timeout, deadline); what it cannot take
    is refused in one line."""
    for flag, given in (("--after", args.after), ("--retry", args.retry), ("--restart", args.restart),
                        ("--cache", args.cache), ("--no-cache", args.no_cache)):
        if given:
            raise LlmunixError(f"--replicas cannot be combined with {flag}")
    return {k: v for k, v in options.items() if k in ("timeout", "deadline")}


def _needs(texts: list[str]) -> dict[str, float]:
    """`--need NAME=VALUE`s, each at most MAX_AMOUNT (a larger one is a typo: it could never be met,
    and a resource without a limit would hold it for nothing)."""
    needs = parse_needs(texts)
    for name, amount in needs.items():
        if amount > MAX_AMOUNT:
            raise LlmunixError(f"bad --need {name}={amount:g}; at most {MAX_AMOUNT:,.0f}")
    return needs
