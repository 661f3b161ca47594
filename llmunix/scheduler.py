"""The scheduler: which ready process gets the next free slot, and who must give one back.

Policy
------
* Five levels, highest first: critical, high, normal, low, idle.
* A process's *effective* level while it waits in the ready queue is its base level plus one for
  every `aging_interval` seconds it has waited, capped at critical. The next process to run is
  the one with the highest effective level; ties go to the one that has waited longest. Within
  a level the queue is FIFO, so that rule is round robin.
* Round robin among running processes: a running process whose time slice (`time_slice`
  seconds) has passed yields its slot at its next control point if a process of at least its
  level waits. It goes back to the ready queue behind the others of its level.
* Preemption: when a process waits whose *base* level is above that of a running process and no
  slot is free, the lowest-level running process (the most recently started among equals) is
  asked to stop at its next control point (a subprocess tool is stopped with SIGSTOP there). It
  goes back to the *front* of its level's queue, keeping its thread, and continues where it
  stopped when it is picked again. Aging does not preempt: it reorders the queue only, so an
  aged process waits for a slot to be given back instead of causing churn.
* Admission: a process is started only when a slot is free and, if it has never run, when a
  worker thread is available (paused and preempted processes keep theirs).
* Dependencies are handled by the kernel before a process reaches this queue: a process waiting
  on others is in phase `waiting` and not in the ready queue at all.

State (all guarded by the kernel lock)
--------------------------------------
* `ReadyQueue._levels[level]`: FIFO of `(token, process)` entries for processes in phase
  `ready` (never run) or `preempted` (has a thread, waits to continue).
* `ReadyQueue._count`: number of live entries.
* A removed process is not searched for: its `queue_token` changes, and the stale entry is
  dropped when it reaches the head of its deque. Push, pop and remove are O(1).

Invariants
----------
* A process is in the ready queue iff its phase is `ready` or `preempted` (one live entry).
* A slot is held only by a process in phase `running`; running count <= max_running.
"""

from __future__ import annotations

from collections import deque

from llmunix.models import Phase, Priority
from llmunix.process import Process

LEVELS = tuple(sorted(Priority, reverse=True))


class ReadyQueue:
    """Processes waiting for a slot, one FIFO per level, with aging. Mutates: hold the kernel lock."""

    def __init__(self, aging_interval: float) -> None:
        self.aging_interval = aging_interval
        self._levels: dict[Priority, deque[tuple[int, Process]]] = {p: deque() for p in Priority}
        self._count = 0
        self._tokens = 0

    def __len__(self) -> int:
        return self._count

    def push(self, proc: Process, now: float, *, front: bool = False, keep_age: bool = False) -> None:
        """Queue `proc`. `front` puts it before its level's others (a preempted process);
        `keep_age` keeps the time it has already waited (a renice)."""
        self._tokens += 1
        proc.queue_token = self._tokens
        if not keep_age:
            proc.ready_since = now
        entry = (self._tokens, proc)
        if front:
            self._levels[proc.priority].appendleft(entry)
        else:
            self._levels[proc.priority].append(entry)
        self._count += 1

    def remove(self, proc: Process) -> None:
        """Forget `proc` (paused, killed or reniced while queued). O(1): its entry goes stale."""
        if proc.queue_token:
            proc.queue_token = 0
            self._count -= 1

    def effective(self, proc: Process, now: float) -> Priority:
        if self.aging_interval <= 0:
            return proc.priority
        boost = int((now - proc.ready_since) / self.aging_interval)
        return Priority(min(Priority.CRITICAL, proc.priority + boost))

    def peek(self, now: float) -> Process | None:
        """The process that should run next (highest effective level, then longest waiting)."""
        best: Process | None = None
        best_key: tuple[int, float] | None = None
        for level in LEVELS:
            q = self._levels[level]
            while q and q[0][1].queue_token != q[0][0]:
                q.popleft()  # stale entry of a removed process
            if not q:
                continue
            head = q[0][1]
            key = (self.effective(head, now), -head.ready_since)
            if best_key is None or key > best_key:
                best, best_key = head, key
            if best_key[0] == Priority.CRITICAL:
                break
        return best

    def pop(self, proc: Process) -> None:
        """Take `proc`, which `peek` just returned, off the queue."""
        q = self._levels[proc.priority]
        q.popleft()
        proc.queue_token = 0
        self._count -= 1

    def waiting_at_or_above(self, level: Priority, now: float) -> bool:
        head = self.peek(now)
        return head is not None and self.effective(head, now) >= level

    def highest_base(self, now: float) -> Priority | None:
        for level in LEVELS:
            q = self._levels[level]
            while q and q[0][1].queue_token != q[0][0]:
                q.popleft()
            if q:
                return level
        return None


def preemption_victim(running: set[Process], waiting_level: Priority) -> Process | None:
    """The running process to ask to step aside for a waiting process of `waiting_level`:
    the lowest base level below it, the most recently started among equals; one not already
    asked to stop."""
    victim: Process | None = None
    for proc in running:
        if proc.priority >= waiting_level or proc.requests or proc.phase is not Phase.RUNNING:
            continue
        if victim is None or (proc.priority, -proc.slice_start) < (victim.priority, -victim.slice_start):
            victim = proc
    return victim
