"""Pure renderers for agents: definitions, memory, and the agent part of `ps -l`.

Snapshots in (AgentInfo, RunMemory, ProcessInfo), rich renderables or plain text out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from commands.terminal_safe import safe_tree
from commands.views import STATE_STYLES, plain_word
from llmunix.agents.memory import RunMemory
from llmunix.agents.service import AgentInfo
from llmunix.models import ProcessInfo, format_pid, iso_time


def _source(info: AgentInfo) -> str:
    """`builtin`, or the file: relative to the working directory when it is under it."""
    if info.builtin:
        return "builtin"
    try:
        rel = os.path.relpath(info.source)
    except ValueError:
        return info.source
    return info.source if rel.startswith("..") else rel


def _tools(info: AgentInfo) -> str:
    return ", ".join(t if t else f"{w}?" for w, t in info.tools) or "-"


def agents_table(infos: Sequence[AgentInfo]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("AGENT", style="cyan", no_wrap=True)
    table.add_column("TOOLS")
    table.add_column("SOURCE", style="dim")
    table.add_column("DESCRIPTION")
    for i in infos:
        tools = Text()
        for n, (written, resolved) in enumerate(i.tools):
            if n:
                tools.append(", ")
            tools.append(resolved or written, style="" if resolved else "red strike")
        table.add_row(i.name, tools, _source(i), i.description)
    if not infos:
        table.caption = "no agents"
    elif any(i.missing for i in infos):
        table.caption = "struck out: granted, but no such tool here"
    return table


def agents_plain(infos: Sequence[AgentInfo]) -> str:
    rows = [("AGENT", "TOOLS", "SOURCE")] + [
        (plain_word(i.name), ",".join(t or f"{w}?" for w, t in i.tools) or "-", plain_word(_source(i))) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(f.ljust(widths[c]) for c, f in enumerate(r)).rstrip() for r in rows)


def agent_tree(info: AgentInfo, runs: Sequence[RunMemory]) -> Tree:
    root = Tree(Text.assemble(("Agent ", "bold"), (info.name, "bold cyan")))
    root.add(Text(f"Description: {info.description or '-'}"))
    tools = root.add("Tools:" if info.tools else "Tools: none")
    for written, resolved in info.tools:
        if resolved is None:
            tools.add(Text.assemble(written, (" (not available here)", "red")))
        elif resolved != written:
            tools.add(Text(f"{written} → {resolved}"))
        else:
            tools.add(Text(written))
    if info.model:
        root.add(Text(f"Model: {info.model}"))
    if info.version:
        root.add(Text(f"Version: {info.version}"))
    if info.capabilities:
        root.add(Text("Capabilities: " + ", ".join(info.capabilities)))
    if info.max_iterations:
        root.add(Text(f"Max iterations: {info.max_iterations}"))
    root.add(Text(f"Source: {_source(info)} ({info.format})"))
    for warning in info.warnings:
        root.add(Text.assemble(("Warning: ", "yellow"), warning))
    if runs:
        done = [r for r in runs if r.outcome == "Completed"]
        avg = sum(r.duration for r in done) / len(done) if done else None
        line = f"Memory: {len(runs)} run(s), {len(done)} completed"
        if avg is not None:
            line += f", {avg:.1f}s on average"
        branch = root.add(Text(line))
        for r in runs[-5:]:
            branch.add(run_line(r))
    else:
        root.add(Text("Memory: no runs yet"))
    return safe_tree(root)


def run_line(r: RunMemory) -> Text:
    return Text.assemble(f"{iso_time(r.time)[:19].replace('T', ' ')}  ",
                         (r.outcome, STATE_STYLES.get(r.outcome, "")),
                         f"  {r.duration:.1f}s  {r.iterations} it  {','.join(r.tools) or '-'}  {r.goal}")


MEMORY_COLUMNS = ("TIME", "AGENT", "PID", "OUTCOME", "DURATION", "ITER", "TOOLS", "GOAL")


def _memory_row(r: RunMemory) -> tuple[str, ...]:
    return (iso_time(r.time)[:19].replace("T", " "), r.agent, "-" if r.pid is None else format_pid(r.pid),
            r.outcome, f"{r.duration:.2f}s", str(r.iterations), ",".join(r.tools) or "-", r.goal)


def memory_table(runs: Sequence[RunMemory], search: str | None = None) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in MEMORY_COLUMNS:
        table.add_column(col, no_wrap=col not in ("TOOLS", "GOAL"), min_width=20 if col == "GOAL" else None,
                         overflow="fold" if col == "TOOLS" else "ellipsis",
                         justify="right" if col in ("DURATION", "ITER") else "left")
    for r in runs:
        row = _memory_row(r)
        table.add_row(row[0], Text(row[1], style="cyan"), row[2], Text(row[3], style=STATE_STYLES.get(r.outcome, "")),
                      *row[4:])
    if not runs:
        table.caption = f"no runs match {search!r}" if search else "no agent runs yet"
    return table


def memory_plain(runs: Sequence[RunMemory]) -> str:
    """One run per line; the goal (which may hold spaces) last."""
    rows = [MEMORY_COLUMNS] + [(r[0].replace(" ", "T"), *r[1:7], r[7]) for r in map(_memory_row, runs)]
    widths = [max(len(r[c]) for r in rows) for c in range(7)]
    return "\n".join("  ".join(f.ljust(widths[c]) for c, f in enumerate(r[:7])) + "  " + r[7] for r in rows)


def tool_memory_table(rows: Sequence[tuple[str, int, int, str | None]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("TOOL", "CALLS", "FAILED", "LAST ERROR"):
        table.add_column(col, justify="right" if col in ("CALLS", "FAILED") else "left")
    for tool, calls, failed, error in rows:
        table.add_row(Text(tool, style="cyan"), str(calls), Text(str(failed), style="red" if failed else ""),
                      error or "-")
    if not rows:
        table.caption = "no tool calls recorded yet"
    return table


def tool_memory_plain(rows: Sequence[tuple[str, int, int, str | None]]) -> str:
    lines = [("TOOL", "CALLS", "FAILED", "LAST_ERROR")] + [(t, str(c), str(f), e or "-") for t, c, f, e in rows]
    widths = [max(len(r[c]) for r in lines) for c in range(3)]
    return "\n".join("  ".join(f.ljust(widths[c]) for c, f in enumerate(r[:3])) + "  " + r[3] for r in lines)


# ---------------------------------------------------------------------------- ps -l


def agent_state(info: ProcessInfo) -> Mapping[str, Any] | None:
    """The agent loop's last checkpoint (see llmunix/agents/loop.py), if this is an agent's."""
    state = info.context.intermediate_results.get("checkpoint") if info.context.intermediate_results else None
    return state if isinstance(state, Mapping) and "agent" in state and "actions" in state else None


def action_count(state: Mapping[str, Any]) -> int:
    """How many tool calls the run has made (or is making). The checkpoint's `actions` keeps only
    the last ones, each tagged with its round (`iteration`, shared by parallel calls), so the
    count comes from the transcript: the finished rounds' results, plus the calls of the round in
    progress."""
    actions = state.get("actions") or []
    transcript = state.get("transcript")
    if not isinstance(transcript, list):
        return len(actions)
    done = sum(len(s.get("results") or ()) for s in transcript if isinstance(s, Mapping))
    return done + sum(1 for a in actions if (a.get("iteration") or 0) > len(transcript))


def agent_branches(info: ProcessInfo, tree: Tree, *, tokens_shown: bool = False) -> bool:
    """Add the seed's agent lines (Reasoning, Tools Used, Actions, Learning, Tokens) to a `ps -l`
    tree; False if the process has no agent checkpoint (the caller shows it as it would).
    `tokens_shown`: the tree has the token lines already (views.usage_lines): say the backend."""
    state = agent_state(info)
    if state is None:
        return False
    it, most = state.get("iteration"), state.get("max_iterations")
    reasoning = state.get("reasoning") or "-"
    tree.add(Text(f"Reasoning: {reasoning}" + (f" (iteration {it} of at most {most})" if it and most else "")))
    tools = state.get("tools_used") or []
    tree.add(Text(f"Tools Used: [{', '.join(tools)}]"))
    actions = state.get("actions") or []
    if actions:
        total = action_count(state)
        branch = tree.add(Text(f"Actions: {total}"))
        shown = actions[-5:]
        for n, a in enumerate(shown, total - len(shown) + 1):
            mark = {"ok": ("✓", "green"), "running": ("◐", "yellow")}.get(a.get("status"), ("✗", "red"))
            child = f" → {a['child']}" if a.get("child") else ""
            outcome = f": {a['result']}" if a.get("result") else " (running)" if a.get("status") == "running" else ""
            branch.add(Text.assemble((mark[0], mark[1]), f" {n}. {a.get('tool')} {a.get('args')}{child}{outcome}"))
    if state.get("learning"):
        tree.add(Text(f"Learning: {state['learning']}"))
    tokens = state.get("tokens") or {}
    if tokens.get("total_tokens") and not tokens_shown:
        tree.add(Text(f"Tokens: {tokens['total_tokens']} ({tokens.get('prompt_tokens', 0)} prompt, "
                      f"{tokens.get('completion_tokens', 0)} completion) via {state.get('backend', '?')}"))
    else:
        tree.add(Text(f"Backend: {state.get('backend', '?')}"))
    tree.add(Text(f"Goal: {state.get('goal', '')}"))
    return True

