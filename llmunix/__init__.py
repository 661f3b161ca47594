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

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Event", "IllegalTransition", "Kernel", "LlmunixError", "NoSuchProcess", "Outcome", "Phase",
    "Priority", "ProcessContext", "ProcessInfo", "ProcessKilled", "ProcessKind", "ToolError", "tool",
]

_WHERE = {"Kernel": "llmunix.kernel", "ProcessContext": "llmunix.process", "tool": "llmunix.tools"}

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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'llmunix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE.get(name, "llmunix.models")), name)
    globals()[name] = value
    return value
