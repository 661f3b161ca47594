"""Isolated processes: a Python tool's body in a worker OS process of its own.

Why. A thread shares llmunix's heap and fate: its memory cannot be told apart, a pause or kill
waits for its next control point (never comes while it is stuck in C code), and `os._exit`, a
segfault or the OOM killer takes the whole shell down. An isolated body runs in a worker OS
process instead: `ps` shows its true memory (RSS and USS), CPU and I/O; pause is SIGSTOP of its
process group (frozen even inside C code), resume SIGCONT, kill SIGTERM then SIGKILL, priority is
its nice value; `--memory` and `--cpu-time` limit it; and when it dies, only its process fails
("worker exited with code 3", "killed by signal 9 (out of memory?)").

How. The process keeps its PID, states, events, priority, dependencies and retries: its worker
thread in llmunix becomes the body's *proxy* (`Isolation.run`, through `lifecycle.Relay`, the
same door the Dask backend uses). The worker is attached to the process as its subprocess, so the
table's own paths signal it (`pause_locked`, `leave_slot_locked`, `kill_locked`, `renice_locked`)
and the monitor measures its tree. The body gets a `WorkerContext`: ProcessContext's API, each
call sent over a Unix socket to the proxy, which carries it out with the process's real `ctx` on
the process's own thread — so spawn, wait, messages, locks and the blackboard behave exactly as
for a thread; shared buffers are mapped by the worker itself (true shared memory).

Cost. Workers come from a fork server, the *pool process* (`WorkerPool`): started once, it
imports llmunix and the user's tool modules, then forks one worker per body (a fork of an
imported interpreter takes about a millisecond), so an isolated no-op costs a few milliseconds
more than a thread one (bench/isolation.py). A worker runs one body and exits: nothing of one run
leaks into the next.

Nothing left behind: the pool process and every worker are recorded (reaper.py) before a body
runs; each worker dies with the pool process (a parent-death signal), and the pool process with
llmunix (its socket to llmunix closes). Workflow and agent bodies (they only wait) stay threads.

Messages on a worker's socket, framed pickles (`Channel`):
  worker -> proxy   ("r", REPORT)                a one-way report: progress, log, state (relayed.py),
                                                 subprocess
                    ("c", ID, NAME, ARGS, KWARGS) call ctx.NAME (NAME "." REF METHOD: a handle's)
                    ("end", HOW, ...)            the body ended: ok, tool, killed, error
  proxy -> worker   SPEC                         once: what to run (sent after it is recorded)
                    ("ok"|"raise", ID, VALUE)    the answer to call ID
  llmunix -> worker ("q", KIND, ARGS) + a socket  a question (`Isolation.ask`: `debug PID memory`,
                                                 `profile --memory`), from any thread of llmunix;
                                                 the answer, ("ok"|"error", VALUE), comes back on
                                                 the socket sent with it, not through the proxy
                                                 (which may be busy carrying out a ctx call)

In the worker a reader thread owns the socket: replies go to the body's main thread through a
queue, questions are answered on the reader thread (`QUESTIONS`), even while the body computes
or waits for a reply. Only a stopped (paused) worker cannot answer.
"""

from __future__ import annotations

import contextlib
import copyreg
import importlib
import inspect
import io
import logging
import math
import os
import pickle
import queue
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from llmunix.lifecycle import Hooks
from llmunix.models import (
    EXIT_CPU_LIMIT,
    EXIT_MEMORY_LIMIT,
    LlmunixError,
    Phase,
    ProcessKilled,
    ProcessKind,
    ToolError,
    format_pid,
    parse_duration,
)
from llmunix.relayed import RelayedContext, apply_report, import_tool, load_module_file, tool_ref

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable, Relay
    from llmunix.process import Process, ProcessContext
    from llmunix.reaper import ChildRecord
    from llmunix.tools.registry import Tool

log = logging.getLogger("llmunix.isolation")

ISOLATIONS = ("thread", "process")
POLL = 0.05  # seconds between the proxy's control points while the worker runs
ASK_TIMEOUT = 10.0  # seconds llmunix waits for a worker's answer to a question
START_TIMEOUT = 30.0  # the pool process imports llmunix and the user's tools first
EXIT_WAIT = 5.0  # after its socket closes, seconds to wait for the worker's exit status


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one process's body runs, and its limits (`spawn(isolate=..., memory=..., cpu_time=...,
    io_rate=...)`; the I/O rate is held by iolimit.py)."""

    isolated: bool
    memory_mb: float | None = None
    cpu_time: float | None = None
    io_rate: float | None = None  # bytes per second


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNIT_MB = {"": 1.0, "k": 1 / 1000, "m": 1.0, "g": 1000.0, "t": 1e6,
            "ki": 1024 / 1e6, "mi": 1024**2 / 1e6, "gi": 1024**3 / 1e6, "ti": 1024**4 / 1e6}


def size_mb(text: str) -> float | None:
    """Megabytes from `500MB`, `2GB`, `1.5G`, `512MiB`, `64kB` or a plain number of MB; None if
    it is not a size."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower().rstrip("b") if m else None
    if m is None or unit not in _UNIT_MB:
        return None
    return float(m.group(1)) * _UNIT_MB[unit]


def parse_memory(value: float | str | None) -> float | None:
    """Megabytes from `500MB`, `2GB`, `1.5G`, `512MiB` or a plain number of MB; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        mb = float(value)
    else:
        found = size_mb(str(value))
        if found is None:
            raise LlmunixError(f"bad memory limit {value!r}; give a size such as 500MB or 2GB")
        mb = found
    if not (math.isfinite(mb) and 1 <= mb <= 1e9):
        raise LlmunixError(f"bad memory limit {value!r}; give a size from 1MB to 1PB")
    return mb


def parse_cpu_time(value: float | str | None) -> float | None:
    """Seconds of CPU time from `60s`, `5m`, `1h` or a plain number of seconds."""
    if value is None:
        return None
    seconds = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if seconds is None:
        try:
            seconds = parse_duration(str(value))
        except (LlmunixError, ValueError):
            raise LlmunixError(f"bad CPU time limit {value!r}; give a duration such as 60s or 5m") from None
    if not (math.isfinite(seconds) and 1 <= seconds <= 365 * 86400):
        raise LlmunixError(f"bad CPU time limit {value!r}; give from 1s to 365 days")
    return seconds


def parse_io_rate(value: float | str | None) -> float | None:
    """Bytes per second from `10MB/s`, `500kB/s`, `1GiB/s` (the `/s` may be left out) or a plain
    number of bytes per second; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    else:
        text = str(value).strip()
        for suffix in ("/s", "/sec", "ps"):
            if text.lower().endswith(suffix):
                text = text[: -len(suffix)]
                break
        mb = size_mb(text)
        if mb is None:
            raise LlmunixError(f"bad I/O rate {value!r}; give bytes per second such as 10MB/s or 500kB/s")
        rate = mb * 1e6 if not text[-1:].isdigit() else float(text)  # (a bare number: bytes per second)
    if not (math.isfinite(rate) and 1000 <= rate <= 1e13):
        raise LlmunixError(f"bad I/O rate {value!r}; give from 1kB/s to 10TB/s")
    return rate


def fmt_rate(rate: float) -> str:
    """`5 MB/s`, `512 kB/s`, `1.5 GB/s`."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if rate >= size:
            value = rate / size
            return f"{value:.{0 if value >= 100 or value.is_integer() else 1}f} {unit}/s"
    return f"{rate:.0f} B/s"


def check_isolation(value: str | None, what: str = "isolation") -> str | None:
    if value is not None and value not in ISOLATIONS:
        raise LlmunixError(f"{what} must be thread or process, not {value!r}")
    return value


def fmt_mb(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 10_000 else f"{mb:.0f} MB"


# ---------------------------------------------------------------------- framing (both sides)


def _mappingproxy(d: dict[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(d)


class _Pickler(pickle.Pickler):
    # Snapshots (ProcessInfo) hold read-only mappings, which pickle does not know.
    dispatch_table = {**copyreg.dispatch_table, MappingProxyType: lambda m: (_mappingproxy, (dict(m),))}


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


class Channel:
    """Length-prefixed pickles over a Unix stream socket; file descriptors ride along on
    request (the pool process's socket). Reading keeps partial frames, so a read interrupted by
    an exception (a kill) loses nothing; writes are whole frames under a lock."""

    HEADER = struct.Struct("!I")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._fds: list[int] = []
        self._wlock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, obj: Any, fds: tuple[int, ...] = ()) -> None:
        data = _dumps(obj)
        frame = self.HEADER.pack(len(data)) + data
        with self._wlock:
            if fds:
                sent = socket.send_fds(self.sock, [frame], list(fds))
                if sent < len(frame):
                    self.sock.sendall(frame[sent:])
            else:
                self.sock.sendall(frame)

    def _frame(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        (n,) = self.HEADER.unpack_from(self._buf)
        if len(self._buf) < 4 + n:
            return None
        data = bytes(self._buf[4:4 + n])
        del self._buf[:4 + n]
        return data

    def recv(self, with_fds: bool = False) -> Any:
        """The next object (EOFError when the other side has gone)."""
        while True:
            frame = self._frame()
            if frame is not None:
                return pickle.loads(frame)  # noqa: S301 - our own child, over a private socket pair
            if with_fds:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 4)
                self._fds.extend(fds)
            else:
                data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError
            self._buf += data

    def take_fd(self) -> int:
        return self._fds.pop(0)

    def buffered(self) -> bool:
        """A whole frame is here already (select would not say so)."""
        return len(self._buf) >= 4 and len(self._buf) >= 4 + self.HEADER.unpack_from(self._buf)[0]

    def ready(self, timeout: float | None) -> bool:
        """A whole frame is buffered, or the socket is readable (data or end of file)."""
        if self.buffered():
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], timeout)
        except (InterruptedError, ValueError):
            return False
        return bool(r)

    def close(self) -> None:
        # shutdown first: a thread blocked reading this socket wakes up, and the other side sees
        # the end of file at once (a bare close waits for that reader's system call to return).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------------- values that cross the socket


@dataclass(frozen=True, slots=True)
class _Ref:
    """A handle that stays with the proxy (a lock, the blackboard view, a context manager):
    the worker calls its methods through the socket."""

    id: int
    module: str
    cls: str


@dataclass(frozen=True, slots=True)
class _Buffer:
    name: str
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class _Msg:
    fields: tuple[Any, ...]  # Message's fields, in order, without its ack callback
    ack: int | None  # the ref of its ack, for a persistent message


@dataclass(frozen=True, slots=True)
class _Raised:
    how: str  # "tool", "killed", "error"
    text: str
    exit_code: int = 1
    exc: Any = None  # the exception itself, when it survives a pickle round trip


def _raised(exc: BaseException) -> _Raised:
    if isinstance(exc, ProcessKilled):
        return _Raised("killed", str(exc))
    if isinstance(exc, ToolError):
        return _Raised("tool", str(exc), exc.exit_code)
    from llmunix.lifecycle import describe_exception

    try:
        copy = pickle.loads(_dumps(exc))  # noqa: S301 - our own bytes
        same = type(copy) is type(exc)
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as its text
        same = False
    return _Raised("error", describe_exception(exc), 1, exc if same else None)


def _raise(r: _Raised) -> None:
    if r.how == "killed":
        raise ProcessKilled(r.text)
    if r.how == "tool":
        raise ToolError(r.text, exit_code=r.exit_code)
    if r.exc is not None:
        raise r.exc
    raise ToolError(r.text, exit_code=r.exit_code)


# ---------------------------------------------------------------------- llmunix side: the pool


class WorkerHandle:
    """A worker OS process, as the process table sees its subprocess (`Popen`'s `pid`, `args`,
    `poll()`, `wait()`); its exit status comes from the pool process, its parent."""

    isolated = True

    def __init__(self, pid: int, args: str) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._ended = threading.Event()
        self.on_end: Any = None  # called with the exit status (the pool's reader thread)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def ended(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()
        if self.on_end is not None:
            self.on_end(returncode)


class Worker:
    """One started worker: its handle, its socket, and the read end of its output (fd 1 and 2)."""

    __slots__ = ("chan", "handle", "output")

    def __init__(self, handle: WorkerHandle, chan: Channel, output: int) -> None:
        self.handle = handle
        self.chan = chan
        self.output = output

    def close(self) -> None:
        self.chan.close()
        with contextlib.suppress(OSError):
            os.close(self.output)


def _waiting(ready: Any, check: Any, failure: str) -> None:
    """Wait for `ready(timeout)` in POLL steps, calling `check()` between them."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready(POLL):
        check()
        if time.monotonic() > deadline:
            raise ToolError(f"{failure} within {START_TIMEOUT:g}s")


class WorkerPool:
    """The pool process (a fork server) and the workers it forks. Thread-safe; started on first
    use (or `warm()`), restarted if it dies."""

    def __init__(self, modules: Any = None, config: Any = None, record: ChildRecord | None = None) -> None:
        self._modules = modules or (lambda: [])  # () -> [(module, file)]: the user's tool modules
        self._config = config or (lambda: None)  # () -> the configuration tools see (a dict)
        self.record = record
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: Channel | None = None
        self._ready = threading.Event()
        self._failure = ""
        self._workers: dict[int, WorkerHandle] = {}  # OS pid -> handle
        self._early: dict[int, int] = {}  # OS pid -> exit status reported before its hello was read
        self.started_workers = 0
        self.closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def warm(self) -> None:
        """Start the pool process now, in the background (the first isolated process then does
        not wait for its imports)."""
        with self._lock:
            self._ensure_locked()

    def start(self, check: Any = None) -> Worker:
        """A worker, ready for its spec: the pool process hands over its idle one (and forks the
        next), which says hello on its socket. `check()` is called while waiting (the process's
        control point: a kill raises there); if it raises, closing the socket ends the worker
        (it exits when its socket does)."""
        check = check or (lambda: None)
        with self._lock:
            ctl = self._ensure_locked()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        chan = Channel(mine)
        try:
            try:
                _waiting(self._ready.wait, check, "the isolation pool process did not start")
                if self._failure:
                    raise ToolError(self._failure)
                ctl.send(("fork",), fds=(theirs.fileno(), out_w))
            finally:
                theirs.close()
                os.close(out_w)
            _waiting(chan.ready, check, "the isolation pool process did not hand over a worker")
            _hello, pid = chan.recv()
        except BaseException as exc:
            chan.close()
            os.close(out_r)
            if isinstance(exc, OSError | EOFError):
                raise ToolError(self._failure or f"the isolation pool process has gone ({exc or 'closed'}); the "
                                "next isolated process starts another") from None
            raise
        with self._lock:
            handle = self._workers[pid] = WorkerHandle(pid, f"isolated worker (forked from the pool process "
                                                            f"{self.pid})")
            early = self._early.pop(pid, None)
        if early is not None:
            handle.ended(early)
        self.started_workers += 1
        return Worker(handle, chan, out_r)  # (recorded by Relay.attach before it is given its body)

    def _ensure_locked(self) -> Channel:
        if self.closed:
            raise ToolError("llmunix is shutting down; no new isolated workers")
        if self._proc is not None and self._proc.poll() is None and self._ctl is not None:
            return self._ctl
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        boot = (f"import sys; sys.path[:] = {sys.path!r}; "
                f"from llmunix.isolation import pool_main; pool_main({theirs.fileno()})")
        self._ready.clear()
        self._failure = ""
        try:
            # Its own session: the terminal's Ctrl-C is for llmunix, not for the pool. Its stdout and
            # stderr are llmunix's (a tool module that prints at import); workers send theirs to the log.
            self._proc = subprocess.Popen([sys.executable, "-c", boot], pass_fds=(theirs.fileno(),),  # noqa: S603
                                          stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError as exc:
            mine.close()
            raise ToolError(f"cannot start the isolation pool process: {exc}") from None
        finally:
            theirs.close()
        if self.record is not None:
            self.record.adopt(self._proc.pid, "isolation pool")
        self._ctl = Channel(mine)
        self._ctl.send({"modules": list(self._modules()), "config": self._config()})
        threading.Thread(target=self._read, args=(self._ctl, self._proc), name="llmunix-isolation-pool",
                         daemon=True).start()
        return self._ctl

    def _read(self, ctl: Channel, proc: subprocess.Popen[bytes]) -> None:
        """The pool process's answers: ready, forked, exited."""
        try:
            while True:
                msg = ctl.recv()
                kind = msg[0]
                if kind == "ready":
                    self._failure = msg[1] if len(msg) > 1 else ""
                    self._ready.set()
                elif kind == "exited":
                    _, pid, code = msg
                    with self._lock:
                        handle = self._workers.pop(pid, None)
                        if handle is None:  # its hello is not read yet, or never will be
                            self._early[pid] = code
                            if len(self._early) > 256:
                                del self._early[next(iter(self._early))]
                    if handle is not None:
                        handle.ended(code)
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a bad frame: the pool process is restarted on next use
            log.exception("isolation pool channel failed")
        with self._lock:
            if self._proc is proc:
                self._proc, self._ctl = None, None
            code = proc.poll()
            self._failure = self._failure or (f"the isolation pool process ended (exit status {code})"
                                              if code is not None else "the isolation pool process stopped answering")
            self._ready.set()
            handles = list(self._workers.values())
            self._workers.clear()
        for h in handles:  # workers die with the pool process (a parent-death signal)
            h.ended(-signal.SIGKILL)
        ctl.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def close(self) -> None:
        """Stop the pool process (its workers die with it)."""
        with self._lock:
            self.closed = True
            proc, ctl = self._proc, self._ctl
        if ctl is not None:
            ctl.close()  # end of file: it kills its workers and exits
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# ---------------------------------------------------------------------- llmunix side: the component


class Isolation(Hooks):
    """Which processes run isolated, with what limits; the proxy that runs each; the pool.

    The choice, strongest first: `spawn(isolate=...)` (`run --isolate`); a memory or CPU-time
    limit on a Python tool (it needs a process of its own); `[tools.NAME] isolation` in the
    configuration; the tool's own `@tool(isolation=...)`; then `isolation` (the default for
    users' Python tools; built-in tools stay threads unless asked)."""

    def __init__(self, table: ProcessTable, *, default: str = "thread",
                 tools: Mapping[str, Mapping[str, Any]] | None = None, record: ChildRecord | None = None,
                 modules: Any = None, config: Any = None) -> None:
        self.table = table
        self.default = check_isolation(default) or "thread"
        self.tools = {name: dict(v) for name, v in (tools or {}).items()}
        self.pool = WorkerPool(modules or _user_modules, config, record)
        self._placed: dict[int, Placement] = {}  # pid -> placement, for processes isolated or limited
        self._running: dict[int, Worker] = {}  # pid -> its worker, while its body runs (questions go there)
        self._worker_started = threading.Condition()  # (a question waits for a worker still starting)

    # ------------------------------------------------------------------ choosing (before a process exists)

    def placement(self, t: Tool, isolate: bool | None = None, memory: float | str | None = None,
                  cpu_time: float | str | None = None, io_rate: float | str | None = None) -> Placement | None:
        """Where a new process of tool `t` runs, and its limits; None for a plain thread. Raises
        LlmunixError (one line) for what cannot be: an agent isolated, a tool defined in a script."""
        settings = self.tools.get(t.name, {})
        mem = parse_memory(memory if memory is not None else settings.get("memory"))
        cpu = parse_cpu_time(cpu_time if cpu_time is not None else settings.get("cpu_time"))
        rate = parse_io_rate(io_rate if io_rate is not None else settings.get("io_rate"))
        limited = mem is not None or cpu is not None or rate is not None
        if isolate is not None:
            isolated, asked = bool(isolate), bool(isolate)
        elif limited and not t.subprocess:
            isolated, asked = True, True  # a limit on Python code needs a process of its own
        elif settings.get("isolation") is not None:
            isolated, asked = settings["isolation"] == "process", settings["isolation"] == "process"
        elif t.isolation is not None:
            isolated, asked = t.isolation == "process", t.isolation == "process"
        else:
            isolated = self.default == "process" and t.source != "builtin" and not t.subprocess
            asked = False
        if isolated:
            why = self._cannot(t)
            if why is not None:
                if asked:
                    raise LlmunixError(f"tool {t.name!r} cannot run isolated: {why}")
                isolated = False  # the default applies where it can
        if not isolated and not limited:
            return None
        if not isolated and not t.subprocess:
            raise LlmunixError(f"--memory, --cpu-time and --io-rate limit an isolated or subprocess tool; tool "
                               f"{t.name!r} runs as a thread here")
        return Placement(isolated, mem, cpu, rate)

    def tool_isolation(self, t: Tool) -> str:
        """Where a plain run of `t` goes: "process" or "thread" (`tools` shows it)."""
        try:
            p = self.placement(t)
        except LlmunixError:
            return "thread"
        return "process" if p is not None and p.isolated else "thread"

    @staticmethod
    def _cannot(t: Tool) -> str | None:
        if t.kind is not ProcessKind.TOOL:
            return f"{t.kind} bodies run as threads (they only wait); isolate the tools they run"
        try:
            tool_ref(t.func, "isolated", "run it as a thread")
        except ToolError as exc:
            return str(exc).split(": ", 1)[-1]
        return None

    # ------------------------------------------------------------------ hooks

    def on_spawn(self, proc: Process, options: Mapping[str, Any]) -> None:
        """`Kernel.spawn` chose (`placement`); a PID run again (recover, rollback, workflow retry)
        goes where its tool and the configuration say (a `run --isolate` is not remembered)."""
        if "placement" in options:
            placement = options["placement"]
        else:
            try:
                placement = self.placement(proc.tool)
            except LlmunixError:
                placement = None
        if placement is not None:
            self._placed[proc.pid] = placement
        else:
            self._placed.pop(proc.pid, None)

    def on_end(self, proc: Process) -> None:
        self._placed.pop(proc.pid, None)

    def wants(self, proc: Process) -> bool:
        """Does this process's body run in an isolated worker? (The table asks, lock not held.)"""
        p = self._placed.get(proc.pid)
        return p is not None and p.isolated

    def placed(self, pid: int) -> Placement | None:
        return self._placed.get(pid)

    # ------------------------------------------------------------------ limits (monitor thread)

    def check_limits(self) -> None:
        """After each monitor round: stop a process whose tree passed its memory or CPU-time
        limit; it ends Failed with the reason, and its retry policy applies."""
        table = self.table
        with table.lock:
            for pid, p in list(self._placed.items()):
                if p.memory_mb is None and p.cpu_time is None:
                    continue
                proc = table.get(pid)
                if proc is None or proc.phase is Phase.DONE or not proc.samples or proc.subprocess is None:
                    continue
                s = proc.samples[-1]
                if p.memory_mb is not None and s.memory_mb is not None and s.memory_mb > p.memory_mb:
                    table.kill_tree_locked(proc, f"exceeded its memory limit ({fmt_mb(s.memory_mb)} > "
                                                 f"{fmt_mb(p.memory_mb)})", code=EXIT_MEMORY_LIMIT)
                elif p.cpu_time is not None and s.cpu_seconds is not None and s.cpu_seconds > p.cpu_time:
                    table.kill_tree_locked(proc, f"exceeded its CPU time limit ({s.cpu_seconds:.0f}s > "
                                                 f"{p.cpu_time:g}s)", code=EXIT_CPU_LIMIT)

    # ------------------------------------------------------------------ the proxy (the process's own thread)

    def run(self, ctx: ProcessContext, relay: Relay) -> Any:
        """Run the process's body in a worker and be its proxy until it ends."""
        placement = self._placed.get(relay.pid) or Placement(True)
        spec = {"pid": relay.pid, "ref": tool_ref(relay.tool.func, "isolated", "run it as a thread"),
                "params": relay.params, "restored": relay.restored, "cwd": relay.cwd,
                "priority": relay.priority.label, "kill_grace": relay.kill_grace, "parent": ctx.parent,
                "cpu_time": placement.cpu_time}
        worker = self.pool.start(relay.check)
        try:
            relay.attach(worker.handle, "isolated worker")
            try:
                worker.chan.send(spec)
            except OSError:
                pass  # it died already: its end says why
            with self._worker_started:
                self._running[relay.pid] = worker
                self._worker_started.notify_all()
            return _Proxy(ctx, relay, worker).serve()
        finally:
            self._running.pop(relay.pid, None)
            worker.close()

    def ask(self, pid: int, kind: str, args: Any = None, timeout: float = ASK_TIMEOUT) -> Any:
        """Ask the isolated worker of process `pid` a question (`QUESTIONS`: "memory") and return
        its answer. Any thread; the body goes on meanwhile. Raises LlmunixError when the process
        has no worker running, the worker is stopped (paused) or does not answer in `timeout`."""
        worker = self._worker_of(pid, timeout)
        with self.table.lock:
            proc = self.table.get(pid)
            paused = proc is not None and proc.phase in (Phase.PAUSED, Phase.PREEMPTED)
        if paused:
            raise LlmunixError(f"process {format_pid(pid)} is paused: SIGSTOP holds its worker, which cannot answer; "
                               "resume it first")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        chan = Channel(mine)
        try:
            try:
                worker.chan.send(("q", kind, args), fds=(theirs.fileno(),))
            except OSError:
                raise LlmunixError(f"process {format_pid(pid)}'s isolated worker has gone") from None
            finally:
                theirs.close()
            if not chan.ready(timeout):
                raise LlmunixError(f"process {format_pid(pid)}'s isolated worker did not answer within {timeout:g}s"
                                   + (" (it is stopped: paused, or held by its --io-rate)"
                                      if _stopped(worker.handle.pid) else ""))
            try:
                status, value = chan.recv()
            except (EOFError, OSError):
                raise LlmunixError(f"process {format_pid(pid)}'s isolated worker ended before it answered") from None
        finally:
            chan.close()
        if status != "ok":
            raise LlmunixError(value)
        return value

    def _worker_of(self, pid: int, timeout: float) -> Worker:
        """Process `pid`'s running worker; one still starting (its body has begun: the worker is
        being handed over, or the pool itself started, the session's first isolated run) is
        waited for up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            worker = self._running.get(pid)
            if worker is not None:
                return worker
            with self.table.lock:
                proc = self.table.get(pid)
                starting = proc is not None and proc.phase is Phase.RUNNING and proc.has_thread
            left = deadline - time.monotonic()
            if not starting or left <= 0:
                raise LlmunixError(f"process {format_pid(pid)} has no isolated worker running" +
                                   (f" (still starting after {timeout:g}s)" if starting else ""))
            with self._worker_started:
                if pid not in self._running:
                    self._worker_started.wait(min(left, 0.1))

    def close(self) -> None:
        self.pool.close()


def _user_modules() -> list[tuple[str, str | None]]:
    """The modules of registered tools that are not llmunix's own (the pool process imports
    them once, so that a worker finds its tool already there)."""
    from llmunix.tools.registry import REGISTRY

    out: dict[str, str | None] = {}
    for t in REGISTRY.every_tool():
        module = getattr(t.func, "__module__", None)
        if module and not module.startswith("llmunix.") and module != "__main__":
            out[module] = getattr(sys.modules.get(module), "__file__", None)
    return list(out.items())


class _Proxy:
    """The process's side of one isolated run: applies reports, answers calls with the real
    `ctx`, reaches a control point every POLL seconds, and turns the worker's end into the body's."""

    def __init__(self, ctx: ProcessContext, relay: Relay, worker: Worker) -> None:
        self.ctx = ctx
        self.relay = relay
        self.worker = worker
        self.refs: dict[int, Any] = {}
        self.killed: ProcessKilled | None = None
        self._partial = b""  # the last line of output, until its newline comes
        self.in_call = False  # carrying out a ctx call for the body (it may block: sleep, recv, wait)
        self.ended = False  # the body's end arrived
        worker.handle.on_end = self._worker_ended

    def serve(self) -> Any:
        chan, relay, out = self.worker.chan, self.relay, self.worker.output
        os.set_blocking(out, False)
        watch = [chan.sock, out]
        deadline = float("inf")
        while True:
            if chan.buffered():
                readable = [chan.sock]
            else:
                try:
                    readable = select.select(watch, [], [], POLL)[0]
                except InterruptedError:
                    readable = []
            if out in readable and not self._output():
                watch.remove(out)
            if chan.sock in readable:
                try:
                    msg = chan.recv()
                except (EOFError, OSError):
                    return self._gone()
                except Exception as exc:  # noqa: BLE001 - e.g. an output whose class llmunix cannot import
                    raise ToolError(f"a message from the isolated worker could not be read: {exc}") from None
                tag = msg[0]
                if tag == "r":
                    self._report(msg[1])
                elif tag == "c":
                    self._call(msg)
                elif tag == "end":
                    self._drain()
                    return self._end(msg)
            if self.killed is None:
                try:
                    relay.check()  # pause, preemption and kill (their signals reach the worker from the table)
                except ProcessKilled as exc:
                    self.killed = exc
                    deadline = time.monotonic() + 2 * relay.kill_grace + EXIT_WAIT
            elif time.monotonic() > deadline:  # the table's escalation SIGKILLs it; this is a backstop
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.worker.handle.pid, signal.SIGKILL)
                deadline = float("inf")

    def _output(self) -> bool:
        """Read what the worker printed; each whole line goes to the process log. False at the
        end of it."""
        try:
            data = os.read(self.worker.output, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            if self._partial:
                self.relay.log(self._partial.decode("utf-8", "surrogateescape"))
                self._partial = b""
            return False
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self.relay.log(line.decode("utf-8", "surrogateescape"))
        return True

    def _drain(self) -> None:
        """The body has ended (and closed its output first): take what is left in the pipe."""
        while True:
            try:
                data = os.read(self.worker.output, 1 << 16)
            except BlockingIOError:
                data = b""
            except OSError:
                data = b""
            if not data:
                break
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                self.relay.log(line.decode("utf-8", "surrogateescape"))
        if self._partial:
            self.relay.log(self._partial.decode("utf-8", "surrogateescape"))
            self._partial = b""

    def _worker_ended(self, code: int) -> None:
        """The pool's reader thread: the worker has exited. If the proxy is blocked in a call for
        it (a long ctx.sleep or recv), nothing would notice until the call returns: stop it."""
        if self.in_call and not self.ended:
            self.relay.fail(death_reason(code))

    def _report(self, msg: Mapping[str, Any]) -> None:
        if apply_report(self.relay, msg):
            return
        if msg.get("t") == "subprocess":
            self.relay.note("subprocess", f"pid {msg['os_pid']} (started by the isolated worker)")

    def _call(self, msg: tuple[Any, ...]) -> None:
        _, call_id, name, args, kwargs = msg
        self.in_call = True
        try:
            if self.killed is not None:
                raise ProcessKilled(str(self.killed))
            if name.startswith("."):  # a handle's method: ".REF METHOD"
                ref, method = name[1:].split(" ", 1)
                target = self.refs[int(ref)]
                if method == "__getattr__":
                    value = getattr(target, args[0])
                else:
                    value = getattr(target, method)(*args, **kwargs)
            elif name == "__getattr__":
                value = getattr(self.ctx, args[0])
            elif name == "checkpoint":
                value = self.relay.checkpoint(args[0])  # already JSON, checked by the worker
            else:
                value = getattr(self.ctx, name)(*args, **kwargs)
            reply: tuple[Any, ...] = ("ok", call_id, self._encode(value))
        except ProcessKilled as exc:
            self.killed = self.killed or exc
            reply = ("raise", call_id, _raised(exc))
        except BaseException as exc:  # noqa: BLE001 - it is the body's exception, raised there
            reply = ("raise", call_id, _raised(exc))
        finally:
            self.in_call = False
        try:
            self.worker.chan.send(reply)
        except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
            if isinstance(exc, OSError):
                return  # it has gone: its end says why
            self.worker.chan.send(("raise", call_id, _Raised(
                "tool", f"ctx.{name} returned a {type(reply[2]).__name__} that cannot be sent to an isolated "
                        f"process: {exc}")))

    def _encode(self, value: Any) -> Any:
        from llmunix.ipc.handles import SharedView, _Handle
        from llmunix.ipc.messages import Message
        from llmunix.ipc.shared import SharedBuffer

        if value is None or isinstance(value, bool | int | float | str | bytes):
            return value
        if isinstance(value, SharedBuffer):
            return _Buffer(value.name, value.path, value.size)
        if isinstance(value, Message):
            ack = self._ref(value.ack) if value.persistent else None
            return _Msg((value.id, value.sender, value.type, value.body, value.topic, value.sent,
                         value.persistent, value.sensitive, value.deliveries), ack)
        if isinstance(value, _Handle | SharedView) or hasattr(value, "__enter__"):
            return self._ref(value)
        return value

    def _ref(self, obj: Any) -> _Ref:
        ref = _Ref(len(self.refs) + 1, type(obj).__module__, type(obj).__qualname__)
        self.refs[ref.id] = obj
        return ref

    def _end(self, msg: tuple[Any, ...]) -> Any:
        self.ended = True
        # Not waiting for its exit status: it exits now, and the table SIGKILLs what is left of
        # its group (background children) as the process ends.
        if msg[1] == "ok":
            return msg[2]
        _raise(msg[2])

    def _reap(self) -> int | None:
        try:
            return self.worker.handle.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return None

    def _gone(self) -> Any:
        """The socket closed without an end: the worker died. Say how."""
        code = self._reap()
        self._drain()
        if self.killed is not None or self.relay.kill_requested:
            raise ProcessKilled(self.relay.kill_reason or str(self.killed))
        if code is None:
            raise ToolError("the isolated worker stopped answering")
        raise ToolError(death_reason(code), exit_code=code if code > 0 else 1 if code == 0 else 128 - code)


def _stopped(os_pid: int) -> bool:
    """Is this OS process stopped (SIGSTOP)?"""
    try:
        with open(f"/proc/{os_pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"T"
    except (OSError, IndexError):
        return False


def death_reason(code: int) -> str:
    """Why a worker ended without its body's end: `worker exited with code 3`, `killed by signal
    9 (out of memory?)` — nobody in llmunix sent that SIGKILL, and the OOM killer sends it."""
    if code >= 0:
        return f"worker exited with code {code}"
    sig = -code
    if sig == signal.SIGKILL:
        why = "out of memory?"
    elif sig == signal.SIGXCPU:
        why = "its CPU time limit"
    else:
        try:
            why = signal.Signals(sig).name
        except ValueError:
            why = "unknown signal"
    return f"killed by signal {sig} ({why})"


# ---------------------------------------------------------------------- far side: the pool process


def pool_main(fd: int) -> None:
    """The pool process: import what tools need, then hand a worker to each request. One idle
    worker waits, forked and set up ahead of time, so a request costs a message, not a fork.
    Ends (with its workers) when llmunix's end of the socket closes."""
    ctl = Channel(socket.socket(fileno=fd))
    try:
        init = ctl.recv()
    except EOFError:
        os._exit(0)
    failure = _prepare(init)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import gc

    gc.collect()
    gc.freeze()  # the imported objects stay shared with every worker (no copy-on-write of their headers)
    try:
        ctl.send(("ready", failure))
    except OSError:
        os._exit(0)  # llmunix ended while this was importing: nobody to serve
    own = (ctl.fileno(), wake_r, wake_w)
    handed: set[int] = set()  # workers given a body (their exits are reported)
    idle: tuple[int, socket.socket] | None = None if failure else _fork_idle(own)
    while True:
        try:
            readable, _, _ = select.select([ctl.sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in handed:
                handed.discard(pid)
                try:
                    ctl.send(("exited", pid, os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass  # llmunix has gone: the read below sees it
            elif idle is not None and idle[0] == pid:  # the idle one died (killed by hand): fork another
                idle[1].close()
                idle = None
        if ctl.sock not in readable:
            continue
        while True:
            try:
                msg = ctl.recv(with_fds=True)
            except (EOFError, OSError):
                for pid in (*handed, *([idle[0]] if idle else [])):  # llmunix has gone: so do they
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                os._exit(0)
            if msg[0] == "fork":
                fds = [ctl.take_fd(), ctl.take_fd()]  # its socket to llmunix, its output pipe
                if idle is None:
                    idle = _fork_idle(own)
                pid, sock = idle
                try:
                    socket.send_fds(sock, [b"go"], fds)
                except OSError:  # it died just now: the socket's end of file tells llmunix
                    pass
                sock.close()
                for f in fds:
                    os.close(f)
                handed.add(pid)
                idle = _fork_idle(own)  # the next one, while llmunix talks to this one
            if not ctl.ready(0):
                break


def _fork_idle(close: tuple[int, ...]) -> tuple[int, socket.socket]:
    """Fork a worker that sets itself up and waits for its sockets on a socket of its own."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        mine.close()
        for f in close:
            os.close(f)
        _worker_main(theirs)  # never returns
    theirs.close()
    return pid, mine


def _prepare(init: Mapping[str, Any]) -> str:
    """Import llmunix's tools and the user's modules, and take on llmunix's configuration."""
    try:
        import llmunix.kernel  # noqa: F401 - what tools import anyway
        import llmunix.tools.builtin  # noqa: F401
        from llmunix.config import Config, activate

        # What the kernel imports only when first used (start-up laziness): here, before the
        # fork, so each worker shares it instead of importing its own copy (its own pages).
        for name in ("psutil", "hashlib", "llmunix.ipc.messages", "llmunix.relayed", "llmunix.tools.loader",
                     "pydantic"):
            dir(importlib.import_module(name))  # (dir() runs a lazily bound module's code)

        if init.get("config") is not None:
            activate(Config.model_validate(init["config"]))
    except Exception as exc:  # noqa: BLE001 - reported to every isolated process
        return f"the isolation pool process could not import llmunix: {exc}"
    for module, path in init.get("modules", ()):
        try:
            if module in sys.modules:
                continue
            if path and module.startswith("llmunix_user_tools."):
                load_module_file(module, path)
            else:
                __import__(module)
        except BaseException:  # noqa: BLE001 - a worker that needs it says why, from its own import
            log.debug("pool: cannot import %s", module, exc_info=True)
    return ""


# ---------------------------------------------------------------------- far side: a worker


def _worker_main(pool: socket.socket) -> None:
    """A forked worker: its own session and process group, dies with the pool process; waits for
    its socket to llmunix and its output pipe, then its spec (sent once llmunix has recorded
    it), runs the body, sends the end, exits."""
    code = 70  # EX_SOFTWARE, if anything below fails before the end is sent
    try:
        os.setsid()
        from llmunix.reaper import die_with_parent

        die_with_parent(signal.SIGKILL)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        _msg, fds, _flags, _addr = socket.recv_fds(pool, 16, 2)
        pool.close()
        if len(fds) != 2:
            os._exit(0)  # the pool process has gone
        os.dup2(fds[1], 1)  # what the body (and its children) print goes to the process log
        os.dup2(fds[1], 2)
        os.close(fds[1])
        chan = Channel(socket.socket(fileno=fds[0]))
        try:
            chan.send(("hello", os.getpid()))
            # (with its fds: a question may follow the spec at once, its socket with it, and a
            # plain recv would drop that socket: the asker would get no answer)
            spec = chan.recv(with_fds=True)
        except (EOFError, OSError):
            os._exit(0)  # llmunix no longer wants it
        code = WorkerContext(chan, spec).serve()
    except BaseException:  # noqa: BLE001 - nothing may return into the pool process's loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)


class WorkerContext(RelayedContext):
    """What an isolated tool sees as `ctx`: ProcessContext's API over the worker's socket. Calls
    are answered by the proxy with the process's real `ctx`, on its own thread; calls from
    several threads of the body are served one at a time. `check()` costs nothing: pause and
    kill are signals (SIGSTOP; SIGTERM, which raises ProcessKilled in the body's main thread)."""

    where = "in an isolated process"

    def __init__(self, chan: Channel, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self._chan = chan
        self._spec = spec
        self.parent: int | None = spec.get("parent")
        self._call_lock = threading.Lock()
        self._calls = 0
        self._critical = 0  # >0 while the main thread writes a frame: a kill waits for its end
        self._kill_pending: str | None = None
        self._killed = False
        self._buffers: list[Any] = []
        self._replies: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()  # from the reader thread
        self.tool_file: str | None = None  # the file of the tool's function (allocations "via" the tool)

    # ------------------------------------------------------------------ ProcessContext's API

    def check(self) -> None:
        if self._kill_pending is not None and not self._killed:
            self._killed = True
            raise ProcessKilled(self._kill_pending)

    def report(self, kind: str, **data: Any) -> None:
        self._send(("r", {"t": kind, **data}))

    def _checkpoint(self, encoded: Any) -> int:
        return self._call("checkpoint", (encoded,), {})

    def sleep(self, seconds: float) -> None:
        self._call("sleep", (float(seconds),), {})

    def popen(self, cmd: str | list[str], *, shell: bool | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start an external command in this worker's process group, so that pause, resume and
        kill of the process reach it with the worker."""
        use_shell = isinstance(cmd, str) if shell is None else shell
        child = subprocess.Popen(cmd, shell=use_shell, cwd=self.cwd, stdin=subprocess.DEVNULL,  # noqa: S603
                                 **kwargs)
        self.report("subprocess", os_pid=child.pid)
        return child

    def buffer(self, name: str, size: int | None = None) -> Any:
        """The named shared buffer, mapped here too: the same memory as every other holder's."""
        from llmunix.ipc.shared import SharedBuffer

        b = self._call("buffer", (name, size), {})
        buf = SharedBuffer(b.name, b.path, b.size)
        self._buffers.append(buf)
        return buf

    def service(self, name: str) -> Any:
        raise self.unavailable("service", "it is for llmunix's own bodies (workflows, agents), which run as threads")

    @property
    def priority(self) -> Any:
        return self._call("__getattr__", ("priority",), {})

    @property
    def interrupted(self) -> bool:
        return self._call("__getattr__", ("interrupted",), {})

    def __getattr__(self, name: str) -> Any:
        """The rest of ProcessContext (spawn, wait, run, info, send, recv, shared, lock...): asked
        of the proxy."""
        from llmunix.process import ProcessContext

        if name.startswith("_") or not hasattr(ProcessContext, name):
            raise AttributeError(name)
        if isinstance(inspect.getattr_static(ProcessContext, name), property):
            return self._call("__getattr__", (name,), {})
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    # ------------------------------------------------------------------ the socket

    def _send(self, frame: Any) -> None:
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._critical += 1
        try:
            self._chan.send(frame)
        finally:
            if main:
                self._critical -= 1
        if main:
            self.check()

    def _call(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        with self._call_lock:
            self._calls += 1
            call_id = self._calls
            self._send(("c", call_id, name, args, dict(kwargs)))
            while True:
                reply = self._replies.get()  # (a kill's SIGTERM interrupts this wait, as it did a recv)
                if reply[0] == "eof":
                    self._replies.put(reply)  # for any later call too
                    raise EOFError
                if reply[1] == call_id:  # (an answer to a call a kill interrupted is dropped)
                    break
        if reply[0] == "raise":
            if reply[2].how == "killed":
                self._killed = True
            _raise(reply[2])
        return self._decode(reply[2])

    def _decode(self, value: Any) -> Any:
        if isinstance(value, _Ref):
            return RemoteRef(self, value)
        if isinstance(value, _Buffer):
            from llmunix.ipc.shared import SharedBuffer

            buf = SharedBuffer(value.name, value.path, value.size)
            self._buffers.append(buf)
            return buf
        if isinstance(value, _Msg):
            from llmunix.ipc.messages import Message

            ack = None
            if value.ack is not None:
                ref = RemoteRef(self, _Ref(value.ack, "", "ack"))
                ack = ref.__call__
            return Message(*value.fields, _ack=ack)
        return value

    def _read(self) -> None:
        """The reader thread: replies to the main thread, questions answered here. Signals are
        blocked here so that a kill's SIGTERM reaches the main thread, where the body runs."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            while True:
                msg = self._chan.recv(with_fds=True)
                if msg[0] != "q":
                    self._replies.put(msg)
                    continue
                try:
                    fd = self._chan.take_fd()
                except IndexError:  # (a question without its socket: nobody to answer)
                    continue
                _answer(msg[1], msg[2], fd, self)
        except BaseException:  # noqa: BLE001 - llmunix has gone (or the frame was bad): calls see the end
            self._replies.put(("eof",))

    # ------------------------------------------------------------------ running the body

    def _on_term(self, signum: int, _frame: Any) -> None:
        """SIGTERM: the process is being killed. Raise ProcessKilled in the body (this runs in
        the main thread, between two bytecodes, or as a blocking call returns EINTR), unless it
        is writing a frame: then at the end of the write."""
        if self._killed:
            return
        self._kill_pending = "killed"
        if self._critical == 0:
            self._killed = True
            raise ProcessKilled("killed")

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        threading.Thread(target=self._read, name="llmunix-worker-reader", daemon=True).start()
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        if self._spec.get("cpu_time"):
            limit = int(math.ceil(self._spec["cpu_time"]))
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 2))  # SIGXCPU, then SIGKILL
        try:
            func = import_tool(self._spec["ref"], "in the isolated worker")
            self.tool_file = getattr(getattr(func, "__code__", None), "co_filename", None)
            end: tuple[Any, ...] = ("end", "ok", self.run_func(func))
        except BaseException as exc:  # noqa: BLE001 - every end of the body is reported
            end = ("end", "raised", _raised(exc))
        self._release_output()
        for buf in self._buffers:
            with contextlib.suppress(Exception):
                buf.close()
        try:
            self._send(end)
        except ProcessKilled:
            pass
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self._send(("end", "raised", _Raised(
                "tool", f"its output ({type(end[2]).__name__}) cannot be sent back from the isolated process: {exc}")))
        return 0

    def _release_output(self) -> None:
        """Flush what the body printed and close this end of the output pipe, so that llmunix has
        all of it once the end arrives."""
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


def _memory_question(ctx: WorkerContext, args: Mapping[str, Any]) -> Any:
    from llmunix.observe.memory import worker_memory

    return worker_memory(args, tool_file=ctx.tool_file)


# What llmunix may ask a worker (`Isolation.ask`): KIND -> fn(worker ctx, args) -> a picklable answer.
QUESTIONS: dict[str, Callable[[WorkerContext, Any], Any]] = {"memory": _memory_question}


def _answer(kind: str, args: Any, fd: int, ctx: WorkerContext) -> None:
    """Answer one question on the socket that came with it (the reader thread). Nothing here may
    end the reader: an asker that gave up (its socket closed) gets no SIGPIPE (MSG_NOSIGNAL; a
    worker keeps SIGPIPE's default action for the body's own pipes)."""
    sock = socket.socket(fileno=fd)
    try:
        fn = QUESTIONS.get(kind)
        try:
            if fn is None:
                raise LlmunixError(f"unknown question {kind!r}")
            reply: tuple[str, Any] = ("ok", fn(ctx, args))
            data = _dumps(reply)
        except Exception as exc:  # noqa: BLE001 - said to the asker, in one line
            text = str(exc) if isinstance(exc, LlmunixError | ToolError) else f"{type(exc).__name__}: {exc}"
            data = _dumps(("error", text))
        with contextlib.suppress(OSError):
            sock.sendall(Channel.HEADER.pack(len(data)) + data, socket.MSG_NOSIGNAL)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


class RemoteRef:
    """A handle held by the proxy (a lock, `ctx.shared`, a context manager): its methods and
    properties are asked of the proxy. The helpers that take a callable (`wait_for`, `update`)
    run here, on top of the handle's other methods."""

    _LOCAL = {"wait_for", "update"}

    def __init__(self, ctx: WorkerContext, ref: _Ref) -> None:
        self._ctx = ctx
        self._ref = ref
        self._cls = _class_of(ref)

    def __repr__(self) -> str:
        return f"<{self._ref.cls} held by llmunix>"

    def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._ctx._call(f".{self._ref.id} {method}", args, kwargs)

    def __call__(self) -> Any:  # a message's ack
        return self._do("__call__")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        static = inspect.getattr_static(self._cls, name, None) if self._cls is not None else None
        if isinstance(static, property):
            return self._do("__getattr__", name)
        if name in self._LOCAL and static is not None:
            return static.__get__(self)  # e.g. ConditionHandle.wait_for, calling self.wait
        return lambda *args, **kwargs: self._do(name, *args, **kwargs)

    def __enter__(self) -> Any:
        value = self._do("__enter__")
        return self if isinstance(value, RemoteRef) and value._ref.id == self._ref.id else value

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        sent = None
        if exc is not None:
            try:
                pickle.loads(_dumps(exc))  # noqa: S301 - our own bytes
                sent = exc
            except Exception:  # noqa: BLE001
                sent = ToolError(str(exc) or type(exc).__name__)
        try:
            return bool(self._do("__exit__", type(sent) if sent is not None else None, sent, None))
        except BaseException:
            if exc is not None:
                return False  # the body's own exception goes on
            raise

    def __getitem__(self, key: Any) -> Any:
        return self._do("__getitem__", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._do("__setitem__", key, value)

    def __contains__(self, key: Any) -> bool:
        return bool(self._do("__contains__", key))


def _class_of(ref: _Ref) -> type | None:
    module = sys.modules.get(ref.module)
    obj: Any = module
    for part in ref.cls.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


__all__ = ["ISOLATIONS", "Isolation", "Placement", "WorkerContext", "WorkerPool", "check_isolation",
           "parse_cpu_time", "parse_memory", "pool_main"]
