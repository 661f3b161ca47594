"""Workflows: DAGs of steps (tools or agents) run as child processes of a workflow process.

The names below are imported when first used (PEP 562): the spec loader pulls in YAML and
pydantic, the DAG networkx, and a one-shot command that never looks at a workflow pays for none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SpecError", "StepSpec", "WorkflowSpec", "load_spec", "spec_from_data"]

if TYPE_CHECKING:
    from llmunix.workflows.spec import SpecError, StepSpec, WorkflowSpec, load_spec, spec_from_data


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'llmunix.workflows' has no attribute {name!r}")
    from llmunix.workflows import spec

    return getattr(spec, name)
