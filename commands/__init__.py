"""The shell's command families, one module each (cmd2 CommandSets), and their views.

`FAMILIES` names each family's module, class and commands without importing them, so a one-shot
run (`llmunix -c ps`, a script, piped input) imports and registers only the families its lines
use (`LlmunixShell(lazy=True)`); the interactive shell registers them all at start (help and Tab
need them). tests/test_shell_commands.py checks the table against the classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commands.base import ShellCommandSet

FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "commands.process": ("ProcessCommands", ("log", "ps")),
    "commands.control": ("ControlCommands", ("clean", "kill", "migrate", "pause", "priority", "restart", "resume",
                                             "wait")),
    "commands.run": ("RunCommands", ("run", "tools")),
    "commands.recovery": ("RecoveryCommands", ("recover", "rollback")),
    "commands.maintenance": ("MaintenanceCommands", ("gc",)),
    "commands.observe": ("ObserveCommands", ("audit", "events")),
    "commands.limits": ("LimitsCommands", ("limits",)),
    "commands.top": ("TopCommands", ("stats", "top")),
    "commands.debug": ("DebugCommands", ("debug", "profile")),
    "commands.workflow": ("WorkflowCommands", ("workflow",)),
    "commands.agents": ("AgentCommands", ("agent", "agents", "memory")),
    "commands.ipc": ("IpcCommands", ("broadcast", "bus", "locks", "mailbox", "send", "shared")),
    "commands.resilience": ("ResilienceCommands", ("breakers", "health")),
    "commands.cluster": ("ClusterCommands", ("cluster",)),
}
SETTINGS_FAMILIES = ("commands.resilience",)  # families that add settings: `set` needs them registered
_FAMILY_OF = {command: module for module, (_cls, names) in FAMILIES.items() for command in names}


def family_of(command: str) -> str | None:
    """The module of the family that defines `command`, or None (cmd2's own, or unknown)."""
    return _FAMILY_OF.get(command)


def command_set(module: str) -> ShellCommandSet:
    """A new command set of the family in `module`."""
    cls_name = FAMILIES[module][0]
    return getattr(importlib.import_module(module), cls_name)()


def all_command_sets() -> list[ShellCommandSet]:
    return [command_set(module) for module in FAMILIES]


__all__ = ["FAMILIES", "SETTINGS_FAMILIES", "all_command_sets", "command_set", "family_of"]
