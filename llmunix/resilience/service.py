"""Resilience: retry and restart of processes under the same PID, circuit breakers with fallback
tools, the watchdog, degraded mode, chaos and `health`. A component of the kernel
(`kernel.resilience`). It acts through the process table's hooks:

* `on_spawn`: a process's retry and restart policies (given to `Kernel.spawn`, or stored and
  re-attached by `recover`) become its `Attempts`, kept here by PID;
* `before_body`: an open circuit refuses the attempt or sends it to the tool's fallback; chaos
  injects its fault;
* `after_body`: breaker accounting, then retry, restart (`ProcessTable.requeue_locked`) or the end;
* `on_end`: its attempts and watch go; `on_pressure`: memory pressure is a reason for degraded mode;
* the monitor, after each sample -> `watchdog_tick` (the rule is in watchdog.py).

State (guarded by the table lock): `_board` (breakers), `_attempts` (per PID), `_watch` (the
watchdog's reading of each running process), `degraded` (why degraded mode is on: given to the
scheduler, which defers low and idle work), `_chaos`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llmunix.lifecycle import Hooks
from llmunix.models import (
    EXIT_REFUSED,
    LlmunixError,
    Outcome,
    Phase,
    ProcessKilled,
    ProcessKind,
    ToolError,
    short_duration,
)
from llmunix.process import REQ_STOP, Process, ProcessContext
from llmunix.resilience.breakers import (
    HALF_OPEN,
    OPEN,
    BreakerBoard,
    BreakerInfo,
    CircuitBreaker,
    check_seconds,
    describe,
)
from llmunix.resilience.chaos import INJECTED_FAILURE, ChaosSpec
from llmunix.resilience.health import FAIL, OK, SKIP, WARN, HealthCheck, HealthReport, check_disk, check_memory, report
from llmunix.resilience.restart import Attempts, RestartPolicy, attempts_from_data
from llmunix.resilience.watchdog import (
    DEFAULT_STALL_RESTARTS,
    Watch,
    check_action,
    sample_shows_life,
)
from llmunix.retry import RetryPolicy

if TYPE_CHECKING:
    from pathlib import Path

    from llmunix.durable import DurableState
    from llmunix.lifecycle import ProcessTable
    from llmunix.models import AttemptInfo
    from llmunix.store import Store
    from llmunix.tools.registry import ToolRegistry

log = logging.getLogger("llmunix.resilience")

STORE_CHECK_TIMEOUT = 5.0  # seconds `health` waits for its test write to commit


class Resilience(Hooks):
    """See the module docstring."""

    def __init__(self, table: ProcessTable, durable: DurableState, registry: ToolRegistry, store: Store | None,
                 home: Path | None, *, read_only: bool, home_owner: str | None = None, breaker_threshold: int = 5,
                 breaker_cooldown: float = 30.0, stall_timeout: float = 60.0, stall_action: str = "alert",
                 chaos: str | None = None, health_min_disk_mb: float = 100.0) -> None:
        self.table = table
        self.durable = durable
        self.registry = registry
        self.store = store
        self.home = home
        self.read_only = read_only
        self.home_owner = home_owner
        self.bus = table.bus
        self.monitoring = False  # the monitor runs (and so the watchdog): set by the kernel
        self._attempts: dict[int, Attempts] = {}
        check_seconds("stall_timeout", stall_timeout, "; 0: no watchdog")
        if not health_min_disk_mb >= 0:
            raise LlmunixError("health_min_disk_mb must not be negative")
        self._board = BreakerBoard(int(breaker_threshold), float(breaker_cooldown))
        self._stall_timeout = float(stall_timeout)
        self.stall_action = check_action(stall_action) or "alert"
        self.health_min_disk_mb = float(health_min_disk_mb)
        self._chaos: ChaosSpec | None = ChaosSpec.parse(chaos)
        self._watch: dict[int, Watch] = {}
        self._degraded_check_at: float | None = None  # when the pending cool-down re-check fires
        self.degraded: tuple[str, ...] = ()
        table.snapshot_field("attempts", self._attempt_info)

    def _attempt_info(self, proc: Process) -> AttemptInfo | None:
        a = self._attempts.get(proc.pid)
        return a.info(proc.phase) if a is not None else None

    # ------------------------------------------------------------------ public API: breakers

    def breakers(self) -> list[BreakerInfo]:
        """Every circuit breaker (per tool and per host) by name, with its state and counters."""
        with self.table.lock:
            return [b.info() for b in self._board]

    def breaker_reset(self, name: str) -> BreakerInfo:
        """Close a breaker by hand (`tool:fetch`, `fetch`, `host:example.com` or `example.com`)."""
        with self.table.lock:
            b = self._board.resolve(name)
            transition = b.reset()
            self.bus.publish("breaker.reset", None, {"name": b.name, "was": "closed" if transition is None else "open"})
            if transition:
                self._breaker_changed_locked(b, transition)
            return b.info()

    def breaker_record(self, name: str, ok: bool, error: str | None = None, *, pid: int | None = None
                       ) -> BreakerInfo:
        """Report one call's outcome to breaker `name` (made on first use), e.g.
        `kernel.breaker_record("host:example.com", False, "HTTP 503")`."""
        with self.table.lock:
            b = self._board.breaker(name)
            self._record_locked(b, ok, error, pid)
            return b.info()

    def breaker_check(self, name: str, pid: int | None = None) -> str | None:
        """Whether a call guarded by breaker `name` may go now: None if so (an open breaker past its
        cool-down lets this caller through as its probe), else the reason it is refused."""
        with self.table.lock:
            b = self._board.get(name)
            return None if b is None else self._allow_locked(b, pid)

    @property
    def breaker_threshold(self) -> int:
        return self._board.threshold

    @breaker_threshold.setter
    def breaker_threshold(self, n: int) -> None:
        with self.table.lock:
            self._board.configure(threshold=n)

    @property
    def breaker_cooldown(self) -> float:
        return self._board.cooldown

    @property
    def stall_timeout(self) -> float:
        """Seconds without progress before a running process is marked stalled (0: no watchdog)."""
        return self._stall_timeout

    @stall_timeout.setter
    def stall_timeout(self, seconds: float) -> None:
        self._stall_timeout = check_seconds("stall_timeout", seconds, "; 0: no watchdog")

    @breaker_cooldown.setter
    def breaker_cooldown(self, seconds: float) -> None:
        with self.table.lock:
            self._board.configure(cooldown=float(seconds))
            self._refresh_degraded_locked()

    def degraded_reasons(self) -> tuple[str, ...]:
        """Why llmunix is in degraded mode (low and idle work deferred); empty when it is not."""
        with self.table.lock:
            self._refresh_degraded_locked()
            return self.degraded

    # ------------------------------------------------------------------ public API: chaos, health

    @property
    def chaos(self) -> str:
        """The fault-injection setting (`fail=0.2,hang=0.05,slow=0.1,delay=1s,seed=42`), or "off"."""
        spec = self._chaos
        return str(spec) if spec is not None else "off"

    @chaos.setter
    def chaos(self, text: str | None) -> None:
        self.set_chaos(text)

    def set_chaos(self, text: str | None) -> str:
        """Turn fault injection on (`"fail=0.2,hang=0.05,slow=0.1,seed=42"`) or off (`"off"`)."""
        spec = ChaosSpec.parse(text)
        with self.table.lock:
            self._chaos = spec
            self.bus.publish("system.chaos", None, {"chaos": self.chaos})
        log.warning("chaos %s", self.chaos)
        return self.chaos

    def health(self) -> HealthReport:
        """Run the health checks: store writable, disk space in the home, memory, open breakers,
        stalled processes, unkillable threads (health.py says what fails and what only warns)."""
        checks = [self._check_store(), check_disk(self.home, self.health_min_disk_mb)]
        self.table.check_pressure()
        pressure = self.table.scheduler.pressure
        checks.append(check_memory(pressure.on, pressure.available_mb, pressure.threshold_mb))
        with self.table.lock:
            self._refresh_degraded_locked()
            not_closed = [b for b in self._board if b.state != "closed"]
            stalled = [(pid, w) for pid, w in self._watch.items() if w.stalled]
            stuck = [p for p in self.table.live.values() if p.unkillable]
            checks.append(HealthCheck("breakers", WARN if not_closed else OK,
                                      "; ".join(b.reason() for b in not_closed) or "all closed"))
            if not self.monitoring or not self.stall_timeout:
                why = "no monitor" if not self.monitoring else "stall_timeout is 0"
                checks.append(HealthCheck("stalled processes", SKIP, f"watchdog off ({why})"))
            else:
                checks.append(HealthCheck(
                    "stalled processes", FAIL if stalled else OK,
                    "; ".join(f"{pid:03d} {self.table.procs[pid].name}: no progress for {short_duration(w.idle)}"
                              for pid, w in stalled if pid in self.table.procs) or "none"))
            checks.append(HealthCheck(
                "unkillable threads", FAIL if stuck else OK,
                "; ".join(f"{p.pid:03d} {p.name}: blocked in native code" for p in stuck) or "none"))
            checks.append(self._check_threads())
            degraded = self.degraded
        result = report(checks, degraded)
        self.bus.publish("system.health", None, {"status": result.status,
                                                 "failed": [c.name for c in checks if c.status == FAIL]})
        return result

    def _check_threads(self) -> HealthCheck:
        """Worker threads past `max_threads` (a soft cap: the scheduler never waits for a thread,
        it makes one) are a warning while there are more than the cap: each made past it ends
        after its body, so the cap is too low for this load (off-slot model calls keep theirs)."""
        ex = self.table.executor
        n, cap, past = ex.thread_count, ex.max_threads, ex.over_cap_starts
        text = f"{n} worker thread{'s' if n != 1 else ''} of max_threads {cap}"
        if past:
            text += f"; {past:,} started past the cap so far"
        if n > cap:
            return HealthCheck("worker threads", WARN, f"{text}; raise max_threads in config.toml")
        return HealthCheck("worker threads", OK, text)

    def _check_store(self) -> HealthCheck:
        if self.store is None:
            return HealthCheck("store", SKIP, "no home directory: nothing is stored")
        if self.read_only:
            return HealthCheck("store", SKIP, f"read-only: llmunix pid {self.home_owner} owns {self.home}")
        path = self.store.path
        failure = self.store.failure
        if failure is not None:
            return HealthCheck("store", FAIL, f"writes to {path} failed: {failure}")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return HealthCheck("store", FAIL, f"{path} is not writable")
        # A real write: an event through the bus and the store's writer, committed to disk.
        seq = self.bus.publish("system.health_probe", None, {}).seq
        if not self.store.wait_durable(seq, timeout=STORE_CHECK_TIMEOUT) or self.store.failure is not None:
            return HealthCheck("store", FAIL, f"a test write to {path} did not commit within "
                                              f"{STORE_CHECK_TIMEOUT:g}s")
        pid = self.store.writer_pid
        writer = "thread" if pid is None else f"process {pid}"
        return HealthCheck("store", OK, f"{path} writable (writer {writer})")

    # ------------------------------------------------------------------ spawn (policies)

    def policies(self, retry: RetryPolicy | None, restart: RestartPolicy | str | None) -> Attempts | None:
        """Check `spawn`'s retry and restart arguments (before anything is created); the result
        goes to `spawn_locked` as `options={"attempts": ...}`."""
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise LlmunixError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        if isinstance(restart, str):
            restart = RestartPolicy(restart)
        if restart is not None and not isinstance(restart, RestartPolicy):
            raise LlmunixError(f"restart must be a RestartPolicy or a mode, not {type(restart).__name__}")
        if restart is not None and restart.mode == "never":
            restart = None
        if (retry is None or retry.max_attempts <= 1) and restart is None:
            return None
        return Attempts(retry, restart)

    def on_spawn(self, proc: Process, options: Any) -> None:
        """Attach the process's policies: given to spawn, or stored and re-attached by recover
        (attempts counted afresh from this run)."""
        attempts = options.get("attempts")
        if attempts is None and options.get("stored_policy") is not None:
            attempts = attempts_from_data(options["stored_policy"])
        if attempts is not None:
            self._attempts[proc.pid] = attempts
        else:
            self._attempts.pop(proc.pid, None)  # a PID run again without policies (rollback, workflow retry)

    def on_end(self, proc: Process) -> None:
        if proc.pid in self._attempts:
            self.table.snapshot(proc)  # its final snapshot keeps its attempts (a finished one's is kept)
            del self._attempts[proc.pid]
        self._watch.pop(proc.pid, None)

    def on_pressure(self, on: bool) -> None:
        self._refresh_degraded_locked(dispatch=False)  # memory pressure is a reason for degraded mode

    # ------------------------------------------------------------------ before the body (worker thread)

    def before_body(self, proc: Process, ctx: ProcessContext) -> None:
        """Just before the tool's code runs, on its worker (lock not held). Raises ToolError to
        fail the attempt without running the tool (an open circuit, an injected failure)."""
        a = self._attempts.get(proc.pid)
        if a is None and (proc.kind is not ProcessKind.TOOL or (not self._board.not_closed and self._chaos is None)):
            return  # the hot path: nothing to decide
        with self.table.lock:
            if a is not None:
                a.waiting, a.next_at, a.excused = False, None, False
            if proc.kind is not ProcessKind.TOOL:
                return
            self._choose_tool_locked(proc)  # raises ToolError when refused
            spec = self._chaos
            fault = spec.draw(proc.pid, a.attempt if a is not None else 1) if spec is not None else None
            if fault is not None:
                proc.note("chaos", f"injected {fault}")
                self.table.emit("process.chaos", proc, fault=fault, tool=proc.tool.name,
                           attempt=a.attempt if a is not None else 1)
        if fault == "fail":
            raise ToolError(INJECTED_FAILURE)
        if fault == "slow":
            self.table.sleep(proc, spec.delay)  # type: ignore[union-attr]
        elif fault == "hang":
            self._hang(proc)

    def _hang(self, proc: Process) -> None:
        """An injected hang: hold the slot and reach no control point (a pause waits in vain, as
        for a hung call) until a kill or the timeout stops it."""
        self.table.hang(proc)

    def _choose_tool_locked(self, proc: Process) -> None:
        """The tool this attempt runs: the one asked for, unless its circuit is open; then its
        declared fallback (and the fallback's, in turn), or ToolError with the reason."""
        a = self._attempts.get(proc.pid)
        original, params = (a.original if a is not None and a.original is not None else (proc.tool, None))
        t, seen, reason = original, {original.name}, None
        while True:
            b = self._board.get(f"tool:{t.name}")
            refused = self._allow_locked(b, proc.pid) if b is not None else None
            if refused is None:
                break
            reason = reason or refused
            fb = t.fallback
            if fb is None or fb in seen:
                self._attempts_of(proc).excused = True
                raise ToolError(refused if t is original else f"{reason}; its fallback: {refused}")
            try:
                t = self.registry.get(fb)
            except LlmunixError:
                self._attempts_of(proc).excused = True
                raise ToolError(f"{reason}; its fallback {fb!r} is not a registered tool") from None
            seen.add(t.name)
        if t is proc.tool:
            return
        a = self._attempts_of(proc)
        if a.original is None:
            a.original = (proc.tool, dict(proc.params))
        if t is original:  # back to the tool asked for: its circuit has closed
            new_params, note = dict(a.original[1]), f"circuit closed for tool {t.name}; running {t.name} again"
        else:
            try:
                new_params = t.validate(a.original[1])
            except LlmunixError as exc:
                a.excused = True
                raise ToolError(f"{reason}; its fallback cannot take the parameters: {exc}") from None
            note = f"{reason}; running fallback {t.name} instead"
        self.table.replace_tool_locked(proc, t, new_params)
        proc.note("fallback", note)
        self.table.emit("process.fallback", proc, tool=original.name, running=t.name, reason=note)

    # ------------------------------------------------------------------ after the body (lock held)

    def after_body(self, proc: Process, outcome: Outcome, code: int | None, error: str | None,
                   output: Any) -> bool:
        """The body has ended with `outcome`. Count it on the tool's breaker, then retry or
        restart the process, or end it with a reason of its own. Returns True when it has dealt
        with the end itself (the caller then does not finish the process). Lock held."""
        if proc.phase is Phase.DONE:
            return False
        a = self._attempts.get(proc.pid)
        if proc.kind is ProcessKind.TOOL:
            self._count_outcome_locked(proc, outcome, code, error)
        if a is None:
            return False
        a.excused = False
        if outcome not in (Outcome.COMPLETED, Outcome.FAILED) or proc.phase not in (Phase.RUNNING, Phase.WAITING):
            return False  # cancelled or interrupted: never run again
        completed = outcome is Outcome.COMPLETED
        if not completed and a.stall_restart:
            return self._restart_locked(proc, a, outcome, code, error, forced=True)
        if not completed and a.retry is not None and a.retry.should_retry(a.attempt, error):
            self._retry_locked(proc, a, error or "failed")
            return True
        if not completed and a.retry is not None and a.attempt > 1:
            proc.note("retries used up" if a.attempt >= a.max_attempts else "not retried",
                      f"attempt {a.attempt} of {a.max_attempts} failed: {error}")
        if a.restart is not None and a.restart.wants(completed):
            return self._restart_locked(proc, a, outcome, code, error)
        return False

    def _retry_locked(self, proc: Process, a: Attempts, error: str) -> None:
        assert a.retry is not None
        delay = a.retry.delay(a.attempt)
        b = self._board.get(f"tool:{(a.original or (proc.tool,))[0].name}")
        if b is not None and b.state == OPEN and proc.tool.fallback is None:
            delay = max(delay, b.probe_in())  # no point trying before the circuit lets a probe through
        a.attempt += 1
        if len(proc.checkpoints) > a.ckpt_base:  # the next attempt continues from this run's last checkpoint
            self.table.restore_from_locked(proc, proc.checkpoints[-1])
        detail = f"retry {a.attempt - 1} of {a.max_attempts - 1} in {short_duration(delay)} (last error: {error})"
        note = f"attempt {a.attempt} of {a.max_attempts} in {short_duration(delay)} after: {error}"
        self._requeue_later_locked(proc, a, delay, detail, "retry", note)
        self.table.emit("process.retry", proc, attempt=a.attempt, max_attempts=a.max_attempts, delay=round(delay, 3),
                   error=error)

    def _restart_locked(self, proc: Process, a: Attempts, outcome: Outcome, code: int | None, error: str | None,
                        forced: bool = False) -> bool:
        """Run the process again from scratch after a backoff, unless it has restarted too often
        in a row (then it ends Failed saying so). `forced`: the watchdog asked for it."""
        policy = a.restart
        if policy is None:  # a watchdog restart of a process without a restart policy
            policy = a.restart = RestartPolicy("never", max_restarts=DEFAULT_STALL_RESTARTS, min_uptime=math.inf)
        uptime = proc.attempt_runtime(time.monotonic())
        if uptime >= policy.min_uptime:
            a.restarts, a.backoff_step = 0, 0  # it stayed up: start the backoff and the count afresh
        last = f"last error: {error}" if outcome is Outcome.FAILED else "last run completed"
        if a.restarts >= policy.max_restarts:
            why = (f"restart limit reached ({policy.max_restarts} restarts in a row"
                   + (f", each run up less than {short_duration(policy.min_uptime)}" if policy.min_uptime < math.inf
                      else "") + f"); {last}")
            self.table.finish_locked(proc, Outcome.FAILED, code if code else 1, why)
            return True
        a.backoff_step += 1
        a.restarts += 1
        a.restarts_total += 1
        a.attempt = 1
        delay = policy.backoff.delay(a.backoff_step)
        a.stall_restart = False
        self.table.restore_from_locked(proc, None)
        a.ckpt_base = len(proc.checkpoints)
        self.table.reset_progress_locked(proc)
        detail = f"restarting in {short_duration(delay)} (restart {a.restarts} of {policy.max_restarts})"
        note = (f"restart {a.restarts} of {policy.max_restarts} in {short_duration(delay)} after: "
                f"{error if error else 'it completed'}")
        self._requeue_later_locked(proc, a, delay, detail, "restart", note)
        self.table.emit("process.restarting", proc, restart=a.restarts, max_restarts=policy.max_restarts,
                   delay=round(delay, 3), outcome=outcome.value, error=error, uptime=round(uptime, 3),
                   watchdog=forced)
        return True

    def _requeue_later_locked(self, proc: Process, a: Attempts, delay: float, detail: str, what: str,
                              note: str) -> None:
        """Take a process whose attempt has ended off its slot and thread (phase waiting, `detail`
        shown) and queue it again after `delay` seconds (the table's timer does the waiting)."""
        a.waiting = True
        a.next_at = time.time() + delay
        self._watch.pop(proc.pid, None)
        proc.note(what, note)
        self.table.requeue_locked(proc, delay, detail)

    def _attempts_of(self, proc: Process) -> Attempts:
        a = self._attempts.get(proc.pid)
        if a is None:
            a = self._attempts[proc.pid] = Attempts()
        return a

    # ------------------------------------------------------------------ breakers (lock held)

    def _count_outcome_locked(self, proc: Process, outcome: Outcome, code: int | None, error: str | None) -> None:
        """A tool process's attempt counts on its tool's breaker: success or failure; a cancel
        only gives back a probe; a failure that is not the tool's (refused by an open circuit, a
        host's failure counted on the host's breaker, a path or URL it may not touch: exit 77)
        does not count."""
        a = self._attempts.get(proc.pid)
        name = f"tool:{proc.tool.name}"
        b = self._board.get(name)
        if (a is not None and a.excused) or not proc.tool.breaker or code == EXIT_REFUSED:
            if b is not None:
                b.release(proc.pid)
            return
        if outcome is Outcome.COMPLETED:
            if b is not None:
                self._record_locked(b, True, None, proc.pid)
        elif outcome is Outcome.FAILED:
            self._record_locked(b or self._board.breaker(name), False, error, proc.pid)
        elif b is not None:
            b.release(proc.pid)

    def _allow_locked(self, b: CircuitBreaker, pid: int | None) -> str | None:
        allowed, transition = b.allow(pid)
        if transition:
            self._breaker_changed_locked(b, transition)
        return None if allowed else b.reason()

    def _record_locked(self, b: CircuitBreaker, ok: bool, error: str | None, pid: int | None) -> None:
        transition = b.record(ok, error)
        if transition:
            self._breaker_changed_locked(b, transition, pid=pid)

    def _breaker_changed_locked(self, b: CircuitBreaker, transition: str, pid: int | None = None) -> None:
        info = b.info()
        data: dict[str, Any] = {"name": b.name, "state": b.state, "failures": b.failures, "error": b.last_error}
        if pid is not None:
            data["by"] = pid
        if b.state == OPEN:
            data["next_probe_in"] = round(b.probe_in(), 3)
            log.warning("%s", b.reason())
        elif b.state == HALF_OPEN:
            data["probe"] = info.probe_pid
        self.bus.publish(f"breaker.{transition}", None, data)
        self._refresh_degraded_locked()

    @contextlib.contextmanager
    def host_call(self, proc: Process, host: str) -> Iterator[None]:
        """ProcessContext.host_call: guard one call to `host` with breaker `host:NAME`."""
        name = f"host:{host_name(host)}"
        with self.table.lock:
            b = self._board.breaker(name)
            refused = self._allow_locked(b, proc.pid)
            if refused is not None:
                self._attempts_of(proc).excused = True  # the host's circuit, not the tool's failure
        if refused is not None:
            raise ToolError(refused)
        try:
            yield
        except ProcessKilled:
            with self.table.lock:
                b.release(proc.pid)
            raise
        except BaseException as exc:
            with self.table.lock:
                self._record_locked(b, False, _describe(exc), proc.pid)
                self._attempts_of(proc).excused = True  # the host's failure, not the tool's
            raise
        with self.table.lock:
            self._record_locked(b, True, None, proc.pid)

    # ------------------------------------------------------------------ degraded mode (lock held)

    def _refresh_degraded_locked(self, dispatch: bool = True) -> None:
        """Degraded mode is on while memory is under pressure or a breaker is open (in its
        cool-down) or half-open: low and idle work is deferred (admission in limits.py reads
        `_degraded`). A change is an event (`system.degraded`) and the shell's alert. From inside
        a dispatch (a memory reading), `dispatch=False`: the dispatch under way goes on."""
        self._board.recount()
        reasons: list[str] = ["memory pressure"] if self.table.scheduler.pressure.on else []
        soonest = math.inf
        for b in self._board:
            if b.state == OPEN and b.probe_in() > 0:
                reasons.append(f"circuit open for {describe(b.name)}")
                soonest = min(soonest, b.probe_in())
            elif b.state == HALF_OPEN:
                reasons.append(f"circuit half-open for {describe(b.name)}")
        new = tuple(reasons)
        if soonest < math.inf:  # when a cool-down ends, degraded mode may end with it
            at = time.monotonic() + soonest + 0.01
            pending = self._degraded_check_at
            if pending is None or pending > at:
                self._degraded_check_at = at
                self.table.timers.call_later(soonest + 0.01, self._degraded_timer)
        if new == self.degraded:
            return
        was, self.degraded = self.degraded, new
        self.table.scheduler.set_degraded(new)
        if new:
            log.warning("degraded: %s", "; ".join(new))
        else:
            log.warning("degraded mode over (was: %s)", "; ".join(was))
        self.bus.publish("system.degraded", None, {"state": "on" if new else "off", "reasons": list(new),
                                                   "was": list(was)})
        if dispatch:
            self.table.dispatch_locked(time.monotonic())

    def _degraded_timer(self) -> None:
        with self.table.lock:
            self._degraded_check_at = None
            if not self.table.closed:
                self._refresh_degraded_locked()

    # ------------------------------------------------------------------ the watchdog (monitor thread)

    def watchdog_tick(self) -> None:
        """After each monitor sample: mark running processes that have shown no sign of life for
        their stall timeout (watchdog.py), and apply their stall policy."""
        now = time.monotonic()
        with self.table.lock:
            if self.table.closed:
                return
            watch = self._watch
            seen = set()
            for p in list(self.table.scheduler.running):
                limit = p.tool.stall_timeout if p.tool.stall_timeout is not None else self.stall_timeout
                if not limit or not p.in_body or p.phase is not Phase.RUNNING:
                    continue
                seen.add(p.pid)
                w = watch.get(p.pid)
                if w is None:
                    w = watch[p.pid] = Watch(active_at=0.0)
                sample = p.samples[-1] if p.samples else None
                if sample is not None and sample.time != w.sample_time and sample_shows_life(w, sample):
                    w.active_at = now
                w.idle = now - max(p.last_active, p.slice_start, w.active_at)
                if w.idle >= limit:
                    if not p.requests & REQ_STOP:  # a pending pause or kill says so itself
                        self.table.set_detail_locked(p, f"stalled: no progress for {short_duration(w.idle)}")
                    if not w.stalled:
                        w.stalled = True
                        self._stalled_locked(p, w.idle, limit)
                elif w.stalled:
                    w.stalled = False
                    if not p.requests & REQ_STOP:
                        self.table.set_detail_locked(p, "running")
                    p.note("progressing", "shows signs of life again")
                    self.table.emit("process.unstalled", p)
            for pid in [pid for pid in watch if pid not in seen]:
                del watch[pid]

    def _stalled_locked(self, p: Process, idle: float, limit: float) -> None:
        action = p.tool.on_stall or self.stall_action
        reason = f"stalled: no progress for {short_duration(idle)}"
        p.note("stalled", f"no progress for {short_duration(idle)} (stall timeout {short_duration(limit)}; "
                          f"action {action})")
        self.table.emit("process.stalled", p, idle=round(idle, 3), stall_timeout=limit, action=action,
                   message=reason)
        if action == "alert":
            return
        if action == "restart":
            self._attempts_of(p).stall_restart = True
        self.table.kill_tree_locked(p, reason)


def host_name(host: str) -> str:
    """`example.com` from `example.com`, `https://example.com:8443/x` or `Example.COM`."""
    text = str(host).strip()
    if "://" in text:
        text = urlsplit(text).hostname or text
    if not text:
        raise LlmunixError("host_call needs a host name or URL")
    return text.lower()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
