"""Pure renderers for `agents --check`, `tools --check`, `workflow check` (one report per file:
loaded, loaded with warnings, refused, skipped) and `agents --paths` (where definitions are
looked for). Snapshots in (FileCheck, SearchPath), rich renderables, plain text or JSON out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from llmunix.agents.service import SearchPath
from llmunix.tools.markdown import LOADED, REFUSED, SKIPPED, WARNINGS, FileCheck

STATUS_WORDS = {LOADED: "loaded", WARNINGS: "warnings", REFUSED: "refused", SKIPPED: "skipped"}
STATUS_STYLES = {LOADED: "green", WARNINGS: "yellow", REFUSED: "red", SKIPPED: "dim"}


def counts(results: Sequence[FileCheck]) -> dict[str, int]:
    return {"files": len(results), **{s: sum(1 for r in results if r.status == s)
                                      for s in (LOADED, WARNINGS, REFUSED, SKIPPED)}}


def summary(results: Sequence[FileCheck]) -> str:
    """`11 files: 8 loaded, 2 loaded with warnings, 0 refused, 1 skipped`."""
    c = counts(results)
    text = (f"{c['files']} file{'s' if c['files'] != 1 else ''}: {c[LOADED]} loaded, "
            f"{c[WARNINGS]} loaded with warnings, {c[REFUSED]} refused")
    return text + (f", {c[SKIPPED]} skipped" if c[SKIPPED] else "")


def _where(path: str, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return path


def _detail(r: FileCheck, sep: str = " | ") -> str:
    return r.reason or sep.join(r.warnings) or ""


def check_table(results: Sequence[FileCheck], root: Path) -> Group:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("NAME", style="cyan", no_wrap=True)
    table.add_column("FILE", no_wrap=True)
    table.add_column("DETAIL")
    for r in results:
        table.add_row(Text(STATUS_WORDS[r.status], style=STATUS_STYLES[r.status]), r.kind or "-", r.name or "-",
                      _where(r.path, root), Text(_detail(r, "\n"), style="red" if r.status == REFUSED else ""))
    return Group(table, Text(summary(results), style="bold"))


def check_plain(results: Sequence[FileCheck], root: Path) -> str:
    """One file a line: STATUS KIND NAME FILE, then the detail (which may hold spaces) last."""
    rows = [("STATUS", "KIND", "NAME", "FILE", "DETAIL")] + [
        (STATUS_WORDS[r.status], r.kind or "-", r.name or "-", _where(r.path, root), _detail(r)) for r in results]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = ["  ".join(f.ljust(widths[c]) for c, f in enumerate(row[:4])) + ("  " + row[4] if row[4] else "")
             for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n" + summary(results)


def check_json(results: Sequence[FileCheck], root: Path) -> dict[str, Any]:
    return {"directory": str(root), "files": [r.to_dict() for r in results], "summary": counts(results)}


# ---------------------------------------------------------------------------- agents --paths


def _found(p: SearchPath) -> str:
    if p.directory is None:
        return "no match"
    if not p.exists:
        return "missing"
    parts = []
    if p.agents or not p.tools:
        parts.append(f"{p.agents} agent{'s' if p.agents != 1 else ''}")
    if p.tools:
        parts.append(f"{p.tools} tool{'s' if p.tools != 1 else ''}")
    if p.refused:
        parts.append(f"{p.refused} refused")
    return ", ".join(parts)


def _dir(p: SearchPath) -> str:
    if p.directory is None:
        return "-"
    try:
        rel = os.path.relpath(p.directory)
    except ValueError:
        return str(p.directory)
    return str(p.directory) if rel.startswith("..") else rel


def paths_table(paths: Sequence[SearchPath]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("#", "SEARCHED", "DIRECTORY", "READ AS", "FOUND"):
        table.add_column(col, no_wrap=True, justify="right" if col == "#" else "left")
    for n, p in enumerate(paths, 1):
        found = _found(p)
        style = "dim" if found in ("missing", "no match") else "red" if p.refused else ""
        table.add_row(str(n), p.pattern, _dir(p), p.kind or "either", Text(found, style=style))
    table.caption = "a later definition of the same name wins"
    return table


def paths_plain(paths: Sequence[SearchPath]) -> str:
    rows = [("#", "SEARCHED", "DIRECTORY", "READ_AS", "FOUND")] + [
        (str(n), p.pattern.replace(" ", "_"), _dir(p), p.kind or "either", _found(p)) for n, p in enumerate(paths, 1)]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(f.ljust(widths[c]) for c, f in enumerate(r[:4])) + "  " + r[4] for r in rows)
