"""Communication between processes: mailboxes, topics, tool events, the blackboard, buffers,
named primitives and deadlock detection. A component of the kernel (`kernel.ipc`); its state
changes with the processes' (a waiter, a holder), so it works under the process table's lock,
and every wait is the table's off-slot `block`. Hooks: `on_end` and `on_attempt_end` release
whatever a process held.

State (`IpcTables`, all under the kernel lock):
* `mailboxes[pid]` — messages waiting, in the order sent; `unacked[pid]` — persistent ones
  delivered and not acknowledged yet; `topics[pid]` — topic patterns a process listens to.
* `prims[name]` — the named primitives and elections; `waiting[pid]` — the one tracked wait a
  process is in (the wait-for graph's edges come from these); `deadlocks` — those found, newest last.
* `board` — the blackboard; `buffers` — the memory-mapped buffers and their users.
* `users` — PIDs with any of the above, so a finishing process that used none costs one lookup.

Invariants: every wait inside a process goes through `ProcessTable.block` (off-slot, a control
point); whoever changes what a waiter's `ready()` reads wakes it while holding the lock; when a
process ends, `on_end` releases whatever it held (no lock outlives its holder), wakes who that lets
go, and frees the buffers it was the last user of.

Leader election (`ctx.elect(name, lease)`, an `Election` in sync.py): one leader among the
candidates, the others follow in the order they joined. The lead passes to the first follower
at once when the leader ends, resigns or fails an attempt (`on_end`, `on_attempt_end`), and when
its lease expires. The lease is renewed, lazily (read whenever the lease is looked at), by the
leader's signs of life: a control point that goes through the kernel (`ctx.progress`, `log`,
`checkpoint`, `sleep` — `Process.last_active`, the watchdog's reading too) or a look at its own
handle (`is_leader`, `renew`); and by the engine while the leader waits inside it (off-slot in
a `recv`, a lock, `ctx.wait`, or for a slot): it is alive and answers pause and kill there. A
paused leader, or one running without a control point for its lease (hung in a call), is not
renewed. One timer per election with followers (`_lease_due`, on the table's timer thread)
looks when the lease would end, so a takeover does not wait for anyone to ask.

Delivery guarantees: in-memory messages are delivered at most once (lost if the recipient ends or
llmunix stops first). Persistent ones are in the store before `send` returns and are delivered at
least once: a message received but not acknowledged is delivered again when its recipient runs
again under the same PID (`recover`, after a restart or an interruption).
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmunix.ipc.bus import glob_matcher
from llmunix.ipc.deadlock import Deadlock, find_deadlock
from llmunix.ipc.handles import (
    BarrierHandle,
    ConditionHandle,
    ElectionHandle,
    MutexHandle,
    RWLockHandle,
    SemaphoreHandle,
    SharedView,
)
from llmunix.ipc.messages import Envelope, Message, MessageInfo, MessageRejected, decode, encode, type_name
from llmunix.ipc.persist import MessageStore
from llmunix.ipc.shared import Blackboard, BufferInfo, BufferSpace, SharedBuffer, SharedEntry, check_name, copy_json
from llmunix.ipc.sync import (
    Barrier,
    BrokenBarrier,
    Condition,
    Election,
    Mutex,
    Primitive,
    PrimitiveInfo,
    RWLock,
    Semaphore,
    Waiter,
)
from llmunix.lifecycle import Hooks
from llmunix.models import (
    Event,
    LlmunixError,
    Outcome,
    Phase,
    as_pid,
    format_duration,
    format_pid,
    parse_duration,
)

if TYPE_CHECKING:
    from pathlib import Path

    from llmunix.durable import DurableState
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process
    from llmunix.store import Store

log = logging.getLogger("llmunix.ipc")

DEADLOCK_POLICIES = ("report", "kill-lowest")
MAILBOX_LIMIT = 100_000  # messages waiting for one process before `send` refuses more
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")
_KINDS: dict[str, type[Primitive]] = {"mutex": Mutex, "semaphore": Semaphore, "condition": Condition,
                                      "barrier": Barrier, "rwlock": RWLock}
DEFAULT_LEASE = 10.0  # seconds a leader leads without a sign of life
MIN_LEASE = 0.05
_HANDLES: dict[str, type] = {"mutex": MutexHandle, "semaphore": SemaphoreHandle, "condition": ConditionHandle,
                             "barrier": BarrierHandle, "rwlock": RWLockHandle}
_WHAT = {"x": "", "r": " for reading", "w": " for writing"}


@dataclass(frozen=True, slots=True)
class LocksInfo:
    """What `locks` shows: every primitive, and the deadlocks found (current ones first)."""

    primitives: tuple[PrimitiveInfo, ...]
    deadlocks: tuple[Deadlock, ...]
    policy: str

    def to_dict(self) -> dict[str, Any]:
        now = time.time()
        return {"primitives": [p.to_dict(now) for p in self.primitives],
                "deadlocks": [d.to_dict() for d in self.deadlocks], "deadlock_policy": self.policy}


class IpcTables:
    """The kernel's communication state (see the module docstring). Mutates under the kernel lock."""

    def __init__(self) -> None:
        self.mailboxes: dict[int, deque[Envelope]] = {}
        self.unacked: dict[int, dict[str, Envelope]] = {}
        self.topics: dict[int, dict[str, Callable[[str], Any]]] = {}
        self.prims: dict[str, Primitive] = {}
        self.prim_users: dict[str, set[int]] = {}
        self.opened: dict[int, set[str]] = {}  # pid -> primitives it made handles on
        self.waiting: dict[int, Waiter] = {}
        self.deadlocks: deque[Deadlock] = deque(maxlen=50)
        self.deadlock_ids = itertools.count(1)
        self.board = Blackboard()
        self.board_waiters: dict[str, set[Process]] = {}
        self.buffers = BufferSpace()
        self.buffer_users: dict[int, set[str]] = {}
        self.message_ids = itertools.count(1)
        self.users: set[int] = set()


class Communication(Hooks):
    """See the module docstring."""

    def __init__(self, table: ProcessTable, durable: DurableState, store: Store | None, home: Path | None, *,
                 read_only: bool, kill: Callable[..., Any], deadlock_policy: str = "report") -> None:
        self.table = table
        self.durable = durable
        self.store = store
        self.bus = table.bus
        self._kill = kill  # Kernel.kill: a deadlock's victim is stopped as a user's kill would
        self._ipc = IpcTables()
        self.deadlock_policy = deadlock_policy
        self._msgstore: MessageStore | None = None
        if store is not None and not read_only and home is not None:
            self._msgstore = MessageStore(store, home)
            pending, unreadable = self._msgstore.pending()
            if unreadable:
                self._msgstore.forget(unreadable)
            for env in pending:  # left from earlier sessions: they wait for their recipient's recovery
                self._ipc.mailboxes.setdefault(env.recipient, deque()).append(env)
                self._ipc.users.add(env.recipient)
        self._session_tag = store.session if store is not None else 0

    @property
    def deadlock_policy(self) -> str:
        return self._deadlock_policy

    @deadlock_policy.setter
    def deadlock_policy(self, policy: str) -> None:
        if policy not in DEADLOCK_POLICIES:
            raise LlmunixError(f"unknown deadlock policy {policy!r}; use one of: {', '.join(DEADLOCK_POLICIES)}")
        self._deadlock_policy = policy

    # ------------------------------------------------------------------ public API: messages

    def send(self, pid: int, message: Any, *, type: Any = None, persistent: bool = False,
             sensitive: bool = False) -> MessageInfo:
        """Send `message` to process `pid` from outside any process (the shell, a script)."""
        [env] = self._post(None, [as_pid(pid)], None, message, type, persistent, sensitive)
        return env.info("pending")

    def broadcast(self, topic: str, message: Any, *, type: Any = None, persistent: bool = False,
                  sensitive: bool = False) -> list[int]:
        """Send `message` to every live process listening to `topic`; returns their PIDs."""
        return self._broadcast(None, topic, message, type, persistent, sensitive)

    def mailbox(self, pid: int) -> list[MessageInfo]:
        """Messages waiting for process `pid` (pending, then delivered-but-unacknowledged ones)."""
        pid = as_pid(pid)
        with self.table.lock:
            box = [e.info("pending") for e in self._ipc.mailboxes.get(pid, ())]
            unacked = [e.info("unacked") for e in self._ipc.unacked.get(pid, {}).values()]
            known = self.table.get(pid) is not None
        if not known and not box:
            self.durable.info(pid)  # unknown PIDs raise
        return unacked + box

    # ------------------------------------------------------------------ public API: shared memory

    def shared(self, key: str | None = None) -> list[SharedEntry]:
        """Blackboard entries: all, those matching a glob, or the one `key` (which must exist)."""
        pattern = key if key is not None else "*"
        with self.table.lock:
            entries = [e for e in self._ipc.board.entries() if fnmatch.fnmatchcase(e.key, pattern)]
        if key is not None and not entries and not any(ch in key for ch in "*?["):
            raise LlmunixError(f"no shared key {key!r}; `shared` lists them")
        return [replace(e, value=copy.deepcopy(e.value)) for e in entries]

    def set_shared(self, key: str, value: Any, expected_version: int | None = None) -> int | None:
        """Write a blackboard key from outside any process; with `expected_version`, a compare-and-set."""
        return self.shared_write(None, key, value, expected_version)

    def buffers(self) -> list[BufferInfo]:
        with self.table.lock:
            return [r.info() for r in sorted(self._ipc.buffers.regions.values(), key=lambda r: r.name)]

    # ------------------------------------------------------------------ public API: primitives

    def locks(self) -> LocksInfo:
        """Every named primitive (holders, waiters and since when) and the deadlocks found."""
        with self.table.lock:
            now = time.monotonic()
            prims = tuple(self._election_info_locked(p, now) if isinstance(p, Election) else p.info()
                          for _n, p in sorted(self._ipc.prims.items()))
            found = sorted(self._ipc.deadlocks, key=lambda d: (d.resolved is not None, -d.id))
            deadlocks = tuple(copy.copy(d) for d in found)
        return LocksInfo(prims, deadlocks, self.deadlock_policy)

    # ------------------------------------------------------------------ process side: messages

    def _post(self, sender: int | None, recipients: list[int], topic: str | None, message: Any, type: Any,
              persistent: bool, sensitive: bool, *, strict: bool = True) -> list[Envelope]:
        """Put a message in each recipient's mailbox. `strict`: a recipient that cannot take it is
        an error (a direct send); else it is skipped (a broadcast to whoever still listens)."""
        name, payload = encode(message, type)
        if persistent and self._msgstore is None:
            raise LlmunixError("persistent messages need a home directory with a store (--home)")
        if strict:
            for pid in recipients:
                self._check_recipient(pid, persistent)
        sent = []
        with self.table.lock:
            for pid in recipients:
                proc = self.table.get(pid)
                waits = persistent and proc is not None and proc.state == Outcome.INTERRUPTED
                if proc is not None and proc.phase is Phase.DONE and not waits:
                    if not strict:
                        continue
                    raise LlmunixError(f"process {format_pid(pid)} has finished ({proc.state}); "
                                       "nothing would read the message")
                box = self._ipc.mailboxes.setdefault(pid, deque())
                if len(box) >= MAILBOX_LIMIT:
                    raise LlmunixError(f"the mailbox of {format_pid(pid)} is full ({MAILBOX_LIMIT} messages waiting)")
                env = Envelope(f"{self._session_tag}.{next(self._ipc.message_ids)}", sender, pid, name, payload,
                               topic=topic, persistent=persistent, sensitive=sensitive)
                if persistent:
                    assert self._msgstore is not None
                    self._msgstore.save(env)
                box.append(env)
                self._ipc.users.add(pid)
                data = {"from": None if sender is None else format_pid(sender), "id": env.id, "message_type": name,
                        "topic": topic, "persistent": persistent, "sensitive": sensitive, "bytes": env.size}
                if proc is not None:
                    self.table.emit("ipc.message", proc, **data)
                    self.table.wake(proc)
                else:
                    self.bus.publish("ipc.message", pid, data)
                sent.append(env)
        if persistent:
            assert self._msgstore is not None
            self._msgstore.flush()  # durable before send returns: at-least-once starts here
        return sent

    def _check_recipient(self, pid: int, persistent: bool) -> None:
        with self.table.lock:
            proc = self.table.get(pid)
            if proc is not None and proc.phase is not Phase.DONE:
                return
        info = self.durable.info(pid)  # unknown PIDs raise NoSuchProcess
        if info.state == Outcome.INTERRUPTED:
            if persistent:
                return
            raise LlmunixError(f"process {format_pid(pid)} was interrupted; only a persistent message "
                               "(--persistent) waits for it to be recovered")
        raise LlmunixError(f"process {format_pid(pid)} has finished ({info.state}); nothing would read the message")

    def _broadcast(self, sender: int | None, topic: str, message: Any, type: Any, persistent: bool,
                   sensitive: bool) -> list[int]:
        topic = check_name("topic", topic)
        with self.table.lock:
            pids = sorted(pid for pid, pats in self._ipc.topics.items()
                          if pid != sender and any(m(topic) for m in pats.values())
                          and pid in self.table.live)
        if not pids:
            return []
        return [e.recipient for e in self._post(sender, pids, topic, message, type, persistent, sensitive,
                                                strict=False)]

    def _first_match(self, pid: int, want: str | None) -> int:
        """Index of the first waiting message of type `want` (any if None); -1 if none."""
        box = self._ipc.mailboxes.get(pid)
        if not box:
            return -1
        if want is None:
            return 0
        for i, env in enumerate(box):
            if env.type == want:
                return i
        return -1

    def recv(self, proc: Process, timeout: float | None, type: Any) -> Message | None:
        want = None if type is None else type_name(type)
        pid = proc.pid
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        detail = "waiting for a message" + (f" of type {want}" if want else "")
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.table.block(proc, lambda: self._first_match(pid, want) >= 0, detail, left):
                return None
            with self.table.lock:
                # Only this process takes from its mailbox, so what ready() saw is still there.
                box = self._ipc.mailboxes[pid]
                i = self._first_match(pid, want)
                env = box[i]
                del box[i]
                if env.persistent:
                    env.deliveries += 1
                    self._ipc.unacked.setdefault(pid, {})[env.id] = env
                    assert self._msgstore is not None
                    self._msgstore.delivered(env)
                self.table.emit("ipc.received", proc, id=env.id, message_type=env.type, deliveries=env.deliveries,
                           **{"from": None if env.sender is None else format_pid(env.sender)})
            try:
                body = decode(env.type, env.payload)
            except MessageRejected as exc:
                self._reject(proc, env, str(exc))
                continue
            ack = (lambda mid=env.id: self._ipc_ack(proc, mid)) if env.persistent else None
            return Message(env.id, env.sender, env.type, body, env.topic, env.sent, env.persistent, env.sensitive,
                           max(1, env.deliveries), ack)

    def _reject(self, proc: Process, env: Envelope, why: str) -> None:
        with self.table.lock:
            if env.persistent and self._ipc.unacked.get(proc.pid, {}).pop(env.id, None) is not None:
                assert self._msgstore is not None
                self._msgstore.forget([env.id])
            proc.note("message rejected", f"{env.id} ({env.type}): {why}")
            self.table.emit("ipc.rejected", proc, id=env.id, message_type=env.type, error=why)

    def _ipc_ack(self, proc: Process, mid: str) -> None:
        with self.table.lock:
            env = self._ipc.unacked.get(proc.pid, {}).pop(mid, None)
            if env is None:
                return  # acknowledged already
            assert self._msgstore is not None
            self._msgstore.forget([mid])
            self.table.emit("ipc.acked", proc, id=mid)

    def send_from(self, proc: Process, pid: int, message: Any, type: Any, persistent: bool, sensitive: bool) -> str:
        [env] = self._post(proc.pid, [as_pid(pid)], None, message, type, persistent, sensitive)
        self._ipc_check(proc)
        return env.id

    def broadcast_from(self, proc: Process, topic: str, message: Any, type: Any, persistent: bool,
                       sensitive: bool) -> list[int]:
        pids = self._broadcast(proc.pid, topic, message, type, persistent, sensitive)
        self._ipc_check(proc)
        return pids

    def listen(self, proc: Process, pattern: str, on: bool) -> None:
        """Start (or stop) receiving broadcasts on topics matching `pattern` (a glob)."""
        with self.table.lock:
            topics = self._ipc.topics.setdefault(proc.pid, {})
            if on:
                topics[pattern] = glob_matcher(pattern)
                self._ipc.users.add(proc.pid)
            else:
                topics.pop(pattern, None)
            self.table.emit("ipc.topic", proc, topic=pattern, subscribed=on)

    def emit(self, proc: Process, name: str, data: Mapping[str, Any] | None) -> Event:
        if not _EVENT_NAME.match(str(name)):
            raise LlmunixError(f"bad event name {name!r}; use letters, digits and _ . : - (it becomes tool.NAME)")
        payload = copy_json(dict(data or {}))
        payload["name"] = proc.name  # every event's data names its process
        with self.table.lock:
            event = self.bus.publish(f"tool.{name}", proc.pid, payload)
        self._ipc_check(proc, event)
        return event

    def _ipc_check(self, proc: Process | None, event: Event | None = None) -> None:
        """A control point (what `ctx.check()` does), for calls that do not wait; after publishing
        `event`, backpressure too: a tight loop of lock or blackboard calls waits for the store
        rather than piling events up in memory."""
        if event is not None and self.store is not None:
            self.store.throttle(event.seq)
        if proc is not None and (proc.requests or proc.phase is not Phase.RUNNING
                                 or self.table.scheduler.slice_expired(proc)):
            self.table.control_point(proc)

    # ------------------------------------------------------------------ process side: shared memory

    def shared_view(self, proc: Process) -> SharedView:
        return SharedView(self, proc)

    def shared_get(self, proc: Process | None, key: str) -> SharedEntry | None:
        with self.table.lock:
            entry = self._ipc.board.get(key)
        self._ipc_check(proc)
        return None if entry is None else replace(entry, value=copy.deepcopy(entry.value))

    def shared_entries(self, proc: Process | None, pattern: str) -> list[SharedEntry]:
        with self.table.lock:
            entries = [e for e in self._ipc.board.entries() if fnmatch.fnmatchcase(e.key, pattern)]
        self._ipc_check(proc)
        return [replace(e, value=copy.deepcopy(e.value)) for e in entries]

    def shared_write(self, proc: Process | None, key: str, value: Any, expected: int | None) -> int | None:
        key = _check_key(key)
        value = copy_json(value)
        writer = None if proc is None else proc.pid
        with self.table.lock:
            board = self._ipc.board
            if expected is not None and board.version(key) != expected:
                return None
            entry = board.set(key, value, writer)
            for waiter in self._ipc.board_waiters.get(key, ()):
                self.table.wake(waiter)
            event = self._shared_event(proc, key, entry.version, "cas" if expected is not None else "set")
        self._ipc_check(proc, event)
        return entry.version

    def shared_delete(self, proc: Process | None, key: str) -> bool:
        with self.table.lock:
            gone = self._ipc.board.delete(key)
            if gone:
                self._shared_event(proc, key, 0, "delete")
        self._ipc_check(proc)
        return gone

    def _shared_event(self, proc: Process | None, key: str, version: int, op: str) -> Event:
        if proc is not None:
            return self.table.emit("ipc.shared", proc, key=key, version=version, op=op)
        return self.bus.publish("ipc.shared", None, {"key": key, "version": version, "op": op})

    def shared_wait(self, proc: Process, key: str, newer_than: int, timeout: float | None) -> SharedEntry | None:
        board = self._ipc.board
        with self.table.lock:
            self._ipc.board_waiters.setdefault(key, set()).add(proc)
        try:
            ok = self.table.block(proc, lambda: board.version(key) > newer_than, f"waiting for shared key {key!r}",
                             timeout)
        finally:
            with self.table.lock:
                waiters = self._ipc.board_waiters.get(key)
                if waiters is not None:
                    waiters.discard(proc)
                    if not waiters:
                        del self._ipc.board_waiters[key]
        return self.shared_get(proc, key) if ok else None

    def buffer(self, proc: Process, name: str, size: int | None) -> SharedBuffer:
        name = check_name("buffer", name)
        if size is not None and (not isinstance(size, int) or size < 1):
            raise LlmunixError(f"buffer {name!r}: the size must be a whole number of bytes, at least 1")
        with self.table.lock:
            space = self._ipc.buffers
            region = space.regions.get(name)
            if region is None:
                if size is None:
                    raise LlmunixError(f"no buffer {name!r} yet; give a size to create it")
                region = space.create(name, size)
                self.table.emit("ipc.buffer", proc, buffer=name, size=size, path=str(region.path), op="created")
            elif size is not None and size > region.size:
                raise LlmunixError(f"buffer {name!r} exists with {region.size} bytes, fewer than {size}")
            region.users.add(proc.pid)
            self._ipc.buffer_users.setdefault(proc.pid, set()).add(name)
            self._ipc.users.add(proc.pid)
        buf = SharedBuffer(name, region.path, region.size)
        with self.table.lock:
            region.maps.append((proc.pid, buf))
        return buf

    # ------------------------------------------------------------------ process side: primitives

    def primitive(self, proc: Process, kind: str, name: str, arg: int | None = None) -> Any:
        name = check_name(kind, name)
        with self.table.lock:
            prim = self._ipc.prims.get(name)
            if prim is None:
                if kind == "barrier" and arg is None:
                    raise LlmunixError(f"barrier {name!r} does not exist yet; give the number of parties, "
                                       f"e.g. ctx.barrier({name!r}, 3)")
                cls = _KINDS[kind]
                prim = cls(name, 1 if arg is None else arg) if kind in ("semaphore", "barrier") else cls(name)
                self._ipc.prims[name] = prim
            elif prim.kind != kind:
                raise LlmunixError(f"{name!r} is a {prim.kind}, not a {kind}; pick another name")
            elif arg is not None and arg != getattr(prim, "value", getattr(prim, "parties", arg)):
                what = "value" if kind == "semaphore" else "parties"
                raise LlmunixError(f"{kind} {name!r} exists with {what} {getattr(prim, what)}, not {arg}")
            self._ipc.prim_users.setdefault(name, set()).add(proc.pid)
            self._ipc.opened.setdefault(proc.pid, set()).add(name)
            self._ipc.users.add(proc.pid)
        return _HANDLES[kind](self, proc, prim)

    def holds(self, proc: Process, prim: Primitive) -> bool:
        with self.table.lock:
            return proc.pid in prim.holders

    def _wake_all(self, waiters: list[Waiter], but: Waiter | None = None) -> None:
        for w in waiters:
            if w is not but:
                self.table.wake(w.proc)

    def acquire(self, proc: Process, prim: Primitive, mode: str, timeout: float | None) -> bool:
        pid = proc.pid
        with self.table.lock:
            w = Waiter(proc, prim, mode)
            self._wake_all(prim.request(w), but=w)
            if w.granted:
                event = self.table.emit("ipc.acquired", proc, kind=prim.kind, lock=prim.name, mode=mode, waited=0.0)
                found = None
            else:
                self._ipc.waiting[pid] = w
                self.table.emit("ipc.waiting", proc, kind=prim.kind, lock=prim.name, mode=mode,
                           holders=[format_pid(h) for h in sorted(prim.holders)])
                found = self._check_deadlock(pid) if prim.tracked else None
                detail = self._wait_detail(w, found)
        if w.granted:
            self._ipc_check(proc, event)
            return True
        self._tracked_wait(proc, w, found, detail, timeout, leave=True)
        with self.table.lock:
            self._end_wait(w, "acquired" if w.granted else "gave up waiting")
            if not w.granted:
                self._wake_all(prim.cancel(w))
                self.table.emit("ipc.timeout", proc, kind=prim.kind, lock=prim.name, mode=mode)
                return False
            self.table.emit("ipc.acquired", proc, kind=prim.kind, lock=prim.name, mode=mode,
                       waited=round(time.time() - w.since, 3))
        return True

    def _tracked_wait(self, proc: Process, w: Waiter, found: Deadlock | None, detail: str, timeout: float | None,
                      *, leave: bool) -> None:
        """Wait off-slot until `w` is granted (or `timeout`), after killing the victim of the
        deadlock this wait closed, if the policy chose one. Killed while waiting: the wait ends,
        and with `leave` `w` leaves the primitive's queue too."""
        if found is not None and found.victim is not None:
            self._kill_victim(found)
        try:
            self.table.block(proc, self._ready_noting(w), detail, timeout)
        except BaseException:
            with self.table.lock:
                self._end_wait(w, "killed while waiting")
                if leave:
                    self._wake_all(w.prim.cancel(w))
            raise

    def release(self, proc: Process, prim: Primitive, mode: str) -> None:
        with self.table.lock:
            self._wake_all(prim.release(proc.pid, mode))
            event = self.table.emit("ipc.released", proc, kind=prim.kind, lock=prim.name, mode=mode)
        self._ipc_check(proc, event)

    def cond_wait(self, proc: Process, cond: Condition, timeout: float | None) -> bool:
        with self.table.lock:
            w = Waiter(proc, cond, "n")
            self._wake_all(cond.sleep(w))
            self.table.emit("ipc.released", proc, kind=cond.kind, lock=cond.name, mode="x", reason="wait")
        try:
            self.table.block(proc, w.ready, f"waiting on condition {cond.name!r}", timeout)
        except BaseException:
            with self.table.lock:
                cond.cancel(w)
            raise
        with self.table.lock:
            notified = w.granted
            if not notified:
                cond.cancel(w)
        self.acquire(proc, cond, "x", None)  # the mutex again, even after a timeout
        return notified

    def notify(self, proc: Process, cond: Condition, n: int | None) -> int:
        with self.table.lock:
            woken = cond.notify(proc.pid, n)
            self._wake_all(woken)
        return len(woken)

    def barrier_wait(self, proc: Process, bar: Barrier, timeout: float | None) -> int:
        with self.table.lock:
            w = Waiter(proc, bar, "b")
            released = bar.arrive(w)  # BrokenBarrier if it is broken
            if released:
                self._wake_all(released, but=w)
                self.table.emit("ipc.barrier", proc, barrier=bar.name, parties=bar.parties, round=bar.generation)
                return w.index
            detail = f"waiting at barrier {bar.name!r} ({len(bar.queue)} of {bar.parties} arrived)"
        try:
            self.table.block(proc, w.ready, detail, timeout)
        except BaseException:
            with self.table.lock:
                self._wake_all(bar.cancel(w))
            raise
        with self.table.lock:
            if w.granted:
                return w.index
            if bar.broken is None:  # our own timeout: we leave, and that breaks it for the rest
                self._wake_all(bar.cancel(w))
            raise BrokenBarrier(f"barrier {bar.name!r} is broken: {bar.broken}")

    def barrier_reset(self, bar: Barrier) -> None:
        with self.table.lock:
            bar.reset()

    @staticmethod
    def _ready_noting(w: Waiter) -> Callable[[], bool]:
        """`w`'s ready test for `_block`, which also keeps the process's detail up to date: a
        deadlock found after the process began to wait is written in by its own next check."""
        proc = w.proc

        def ready() -> bool:
            if w.ready():
                return True
            if w.note is not None and proc.phase is Phase.WAITING and proc.detail != w.note:
                proc.detail = w.note
            return False

        return ready

    def _wait_detail(self, w: Waiter, found: Deadlock | None) -> str:
        prim = w.prim
        holders = ", ".join(format_pid(h) for h in sorted(prim.holders)) or "nobody"
        if w.mode == "l":
            text = f"waiting to lead election {prim.name!r} (leader {holders})"
            return f"deadlocked: {found.path()}; {text}" if found is not None else text
        text = f"waiting for {prim.kind} {prim.name!r}{_WHAT.get(w.mode, '')} (held by {holders})"
        return f"deadlocked: {found.path()}; {text}" if found is not None else text

    # ------------------------------------------------------------------ process side: leader election

    def elect(self, proc: Process, name: str, lease: float | str | None) -> ElectionHandle:
        """`proc` stands in election `name` (made on first use) with its own `lease`: it leads
        at once if nobody does, else follows. Standing again while a candidate is a no-op."""
        name = check_name("election", name)
        seconds = _lease(lease)
        with self.table.lock:
            prim = self._ipc.prims.get(name)
            if prim is None:
                prim = self._ipc.prims[name] = Election(name)
            elif not isinstance(prim, Election):
                raise LlmunixError(f"{name!r} is a {prim.kind}, not an election; pick another name")
            self._ipc.prim_users.setdefault(name, set()).add(proc.pid)
            self._ipc.opened.setdefault(proc.pid, set()).add(name)
            self._ipc.users.add(proc.pid)
            if proc.pid in prim.candidates:
                prim.leases[proc.pid] = seconds
            else:
                self._stand_locked(proc, prim, seconds)
        return ElectionHandle(self, proc, prim)

    def _stand_locked(self, proc: Process, e: Election, lease: float) -> None:
        e.leases[proc.pid] = lease
        before = e.leader
        granted = e.request(Waiter(proc, e, "l"))
        if granted:
            self._led_locked(e, before, "elected (no leader)")
        else:
            proc.note("candidate", f"election {e.name}: following {format_pid(before)}" if before is not None
                      else f"election {e.name}")
            self.table.emit("ipc.candidate", proc, election=e.name,
                            leader=None if before is None else format_pid(before))
        self._arm_lease_locked(e)

    def leads(self, proc: Process, e: Election) -> bool:
        """Is `proc` the leader now? A leader's asking renews its lease. A control point, so a
        `while election.is_leader:` loop answers pause and kill."""
        with self.table.lock:
            self._check_lease_locked(e, time.monotonic())
            leading = e.leader == proc.pid
            if leading:
                e.renewed = time.monotonic()
        self._ipc_check(proc)
        return leading

    def leader_of(self, e: Election) -> int | None:
        with self.table.lock:
            self._check_lease_locked(e, time.monotonic())
            return e.leader

    def followers_of(self, e: Election) -> list[int]:
        with self.table.lock:
            return e.followers

    def wait_leader(self, proc: Process, e: Election, timeout: float | None) -> bool:
        """Block off-slot until `proc` leads (standing again first if it had resigned); False if
        `timeout` seconds passed first (it stays a candidate)."""
        pid = proc.pid
        with self.table.lock:
            w = e.candidates.get(pid)
            if w is None:
                current = self._ipc.prims.setdefault(e.name, e)  # forgotten after everyone resigned: again
                if current is not e:
                    raise LlmunixError(f"election {e.name!r} was made again meanwhile; call ctx.elect({e.name!r})")
                self._ipc.opened.setdefault(pid, set()).add(e.name)
                self._ipc.prim_users.setdefault(e.name, set()).add(pid)
                self._ipc.users.add(pid)
                self._stand_locked(proc, e, e.leases.get(pid, DEFAULT_LEASE))
                w = e.candidates[pid]
            self._check_lease_locked(e, time.monotonic())
            if w.granted:
                e.renewed = time.monotonic()
                return True
            self._ipc.waiting[pid] = w
            found = self._check_deadlock(pid)
            detail = self._wait_detail(w, found)
        self._tracked_wait(proc, w, found, detail, timeout, leave=False)  # a follower stays one
        with self.table.lock:
            self._end_wait(w, "became leader" if w.granted else "gave up waiting")
            if w.granted:
                e.renewed = time.monotonic()
            return w.granted

    def resign(self, proc: Process, e: Election) -> None:
        """`proc` stops standing: a leader hands the lead to the first follower at once."""
        with self.table.lock:
            w = e.candidates.get(proc.pid)
            if w is None:
                return
            if w.granted:
                self._wake_all(e.release(proc.pid))
                proc.note("resigned", f"election {e.name}")
                self._led_locked(e, proc.pid, f"{format_pid(proc.pid)} resigned")
            else:
                e.cancel(w)
                self.table.emit("ipc.resigned", proc, election=e.name)
            self._arm_lease_locked(e)

    def _led_locked(self, e: Election, before: int | None, reason: str) -> None:
        """The lead has (perhaps) changed hands: wake and tell the new leader, publish it."""
        leader = e.leader
        if leader is None or leader == before:
            if leader is None and before is not None:
                self.bus.publish("ipc.leader", None, {"election": e.name, "leader": None,
                                                     "previous": format_pid(before), "term": e.term,
                                                     "reason": reason})
            return
        proc = self.table.get(leader)
        data = {"election": e.name, "leader": format_pid(leader),
                "previous": None if before is None else format_pid(before), "term": e.term, "reason": reason}
        if proc is None:
            self.bus.publish("ipc.leader", leader, data)
            return
        proc.note("leader", f"election {e.name}, term {e.term}: {reason}")
        self.table.emit("ipc.leader", proc, **data)
        self.table.wake(proc)

    def _lease_left_locked(self, e: Election, now: float) -> float | None:
        """Seconds left of the leader's lease, after renewing it from the leader's signs of life
        (see the module docstring); None without a leader."""
        leader = e.leader
        if leader is None:
            return None
        proc = self.table.get(leader)
        lease = e.leases.get(leader, DEFAULT_LEASE)
        if proc is None or proc.phase is Phase.DONE:
            return 0.0
        if proc.phase in (Phase.WAITING, Phase.READY, Phase.PREEMPTED):
            e.renewed = now  # waiting inside the engine: alive, and it answers pause and kill there
        elif proc.phase is Phase.RUNNING:
            e.renewed = max(e.renewed, min(proc.last_active, now))  # a sleep's last_active is its end
        return e.renewed + lease - now

    def _check_lease_locked(self, e: Election, now: float) -> None:
        """Hand the lead on if the leader's lease has run out and someone follows."""
        left = self._lease_left_locked(e, now)
        if left is None or left > 0 or not e.queue:
            return
        before = e.leader
        self._wake_all(e.demote())
        old = self.table.get(before) if before is not None else None
        lease = e.leases.get(before, DEFAULT_LEASE) if before is not None else DEFAULT_LEASE
        if old is not None:
            old.note("lease expired", f"election {e.name}: no sign of life for {format_duration(lease)}")
        self._led_locked(e, before, f"lease of {format_pid(before)} expired" if before is not None else "lease expired")

    def _arm_lease_locked(self, e: Election) -> None:
        """One timer per election with a leader and followers, due when the lease could end."""
        if e.timer is not None:
            e.timer.cancel()
            e.timer = None
        left = self._lease_left_locked(e, time.monotonic())
        if left is not None and e.queue and not self.table.closed:
            e.timer = self.table.timers.call_later(max(0.0, left) + 0.001, self._lease_due, e)

    def _lease_due(self, e: Election) -> None:
        with self.table.lock:
            e.timer = None
            if self._ipc.prims.get(e.name) is not e:
                return
            self._check_lease_locked(e, time.monotonic())
            self._arm_lease_locked(e)

    def _election_info_locked(self, e: Election, now: float) -> PrimitiveInfo:
        self._check_lease_locked(e, now)
        left = self._lease_left_locked(e, now)
        base = e.info()
        lease = e.leases.get(e.leader, DEFAULT_LEASE) if e.leader is not None else None
        detail = base.detail if left is None else f"{base.detail}, lease {max(0.0, left):.1f}s left"
        return replace(base, detail=detail, term=e.term, lease=lease,
                       lease_left=None if left is None else max(0.0, left))

    # ------------------------------------------------------------------ deadlocks

    def _check_deadlock(self, pid: int) -> Deadlock | None:
        """`pid` has just started waiting: does that close a cycle? Hold the lock."""
        t = self._ipc
        found = find_deadlock(pid, t.waiting, 0, self.deadlock_policy)
        if found is None:
            return None
        for d in t.deadlocks:
            if d.resolved is None and d.members_set == found.members_set:
                return None  # reported already
        found.id = next(t.deadlock_ids)
        if self.deadlock_policy == "kill-lowest":
            found.victim = min(found.members, key=lambda p: (self.table.procs[p].priority, -p))
        t.deadlocks.append(found)
        summary = found.summary()
        for member in found.members:
            proc = self.table.procs[member]
            proc.note("deadlock", summary)
            if member != pid:
                w = t.waiting[member]
                w.note = self._wait_detail(w, found)
                self.table.wake(proc)  # its ready() runs again and puts the note in its detail
        log.warning("deadlock %d: %s", found.id, summary)
        self.bus.publish("ipc.deadlock", None, {
            "id": found.id, "cycle": [format_pid(p) for p in found.cycle],
            "members": [format_pid(p) for p in found.members], "summary": summary, "policy": found.policy,
            "victim": None if found.victim is None else format_pid(found.victim)})
        return found

    def _kill_victim(self, found: Deadlock) -> None:
        assert found.victim is not None
        try:
            self._kill(found.victim, reason=f"deadlock victim (lowest priority in {found.path()})")
        except LlmunixError as exc:  # it ended meanwhile: that resolved it too
            log.info("deadlock victim %s: %s", found.victim, exc)

    def _end_wait(self, w: Waiter, how: str) -> None:
        """A tracked wait is over: the graph loses its edges, deadlocks through it are resolved."""
        if self._ipc.waiting.get(w.pid) is w:
            del self._ipc.waiting[w.pid]
        for d in self._ipc.deadlocks:
            if d.resolved is None and w.pid in d.members_set:
                d.resolved = time.time()
                d.how = f"{format_pid(d.victim)} killed" if d.victim is not None else f"{format_pid(w.pid)} {how}"

    # ------------------------------------------------------------------ the end of a process

    def on_end(self, p: Process) -> None:
        """`p` has just finished (its state is set). Release what it held, drop its messages
        unless it may run again, free buffers it was the last user of. Hold the lock."""
        t = self._ipc
        pid = p.pid
        if pid not in t.users:
            return
        t.users.discard(pid)
        self._ipc_drop_messages(p)
        t.topics.pop(pid, None)
        self._ipc_release_held(p, "ended")
        for name in t.buffer_users.pop(pid, ()):
            region = t.buffers.regions.get(name)
            if region is None:
                continue
            region.users.discard(pid)
            for owner, buf in [m for m in region.maps if m[0] == pid]:
                buf.close()
                region.maps.remove((owner, buf))
            if not region.users:
                t.buffers.free(region)
                self.bus.publish("ipc.buffer", None, {"buffer": name, "op": "freed", "last_user": format_pid(pid)})

    def _ipc_release_held(self, p: Process, when: str) -> None:
        """Release the primitives `p` holds and end the wait it is in (it ended, or an attempt
        of it did). Hold the lock."""
        t = self._ipc
        pid = p.pid
        w = t.waiting.get(pid)
        if w is not None:
            self._end_wait(w, "ended")
            self._wake_all(w.prim.cancel(w))
        for name in t.opened.pop(pid, ()):
            prim = t.prims.get(name)
            if prim is None:
                continue
            was_leader = isinstance(prim, Election) and prim.leader == pid
            held, granted = prim.drop(pid)
            self._wake_all(granted)
            if was_leader:
                self._led_locked(prim, pid, f"{format_pid(pid)} {when}")  # type: ignore[arg-type]
                self._arm_lease_locked(prim)  # type: ignore[arg-type]
            if held:
                p.note("released", f"{prim.kind} {name} (held when it {when})")
                self.table.emit("ipc.released", p, kind=prim.kind, lock=name, reason=f"holder {when}", count=held)
            users = t.prim_users.get(name)
            if users is not None:
                users.discard(pid)
                if not users and prim.idle():
                    del t.prims[name], t.prim_users[name]
                    if isinstance(prim, Election) and prim.timer is not None:
                        prim.timer.cancel()

    def on_attempt_end(self, p: Process) -> None:
        """An attempt of `p` ended and it runs again under the same PID (a retry or a restart,
        llmunix/resilience): no lock outlives the attempt, and persistent messages it received
        but did not acknowledge are delivered again first; its mailbox, topics and buffers stay.
        Hold the lock."""
        t = self._ipc
        if p.pid not in t.users:
            return
        self._ipc_release_held(p, "failed an attempt")
        unacked = t.unacked.pop(p.pid, {})
        if unacked:
            box = t.mailboxes.setdefault(p.pid, deque())
            box.extendleft(reversed(sorted(unacked.values(), key=lambda e: e.sent)))

    def _ipc_drop_messages(self, p: Process) -> None:
        t = self._ipc
        box = t.mailboxes.pop(p.pid, None) or deque()
        unacked = t.unacked.pop(p.pid, {})
        if p.state == Outcome.INTERRUPTED:
            # It may run again under this PID (recover): persistent messages wait for it, the
            # unacknowledged ones first again, in the order they were sent.
            keep = sorted(unacked.values(), key=lambda e: e.sent) + [e for e in box if e.persistent]
            lost = [e for e in box if not e.persistent]
            if keep:
                t.mailboxes[p.pid] = deque(keep)
                t.users.add(p.pid)
        else:
            lost = list(unacked.values()) + list(box)
            gone = [e.id for e in lost if e.persistent]
            if gone:
                assert self._msgstore is not None
                self._msgstore.forget(gone)
        if lost:
            self.table.emit("ipc.dropped", p, count=len(lost), persistent=sum(e.persistent for e in lost),
                       reason=f"recipient {p.state.lower()}")

    def close(self) -> None:
        """The kernel is stopping and its processes have ended: remove the buffer directory."""
        with self.table.lock:
            self._ipc.buffers.close()


def _lease(value: float | str | None) -> float:
    """A lease in seconds (a number or a duration such as 10s); None: the default."""
    if value is None:
        return DEFAULT_LEASE
    try:
        seconds = parse_duration(value)
    except LlmunixError:
        raise LlmunixError(f"bad lease {value!r}; give seconds or a duration such as 10s") from None
    if seconds < MIN_LEASE:
        raise LlmunixError(f"lease {value!r} is too short; at least {MIN_LEASE:g}s")
    return seconds


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > 256 or any(ord(c) < 32 for c in key):
        raise LlmunixError(f"bad shared key {key!r}; use a non-empty string of up to 256 printable characters")
    return key


__all__ = ["DEADLOCK_POLICIES", "Communication", "LocksInfo"]
