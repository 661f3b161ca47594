"""Renderers for `debug` and `profile`: pure functions from DebugInfo / ProfileReport to text,
rich renderables and JSON-ready dicts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from commands.views import fmt_bytes
from llmunix.iolimit import IoLimitInfo
from llmunix.models import format_memory, format_pid, short_duration
from llmunix.observe.debug import DebugInfo, ProfileReport, StackFrame
from llmunix.observe.debugger import Breakpoint, DebugStatus, Inspected, Modification, TraceEntry, TraceLog
from llmunix.observe.memory import MemoryLook, MemoryReport, MemorySite

DEBUG_COMMANDS = "[break, step, next, continue, where, inspect, modify, trace, replay, memory]"

TOP_HOTSPOTS = 5  # in the report's Hotspots line
TABLE_ROWS = 10  # in the table below it


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def fmt_seconds(seconds: float) -> str:
    text = f"{seconds:g}" if seconds >= 0.1 else f"{seconds:.3f}".rstrip("0")
    return f"{text} second" if text == "1" else f"{text} seconds"


def frame_text(f: StackFrame, lines: bool) -> str:
    return f"{f.function}() ({os.path.basename(f.file)}:{f.line})" if lines else f"{f.function}()"


def stack_text(d: DebugInfo, lines: bool) -> str:
    if not d.stack:
        return f"none: {d.reason}" if d.reason else "none"
    return " → ".join(frame_text(f, lines) for f in d.stack)


def variables_text(d: DebugInfo) -> str:
    if not d.stack:
        return "-"
    shown = {k: v for k, v in d.stack[-1].locals.items() if k != "ctx"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "(none)"


def memory_text(d: DebugInfo, llmunix_mb: float | None) -> str:
    mb = d.sample.memory_mb if d.sample is not None else d.info.resources.memory_mb
    if d.thread_backed:
        whole = f"; llmunix as a whole uses {format_memory(llmunix_mb)}" if llmunix_mb is not None else ""
        return f"not attributed (a thread-backed tool shares llmunix's heap{whole})"
    if mb is None:
        return "not measured yet (the monitor samples it)"
    if d.child is not None and d.child.command.startswith("isolated worker"):
        rss = d.sample.rss_mb if d.sample is not None else d.info.resources.rss_mb
        also = f", RSS {format_memory(rss)}" if rss is not None else ""
        return f"{format_memory(mb)} of its own (USS{also}: the isolated worker's tree, latest monitor sample)"
    return f"{format_memory(mb)} resident (the child process tree, latest monitor sample)"


def debug_pairs(d: DebugInfo, *, lines: bool = False, llmunix_mb: float | None = None,
                io_limit: IoLimitInfo | None = None) -> list[tuple[str, str]]:
    cpu = d.sample.cpu_percent if d.sample is not None else d.info.resources.cpu_percent
    pairs = [
        ("Current State", d.info.display_state + (f" ({d.info.detail})" if d.info.detail and
                                                  d.info.detail.lower() != d.info.display_state.lower() else "")),
        ("Stack Trace", stack_text(d, lines)),
        ("Variables", variables_text(d)),
        ("CPU", "not measured yet (the monitor's next sample)" if cpu is None and not d.info.is_done
                else fmt_pct(cpu)),
        ("Memory", memory_text(d, llmunix_mb)),
    ]
    if d.child is not None:
        c = d.child
        pairs += [
            ("Command", f"{c.command} (pid {c.pid})"),
            ("Status", c.status + (f"; {c.note}" if c.note else "")),
            ("Open files", ", ".join(c.open_files) or "none"),
            ("Connections", ", ".join(c.connections) or "none"),
        ]
        if c.python_stack:
            frames = " → ".join(frame_text(f, lines) for f in c.python_stack)
            pairs.append(("Child Stack", f"{frames} (Python pid {c.python_pid}, by py-spy)"))
        elif c.python_note:
            pairs.append(("Child Stack", f"none: {c.python_note}"))
    if io_limit is not None:
        pairs.append(("I/O Limit", io_limit.describe()))
    if d.debugger is not None:
        pairs.append(("Debugger", debugger_text(d.debugger)))
    if not d.info.is_done:
        pairs.append(("Debug Commands", DEBUG_COMMANDS))
    return pairs


def debugger_text(s: DebugStatus) -> str:
    parts = []
    if s.stopped:
        parts.append(s.detail[:1].lower() + s.detail[1:])
    elif s.mode:
        parts.append(f"{s.mode} pending (at its next control point)")
    n = len(s.breakpoints)
    if n:
        parts.append(f"{n} breakpoint{'s' if n != 1 else ''} ("
                     + "; ".join(f"{b.number}: {b.describe()}" for b in s.breakpoints) + ")")
    if s.tracing:
        parts.append("tracing on")
    return ", ".join(parts) or "no breakpoints"


def tree_lines(title: str, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(guide, label, value) rows of a seed-style tree."""
    return [("└── " if i == len(pairs) - 1 else "├── ", label, value) for i, (label, value) in enumerate(pairs)]


def tree_plain(title: str, pairs: Sequence[tuple[str, str]]) -> str:
    return "\n".join([title, *(f"{g}{label}: {value}" for g, label, value in tree_lines(title, pairs))])


def tree_rich(title: str, pairs: Sequence[tuple[str, str]]) -> Text:
    text = Text(title, style="bold")
    for g, label, value in tree_lines(title, pairs):
        text.append("\n" + g, style="dim")
        text.append(f"{label}:", style="cyan")
        text.append(f" {value}")
    return text


def debug_title(d: DebugInfo) -> str:
    return f"Debugging Process {format_pid(d.info.pid)} ({d.info.name}):"


def debug_plain(d: DebugInfo, *, lines: bool = False, llmunix_mb: float | None = None,
                io_limit: IoLimitInfo | None = None) -> str:
    return tree_plain(debug_title(d), debug_pairs(d, lines=lines, llmunix_mb=llmunix_mb, io_limit=io_limit))


def debug_rich(d: DebugInfo, *, lines: bool = False, llmunix_mb: float | None = None,
               io_limit: IoLimitInfo | None = None) -> Text:
    return tree_rich(debug_title(d), debug_pairs(d, lines=lines, llmunix_mb=llmunix_mb, io_limit=io_limit))


# ---------------------------------------------------------------------- profile


def profile_title(pid: int, duration: float) -> str:
    return f"Profiling Process {format_pid(pid)} for {fmt_seconds(duration)}..."


def hotspots_text(r: ProfileReport) -> str:
    spots = [h for h in r.hotspots if h.self_share > 0][:TOP_HOTSPOTS]
    if not spots:
        return "none (no Python stacks sampled)"
    return ", ".join(f"{h.function}() {h.self_share * 100:.0f}%" for h in spots)


def profile_pairs(r: ProfileReport) -> list[tuple[str, str]]:
    ended = {"duration": "", "process ended": ", the process ended", "stopped": ", stopped early"}[r.ended_by]
    if r.thread_backed:
        memory = "not attributed (a thread-backed tool shares llmunix's heap)"
    elif r.memory_average is None:
        memory = "-"
    else:
        memory = f"{format_memory(r.memory_average)} average, {format_memory(r.memory_peak)} peak"
    cpu = "-" if r.cpu_average is None else f"{fmt_pct(r.cpu_average)} average, {fmt_pct(r.cpu_peak)} peak"
    pairs = [
        ("Samples", f"{r.samples} stacks in {r.duration:.1f}s, every {r.interval * 1000:g}ms{ended}"),
        ("CPU Usage", cpu),
        ("Memory", memory),
        ("I/O Operations", io_text(r)),
        ("Network", network_text(r)),
    ]
    if r.allocations is not None or r.allocations_note:
        pairs.append(("Allocations", allocations_text(r)))
    if r.note:
        pairs.append(("Note", r.note))
    pairs.append(("Hotspots", hotspots_text(r)))
    return pairs


def io_text(r: ProfileReport) -> str:
    """`47 reads, 12 writes (1.2 MB read, 340 B written)`: system calls, and the bytes through them."""
    io = r.io
    if io is None or io.read_ops is None or io.write_ops is None:
        return "-" if r.io_operations is None else f"{r.io_operations} (read and write system calls)"
    text = f"{io.read_ops:,} read{'' if io.read_ops == 1 else 's'}, "
    text += f"{io.write_ops:,} write{'' if io.write_ops == 1 else 's'}"
    if io.read_bytes is not None and io.write_bytes is not None:
        text += f" ({fmt_bytes(io.read_bytes)} read, {fmt_bytes(io.write_bytes)} written)"
    return text


def allocations_text(r: ProfileReport) -> str:
    a = r.allocations
    if a is None:
        return f"not traced: {r.allocations_note}"
    grew = [x for x in a.sites if x.size_diff > 0][:3]
    head = f"{signed_bytes(a.size_diff)} live in {signed(a.count_diff)} blocks allocated in the window"
    if not grew:
        return head
    return head + ": " + ", ".join(f"{site_text(x)} {signed_bytes(x.size_diff)}" for x in grew)


def signed(n: int) -> str:
    return f"{n:+,}"


def signed_bytes(n: int) -> str:
    return ("+" if n >= 0 else "-") + fmt_bytes(abs(n))


def site_text(x: MemorySite) -> str:
    return f"{os.path.basename(x.file)}:{x.line}"


def network_text(r: ProfileReport) -> str:
    n = r.network
    if n is None:
        return "n/a for thread tools (they share llmunix's own connections)"
    if not n.samples:
        return "-"
    plural = "s" if n.seen != 1 else ""
    text = f"{n.seen} connection{plural} seen ({n.open} open at the end, {n.peak} at most at once)"
    if n.sent is not None and n.received is not None:
        text += f"; {fmt_bytes(n.sent + n.received)} transferred on TCP ({fmt_bytes(n.sent)} sent, " \
                f"{fmt_bytes(n.received)} received)"
    else:
        text += f"; bytes not measured ({n.bytes_note})" if n.bytes_note else "; bytes not measured"
    return text + (f"; {n.note}" if n.note else "")


def hotspot_rows(r: ProfileReport) -> list[tuple[str, str, str, str]]:
    return [(f"{h.function}()", f"{os.path.basename(h.file)}:{h.line}", f"{h.inclusive * 100:.1f}%",
             f"{h.self_share * 100:.1f}%") for h in r.hotspots[:TABLE_ROWS]]


HOTSPOT_HEADER = ("FUNCTION", "DEFINED AT", "INCLUSIVE", "SELF")


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]) -> str:
    """Columns padded to their widest cell; the columns in `right` right-aligned."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in (header, *rows))


def rich_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i in right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def suggestions_lines(r: ProfileReport) -> list[str]:
    return [f"  {s.rule}: {s.text}" for s in r.suggestions]


def profile_plain(r: ProfileReport) -> str:
    parts = [tree_plain(profile_title(r.pid, r.requested), profile_pairs(r))]
    rows = hotspot_rows(r)
    if rows:
        parts.append(plain_table(HOTSPOT_HEADER, rows, (2, 3)))
    if r.allocations is not None and r.allocations.sites:
        parts.append(plain_table(GROWTH_HEADER, site_rows(r.allocations), (0, 1, 2)))
    if r.suggestions:
        parts.append("\n".join(["Suggestions:", *suggestions_lines(r)]))
    return "\n\n".join(parts)


def profile_rich(r: ProfileReport) -> Group:
    parts: list[Any] = [tree_rich(profile_title(r.pid, r.requested), profile_pairs(r))]
    rows = hotspot_rows(r)
    if rows:
        parts += [Text(""), rich_table(HOTSPOT_HEADER, rows, (2, 3))]
    if r.allocations is not None and r.allocations.sites:
        parts += [Text(""), rich_table(GROWTH_HEADER, site_rows(r.allocations), (0, 1, 2))]
    if r.suggestions:
        text = Text("\nSuggestions:", style="bold")
        for sug in r.suggestions:
            text.append("\n  ")
            text.append(f"{sug.rule}:", style="yellow")
            text.append(f" {sug.text}")
        parts.append(text)
    return Group(*parts)


# ---------------------------------------------------------------------- debug PID memory

SITES_HEADER = ("SIZE", "BLOCKS", "SITE", "VIA", "SOURCE")
GROWTH_HEADER = ("GROWTH", "BLOCKS", "SIZE", "SITE", "VIA", "SOURCE")


def site_rows(look: MemoryLook) -> list[tuple[str, ...]]:
    if look.diff:
        return [(signed_bytes(x.size_diff), signed(x.count_diff), fmt_bytes(x.size), site_text(x), x.via or "-",
                 x.source[:60]) for x in look.sites]
    return [(fmt_bytes(x.size), f"{x.count:,}", site_text(x), x.via or "-", x.source[:60]) for x in look.sites]


def memory_title(m: MemoryReport) -> str:
    return f"Memory of Process {format_pid(m.pid)} ({m.name}):"


def memory_pairs(m: MemoryReport) -> list[tuple[str, str]]:
    k = m.look
    since = short_duration(k.traced_for)
    if m.where == "thread":
        how = f"tracemalloc in llmunix (a thread tool), {k.frames} frames"
        whose = "by its code (" + ", ".join(os.path.basename(f) for f in m.files) + "), from any thread"
        whole = f"{fmt_bytes(k.total_traced)} traced in llmunix (every thread)"
    else:
        how = f"tracemalloc in its isolated worker, {k.frames} frames"
        whose = "in its worker"
        whole = f"{fmt_bytes(k.total_traced)} traced in its worker"
    if k.already_on:
        how += " (tracemalloc was on already; it stays on)"
    pairs = [("Tracing", how + (", started now" if k.started_now else f", for {since}")),
             ("Live", f"{fmt_bytes(k.size)} in {k.count:,} blocks allocated {whose} since tracing began")]
    if k.diff:
        when = f"the previous look {short_duration(k.previous_age)} ago" if k.previous_age is not None \
            else "tracing began"
        pairs.append(("Grew", f"{signed_bytes(k.size_diff)} in {signed(k.count_diff)} blocks since {when}"))
    pairs.append(("In All", f"{whole}; tracemalloc's own memory: {fmt_bytes(k.overhead)}"))
    notes = list(m.notes)
    if k.started_now:
        notes.append("tracing began just now: allocations made before it are not seen; look again later, "
                     "or with --diff, to see what grows")
    pairs += [("Note", n) for n in notes]
    if k.dump:
        whose_dump = "its worker's traced heap" if m.where == "isolated" else (
            "llmunix's whole traced heap; its own part: .filter_traces([tracemalloc.Filter(True, "
            + repr(m.files[0] if m.files else "FILE") + ", all_frames=True)])")
        pairs.append(("Dump", f"{k.dump} ({whose_dump}; tracemalloc.Snapshot.load reads it)"))
    pid = format_pid(m.pid)
    pairs.append(("Next", "tracing stopped" if m.stopped else
                  f"tracing stays on until it ends or `debug {pid} memory --stop`; `debug {pid} memory --diff` "
                  "shows what grew since this look"))
    return pairs


def memory_sites(m: MemoryReport) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    return (GROWTH_HEADER if m.look.diff else SITES_HEADER), site_rows(m.look)


def memory_plain(m: MemoryReport) -> str:
    text = tree_plain(memory_title(m), memory_pairs(m))
    header, rows = memory_sites(m)
    if not rows:
        return text + "\n\n" + ("nothing grew" if m.look.diff else "no live allocations traced yet")
    return text + "\n\n" + plain_table(header, rows, (0, 1, 2) if m.look.diff else (0, 1))


def memory_rich(m: MemoryReport) -> Group:
    parts: list[Any] = [tree_rich(memory_title(m), memory_pairs(m)), Text("")]
    header, rows = memory_sites(m)
    if not rows:
        parts.append(Text("nothing grew" if m.look.diff else "no live allocations traced yet", style="dim"))
    else:
        parts.append(rich_table(header, rows, (0, 1, 2) if m.look.diff else (0, 1)))
    return Group(*parts)


def export_text(r: ProfileReport, fmt: str) -> str:
    import json

    if fmt == "speedscope":
        return json.dumps(r.speedscope(), indent=1) + "\n"
    lines = r.collapsed()
    return "\n".join(lines) + ("\n" if lines else "")


def format_for(path: str, fmt: str | None) -> str:
    """The export format: as given, else from the file's extension (.json: speedscope)."""
    if fmt:
        return fmt
    return "speedscope" if path.lower().endswith(".json") else "collapsed"


# ---------------------------------------------------------------------- the debugger's actions


def status_text(s: DebugStatus) -> str:
    """Where a process is after step / next / continue / wait: its stop, or its end."""
    who = f"{format_pid(s.pid)} {s.name}"
    if s.finished:
        return f"{who} finished: {s.state}" + (f" ({s.detail})" if s.detail else "")
    if not s.stopped:
        return f"{who} is {s.state} ({s.detail}); not stopped yet"
    text = s.detail
    loc = s.location
    if loc is not None:
        if s.stopped_by == "breakpoint":
            text += f" in {loc.function}() {os.path.basename(loc.file)}:{loc.line}"
        if loc.source:
            text += f"\n{loc.line:>5}  {loc.source}"
    return text


def where_text(d: DebugInfo) -> str:
    if not d.stack:
        return f"no stack: {d.reason}" if d.reason else "no stack"
    width = max(len(f"{f.function}() {os.path.basename(f.file)}:{f.line}") for f in d.stack)
    lines = []
    for i, f in enumerate(d.stack):
        mark = ">" if i == len(d.stack) - 1 else " "
        head = f"{f.function}() {os.path.basename(f.file)}:{f.line}"
        lines.append(f"{mark} #{i} {head.ljust(width)}  {f.source}".rstrip())
    return "\n".join(lines)


def breakpoints_text(pid: int, bps: Sequence[Breakpoint]) -> str:
    if not bps:
        return f"no breakpoints on {format_pid(pid)}"
    header = ("NUM", "CONDITION", "HITS", "ERROR")
    rows = [(str(b.number), b.describe(), str(b.hits), b.error or "-") for b in bps]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows))


def inspected_text(x: Inspected) -> str:
    return f"{x.name} = {x.value}  ({x.type}, {x.where})"


def modification_text(m: Modification) -> str:
    where = f" (checkpoint version {m.version})" if m.version is not None else f" ({m.kind})"
    return f"{format_pid(m.pid)} {m.name}: {m.old} -> {m.new}{where}"


def trace_entry_text(e: TraceEntry) -> str:
    indent = "  " * e.depth
    place = f"{os.path.basename(e.file)}:{e.line}" if e.file else ""
    if e.kind == "call":
        what = f"→ {e.function}({e.detail})"
    elif e.kind == "return":
        what = f"← {e.function}() = {e.detail}"
    elif e.kind == "exception":
        what = f"! {e.function}() raised {e.detail}"
    elif e.kind == "control":
        what = f"· {e.detail} in {e.function}()"
    else:
        what = f"■ {e.detail}"
    t = f"+{e.t:.6f}s"
    return f"{t:>12}  {e.kind:<9}  {indent}{what}  {place}".rstrip()


def replay_text(log: TraceLog) -> str:
    state = "recording" if log.on else "stopped"
    if not log.entries:
        hint = "" if log.on else f"; `debug {format_pid(log.pid)} trace on` records one"
        return f"no trace recorded for {format_pid(log.pid)} {log.name}{hint}"
    head = f"Trace of process {format_pid(log.pid)} ({log.name}): {len(log.entries)} entries, {state}"
    if log.dropped:
        head += f" ({log.dropped} older entries dropped)"
    return "\n".join([head, *(trace_entry_text(e) for e in log.entries)])


def prompt_help(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {text}" for name, text in rows)
