"""Where process bodies run: the backend interface, and the default `threads` backend.

The kernel always runs a process on one of its own worker threads (executor.py): that thread is
the process, as far as the scheduler, pause, kill, checkpoints and the store are concerned. A
backend decides where the *body* runs:

* `threads` (the default): the body runs on that thread, in this Python process. Nothing else.
* `dask` (backends/dask.py, the `llmunix[dask]` extra): for tools declared `remote=True`, the
  worker thread becomes a *proxy*. It submits the body to a Dask cluster and, until the body
  ends, relays pause, resume and kill to it and applies what it reports (progress, logs,
  checkpoints) locally, as a subprocess tool's thread does for its child. Tools not declared
  remote still run on the thread.

A backend is chosen once, when the kernel is made (`Kernel(backend=...)`, `--backend`), and
closed by `Kernel.shutdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llmunix.models import LlmunixError

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable, Relay
    from llmunix.process import ProcessContext

BACKENDS = ("threads", "dask")


@dataclass(frozen=True)
class WorkerInfo:
    """One cluster worker, as the scheduler last reported it."""

    address: str
    name: str
    host: str
    nthreads: int
    memory_limit: int | None  # bytes; None: no limit
    memory: int | None  # bytes in use (the worker process)
    cpu: float | None  # percent of one core
    executing: int  # tasks running on it now (anyone's, not only llmunix's)
    resources: Mapping[str, float] = field(default_factory=dict)
    pids: tuple[int, ...] = ()  # llmunix processes of this kernel whose bodies run there

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "name": self.name, "host": self.host, "nthreads": self.nthreads,
                "memory_limit": self.memory_limit, "memory": self.memory, "cpu": self.cpu,
                "executing": self.executing, "resources": dict(self.resources), "processes": list(self.pids)}


@dataclass(frozen=True)
class ClusterInfo:
    """What `cluster` shows: the backend, its scheduler and its workers (an immutable snapshot)."""

    backend: str
    scheduler: str | None = None
    workers: tuple[WorkerInfo, ...] = ()
    waiting: tuple[int, ...] = ()  # processes submitted to the cluster but not started on a worker yet
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "scheduler": self.scheduler,
                "workers": [w.to_dict() for w in self.workers], "waiting": list(self.waiting), "note": self.note}


class Host(Protocol):
    """What a backend needs of the kernel that binds it (not the whole Kernel)."""

    table: ProcessTable  # snapshot fields (the worker a body runs on)
    max_running: int
    threads: int


@runtime_checkable
class Backend(Protocol):
    """Where process bodies run. `distributed` is False for a backend that never takes a body
    away from the kernel's worker thread; the kernel then never calls `run`."""

    name: str
    distributed: bool

    def bind(self, kernel: Host) -> None:
        """Called once by the kernel that will use it, before any process runs."""

    def run(self, ctx: ProcessContext, relay: Relay) -> Any:
        """Run a process's body (its tool is remote) from the process's own worker thread, as its
        proxy through `relay` (lifecycle.Relay: control requests, progress, logs, checkpoints),
        honouring control requests at least every few tens of milliseconds; return its output or
        raise as the body did (ToolError, ProcessKilled, ...)."""

    def cluster(self) -> ClusterInfo:
        """A snapshot of where bodies run (for `cluster`)."""

    def close(self) -> None:
        """Release connections and threads; called by Kernel.shutdown after every process ended."""


class ThreadBackend:
    """The default: process bodies run on the kernel's worker threads (executor.py)."""

    name = "threads"
    distributed = False

    def bind(self, kernel: Host) -> None:
        self._kernel = kernel

    def run(self, ctx: ProcessContext, relay: Relay) -> Any:
        return relay.tool.func(ctx, **relay.params)

    def cluster(self) -> ClusterInfo:
        kernel = getattr(self, "_kernel", None)
        slots = f"{kernel.max_running} slots, {kernel.threads} worker threads now" if kernel is not None else ""
        return ClusterInfo("threads", note=f"process bodies run on this machine ({slots}); start llmunix with "
                                           "--backend dask --scheduler ADDRESS to run them on a Dask cluster")

    def close(self) -> None:
        pass


def make_backend(backend: Backend | str | None = None, *, scheduler: str | None = None,
                 timeout: float = 5.0, adapt: tuple[int, int] | None = None) -> Backend:
    """A backend from a name (`threads`, `dask`) or an instance. `dask` connects to `scheduler`
    (`tcp://host:8786`); without one it starts a local cluster of worker processes, adaptive
    between `adapt` = (minimum, maximum) workers if given."""
    if backend is None or backend == "threads":
        if scheduler:
            raise LlmunixError("a scheduler address only applies to the dask backend (--backend dask)")
        return ThreadBackend()
    if isinstance(backend, str):
        if backend != "dask":
            raise LlmunixError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        try:
            from llmunix.backends.dask import DaskBackend
        except ImportError as exc:
            raise LlmunixError(f"the dask backend needs Dask distributed ({exc}); "
                               'install it with: pip install "llmunix[dask]"') from None
        return DaskBackend(scheduler, timeout=timeout, adapt=adapt)
    if not isinstance(backend, Backend):
        raise LlmunixError(f"not a backend: {backend!r}")
    return backend


__all__ = ["BACKENDS", "Backend", "ClusterInfo", "Host", "ThreadBackend", "WorkerInfo", "make_backend"]
