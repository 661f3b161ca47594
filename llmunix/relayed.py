"""A process body that runs somewhere else, and its proxy here: what both sides share.

A body may run away from its process's worker thread: on a Dask worker (backends/) or in an
isolated worker OS process of this machine (isolation.py). In both cases the process's own
thread in llmunix becomes a *proxy* (`lifecycle.Relay`), and the body gets a `RelayedContext`:
ProcessContext's API, each call turned into a message to the proxy. The two differ only in how
messages travel (Dask's event topics; a socket) and in what the far side can reach, so the
common parts live here once:

* far side: `RelayedContext` — progress, log, output and set_state as one-way reports, the
  checkpoint's JSON check, running the tool function (`run_func`), and `import_tool` to find it;
* here: `tool_ref` (how the far side finds a tool's function) and `apply_report` (a report
  applied to the process through its Relay).

A report is a dict `{"t": KIND, ...}`: `progress {step, total, message}`, `log {line}`,
`state {state, detail}`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError, Priority, ToolError

if TYPE_CHECKING:
    from llmunix.lifecycle import Relay


class RelayedContext:
    """What a body running away from llmunix sees as `ctx`: ProcessContext's methods, each one
    reported to (or asked of) the process's proxy. Subclasses say how (`report`, `_checkpoint`,
    `check`), and what else they offer."""

    where = "away from llmunix"  # "on a cluster worker", "in an isolated process": for messages

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.pid: int = spec["pid"]
        self.params: Mapping[str, Any] = MappingProxyType(dict(spec["params"]))
        self.restored: Any = spec.get("restored")
        self.kill_grace: float = float(spec.get("kill_grace", 2.0))
        self._cwd: str = spec.get("cwd") or os.getcwd()
        self._priority = Priority.parse(spec.get("priority", "normal"))

    # ------------------------------------------------------------------ what subclasses provide

    def report(self, kind: str, **data: Any) -> None:
        """Send a one-way report to the proxy."""
        raise NotImplementedError

    def check(self) -> None:
        """A bare control point."""
        raise NotImplementedError

    def _checkpoint(self, encoded: Any) -> int:
        """Have llmunix record `encoded` durably; its version."""
        raise NotImplementedError

    # ------------------------------------------------------------------ ProcessContext's API

    @property
    def cwd(self) -> str:
        return self._cwd

    @property
    def priority(self) -> Priority:
        return self._priority

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        self.report("progress", step=int(step), total=None if total is None else int(total), message=str(message))
        self.check()

    def log(self, message: str) -> None:
        self.report("log", line=str(message))
        self.check()

    def output(self, line: str) -> None:
        self.report("log", line=str(line))

    def set_state(self, state: str, detail: str = "") -> None:
        self.report("state", state=str(state), detail=str(detail))
        self.check()

    def checkpoint(self, state: Any) -> int:
        """Send a checkpoint and wait until llmunix has made it durable; returns its version."""
        try:
            encoded = json.loads(json.dumps(state))
        except (TypeError, ValueError) as exc:
            raise LlmunixError(f"checkpoint state must be JSON-serialisable: {exc}") from None
        self.check()
        version = self._checkpoint(encoded)
        self.check()
        return version

    def unavailable(self, name: str, hint: str) -> ToolError:
        return ToolError(f"ctx.{name} is not available {self.where}; {hint}")

    def run_func(self, func: Any) -> Any:
        """Run the tool function with this context and its parameters. SystemExit and
        KeyboardInterrupt would end the whole worker: they fail the body instead."""
        try:
            return func(self, **self.params)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None


def apply_report(relay: Relay, msg: Mapping[str, Any]) -> bool:
    """Apply a body's report to its process (on the proxy's thread); False if it is not one of
    the shared kinds (the caller handles its own)."""
    kind = msg.get("t")
    if kind == "progress":
        relay.progress(msg["step"], msg["total"], msg["message"])
    elif kind == "log":
        relay.log(msg["line"])
    elif kind == "state":
        relay.set_state(msg["state"], msg["detail"])
    else:
        return False
    return True


def tool_ref(func: Any, where: str, instead: str) -> tuple[str, str, str | None, str | None]:
    """How the far side finds the tool's function: module, qualified name, the module's file
    (for tool files llmunix loaded by path, which are not importable by name), and the hash of
    the code llmunix loaded (after `tools reload`, a side that has an older one loads it again).
    `where` and `instead` word the error for a function that cannot be found from elsewhere."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        raise ToolError(f"tool function {qualname or func!r} cannot run {where}: define it at the top level "
                        f"of an importable module, or {instead}")
    from llmunix.tools.loader import module_digest

    path = getattr(sys.modules.get(module), "__file__", None)
    return module, qualname, path, module_digest(sys.modules.get(module))


def import_tool(ref: Iterable[str | None], where: str = "on worker") -> Any:
    """The tool function named by (module, qualname, file, digest). A module that is not
    importable by name (a tool file llmunix loaded from a directory) is loaded from its file, if
    this side sees the same path; so is one whose code llmunix reloaded (`digest` differs from
    what this side loaded)."""
    from llmunix.tools.loader import load_file_as, module_digest

    module_name, qualname, path, digest = (*ref, None)[:4]
    assert module_name and qualname
    module = None
    try:
        # Always through the import system (not a bare sys.modules look-up): another body on this
        # worker may be importing the module right now, and the import lock makes us wait for it.
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not path or not os.path.exists(path):
            raise ToolError(f"cannot import tool module {module_name!r} {where}: {exc}; make it importable "
                            "there (install it, or put its directory on PYTHONPATH)") from None
    stale = digest is not None and module_digest(module) != digest and bool(path) and os.path.exists(path or "")
    if module is None:
        module = load_module_file(module_name, path or "")
    elif stale:
        err = load_file_as(module_name, path or "")
        if err is not None:
            raise ToolError(f"cannot load tool file {path} {where}: {err.error}")
        module = sys.modules[module_name]
    obj: Any = module
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ToolError(f"module {module_name!r} {where} has no {qualname!r}") from None
    return obj


def load_module_file(module_name: str, path: str) -> Any:
    """Import the Python file `path` as module `module_name` (a tool file from a directory)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ToolError(f"cannot load tool file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


__all__ = ["RelayedContext", "apply_report", "import_tool", "load_module_file", "tool_ref"]
