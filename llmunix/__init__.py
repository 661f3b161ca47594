"""llmunix: a process manager for LLM work.

    from llmunix import Kernel, tool

    @tool
    def fetch(ctx, url: str) -> str:
        ...

    with Kernel() as k:
        pid = k.spawn("fetch", url="https://example.com")
        k.wait([pid])

The names below are imported when first used (PEP 562), so that `llmunix --version` and a
one-shot command do not pay for the whole engine at start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def lazy_exports(namespace: dict[str, Any], where: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's PEP 562 `__getattr__` (for llmunix's own packages): each name in `where` is
    imported from the module it names the first time it is read, and kept in `namespace` (the
    package's `globals()`); any other name is an AttributeError.

        __getattr__ = lazy_exports(globals(), {"Store": "llmunix.store.sqlite"})
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        source = where.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    return __getattr__


__all__ = [
    "Event", "IllegalTransition", "Kernel", "LlmunixError", "NoSuchProcess", "Outcome", "Phase",
    "Priority", "ProcessContext", "ProcessInfo", "ProcessKilled", "ProcessKind", "ToolError", "tool",
]

_WHERE = {name: "llmunix.models" for name in __all__} | {
    "Kernel": "llmunix.kernel", "ProcessContext": "llmunix.process", "tool": "llmunix.tools"}

if TYPE_CHECKING:
    from llmunix.kernel import Kernel
    from llmunix.models import (
        Event,
        IllegalTransition,
        LlmunixError,
        NoSuchProcess,
        Outcome,
        Phase,
        Priority,
        ProcessInfo,
        ProcessKilled,
        ProcessKind,
        ToolError,
    )
    from llmunix.process import ProcessContext
    from llmunix.tools import tool


__getattr__ = lazy_exports(globals(), _WHERE)
