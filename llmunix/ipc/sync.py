"""Named synchronisation primitives the kernel keeps: mutex, semaphore, condition, barrier, rwlock,
and leader elections.

These are records, not locks of their own: every method runs under the kernel lock, and a process
that must wait does so through `Kernel._block` (off its scheduler slot, a control point: pause
and kill reach it). The records say who holds what and who waits since when, which is what the
`locks` command shows and what the wait-for graph (`deadlock.py`) is built from.

Hand-off, not barging: when a holder releases, the primitive grants the waiters at the head of
its FIFO queue right away (`Waiter.granted = True`) and the kernel wakes them. So a waiter's
"ready" test is only `waiter.granted`, is idempotent, and nobody can overtake the queue. For the
read-write lock this gives writer preference: a reader that arrives while a writer waits queues
behind it, so writers do not starve.

An election is a mutex whose holder is the *leader* and whose queue is the *followers*: every
candidate is queued from the moment it joins (`ctx.elect`), not only while it blocks, so when
the leader ends or resigns the longest-standing follower takes over at once (hand-off, as for a
mutex). What a mutex lacks is the lease: the leader keeps leading only while it shows signs of
life (the service, ipc/service.py, decides that and calls `demote`).

Every mutating method returns the waiters it granted, for the kernel to wake.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from llmunix.models import LlmunixError, format_pid

if TYPE_CHECKING:
    from llmunix.process import Process


class BrokenBarrier(LlmunixError):  # noqa: N818 - named as threading's BrokenBarrierError reads
    """A barrier a member left (timed out, was killed, ended) before everyone arrived."""


class Waiter:
    """One process waiting for one primitive (or holding it, once granted)."""

    __slots__ = ("proc", "pid", "mode", "since", "granted", "prim", "index", "note")

    def __init__(self, proc: Process, prim: Primitive, mode: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.prim = prim
        self.mode = mode  # "x" exclusive, "r" read, "w" write, "n" notify, "b" barrier
        self.since = time.time()
        self.granted = False
        self.index = -1  # barrier: arrival order
        self.note: str | None = None  # what `ps` should say while it waits, once that changes (a deadlock)

    def ready(self) -> bool:
        return self.granted or (isinstance(self.prim, Barrier) and self.prim.broken is not None)


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    mode: str
    count: int


@dataclass(frozen=True, slots=True)
class WaitInfo:
    pid: int
    mode: str
    since: float


@dataclass(frozen=True, slots=True)
class PrimitiveInfo:
    """One primitive as `locks` shows it."""

    name: str
    kind: str
    holders: tuple[Holder, ...]
    waiters: tuple[WaitInfo, ...]
    detail: str  # "2 of 3 free", "1 of 4 arrived", "term 2, lease 8.1s left", ...
    created: float
    term: int | None = None  # an election's: how many times a leader was chosen (a fencing token)
    lease: float | None = None  # an election's: the leader's lease, and what is left of it (seconds)
    lease_left: float | None = None

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        out = {"name": self.name, "kind": self.kind, "detail": self.detail,
               "holders": [{"pid": format_pid(h.pid), "mode": _MODE[h.mode], "count": h.count} for h in self.holders],
               "waiters": [{"pid": format_pid(w.pid), "mode": _MODE[w.mode], "since": round(w.since, 3),
                            "waited": round(max(0.0, now - w.since), 3)} for w in self.waiters]}
        if self.term is not None:
            out.update(leader=format_pid(self.holders[0].pid) if self.holders else None, term=self.term,
                       lease=self.lease, lease_left=None if self.lease_left is None else round(self.lease_left, 3),
                       followers=[format_pid(w.pid) for w in self.waiters])
        return out


_MODE = {"x": "exclusive", "r": "read", "w": "write", "n": "notify", "b": "arrive", "l": "candidate", "L": "leader"}


class Primitive:
    kind: ClassVar[str] = ""
    tracked: ClassVar[bool] = True  # waits on it are edges of the wait-for graph
    any_holder: ClassVar[bool] = False  # a waiter needs any one holder to release (else all of them)

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = time.time()
        self.holders: dict[int, int] = {}  # pid -> how many times it holds
        self.queue: deque[Waiter] = deque()

    # -- what each kind decides
    def _can(self, w: Waiter) -> bool:
        raise NotImplementedError

    def _modes(self, pid: int) -> str:
        return "x"

    def _detail(self) -> str:
        return ""

    # -- shared machinery
    def request(self, w: Waiter) -> list[Waiter]:
        """Queue `w` and grant what can be granted (perhaps `w` itself)."""
        self.queue.append(w)
        return self._grant()

    def _grant(self) -> list[Waiter]:
        granted = []
        while self.queue and self._can(self.queue[0]):
            w = self.queue.popleft()
            self._hold(w)
            w.granted = True
            granted.append(w)
        return granted

    def _hold(self, w: Waiter) -> None:
        self.holders[w.pid] = self.holders.get(w.pid, 0) + 1

    def release(self, pid: int, mode: str | None = None) -> list[Waiter]:
        n = self.holders.get(pid, 0)
        if not n:
            raise LlmunixError(f"process {format_pid(pid)} does not hold {self.kind} {self.name!r}")
        if n == 1:
            del self.holders[pid]
        else:
            self.holders[pid] = n - 1
        return self._grant()

    def cancel(self, w: Waiter) -> list[Waiter]:
        """`w` stops waiting (timeout, kill): leave the queue, or give back what was granted meanwhile."""
        if w.granted:
            w.granted = False
            return self.release(w.pid, w.mode) if self.holders.get(w.pid) else []
        try:
            self.queue.remove(w)
        except ValueError:
            return []
        return self._grant()  # a writer that gave up may let the readers behind it in

    def drop(self, pid: int) -> tuple[int, list[Waiter]]:
        """Process `pid` has ended: what it held is released. Returns (holds released, granted)."""
        held = self.holders.pop(pid, 0)
        self.queue = deque(w for w in self.queue if w.pid != pid)
        return held, self._grant()

    def blockers(self, w: Waiter) -> set[int]:
        """Whom `w` waits for: the holders (FIFO order behind other waiters is not counted)."""
        return set(self.holders)

    def idle(self) -> bool:
        return not self.holders and not self.queue

    def info(self) -> PrimitiveInfo:
        holders = tuple(Holder(p, self._modes(p), n) for p, n in sorted(self.holders.items()))
        waiters = tuple(WaitInfo(w.pid, w.mode, w.since) for w in self.queue)
        return PrimitiveInfo(self.name, self.kind, holders, waiters, self._detail(), self.created)


class Mutex(Primitive):
    kind = "mutex"

    def _can(self, w: Waiter) -> bool:
        return not self.holders

    def request(self, w: Waiter) -> list[Waiter]:
        if w.pid in self.holders:
            raise LlmunixError(f"process {format_pid(w.pid)} already holds mutex {self.name!r} (it is not reentrant)")
        return super().request(w)

    def _detail(self) -> str:
        return "held" if self.holders else "free"


class Semaphore(Primitive):
    kind = "semaphore"
    any_holder = True

    def __init__(self, name: str, value: int) -> None:
        if value < 1:
            raise LlmunixError(f"semaphore {name!r} needs a value of at least 1")
        super().__init__(name)
        self.value = value

    def _can(self, w: Waiter) -> bool:
        return sum(self.holders.values()) < self.value

    def _detail(self) -> str:
        return f"{self.value - sum(self.holders.values())} of {self.value} free"


class RWLock(Primitive):
    kind = "rwlock"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.writer: int | None = None

    def _can(self, w: Waiter) -> bool:
        if w.mode == "w":
            return not self.holders
        return self.writer is None

    def _hold(self, w: Waiter) -> None:
        super()._hold(w)
        if w.mode == "w":
            self.writer = w.pid

    def request(self, w: Waiter) -> list[Waiter]:
        if w.pid in self.holders:
            if self.writer == w.pid:
                raise LlmunixError(f"process {format_pid(w.pid)} already holds rwlock {self.name!r} for writing")
            if w.mode == "w":
                raise LlmunixError(f"process {format_pid(w.pid)} holds rwlock {self.name!r} for reading; "
                                   "release it before asking to write (no upgrades)")
            self._hold(w)  # another read by a reader: at once, or it would queue behind a writer waiting for it
            w.granted = True
            return [w]
        return super().request(w)

    def release(self, pid: int, mode: str | None = None) -> list[Waiter]:
        if mode is not None and pid in self.holders and (mode == "w") != (self.writer == pid):
            held = "writing" if self.writer == pid else "reading"
            raise LlmunixError(f"process {format_pid(pid)} holds rwlock {self.name!r} for {held}")
        if self.writer == pid:  # a writer holds once: writes are not reentrant
            self.writer = None
        return super().release(pid, mode)

    def drop(self, pid: int) -> tuple[int, list[Waiter]]:
        if self.writer == pid:
            self.writer = None
        return super().drop(pid)

    def _modes(self, pid: int) -> str:
        return "w" if self.writer == pid else "r"

    def _detail(self) -> str:
        if self.writer is not None:
            return "write-locked"
        return f"{len(self.holders)} reader(s)" if self.holders else "free"


class Condition(Mutex):
    """A condition variable with its own mutex: `with cond: cond.wait_for(pred)`. Sleepers
    (waiting for a notify) are not in the wait-for graph: anyone may notify them."""

    kind = "condition"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sleepers: deque[Waiter] = deque()

    def sleep(self, w: Waiter) -> list[Waiter]:
        """`w`'s process holds the mutex: release it and wait for a notify."""
        if w.pid not in self.holders:
            raise LlmunixError(f"process {format_pid(w.pid)} must hold condition {self.name!r} to wait on it")
        self.sleepers.append(w)
        return self.release(w.pid)

    def notify(self, pid: int, n: int | None) -> list[Waiter]:
        if pid is not None and pid not in self.holders:
            raise LlmunixError(f"process {format_pid(pid)} must hold condition {self.name!r} to notify it")
        woken = []
        while self.sleepers and (n is None or len(woken) < n):
            w = self.sleepers.popleft()
            w.granted = True
            woken.append(w)
        return woken

    def cancel(self, w: Waiter) -> list[Waiter]:
        if w.mode == "n":
            try:
                self.sleepers.remove(w)
            except ValueError:
                pass
            return []
        return super().cancel(w)

    def drop(self, pid: int) -> tuple[int, list[Waiter]]:
        self.sleepers = deque(w for w in self.sleepers if w.pid != pid)
        return super().drop(pid)

    def idle(self) -> bool:
        return super().idle() and not self.sleepers

    def info(self) -> PrimitiveInfo:
        base = super().info()
        sleepers = tuple(WaitInfo(w.pid, "n", w.since) for w in self.sleepers)
        return PrimitiveInfo(base.name, base.kind, base.holders, base.waiters + sleepers, base.detail, base.created)


class Barrier(Primitive):
    """`parties` processes meet: each `wait()` blocks until all have arrived, then all go on
    and the barrier is ready for the next round. One that leaves early breaks it for the rest."""

    kind = "barrier"
    tracked = False  # its waiters wait for whoever has not arrived yet: nobody in particular

    def __init__(self, name: str, parties: int) -> None:
        if parties < 1:
            raise LlmunixError(f"barrier {name!r} needs at least 1 party")
        super().__init__(name)
        self.parties = parties
        self.generation = 0
        self.broken: str | None = None  # why, once broken

    def _can(self, w: Waiter) -> bool:
        return False

    def arrive(self, w: Waiter) -> list[Waiter]:
        if self.broken is not None:
            raise BrokenBarrier(f"barrier {self.name!r} is broken: {self.broken}")
        if any(x.pid == w.pid for x in self.queue):
            raise LlmunixError(f"process {format_pid(w.pid)} is already waiting at barrier {self.name!r}")
        w.index = len(self.queue)
        self.queue.append(w)
        if len(self.queue) < self.parties:
            return []
        released = list(self.queue)
        self.queue.clear()
        self.generation += 1
        for x in released:
            x.granted = True
        return released

    def cancel(self, w: Waiter) -> list[Waiter]:
        if w.granted or w not in self.queue:
            return []
        return self.break_(f"process {format_pid(w.pid)} left before all {self.parties} arrived")

    def break_(self, why: str) -> list[Waiter]:
        self.broken = why
        waiting = list(self.queue)
        self.queue.clear()
        return waiting

    def reset(self) -> None:
        self.broken = None

    def drop(self, pid: int) -> tuple[int, list[Waiter]]:
        if any(w.pid == pid for w in self.queue):
            return 0, self.break_(f"process {format_pid(pid)} ended while waiting")
        return 0, []

    def _detail(self) -> str:
        if self.broken is not None:
            return f"broken: {self.broken}"
        return f"{len(self.queue)} of {self.parties} arrived (round {self.generation + 1})"



class Election(Primitive):
    """A leader among candidate processes: the holder leads, the queue (FIFO) follows.

    `leases[pid]` is each candidate's lease in seconds (its own, from `ctx.elect`); `renewed`
    (monotonic) the leader's last renewal and `term` the number of leaders chosen so far, both
    kept by the service. A candidate joins with `request` (it leads at once if nobody does),
    resigns with `release` (leader) or `cancel` (follower), and is `drop`ped when it ends; each
    hands the lead to the head of the queue. `demote` is the lease's expiry."""

    kind = "election"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.term = 0
        self.renewed = 0.0
        self.leases: dict[int, float] = {}
        self.candidates: dict[int, Waiter] = {}  # pid -> its waiter (granted: the leader)
        self.timer: Any = None  # the lease check due next (TimerHandle), while there are followers

    @property
    def leader(self) -> int | None:
        return next(iter(self.holders), None)

    @property
    def followers(self) -> list[int]:
        return [w.pid for w in self.queue]

    def _can(self, w: Waiter) -> bool:
        return not self.holders

    def _hold(self, w: Waiter) -> None:
        super()._hold(w)
        self.term += 1
        self.renewed = time.monotonic()

    def request(self, w: Waiter) -> list[Waiter]:
        if w.pid in self.candidates:
            raise LlmunixError(f"process {format_pid(w.pid)} is already a candidate in election {self.name!r}")
        self.candidates[w.pid] = w
        return super().request(w)

    def release(self, pid: int, mode: str | None = None) -> list[Waiter]:
        self.candidates.pop(pid, None)
        self.leases.pop(pid, None)
        return super().release(pid, mode)

    def cancel(self, w: Waiter) -> list[Waiter]:
        """`w` leaves the candidates (a follower resigning; a leader resigning goes by `release`)."""
        if self.candidates.get(w.pid) is w and not w.granted:
            del self.candidates[w.pid]
            self.leases.pop(w.pid, None)
        return super().cancel(w)

    def drop(self, pid: int) -> tuple[int, list[Waiter]]:
        self.candidates.pop(pid, None)
        self.leases.pop(pid, None)
        return super().drop(pid)

    def demote(self) -> list[Waiter]:
        """The leader's lease has expired: it goes to the back of the queue (still a candidate)
        and the head of the queue leads. Nothing changes without a follower to take over."""
        leader = self.leader
        if leader is None or not self.queue:
            return []
        w = self.candidates[leader]
        del self.holders[leader]
        w.granted = False
        w.since = time.time()
        self.queue.append(w)
        return self._grant()

    def _modes(self, pid: int) -> str:
        return "L"

    def _detail(self) -> str:
        return f"term {self.term}" if self.holders else "no leader"
