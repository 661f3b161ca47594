"""llmunix: a process manager for LLM work.

    from llmunix import Kernel, tool

    @tool
    def fetch(ctx, url: str) -> str:
        ...

    with Kernel() as k:
        pid = k.spawn("fetch", url="https://example.com")
        k.wait([pid])
"""

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

__version__ = "0.1.0"

__all__ = [
    "Event", "IllegalTransition", "Kernel", "LlmunixError", "NoSuchProcess", "Outcome", "Phase",
    "Priority", "ProcessContext", "ProcessInfo", "ProcessKilled", "ProcessKind", "ToolError", "tool",
]
