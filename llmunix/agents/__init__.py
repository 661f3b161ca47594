"""Agents: processes that think (ask an LLM backend), act (run tools as child processes) and
learn (record each run in memory). See docs/agents.md.

    from llmunix import Kernel
    from llmunix.agents import service_for

    with Kernel() as k:
        pid = service_for(k).run("summarization-agent", goal="Summarize notes.txt into summary.md")
        k.wait([pid])
"""

from llmunix.agents.service import AgentInfo, AgentService, attach, service_for

__all__ = ["AgentInfo", "AgentService", "attach", "service_for"]
