"""The workflow process: a body that runs its spec's steps as child processes.

Visible states: Planning (checking the spec and what an earlier attempt left) -> Executing
(starting the steps whose needs are met) <-> Monitoring (waiting, off-slot, for a step to end or a
retry to fall due) -> Completed / Failed / Cancelled.

The run's state is one JSON document, checkpointed (durably, before anything acts on it) each
time steps start or end — in full at first and every FULL_EVERY commits, as the changed steps
(`{"delta": true, "steps": {...}}`) in between; `fold` rebuilds it from the versions::

    {"attempt": 1, "run_dir": "...", "inputs": {...},
     "steps": {"fetch": {"state": "completed", "pid": 4, "attempts": 1, "output": {...},
                         "duration": 0.8, "error": null, "started": t, "finished": t,
                         "cached_from": null}, ...}}

so a step's output is committed before any dependent starts, `workflow retry` re-runs a step and
what depends on it from the committed outputs of everything upstream, and `recover` continues an
interrupted workflow where it was. Step states: pending, running, retrying (waiting for its next
attempt; no slot and no thread held), completed, skipped, failed, cancelled.

A step with `cache: true` is spawned asking the step cache (llmunix/cache.py) for a stored result
of the same tool, version, parameters (its references resolved) and inputs; one that reuses a
result completes at once, and `cached_from` names the process that produced it. A run started
with `workflow run --no-cache` (`refresh`) reuses nothing and stores its steps' new results.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.cache import CachePolicy
from llmunix.models import LlmunixError, ProcessKind, ToolError
from llmunix.process import ProcessContext
from llmunix.tools.registry import tool
from llmunix.workflows import dag, refs
from llmunix.workflows.spec import StepSpec, WorkflowSpec, spec_from_data

if TYPE_CHECKING:
    from llmunix.models import ProcessInfo

DONE_OK = ("completed", "skipped")
FULL_EVERY = 50  # a full checkpoint after this many deltas
ENDED = ("completed", "skipped", "failed", "cancelled")


def fold(versions: list[Any]) -> dict[str, Any] | None:
    """The run's state from its checkpoints, oldest first: the last full one, then the deltas."""
    state: dict[str, Any] | None = None
    for v in versions:
        if not isinstance(v, dict) or "steps" not in v:
            continue
        if v.get("delta") and state is not None:
            state["steps"].update(copy.deepcopy(v["steps"]))
            state["attempt"] = v.get("attempt", state.get("attempt", 1))
        elif not v.get("delta"):
            state = copy.deepcopy(v)
    return state


def workflow_scope(spec: WorkflowSpec) -> dict[str, Any]:
    src = Path(spec.source) if spec.source and not spec.source.startswith("<") else None
    return {"name": spec.name, "dir": str(src.parent) if src is not None else "", "source": spec.source}


def fresh_state(spec: WorkflowSpec, inputs: dict[str, Any], run_dir: str) -> dict[str, Any]:
    return {"attempt": 1, "run_dir": run_dir, "inputs": inputs,
            "steps": {s.id: new_step() for s in spec.steps}}


def new_step() -> dict[str, Any]:
    return {"state": "pending", "pid": None, "attempts": 0, "output": None, "duration": None, "error": None,
            "started": None, "finished": None, "next_at": None, "via": None, "cached_from": None}


class WorkflowRun:
    """One attempt of a workflow, on the workflow process's own thread."""

    def __init__(self, ctx: ProcessContext, spec: WorkflowSpec, state: dict[str, Any], seed: int | None,
                 refresh: bool = False) -> None:
        self.ctx = ctx
        self.refresh = refresh  # `workflow run --no-cache`: cached steps run afresh (and store)
        self.service = ctx.service("workflows")  # its step events
        self.spec = spec
        self.graph = dag.build(spec)
        self.state = state
        self.steps: dict[str, dict[str, Any]] = state["steps"]
        self.standby = dag.fallbacks(spec)  # fallback steps run only in place of a failed one
        self.running: dict[int, str] = {}  # child pid -> step id
        self.stopping = False  # a step failed for good: start nothing new
        self.rand = random.Random(seed).random
        self.order = [s.id for s in spec.steps]
        self.committed: dict[str, dict[str, Any]] = {}  # each step as last checkpointed
        self.since_full = 0

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        self.ctx.set_state("Planning", f"{len(self.order)} steps")
        if self.spec.max_tokens or self.spec.max_cost:  # the run's LLM budget covers every step
            self.ctx.service("agents").set_budget(self.ctx.pid, self.spec.max_tokens, self.spec.max_cost)
        for _sid, st in self.steps.items():  # an earlier attempt's running steps did not finish
            if st["state"] in ("running", "retrying"):
                st.update(state="pending", pid=None, next_at=None)
        self.commit()
        while True:
            self.start_ready()
            retrying = [st["next_at"] for st in self.steps.values() if st["state"] == "retrying"]
            if not self.running and not retrying:
                break
            self.ctx.set_state("Monitoring", self.describe())
            timeout = max(0.0, min(retrying) - time.time()) if retrying else None
            if self.running:
                ended = self.ctx.wait(list(self.running), timeout, any=True, ended_only=True)
                for info in ended:
                    if info.pid in self.running:
                        self.ended(self.running.pop(info.pid), info)
                if ended:
                    self.commit()  # durable before any dependent starts
            elif timeout:
                self.ctx.idle(timeout, "waiting to retry a step")
            self.ctx.set_state("Executing", self.describe())
        return self.finish()

    def start_ready(self) -> None:
        """Start every step whose needs are met (or whose retry is due); one checkpoint for all."""
        now = time.time()
        started = False
        for sid in self.order:
            st = self.steps[sid]
            if self.stopping:
                break
            due = st["state"] == "retrying" and st["next_at"] <= now
            ready = (st["state"] == "pending" and sid not in self.standby
                     and all(self.steps[d]["state"] in DONE_OK for d in self.graph.predecessors(sid)))
            if due or ready:
                self.start(sid)
                started = True
        if started:
            self.commit()

    def start(self, sid: str, standing_in_for: str | None = None) -> None:
        step = self.spec.step(sid)
        st = self.steps[sid]
        st["attempts"] += 1
        try:
            params = refs.resolve(step.with_, self.scope())
            goal = refs.resolve(step.goal, self.scope()) if step.goal else None
            pid = self.spawn(step, params, goal)
        except LlmunixError as exc:  # a bad reference or parameter: this step fails, nothing half-started
            self.log(f"step {sid}: {exc}")
            st.update(state="failed", error=str(exc), finished=time.time(), next_at=None)
            self.service.step_event(self.ctx, "workflow.step_failed", step=sid, error=str(exc),
                                        attempt=st["attempts"])
            self.on_failure(sid, str(exc), retryable=False)
            return
        st.update(state="running", pid=pid, started=time.time(), next_at=None, error=None,
                  via=standing_in_for or st.get("via"))
        self.running[pid] = sid
        self.service.step_event(self.ctx, "workflow.step_started", step=sid, child=pid,
                                    attempt=st["attempts"])
        self.log(f"step {sid} started as process {pid:03d} (attempt {st['attempts']})")

    def spawn(self, step: StepSpec, params: dict[str, Any], goal: str | None) -> int:
        name = f"{self.spec.name}/{step.id}"
        kw: dict[str, Any] = {"name": name, "timeout": step.timeout, "needs": step.resources or None}
        if step.priority:
            kw["priority"] = step.priority
        if step.cache:
            kw["cache"] = CachePolicy(ttl=step.cache_ttl, refresh=self.refresh)
        if step.agent is not None:
            pid = self.ctx.service("agents").spawn_child(self.ctx, step.agent, goal or "", params, **kw)
        else:
            pid = self.ctx.spawn(step.tool, params=params, **kw)
        if step.max_tokens or step.max_cost:  # the step's LLM budget (its own children's use included)
            self.ctx.service("agents").set_budget(pid, step.max_tokens, step.max_cost)
        return pid

    def ended(self, sid: str, info: ProcessInfo) -> None:
        st = self.steps[sid]
        st.update(finished=time.time(), duration=round(info.runtime, 3), pid=info.pid)
        if info.state == "Completed":
            source = self.service.cached_from(info.pid) if self.spec.step(sid).cache else None
            st.update(state="completed", output=info.output, error=None, cached_from=source)
            self.service.step_event(self.ctx, "workflow.step_completed", step=sid, child=info.pid,
                                        duration=round(info.runtime, 3), cached_from=source)
            if source is not None:
                self.log(f"step {sid} reused the result of process {source:03d}")
            else:
                self.log(f"step {sid} completed in {info.runtime:.2f}s")
            for ost in self.steps.values():  # a fallback that succeeded stands in for its step
                if ost["state"] == "failed" and ost.get("fallback_to") == sid:
                    ost.update(state="completed", output=info.output, via=sid)
        else:
            error = info.error or info.state.lower()
            self.service.step_event(self.ctx, "workflow.step_failed", step=sid, child=info.pid,
                                        error=error, attempt=st["attempts"])
            self.log(f"step {sid} {info.state.lower()}: {error}")
            st.update(error=error)
            if info.state == "Cancelled":  # stopped by a person: not worth retrying
                st.update(state="cancelled")
                self.on_failure(sid, error, retryable=False)
            else:
                st.update(state="failed")
                self.on_failure(sid, error, retryable=True)

    def on_failure(self, sid: str, error: str, retryable: bool) -> None:
        step = self.spec.step(sid)
        st = self.steps[sid]
        policy = step.retry.policy() if step.retry is not None else None
        if retryable and policy is not None and policy.should_retry(st["attempts"], error):
            delay = policy.delay(st["attempts"], self.rand)
            st.update(state="retrying", next_at=time.time() + delay)
            self.service.step_event(self.ctx, "workflow.step_retry", step=sid, attempt=st["attempts"] + 1,
                                        delay=round(delay, 3), error=error)
            self.log(f"step {sid}: attempt {st['attempts'] + 1} of {policy.max_attempts} in {delay:.2f}s")
            return
        if step.on_error == "skip":
            st.update(state="skipped", output=None)
            self.log(f"step {sid} skipped after: {error}")
            return
        fb = step.fallback
        if fb is not None and self.steps[fb]["state"] == "pending":
            st["fallback_to"] = fb
            self.log(f"step {sid} failed; running fallback {fb}")
            self.start(fb, standing_in_for=sid)
            return
        self.stopping = True

    def finish(self) -> dict[str, Any]:
        failed = [sid for sid in self.order
                  if self.steps[sid]["state"] in ("failed", "cancelled") and not self._covered(sid)]
        if failed:
            sid = failed[0]
            st = self.steps[sid]
            raise ToolError(f"step {sid} {st['state']}: {st['error']}")
        return {"run_dir": self.state["run_dir"],
                "steps": {sid: st["output"] for sid, st in self.steps.items() if st["state"] == "completed"}}

    def _covered(self, sid: str) -> bool:
        """A failed fallback step is not itself a failure of the workflow when the step it stood in
        for has already failed the run (that one is reported)."""
        return sid in self.standby and self.steps[sid].get("via") is not None and any(
            st.get("fallback_to") == sid and st["state"] == "failed" for st in self.steps.values())

    # ------------------------------------------------------------------ helpers

    def scope(self) -> dict[str, Any]:
        return {
            "inputs": self.state["inputs"],
            "steps": {sid: {"output": st["output"], "state": st["state"]} for sid, st in self.steps.items()
                      if st["state"] in DONE_OK},
            "run": {"dir": self.state["run_dir"], "pid": self.ctx.pid, "attempt": self.state["attempt"]},
            "workflow": workflow_scope(self.spec),
        }

    def describe(self) -> str:
        done = sum(1 for st in self.steps.values() if st["state"] in ENDED)
        running = [sid for sid in self.order if self.steps[sid]["state"] == "running"]
        total = len([s for s in self.order if s not in self.standby]) or len(self.order)
        now = f"Step {min(done + 1, total)} of {total}"
        return f"{now}: {', '.join(running)}" if running else now

    def commit(self) -> None:
        """Checkpoint what changed (durable before it returns): the whole state every FULL_EVERY
        commits, else only the steps that changed, so a long chain costs O(changes), not O(steps)."""
        changed = {sid: st for sid, st in self.steps.items() if self.committed.get(sid) != st}
        if self.since_full >= FULL_EVERY or not self.committed:
            self.ctx.checkpoint(self.state)
            self.since_full = 0
        else:
            self.ctx.checkpoint({"delta": True, "attempt": self.state["attempt"], "steps": changed})
            self.since_full += 1
        for sid, st in changed.items():
            self.committed[sid] = dict(st)
        total = len([s for s in self.order if s not in self.standby]) or 1
        done = sum(1 for sid, st in self.steps.items() if st["state"] in ENDED and sid not in self.standby)
        self.ctx.progress(min(done, total), total, self.describe())

    def log(self, line: str) -> None:
        self.ctx.log(line)


@tool(name="workflow", kind=ProcessKind.WORKFLOW, hidden=True, idempotent=True)
def workflow(ctx: ProcessContext, spec: dict, inputs: dict | None = None, run_dir: str = "",  # noqa: B006
             seed: int | None = None, no_cache: bool = False) -> dict:
    """Run a workflow spec's steps as child processes (started by `workflow run`).

    Args:
        spec: the workflow spec (as loaded from its file, validated again here)
        inputs: input values, defaults filled in
        run_dir: the directory this run keeps its files in ({{ run.dir }})
        seed: seed for retry jitter (reproducible delays)
        no_cache: cached steps run afresh and store their new results (`workflow run --no-cache`)
    """
    wf = spec_from_data(spec, spec.get("source") or spec.get("name", "<spec>"))
    state = ctx.restored if isinstance(ctx.restored, dict) and "steps" in ctx.restored else None
    if state is not None and state.get("delta"):  # recovered: its last checkpoint is a delta
        state = fold(ctx.checkpoints())
    if state is None:
        run_dir = run_dir or ctx.workdir()
        # inputs (their defaults, typically) may name where the spec or the run lives
        values = refs.resolve(wf.resolve_inputs(inputs or {}), {"workflow": workflow_scope(wf),
                                                                "run": {"dir": run_dir, "pid": ctx.pid}})
        state = fresh_state(wf, values, run_dir)
    for s in wf.steps:  # a spec may have gained a step since the checkpoint
        state["steps"].setdefault(s.id, new_step())
    return WorkflowRun(ctx, wf, state, seed, refresh=no_cache).run()
