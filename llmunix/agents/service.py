"""The agents of one kernel: their definitions, settings and memory, and how to start one.

`attach(kernel, config)` (the CLI does it at start) or `service_for(kernel)` (defaults) gives
the kernel's `AgentService`. It discovers markdown definitions along the search path
(`search_paths`, lowest precedence first: a later one of the same name wins): the package's
built-in agents; `<home>/agents` and `<home>/tools`; the folders an LLMunix project keeps them in,
under the working directory (`system/agents`, `components/agents`, `components/tools`,
`projects/*/components/agents`, `projects/*/components/tools`, `.claude/agents`); `./agents` and
`./tools`; then each `definition_paths` entry of config.toml. It registers each agent as a hidden
tool of kind agent, so an agent process is spawned, recovered and listed like any other process,
and each markdown tool as a tool. Commands use its public methods, which return immutable
`AgentInfo`, `SearchPath` and `FileCheck` records.
"""

from __future__ import annotations

import difflib
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.agents.backend import BACKENDS, BackendSettings, api_model
from llmunix.agents.memory import AgentMemory
from llmunix.config import Config, active_config
from llmunix.models import LlmunixError, Priority, ProcessKind, ToolError
from llmunix.process import ProcessContext
from llmunix.tools.markdown import (
    AGENT,
    TOOL,
    DefinitionError,
    FileCheck,
    MarkdownDefinition,
    check_directory,
    discover,
    find_tool_name,
    markdown_tool,
    tool_key,
)
from llmunix.tools.registry import Tool, make_tool

if TYPE_CHECKING:
    from llmunix.agents.endpoints import EndpointInfo
    from llmunix.agents.usage import Budget, ProcessUsage, TokenReport
    from llmunix.kernel import Kernel

EXAMPLES = Path(__file__).parent / "examples"


@dataclass(frozen=True)
class AgentSettings:
    llm: BackendSettings
    allow_shell_tools: bool = False
    workspace: str = "workspace"

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str] | None = None) -> AgentSettings:
        return cls(BackendSettings.from_config(config, env), config.allow_shell_tools, config.workspace)


@dataclass(frozen=True)
class AgentInfo:
    """What `agents` and `agent show` print about one agent."""

    name: str
    description: str
    tools: tuple[tuple[str, str | None], ...]  # (as the file grants it, the llmunix tool or None)
    model: str | None
    version: str | None
    capabilities: tuple[str, ...]
    source: str  # the file
    builtin: bool
    format: str
    max_iterations: int | None
    instructions: str
    warnings: tuple[str, ...] = ()  # what the file was read with a guess about (see tools/markdown.py)

    @property
    def available(self) -> list[str]:
        return [t for _w, t in self.tools if t]

    @property
    def missing(self) -> list[str]:
        return [w for w, t in self.tools if t is None]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "tools": [{"granted": w, "tool": t} for w, t in self.tools], "model": self.model,
                "version": self.version, "capabilities": list(self.capabilities), "source": self.source,
                "builtin": self.builtin, "format": self.format, "max_iterations": self.max_iterations,
                "warnings": list(self.warnings)}


class AgentService:
    def __init__(self, kernel: Kernel, config: Config | None = None, *, env: Mapping[str, str] | None = None,
                 directories: Sequence[tuple[Path, str | None]] | None = None, cwd: str | Path | None = None,
                 backoff: float | None = None) -> None:
        self.kernel = kernel
        self.config = config if config is not None else active_config()
        self.settings = AgentSettings.from_config(self.config, env)
        self.backoff = backoff  # tests make retries fast
        self.memory = AgentMemory(kernel.store)
        # (imported here: the shell imports this module at start, and needs neither until an agent runs)
        from llmunix.agents.endpoints import EndpointLimits, Endpoints
        from llmunix.agents.usage import TokenLedger

        self.endpoints = Endpoints({key: EndpointLimits(**rule.model_dump())
                                    for key, rule in self.config.llm.endpoints.items()})
        self.ledger = TokenLedger(kernel, self.config.llm.prices)
        # Kept-alive connections go with the kernel (a server's handler waits on each one).
        weakref.finalize(kernel, self.endpoints.transport.close)
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        if directories is not None:
            self._search = [SearchPath(str(d), Path(d), k, "given") for d, k in directories]
        else:
            self._search = search_paths(kernel.home, self.cwd, self.config.definition_paths)
        self.directories = [(sp.directory, sp.kind) for sp in self._search if sp.directory is not None]
        self.errors: list[DefinitionError] = []
        self._agents: dict[str, MarkdownDefinition] = {}
        self._loaded: list[MarkdownDefinition] = []
        self._lock = threading.Lock()
        self._agent_tools: dict[str, tuple[MarkdownDefinition, Tool]] = {}
        self.reload()

    # ------------------------------------------------------------------ definitions

    def reload(self) -> list[DefinitionError]:
        """Read the definitions again; returns (and keeps in `errors`) the files that failed."""
        found = discover(self.directories)
        errors = list(found.errors)
        loaded = []
        for d in found.of_kind(TOOL):
            try:
                self.kernel.registry.register(markdown_tool(d, allow_shell=self._shell_allowed))
            except DefinitionError as exc:
                errors.append(exc)
                continue
            loaded.append(d)
        with self._lock:
            self._agents = {d.key: d for d in found.of_kind(AGENT)}
            self._loaded = [*self._agents.values(), *loaded]
            self.errors = errors
        for d in found.of_kind(AGENT):
            self._register_agent(d)
        return self.errors

    def _register_agent(self, d: MarkdownDefinition) -> None:
        """Register `d` as its agent tool, unless the registry holds that very tool already (a
        tool is a pydantic model made per definition: making one per run costs more than the run)."""
        registry = self.kernel.registry
        made = self._agent_tools.get(d.key)
        if made is not None and made[0] is d and d.name in registry and registry.get(d.name) is made[1]:
            return
        tool = registry.register(_agent_tool(d))
        self._agent_tools[d.key] = (d, tool)

    # ------------------------------------------------------------------ where and how they are found

    def search_paths(self) -> list[SearchPath]:
        """Where definitions are looked for, lowest precedence first, with what each holds now."""
        with self._lock:
            loaded = list(self._loaded)
            errors = list(self.errors)
        out = []
        for sp in self._search:
            if sp.directory is None:
                out.append(sp)
                continue
            here = sp.directory.resolve()
            mine = [d for d in loaded if d.path.parent.resolve() == here]
            refused = sum(1 for e in errors if Path(e.path).parent.resolve() == here)
            out.append(SearchPath(sp.pattern, sp.directory, sp.kind, sp.origin, sp.directory.is_dir(),
                                  sum(1 for d in mine if d.kind == AGENT), sum(1 for d in mine if d.kind == TOOL),
                                  refused))
        return out

    def check(self, directory: str | Path, kind: str = AGENT) -> list[FileCheck]:
        """Every markdown file under `directory` read as a definition (`kind` when neither the
        file nor its folder says): loaded, loaded with warnings, refused or skipped. An agent's
        granted tools that no tool here answers to are a warning (they are not offered to it)."""
        root = Path(directory).expanduser()
        if not root.is_absolute():
            root = self.cwd / root
        if not root.exists():
            raise LlmunixError(f"no such file or directory: {directory}")
        pool = [*self.kernel.registry.names(), *self.names()]

        def unavailable(d: MarkdownDefinition) -> list[str]:
            others = [n for n in pool if tool_key(n) != d.key]
            missing = [t for t in d.tools if find_tool_name(others, t) is None]
            if d.kind != AGENT or not missing:
                return []
            return [f"no tool here answers to {', '.join(missing)}; "
                    f"{'it is' if len(missing) == 1 else 'they are'} not offered to the agent"]

        return check_directory(root, kind, more_warnings=unavailable)

    def _shell_allowed(self) -> bool:
        return self.settings.allow_shell_tools

    def definition(self, name: str) -> MarkdownDefinition:
        """An agent's definition by name, in any spelling (`SummarizationAgent`, `summarization-agent`)."""
        with self._lock:
            d = self._agents.get(tool_key(name))
            names = [a.name for a in self._agents.values()]
        if d is None:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else "; `agents` lists them"
            raise LlmunixError(f"unknown agent {name!r}{hint}")
        return d

    def names(self) -> list[str]:
        with self._lock:
            return sorted(d.name for d in self._agents.values())

    def agents(self) -> list[AgentInfo]:
        with self._lock:
            defs = sorted(self._agents.values(), key=lambda d: d.name)
        return [self.info(d) for d in defs]

    def info(self, d: MarkdownDefinition | str) -> AgentInfo:
        if isinstance(d, str):
            d = self.definition(d)
        resolved = self._resolve_names(d)
        return AgentInfo(d.name, d.description, tuple(resolved), d.model, d.version, d.capabilities, str(d.path),
                         _is_builtin(d.path), d.format, d.max_iterations, d.body, d.warnings)

    def _resolve_names(self, d: MarkdownDefinition) -> list[tuple[str, str | None]]:
        registry = self.kernel.registry
        pool = [*registry.names(), *(a.name for a in self._agents.values() if a.key != d.key)]
        return [(w, find_tool_name(pool, w)) for w in d.tools]

    def granted_tools(self, d: MarkdownDefinition) -> tuple[list[Tool], list[str]]:
        """The Tools an agent may use, and the granted names no tool answers to."""
        tools, missing = [], []
        for written, name in self._resolve_names(d):
            if name is None:
                missing.append(written)
                continue
            t = self.kernel.registry.get(name)
            if t not in tools:
                tools.append(t)
        return tools, missing

    def workspace_for(self, cwd: str | None) -> Path:
        base = Path(cwd) if cwd else self.cwd
        return (base / Path(self.settings.workspace).expanduser()).resolve()

    # ------------------------------------------------------------------ running

    def run(self, name: str, goal: str, *, backend: str | None = None, priority: Priority | str = Priority.NORMAL,
            max_iterations: int | None = None, model: str | None = None, max_tokens: int | None = None,
            max_cost: float | None = None) -> int:
        """Start an agent process; returns its PID. Bad input raises LlmunixError at once.
        `max_tokens`, `max_cost`: its budget (its tools' and sub-agents' use included)."""
        d = self.definition(name)
        if max_cost is not None:
            llm = self.settings.llm
            self.check_priced(model or api_model(d.model) or llm.model, backend or llm.backend)
        if not goal or not goal.strip():
            raise LlmunixError(f"agent {d.name} needs a goal: agent run {d.name} --goal \"what to do\"")
        if backend is not None and backend not in BACKENDS:
            raise LlmunixError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        if max_iterations is not None and max_iterations < 1:
            raise LlmunixError("--max-iterations must be at least 1")
        self._register_agent(d)  # the definition as it is now
        params: dict[str, Any] = {"goal": goal}
        if backend:
            params["backend"] = backend
        if max_iterations:
            params["max_iterations"] = max_iterations
        if model:
            params["model"] = model
        pid = self.kernel.spawn(d.name, priority=priority, params=params)
        if max_tokens is not None or max_cost is not None:
            self.set_budget(pid, max_tokens, max_cost)
        return pid


    def spawn_child(self, ctx: ProcessContext, agent: str, goal: str, params: Mapping[str, Any], **kw: Any) -> int:
        """Start an agent as a child of `ctx`'s process (a workflow's agent step); `params` may set
        backend, max_iterations and model; `kw` are ctx.spawn's own (name, priority, timeout,
        needs). Returns the PID."""
        d = self.definition(agent)
        if not goal or not str(goal).strip():
            raise LlmunixError(f"agent {d.name} needs a goal (give the step a 'goal')")
        self._register_agent(d)
        return ctx.spawn(d.name, params={**params, "goal": str(goal)}, **kw)

    def run_prompt(self, ctx: ProcessContext, d: MarkdownDefinition, params: Mapping[str, Any]) -> str:
        """The body of a markdown tool that is a prompt (no shell block): see prompt_tool.py."""
        from llmunix.agents.prompt_tool import run_prompt_tool

        return run_prompt_tool(ctx, d, params)

    def tokens_used(self, ctx: ProcessContext, usage: Any, totals: Any, backend: str, model: str = "") -> None:
        """A model call in `ctx`'s process (an agent's, a prompt tool's) used tokens: the
        `process.tokens` event (what `ps -l`, `stats --tokens`, `memory` and the store's roll-ups
        read), added up the process tree; a budget it exhausts stops its process (usage.py)."""
        model = model or self.settings.llm.model
        endpoint = self.endpoints.key_for(self.settings.llm.base_url, model) if backend == "openai" else backend
        self.ledger.record(ctx, usage.prompt_tokens, usage.completion_tokens, model=model, endpoint=endpoint,
                           backend=backend, totals=totals.to_dict())

    # ------------------------------------------------------------------ tokens, money, endpoints

    def set_budget(self, pid: int, max_tokens: int | None = None, max_cost: float | None = None) -> Budget:
        """Hold process `pid` (and everything below it) to at most `max_tokens` tokens and
        `max_cost` US dollars; past it, it ends Failed ("token budget exhausted: ...")."""
        return self.ledger.set_budget(pid, max_tokens, max_cost)

    def check_priced(self, model: str, backend: str = "openai") -> None:
        """A cost budget for calls to `model` needs its price: LlmunixError saying where to set it."""
        if backend == "openai" and self.ledger.price(model) is None:
            raise LlmunixError(f"--max-cost needs a price for model {model!r}: add [llm.prices.\"{model}\"] with "
                               "input = and output = (USD per 1M tokens) to config.toml")

    def usage(self, pids: Sequence[int]) -> dict[int, ProcessUsage]:
        """Token usage of each of `pids` that used any (own, and with its descendants), and its budget."""
        return self.ledger.usage(pids)

    def token_report(self, limit: int | None = None) -> TokenReport:
        """`stats --tokens`: per top-level process (children included), per model and endpoint, in all."""
        return self.ledger.report(limit)

    def endpoint_limits(self) -> list[EndpointInfo]:
        """Every configured or used LLM endpoint: its limits, requests in flight, waiters, buckets."""
        return self.endpoints.infos()

    def set_endpoint_limits(self, key: str, settings: Mapping[str, Any]) -> EndpointInfo:
        """Change an endpoint's limits (`limits --endpoint URL|MODEL max_concurrent=4`)."""
        return self.endpoints.set(key, settings)


def _agent_tool(d: MarkdownDefinition) -> Tool:
    """An agent as a (hidden) tool of kind agent: the body looks up its kernel's service at run time."""
    key = d.key

    def agent(ctx: ProcessContext, goal: str, backend: str = "", max_iterations: int = 0, model: str = "") -> Any:
        from llmunix.agents.loop import AgentRun

        service: AgentService = ctx.service("agents")
        try:
            run = AgentRun(ctx, service, service.definition(key), goal, backend, max_iterations, model)
        except LlmunixError as exc:  # a bad backend name, an agent since removed: fail with the reason
            raise ToolError(str(exc)) from None
        return run.run()

    t = make_tool(agent, name=d.name, description=d.description, source=str(d.path), kind=ProcessKind.AGENT,
                  hidden=True, touches=())  # an agent's own tools are confined in its turn
    return t


def _is_builtin(path: Path) -> bool:
    try:
        return EXAMPLES.resolve() in Path(path).resolve().parents
    except OSError:
        return False


@dataclass(frozen=True)
class SearchPath:
    """One place definitions are looked for (`agents --paths`): the pattern as configured, the
    directory it names (None: a glob that matched nothing), what it is read as (AGENT, TOOL, or
    None: each file says, else its folder), and, once loaded, what it holds."""

    pattern: str
    directory: Path | None
    kind: str | None
    origin: str  # builtin, home, project, cwd, config, given
    exists: bool = False
    agents: int = 0
    tools: int = 0
    refused: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "directory": None if self.directory is None else str(self.directory),
                "kind": self.kind, "origin": self.origin, "exists": self.exists, "agents": self.agents,
                "tools": self.tools, "refused": self.refused}


# The folders an LLMunix project keeps definitions in, relative to the working directory.
PROJECT_FOLDERS: tuple[tuple[str, str], ...] = (
    ("system/agents", AGENT),
    ("components/agents", AGENT),
    ("components/tools", TOOL),
    ("projects/*/components/agents", AGENT),
    ("projects/*/components/tools", TOOL),
    (".claude/agents", AGENT),
)


def search_paths(home: Path | None, cwd: Path, extra: Sequence[str] = ()) -> list[SearchPath]:
    """Where definitions are found, lowest precedence first (see the module docstring)."""
    out = [SearchPath("builtin", EXAMPLES, AGENT, "builtin")]
    if home is not None:
        out += [SearchPath(str(home / "agents"), home / "agents", AGENT, "home"),
                SearchPath(str(home / "tools"), home / "tools", TOOL, "home")]
    for pattern, kind in PROJECT_FOLDERS:
        out += _expand(pattern, cwd, kind, "project")
    out += [SearchPath("agents", cwd / "agents", AGENT, "cwd"), SearchPath("tools", cwd / "tools", TOOL, "cwd")]
    for pattern in extra:
        name = Path(pattern.rstrip("/")).name.lower()
        out += _expand(pattern, cwd, AGENT if name == "agents" else TOOL if name == "tools" else None, "config")
    return out


def _expand(pattern: str, cwd: Path, kind: str | None, origin: str) -> list[SearchPath]:
    path = Path(pattern).expanduser()
    if not any(c in pattern for c in "*?["):
        return [SearchPath(pattern, path if path.is_absolute() else cwd / path, kind, origin)]
    base, rel = (Path(path.anchor), str(path.relative_to(path.anchor))) if path.is_absolute() else (cwd, pattern)
    found = sorted(p for p in base.glob(rel) if p.is_dir())
    return [SearchPath(pattern, p, kind, origin) for p in found] or [SearchPath(pattern, None, kind, origin)]


def default_directories(home: Path | None, cwd: Path, extra: Sequence[str] = ()) -> list[tuple[Path, str | None]]:
    """Where definitions are found, lowest precedence first: (directory, default kind)."""
    return [(sp.directory, sp.kind) for sp in search_paths(home, cwd, extra) if sp.directory is not None]


# ---------------------------------------------------------------------------- one service per kernel


def attach(kernel: Kernel, config: Config | None = None, **kwargs: Any) -> AgentService:
    """Make (or replace) the kernel's agent service with this configuration."""
    service = AgentService(kernel, config, **kwargs)
    kernel.attach_agents(service)
    return service


def service_for(kernel: Kernel) -> AgentService:
    """The kernel's agent service (`kernel.agents`: made with the active configuration the first time)."""
    return kernel.agents
