"""The watchdog: find running processes that have stopped making progress.

The rule. A process in phase `running` (holding a slot, its body on a worker) is *stalled* when,
for its stall timeout (`@tool(stall_timeout=...)`, else the `stall_timeout` setting, default
60 s; 0 turns it off), it has shown none of these signs of life:

1. a control point that goes through the kernel: `ctx.progress`, `ctx.log`, `ctx.checkpoint`,
   and the slow path of `ctx.check` (taken when something is asked of the process). Each of
   these writes one float, `Process.last_active`. `ctx.sleep(s)` counts as alive for its `s`
   seconds: the process is waiting on purpose and answers pause and kill throughout. The lock-
   free fast path of `ctx.check()` writes nothing (it is the hot path), so a loop that only
   calls `ctx.check()` is judged by rule 2;
2. CPU or I/O, from the monitor's samples (`llmunix/monitor.py`): a sample with at least
   CPU_ACTIVE percent of a core, or a changed count of read/write system calls (for a
   subprocess tool: of its whole child tree);
3. (re)gaining its slot: time spent paused, preempted or blocked off-slot does not count.

So a slow but progressing process (it computes, or reports) is never stalled, and a thread
blocked in `threading.Event().wait()` or a quiet subprocess is. The watchdog runs on the monitor
thread after each sample, so it needs the monitor (on by default) and its resolution is the
monitor interval.

When a process stalls: event `process.stalled`, a shell alert, `ps` detail "stalled: no progress
for 61s", and the policy (`@tool(on_stall=...)`, else the `stall_action` setting):
`alert` (the default: only report it), `kill` (stop it; it ends Failed with that reason, and
its retry policy, if any, applies) or `restart` (stop it and run it again under the same PID,
with its restart policy's backoff and limit; without one, at most DEFAULT_STALL_RESTARTS times).
A stalled process that shows life again gets `process.unstalled`.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmunix.models import LlmunixError
from llmunix.monitor import ResourceSample

STALL_ACTIONS = ("alert", "restart", "kill")
CPU_ACTIVE = 1.0  # percent of a core in one sample that counts as a sign of life
DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_STALL_RESTARTS = 3


@dataclass(slots=True)
class Watch:
    """The watchdog's reading of one running process (kept only while it runs)."""

    active_at: float  # monotonic time of the last sign of life seen in the samples
    sample_time: float | None = None  # the last sample looked at
    io: int | None = None
    stalled: bool = False
    idle: float = 0.0


def sample_shows_life(watch: Watch, sample: ResourceSample) -> bool:
    """Does this (new) sample show CPU or I/O? Updates the watch's last I/O count."""
    io_changed = sample.io_operations is not None and watch.io is not None and sample.io_operations != watch.io
    if sample.io_operations is not None:
        watch.io = sample.io_operations
    watch.sample_time = sample.time
    return io_changed or (sample.cpu_percent is not None and sample.cpu_percent >= CPU_ACTIVE)


def check_action(action: str | None, what: str = "stall action") -> str | None:
    if action is not None and action not in STALL_ACTIONS:
        raise LlmunixError(f"unknown {what} {action!r}; use one of: {', '.join(STALL_ACTIONS)}")
    return action
