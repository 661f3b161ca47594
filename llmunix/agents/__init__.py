"""Agents: processes that think (ask an LLM backend), act (run tools as child processes) and
learn (record each run in memory). See docs/agents.md.

    from llmunix import Kernel
    from llmunix.agents import service_for

    with Kernel() as k:
        pid = service_for(k).run("summarization-agent", goal="Summarize notes.txt into summary.md")
        k.wait([pid])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AgentInfo", "AgentService", "attach", "service_for"]

if TYPE_CHECKING:
    from llmunix.agents.service import AgentInfo, AgentService, attach, service_for


def __getattr__(name: str) -> Any:  # imported when first used (PEP 562): start-up pays for no agent code
    if name not in __all__:
        raise AttributeError(f"module 'llmunix.agents' has no attribute {name!r}")
    from llmunix.agents import service

    return getattr(service, name)
