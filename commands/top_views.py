"""Pure renderers for `top` and `stats`: snapshots in, rich renderables, plain text or JSON out.

A `TopFrame` is everything one screen of `top` shows, gathered by the command from Kernel
queries (`recent`, `samples`, `system`); nothing here asks the kernel anything.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from commands.selection import tree_order
from commands.terminal_safe import safe_text
from commands.views import (
    PRIORITY_STYLES,
    STATE_STYLES,
    fmt_cpu,
    fmt_progress,
    plain_word,
    ps_tree,
)
from llmunix.models import ProcessInfo, format_memory, short_duration
from llmunix.monitor import ResourceSample, SystemSample
from llmunix.observe.stats import ToolStats

if TYPE_CHECKING:
    from llmunix.agents.usage import ProcessUsage, TokenReport, UsageRow

TOP_COLUMNS = ("PID", "TOOL", "STATE", "PRIORITY", "CPU%", "MEM", "TOKENS", "PROGRESS")
# Widths the live screen starts with (it only ever widens a column, so nothing moves between
# refreshes), and the widest a free-text column gets before it is cut with an ellipsis.
MIN_WIDTHS = {"PID": 3, "TOOL": 16, "STATE": 11, "PRIORITY": 8, "CPU%": 9, "MEM": 7, "TOKENS": 6, "PROGRESS": 22}
MAX_WIDTHS = {"TOOL": 40, "STATE": 24, "PROGRESS": 40}
KEYS_HELP = ("↑↓ select · Enter details · k kill · p pause/resume · +/- priority · t tree · "
             "c/m/P/n sort cpu/mem/priority/pid · / filter · q quit")
DETAIL_HELP = "Esc, Enter or q: back to the list · k kill · p pause/resume · +/- priority"
STATS_COLUMNS = ("TOOL", "RUNS", "COMPLETED", "FAILED", "CANCELLED", "SUCCESS", "MEAN", "P95")
SORTS = {"cpu": "CPU", "mem": "memory", "priority": "priority", "pid": "PID"}
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 20
UP, DOWN = "↑", "↓"


@dataclass(frozen=True, slots=True)
class TopRow:
    info: ProcessInfo
    samples: tuple[ResourceSample, ...]  # oldest first
    progress_trend: str = ""  # UP / DOWN / "" against the previous frame
    usage: ProcessUsage | None = None  # LLM tokens (its children's included), if it used any


@dataclass(frozen=True, slots=True)
class TopFrame:
    time: float
    system: SystemSample | None  # None: no monitor, or no measurement yet
    rows: tuple[TopRow, ...]  # sorted and filtered (parents before children with `tree`)
    counts: dict[str, int]  # processes by display state, before filtering
    sort: str = "pid"
    filter: str = ""
    editing: str | None = None  # the filter being typed after `/`
    delay: float = 1.0
    selected: int | None = None  # the PID under the cursor (live screen)
    tree: bool = False
    guides: tuple[str, ...] = ()  # with `tree`: the tree guide before each row's name
    status: str = ""  # the outcome of the last key's action, or the question it asks
    widths: dict[str, int] | None = None  # the live screen's column widths (see `stable_widths`)


# ---------------------------------------------------------------------- arranging rows


def arrange(rows: Sequence[TopRow], sort: str, text: str = "") -> tuple[TopRow, ...]:
    """Filter (tool, name or state containing `text`, any case), then sort: CPU and memory
    highest first, priority most urgent first, PID ascending; ties by PID."""
    want = text.strip().lower()
    if want:
        rows = [r for r in rows if any(want in f.lower() for f in
                                       (r.info.tool_name, r.info.name, r.info.display_state))]
    keys = {
        "cpu": lambda r: (-(r.info.resources.cpu_percent or 0.0), r.info.pid),
        "mem": lambda r: (-(r.info.resources.memory_mb or 0.0), r.info.pid),
        "priority": lambda r: (-int(r.info.priority), r.info.pid),
        "pid": lambda r: (r.info.pid,),
    }
    return tuple(sorted(rows, key=keys[sort]))


def as_tree(rows: Sequence[TopRow]) -> tuple[tuple[TopRow, ...], tuple[str, ...]]:
    """Rows reordered parents first, each followed by its children (in the order `rows` had),
    with the guide to draw before each name."""
    by_pid = {r.info.pid: r for r in rows}
    entries = tree_order([r.info for r in rows])
    return tuple(by_pid[i.pid] for i, _g, _p in entries), tuple(g for _i, g, _p in entries)


def count_states(infos: Sequence[ProcessInfo]) -> dict[str, int]:
    return dict(Counter(i.display_state for i in infos))


# ---------------------------------------------------------------------- row figures


def cpu_trend(samples: Sequence[ResourceSample]) -> str:
    """↑ or ↓ when the last two CPU measurements differ by more than half a point."""
    cpu = [s.cpu_percent for s in samples[-2:] if s.cpu_percent is not None]
    if len(cpu) < 2 or abs(cpu[1] - cpu[0]) < 0.5:
        return ""
    return UP if cpu[1] > cpu[0] else DOWN


def sparkline(samples: Sequence[ResourceSample], width: int = SPARK_WIDTH) -> str:
    """CPU over the last `width` samples, 0-100% scale (more than one core shows as full)."""
    chars = []
    for s in samples[-width:]:
        if s.cpu_percent is None:
            chars.append(" ")
        else:
            level = min(len(SPARK) - 1, int(min(s.cpu_percent, 100.0) / 100 * len(SPARK)))
            chars.append(SPARK[level])
    return "".join(chars)


def top_progress(info: ProcessInfo) -> str:
    """`ps`'s progress, or, for a process that is not running, why not (queued, waiting for 003,
    paused by user)."""
    text = fmt_progress(info)
    if text == "-" and info.phase != "running" and not info.is_done:
        return info.detail or "-"
    return text


def _with_trend(text: str, trend: str) -> str:
    return f"{text} ({trend})" if trend else text


# ---------------------------------------------------------------------- header


def header_pairs(frame: TopFrame) -> list[tuple[str, str]]:
    """The header as (key, value) pairs, shared by the plain and rich faces."""
    s = frame.system
    pairs = [("time", time.strftime("%H:%M:%S", time.localtime(frame.time)))]
    if s is None:
        pairs += [("cpu", "-"), ("memory", "-"), ("load", "-"), ("llmunix", "-")]
    else:
        used = s.memory_total_mb - s.memory_available_mb
        pairs += [
            ("cpu", f"{s.cpu_percent:.1f}% ({s.cpu_count} cores)"),
            ("memory", f"{format_memory(used)} used / {format_memory(s.memory_total_mb)} total"),
            ("load", " ".join(f"{x:.2f}" for x in s.load)),
            ("llmunix", f"{s.llmunix_cpu_percent:.1f}% CPU, {format_memory(s.llmunix_memory_mb)}"),
        ]
    total = sum(frame.counts.values())
    by_state = ", ".join(f"{n} {state.lower()}" for state, n in sorted(frame.counts.items()))
    pairs.append(("processes", f"{total} total" + (f", {by_state}" if by_state else "")))
    pairs.append(("sort", frame.sort))
    if frame.editing is not None:
        pairs.append(("filter", frame.editing + "_"))
    elif frame.filter:
        pairs.append(("filter", frame.filter))
    return pairs


# ---------------------------------------------------------------------- three faces


def fmt_tokens(n: int | None) -> str:
    """`-`, `980`, `12.3k`, `4.56M`: a token count in a narrow column."""
    if not n:
        return "-"
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1e6:.2f}M"


def top_row(row: TopRow) -> tuple[str, ...]:
    i = row.info
    tokens = fmt_tokens(row.usage.total.total_tokens if row.usage is not None else None)
    return (i.process_id, safe_text(i.name), safe_text(i.display_state), i.priority.label,
            fmt_cpu(i.resources.cpu_percent), format_memory(i.resources.memory_mb), tokens, safe_text(top_progress(i)))


def _cells(frame: TopFrame) -> list[tuple[str, ...]]:
    """Each row's text as the live screen shows it (the CPU and progress arrows included)."""
    out = []
    for n, r in enumerate(frame.rows):
        row = top_row(r)
        guide = frame.guides[n] if frame.tree and n < len(frame.guides) else ""
        out.append((row[0], guide + row[1], row[2], row[3], _with_trend(row[4], cpu_trend(r.samples)), row[5],
                    row[6], _with_trend(row[7], r.progress_trend)))
    return out


def stable_widths(frame: TopFrame, previous: dict[str, int] | None = None) -> dict[str, int]:
    """Column widths for the live screen: wide enough for this frame, never narrower than the
    last one (or `MIN_WIDTHS`), at most `MAX_WIDTHS`: columns keep their places between
    refreshes instead of following each frame's longest value."""
    widths = dict(MIN_WIDTHS if previous is None else previous)
    for cells in _cells(frame):
        for col, text in zip(TOP_COLUMNS, cells, strict=True):
            widths[col] = max(widths.get(col, 0), min(len(text), MAX_WIDTHS.get(col, len(text))), len(col))
    return widths


def top_plain_cells(r: TopRow) -> tuple[str, ...]:
    """One row of `top_plain`: single-word fields, TREND last."""
    row = top_row(r)
    return (row[0], plain_word(row[1]), plain_word(row[2]), *row[3:7], plain_word(row[7]), cpu_trend(r.samples) or "-")


def top_plain(frame: TopFrame) -> str:
    """`key: value` header lines, then aligned whitespace-separated columns (TREND: the CPU
    arrow, or - when steady or unknown). No colour, no box characters."""
    lines = [f"{k}: {v}" for k, v in header_pairs(frame)]
    table = [(*TOP_COLUMNS, "TREND"), *(top_plain_cells(r) for r in frame.rows)]
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    if frame.widths:  # batch frames keep the widths of the frames before them
        widths = [max(w, frame.widths.get(col, 0)) for w, col in zip(widths, (*TOP_COLUMNS, "TREND"), strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(lines + [fmt.format(*t) for t in table])


def _title(frame: TopFrame, pairs: dict[str, str]) -> Text:
    title = Text.assemble(("llmunix top", "bold"), f"  {pairs['time']}   refresh {frame.delay:g}s   ",
                          ("sort: ", "dim"), (frame.sort, "bold cyan"))
    if frame.tree:
        title.append_text(Text.assemble(("   view: ", "dim"), ("tree", "bold cyan")))
    if "filter" in pairs:
        title.append_text(Text.assemble(("   filter: ", "dim"), (safe_text(pairs["filter"]), "bold yellow")))
    return title


def _footer(frame: TopFrame, help_text: str) -> Group:
    status = Text(safe_text(frame.status), style="bold yellow") if frame.status else Text("")
    return Group(status, Text(help_text, style="dim"))


def top_rich(frame: TopFrame) -> Group:
    """The live screen: title, system header, the process table (the row under the cursor in
    reverse video), then a status line and the keys."""
    pairs = dict(header_pairs(frame))
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for key, label in (("cpu", "CPU"), ("memory", "Memory"), ("load", "Load"), ("llmunix", "llmunix"),
                       ("processes", "Processes")):
        head.add_row(label, Text(pairs[key]))
    widths = frame.widths or stable_widths(frame)
    table = Table(box=None, header_style="bold reverse", pad_edge=False, expand=False)
    for col in TOP_COLUMNS:
        table.add_column(col, justify="right" if col in ("CPU%", "MEM", "TOKENS") else "left", no_wrap=True,
                         width=widths.get(col), overflow="ellipsis")
    table.add_column("CPU HISTORY", no_wrap=True, width=SPARK_WIDTH)
    for r, cells in zip(frame.rows, _cells(frame), strict=True):
        table.add_row(
            Text(cells[0], style="cyan"),
            Text(cells[1]),
            Text(cells[2], style=STATE_STYLES.get(cells[2], "")),
            Text(cells[3], style=PRIORITY_STYLES.get(cells[3], "")),
            cells[4],
            cells[5],
            cells[6],
            Text(cells[7]),
            Text(sparkline(r.samples), style="green"),
            style="reverse" if r.info.pid == frame.selected else None,
        )
    if not frame.rows:
        table.caption = "no processes match" if frame.filter else "no live processes"
    return Group(_title(frame, pairs), head, Text(""), table, Text(""), _footer(frame, KEYS_HELP))


def top_detail(frame: TopFrame, info: ProcessInfo | None, usage: ProcessUsage | None = None) -> Group:
    """Enter on a row: that process's `ps -l` view, refreshed with the list."""
    pairs = dict(header_pairs(frame))
    body = ps_tree(info, usage=usage) if info is not None else Text("that process is gone", style="dim")
    return Group(_title(frame, pairs), Text(""), body, Text(""), _footer(frame, DETAIL_HELP))


def top_record(frame: TopFrame) -> dict[str, Any]:
    """`top --json`: one frame."""
    s = frame.system
    system = None if s is None else {
        "cpu_percent": round(s.cpu_percent, 1), "cpu_count": s.cpu_count,
        "memory_total_mb": round(s.memory_total_mb, 1),
        "memory_used_mb": round(s.memory_total_mb - s.memory_available_mb, 1),
        "load": [round(x, 2) for x in s.load],
        "llmunix_cpu_percent": round(s.llmunix_cpu_percent, 1), "llmunix_memory_mb": round(s.llmunix_memory_mb, 1),
    }
    return {
        "time": frame.time,
        "system": system,
        "counts": frame.counts,
        "sort": frame.sort,
        "filter": frame.filter,
        "processes": [{
            "process_id": r.info.process_id,
            "pid": r.info.pid,
            "name": r.info.name,
            "tool_name": r.info.tool_name,
            "state": r.info.display_state.lower(),
            "priority": r.info.priority.label,
            "cpu_percent": None if r.info.resources.cpu_percent is None else round(r.info.resources.cpu_percent, 1),
            "memory_mb": None if r.info.resources.memory_mb is None else round(r.info.resources.memory_mb, 1),
            "progress": None if r.info.progress.percentage is None else round(r.info.progress.percentage, 1),
            "tokens": None if r.usage is None else r.usage.total.total_tokens,
            "cpu_trend": {UP: "up", DOWN: "down"}.get(cpu_trend(r.samples)),
            "cpu_history": [None if x.cpu_percent is None else round(x.cpu_percent, 1)
                            for x in r.samples[-SPARK_WIDTH:]],
        } for r in frame.rows],
    }


# ---------------------------------------------------------------------- stats


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else short_duration(seconds)


def stats_row(s: ToolStats) -> tuple[str, ...]:
    rate = s.success_rate
    return (s.tool, str(s.runs), str(s.completed), str(s.failed), str(s.cancelled),
            "-" if rate is None else f"{rate:.0f}%", _seconds(s.mean_duration), _seconds(s.p95_duration))


def stats_plain(stats: Sequence[ToolStats]) -> str:
    rows = [STATS_COLUMNS] + [stats_row(s) for s in stats]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(fmt.format(*r) for r in rows)


def stats_table(stats: Sequence[ToolStats]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in STATS_COLUMNS:
        table.add_column(col, justify="left" if col == "TOOL" else "right", no_wrap=True)
    for s in stats:
        row = stats_row(s)
        rate = s.success_rate
        style = "" if rate is None else "green" if rate >= 95 else "yellow" if rate >= 75 else "red"
        table.add_row(Text(row[0], style="cyan"), *row[1:5], Text(row[5], style=style), *row[6:])
    if not stats:
        table.caption = "no finished runs yet"
    return table


# ---------------------------------------------------------------------- stats --tokens

TOKEN_COLUMNS = ("PID", "NAME", "KIND", "STATE", "CALLS", "INPUT", "OUTPUT", "TOTAL", "COST")
MODEL_COLUMNS = ("MODEL", "ENDPOINT", "CALLS", "INPUT", "OUTPUT", "TOTAL", "COST")


def _sums(u: Any) -> tuple[str, ...]:
    return (f"{u.calls:,}", f"{u.prompt_tokens:,}", f"{u.completion_tokens:,}", f"{u.total_tokens:,}", u.cost_text())


def _process_cells(r: UsageRow) -> tuple[str, ...]:
    kind, _, state = r.kind.partition(" ")
    return (r.key, safe_text(r.name), kind, state, *_sums(r.usage))


def _model_cells(r: UsageRow) -> tuple[str, ...]:
    return (safe_text(r.key), safe_text(r.name), *_sums(r.usage))


def _aligned(rows: Sequence[tuple[str, ...]], right_from: int) -> list[str]:
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    return ["  ".join(f.rjust(widths[c]) if c >= right_from else f.ljust(widths[c]) for c, f in enumerate(r)).rstrip()
            for r in rows]


def tokens_plain(report: TokenReport) -> str:
    """`stats --tokens` piped: the per-process table (top-level processes, each with its
    children's use), a blank line, the per-model table, and a TOTAL line; one field per column."""
    if not report.models:
        return "no LLM tokens used yet"
    procs = [TOKEN_COLUMNS, *(tuple(plain_word(c) for c in _process_cells(r)) for r in report.processes)]
    models = [MODEL_COLUMNS, *(tuple(plain_word(c) for c in _model_cells(r)) for r in report.models),
              ("TOTAL", "-", *(plain_word(c) for c in _sums(report.total)))]
    return "\n".join([*_aligned(procs, 4), "", *_aligned(models, 2)])


def _token_table(title: str, columns: Sequence[str], right_from: int) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, title=title, title_justify="left",
                  title_style="bold")
    for n, col in enumerate(columns):
        table.add_column(col, justify="right" if n >= right_from else "left", no_wrap=True)
    return table


def tokens_table(report: TokenReport) -> Group:
    if not report.models:
        return Group(Text("no LLM tokens used yet", style="dim"))
    procs = _token_table("by process (children included)", TOKEN_COLUMNS, 4)
    for r in report.processes:
        cells = _process_cells(r)
        procs.add_row(Text(cells[0], style="cyan"), *cells[1:3], Text(cells[3], style=STATE_STYLES.get(cells[3], "")),
                      *cells[4:])
    models = _token_table("by model and endpoint", MODEL_COLUMNS, 2)
    for r in report.models:
        cells = _model_cells(r)
        models.add_row(Text(cells[0], style="cyan"), *cells[1:])
    models.add_row(Text("TOTAL", style="bold"), "", *(Text(c, style="bold") for c in _sums(report.total)))
    return Group(procs, Text(""), models)
