"""Workflows: DAG specs (YAML, TOML, LLMunix markdown), run as a workflow process whose steps are
child processes. See runner.py for the process and ARCHITECTURE.md section 5 for the design."""

from llmunix.workflows.spec import SpecError, StepSpec, WorkflowSpec, load_spec, spec_from_data

__all__ = ["SpecError", "StepSpec", "WorkflowSpec", "load_spec", "spec_from_data"]
