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
  worker thread is available (paused and preempted processes keep theirs), and only when its
  resource *needs* fit what is free in the pool (`admission.ResourcePool`: counters such as
  `memory_mb`, `cpu`, `gpu`, and token buckets such as `llm_tokens_per_min`). Needs are acquired
  each time a process starts or continues and given back whenever it stops running (paused,
  preempted, finished); tokens are taken once, at its first start. Needs that can never fit the
  pool's capacity fail the process at spawn. Unstated `memory_mb` is predicted from the tool's
  recent runs (p90 of their peak memory).
* Resource waits, bounded look-ahead: if the next process's needs do not fit, the scheduler
  looks at most ADMISSION_LOOKAHEAD queued processes (in the order they would run) and starts
  the first that fits; the others stay queued with detail `waiting for resources: NAME`.
  Starvation: a process that has waited at least `aging_interval` seconds (5 s when aging is
  off) *reserves* its needs: processes behind it in that order start only if they fit in what
  is left after its reservation. Aging moves a long-waiting process to the front of that order,
  so a big process is overtaken only for a while.
* A process waiting for resources (or deferred) neither preempts nor takes a running process's
  turn: preemption and time slices free slots, not resources.
* Memory pressure: while available system memory is under `memory_pressure_mb`, processes of
  base level low or idle are not admitted (detail `deferred: memory pressure`); the kernel
  publishes `system.memory_pressure` (state on/off) when it starts and ends.
* Dependencies are handled by the kernel before a process reaches this queue: a process waiting
  on others is in phase `waiting` and not in the ready queue at all.

State (all guarded by the kernel lock)
--------------------------------------
* `ReadyQueue._levels[level]`: FIFO of `(token, process)` entries for processes in phase
  `ready` (never run) or `preempted` (has a thread, waits to continue).
* `ReadyQueue._count`: number of live entries.
* A removed process is not searched for: its `queue_token` changes, and the stale entry is
  dropped when it reaches the head of its deque. Push, pop and remove are O(1); `candidates`
  (the admission look-ahead) looks at O(levels * ADMISSION_LOOKAHEAD) entries.
* `Process.needs` (declared or predicted), `Process.holds` (its needs are counted in the pool's
  `in_use`), `Process.blocked_on` (what it lacked when last considered).
* `ResourcePool.in_use[name]`: the sum of the needs of the processes that hold them; token
  buckets' levels. Reservations are not state: each dispatch recomputes them.

Invariants
----------
* A process is in the ready queue iff its phase is `ready` or `preempted` (one live entry).
* A slot is held only by a process in phase `running`; running count <= max_running.
* Needs are held only by running processes: `holds` implies phase `running`, and each counter's
  `in_use` is the sum of the needs of the processes that hold. A running process's needs fit
  when it was admitted (a later `limits` change may leave `in_use` above capacity until it ends).
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from llmunix.models import Phase, Priority
from llmunix.process import Process

LEVELS = tuple(sorted(Priority, reverse=True))
ADMISSION_LOOKAHEAD = 8  # queued processes considered when the next one's needs do not fit


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

    def candidates(self, now: float, limit: int) -> list[Process]:
        """Up to `limit` queued processes in the order they would start if each one ahead
        stepped aside: levels ordered by their heads as `peek` orders them, FIFO within a
        level; so the first is `peek`'s. Bounded: at most 4 * `limit` entries per level are
        looked at (removed processes leave stale entries behind)."""
        heads = []
        for level in LEVELS:
            q = self._levels[level]
            while q and q[0][1].queue_token != q[0][0]:
                q.popleft()
            if q:
                head = q[0][1]
                heads.append((self.effective(head, now), -head.ready_since, level))
        heads.sort(reverse=True)
        out: list[Process] = []
        for _eff, _age, level in heads:
            for token, proc in islice(self._levels[level], 4 * limit):
                if proc.queue_token == token:
                    out.append(proc)
                    if len(out) >= limit:
                        return out
        return out

    def head(self, level: Priority) -> Process | None:
        """The first live process of base `level`, if any."""
        q = self._levels[level]
        while q and q[0][1].queue_token != q[0][0]:
            q.popleft()
        return q[0][1] if q else None

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
