"""The debugger: breakpoints, step / next / continue, inspect, modify, trace. A component of the
kernel (`kernel.debugger`); each process's debugging state (`ProcessDebugger`) and the trace
function are in debugger.py, which also explains how a process is stopped.

Two methods run in the debugged process's own thread: `on_control_point` (the table's hook,
called at each control point while the process has debugging work: `ProcessTable.watch`; lock
held), and `_line_stop`, which the trace function calls at a line it must stop at (lock not
held). Everything else is called by the shell and returns frozen records.
"""

from __future__ import annotations

import json
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from llmunix.lifecycle import Hooks
from llmunix.models import IllegalTransition, LlmunixError, Phase, ProcessKilled, as_pid, format_pid
from llmunix.observe.condition import Condition
from llmunix.observe.debug import safe_repr, tool_frames
from llmunix.observe.debugger import (
    NEXT,
    STEP,
    Breakpoint,
    BreakpointState,
    DebugStatus,
    Inspected,
    Location,
    Modification,
    ProcessDebugger,
    TraceBuffer,
    TraceLog,
    control_point_name,
    depth_of,
    location_of,
    tool_stack,
)
from llmunix.observe.redact import MASK, is_secret_key, redact
from llmunix.process import REQ_KILL, Process

if TYPE_CHECKING:
    from llmunix.durable import DurableState
    from llmunix.lifecycle import ProcessTable

VALUE_LIMIT = 2000  # characters of a value `inspect` shows


class Debugger(Hooks):
    """See the module docstring. Hooks: `on_control_point` (breakpoints, stepping, tracing),
    `on_spawn` (a PID run again starts with no debugging state). A finished process keeps its
    state (its breakpoints' hit counts stay readable)."""

    def __init__(self, table: ProcessTable, durable: DurableState) -> None:
        self.table = table
        self.durable = durable
        self._state: dict[int, ProcessDebugger] = {}  # pid -> its debugging state, once someone debugs it

    def attached(self, proc: Process) -> bool:
        """Has anyone debugged this process (breakpoints, steps, trace)?"""
        return proc.pid in self._state

    def on_spawn(self, proc: Process, options: Any) -> None:
        self._state.pop(proc.pid, None)

    def _sync(self, proc: Process, d: ProcessDebugger | None) -> None:
        """The table routes `proc`'s control points here exactly while its debugger has work."""
        self.table.watch(proc, bool(d))

    def _request(self, proc: Process, d: ProcessDebugger) -> None:
        """A new request for the process's own thread (applied at its next control point)."""
        d.request()
        self._sync(proc, d)

    # ------------------------------------------------------------------ breakpoints

    def set_breakpoint(self, pid: int, *, at_step: int | None = None, when: str | None = None,
                       on_checkpoint: bool = False) -> Breakpoint:
        """Stop process `pid` at a control point: once its step reaches `at_step`, when the
        condition `when` becomes true (see condition.py), or after each checkpoint it records;
        given together, all must hold. A bad condition raises LlmunixError (one line)."""
        if at_step is None and when is None and not on_checkpoint:
            raise LlmunixError("a breakpoint needs a condition: --at-step N, --when EXPR or --on-checkpoint")
        if at_step is not None and at_step < 0:
            raise LlmunixError(f"bad step {at_step}; steps count from 0")
        condition = Condition.parse(when) if when is not None else None
        with self.table.lock:
            proc = self.table.require_live(pid, "set a breakpoint on")
            d = self._debugger_locked(proc)
            if on_checkpoint and not any(b.on_checkpoint for b in d.breakpoints):
                d.seen_checkpoints = len(proc.checkpoints)  # only checkpoints from now on
            bp = BreakpointState(d.next_number, at_step, condition, on_checkpoint)
            d.next_number += 1
            d.breakpoints.append(bp)
            self._request(proc, d)
            info = bp.snapshot()
            self.table.emit("process.breakpoint_set", proc, number=info.number, description=info.describe())
            return info

    def clear_breakpoint(self, pid: int, number: int | str = "all") -> list[Breakpoint]:
        """Delete breakpoint `number` of process `pid` (or "all" of them); returns those deleted."""
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
        if proc is None:
            info = self.durable.info(pid)  # unknown PIDs raise; one of an earlier session has no breakpoints
            if number == "all":
                return []
            raise LlmunixError(f"process {info.process_id} has no breakpoint {number} (it has: none)")
        with self.table.lock:
            d = self._state.get(proc.pid)
            bps = d.breakpoints if d is not None else []
            if number == "all":
                gone = list(bps)
            else:
                gone = [b for b in bps if b.number == int(number)]
                if not gone:
                    have = ", ".join(str(b.number) for b in bps) or "none"
                    raise LlmunixError(f"process {format_pid(proc.pid)} has no breakpoint {number} (it has: {have})")
            if d is not None:
                d.breakpoints = [b for b in bps if b not in gone]
                self._request(proc, d)
            for b in gone:
                self.table.emit("process.breakpoint_cleared", proc, number=b.number)
            return [b.snapshot() for b in gone]

    def breakpoints(self, pid: int) -> list[Breakpoint]:
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
            if proc is not None:
                return [b.snapshot() for b in self._state[proc.pid].breakpoints] if proc.pid in self._state else []
        self.durable.info(pid)  # unknown PIDs raise; one of an earlier session has none
        return []

    # ------------------------------------------------------------------ running: continue, step, next

    def continue_(self, pid: int) -> DebugStatus:
        """Let a process stopped by the debugger go on (and cancel a step not taken yet)."""
        with self.table.lock:
            proc = self.table.require_live(pid, "continue")
            d = self._state.get(proc.pid)
            if d is not None and d.stop is not None and proc.phase is Phase.PAUSED:
                d.mode, d.next_depth = None, None
                self._request(proc, d)
                self.table.resume_locked(proc)
            elif d is not None and d.mode is not None:
                d.mode, d.next_depth = None, None
                self._request(proc, d)
            elif proc.phase is Phase.PAUSED:
                raise IllegalTransition(f"process {format_pid(proc.pid)} is {proc.detail}, not stopped by the "
                                        f"debugger; `resume {format_pid(proc.pid)}` continues it")
            else:
                raise IllegalTransition(f"process {format_pid(proc.pid)} is not stopped "
                                        f"({self.table.snapshot(proc).display_state}); a breakpoint or step stops it")
            return self.status_locked(proc)

    def step(self, pid: int) -> DebugStatus:
        """Run process `pid` to the next line of its tool's code (into calls), then stop it.
        A running process starts tracing at its next control point."""
        return self._step(pid, STEP)

    def next_(self, pid: int) -> DebugStatus:
        """Like `step`, but over calls: stop at the next line in the same frame or an outer one."""
        return self._step(pid, NEXT)

    def _step(self, pid: int, mode: str) -> DebugStatus:
        with self.table.lock:
            proc = self.table.require_live(pid, mode)
            d = self._debugger_locked(proc)
            if d.tracer is None:
                raise LlmunixError(f"cannot {mode} process {format_pid(proc.pid)}: its tool is not a Python function")
            d.mode, d.next_depth = mode, None
            self._request(proc, d)
            self.table.emit("process.step_requested", proc, mode=mode)
            if proc.phase is Phase.PAUSED:
                self.table.resume_locked(proc)
            return self.status_locked(proc)

    def debug_status(self, pid: int) -> DebugStatus:
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
            if proc is not None:
                return self.status_locked(proc)
        info = self.durable.info(pid)  # unknown PIDs raise
        return DebugStatus(info.pid, info.name, info.display_state, info.detail, info.is_done, False, "", None,
                           None, "", False)

    def debug_wait(self, pid: int, timeout: float | None = None, *, since: int | None = None) -> DebugStatus:
        """Block until process `pid` is stopped by the debugger (with `since`: stopped again after
        that many stops, see DebugStatus.stops) or has finished, or `timeout` passes."""
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
        if proc is None:
            return self.debug_status(pid)
        with self.table.lock:

            def stopped() -> bool:
                if proc.phase is Phase.DONE:
                    return True
                d = self._state.get(proc.pid)
                if d is None:
                    return False
                if since is not None:
                    return d.stops > since
                return d.stop is not None and proc.phase is Phase.PAUSED

            self.table.wait_until(stopped, timeout)
            return self.status_locked(proc)

    # ------------------------------------------------------------------ inspect and modify

    def inspect_value(self, pid: int, name: str) -> Inspected:
        """The value of `name` in process `pid`: a local variable of its tool's innermost frame
        (outer tool frames are searched next), else a parameter; `params` for all of them,
        `checkpoint` / `checkpoint.KEY` for its last checkpoint state."""
        name = name.strip()
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
        if proc is None:
            info = self.durable.info(pid)  # unknown PIDs raise
            raise LlmunixError(f"process {info.process_id} is not running here ({info.state}): nothing to inspect")
        with self.table.lock:
            params = dict(proc.params)
            checkpoints = len(proc.checkpoints)
            checkpoint = proc.checkpoints[-1] if proc.checkpoints else None
            ident = proc.thread_ident if proc.in_body else None
            code = getattr(proc.tool.func, "__code__", None)
        if name == "checkpoint" or name.startswith("checkpoint."):
            if not checkpoints:
                raise LlmunixError(f"process {format_pid(as_pid(pid))} has no checkpoint yet")
            where = f"checkpoint version {checkpoints}"
            value = checkpoint
            key = name.partition(".")[2]
            if key:
                if not isinstance(checkpoint, dict) or key not in checkpoint:
                    have = ", ".join(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
                    raise LlmunixError(f"the checkpoint state has no key {key!r} (it has: {have or 'none'})")
                value = checkpoint[key]
            return _inspected(name, "checkpoint", where, value, secret=is_secret_key(key) if key else False)
        if name == "params":
            return _inspected(name, "params", "parameters", params)
        pname = name.removeprefix("params.")
        if pname == name and ident is not None and code is not None:
            frame = sys._current_frames().get(ident)
            try:
                for f in reversed(tool_frames(frame, code)):  # innermost first
                    scope = f.f_locals
                    if name in scope:
                        return _inspected(name, "local", f"local variable of {f.f_code.co_name}()", scope[name])
            finally:
                del frame
        if pname in params:
            return _inspected(pname, "param", "parameter", params[pname])
        locals_ = self._local_names(ident, code)
        known = "; ".join(x for x in (
            f"locals: {', '.join(locals_)}" if locals_ else "",
            f"parameters: {', '.join(params)}" if params else "",
        ) if x) or "no locals or parameters"
        raise LlmunixError(f"process {format_pid(as_pid(pid))} has no local or parameter {name!r} ({known}; "
                           "`checkpoint` is its checkpoint state)")

    def _local_names(self, ident: int | None, code: Any) -> list[str]:
        if ident is None or code is None:
            return []
        frame = sys._current_frames().get(ident)
        try:
            frames = tool_frames(frame, code)
            return [n for n in frames[-1].f_locals if not n.startswith("__") and n != "ctx"] if frames else []
        finally:
            del frame

    def modify(self, pid: int, name: str, value: Any) -> Modification:
        """Change a parameter (validated by the tool's parameter model; the tool sees it the next
        time it reads `ctx.params`) or the checkpoint state (`checkpoint.KEY`, or `checkpoint`
        for all of it: recorded as a new checkpoint version, which is what recovery resumes
        from). A text value is tried as it is, then as JSON. Recorded in the audit trail."""
        name = name.strip()
        if name == "checkpoint" or name.startswith("checkpoint."):
            return self._modify_checkpoint(pid, name, value)
        pname = name.removeprefix("params.")
        with self.table.lock:
            proc = self.table.require_live(pid, "modify")
            current = dict(proc.params)
            tool = proc.tool
        if tool.params and pname not in {p.name for p in tool.params} and not _takes_any(tool):
            names = ", ".join(p.name for p in tool.params)
            raise LlmunixError(f"{pname!r} is not a parameter of tool {tool.name!r} (its parameters: {names}); "
                               "modify changes parameters and checkpoint state (checkpoint.KEY), not local variables")
        error: LlmunixError | None = None
        validated: dict[str, Any] | None = None
        for candidate in _candidates(value):
            try:
                validated = tool.validate({**current, pname: candidate})
                break
            except LlmunixError as exc:
                error = error or exc
        if validated is None:
            assert error is not None
            raise error
        new = validated.get(pname, value)
        with self.table.lock:
            proc = self.table.require_live(pid, "modify")
            old = self.table.set_param_locked(proc, pname, new)
            mod = Modification(proc.pid, pname, "param", _shown(pname, old), _shown(pname, new))
            proc.note("modified", f"{pname} = {mod.new}")
            self.table.emit("process.modified", proc, what="param", key=pname, old=mod.old, new=mod.new)
            return mod

    def _modify_checkpoint(self, pid: int, name: str, value: Any) -> Modification:
        key = name.partition(".")[2]
        new_value = _candidates(value)[-1]  # checkpoint state is JSON: "5" is the number 5
        with self.table.lock:
            proc = self.table.require_live(pid, "modify")
            if not proc.checkpoints:
                raise LlmunixError(f"process {format_pid(proc.pid)} has no checkpoint yet; nothing to modify")
            last = proc.checkpoints[-1]
            if key:
                if not isinstance(last, dict):
                    raise LlmunixError(f"the checkpoint state is a {type(last).__name__}, not an object with keys; "
                                       "`modify checkpoint JSON` replaces all of it")
                old = last.get(key)
                state = {**last, key: new_value}
            else:
                old, state = last, new_value
            try:
                state = json.loads(json.dumps(state))
            except (TypeError, ValueError) as exc:
                raise LlmunixError(f"checkpoint state must be JSON-serialisable: {exc}") from None
            version, _seq = self._checkpoint_locked_for_debugger(proc, state)
            shown_key = key or "checkpoint"
            mod = Modification(proc.pid, name, "checkpoint", _shown(shown_key, old),
                               _shown(shown_key, state[key] if key else state), version)
            proc.note("modified", f"{name} = {mod.new} (checkpoint version {version})")
            self.table.emit("process.modified", proc, what="checkpoint", key=name, old=mod.old, new=mod.new,
                            version=version)
            return mod

    def _checkpoint_locked_for_debugger(self, proc: Process, state: Any) -> tuple[int, int]:
        """Record a checkpoint version as `ctx.checkpoint` does (lock held); the process's own
        `seen` count moves on so that `--on-checkpoint` does not fire for the debugger's edit."""
        version, seq = self.table.checkpoint_locked(proc, state, modified=True)
        d = self._state.get(proc.pid)
        if d is not None:
            d.seen_checkpoints = version
        return version, seq

    # ------------------------------------------------------------------ trace

    def set_trace(self, pid: int, on: bool) -> DebugStatus:
        """Record (on) the calls, returns and exceptions in the tool's code and its control
        points, from its next control point; `off` stops recording and keeps what was recorded.
        Switching on starts a new recording (the last TRACE_LIMIT entries are kept)."""
        with self.table.lock:
            if on:
                proc = self.table.require_live(pid, "trace")
                d = self._debugger_locked(proc)
                if d.tracer is None:
                    raise LlmunixError(f"cannot trace process {format_pid(proc.pid)}: "
                                       "its tool is not a Python function")
                d.log = TraceBuffer()
            else:
                proc = self.table.require_live(pid, "trace")
                d = self._state.get(proc.pid)
                if d is None or not d.tracing:
                    return self.status_locked(proc)
            d.tracing = on
            self._request(proc, d)
            self.table.emit("process.trace", proc, on=on)
            return self.status_locked(proc)

    def trace_log(self, pid: int) -> TraceLog:
        """What `trace on` recorded for process `pid`, oldest first."""
        with self.table.lock:
            proc = self.table.get(as_pid(pid))
        if proc is None:
            info = self.durable.info(pid)  # unknown PIDs raise
            return TraceLog(info.pid, info.name, False, (), 0, None)
        with self.table.lock:
            d = self._state.get(proc.pid)
            log, on, name = (d.log if d is not None else None), bool(d and d.tracing), proc.name
        if log is None:
            return TraceLog(proc.pid, name, on, (), 0, None)
        entries, dropped = log.copy()
        return TraceLog(proc.pid, name, on, entries, dropped, log.started)

    # ------------------------------------------------------------------ internals (lock held)

    def _debugger_locked(self, proc: Process) -> ProcessDebugger:
        d = self._state.get(proc.pid)
        if d is None:
            self.table.register(self)  # (its hooks from the first process debugged on)
            d = ProcessDebugger(getattr(proc.tool.func, "__code__", None))
            d.seen_checkpoints = len(proc.checkpoints)
            if d.tracer is not None:
                d.tracer.bind(d, lambda frame: self._line_stop(proc, frame),
                              lambda: proc.in_body and proc.phase is not Phase.DONE)
            self._state[proc.pid] = d
        return d

    def status_locked(self, proc: Process) -> DebugStatus:
        """The debugger's view of a process (stopped where, breakpoints, stepping). Hold the lock."""
        info = self.table.snapshot(proc)
        d = self._state.get(proc.pid)
        if d is None:
            return DebugStatus(proc.pid, proc.name, info.display_state, info.detail, info.is_done, False, "", None,
                               None, "", False)
        stopped = d.stop is not None and proc.phase is Phase.PAUSED
        return DebugStatus(proc.pid, proc.name, info.display_state, info.detail, info.is_done, stopped,
                           (d.stop or "") if stopped else "", d.stop_bp if stopped else None,
                           d.location if stopped else None, d.mode or "", d.tracing,
                           tuple(b.snapshot() for b in d.breakpoints), d.stops)

    def _halt_locked(self, proc: Process, d: ProcessDebugger, kind: str, detail: str, now: float,
                     location: Location | None, bp: BreakpointState | None = None) -> None:
        """Stop the process as a pause does: out of its slot, phase paused, `detail` for `ps`."""
        d.stop, d.stop_bp, d.location = kind, (bp.number if bp is not None else None), location
        d.stops += 1
        if proc.phase is Phase.RUNNING:
            self.table.leave_slot_locked(proc, Phase.PAUSED, now)
            self.table.dispatch_locked(now)
        self.table.set_detail_locked(proc, detail)
        proc.note("stopped", detail)
        where = {} if location is None else {"file": location.file, "line": location.line,
                                             "function": location.function}
        if d.tracing and d.log is not None:
            d.log.add("stop", (location.function, location.file) if location else ("", ""),
                      location.line if location else 0, 0, detail)
        if bp is not None:
            self.table.emit("process.breakpoint", proc, number=bp.number, description=bp.snapshot().describe(),
                            step=proc.step, detail=detail, **where)
        else:
            self.table.emit("process.stepped", proc, detail=detail, **where)
        self.table.notify_done()

    # ------------------------------------------------------------------ in the process's own thread

    def on_control_point(self, proc: Process, now: float) -> bool:
        """At a control point of a process being debugged (its own thread, lock held, phase
        running): apply new debugger requests (install or remove tracing in this thread), record
        the control point when tracing, and check the breakpoints. True: it stopped."""
        d = self._state.get(proc.pid)
        if d is None:
            self._sync(proc, None)
            return False
        try:
            return self._at_control_point(proc, d, now)
        finally:
            self._sync(proc, d)

    def _at_control_point(self, proc: Process, d: ProcessDebugger, now: float) -> bool:
        resumed = d.stop is not None
        if resumed:  # it was stopped and has been let go (continue, step, next or resume)
            d.stop = d.stop_bp = d.location = None
        tracer = d.tracer
        if tracer is not None and d.applied != d.generation:
            d.applied = d.generation
            frame = sys._getframe(1)
            if d.wants_tracing:
                if d.mode == NEXT and d.next_depth is None:
                    inner = tool_stack(frame, tracer.code)
                    d.next_depth = depth_of(inner[0]) if inner else None
                tracer.install(frame)
            elif d.installed:
                tracer.uninstall(frame)
            del frame
        if d.tracing and d.log is not None and tracer is not None and not resumed:  # (the stop is recorded)
            frame = sys._getframe(1)
            inner = tool_stack(frame, tracer.code)
            total = f"/{proc.total}" if proc.total else ""
            if inner:
                f = inner[0]
                d.log.add("control", f.f_code, f.f_lineno or 0, len(inner) - 1,
                          f"{control_point_name(frame, tracer.code)} step {proc.step}{total}")
            del frame, inner
        if not d.breakpoints:
            return False
        checkpoints = len(proc.checkpoints)
        new_checkpoint = checkpoints > d.seen_checkpoints
        d.seen_checkpoints = checkpoints
        names = {"step": proc.step, "total": proc.total, "percentage": proc.percentage, "params": proc.params,
                 "checkpoint": proc.checkpoints[-1] if checkpoints else None}
        hit = None
        for bp in d.breakpoints:
            holds = bp.holds(names)
            if bp.on_checkpoint:
                fire = new_checkpoint and holds
            else:
                fire, bp.held = holds and not bp.held, holds
            if fire and hit is None:
                hit = bp
        if hit is None:
            return False
        hit.hits += 1
        location = None
        if tracer is not None:
            inner = tool_stack(sys._getframe(1), tracer.code)
            location = location_of(inner[0]) if inner else None
            del inner
        self._halt_locked(proc, d, "breakpoint",
                                f"Stopped at breakpoint {hit.number} ({hit.snapshot().describe()})", now, location, hit)
        return True

    def _line_stop(self, proc: Process, frame: FrameType) -> None:
        """The trace function reached a line to stop at (lock not held): stop as a pause does
        and wait at the control point until continued; a kill raises ProcessKilled here."""
        location = location_of(frame)
        with self.table.lock:
            if proc.requests & REQ_KILL:
                raise ProcessKilled(proc.kill_reason)
            d = self._state.get(proc.pid)
            if d is None or d.mode is None:  # a continue got here first
                return
            d.mode, d.next_depth = None, None  # this step is taken
            self._request(proc, d)
            self._halt_locked(proc, d, "step", f"Stopped at {location.short()}", time.monotonic(), location)
            self.table.control_point_locked(proc)


def _takes_any(tool: Any) -> bool:
    return bool(tool.open_ended)


def _candidates(value: Any) -> list[Any]:
    """A value typed in the shell as it is, then read as JSON ("5" -> 5, "[1, 2]" -> a list)."""
    if not isinstance(value, str):
        return [value]
    try:
        parsed = json.loads(value)
    except ValueError:
        return [value]
    return [value, parsed] if parsed != value else [value]


def _shown(name: str, value: Any) -> str:
    if is_secret_key(name):
        return MASK
    return safe_repr(redact(value), 200)


def _inspected(name: str, kind: str, where: str, value: Any, *, secret: bool | None = None) -> Inspected:
    hidden = is_secret_key(name.rpartition(".")[2]) if secret is None else secret
    text = MASK if hidden else safe_repr(redact(value) if isinstance(value, dict | list) else value, VALUE_LIMIT)
    return Inspected(name, kind, where, type(value).__name__, text)
