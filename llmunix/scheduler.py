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
* Admission: a process is started only when a slot is free, and only when its resource *needs*
  fit what is free in the pool (`pool.ResourcePool`: counters such as
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
* Threads are a soft bound: a process that has never run needs a worker thread; paused,
  preempted and waiting processes keep theirs. When the executor has none to spare, the
  scheduler prefers a queued process that already holds one (at the head's effective level or
  above: a preempted process goes on where it stopped); when none does, the head starts anyway
  on a thread past `max_threads` (counted, shown by `health`). A bound on threads never stops
  dispatch: nothing runnable waits while a slot is free.
* Memory pressure: while available system memory is under `memory_pressure_mb`, processes of
  base level low or idle are not admitted (detail `deferred: memory pressure`); the table
  publishes `system.memory_pressure` (state on/off) when it starts and ends. Available memory is
  read at most every PRESSURE_RECHECK seconds while dispatching, and at each monitor sample
  (`Scheduler.read_pressure`). With `pause_idle_under_pressure`, running idle processes are
  paused while it lasts and resumed after (`pressure_moves`).
* Degraded mode (set by resilience through `set_degraded`: an open circuit breaker, memory
  pressure) defers low and idle work the same way (detail `deferred: degraded (REASON)`).
* Dependencies are handled by the process table before a process reaches this queue: a process waiting
  on others is in phase `waiting` and not in the ready queue at all.
* Learned order (`scheduling = "learned"`; the default, "fifo", is everything above). Levels,
  aging across levels, round robin, preemption and admission are unchanged; what changes is the
  order *within* a level, which becomes, first to last:
  1. preempted processes put back at the front (they hold a thread and continue where they
     stopped), the most recently preempted first, as in FIFO;
  2. processes with a deadline (`run --deadline 10m`) that can still make it, earliest deadline
     first. "Can make it": now + the tool's expected duration <= the deadline. One that can no
     longer make it is *flagged* (detail `deadline at risk: ...`, event `process.deadline_at_risk`,
     through `on_deadline_risk`) and from then on queues as in 3;
  3. everything else, shortest expected duration first, with aging: the order key is
     `ready_since + LEARNED_AGING * expected`, so a process waits at most LEARNED_AGING times its
     own expected duration before nothing that arrives later can pass it (the keys of all
     waiting processes fall at the same rate as time passes, so the order is fixed at push time
     and a heap keeps it). Ties go to the longer waiting.
  A tool's expected duration is the mean of its last HISTORY_RUNS completed runs (`expected`:
  loaded from the store the first time a tool is spawned under this policy, then fed by each
  completed run, cached results excluded); a tool with no completed run counts as 0 s, so it
  runs soon and its first run teaches the estimate. Across levels the rule is FIFO's, applied
  to each level's first process in this order. A deadline is only a preference within its
  level: it never raises a process's level. Under FIFO a deadline is recorded and its passing
  flagged, no more. The FIFO queue is deques (push and pop O(1)); the learned one a heap per
  level (O(log n)), made only while the policy is on: `set_policy` moves the queued processes
  from one to the other, keeping how long each has waited.

State (all guarded by the process table's lock)
-----------------------------------------------
* `ReadyQueue._levels[level]`: FIFO of `(token, process)` entries for processes in phase
  `ready` (never run) or `preempted` (has a thread, waits to continue).
* `ReadyQueue._count`: number of live entries.
* A removed process is not searched for: its `queue_token` changes, and the stale entry is
  dropped when it reaches the head of its deque. Push, pop and remove are O(1); `candidates`
  (the admission look-ahead) looks at O(levels * ADMISSION_LOOKAHEAD) entries.
* `Scheduler.running`: the processes holding a slot.
* `Process.needs` (declared or predicted), `Process.holds` (its needs are counted in the pool's
  `in_use`), `Process.blocked_on` (what it lacked when last considered), `queue_token`,
  `ready_since`, `slice_start`: the scheduler's fields of the process record.
* `Scheduler.pressure` (the last memory reading), `degraded` (reasons), `memory_runs` (peak
  memory of each tool's recent runs, for predictions).
* `Scheduler.policy` ("fifo" or "learned"), `durations` (each tool's recent completed run times)
  and `expected` (their mean), `deadlines` (pid -> monotonic deadline, set by the learning
  component, llmunix/learning.py), `at_risk` (PIDs flagged as unable to make theirs).
* `LearnedQueue._levels[level]`: a heap of `(tier, key, token, process)` entries (tiers 1-3 of
  the learned order above); stale entries are dropped when they reach the top, as in FIFO.

Decisions, not actions: `next()` returns the process to start (off the queue, needs acquired,
counted as running), `victim()` the one to ask to step aside, `should_yield()` whether a
running one's time slice is over. The process table (lifecycle.py) carries them out: phase
moves, threads, events, wake-ups.
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

import heapq
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError, Phase, Priority
from llmunix.pool import (
    HISTORY_RUNS,
    PRESSURE_SHARE,
    LimitInfo,
    MemoryPressure,
    ResourcePool,
    available_memory_mb,
    machine_memory_mb,
    parse_needs,
    predict_memory,
)

if TYPE_CHECKING:
    from llmunix.process import Process
    from llmunix.tools.registry import Tool

log = logging.getLogger("llmunix.scheduler")

LEVELS = tuple(sorted(Priority, reverse=True))
ADMISSION_LOOKAHEAD = 8  # queued processes considered when the next one's needs do not fit
PRESSURE_RECHECK = 1.0  # seconds between memory readings made while dispatching
DEFERRED = ("memory pressure",)  # blocked_on of a process deferred by memory pressure or degraded mode
REQ_PREEMPT = 2  # process.REQ_PREEMPT (the request flag the table sets on a victim)
SCHEDULING = ("fifo", "learned")  # the policies (`scheduling` setting)
LEARNED_AGING = 1.0  # learned order: seconds of waiting worth one second of expected duration


class ReadyQueue:
    """Processes waiting for a slot, one FIFO per level, with aging. Mutates: hold the table lock."""

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

    def highest_base(self, now: float) -> Priority | None:
        for level in LEVELS:
            q = self._levels[level]
            while q and q[0][1].queue_token != q[0][0]:
                q.popleft()
            if q:
                return level
        return None

    def entries(self, level: Priority) -> Iterator[Process]:
        """The live processes queued at base `level`, in queue order."""
        return (p for token, p in self._levels[level] if p.queue_token == token)


class LearnedQueue(ReadyQueue):
    """The learned order within each level (module docstring, "Learned order"): a heap per level
    of `(tier, key, token, process)`. Mutates: hold the table lock. `expected` (tool -> seconds),
    `deadlines` (pid -> monotonic time) and `at_risk` (flagged PIDs) are the scheduler's;
    `flag(proc, expected, left)` is called, lock held, when a process can no longer make its
    deadline."""

    def __init__(self, aging_interval: float, expected: Mapping[str, float], deadlines: Mapping[int, float],
                 at_risk: set[int], flag: Callable[[Process, float, float], None]) -> None:
        super().__init__(aging_interval)
        self._levels: dict[Priority, list[tuple[int, float, int, Process]]] = {p: [] for p in Priority}  # type: ignore[assignment]
        self.expected = expected
        self.deadlines = deadlines
        self.at_risk = at_risk
        self.flag = flag

    def push(self, proc: Process, now: float, *, front: bool = False, keep_age: bool = False) -> None:
        self._tokens += 1
        token = proc.queue_token = self._tokens
        if not keep_age:
            proc.ready_since = now
        expected = self.expected.get(proc.tool.name, 0.0)
        if front:
            entry = (1, float(-token), token, proc)  # the latest preempted first, as FIFO's appendleft
        else:
            deadline = self.deadlines.get(proc.pid)
            if deadline is not None and proc.pid not in self.at_risk and now + expected > deadline:
                self._missed(proc, expected, deadline - now)
            if deadline is not None and proc.pid not in self.at_risk:
                entry = (2, deadline, token, proc)
            else:
                entry = (3, proc.ready_since + LEARNED_AGING * expected, token, proc)
        heapq.heappush(self._levels[proc.priority], entry)  # type: ignore[arg-type]
        self._count += 1

    def _missed(self, proc: Process, expected: float, left: float) -> None:
        self.at_risk.add(proc.pid)
        self.flag(proc, expected, left)

    def _top(self, level: Priority, now: float) -> Process | None:
        """The first live process of `level` in the learned order: stale entries dropped, and a
        deadline entry at the top that can no longer make it flagged and moved to tier 3."""
        heap = self._levels[level]
        while heap:
            tier, key, token, proc = heap[0]  # type: ignore[misc]
            if proc.queue_token != token:
                heapq.heappop(heap)
                continue
            if tier == 2:
                expected = self.expected.get(proc.tool.name, 0.0)
                if now + expected > key:
                    heapq.heappop(heap)
                    if proc.pid not in self.at_risk:
                        self._missed(proc, expected, key - now)
                    heapq.heappush(heap, (3, proc.ready_since + LEARNED_AGING * expected, token, proc))  # type: ignore[arg-type]
                    continue
            return proc
        return None

    def peek(self, now: float) -> Process | None:
        # FIFO's rule over each level's first process; FIFO inlines its own heads (its hot path).
        best: Process | None = None
        best_key: tuple[int, float] | None = None
        for level in LEVELS:
            head = self._top(level, now)
            if head is None:
                continue
            key = (self.effective(head, now), -head.ready_since)
            if best_key is None or key > best_key:
                best, best_key = head, key
            if best_key[0] == Priority.CRITICAL:
                break
        return best

    def candidates(self, now: float, limit: int) -> list[Process]:
        """As FIFO's: levels ordered by their first processes, the learned order within each.
        Costs O(limit * log n) per level: the first entries are popped and pushed back."""
        heads = []
        for level in LEVELS:
            head = self._top(level, now)
            if head is not None:
                heads.append((self.effective(head, now), -head.ready_since, level))
        heads.sort(reverse=True)
        out: list[Process] = []
        for _eff, _age, level in heads:
            heap = self._levels[level]
            taken = []
            while heap and len(taken) < 4 * limit and len(out) < limit:
                entry = heapq.heappop(heap)
                if entry[3].queue_token == entry[2]:  # type: ignore[index]
                    taken.append(entry)
                    out.append(entry[3])  # type: ignore[index]
            for entry in taken:
                heapq.heappush(heap, entry)
            if len(out) >= limit:
                break
        return out

    def head(self, level: Priority) -> Process | None:
        return self._top(level, time.monotonic())

    def pop(self, proc: Process) -> None:
        heapq.heappop(self._levels[proc.priority])  # type: ignore[arg-type]
        proc.queue_token = 0
        self._count -= 1

    def highest_base(self, now: float) -> Priority | None:
        for level in LEVELS:
            if self._top(level, now) is not None:
                return level
        return None

    def entries(self, level: Priority) -> Iterator[Process]:
        """The live processes queued at base `level` (heap order, not run order)."""
        return (e[3] for e in self._levels[level] if e[3].queue_token == e[2])  # type: ignore[index]


class Scheduler:
    """The policy of the module docstring, and the state it keeps. Mutates: hold the table lock
    for every method except the constructor, `limits`' pool checks and `read_memory`."""

    def __init__(self, *, max_running: int, time_slice: float = 0.5, aging_interval: float = 5.0,
                 pool: ResourcePool | None = None, limits: Mapping[str, Any] | None = None,
                 memory_pressure_mb: float | None = None, available_memory: Callable[[], float] | None = None,
                 pause_idle_under_pressure: bool = False, policy: str = "fifo") -> None:
        if max_running < 1:
            raise LlmunixError("max_running must be at least 1")
        if memory_pressure_mb is not None and not memory_pressure_mb >= 0:
            raise LlmunixError("memory_pressure_mb must not be negative")
        self.max_running = max_running
        self.time_slice = time_slice
        self.ready: ReadyQueue = ReadyQueue(aging_interval)
        self.running: set[Process] = set()
        self._running_at = [0] * len(Priority)  # running processes per base level (victim's quick no)
        self.pool = pool if pool is not None else ResourcePool()
        for name, value in (limits or {}).items():
            self.pool.set_limit(name, value)
        threshold = memory_pressure_mb if memory_pressure_mb is not None else PRESSURE_SHARE * machine_memory_mb()
        self.read_memory: Callable[[], float] = available_memory or available_memory_mb
        self.pressure = MemoryPressure(False, None, round(float(threshold), 1))
        self.pressure_read = float("-inf")
        self.pause_idle = pause_idle_under_pressure
        self.pressure_paused: set[int] = set()  # idle processes paused by memory pressure
        self.degraded: tuple[str, ...] = ()  # why resilience's degraded mode is on (set_degraded)
        self.memory_runs: dict[str, deque[float]] = {}  # tool -> peak MB of its recent completed runs
        self.refill_at: float | None = None  # when the pending token-bucket re-dispatch is due
        # Set by the process table: dispatch again in this many seconds (token buckets refill).
        self.wake_after: Callable[[float], None] = lambda seconds: None
        # The learned order (module docstring): what it knows of each tool, and of deadlines.
        self.policy = "fifo"
        self.durations: dict[str, deque[float]] = {}  # tool -> recent completed run times (s), oldest first
        self.expected: dict[str, float] = {}  # tool -> mean of `durations`
        self.deadlines: dict[int, float] = {}  # pid -> monotonic deadline (learning.py keeps them)
        self.at_risk: set[int] = set()  # PIDs flagged as unable to make their deadline
        # Set by the learning component: a queued process can no longer make its deadline (lock held).
        self.on_deadline_risk: Callable[[Process, float, float], None] = lambda proc, expected, left: None
        self.set_policy(policy, time.monotonic())

    # ------------------------------------------------------------------ the queue

    def enqueue(self, proc: Process, now: float, *, front: bool = False, keep_age: bool = False) -> None:
        self.ready.push(proc, now, front=front, keep_age=keep_age)

    def dequeue(self, proc: Process) -> None:
        self.ready.remove(proc)

    def reprioritize(self, proc: Process, priority: Priority) -> None:
        """A process's base level changes (renice); a queued one must be dequeued first."""
        if proc in self.running:
            self._running_at[proc.priority] -= 1
            self._running_at[priority] += 1
        proc.priority = priority

    def effective(self, proc: Process, now: float) -> Priority:
        """`proc`'s effective level: aged while it is queued, else its base level."""
        return self.ready.effective(proc, now) if proc.queue_token else proc.priority

    # ------------------------------------------------------------------ the policy (fifo or learned)

    def set_policy(self, policy: str, now: float) -> bool:
        """Switch between the FIFO and the learned order (module docstring); the queued
        processes move to the new queue in their old order, keeping how long each has waited.
        True if it changed."""
        if policy not in SCHEDULING:
            raise LlmunixError(f"scheduling must be {' or '.join(SCHEDULING)}, not {policy!r}")
        old = self.ready
        if policy == self.policy:
            return False
        new = ReadyQueue(old.aging_interval) if policy == "fifo" else LearnedQueue(
            old.aging_interval, self.expected, self.deadlines, self.at_risk, self._deadline_risk)
        for level in LEVELS:
            for proc in list(old.entries(level)):
                new.push(proc, now, front=proc.phase is Phase.PREEMPTED, keep_age=True)
        self.ready = new
        self.policy = policy
        return True

    def _deadline_risk(self, proc: Process, expected: float, left: float) -> None:
        self.on_deadline_risk(proc, expected, left)

    def learn(self, tool: str, history: Callable[[str, int], list[float]] | None) -> None:
        """Load a tool's recent completed run times the first time it is seen (`history(tool, n)`:
        newest first, from the store). Call without the lock (it may read the disk)."""
        if tool in self.durations:
            return
        loaded = history(tool, HISTORY_RUNS) if history is not None else []
        runs = self.durations.setdefault(tool, deque(reversed(loaded), maxlen=HISTORY_RUNS))
        if runs:
            self.expected[tool] = sum(runs) / len(runs)

    def record_duration(self, tool: str, seconds: float) -> None:
        """A completed run's running time joins its tool's history (the expected duration).
        O(1): every process that completes comes here, whichever the policy."""
        runs = self.durations.get(tool)
        if runs is None:
            runs = self.durations[tool] = deque(maxlen=HISTORY_RUNS)
        n = len(runs)
        mean = self.expected.get(tool, 0.0)
        if n == HISTORY_RUNS:  # the oldest leaves the mean as this one joins it
            self.expected[tool] = mean + (seconds - runs[0]) / n
        else:
            self.expected[tool] = (mean * n + seconds) / (n + 1)
        runs.append(seconds)

    def forget(self, pid: int) -> None:
        """A process has ended: its deadline goes."""
        self.deadlines.pop(pid, None)
        self.at_risk.discard(pid)

    # ------------------------------------------------------------------ the dispatch decision

    def next(self, now: float, threads_free: int) -> Process | None:
        """The process to run now: taken off the queue, its needs acquired, counted as running;
        None when no slot is free or nothing may start. `threads_free`: worker threads the
        executor can give (see the module docstring: threads are a soft bound)."""
        ready = self.ready
        if len(self.running) >= self.max_running or not ready._count:
            return None
        head = ready.peek(now)
        if head is None:
            return None
        proc = head
        if proc.needs or self.pressure.on or self.degraded:
            proc = self._admissible(head, now)
            if proc is None:
                return None
        if not proc.has_thread and threads_free <= 0:
            proc = self._thread_holder(proc, now) or proc
        if proc is head:
            ready.pop(proc)
        else:
            ready.remove(proc)
        proc.blocked_on = ()
        if proc.needs:
            self.pool.acquire(proc.needs, first_start=not proc.has_thread)
            proc.holds = True
        self.running.add(proc)
        self._running_at[proc.priority] += 1
        proc.slice_start = now
        return proc

    def stop(self, proc: Process) -> None:
        """`proc` no longer runs (paused, preempted, waiting, finished): its slot and needs are free."""
        if proc in self.running:
            self.running.discard(proc)
            self._running_at[proc.priority] -= 1
        if proc.holds:
            proc.holds = False
            self.pool.release(proc.needs)

    def victim(self, now: float) -> Process | None:
        """The running process to ask to step aside (preemption), or None. One at a time; a head
        waiting for resources does not preempt (preemption frees slots, not resources)."""
        ready = self.ready
        if not ready._count or len(self.running) < self.max_running:
            return None
        at = self._running_at
        lowest = 0
        while not at[lowest]:  # the lowest level that has a running process (running is full)
            lowest += 1
        level = None
        for candidate in LEVELS:  # the highest level waiting, if above it (the common case: none)
            if candidate <= lowest:
                return None
            if ready.head(candidate) is not None:
                level = candidate
                break
        if level is None or ready.head(level).blocked_on:  # type: ignore[union-attr]
            return None
        if any(p.requests & REQ_PREEMPT for p in self.running):
            return None
        victim: Process | None = None
        for proc in self.running:
            if proc.priority >= level or proc.requests or proc.phase is not Phase.RUNNING:
                continue
            if victim is None or (proc.priority, -proc.slice_start) < (victim.priority, -victim.slice_start):
                victim = proc
        return victim

    def slice_expired(self, proc: Process) -> bool:
        """Lock-free hint for the control-point fast path: its slice is over and someone waits."""
        return bool(self.ready._count) and time.monotonic() - proc.slice_start >= self.time_slice

    def should_yield(self, proc: Process, now: float) -> bool:
        """Round robin: `proc`'s time slice is over and a queued process of at least its level
        could use the slot now (one waiting for resources or deferred neither preempts nor
        takes turns)."""
        if now - proc.slice_start < self.time_slice:
            return False
        head = self.ready.peek(now)
        return head is not None and not head.blocked_on and self.ready.effective(head, now) >= proc.priority

    def _thread_holder(self, head: Process, now: float) -> Process | None:
        """With no thread to spare: a queued process holding one that may run instead of `head`,
        the first in run order at `head`'s effective level or above. None: `head` starts on a
        thread past the cap."""
        level = self.ready.effective(head, now)
        for proc in self.ready.candidates(now, ADMISSION_LOOKAHEAD):
            if self.ready.effective(proc, now) < level:
                break
            if proc.has_thread and (not proc.needs or self._fits(proc, None)):
                return proc
        return None

    # ------------------------------------------------------------------ admission

    def _admissible(self, head: Process, now: float) -> Process | None:
        """`head` if its needs fit, else the first of up to ADMISSION_LOOKAHEAD queued processes
        that fits once the needs of those ahead of it that have waited longer than the
        reservation window are held back. None if none fits."""
        if self._fits(head, None):
            return head
        window = self.ready.aging_interval or 5.0
        reserved: dict[str, float] = {}
        refill = math.inf
        for proc in self.ready.candidates(now, ADMISSION_LOOKAHEAD):
            if proc is not head and self._fits(proc, reserved):
                return proc
            if proc.blocked_on is not DEFERRED:
                if now - proc.ready_since >= window:
                    for name, amount in proc.needs.items():
                        if not proc.has_thread or name not in self.pool.buckets:  # tokens: first start only
                            reserved[name] = reserved.get(name, 0.0) + amount
                if not proc.has_thread and any(n in self.pool.buckets for n in proc.blocked_on):
                    refill = min(refill, self.pool.seconds_until(proc.needs))
        if refill < math.inf:
            self._refill_after(refill)
        return None

    def _fits(self, proc: Process, reserved: Mapping[str, float] | None) -> bool:
        if (self.pressure.on or self.degraded) and proc.priority <= Priority.LOW:
            if proc.blocked_on is not DEFERRED:
                proc.blocked_on = DEFERRED
                proc.detail = ("deferred: memory pressure" if self.pressure.on
                               else f"deferred: degraded ({self.degraded[0]})")
            return False
        missing = self.pool.missing(proc.needs, first_start=not proc.has_thread, reserved=reserved)
        if missing:
            blocked = tuple(missing)
            if blocked != proc.blocked_on:
                proc.blocked_on = blocked
                proc.detail = "waiting for resources: " + ", ".join(blocked)
            return False
        return True

    def _refill_after(self, seconds: float) -> None:
        """Dispatch again when a token bucket will have refilled enough (one pending at a time)."""
        seconds = min(max(seconds, 0.01), 60.0)
        at = time.monotonic() + seconds
        if self.refill_at is not None and self.refill_at <= at:
            return
        self.refill_at = at
        self.wake_after(seconds)

    def refilled(self, now: float) -> None:
        """The token-bucket wake-up fired (the table dispatches after this)."""
        if self.refill_at is not None and now >= self.refill_at - 0.005:
            self.refill_at = None

    def never_fits(self, needs: Mapping[str, float]) -> str | None:
        """Why these needs can never be met by the pool as configured (the process fails at spawn)."""
        return self.pool.never_fits(needs) if needs else None

    def needs_for(self, t: Tool, needs: Mapping[str, Any] | None,
                  history: Callable[[str, int], list[float]] | None = None) -> tuple[dict[str, float], tuple[str, ...]]:
        """A new process's needs: the tool's defaults, overridden by `needs`; memory_mb, when
        neither gives it, predicted from the tool's recent runs (capped at the pool's capacity,
        so a prediction alone never makes a process impossible to run). `history(tool, n)` gives
        the peak memory of a tool's last n runs, newest first (the store), the first time a tool
        is seen. Call without the lock (the history may be read from disk)."""
        merged = {**t.needs, **parse_needs(needs)} if needs else dict(t.needs)
        if "memory_mb" in merged or (needs and "memory_mb" in needs):
            return {k: v for k, v in merged.items() if v > 0}, ()
        runs = self.memory_runs.get(t.name)
        if runs is None and history is not None:
            loaded = history(t.name, HISTORY_RUNS)
            runs = self.memory_runs.setdefault(t.name, deque(reversed(loaded), maxlen=HISTORY_RUNS))
        predicted = predict_memory(runs) if runs else None
        if not predicted:
            return merged, ()
        cap = self.pool.limit("memory_mb")
        merged["memory_mb"] = round(min(predicted, cap) if cap is not None else predicted, 1)
        return merged, ("memory_mb",)

    def record_run(self, tool: str, peak_memory_mb: float | None, stored: bool) -> None:
        """A completed run's peak memory joins its tool's history. `stored`: the history is
        loaded from the store on first use, this run included, so an unseen tool is left alone."""
        if peak_memory_mb is None:
            return
        runs = self.memory_runs.get(tool)
        if runs is None:
            if stored:
                return
            runs = self.memory_runs[tool] = deque(maxlen=HISTORY_RUNS)
        runs.append(peak_memory_mb)

    def limits(self, live: Iterable[Process]) -> list[LimitInfo]:
        """The pool: each resource's capacity, use, what is free and how many wait for it."""
        waiting: Counter[str] = Counter()
        for p in live:
            if p.queue_token and p.blocked_on and p.blocked_on is not DEFERRED:
                waiting.update(p.blocked_on)
        return self.pool.infos(waiting)

    def set_limits(self, limits: Mapping[str, Any]) -> None:
        """Set capacities; all or nothing: a bad value changes none."""
        trial = ResourcePool(memory_mb=1, cpu=1)
        for name, value in limits.items():
            trial.set_limit(name, value)  # raises on a bad one before anything changes
        for name, value in limits.items():
            self.pool.set_limit(name, value)

    # ------------------------------------------------------------------ memory pressure, degraded mode

    def pressure_due(self, now: float) -> bool:
        """Should dispatch read available memory now (work is queued and the last reading is old)?"""
        return bool(self.ready._count) and now - self.pressure_read >= PRESSURE_RECHECK

    def set_pressure(self, available: float, now: float) -> bool:
        """A memory reading (MB available). True if pressure switched on or off."""
        self.pressure_read = now
        old = self.pressure
        on = available < old.threshold_mb
        self.pressure = MemoryPressure(on, round(available, 1), old.threshold_mb)
        if on == old.on:
            return False
        log.warning("memory pressure %s: %.0f MB available, threshold %.0f MB", "on" if on else "off",
                    available, old.threshold_mb)
        if not on:
            self._undefer()
        return True

    def set_degraded(self, reasons: tuple[str, ...]) -> bool:
        """Resilience's degraded mode (low and idle work deferred while `reasons` is not empty).
        True if it changed."""
        if reasons == self.degraded:
            return False
        self.degraded = reasons
        if not reasons:
            self._undefer()
        return True

    def _undefer(self) -> None:
        """Deferral ended: processes beyond the look-ahead that were deferred say so no longer."""
        if self.pressure.on or self.degraded:
            return
        for lvl in (Priority.LOW, Priority.IDLE):
            for p in self.ready.entries(lvl):
                if p.blocked_on is DEFERRED:
                    p.blocked_on = ()
                    p.detail = "queued"

    def pressure_moves(self, live: Iterable[Process], pausing: Callable[[Process], bool]
                       ) -> tuple[list[Process], list[Process]]:
        """With `pause_idle_under_pressure`: the running idle processes to pause now (pressure
        on), or those it paused to resume (pressure off; not those a user paused).
        `pausing(p)`: p is paused or about to be."""
        if not self.pause_idle:
            return [], []
        if self.pressure.on:
            out = [p for p in live if p.priority is Priority.IDLE and p.phase is Phase.RUNNING
                   and not pausing(p) and p.pid not in self.pressure_paused]
            self.pressure_paused.update(p.pid for p in out)
            return out, []
        by_pid = {p.pid: p for p in live}
        back = [by_pid[pid] for pid in self.pressure_paused if pid in by_pid and pausing(by_pid[pid])]
        self.pressure_paused.clear()
        return [], back
