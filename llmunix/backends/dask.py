"""The dask backend: bodies of remote tools run on a Dask distributed cluster.

The process stays here. Its worker thread becomes a proxy (`DaskBackend.run`): it submits the
body (`remote.run_body`) as one Dask task and, until the task ends, is the process as the kernel
sees it — it holds the slot, reaches a control point every POLL seconds, and applies what the
body reports. Scheduler, store, events and shell never know the body is elsewhere.

What the proxy does, and why:

* Submit: `client.submit(run_body, spec, key="llmunix-TOKEN-PID-N", priority=..., resources=...)`.
  Priority levels map to Dask priorities (`DASK_PRIORITY`); needs whose names are resources some
  worker declares (`dask worker --resources "gpu=1"`) become Dask `resources=`. Other needs are
  admitted locally only, as on threads (a Dask resource no worker has would wait forever).
* Up (body -> llmunix): the body logs events on one topic per backend; `_on_message` (on the
  client's event loop) routes them to the process's inbox. Progress, logs and visible states go
  through the kernel's own methods. A checkpoint is committed to the store (durable) and only
  then acknowledged, so `ctx.checkpoint` on a worker returns once it is durable here, as on
  threads.
* Down (llmunix -> body): pause, resume and kill set the process's control state; one sender
  thread delivers the latest state to the worker running the body (`Client.run`, see remote.py).
  A pause takes effect when the body reaches a control point and says "paused": only then does
  the process give its slot back here (Paused), so `ps` never shows Paused while the body runs.
  (A body still waiting for a worker pauses at once; should it start meanwhile, it is told on
  its "started" message and stops at its first control point.)
* Kill: the body is told to stop and gets half the kill grace to do so; then its task is
  cancelled on the cluster and the process ends Cancelled. The worker escalates on its side.
* Worker lost: when the scheduler removes the worker a body runs on (its "all" topic reports
  it), or Dask starts the body again elsewhere, or the task ends with KilledWorker, the process
  ends Failed "worker lost: ADDRESS" (a `WorkerLost`, which a retry policy can match), its task
  is cancelled, and a later start of it anywhere is told to stop at once. Every wait has a
  timeout, so a lost worker or scheduler never leaves a process hanging.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import distributed
from distributed import Client, KilledWorker

from llmunix.backends import ClusterInfo, WorkerInfo
from llmunix.backends.remote import llmunix_deliver, run_body
from llmunix.models import STARTED_STATE, LlmunixError, Priority, ProcessKilled, ToolError
from llmunix.relayed import apply_report, tool_ref

if TYPE_CHECKING:
    from llmunix.backends import Host
    from llmunix.lifecycle import Relay
    from llmunix.process import ProcessContext

log = logging.getLogger("llmunix.backends.dask")

POLL = 0.05  # seconds between the proxy's control points while the body runs
WAITING_STATE = "Waiting"  # the visible state of a process whose body waits in the cluster's queue
RESULT_TIMEOUT = 60.0  # seconds to fetch a finished body's result from its worker
RESOURCES_TTL = 5.0  # seconds the workers' resource names are cached for
DASK_PRIORITY = {Priority.CRITICAL: 20, Priority.HIGH: 10, Priority.NORMAL: 0, Priority.LOW: -10,
                 Priority.IDLE: -20}
_DONE = object()  # the inbox item that says the task has ended (its future is done)
_WAKE = object()  # the inbox item that says the kernel has asked something of the process


class WorkerLost(ToolError):
    """The cluster worker running a process body went away before the body ended."""


class _Lost:
    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address


class RemoteRun:
    """One run of a process body on the cluster: the proxy's side of it. The control state
    (`control`, `ack`) is what the sender thread delivers; `version` orders deliveries."""

    __slots__ = ("key", "pid", "future", "inbox", "lock", "worker", "control", "reason", "version",
                 "sent", "ack", "ack_version", "pause_version", "paused_ack", "output", "queued", "ended", "wake",
                 "steering")

    def __init__(self, key: str, pid: int) -> None:
        self.key = key
        self.pid = pid
        self.future: Any = None
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.worker: str | None = None  # the address it started on (from its "started" message)
        self.control = "run"
        self.reason = ""
        self.version = 0
        self.sent = 0  # the last version delivered
        self.ack = 0  # checkpoints made durable here
        self.ack_version = 0
        self.pause_version = 0  # the version that asked for the current pause
        self.paused_ack = 0  # the highest version the body reported being paused at
        self.output: tuple[Any] | None = None  # a small output that came with the events
        self.queued = True  # waiting in the cluster's queue: its body has not started on a worker
        self.ended = False  # its future is done (or its worker lost) before it started
        self.wake: Any = None  # wakes the process (Relay.wake) once it starts
        self.steering = False  # the proxy's loop runs: it steers the body itself from the requests

    def state(self) -> dict[str, Any]:
        return {"v": self.version, "control": self.control, "reason": self.reason, "ack": self.ack,
                "ack_version": self.ack_version}


class DaskBackend:
    """Run bodies of remote tools on a Dask cluster: at `scheduler` (`tcp://host:8786`), on a
    given `client`, or (neither) on a local cluster of worker processes started here."""

    name = "dask"
    distributed = True

    def __init__(self, scheduler: str | None = None, *, client: Client | None = None, timeout: float = 5.0,
                 n_workers: int | None = None, adapt: tuple[int, int] | None = None) -> None:
        self._cluster: Any = None
        self._own_client = client is None
        self.adapt = adapt
        if adapt is not None and (scheduler or client is not None):
            raise LlmunixError("dask_adapt scales the local cluster llmunix starts; a cluster at a scheduler of "
                               "its own scales where it is managed (e.g. cluster.adapt() in dask-kubernetes or "
                               "dask-jobqueue, see docs/cluster.md): remove dask_adapt or dask_scheduler")
        try:
            if client is not None:
                self.client = client
            elif scheduler:
                self.client = Client(scheduler, timeout=timeout, set_as_default=False)
            else:
                self._cluster = distributed.LocalCluster(
                    processes=True, n_workers=adapt[0] if adapt is not None else n_workers,
                    dashboard_address=":0", silence_logs=logging.CRITICAL)
                if adapt is not None:
                    # Dask's own adaptive scaling: workers follow the tasks waiting on the cluster.
                    self._cluster.adapt(minimum=adapt[0], maximum=adapt[1])
                self.client = Client(self._cluster, set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address...
            raise LlmunixError(f"cannot reach the Dask scheduler at {scheduler}: {_first_line(exc)} "
                               "(start one with `dask scheduler`, see docs/cluster.md)") from None
        self.address: str = self.client.scheduler.address
        self.token = secrets.token_hex(3)
        self.topic = f"llmunix-{self.token}"
        self._kernel: Host | None = None
        self._live: dict[str, RemoteRun] = {}
        self._workers: dict[int, str] = {}  # pid -> the worker its body ran on (kept for its snapshot)
        self._counter = itertools.count(1)
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._resources: tuple[float, frozenset[str]] = (float("-inf"), frozenset())
        self._resource_names()  # now, so that the first process with needs is not held up asking
        self._closed = False
        self.client.subscribe_topic(self.topic, self._on_message)
        self.client.subscribe_topic("all", self._on_cluster_event)
        self._sender = threading.Thread(target=self._send_loop, name="llmunix-dask-control", daemon=True)
        self._sender.start()

    def bind(self, kernel: Host) -> None:
        self._kernel = kernel
        kernel.table.snapshot_field("worker", self.worker_of)

    def worker_of(self, proc: Any) -> str | None:
        """The worker a process's body runs (or ran) on: a field of its snapshot."""
        return self._workers.get(proc.pid)

    # ------------------------------------------------------------------ the proxy (a process's own thread)

    def run(self, ctx: ProcessContext, relay: Relay) -> Any:
        assert self._kernel is not None, "bind() the backend to a kernel first"
        key = f"{self.topic}-{relay.pid}-{next(self._counter)}"
        run = RemoteRun(key, relay.pid)
        ref = tool_ref(relay.tool.func, "remotely", "declare it remote=False")
        spec = {"key": key, "topic": self.topic, "pid": relay.pid, "ref": ref,
                "params": relay.params, "restored": relay.restored, "cwd": relay.cwd,
                "priority": relay.priority.label, "kill_grace": relay.kill_grace}
        self._live[key] = run
        run.wake = relay.wake

        def woken() -> None:  # table lock held: a pause, resume or kill
            run.inbox.put(_WAKE)  # reaches the proxy's loop at once
            if not run.steering and run.control != "kill":
                # Queued (or just out of the queue, not yet given its slot back): the process is
                # paused here at once, so the body is told now (when it starts, if it has not).
                want = "pause" if relay.paused else "run"
                if run.control != want:
                    self._steer(run, want)

        relay.on_wake(woken)
        try:
            run.future = self.client.submit(run_body, spec, key=key, pure=False, retries=0,
                                            priority=DASK_PRIORITY[relay.priority],
                                            resources=self._resources_for(relay.needs))
            run.future.add_done_callback(lambda _f: self._ended(run))
            self._queued(relay, run)
            return self._proxy(relay, run)
        finally:
            relay.on_wake(None)
            self._live.pop(key, None)
            future = run.future
            if future is not None:
                if not future.done():
                    try:
                        future.cancel()
                    except Exception:  # noqa: BLE001 - the client may be closing; the body stops at its next check
                        log.debug("could not cancel %s", key, exc_info=True)
                future.release()

    def _queued(self, relay: Relay, run: RemoteRun) -> None:
        """Until a cluster worker starts the body, the process waits off-slot — `Waiting (for a
        worker)`, its running time not counting, the watchdog not watching (it is not running)."""
        with run.lock:
            if not run.queued or run.ended:
                return
        relay.set_state(WAITING_STATE, "for a worker")
        relay.wait_off_slot(lambda: not run.queued or run.ended, "for a worker", counts=False)
        relay.set_state(STARTED_STATE[relay.tool.kind], "")
        relay.show(f"running on {run.worker}" if run.worker else "running")

    def _ended(self, run: RemoteRun) -> None:
        """Its future is done (the client's event loop)."""
        run.inbox.put(_DONE)
        run.ended = True
        if run.wake is not None:
            run.wake()

    def _proxy(self, relay: Relay, run: RemoteRun) -> Any:
        """The control loop: steer the body from the process's requests, apply what it reports."""
        run.steering = True
        while True:
            if relay.kill_requested:
                return self._stop(relay, run)
            if relay.pause_requested:
                if run.control == "run":
                    self._steer(run, "pause")
                elif run.paused_ack >= run.pause_version or run.worker is None:
                    # The body has stopped at a control point (or has not started: when it does,
                    # it is told at once and stops at its first): the process pauses here.
                    try:
                        relay.control_point()  # blocks until resumed or given a slot again
                    except ProcessKilled:
                        return self._stop(relay, run)
                    self._steer(run, "run")
                    if run.worker:
                        relay.show(f"running on {run.worker}")
                    continue
            elif run.control == "pause":  # resumed before the pause took effect
                self._steer(run, "run")
            try:
                item = run.inbox.get(timeout=POLL)
            except queue.Empty:
                self._watch(run)
                continue
            if item is _WAKE:
                continue
            if item is _DONE:
                return self._result(run)
            if isinstance(item, _Lost):
                raise WorkerLost(f"worker lost: {item.address}")
            self._apply(relay, run, item)

    def _apply(self, relay: Relay, run: RemoteRun, msg: dict[str, Any]) -> None:
        if apply_report(relay, msg):  # progress, logs, visible states
            return
        kind = msg.get("t")
        if kind == "checkpoint":
            version = relay.checkpoint(_lists(msg["state"]))  # durable before the body hears that it is
            with run.lock:
                run.ack, run.ack_version = msg["n"], version
            self._steer(run, run.control)
        elif kind == "paused":
            run.paused_ack = max(run.paused_ack, msg["v"])
        elif kind == "result":
            run.output = (_lists(msg["value"]),)
        elif kind == "sleep":  # asleep on purpose: alive for the watchdog, as ctx.sleep on a thread
            relay.alive(msg["seconds"])
        elif kind == "started":
            where = f"{msg['worker']} (worker {msg['name']}, {msg['host']}, OS pid {msg['os_pid']})"
            self._workers[relay.pid] = msg["worker"]
            relay.show(f"running on {msg['worker']}")
            relay.note("worker", where, publish="process.remote", worker=msg["worker"], worker_name=msg["name"],
                       host=msg["host"], os_pid=msg["os_pid"], scheduler=self.address)
        elif kind == "subprocess":
            relay.note("subprocess", f"pid {msg['os_pid']} on {run.worker}")

    def _stop(self, relay: Relay, run: RemoteRun) -> Any:
        """Kill: tell the body, give it half the grace to stop, then cancel its task."""
        self._steer(run, "kill", relay.kill_reason)
        deadline = time.monotonic() + max(0.1, relay.kill_grace / 2)
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = run.inbox.get(timeout=min(left, POLL))
            except queue.Empty:
                continue
            if item is _DONE:
                if run.future.status == "finished":  # it ended before the kill reached it
                    return self._result(run)
                break
            if isinstance(item, _Lost):
                break
            if item is not _WAKE and item.get("t") in ("progress", "log", "state", "result"):
                self._apply(relay, run, item)
        raise ProcessKilled(relay.kill_reason)

    def _result(self, run: RemoteRun) -> Any:
        """The body has ended: its output, or its error raised here."""
        future = run.future
        status = future.status
        if status == "error":
            exc = future.exception(timeout=RESULT_TIMEOUT)
            if isinstance(exc, KilledWorker):
                raise WorkerLost(f"worker lost: {run.worker or exc.last_worker.address}") from None
            raise exc
        if status == "finished":
            if run.output is not None:  # it came with the events: no need to fetch it
                return run.output[0]
            try:
                outcome = future.result(timeout=RESULT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the result is on a worker that went away
                raise WorkerLost(f"worker lost: {run.worker} (result not fetched: {_first_line(exc)})") from None
            if outcome[0] == "error":
                raise ToolError(outcome[1], exit_code=outcome[2])
            if outcome[0] == "killed":
                raise ProcessKilled(outcome[1])
            if outcome[0] == "sent":
                raise ToolError("its output was sent with its events but did not arrive")
            return outcome[1]
        if self.client.status != "running":
            raise ToolError(f"lost the connection to the Dask scheduler at {self.address}")
        raise ToolError(f"its task was {status} on the Dask cluster")

    def _watch(self, run: RemoteRun) -> None:
        """Between messages: fail rather than wait for a client or a task that has gone."""
        if self.client.status in ("closing", "closed"):
            raise ToolError(f"lost the connection to the Dask scheduler at {self.address}")
        if run.future.status == "lost":
            raise WorkerLost(f"worker lost: {run.worker}")

    def _steer(self, run: RemoteRun, control: str, reason: str = "") -> None:
        with run.lock:
            run.version += 1
            run.control = control
            if reason:
                run.reason = reason
            if control == "pause":
                run.pause_version = run.version
        self._outbox.put(run)

    # ------------------------------------------------------------------ the client's event loop

    def _on_message(self, event: tuple[float, Any]) -> None:
        """A body's message: to its process's inbox. Keep it short: it runs on the event loop."""
        msg = event[1]
        key = msg.get("k")
        run = self._live.get(key)
        if msg.get("t") == "started":
            if run is None or (run.worker is not None and run.worker != msg["worker"]):
                # Dask started it again after losing its first worker, or after we gave up on it.
                if run is not None:
                    run.inbox.put(_Lost(run.worker))  # type: ignore[arg-type]
                self._outbox.put((key, msg["worker"]))
                return
            run.worker = msg["worker"]
            run.queued = False
            self._outbox.put(run)  # a pause or kill asked for before it started
            if run.wake is not None:
                run.wake()  # out of the queue: the process takes a slot again
        if run is not None:
            run.inbox.put(msg)

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if not isinstance(msg, dict):
            return
        action = msg.get("action")
        if action in ("add-worker", "remove-worker"):
            self._resources = (float("-inf"), frozenset())
        if action == "remove-worker":
            gone = msg.get("worker")
            for run in list(self._live.values()):
                if run.worker == gone:
                    run.inbox.put(_Lost(gone))

    # ------------------------------------------------------------------ the sender thread

    def _send_loop(self) -> None:
        """Deliver control states to the workers running the bodies, one at a time (the newest
        state of a run is read when it is sent, so a burst of changes is one delivery)."""
        while True:
            item = self._outbox.get()
            if item is None:
                return
            if isinstance(item, tuple):  # a start we do not want: stop it
                key, worker = item
                state = {"v": 1 << 30, "control": "kill", "reason": "abandoned by llmunix (worker lost)",
                         "ack": 0, "ack_version": 0}
            else:
                with item.lock:
                    key, worker, state = item.key, item.worker, item.state()
                    if worker is None or state["v"] <= item.sent:
                        continue
                    item.sent = state["v"]
            try:
                self.client.run(llmunix_deliver, key, state, workers=[worker], on_error="ignore")
            except Exception:  # noqa: BLE001 - a worker that has gone: its runs end as lost
                log.debug("could not deliver %s to %s", state, worker, exc_info=True)

    # ------------------------------------------------------------------ cluster view, resources

    def _resources_for(self, needs: Mapping[str, float]) -> dict[str, float] | None:
        if not needs:
            return None
        at, names = self._resources
        if time.monotonic() - at > RESOURCES_TTL:
            names = self._resource_names()
        wanted = {n: a for n, a in needs.items() if n in names}
        return wanted or None

    def _resource_names(self) -> frozenset[str]:
        """The resources the workers declare (cached RESOURCES_TTL seconds, and until a worker
        comes or goes)."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        names = frozenset(n for w in workers.values() for n in (w.get("resources") or {}))
        self._resources = (time.monotonic(), names)
        return names

    def cluster(self) -> ClusterInfo:
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except Exception as exc:  # noqa: BLE001
            raise LlmunixError(f"cannot reach the Dask scheduler at {self.address}: {_first_line(exc)}") from None
        runs = list(self._live.values())
        workers = []
        for address, w in sorted(info.get("workers", {}).items(), key=lambda kv: str(kv[1].get("name"))):
            metrics = w.get("metrics") or {}
            counts = metrics.get("task_counts") or {}
            workers.append(WorkerInfo(
                address=address, name=str(w.get("name", address)), host=str(w.get("host", "")),
                nthreads=int(w.get("nthreads", 0)), memory_limit=w.get("memory_limit") or None,
                memory=metrics.get("memory"), cpu=metrics.get("cpu"),
                executing=int(counts.get("executing", metrics.get("executing", 0)) or 0),
                resources=dict(w.get("resources") or {}),
                pids=tuple(sorted(r.pid for r in runs if r.worker == address))))
        waiting = tuple(sorted(r.pid for r in runs if r.worker is None))
        note = f"adaptive: {self.adapt[0]} to {self.adapt[1]} workers (dask_adapt)" if self.adapt else ""
        return ClusterInfo("dask", self.address, tuple(workers), waiting, note)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._outbox.put(None)
        self._sender.join(timeout=5)
        try:
            if self.client.status == "running":
                self.client.unsubscribe_topic(self.topic)
                self.client.unsubscribe_topic("all")
        except Exception:  # noqa: BLE001
            log.debug("unsubscribe failed", exc_info=True)
        if self._own_client:
            self.client.close(timeout=5)
            if self._cluster is not None:
                self._cluster.close(timeout=5)


def _lists(value: Any) -> Any:
    """JSON data as it left the worker: Dask's msgpack brings arrays back as tuples."""
    return json.loads(json.dumps(value))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
