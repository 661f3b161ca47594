"""The Kernel's agent methods (mixed into `Kernel`); the agents themselves live in the kernel's
`AgentService` (service.py), made on first use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmunix.process import ProcessContext


class Agents:
    def agent_step(self, ctx: ProcessContext, agent: str, goal: str, params: Mapping[str, Any], **kw: Any) -> int:
        """Start agent `agent` with `goal` as a child of `ctx`'s process (a workflow's agent step);
        `params` may set backend, max_iterations and model. Returns the PID."""
        from llmunix.agents.service import service_for

        return service_for(self).spawn_child(ctx, agent, goal, params, **kw)  # type: ignore[arg-type]
