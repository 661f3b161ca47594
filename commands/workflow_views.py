"""Pure renderers for `workflow`: specs and run statuses in, rich renderables out."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from commands.terminal_safe import safe_tree
from commands.views import STATE_STYLES, fmt_cpu
from llmunix.models import format_duration, format_memory, format_pid
from llmunix.workflows import dag
from llmunix.workflows.service import SpecInfo
from llmunix.workflows.spec import WorkflowSpec
from llmunix.workflows.status import StepStatus, WorkflowStatus

MARKS = {"completed": "[✓]", "running": "[◐]", "retrying": "[↻]", "pending": "[ ]", "failed": "[✗]",
         "cancelled": "[✗]", "skipped": "[-]"}
MARK_STYLES = {"completed": "green", "running": "yellow", "retrying": "magenta", "failed": "bold red",
               "cancelled": "red", "skipped": "dim"}


def specs_table(specs: Sequence[SpecInfo]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("NAME", "STEPS", "FROM", "DESCRIPTION"):
        table.add_column(col, no_wrap=col != "DESCRIPTION")
    for s in specs:
        desc = Text(f"invalid: {s.error}", style="red") if s.error else Text(s.description)
        table.add_row(s.name, str(s.steps) if not s.error else "-", s.origin, desc)
    return table


def spec_tree(spec: WorkflowSpec) -> Tree:
    """The DAG as a tree: inputs, then each step in the order it can run, with its tool and needs."""
    graph = dag.build(spec)
    standby = dag.fallbacks(spec)
    tree = Tree(Text.assemble(("Workflow: ", "bold"), spec.name, (f" — {spec.description}" if spec.description
                                                                   else "", "dim")))
    if spec.inputs:
        node = tree.add("Inputs:")
        for name, i in spec.inputs.items():
            default = "required" if i.is_required else f"default {i.default!r}"
            node.add(f"{name} ({i.type}, {default})" + (f": {i.description}" if i.description else ""))
    steps = tree.add(f"Steps ({len(spec.steps)}):")
    for level, generation in enumerate(nx.topological_generations(graph), 1):
        stage = steps.add(Text(f"Stage {level}" + (" (in parallel)" if len(generation) > 1 else ""), style="bold"))
        for sid in sorted(generation, key=[s.id for s in spec.steps].index):
            s = spec.step(sid)
            extras = []
            needs = list(graph.predecessors(sid))
            if needs:
                extras.append("needs " + ", ".join(needs))
            if s.retry is not None:
                extras.append(f"retry {s.retry.max_attempts}x")
            if s.timeout is not None:
                extras.append(f"timeout {format_duration(s.timeout)}")
            if s.cache:
                extras.append("cached" + (f" up to {_ttl(s.cache_ttl)} old" if s.cache_ttl else ""))
            if s.on_error != "fail":
                extras.append(f"on error {s.on_error if isinstance(s.on_error, str) else 'fallback ' + s.fallback}")
            if sid in standby:
                extras.append("runs only as a fallback")
            title = f"{s.id}" + (f" ({s.title})" if s.title and s.title != s.id else "")
            stage.add(Text.assemble((title, "cyan"), f": {s.runs}", (f"  [{'; '.join(extras)}]" if extras else "",
                                                                         "dim")))
    return safe_tree(tree)


def _ttl(seconds: float) -> str:
    """`1d`, `12h`, `30m`, `45s`: a cache TTL as the spec would say it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def planned_tree(spec: WorkflowSpec, pid: int) -> Tree:
    """What `workflow run` prints: each step, queued or waiting for its needs."""
    graph = dag.build(spec)
    standby = dag.fallbacks(spec)
    tree = Tree(f"Starting workflow: {spec.name} (PID: {format_pid(pid)})")
    for n, s in enumerate(spec.steps, 1):
        if s.id in standby:
            what = "Standby (fallback)"
        else:
            what = "Queued" if not list(graph.predecessors(s.id)) else "Waiting"
        tree.add(f"Step {n}: {s.label} → {what}")
    return safe_tree(tree)


def status_tree(st: WorkflowStatus) -> Tree:
    """The seed's workflow status tree."""
    tree = Tree(Text.assemble(("Workflow: ", "bold"), st.name, f" (PID: {format_pid(st.pid)})"))
    state = Text(st.state, style=STATE_STYLES.get(st.state, ""))
    if st.phase == "paused":
        state = Text("Paused", style=STATE_STYLES["Paused"])
    current = [i for i, s in enumerate(st.steps, 1) if s.state in ("running", "retrying")]
    if st.phase != "done" and st.total:
        state.append(f" (Step {current[0] if current else min(st.done + 1, st.total)} of {st.total})")
    elif st.error:
        state.append(f" ({st.error})", style="red")
    tree.add(Text.assemble("State: ", state) + (Text(f"  attempt {st.attempt}", style="dim") if st.attempt > 1
                                                else Text("")))
    tree.add(f"Progress: {st.percentage:.0f}% complete")
    eta = f" (ETA: {format_duration(st.eta)})" if st.eta is not None else ""
    tree.add(f"Runtime: {format_duration(st.runtime)}{eta}")
    steps = tree.add("Steps:")
    for s in st.steps:
        steps.add(step_line(s))
    if st.memory_mb is not None or st.cpu_percent is not None:
        tree.add(f"Resources: {format_memory(st.memory_mb)} memory, {fmt_cpu(st.cpu_percent)}% CPU")
    if st.run_dir:
        tree.add(f"Files: {st.run_dir}")
    return safe_tree(tree)


def step_line(s: StepStatus) -> Text:
    mark = MARKS.get(s.state, "[?]")
    text = Text(mark, style=MARK_STYLES.get(s.state, ""))
    text.append(f" {s.title}: ")
    state = s.state.capitalize()
    if s.phase == "paused":
        state = "Paused"
    text.append(state, style=STATE_STYLES.get(state, MARK_STYLES.get(s.state, "")))
    detail: list[str] = []
    if s.state == "completed" and s.cached_from is not None:
        detail.append(f"cached from PID {format_pid(s.cached_from)}")
    elif s.state == "completed":
        if s.elapsed is not None:
            detail.append(f"{s.elapsed:.1f}s")
        detail.append("100%")
        if s.via and s.via != s.id:
            detail.append(f"via fallback {s.via}")
    elif s.state == "running":
        if s.percentage is not None:
            detail.append(f"{s.percentage:.0f}%")
        if s.elapsed is not None:
            detail.append(format_duration(s.elapsed))
        if s.max_attempts > 1:
            detail.append(f"attempt {s.attempts} of {s.max_attempts}")
        if s.via and s.via != s.id:
            detail.append(f"in place of {s.via}")
    elif s.state == "retrying":
        wait = f" in {s.next_retry_in:.1f}s" if s.next_retry_in is not None else ""
        detail.append(f"attempt {s.attempts + 1} of {s.max_attempts}{wait}")
        if s.error:
            detail.append(f"last error: {s.error}")
    elif s.state in ("failed", "cancelled", "skipped") and s.error:
        detail.append(s.error)
    elif s.state == "pending" and s.standby:
        detail.append("fallback only")
    if s.pid is not None and s.state not in ("pending",):
        detail.append(f"PID {format_pid(s.pid)}")
    if detail:
        text.append(f" ({', '.join(detail)})", style="dim" if s.state != "failed" else "red")
    return text
