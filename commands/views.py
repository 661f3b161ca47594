"""Pure renderers: snapshots in, rich renderables or plain text out. No I/O, no kernel calls.

Every listing has two faces: a rich one for a terminal, and a plain one for pipes (whitespace-
separated columns, header first, one record per line, no box characters or colour), so that
`ps | grep Running | awk '{print $1}'` works.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from commands.resilience_views import attempt_lines
from commands.terminal_safe import safe_text, safe_tree
from llmunix.learning import Deadline, ToolPerformance
from llmunix.models import ProcessInfo, PsRow, format_duration, format_memory, format_pid, iso_time
from llmunix.observe.redact import redact
from llmunix.pool import fmt_amount
from llmunix.tools.registry import Tool

if TYPE_CHECKING:
    from llmunix.agents.usage import ProcessUsage, TokenUsage

# The one place that maps states to styles.
STATE_STYLES = {
    "Pending": "yellow",
    "Running": "bold green",
    "Paused": "bold yellow",
    "Preempted": "magenta",
    "Waiting": "cyan",
    "Deadlocked": "bold red",
    "Completed": "blue",
    "Failed": "bold red",
    "Cancelled": "red",
    "Interrupted": "bold magenta",
}

PRIORITY_STYLES = {
    "critical": "bold red",
    "high": "bold",
    "normal": "",
    "low": "dim",
    "idle": "dim italic",
}

PS_COLUMNS = ("PID", "TOOL", "STATE", "PRIORITY", "RUNTIME", "MEMORY", "CPU%", "PROGRESS")

def fmt_cpu(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:.1f}"


def fmt_progress(info: ProcessInfo) -> str:
    p = info.progress
    if p.percentage is not None:
        return f"{p.percentage:.0f}%"
    if p.current_step:
        return f"step {p.current_step}"
    return "-"


def plain_word(text: str) -> str:
    """Plain output keeps one field per column: no spaces inside a field (and nothing that could
    drive a terminal, see `safe_text`)."""
    return "_".join(safe_text(text).split()) or "-"


def ps_row(info: ProcessInfo | PsRow) -> tuple[str, ...]:
    r = info.ps_row() if isinstance(info, ProcessInfo) else info
    return (
        format_pid(r.pid),
        safe_text(r.name),
        safe_text(r.display_state),
        r.priority,
        format_duration(r.runtime),
        format_memory(r.memory_mb),
        fmt_cpu(r.cpu_percent),
        _progress_text(r.percentage, r.step),
    )


def _progress_text(percentage: float | None, step: int) -> str:
    if percentage is not None:
        return f"{percentage:.0f}%"
    return f"step {step}" if step else "-"


def ps_plain(items: Sequence[ProcessInfo] | Sequence[PsRow]) -> str:
    """Aligned, whitespace-separated columns with a header line. Listings can be 100,000 rows
    long and the columns after the PID repeat a few values, so they are formatted (and padded)
    once per distinct combination, and each line is its PID plus that ready text."""
    rows = [i.ps_row() for i in items] if items and isinstance(items[0], ProcessInfo) else items
    cells = {}
    for rest in {r[1:] for r in rows}:
        name, state, priority, runtime, memory, cpu, percentage, step = rest[:8]
        cells[rest] = (plain_word(name), plain_word(state), priority, format_duration(runtime), format_memory(memory),
                       fmt_cpu(cpu), _progress_text(percentage, step))
    header = PS_COLUMNS[1:]
    widths = [max(map(len, column)) for column in zip(header, *cells.values(), strict=True)]
    line = "  " + "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    tails = {rest: line.format(*c) for rest, c in cells.items()}
    pid_width = max(3, len(str(max(r[0] for r in rows)))) if rows else 3
    out = [PS_COLUMNS[0].ljust(pid_width) + line.format(*header)]
    pid_tail = f"%-{pid_width}d%s"  # PIDs from 100 up need no zero padding
    out.extend([pid_tail % (r[0], tails[r[1:]]) if r[0] >= 100 else f"{r[0]:03d}".ljust(pid_width) + tails[r[1:]]
                for r in rows])
    return "\n".join(out)


def ps_tree_plain(entries: Sequence[tuple[ProcessInfo, str, int | None]]) -> str:
    """`ps --tree` piped: parents before their children, a PPID column (`-` for a root) after
    the PID, the other columns as `ps_plain`'s; names stay single fields (`awk '$2 == "004"'`
    lists 004's children)."""
    rows = [(PS_COLUMNS[0], "PPID", *PS_COLUMNS[1:])]
    for info, _guide, parent in entries:
        row = ps_row(info)
        rows.append((row[0], "-" if parent is None else format_pid(parent), plain_word(row[1]),
                     plain_word(row[2]), *row[3:]))
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(line.format(*r).rstrip() for r in rows)


def progress_bar(percentage: float | None, width: int = 10) -> Text:
    if percentage is None:
        return Text("-", style="dim")
    filled = round(width * percentage / 100)
    return Text.assemble(("█" * filled, "green"), ("░" * (width - filled), "dim"), f" {percentage:3.0f}%")


def ps_table(infos: Sequence[ProcessInfo] | Sequence[PsRow], *, title: str | None = None,
             guides: Sequence[str] | None = None) -> Table:
    """The rich listing; with `guides` (`ps --tree`), each name is drawn after its tree guide."""
    table = Table(title=title, box=None, header_style="bold", pad_edge=False, expand=False)
    for col in PS_COLUMNS:
        table.add_column(col, justify="right" if col in ("MEMORY", "CPU%") else "left", no_wrap=True)
    for n, info in enumerate(infos):
        row = ps_row(info)
        percentage = info.progress.percentage if isinstance(info, ProcessInfo) else info.percentage
        progress: Text | str = progress_bar(percentage) if percentage is not None else row[7]
        table.add_row(
            Text(row[0], style="cyan"),
            Text.assemble((guides[n], "dim"), row[1]) if guides else Text(row[1]),
            Text(row[2], style=STATE_STYLES.get(row[2], "")),
            Text(row[3], style=PRIORITY_STYLES.get(row[3], "")),
            row[4],
            row[5],
            row[6],
            progress,
        )
    if not infos:
        table.caption = "no processes"
    return table


def state_line(info: ProcessInfo, cached_from: int | None = None) -> str:
    detail = info.detail
    if info.phase == "running" and info.progress.message and not detail.startswith("stalled"):  # (resilience)
        detail = info.progress.message
    if info.state == "Completed":
        detail = f"cached from PID {format_pid(cached_from)}" if cached_from is not None else f"exit {info.exit_code}"
    return f"{info.display_state} ({detail})" if detail and detail != "running" else info.display_state


def seconds_text(x: float) -> str:
    """`250ms`, `2.3s`, `95s`, `4.2m`, `1.5h`: a typical running time."""
    if x < 0.9995:
        return f"{x * 1000:.0f}ms"
    if x < 99.95:
        return f"{x:.1f}s"
    if x < 600:
        return f"{x:.0f}s"
    return f"{x / 60:.1f}m" if x < 5400 else f"{x / 3600:.1f}h"


def performance_text(perf: ToolPerformance) -> str:
    """The seed's `avg 2.3s (p90 4.1s) over 57 runs, 96% success`."""
    if not perf.runs:
        return "no finished runs yet"
    runs = f"over {perf.runs} run{'s' if perf.runs != 1 else ''}, {perf.success_rate:.0f}% success"
    if perf.mean is None:
        return f"no completed run ({runs})"
    p90 = f" (p90 {seconds_text(perf.p90)})" if perf.p90 is not None else ""
    return f"avg {seconds_text(perf.mean)}{p90} {runs}"


def deadline_text(d: Deadline, now: float) -> str:
    """`14:03:07 (in 25s)`, `... at risk: expected 40s`, `... missed`, `... met`."""
    when = iso_time(d.at)[11:19]
    if d.met:
        return f"{when} (met)"
    if d.missed:
        return f"{when} (missed)"
    left = d.at - now
    text = f"{when} (in {format_duration(left) if left >= 60 else f'{max(0.0, left):.0f}s'})"
    if d.at_risk and d.expected is not None:
        text += f"; at risk: expected {seconds_text(d.expected)}"
    return text


def _short(value: Any, limit: int = 200) -> str:
    if value is None:
        return "-"
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if isinstance(value, str):
        text = value if "\n" not in value else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def isolated(info: ProcessInfo) -> bool:
    """Its body runs (ran) in an isolated worker OS process (llmunix/isolation.py)."""
    return info.subprocess_pid is not None and any(h.event == "isolated worker" for h in info.history)


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def resources_text(info: ProcessInfo) -> str:
    """`ps -l`'s Resources line: memory (whose), CPU, I/O."""
    r = info.resources
    if r.memory_mb is None and info.subprocess_pid is not None:
        memory = "memory not sampled" + (" (it ended before the monitor's first sample)" if info.is_done else " yet")
    elif r.memory_mb is None:
        memory = "memory not attributed (thread-backed)"
    elif info.kind != "tool" and info.subprocess_pid is None:
        memory = f"{format_memory(r.memory_mb)} memory (its live child processes')"
    elif isolated(info) and r.rss_mb is not None:
        memory = f"{format_memory(r.memory_mb)} memory of its own (RSS {format_memory(r.rss_mb)})"
    else:
        memory = f"{format_memory(r.memory_mb)} memory"
    cpu = f"{fmt_cpu(r.cpu_percent)}% CPU" if r.cpu_percent is not None else "CPU not sampled yet"
    io = f", {r.io_operations} I/O ops" if r.io_operations is not None else ""
    if r.read_bytes is not None and r.write_bytes is not None:
        io += f" ({fmt_bytes(r.read_bytes)} read, {fmt_bytes(r.write_bytes)} written)"
    return f"{memory}, {cpu}{io}"


def tokens_text(u: TokenUsage) -> str:
    """`1,230 (1,000 in, 230 out; 3 calls), $0.0012`."""
    calls = f"{u.calls} call{'s' if u.calls != 1 else ''}"
    cost = u.cost_text()
    return (f"{u.total_tokens:,} ({u.prompt_tokens:,} in, {u.completion_tokens:,} out; {calls})"
            + ("" if cost == "-" else f", {cost}"))


def usage_lines(u: ProcessUsage) -> list[str]:
    """`ps -l`'s lines about LLM tokens and money: its own, with its children's, its budget."""
    lines = []
    if u.own.calls:
        lines.append(f"Tokens: {tokens_text(u.own)}")
    if u.total.calls != u.own.calls:
        lines.append(f"Tokens with children: {tokens_text(u.total)}")
    if u.budget:
        used = [f"{u.total.total_tokens:,} tokens"] if u.budget.max_tokens is not None else []
        if u.budget.max_cost is not None:
            used.append(u.total.cost_text())
        lines.append(f"Budget: {u.budget.describe()} (used {', '.join(used)})")
    return lines


def ps_tree(info: ProcessInfo, *, history: int = 5, performance: ToolPerformance | None = None,
            cached_from: int | None = None, deadline: Deadline | None = None, now: float = 0.0,
            usage: ProcessUsage | None = None) -> Tree:
    """The seed's `ps -l` view. `performance`: its tool's figures (the Performance line);
    `cached_from`: the process whose stored result it reused; `deadline`: its deadline, judged
    at `now` (a time.time()); `usage`: its LLM tokens, cost and budget."""
    style = STATE_STYLES.get(info.display_state, "")
    root = Tree(Text.assemble(("Process ", "bold"), (info.process_id, "bold cyan"), " - ",
                              (info.name, "bold")))
    root.add(Text.assemble("State: ", (state_line(info, cached_from), style)))
    prio = info.priority.title
    if info.effective_priority != info.priority:
        prio += f" (aged to {info.effective_priority.label} while waiting)"
    root.add(f"Priority: {prio}")
    workflow = info.kind == "workflow"
    if workflow:  # its spec and step table are what `workflow status` shows
        spec = info.context.input_parameters.get("spec") or {}
        root.add(f"Workflow: {spec.get('source') or info.name} (steps: `workflow status {info.process_id}`)")
    elif info.name != info.tool_name or info.kind != "tool":
        root.add(f"{info.kind.title()}: {info.tool_name}")
    root.add(f"Resources: {resources_text(info)}")
    if info.needs:
        root.add("Needs: " + needs_text(info.needs, info.predicted_needs))
    p = info.progress
    if p.percentage is not None:
        root.add(f"Progress: {p.percentage:.0f}% complete ({p.current_step} of {p.total_steps})")
    elif p.current_step:
        root.add(f"Progress: step {p.current_step}")
    if info.attempts is not None:  # resilience: "Attempt: 2 of 5, next at 14:03:07", "Restarts: 3 of 10"
        for line in attempt_lines(info.attempts):
            root.add(line)
    runtime = format_duration(info.runtime)
    if p.eta is not None and not info.is_done:
        runtime += f" (ETA: {format_duration(p.eta)})"
    root.add(f"Runtime: {runtime}")
    for line in usage_lines(usage) if usage is not None else ():
        root.add(line)
    if deadline is not None:
        root.add(f"Deadline: {deadline_text(deadline, now)}")
    if performance is not None:
        root.add(f"Performance: {performance_text(performance)}")
    root.add(f"Context: {info.context.working_directory}")
    params = info.context.input_parameters
    root.add(f"Input: {_short(redact(params.get('inputs') or {} if workflow else params))}")
    if info.context.intermediate_results and not workflow:
        from commands.agents_views import agent_branches  # agents: Reasoning, Tools Used, Actions, ...

        if info.kind != "agent" or not agent_branches(info, root, tokens_shown=usage is not None):
            root.add(f"Intermediate: {_short(redact(info.context.intermediate_results))}")
    if info.is_done:
        root.add(f"Output: {_short(info.output)}")
        root.add(f"Exit: {'-' if info.exit_code is None else info.exit_code}")
    if info.error:
        root.add(Text.assemble("Error: ", (info.error, "red")))
    if info.after:
        root.add("After: " + ", ".join(format_pid(a) for a in info.after))
    if info.parent is not None:
        root.add(f"Parent: {format_pid(info.parent)}")
    if info.subprocess_pid is not None:
        if isolated(info):
            root.add(f"Isolated: worker OS pid {info.subprocess_pid} (its body runs in a process of its own)")
        else:
            root.add(f"Subprocess: OS pid {info.subprocess_pid}")
    if info.worker is not None:
        root.add(f"Worker: {info.worker} (its body {'ran' if info.is_done else 'runs'} on this Dask worker)")
    root.add(f"Owner: {info.owner}")
    if history and info.history:
        branch = root.add("History:")
        for h in info.history[-history:]:
            branch.add(f"{iso_time(h.timestamp)[11:23]}  {h.event}" + (f": {h.details}" if h.details else ""))
    return safe_tree(root)


def needs_text(needs: Any, predicted: Sequence[str] = ()) -> str:
    """`memory_mb=105 (predicted), gpu=1`."""
    return ", ".join(f"{k}={fmt_amount(v)}" + (" (predicted)" if k in predicted else "")
                     for k, v in sorted(needs.items()))


def process_record(info: ProcessInfo) -> dict[str, Any]:
    """`ps --json`'s record: the execution-state structure, secrets in parameters redacted."""
    record = info.to_dict()
    context = record["context"]
    context["input_parameters"] = redact(context["input_parameters"])
    context["intermediate_results"] = redact(context["intermediate_results"])
    return record


def tools_table(tools: Iterable[Tool]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("TOOL", style="cyan", no_wrap=True)
    table.add_column("PARAMETERS", no_wrap=True)
    table.add_column("SOURCE", style="dim", no_wrap=True)
    table.add_column("DESCRIPTION")
    for t in tools:
        table.add_row(*(Text(safe_text(f)) for f in (t.name, params_summary(t), t.source, t.description)))
    return table


def tools_plain(tools: Iterable[Tool]) -> str:
    rows = [("TOOL", "PARAMETERS", "SOURCE")] + [(plain_word(t.name), params_summary(t).replace(" ", ",") or "-",
                                                  safe_text(t.source))
                                                 for t in tools]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(f.ljust(widths[c]) for c, f in enumerate(r)).rstrip() for r in rows)


def params_summary(t: Tool) -> str:
    return " ".join(p.name if p.required else f"[{p.name}]" for p in t.params)


def tool_tree(t: Tool) -> Group:
    root = Tree(Text.assemble(("Tool ", "bold"), (t.name, "bold cyan")))
    root.add(f"Description: {t.description or '-'}")
    kind = "subprocess (runs in its own process group)" if t.subprocess else "python (runs on a worker thread)"
    root.add(f"Kind: {kind}")
    root.add(f"Source: {t.source}")
    root.add(f"Idempotent: {'yes' if t.idempotent else 'no'}")
    root.add(f"Remote: {'yes (runs on a Dask worker with --backend dask)' if t.remote else 'no (runs here)'}")
    params = root.add("Parameters:" if t.params else "Parameters: none")
    for p in t.params:
        label = f"{p.name}: {p.type}"
        label += " (required)" if p.required else f" = {p.default!r}"
        if p.description:
            label += f" — {p.description}"
        params.add(label)
    example = " ".join(f"{p.name}=..." if p.required else f"{p.name}={p.default}" for p in t.params)
    return Group(safe_tree(root), Text(safe_text(f"Example: run {t.name} {example}".rstrip()), style="dim"))


def finished_line(info: ProcessInfo) -> str:
    """One line about a finished process, for alerts and `wait`."""
    took = f"{info.runtime:.1f}s"
    name = safe_text(info.name)
    if info.state == "Completed":
        return f"[{info.process_id}] {name} completed in {took}"
    return f"[{info.process_id}] {name} {info.state.lower()} after {took}: {safe_text(info.error)}"
