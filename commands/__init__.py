"""The shell's command families, one module each (cmd2 CommandSets), and their views."""

from __future__ import annotations

from commands.agents import AgentCommands
from commands.base import ShellCommandSet
from commands.cluster import ClusterCommands
from commands.control import ControlCommands
from commands.debug import DebugCommands
from commands.ipc import IpcCommands
from commands.limits import LimitsCommands
from commands.maintenance import MaintenanceCommands
from commands.observe import ObserveCommands
from commands.process import ProcessCommands
from commands.recovery import RecoveryCommands
from commands.resilience import ResilienceCommands
from commands.run import RunCommands
from commands.top import TopCommands
from commands.workflow import WorkflowCommands


def all_command_sets() -> list[ShellCommandSet]:
    return [ProcessCommands(), ControlCommands(), RunCommands(), RecoveryCommands(), MaintenanceCommands(),
            ObserveCommands(), LimitsCommands(), TopCommands(), DebugCommands(), WorkflowCommands(),
            AgentCommands(), IpcCommands(), ResilienceCommands(), ClusterCommands()]


__all__ = ["ShellCommandSet", "all_command_sets"]
