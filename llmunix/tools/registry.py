"""The tool registry and the `@tool` decorator.

A tool is a Python function whose first parameter is the process context (`ctx`); its other
parameters become the tool's parameters, validated by a pydantic model built from the signature,
so `run sleep seconds=abc` fails at once with a one-line error naming the parameter.
"""

from __future__ import annotations

import difflib
import inspect
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from llmunix.models import LlmunixError, ProcessKind
from llmunix.pool import parse_needs

ToolFunc = Callable[..., Any]

# What a tool touches (`@tool(touches=...)`), declared so that an agent can be confined:
#   "paths:PARAM"  it reads or writes the files (or directories) PARAM names
#   "urls:PARAM"   it fetches the URLs PARAM names
#   "anything"     it can reach anything (a shell command): no confinement is possible
# `touches=()` declares it touches nothing outside its parameters and memory; None (the default)
# declares nothing. A tool that touches paths or URLs takes a `workspace` parameter: the agent
# loop sets it to the agent's workspace (a model never chooses it), and when it is set the tool
# confines every path to it and every URL to the `agent_allowed_urls` setting (see
# `llmunix.tools.files.Confinement`).
TOUCHES_ANYTHING = "anything"
TOUCH_KINDS = ("paths", "urls")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    required: bool
    default: Any
    description: str = ""


@dataclass
class Tool:
    name: str
    func: ToolFunc
    description: str = ""
    subprocess: bool = False  # runs an external command: signalled as a process group
    idempotent: bool = False  # safe to re-run from scratch after an interruption
    source: str = "builtin"
    params: tuple[ParamSpec, ...] = ()
    needs: Mapping[str, float] = field(default_factory=dict)  # default resource needs (see admission.py)
    kind: ProcessKind = ProcessKind.TOOL  # agent and workflow bodies are tools of those kinds
    hidden: bool = False  # internal (e.g. the workflow runner): not listed by `tools`
    # resilience: the tool run instead while this one's circuit is open; the watchdog's settings
    fallback: str | None = None
    stall_timeout: float | None = None  # seconds without progress before it is stalled (None: the setting's)
    on_stall: str | None = None  # alert, restart or kill (None: the stall_action setting)
    breaker: bool = True  # its failures count on a tool circuit breaker (False: it guards its hosts itself)
    remote: bool = False  # may run on a cluster worker (backends/): importable, no ctx.spawn/recv/locks
    touches: tuple[str, ...] | None = None  # what it reaches: "paths:PARAM", "urls:PARAM", "anything" (see above)
    _model: type[pydantic.BaseModel] | None = field(default=None, repr=False)

    @property
    def validated(self) -> bool:
        """Its parameters are checked against a model (a Python function's signature)."""
        return self._model is not None

    @property
    def open_ended(self) -> bool:
        """It takes parameters beyond those it names (declared with **kwargs)."""
        return self._model is not None and self._model.model_config.get("extra") == "allow"

    @property
    def confinable(self) -> bool:
        """Whether a run of this tool under an agent stays inside the agent's workspace and URL
        allow list: it declared what it touches, and that is not "anything" (paths and URLs are
        checked against the `workspace` the agent passes; `make_tool` saw to the parameter)."""
        return self.touches is not None and TOUCHES_ANYTHING not in self.touches

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check and coerce parameters; raise LlmunixError with one line naming the culprit."""
        if self._model is None:
            return dict(params)
        if not params and not self._model.model_fields:  # a tool without parameters, given none
            return {}
        try:
            model = self._model.model_validate(dict(params))
        except pydantic.ValidationError as exc:
            raise LlmunixError(self._explain(exc)) from None
        values = {name: getattr(model, name) for name in type(model).model_fields}
        values.update(model.model_extra or {})  # a tool declared with **kwargs takes any others
        return values

    def _explain(self, exc: pydantic.ValidationError) -> str:
        err = exc.errors()[0]
        name = ".".join(str(part) for part in err["loc"]) or "?"
        names = ", ".join(p.name for p in self.params) or "none"
        if err["type"] == "missing":
            return f"tool {self.name!r} needs parameter {name!r} (e.g. run {self.name} {name}=...)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, [p.name for p in self.params], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"tool {self.name!r} has no parameter {name!r} (its parameters: {names}){hint}"
        return f"bad value {err.get('input')!r} for parameter {name!r} of tool {self.name!r}: {err['msg']}"


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._lock = threading.Lock()

    def register(self, tool: Tool) -> Tool:
        with self._lock:
            self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool:
        """A tool by name, in any spelling one tool answers to (`Read`, `read-file`, `WebFetch`:
        see tools/markdown.py `find_tool_name`, the mapping agents use too), so "did you mean"
        is only ever said of a name that could not be resolved."""
        try:
            return self._tools[name]
        except KeyError:
            pass
        from llmunix.tools.markdown import find_tool_name

        visible = self.names()
        found = find_tool_name(visible, str(name))
        if found is not None:
            return self._tools[found]
        close = difflib.get_close_matches(name, visible, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; `tools` lists them"
        raise LlmunixError(f"unknown tool {name!r}{hint}")

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        """The tools a user can run by name (hidden internals such as the workflow runner left out)."""
        return iter(sorted((t for t in self._tools.values() if not t.hidden), key=lambda t: t.name))

    def names(self) -> list[str]:
        return sorted(name for name, t in self._tools.items() if not t.hidden)


REGISTRY = ToolRegistry()


def make_tool(
    func: ToolFunc,
    *,
    name: str | None = None,
    description: str | None = None,
    subprocess: bool = False,
    idempotent: bool = False,
    source: str = "builtin",
    needs: Mapping[str, Any] | None = None,
    kind: ProcessKind = ProcessKind.TOOL,
    hidden: bool = False,
    fallback: str | None = None,
    stall_timeout: float | None = None,
    on_stall: str | None = None,
    breaker: bool = True,
    remote: bool = False,
    touches: Iterable[str] | None = None,
) -> Tool:
    """Build a Tool from a function whose first parameter receives the process context."""
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise LlmunixError(f"{func.__qualname__}: a tool's first parameter must be the context (ctx)")
    doc = inspect.getdoc(func) or ""
    param_docs = _param_docs(doc)
    fields: dict[str, Any] = {}
    specs: list[ParamSpec] = []
    open_kwargs = False
    for p in params[1:]:
        if p.kind is p.VAR_KEYWORD:
            open_kwargs = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        annotation = p.annotation if p.annotation is not p.empty else Any
        if isinstance(annotation, str):  # from __future__ import annotations
            annotation = _resolve(annotation, func)
        required = p.default is p.empty
        fields[p.name] = (annotation, ... if required else p.default)
        specs.append(
            ParamSpec(p.name, _type_name(annotation), required, None if required else p.default,
                      param_docs.get(p.name, ""))
        )
    config = pydantic.ConfigDict(extra="allow" if open_kwargs else "forbid", arbitrary_types_allowed=True)
    model = pydantic.create_model(f"{func.__name__}_params", __config__=config, **fields)
    first_line = doc.split("\n\n")[0].replace("\n", " ").strip()
    _check_resilience(fallback, stall_timeout, on_stall)
    declared = _check_touches(name or func.__name__, touches, [spec.name for spec in specs])
    return Tool(
        name=name or func.__name__,
        func=func,
        description=description if description is not None else first_line,
        subprocess=subprocess,
        idempotent=idempotent,
        source=source,
        params=tuple(specs),
        needs=parse_needs(needs),
        kind=kind,
        hidden=hidden,
        fallback=fallback,
        stall_timeout=stall_timeout,
        on_stall=on_stall,
        breaker=breaker,
        remote=remote,
        touches=declared,
        _model=model,
    )


def tool(
    func: ToolFunc | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    subprocess: bool = False,
    idempotent: bool = False,
    needs: Mapping[str, Any] | None = None,
    kind: ProcessKind = ProcessKind.TOOL,
    hidden: bool = False,
    fallback: str | None = None,
    stall_timeout: float | None = None,
    on_stall: str | None = None,
    breaker: bool = True,
    remote: bool = False,
    touches: Iterable[str] | None = None,
    registry: ToolRegistry | None = None,
) -> Any:
    """Register a function as a tool: `@tool` or `@tool(name="fetch", idempotent=True)`.

    The function's first parameter is the process context; the rest are the tool's parameters.
    The first paragraph of its docstring is the description; an `Args:` section documents
    parameters (`name: what it is`). `needs` are the resources each run needs by default
    (`{"memory_mb": 500, "gpu": 1}`); `spawn(needs=...)` and `run --need` override them.
    `fallback` names the tool run instead while this one's circuit breaker is open;
    `stall_timeout` (seconds, 0: never) and `on_stall` (alert, restart, kill) tune the watchdog
    for it; `breaker=False` keeps its failures off a tool circuit breaker, for tools that guard
    each external host with `ctx.host_call` instead (see docs/resilience.md).
    `remote=True` lets a cluster backend run it on a worker (docs/cluster.md): its module must be
    importable there and it must not use what lives in the kernel (`ctx.spawn`, `ctx.recv`, locks...).
    `touches` declares what the tool reaches, so that agents can be confined: `()` nothing,
    `("paths:path",)` the files its `path` parameter names, `("urls:urls",)` the URLs in `urls`,
    `("anything",)` no limit (a shell command); a tool that touches paths or URLs must take a
    `workspace` parameter and, when it is set, keep to it (docs/tools.md, "Confinement").
    """

    def decorate(f: ToolFunc) -> ToolFunc:
        source = getattr(f, "__module__", "builtin") or "builtin"
        if source.startswith("llmunix."):
            source = "builtin"
        t = make_tool(f, name=name, description=description, subprocess=subprocess,
                      idempotent=idempotent, source=source, needs=needs, kind=kind, hidden=hidden,
                      fallback=fallback, stall_timeout=stall_timeout, on_stall=on_stall,
                      breaker=breaker, remote=remote, touches=touches)
        (registry or REGISTRY).register(t)
        f.__llmunix_tool__ = t  # type: ignore[attr-defined]
        return f

    return decorate(func) if func is not None else decorate


def _check_resilience(fallback: str | None, stall_timeout: float | None, on_stall: str | None) -> None:
    if fallback is not None and (not isinstance(fallback, str) or not fallback.strip()):
        raise LlmunixError(f"fallback must name a tool, not {fallback!r}")
    if stall_timeout is not None and not (isinstance(stall_timeout, int | float) and stall_timeout >= 0):
        raise LlmunixError(f"stall_timeout must be seconds >= 0, not {stall_timeout!r}")
    if on_stall not in (None, "alert", "restart", "kill"):
        raise LlmunixError(f"on_stall must be alert, restart or kill, not {on_stall!r}")


def _check_touches(name: str, touches: Iterable[str] | None, params: list[str]) -> tuple[str, ...] | None:
    """The declaration as a tuple, or LlmunixError naming what is wrong with it."""
    if touches is None:
        return None
    if isinstance(touches, str):
        touches = (touches,)
    declared = tuple(str(t).strip() for t in touches)
    for entry in declared:
        if entry == TOUCHES_ANYTHING:
            continue
        kind, _, param = entry.partition(":")
        if kind not in TOUCH_KINDS or not param:
            raise LlmunixError(f"tool {name!r}: touches entry {entry!r} is not 'paths:PARAM', 'urls:PARAM' "
                               f"or {TOUCHES_ANYTHING!r}")
        if param not in params:
            raise LlmunixError(f"tool {name!r}: touches {entry!r}, but it has no parameter {param!r}")
        if "workspace" not in params:
            raise LlmunixError(f"tool {name!r} touches {kind} but has no 'workspace' parameter: an agent "
                               "could not confine it (add workspace: str = \"\" and keep to it when set)")
    return declared


def _param_docs(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Parameters:"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
            elif line.strip() and not line.startswith(" "):
                in_args = False
    return out


def _resolve(annotation: str, func: ToolFunc) -> Any:
    try:
        return eval(annotation, getattr(func, "__globals__", {}))  # noqa: S307 - annotations only
    except Exception:
        return Any


def _type_name(annotation: Any) -> str:
    if annotation is Any:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
