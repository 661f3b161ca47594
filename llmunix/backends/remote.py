"""The worker side of the dask backend: what runs on a Dask worker in place of a process body.

`run_body(spec)` is the Dask task. It imports the tool's function by module path, gives it a
`RemoteContext` (the same methods as `ProcessContext`) and runs it on the worker's thread.

Two channels connect it with the proxy thread in llmunix (backends/dask.py), both pushed, never
polled:

* up: `Worker.log_event(topic, {"k": key, "t": type, ...})` — started, progress, log, state,
  checkpoint, paused, subprocess. The scheduler forwards them to the llmunix client, in order.
* down: `Client.run(llmunix_deliver, key, state, workers=[this worker])` — the whole control
  state `{"v", "control": run|pause|kill, "reason", "ack", "ack_version"}`, versioned, so a
  late or repeated delivery never undoes a newer one. `llmunix_deliver` runs on the worker's
  event loop: it records the state, wakes the body and signals its subprocess group at once.

Control points (every `ctx` method) honour the state: `pause` blocks (after telling llmunix
"paused", which is what makes the process Paused there), `kill` raises ProcessKilled. A kill that
the body does not honour within the grace period is escalated as on threads: an asynchronous
exception in the body's thread, or SIGKILL to its subprocess group. A body whose task the cluster
has cancelled (llmunix gave up on it, or its client went away) stops at its next control point.

Only this module and what it imports must be importable on the workers (llmunix itself, and the
tool's module).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from llmunix.executor import drain_async_exception, inject_exception
from llmunix.models import ProcessKilled, ToolError
from llmunix.process import renice_group, signal_group, signal_tree
from llmunix.relayed import RelayedContext, import_tool

LIVENESS = 1.0  # seconds between checks that the task still belongs to someone (at control points)
ACK_TIMEOUT = 60.0  # a checkpoint not acknowledged by llmunix in this long fails the body

_LIVE: dict[str, RemoteContext] = {}  # task key -> the context of the body running it here
_LIVE_LOCK = threading.Lock()


def run_body(spec: dict[str, Any]) -> tuple[Any, ...]:
    """The Dask task for one run of a remote process body. Returns `("ok", output)`, or the
    ends the kernel knows as values: `("error", message, exit_code)` for a ToolError,
    `("killed", reason)`; so the worker does not log them as compute failures, and a ToolError
    subclass need not unpickle on the other side. Other exceptions propagate (Dask reports them)."""
    from distributed import get_worker

    worker = get_worker()
    _quiet_worker_log()
    func = import_tool(spec["ref"])
    ctx = RemoteContext(spec, worker)
    with _LIVE_LOCK:
        _LIVE[ctx.key] = ctx
    try:
        ctx.report("started", worker=worker.address, name=str(worker.name), host=socket.gethostname(),
                  os_pid=os.getpid())
        output = ctx.run_func(func)
        if _small(output):  # it travels with the events: llmunix need not fetch it from here
            ctx.report("result", value=output)
            return ("sent",)
        return ("ok", output)
    except ToolError as exc:
        return ("error", str(exc), exc.exit_code)
    except ProcessKilled as exc:
        return ("killed", str(exc))
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(ctx.key, None)


def llmunix_deliver(key: str, state: dict[str, Any]) -> bool:
    """Run by `Client.run` on the worker's event loop: hand a control state to a body here.
    Returns whether the body was (still) running here."""
    ctx = _LIVE.get(key)
    if ctx is None:
        return False
    ctx.apply_control(state)
    return True


class RemoteContext(RelayedContext):
    """What a remote tool sees as `ctx`: ProcessContext's methods, run on a cluster worker."""

    where = "on a cluster worker"

    def __init__(self, spec: dict[str, Any], worker: Any) -> None:
        super().__init__(spec)
        self.key: str = spec["key"]
        self._topic: str = spec["topic"]
        self._worker = worker
        self._cond = threading.Condition()
        self._control = "run"
        self._reason = ""
        self._version = 0
        self._ack = 0
        self._ack_version = 0
        self._sent = 0  # checkpoints sent
        self._paused_at = 0  # the control version a "paused" was last reported for
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.get_ident()
        self._in_body = False
        self._injected = False
        self._next_liveness = time.monotonic() + LIVENESS

    # ------------------------------------------------------------------ ProcessContext's API

    def check(self) -> None:
        """A bare control point: honour pause and kill."""
        if self._control != "run":
            self._steer()
        elif time.monotonic() >= self._next_liveness:
            self._liveness()

    def _checkpoint(self, encoded: Any) -> int:
        """Send a checkpoint and wait until llmunix has made it durable; returns its version."""
        with self._cond:
            self._sent += 1
            n = self._sent
        self.report("checkpoint", n=n, state=encoded)
        deadline = time.monotonic() + ACK_TIMEOUT
        with self._cond:
            while self._ack < n:
                if self._control == "kill":
                    raise ProcessKilled(self._reason)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ToolError(f"checkpoint {n} was not acknowledged by llmunix within {ACK_TIMEOUT:g}s")
                self._cond.wait(min(left, LIVENESS))
                if self._orphaned():
                    raise ProcessKilled("its task was cancelled on the cluster")
            return self._ack_version

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of running time, waking at once for pause and kill."""
        remaining = float(seconds)
        self.check()
        if remaining > 0:
            self.report("sleep", seconds=remaining)
        while remaining > 0:
            t0 = time.monotonic()
            with self._cond:
                if self._control == "run":
                    self._cond.wait(min(remaining, LIVENESS))
            remaining -= time.monotonic() - t0
            self.check()

    def popen(self, cmd: str | list[str], *, shell: bool | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start an external command on the worker in its own process group; pause, resume and
        kill reach the group there. Runs in the process's directory if the worker has it."""
        use_shell = isinstance(cmd, str) if shell is None else shell
        cwd = self._cwd if os.path.isdir(self._cwd) else None
        child = subprocess.Popen(  # noqa: S603 - running the user's command is the point
            cmd, shell=use_shell, start_new_session=True, cwd=cwd, stdin=subprocess.DEVNULL, **kwargs)
        with self._cond:
            self._child = child
            control = self._control
        renice_group(child, self._priority)
        self.report("subprocess", os_pid=child.pid)
        if control == "pause":
            signal_group(child, signal.SIGSTOP)
        elif control == "kill":
            signal_group(child, signal.SIGTERM)
        return child

    def __getattr__(self, name: str) -> Any:
        """What ProcessContext offers but a worker cannot (spawn, wait, run, send, recv, shared
        memory, locks...: they live in the kernel) fails the body with a message saying so."""
        from llmunix.process import ProcessContext

        if not name.startswith("_") and hasattr(ProcessContext, name):
            raise self.unavailable(name, "declare the tool remote=False to run it on the llmunix machine")
        raise AttributeError(name)

    # ------------------------------------------------------------------ internals

    def run_func(self, func: Any) -> Any:
        """Run the body; the kill escalation may interrupt it only while it runs."""
        with self._cond:
            self._in_body = True
        try:
            try:
                return super().run_func(func)
            finally:
                self._close_door()
                child = self._child
                if child is not None and child.poll() is None:
                    signal_group(child, signal.SIGKILL)
        except ProcessKilled as exc:
            raise ProcessKilled(str(exc) or self._reason) from None

    def _close_door(self) -> None:
        while True:
            try:
                with self._cond:
                    self._in_body = False
                    if self._injected:
                        drain_async_exception()  # (this is the body's thread)
                return
            except ProcessKilled:  # injected as the body ended
                continue

    def report(self, kind: str, **data: Any) -> None:
        self._worker.log_event(self._topic, {"k": self.key, "t": kind, **data})

    def _steer(self) -> None:
        """Pause (reporting it) until told to run; raise ProcessKilled when told to stop."""
        with self._cond:
            while True:
                if self._control == "kill":
                    raise ProcessKilled(self._reason)
                if self._control == "run":
                    return
                if self._paused_at != self._version:
                    self._paused_at = self._version
                    self.report("paused", v=self._version)
                self._cond.wait(LIVENESS)
                if self._orphaned():
                    raise ProcessKilled("its task was cancelled on the cluster")

    def _liveness(self) -> None:
        self._next_liveness = time.monotonic() + LIVENESS
        if self._orphaned():
            with self._cond:
                self._control, self._reason = "kill", "its task was cancelled on the cluster"
            raise ProcessKilled(self._reason)

    def _orphaned(self) -> bool:
        """The cluster no longer wants this task's result (cancelled, or its client is gone)."""
        ts = self._worker.state.tasks.get(self.key)
        return ts is None or ts.state == "cancelled"

    def apply_control(self, state: dict[str, Any]) -> None:
        """Worker event loop: a new control state from llmunix."""
        with self._cond:
            if state["v"] <= self._version:
                return
            old = self._control
            self._version = state["v"]
            self._control = state["control"]
            self._reason = state.get("reason") or self._reason
            if state.get("ack", 0) > self._ack:
                self._ack, self._ack_version = state["ack"], state.get("ack_version", 0)
            new = self._control
            child = self._child
            self._cond.notify_all()
        if new == old:
            return
        if child is not None and child.poll() is None:
            if new == "pause":
                signal_group(child, signal.SIGSTOP)
            elif new == "run":
                signal_group(child, signal.SIGCONT)
            else:
                signal_tree(child, signal.SIGTERM)
        if new == "kill":
            timer = threading.Timer(self.kill_grace, self._escalate)
            timer.daemon = True
            timer.start()

    def _escalate(self) -> None:
        """The body did not stop within the grace period: as the kernel does on threads."""
        with self._cond:
            if not self._in_body:
                return
            child = self._child
            if child is not None and child.poll() is None:
                signal_tree(child, signal.SIGKILL)
            else:
                self._injected = inject_exception(self._thread, ProcessKilled)


RESULT_INLINE = 16_384  # outputs up to this size (as JSON) go back with the events


def _small(value: Any) -> bool:
    """JSON-native (so it arrives as it left: no tuples, no int keys) and small."""
    if value is None or isinstance(value, bool | int | float | str) and len(str(value)) <= RESULT_INLINE:
        return True
    try:
        text = json.dumps(value)
        return len(text) <= RESULT_INLINE and json.loads(text) == value
    except (TypeError, ValueError):
        return False


class _QuietDeliver(logging.Filter):
    """The worker logs every `Client.run` at INFO; deliveries of control states are routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and isinstance(record.args, tuple) and record.args[0] == "llmunix_deliver")


_quiet = False


def _quiet_worker_log() -> None:
    global _quiet
    if not _quiet:
        _quiet = True
        logging.getLogger("distributed.worker").addFilter(_QuietDeliver())
