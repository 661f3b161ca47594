"""`tools` renderers (pure: tools in, renderables or plain text out): the list of tools, one
tool's card with its parameters, the forms a list or dict parameter takes from the shell, and
whether the tool replaced a built-in one of the same name; and what `tools reload` did."""

from __future__ import annotations

import os
from collections.abc import Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from commands.terminal_safe import safe_text, safe_tree
from llmunix.models import format_pid
from llmunix.tools.loader import ReloadReport, SourceReload
from llmunix.tools.registry import ParamSpec, Tool


def tools_table(tools: Iterable[Tool]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("TOOL", style="cyan", no_wrap=True)
    table.add_column("PARAMETERS", no_wrap=True)
    table.add_column("SOURCE", style="dim", no_wrap=True)
    table.add_column("DESCRIPTION")
    for t in tools:
        source = Text(t.source)
        if t.overrides:
            source.append(f" (overrides {_origin(t.overrides)})", style="yellow")
        table.add_row(t.name, params_summary(t), source, t.description)
    return table


def tools_plain(tools: Iterable[Tool]) -> str:
    """TOOL PARAMETERS SOURCE OVERRIDES: one tool a line, fields without spaces (`-`: none)."""
    rows = [("TOOL", "PARAMETERS", "SOURCE", "OVERRIDES")] + [
        (t.name, params_summary(t).replace(" ", ",") or "-", _field(t.source), _field(t.overrides or "-"))
        for t in tools]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(f.ljust(widths[c]) for c, f in enumerate(r)).rstrip() for r in rows)


def params_summary(t: Tool) -> str:
    return " ".join(p.name if p.required else f"[{p.name}]" for p in t.params)


def tool_tree(t: Tool, isolation: str = "thread") -> Group:
    """One tool's card; `isolation`: where a plain `run` of it goes ("process": isolated)."""
    root = Tree(Text.assemble(("Tool ", "bold"), (t.name, "bold cyan")))
    root.add(Text(f"Description: {t.description or '-'}"))  # Text: user text is never markup
    if t.subprocess:
        kind = "subprocess (runs in its own process group)"
    elif isolation == "process":
        kind = "python, isolated (each run in a worker OS process of its own; `run --thread` keeps it on a thread)"
    else:
        kind = "python (runs on a worker thread; `run --isolate` gives it an OS process of its own)"
    root.add(f"Kind: {kind}")
    if t.version:
        root.add(Text(f"Version: {t.version} (what cached results of it are keyed on)"))
    source = Text(f"Source: {t.source}")
    if t.overrides:
        replaced = f"the built-in {t.name}" if t.overrides == "builtin" else f"{t.name} from {t.overrides}"
        source.append(f" (overrides {replaced})", style="yellow")
    root.add(source)
    root.add(f"Idempotent: {'yes' if t.idempotent else 'no'}")
    root.add(f"Remote: {'yes (runs on a Dask worker with --backend dask)' if t.remote else 'no (runs here)'}")
    params = root.add("Parameters:" if t.params else "Parameters: none")
    for p in t.params:
        label = f"{p.name}: {p.type}"
        label += " (required)" if p.required else f" = {p.default!r}"
        if p.allowed:
            label += f", {p.allowed}"
        if p.description:
            label += f" — {p.description}"
        node = params.add(Text(label))
        if p.shape:
            node.add(Text(f"from the shell: {param_forms(p)}", style="dim"))
    return Group(safe_tree(root), Text(safe_text(f"Example: run {t.name} {_example(t)}".rstrip()), style="dim"))


def param_forms(p: ParamSpec) -> str:
    """How to write a list or dict parameter in the shell (Tool.from_text reads these)."""
    if p.shape == "dict":
        return f"""{p.name}='{{"key": "value"}}' (JSON)"""
    if p.shape == "list":
        return f"""{p.name}='[...]' (a JSON list)"""
    return f"""{p.name}='["a","b"]' (JSON), {p.name}=a,b or {p.name}=a {p.name}=b"""


def _example(t: Tool) -> str:
    """Its required parameters (or, with none, the first one at its default)."""
    def word(p: ParamSpec) -> str:
        if p.shape == "items":
            return f"{p.name}=a,b"
        if p.shape:
            return f"{p.name}='...'"
        if p.required:
            return f"{p.name}=..."
        text = str(p.default)
        return f"{p.name}={text}" if text and " " not in text else f"{p.name}='{text}'"

    shown = [p for p in t.params if p.required] or t.params[:1]
    return " ".join(word(p) for p in shown)


def _origin(overrides: str) -> str:
    return "built-in" if overrides == "builtin" else overrides


def _field(text: str) -> str:
    return text.replace(" ", "_") or "-"


# ---------------------------------------------------------------------------- tools reload

RELOAD_COLUMNS = ("SOURCE", "STATUS", "TOOLS")
_RELOAD_STYLE = {"reloaded": "green", "new": "green", "gone": "yellow", "refused": "bold red"}


def shown_source(label: str) -> str:
    """A source's path relative to the working directory when under it."""
    if label.startswith("module "):
        return label
    try:
        rel = os.path.relpath(label)
    except ValueError:
        return label
    return label if rel.startswith("..") else rel


def _reload_tools(s: SourceReload) -> str:
    parts = [*s.reloaded, *(f"{n} (new)" for n in s.added), *(f"{n} (removed)" for n in s.removed),
             *(f"{n} (kept)" for n in s.kept)]
    text = ", ".join(parts) or "-"
    return f"{text}: {s.error}" if s.error else text


def _reload_footer(r: ReloadReport) -> list[str]:
    changed = len(r.sources)
    lines = [f"{changed} source{'s' if changed != 1 else ''} changed, {r.unchanged} unchanged; "
             f"{r.seconds * 1000:.1f} ms"]
    if r.running_old:
        lines.append("running processes keep the code they started with: "
                     + ", ".join(f"{format_pid(pid)} {name}" for pid, name in r.running_old))
    return lines


def reload_plain(r: ReloadReport) -> str:
    rows = [RELOAD_COLUMNS] + [(shown_source(s.label), s.status, _reload_tools(s)) for s in r.sources]
    widths = [max(len(row[c]) for row in rows) for c in range(2)]
    lines = [f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip() for row in rows]
    return "\n".join((lines if r.sources else []) + _reload_footer(r))


def reload_table(r: ReloadReport) -> Group:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("SOURCE", style="cyan", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("TOOLS")
    for s in r.sources:
        table.add_row(shown_source(s.label), Text(s.status, style=_RELOAD_STYLE.get(s.status, "")),
                      Text(_reload_tools(s)))
    parts: list[object] = [table] if r.sources else []
    return Group(*parts, *(Text(line, style="dim") for line in _reload_footer(r)))
