"""Workflows: find and load specs, run them, report their status, retry them. A component of the
kernel (`kernel.workflows`); the body of a workflow process is `runner.workflow`, which uses only
the `ctx` API (and this service, through `ctx.service("workflows")`, for its step events)."""

from __future__ import annotations

import difflib
import os
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.models import IllegalTransition, LlmunixError, NoSuchProcess, Priority, ProcessInfo, format_pid
from llmunix.process import ProcessContext
from llmunix.workflows import dag, runner
from llmunix.workflows.spec import SpecError, WorkflowSpec, load_spec, spec_from_data
from llmunix.workflows.status import WorkflowStatus, build_status, typical

EXAMPLES = Path(__file__).parent / "examples"
SPEC_SUFFIXES = (".yaml", ".yml", ".toml", ".md")
STEP_HISTORY = 20  # durations kept per step for the ETA


@dataclass(frozen=True, slots=True)
class SpecInfo:
    """One spec found by `workflow list`: valid or not (then `error` says why)."""

    name: str
    path: str
    origin: str  # examples, ./workflows, home
    description: str
    steps: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "origin": self.origin, "description": self.description,
                "steps": self.steps, "error": self.error}


@dataclass(frozen=True, slots=True)
class RetryStarted:
    """What `workflow_retry` started: the workflow (same PID), the steps it re-runs, the attempt."""

    info: ProcessInfo
    steps: tuple[str, ...]
    attempt: int

    @property
    def pid(self) -> int:
        return self.info.pid


if TYPE_CHECKING:
    from llmunix.kernel import Kernel


class WorkflowService:
    """See the module docstring. State: `_step_durations[(workflow, step)]`, recent step
    durations (for the ETA), fed by the runs' `workflow.step_completed` events."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel  # the facade: spawn, info, checkpoints, registry, agents
        self._step_durations: dict[tuple[str, str], deque[float]] = {}
        self._wf_lock = threading.Lock()

    # ------------------------------------------------------------------ specs

    def workflow_dirs(self) -> list[tuple[str, Path]]:
        """Where specs are looked for, in order: ./workflows, the home's workflows/, the examples."""
        dirs = [("./workflows", Path(self.kernel.cwd()) / "workflows")]
        if self.kernel.home is not None:
            dirs.append(("home", self.kernel.home / "workflows"))
        dirs.append(("examples", EXAMPLES))
        return dirs

    def workflow_specs(self) -> list[SpecInfo]:
        """Every spec file found; a name found twice is listed once (the first place wins)."""
        found: dict[str, SpecInfo] = {}
        for origin, d in self.workflow_dirs():
            if not d.is_dir():
                continue
            for path in sorted(d.iterdir()):
                if path.suffix.lower() not in SPEC_SUFFIXES or not path.is_file():
                    continue
                try:
                    spec = self._checked_spec(load_spec(path))
                    info = SpecInfo(spec.name, str(path), origin, spec.description, len(spec.steps))
                except LlmunixError as exc:
                    info = SpecInfo(path.stem, str(path), origin, "", 0, str(exc))
                found.setdefault(info.name, info)
        return sorted(found.values(), key=lambda i: i.name)

    def workflow_spec(self, name: str) -> WorkflowSpec:
        """A spec by name (as `workflow list` shows) or by file path, checked: DAG, tools, refs."""
        path = Path(name).expanduser()
        if path.suffix.lower() in SPEC_SUFFIXES and (path.is_file() or os.sep in name):
            if not path.is_absolute():
                path = Path(self.kernel.cwd()) / path
            return self._checked_spec(load_spec(path))
        for _origin, d in self.workflow_dirs():
            for suffix in SPEC_SUFFIXES:
                candidate = d / f"{name}{suffix}"
                if candidate.is_file():
                    return self._checked_spec(load_spec(candidate))
        specs = self.workflow_specs()
        for info in specs:
            if info.name == name:
                if info.error:
                    raise SpecError(info.error)
                return self._checked_spec(load_spec(info.path))
        close = difflib.get_close_matches(name, [i.name for i in specs], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; `workflow list` shows them"
        raise LlmunixError(f"no workflow named {name!r}{hint}")

    def _checked_spec(self, spec: WorkflowSpec) -> WorkflowSpec:
        dag.build(spec)
        where = spec.source or spec.name
        for s in spec.steps:
            if s.agent is not None:
                try:
                    self.kernel.agents.definition(s.agent)
                except LlmunixError as exc:
                    raise SpecError(f"{where}: step {s.id!r}: {exc}") from None
            if s.tool is None:
                continue
            try:
                t = self.kernel.registry.get(s.tool)
            except LlmunixError as exc:
                raise SpecError(f"{where}: step {s.id!r}: {exc}") from None
            # Parameter names now; their values (references included) when the step starts.
            names = [p.name for p in t.params]
            missing = [p.name for p in t.params if p.required and p.name not in s.with_]
            if missing:
                raise SpecError(f"{where}: step {s.id!r}: tool {t.name!r} needs parameter {missing[0]!r} "
                                f"in 'with' (its parameters: {', '.join(names)})")
            unknown = [k for k in s.with_ if k not in names]
            if unknown and not t.open_ended and t.validated:
                raise SpecError(f"{where}: step {s.id!r}: tool {t.name!r} has no parameter {unknown[0]!r} "
                                f"(its parameters: {', '.join(names) or 'none'})")
        return spec

    # ------------------------------------------------------------------ running

    def workflow_run(self, name: str | WorkflowSpec, inputs: Mapping[str, Any] | None = None, *,
                     priority: Priority | str | None = None, seed: int | None = None, no_cache: bool = False) -> int:
        """Start a workflow process; returns its PID. Everything that can be checked before it
        starts is (spec, DAG, tools, inputs): a bad one raises and nothing starts. `no_cache`:
        steps with `cache: true` run afresh (and store their results)."""
        spec = name if isinstance(name, WorkflowSpec) else self.workflow_spec(name)
        if isinstance(name, WorkflowSpec):
            self._checked_spec(spec)
        values = spec.resolve_inputs(dict(inputs or {}))
        prio = Priority.parse(priority or spec.priority or Priority.NORMAL)
        data = spec.model_dump(by_alias=True, exclude_none=True)
        return self.kernel.spawn("workflow", name=spec.name, priority=prio,
                                 params={"spec": data, "inputs": values, "run_dir": "", "seed": seed,
                                         "no_cache": no_cache})

    def workflow_pid(self, target: str | int) -> int:
        """A workflow's PID from a PID or a name (its newest run: a live one first)."""
        text = str(target).strip()
        if text.isdigit():
            pid = int(text)
            info = self.kernel.info(pid)
            if info.kind != "workflow":
                raise LlmunixError(f"process {format_pid(pid)} is a {info.kind}, not a workflow")
            return pid
        table = self.kernel.table
        with table.lock:
            live = [p.pid for p in table.live.values() if p.kind == "workflow" and p.name == text]
            if live:
                return max(live)
            recent = [p.pid for p in table.procs.values() if p.kind == "workflow" and p.name == text]
        if recent:
            return max(recent)
        if self.kernel.store is not None:
            pid = self.kernel.store.latest_by_name(text, "workflow")
            if pid is not None:
                return pid
        raise NoSuchProcess(f"no run of workflow {text!r}; start one with `workflow run {text}`")

    def workflow_status(self, target: str | int) -> WorkflowStatus:
        pid = self.workflow_pid(target)
        info = self.kernel.info(pid)
        spec, state = self._workflow_state(info)
        children: dict[int, ProcessInfo] = {}
        for st in (state or {}).get("steps", {}).values():
            if st.get("pid") is not None:
                try:
                    children[st["pid"]] = self.kernel.info(st["pid"])
                except LlmunixError:
                    pass
        return build_status(info, spec, state, children, lambda sid: self._step_estimate(spec.name, sid))

    def workflow_retry(self, target: str | int, step: str | None = None) -> RetryStarted:
        """Run a finished workflow again under the same PID: `step` (an id, or a number counted
        from 1) and everything that depends on it, or else its failed and unfinished steps. The
        committed outputs of the steps upstream are reused."""
        pid = self.workflow_pid(target)
        info = self.kernel.info(pid)
        if not info.is_done:
            what = "paused" if info.phase == "paused" else f"still running ({info.display_state})"
            raise IllegalTransition(f"workflow {format_pid(pid)} ({info.name}) is {what}; "
                                    "kill it, or wait for it to end, before retrying")
        spec, state = self._workflow_state(info)
        if state is None:
            raise LlmunixError(f"workflow {format_pid(pid)} has no committed state to retry from")
        graph = dag.build(spec)
        steps = state["steps"]
        if step is not None:
            sid = self._step_id(spec, step)
            unmet = [u for u in graph.predecessors(sid) if steps.get(u, {}).get("state") not in runner.DONE_OK]
            if unmet:  # it would only wait for them and fail again
                raise LlmunixError(f"step {sid!r} needs {', '.join(unmet)}, which did not complete; retry "
                                   f"{unmet[0]!r} (it re-runs {sid!r} too), or retry without --step")
            again = dag.downstream(graph, [sid])
        else:
            again = {sid for sid, st in steps.items() if st.get("state") not in ("completed", "skipped")}
            again -= dag.fallbacks(spec) - {sid for sid, st in steps.items() if st.get("via")}
            if not again:
                raise LlmunixError(f"workflow {format_pid(pid)} has no failed steps; "
                                   "name one to re-run with --step")
            again = dag.downstream(graph, sorted(again))
        for sid in again:
            steps[sid] = runner.new_step() | {"attempts": 0}
        for st in steps.values():  # a fallback that stood in for a re-run step is forgotten
            if st.get("fallback_to") in again:
                st.pop("fallback_to", None)
        state["attempt"] = int(state.get("attempt") or 1) + 1
        earlier = [s for _v, s in self.kernel.checkpoints(pid)]  # versions go on from where they were
        # The reset state is a version of its own at once (durable before it returns), so
        # `workflow status` shows the new attempt even before the process has started.
        self.kernel.rerun(pid, restored=state, checkpoints=[*earlier, state], action="workflow retry",
                          note=f"retry attempt {state['attempt']}: " + ", ".join(sorted(again)),
                          how=f"attempt {state['attempt']}", steps=sorted(again))
        return RetryStarted(self.kernel.info(pid), tuple(s.id for s in spec.steps if s.id in again),
                            state["attempt"])

    def _step_id(self, spec: WorkflowSpec, step: str) -> str:
        text = str(step).strip()
        ids = [s.id for s in spec.steps]
        if text in ids:
            return text
        if text.isdigit() and 1 <= int(text) <= len(ids):
            return ids[int(text) - 1]
        raise LlmunixError(f"workflow {spec.name!r} has no step {text!r} (steps: "
                           + ", ".join(f"{i}={s}" for i, s in enumerate(ids, 1)) + ")")

    def _workflow_state(self, info: ProcessInfo) -> tuple[WorkflowSpec, dict[str, Any] | None]:
        params = info.context.input_parameters
        spec = spec_from_data(dict(params["spec"]), params["spec"].get("source") or info.name)
        state = runner.fold([s for _v, s in self.kernel.checkpoints(info.pid)])
        return spec, state

    # ------------------------------------------------------------------ called by the runner (its body)

    def step_event(self, ctx: ProcessContext, type: str, **data: Any) -> None:  # noqa: A002
        """A workflow process publishes one of its `workflow.*` events (step started, completed,
        failed, retry): the event names the workflow, so that consumers need no lookup."""
        if not type.startswith("workflow."):
            raise LlmunixError(f"not a workflow event: {type!r}")
        event = self.kernel.table.publish(type, ctx.pid, **data)
        if type == "workflow.step_completed" and data.get("cached_from") is None:  # the ETA's history
            self._record_step_duration(str(event.data["name"]), str(data["step"]), float(data["duration"]))

    def cached_from(self, pid: int) -> int | None:
        """The process whose stored result step process `pid` reused (None: it ran)."""
        return self.kernel.cached_from(pid)

    def _record_step_duration(self, workflow: str, step: str, seconds: float) -> None:
        with self._wf_lock:
            runs = self._step_durations.get((workflow, step))
            if runs is not None:
                runs.append(seconds)
            elif self.kernel.store is None:
                self._step_durations[(workflow, step)] = deque([seconds], maxlen=STEP_HISTORY)
            # else: loaded from the store on first use, where this run already is

    def _step_estimate(self, workflow: str, step: str) -> float | None:
        """The typical (median) running time of this step in recent runs, or None."""
        with self._wf_lock:
            runs = self._step_durations.get((workflow, step))
            if runs is None:
                runs = self._step_durations[(workflow, step)] = deque(self._stored_durations(workflow, step),
                                                                      maxlen=STEP_HISTORY)
            return typical(list(runs))

    def _stored_durations(self, workflow: str, step: str) -> list[float]:
        if self.kernel.store is None:
            return []
        return list(reversed(self.kernel.store.durations_by_name(f"{workflow}/{step}", STEP_HISTORY)))
