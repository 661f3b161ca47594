"""The tool registry and the `@tool` decorator.

A tool is a Python function whose first parameter is the process context (`ctx`); its other
parameters become the tool's parameters, validated by a pydantic model built from the signature,
so `run sleep seconds=abc` fails at once with a one-line error naming the parameter. Bounds are
declared the pydantic way (`chunks: Annotated[int, Field(ge=1, le=1000)]`); infinite and NaN
numbers are refused everywhere.

A user's tool wins over a built-in one of the same name, whichever registers first; the
registry remembers who replaced whom (`overrides`) so that llmunix can say so.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import json
import os
import re
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import annotated_types

from llmunix.models import MAX_DURATION, LlmunixError, ProcessKind
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

# Parameter types with bounds, for tools' signatures (`def sleep(ctx, seconds: Seconds = 1.0)`):
# a time no timer can wait out would stop a thread; more bounds with Annotated[int, Field(...)].
# (annotated_types' constraints are what pydantic reads; importing them costs no pydantic.)
Seconds = Annotated[float, annotated_types.Interval(ge=0, le=MAX_DURATION)]
PositiveSeconds = Annotated[float, annotated_types.Interval(gt=0, le=MAX_DURATION)]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    required: bool
    default: Any
    description: str = ""
    shape: str = ""  # "items" (a list of scalars), "list" (of anything else), "dict", or "" (one value)
    allowed: str = ""  # the declared range, e.g. "0 to 1,000" ("" when unbounded)


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
    isolation: str | None = None  # "process": its body runs in a worker OS process (isolation.py); None: the setting's
    overrides: str | None = None  # the source of the tool of the same name this one replaced ("builtin", a path)
    version: str | None = None  # what its cached results are keyed on (llmunix/cache.py); None: its file's hash
    # The pydantic model its parameters are checked with, or a function that builds it (built on
    # the first validation: pydantic is not imported until a tool's parameters need checking).
    _model: Any = field(default=None, repr=False)
    _open: bool = field(default=False, repr=False)  # it takes parameters beyond those it names

    @property
    def validated(self) -> bool:
        """Its parameters are checked against a model (a Python function's signature)."""
        return self._model is not None

    @property
    def open_ended(self) -> bool:
        """It takes parameters beyond those it names (declared with **kwargs)."""
        return self._model is not None and self._open

    def _the_model(self) -> Any:
        model = self._model
        if model is not None and not isinstance(model, type):
            model = self._model = model()  # (two threads building it at once build the same model)
        return model

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
        if not params and not self.params:  # a tool without parameters, given none
            return {}
        import pydantic

        try:
            model = self._the_model().model_validate(dict(params))
        except pydantic.ValidationError as exc:
            raise LlmunixError(self._explain(exc)) from None
        values = {name: getattr(model, name) for name in type(model).model_fields}
        values.update(model.model_extra or {})  # a tool declared with **kwargs takes any others
        return values

    def from_text(self, given: Mapping[str, str | list[str]]) -> dict[str, Any]:
        """Parameters as typed in a shell, converted for `validate`: each key with its text, or
        its texts when the key was given more than once. A list (set, tuple) parameter takes JSON
        (`urls='["a","b"]'`), and when its items are plain values also a comma list (`urls=a,b`)
        or the key repeated (`urls=a urls=b`); a dict parameter takes JSON (`opts='{"k": 1}'`).
        Anything else stays text, which `validate` converts (`seconds=2` becomes 2.0)."""
        shapes = {p.name: p.shape for p in self.params}
        out: dict[str, Any] = {}
        for name, value in given.items():
            texts = [value] if isinstance(value, str) else list(value)
            shape = shapes.get(name, "")
            if shape in ("items", "list"):
                items: list[Any] = []
                for text in texts:
                    if text.lstrip().startswith("[") or shape == "list":
                        items.extend(self._json(name, text, list))
                    else:
                        items.extend(part.strip() for part in text.split(",") if part.strip())
                out[name] = items
                continue
            if len(texts) > 1:
                raise LlmunixError(f"parameter {name!r} of tool {self.name!r} was given {len(texts)} times; "
                                   "it takes one value")
            out[name] = self._json(name, texts[0], dict) if shape == "dict" else texts[0]
        return out

    def _json(self, name: str, text: str, want: type) -> Any:
        kind = "list" if want is list else "object"
        example = '\'["a","b"]\'' if want is list else '\'{"key": 1}\''
        try:
            value = json.loads(text)
        except RecursionError:
            raise LlmunixError(f"bad value for parameter {name!r} of tool {self.name!r}: nested too deeply") from None
        except ValueError as exc:
            raise LlmunixError(f"bad value {_shorten(text)!r} for parameter {name!r} of tool {self.name!r}: "
                               f"not a JSON {kind} ({exc}); e.g. {name}={example}") from None
        if not isinstance(value, want):
            raise LlmunixError(f"bad value {_shorten(text)!r} for parameter {name!r} of tool {self.name!r}: "
                               f"give a JSON {kind}, e.g. {name}={example}")
        return value

    def _explain(self, exc: Any) -> str:  # a pydantic.ValidationError
        errors = exc.errors()
        # A misspelt name first: `txt=hi` is "no parameter 'txt'; did you mean 'text'?", not "needs 'text'".
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        name = ".".join(str(part) for part in err["loc"]) or "?"
        names = ", ".join(p.name for p in self.params) or "none"
        if err["type"] == "missing":
            return f"tool {self.name!r} needs parameter {name!r} (e.g. run {self.name} {name}=...)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, [p.name for p in self.params], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"tool {self.name!r} has no parameter {name!r} (its parameters: {names}){hint}"
        return (f"bad value {_shorten(err.get('input'))!r} for parameter {name!r} of tool {self.name!r}: "
                f"{err['msg']}")


class Stage:
    """Registrations held back while a source loads (`ToolRegistry.staged`): made all together
    if it loaded (`keep = True`), else none of them."""

    def __init__(self) -> None:
        self.tools: list[Tool] = []
        self.keep = False
        self.registered: list[Tool] = []  # what was registered, once kept


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._replaced: dict[str, Tool] = {}  # name -> the tool a user's tool replaced (back if it goes)
        self._stages: dict[int, Stage] = {}  # thread ident -> the stage its registrations go to
        self._lock = threading.Lock()
        # Modules whose @tool functions register when first needed, or functions that register
        # tools (a component made on first use: the agent service's markdown tools).
        self._pending: list[str | Callable[[], Any]] = []
        self._loading = threading.RLock()

    def load_later(self, *modules: str | Callable[[], Any]) -> None:
        """Import these modules (which register tools) the first time a tool is looked up or
        listed, not now: a one-shot `llmunix -c ps` never pays for them. A callable is called
        then instead (it registers tools itself)."""
        with self._lock:
            self._pending.extend(m for m in modules if m not in self._pending)

    def _load_pending(self) -> None:
        with self._loading:  # (a module's @tool calls register, which takes _lock)
            with self._lock:
                pending, self._pending = self._pending, []
            for module in pending:
                if callable(module):
                    module()
                else:
                    importlib.import_module(module)

    def register(self, tool: Tool) -> Tool:
        """Add a tool; returns the one now registered under its name. A user's tool replaces a
        built-in one of the same name, and a built-in one never replaces a user's (built-ins load
        when the first Kernel is made, usually after the user's tools); between two user tools
        the later wins. The winner's `overrides` names the source it replaced. Internal tools
        (the workflow runner) cannot be replaced. Inside `staged()` (this thread) the tool is
        held back until the stage is kept."""
        with self._lock:
            stage = self._stages.get(threading.get_ident())
            if stage is not None:
                self._check_name(tool)
                stage.tools.append(tool)
                return tool
            return self._register_locked(tool)

    def _check_name(self, tool: Tool) -> None:
        old = self._tools.get(tool.name)
        if old is not None and old.source != tool.source and old.hidden and old.source == "builtin":
            raise LlmunixError(f"{tool.name!r} is the name of an internal llmunix tool; "
                               "give your tool another name (@tool(name=...))")

    def _register_locked(self, tool: Tool) -> Tool:
        old = self._tools.get(tool.name)
        if old is None or old.source == tool.source:  # new, or the same definition loaded again
            if old is not None and old.overrides and not tool.overrides:
                tool.overrides = old.overrides
            self._tools[tool.name] = tool
            return tool
        self._check_name(tool)
        if tool.source == "builtin":
            old.overrides = "builtin"
            self._replaced.setdefault(tool.name, tool)
            return old
        tool.overrides = old.source
        self._replaced[tool.name] = old
        self._tools[tool.name] = tool
        return tool

    def has_user_tools(self) -> bool:
        """Whether any tool a user can name, not built into llmunix, is registered (without loading
        the built-ins): only then can one override a built-in."""
        with self._lock:
            return any(t.source != "builtin" and not t.hidden for t in self._tools.values())

    @contextlib.contextmanager
    def staged(self) -> Iterator[Stage]:
        """Hold back what this thread registers in the block: a source being (re)loaded. Set
        `stage.keep = True` to register it all on leaving; otherwise nothing of it is kept (a
        module that failed half way leaves no half of its tools behind)."""
        stage = Stage()
        key = threading.get_ident()
        with self._lock:
            if key in self._stages:
                raise LlmunixError("tool sources load one at a time")
            self._stages[key] = stage
        try:
            yield stage
        finally:
            with self._lock:
                del self._stages[key]
                if stage.keep:
                    stage.registered = [self._register_locked(t) for t in stage.tools]

    def remove(self, name: str, source: str) -> bool:
        """Forget tool `name` if `source` registered it (its file was deleted or no longer
        defines it); the tool it had replaced, if any, comes back. Processes running it keep it."""
        with self._lock:
            t = self._tools.get(name)
            if t is None or t.source != source:
                return False
            back = self._replaced.pop(name, None)
            if back is not None:
                back.overrides = None
                self._tools[name] = back
            else:
                del self._tools[name]
            return True

    def find(self, name: str) -> Tool | None:
        """The tool registered under exactly `name`, or None."""
        return self._tools.get(name)

    def overrides(self) -> list[Tool]:
        """The tools that replaced another of the same name (see `register`), by name."""
        if self._pending:
            self._load_pending()
        with self._lock:
            return sorted((t for t in self._tools.values() if t.overrides and not t.hidden), key=lambda t: t.name)

    def get(self, name: str) -> Tool:
        """A tool by name, in any spelling one tool answers to (`Read`, `read-file`, `WebFetch`:
        see tools/markdown.py `find_tool_name`, the mapping agents use too), so "did you mean"
        is only ever said of a name that could not be resolved."""
        if self._pending:
            self._load_pending()
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
        if self._pending:
            self._load_pending()
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        """The tools a user can run by name (hidden internals such as the workflow runner left out)."""
        if self._pending:
            self._load_pending()
        return iter(sorted((t for t in self._tools.values() if not t.hidden), key=lambda t: t.name))

    def every_tool(self) -> list[Tool]:
        """Every registered tool, hidden ones too (what an isolation pool process must import)."""
        with self._lock:
            return list(self._tools.values())

    def names(self) -> list[str]:
        if self._pending:
            self._load_pending()
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
    version: str | None = None,
    isolation: str | None = None,
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
                      param_docs.get(p.name, ""), _shape(annotation), _allowed(annotation))
        )
    model = functools.partial(build_model, f"{func.__name__}_params", fields, open_kwargs)
    first_line = doc.split("\n\n")[0].replace("\n", " ").strip()
    _check_resilience(fallback, stall_timeout, on_stall)
    if isolation not in (None, "thread", "process"):
        raise LlmunixError(f"isolation must be 'thread' or 'process', not {isolation!r}")
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
        version=None if version is None else str(version),
        isolation=isolation,
        _model=model,
        _open=open_kwargs,
    )


def build_model(name: str, fields: Mapping[str, Any], open_ended: bool) -> Any:
    """The pydantic model that checks a tool's parameters (made when first needed)."""
    import pydantic

    config = pydantic.ConfigDict(extra="allow" if open_ended else "forbid", arbitrary_types_allowed=True,
                                 allow_inf_nan=False)
    return pydantic.create_model(name, __config__=config, **fields)


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
    version: str | None = None,
    isolation: str | None = None,
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
    `version` is what cached results of the tool are keyed on (`run --cache`, a workflow step's
    `cache: true`): change it when the tool's results change; unset, the hash of its file is used.
    `isolation="process"` runs each call in a worker OS process of its own (true memory figures,
    SIGSTOP pause, SIGKILL kill, crashes contained; a few milliseconds more per run: docs/tools.md,
    "Isolated processes"); "thread" keeps it on a thread even when the configuration isolates
    users' tools; None (the default) follows the configuration.
    """

    def decorate(f: ToolFunc) -> ToolFunc:
        source = getattr(f, "__module__", "builtin") or "builtin"
        if source.startswith("llmunix."):
            source = "builtin"
        elif source.startswith(USER_MODULES):  # a file in a tools directory: name the file
            source = _file_of(source) or source
        t = make_tool(f, name=name, description=description, subprocess=subprocess,
                      idempotent=idempotent, source=source, needs=needs, kind=kind, hidden=hidden,
                      fallback=fallback, stall_timeout=stall_timeout, on_stall=on_stall,
                      breaker=breaker, remote=remote, touches=touches, version=version,
                      isolation=isolation)
        (registry or REGISTRY).register(t)
        f.__llmunix_tool__ = t  # type: ignore[attr-defined]
        return f

    return decorate(func) if func is not None else decorate


USER_MODULES = "llmunix_user_tools."  # tools/loader.py imports tool files under this package name


def _file_of(module: str) -> str | None:
    """The file a module was loaded from, relative to the working directory when under it."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if not path:
        return None
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


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
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_SEQUENCES = (list, set, tuple, frozenset, typing.Sequence, typing.MutableSequence, typing.AbstractSet)
_SCALARS = (str, int, float, bool)


def _shape(annotation: Any) -> str:
    """How the shell passes a value of this type (see Tool.from_text): "" when text will do."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if any(m is str or m is Any for m in members):
            return ""  # text is a valid value already
        shapes = {_shape(m) for m in members}
        return shapes.pop() if len(shapes) == 1 else ""
    origin = typing.get_origin(annotation) or annotation
    if origin in (dict, typing.Mapping, typing.MutableMapping) or annotation is dict:
        return "dict"
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return "items" if all(a in _SCALARS or a is Any for a in args) else "list"
    return ""


def _allowed(annotation: Any) -> str:
    """The range declared with Field(ge=..., le=...), in words ("" without one)."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return ""
    low = high = None
    for meta in typing.get_args(annotation)[1:]:
        for rule in getattr(meta, "metadata", [meta]):
            low = next((getattr(rule, k) for k in ("ge", "gt") if getattr(rule, k, None) is not None), low)
            high = next((getattr(rule, k) for k in ("le", "lt") if getattr(rule, k, None) is not None), high)
    if low is None and high is None:
        return ""
    if high is None:
        return f"at least {_num(low)}"
    return f"at most {_num(high)}" if low is None else f"{_num(low)} to {_num(high)}"


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _shorten(value: Any, limit: int = 60) -> Any:
    """A user's value, cut for a one-line message."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value
