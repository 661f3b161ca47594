"""What tool code holds: handles on the kernel's named primitives and on the blackboard.

A handle is a process's view of a kernel record (`sync.py`, `shared.py`); every call goes to the
kernel, under its lock, and every wait is off-slot and a control point. Handles are cheap and
made per call (`ctx.lock("db")` twice gives two handles on the one mutex).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError

if TYPE_CHECKING:
    from llmunix.ipc.service import Communication
    from llmunix.ipc.shared import SharedEntry
    from llmunix.ipc.sync import Barrier, Condition, Election, Primitive, RWLock
    from llmunix.process import Process


class _Handle:
    __slots__ = ("_kernel", "_proc", "_prim")

    def __init__(self, kernel: Communication, proc: Process, prim: Primitive) -> None:
        self._kernel = kernel
        self._proc = proc
        self._prim = prim

    @property
    def name(self) -> str:
        return self._prim.name

    def __repr__(self) -> str:
        return f"<{self._prim.kind} {self._prim.name!r}>"


class MutexHandle(_Handle):
    """`with ctx.lock("db"): ...`, or `acquire(timeout)` / `release()`. Not reentrant."""

    __slots__ = ()

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait (off-slot) until this process holds it; False if `timeout` seconds passed first."""
        return self._kernel.acquire(self._proc, self._prim, "x", timeout)

    def release(self) -> None:
        self._kernel.release(self._proc, self._prim, "x")

    @property
    def held(self) -> bool:
        """True if this process holds it."""
        return self._kernel.holds(self._proc, self._prim)

    def __enter__(self) -> MutexHandle:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SemaphoreHandle(MutexHandle):
    """A counting semaphore: at most `value` holds at once (`with ctx.semaphore("api", 4): ...`)."""

    __slots__ = ()


class ConditionHandle(MutexHandle):
    """A condition variable with its own mutex:

        with ctx.condition("queue") as cond:
            cond.wait_for(lambda: ctx.shared.get("items"))
    """

    __slots__ = ()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the mutex, wait for a notify (off-slot), take the mutex again. False on timeout."""
        return self._kernel.cond_wait(self._proc, self._cond, timeout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> int:
        """Wake up to `n` waiters (the caller must hold the condition). Returns how many woke."""
        return self._kernel.notify(self._proc, self._cond, n)

    def notify_all(self) -> int:
        return self._kernel.notify(self._proc, self._cond, None)

    @property
    def _cond(self) -> Condition:
        return self._prim  # type: ignore[return-value]


class BarrierHandle(_Handle):
    """`ctx.barrier("phase", 3).wait()`: blocks until 3 processes have arrived."""

    __slots__ = ()

    def wait(self, timeout: float | None = None) -> int:
        """Arrive and wait for the others; returns this process's arrival index (0 .. parties-1).
        Raises BrokenBarrier if a member left early (or on this one's timeout)."""
        return self._kernel.barrier_wait(self._proc, self._barrier, timeout)

    def reset(self) -> None:
        """Mend a broken barrier for a new round."""
        self._kernel.barrier_reset(self._barrier)

    @property
    def parties(self) -> int:
        return self._barrier.parties

    @property
    def broken(self) -> bool:
        return self._barrier.broken is not None

    @property
    def _barrier(self) -> Barrier:
        return self._prim  # type: ignore[return-value]


class ElectionHandle(_Handle):
    """This process's candidacy in a leader election (`ctx.elect("indexer", lease=10)`)::

        with ctx.elect("indexer") as election:   # waits (off-slot) until this process leads
            while election.is_leader:            # False once the lead has passed on
                ...one unit of work, with control points...
        # leaving the block resigns: the first follower leads at once

    or without waiting: `if ctx.elect("indexer").is_leader: ...`. The lease is renewed by this
    process's control points (progress, log, checkpoint, sleep), by `is_leader` and `renew()`,
    and by the engine while it waits off-slot; a leader that shows none of these for its lease
    (paused, or stuck in a call) loses the lead to the first follower and follows again. Use
    `term` as a fencing token: it grows each time a leader is chosen."""

    __slots__ = ()

    @property
    def is_leader(self) -> bool:
        """True while this process leads (asking renews the lease)."""
        return self._kernel.leads(self._proc, self._election)

    def renew(self) -> bool:
        """Renew the lease now; returns `is_leader`."""
        return self._kernel.leads(self._proc, self._election)

    @property
    def leader(self) -> int | None:
        """The PID of the leader now, or None."""
        return self._kernel.leader_of(self._election)

    @property
    def followers(self) -> list[int]:
        """The PIDs waiting to lead, in the order they would."""
        return self._kernel.followers_of(self._election)

    @property
    def term(self) -> int:
        """How many leaders this election has had (this process's term, while it leads)."""
        return self._election.term

    def wait_leader(self, timeout: float | None = None) -> bool:
        """Wait off-slot (a control point throughout) until this process leads; False if
        `timeout` seconds pass first. A process that had resigned stands again."""
        return self._kernel.wait_leader(self._proc, self._election, timeout)

    def resign(self) -> None:
        """Stop standing; a leader hands the lead to the first follower at once."""
        self._kernel.resign(self._proc, self._election)

    def __enter__(self) -> ElectionHandle:
        self.wait_leader()
        return self

    def __exit__(self, *exc: object) -> None:
        self.resign()

    @property
    def _election(self) -> Election:
        return self._prim  # type: ignore[return-value]


class RWLockHandle(_Handle):
    """Many readers or one writer: `with ctx.rwlock("index").read(): ...` / `.write()`.
    Writers are preferred: once one waits, new readers queue behind it."""

    __slots__ = ()

    def acquire_read(self, timeout: float | None = None) -> bool:
        return self._kernel.acquire(self._proc, self._prim, "r", timeout)

    def release_read(self) -> None:
        self._kernel.release(self._proc, self._prim, "r")

    def acquire_write(self, timeout: float | None = None) -> bool:
        return self._kernel.acquire(self._proc, self._prim, "w", timeout)

    def release_write(self) -> None:
        self._kernel.release(self._proc, self._prim, "w")

    @contextmanager
    def read(self) -> Iterator[RWLockHandle]:
        self.acquire_read()
        try:
            yield self
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[RWLockHandle]:
        self.acquire_write()
        try:
            yield self
        finally:
            self.release_write()

    @property
    def _rw(self) -> RWLock:
        return self._prim  # type: ignore[return-value]


class SharedView:
    """`ctx.shared`: the kernel's versioned key-value blackboard, seen by one process.

    Values are JSON-shaped and copied in and out. Every write bumps the key's version (a missing
    key is version 0); `cas` writes only if the version is still the one the caller read.
    """

    __slots__ = ("_kernel", "_proc")

    def __init__(self, kernel: Communication, proc: Process | None) -> None:
        self._kernel = kernel
        self._proc = proc

    def get(self, key: str, default: Any = None) -> Any:
        entry = self._kernel.shared_get(self._proc, key)
        return default if entry is None else entry.value

    def item(self, key: str) -> tuple[Any, int]:
        """(value, version); (None, 0) for a missing key."""
        entry = self._kernel.shared_get(self._proc, key)
        return (None, 0) if entry is None else (entry.value, entry.version)

    def version(self, key: str) -> int:
        return self.item(key)[1]

    def set(self, key: str, value: Any) -> int:
        """Write; returns the new version."""
        return self._kernel.shared_write(self._proc, key, value, None)  # type: ignore[return-value]

    def cas(self, key: str, expected_version: int, value: Any) -> int | None:
        """Compare-and-set: write only if the key is still at `expected_version` (0: absent).
        Returns the new version, or None if someone wrote in between (read again and retry)."""
        if not isinstance(expected_version, int) or expected_version < 0:
            raise LlmunixError(f"expected_version must be a version number (0 for a new key), not {expected_version!r}")
        return self._kernel.shared_write(self._proc, key, value, expected_version)

    def update(self, key: str, change: Callable[[Any], Any], *, default: Any = None, attempts: int = 100) -> int:
        """Read-modify-write with `cas`, retried until no other write gets in between."""
        for _ in range(max(1, attempts)):
            value, version = self.item(key)
            new = self.cas(key, version, change(default if version == 0 else value))
            if new is not None:
                return new
        raise LlmunixError(f"shared key {key!r} changed under every one of {attempts} attempts")

    def delete(self, key: str) -> bool:
        return self._kernel.shared_delete(self._proc, key)

    def keys(self, pattern: str = "*") -> list[str]:
        return [e.key for e in self._kernel.shared_entries(self._proc, pattern)]

    def wait(self, key: str, newer_than: int = 0, timeout: float | None = None) -> tuple[Any, int] | None:
        """Wait (off-slot) until `key`'s version is above `newer_than`; (value, version), or None
        on timeout."""
        entry = self._kernel.shared_wait(self._proc, key, newer_than, timeout)
        return None if entry is None else (entry.value, entry.version)

    def __getitem__(self, key: str) -> Any:
        entry = self._kernel.shared_get(self._proc, key)
        if entry is None:
            raise KeyError(key)
        return entry.value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._kernel.shared_get(self._proc, key) is not None

    def entries(self, pattern: str = "*") -> list[SharedEntry]:
        return self._kernel.shared_entries(self._proc, pattern)
