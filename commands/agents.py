"""Agents: `agent run|show|samples`, `agents` (list) and `memory` (what agents learned).

Parse, ask the kernel's agent service (llmunix.agents) one thing, render its snapshot.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import TYPE_CHECKING, Any

import cmd2
from cmd2 import Choices, CompletionItem

from commands.base import LlmunixArgumentParser, ShellCommandSet
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError, format_pid
from llmunix.tools.markdown import AGENT

if TYPE_CHECKING:
    from llmunix.agents.service import AgentService

views = lazy_module("commands.agents_views")
check_views = lazy_module("commands.check_views")


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """`--max-tokens N --max-cost USD`: a process's LLM budget, its children's use included."""
    group = parser.add_argument_group("budget", "LLM tokens and money, children included: see docs/agents.md")
    group.add_argument("--max-tokens", metavar="N",
                       help="stop it (Failed: token budget exhausted) past N tokens, e.g. 50000 or 50k")
    group.add_argument("--max-cost", metavar="USD",
                       help="stop it past this many US dollars, e.g. 0.50 (needs [llm.prices] for its models)")


def budget_options(args: argparse.Namespace) -> dict[str, Any]:
    """`max_tokens` and `max_cost` from `--max-tokens` and `--max-cost` (LlmunixError if bad)."""
    from llmunix.agents.usage import parse_tokens, parse_usd

    out: dict[str, Any] = {}
    if args.max_tokens is not None:
        out["max_tokens"] = parse_tokens(args.max_tokens)
    if args.max_cost is not None:
        out["max_cost"] = parse_usd(args.max_cost)
    return out


def _parser(description: str, epilog: str) -> LlmunixArgumentParser:
    return LlmunixArgumentParser(description=description, epilog=epilog,
                                   formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)


class AgentCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Agent commands"

    def service(self) -> AgentService:
        """The kernel's agent service (a method, not a property: cmd2 reads every attribute of
        a command set when it registers it, and the service is made on first use)."""
        return self.kernel.agents

    def agent_choices(self) -> Choices:
        items = [CompletionItem(a.name, display_meta=a.description[:60]) for a in self.service().agents()]
        return Choices(items=items, is_sorted=True)

    def backend_choices(self) -> Choices:
        from llmunix.agents.backend import BACKENDS

        return Choices.from_values(list(BACKENDS), is_sorted=True)

    # ------------------------------------------------------------------ agent ...

    agent_parser = _parser("Run an agent as a process, show one, or copy the sample texts into the workspace.",
                           "examples:\n  agent run summarization-agent --goal \"Summarize samples/scheduling.md\"\n"
                           "  agent show research-agent\n  agent samples")
    agent_parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)

    @cmd2.with_argparser(agent_parser)
    def do_agent(self, args: argparse.Namespace) -> None:
        """Run or show agents."""
        args.cmd2_subcommand_func(args)

    run_parser = _parser(
        "Start an agent as a background process and print its PID. It thinks (asks its LLM backend), "
        "acts (runs its tools as child processes) and learns (records the run in memory) until it has an "
        "answer; `ps -l PID` shows its reasoning, tools used and actions.",
        "examples:\n  agent run summarization-agent --goal \"Summarize samples/agents.md into summary.md\"\n"
        "  agent run research-agent --goal \"Research aging in samples/\" --priority high\n"
        "  agent run research-agent --goal \"...\" --backend openai --model gpt-4o-mini\n"
        "  agent run research-agent --goal \"...\" --backend openai --max-tokens 50k --max-cost 0.25")
    run_parser.add_argument("name", metavar="NAME", choices_provider=agent_choices, help="an agent (see `agents`)")
    run_parser.add_argument("-g", "--goal", required=True, help="what the agent should achieve")
    run_parser.add_argument("-b", "--backend", metavar="BACKEND", choices_provider=backend_choices,
                            help="offline (deterministic, no network) or openai (default: the configuration's)")
    run_parser.add_argument("-p", "--priority", default="normal", metavar="LEVEL",
                            choices_provider=ShellCommandSet.priority_choices,
                            help="critical, high, normal (default), low or idle")
    run_parser.add_argument("--max-iterations", type=int, metavar="N", help="Thinking/Acting rounds allowed")
    run_parser.add_argument("--model", help="the model name for the openai backend")
    add_budget_options(run_parser)

    @cmd2.as_subcommand_to("agent", "run", run_parser, help="start an agent as a process")
    def _agent_run(self, args: argparse.Namespace) -> None:
        try:
            pid = self.service().run(args.name, args.goal, backend=args.backend, priority=args.priority,
                                  max_iterations=args.max_iterations, model=args.model, **budget_options(args))
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        self._cmd.last_result = pid
        self.out(format_pid(pid))

    show_parser = _parser("Show an agent's definition: its tools (and which are available), model, source file "
                          "and what memory holds about its runs.", "examples:\n  agent show research-agent")
    show_parser.add_argument("name", metavar="NAME", choices_provider=agent_choices)
    show_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.as_subcommand_to("agent", "show", show_parser, help="show an agent's definition and record")
    def _agent_show(self, args: argparse.Namespace) -> None:
        try:
            info = self.service().info(args.name)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        runs = self.service().memory.runs(info.name, limit=None)
        if args.json:
            self.out_json({**info.to_dict(), "instructions": info.instructions,
                           "runs": [r.to_dict() for r in runs[-10:]]})
        else:
            self.out(views.agent_tree(info, runs))

    samples_parser = _parser("Copy the sample texts that ship with llmunix into the workspace (samples/), for "
                             "the example agents to work on.", "examples:\n  agent samples")
    samples_parser.add_argument("-f", "--force", action="store_true", help="overwrite files already there")

    @cmd2.as_subcommand_to("agent", "samples", samples_parser, help="copy the sample texts into the workspace")
    def _agent_samples(self, args: argparse.Namespace) -> None:
        target = self.service().workspace_for(None) / "samples"
        copied = []
        try:
            target.mkdir(parents=True, exist_ok=True)
            from llmunix.agents.service import EXAMPLES

            for src in sorted((EXAMPLES / "samples").iterdir()):
                dest = target / src.name
                if dest.exists() and not args.force:
                    continue
                shutil.copyfile(src, dest)
                copied.append(dest)
        except OSError as exc:
            self.fail(f"cannot copy the samples to {target}: {exc.strerror}")
            return
        for dest in copied:
            self.out(str(dest))
        if not copied:
            self.out(f"the samples are already in {target} (--force copies them again)")

    # ------------------------------------------------------------------ agents

    agents_parser = _parser(
        "List the agents that can run: built-in ones, <home>/agents, an LLMunix project's folders (system/agents, "
        "components/agents, projects/*/components/agents, .claude/agents), ./agents and the configured "
        "definition_paths (LLMunix markdown definitions of any era). --paths lists where it looks; --check DIR "
        "reports on every markdown file under DIR: loaded, loaded with warnings (what), or refused (why).",
        "examples:\n  agents\n  agents --json\n  agents --paths\n  agents --check .claude/agents\n"
        "  agents --check projects/Project_aorta --json")
    agents_mode = agents_parser.add_mutually_exclusive_group()
    agents_mode.add_argument("--check", metavar="DIR", completer=cmd2.Cmd.path_complete,
                             help="read every markdown file under DIR and say what loads (non-zero exit if any "
                                  "is refused)")
    agents_mode.add_argument("--paths", action="store_true", help="list the directories searched, in order")
    agents_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(agents_parser)
    def do_agents(self, args: argparse.Namespace) -> None:
        """List agents."""
        if args.check is not None:
            self.report_check(lambda: self.service().check(args.check, AGENT), args.check, args.json)
            return
        if args.paths:
            paths = self.service().search_paths()
            if args.json:
                self.out_json([p.to_dict() for p in paths])
            else:
                self.out(check_views.paths_plain(paths) if self.plain else check_views.paths_table(paths))
            return
        infos = self.service().agents()
        if args.json:
            self.out_json([i.to_dict() for i in infos])
        elif self.plain:
            self.out(views.agents_plain(infos))
        else:
            self.out(views.agents_table(infos))
        for err in self.service().errors:  # a warning, not a failure: the listing itself worked
            sys.stderr.write(f"agents: could not load {err}\n")

    # ------------------------------------------------------------------ memory

    memory_parser = _parser(
        "Show what agents learned: each run's goal, outcome, duration, iterations and tools, newest last. "
        "`memory search TEXT` keeps the runs whose goal, answer, errors, tools or agent contain every word.",
        "examples:\n  memory\n  memory search scheduling\n  memory --agent research-agent -n 5\n"
        "  memory --tools\n  memory --json")
    memory_parser.add_argument("words", nargs="*", metavar="search TEXT", help="search TEXT: filter the runs")
    memory_parser.add_argument("-a", "--agent", metavar="NAME", choices_provider=agent_choices,
                               help="only this agent's runs")
    memory_parser.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    memory_parser.add_argument("--tools", action="store_true", help="per tool: calls, failures and the last error")
    memory_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(memory_parser)
    def do_memory(self, args: argparse.Namespace) -> None:
        """Show agents' learning memory."""
        try:
            if args.words and args.words[0] != "search":
                raise LlmunixError(f"unknown memory subcommand {args.words[0]!r}; use `memory search TEXT`")
            text = " ".join(args.words[1:]).strip() if args.words else None
            if args.words and not text:
                raise LlmunixError("memory search needs TEXT, e.g. memory search scheduling")
            agent = self.service().definition(args.agent).name if args.agent else None
            if args.limit < 1:
                raise LlmunixError("-n must be at least 1")
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        memory = self.service().memory
        if args.tools:
            rows = memory.tool_summary(agent)
            if args.json:
                self.out_json([{"tool": t, "calls": c, "failures": f, "last_error": e} for t, c, f, e in rows])
            else:
                self.out(views.tool_memory_plain(rows) if self.plain else views.tool_memory_table(rows))
            return
        runs = memory.runs(agent, text, limit=args.limit)
        if args.json:
            self.out_json([r.to_dict() for r in runs])
        elif self.plain:
            self.out(views.memory_plain(runs))
        else:
            self.out(views.memory_table(runs, search=text))

