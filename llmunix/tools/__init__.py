"""Tools: the registry, the `@tool` decorator, built-in tools and the loader for users' tools."""

from llmunix.tools.registry import REGISTRY, ParamSpec, Tool, ToolRegistry, make_tool, tool

__all__ = ["REGISTRY", "ParamSpec", "Tool", "ToolRegistry", "make_tool", "tool"]
