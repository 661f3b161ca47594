"""Markdown tools without a shell block: their body is a prompt for a language model.

Run with the configured backend: `openai` sends the tool's markdown as the system prompt and its
parameters as the user message and returns the reply; `offline` returns the extractive summary
(3 sentences) of the parameter values (the only deterministic reading of "do what this prompt says").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmunix.agents.backend import BackendError
from llmunix.models import ToolError
from llmunix.process import ProcessContext
from llmunix.tools.markdown import MarkdownDefinition
from llmunix.tools.text import summarize_text


def run_prompt_tool(ctx: ProcessContext, d: MarkdownDefinition, params: Mapping[str, Any]) -> str:
    service = ctx.service("agents")
    settings = service.settings.llm
    user = "\n".join(f"{k}: {v}" for k, v in params.items()) or "(no input)"
    if settings.backend == "openai":
        from llmunix.agents.openai_backend import complete_text

        try:
            text, usage = complete_text(settings, d.body, user, check=ctx.check, sleep=ctx.sleep, log=ctx.log,
                                        off_slot=ctx.off_slot, endpoints=service.endpoints)
        except BackendError as exc:
            raise ToolError(str(exc)) from None
        if usage.total_tokens:
            service.tokens_used(ctx, usage, usage, "openai", settings.model)
        return text
    text = "\n\n".join(str(v) for v in params.values())
    return summarize_text(text, 3) if text.strip() else text
