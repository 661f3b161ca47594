"""Renderers for `cluster`: the backend, its scheduler and its workers. Pure: a ClusterInfo
snapshot in, a rich renderable or plain text out."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from llmunix.backends import ClusterInfo, WorkerInfo
from llmunix.models import format_pid
from llmunix.pool import fmt_amount

COLUMNS = ("WORKER", "ADDRESS", "THREADS", "MEMORY", "CPU%", "TASKS", "RESOURCES", "PROCESSES")


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    mb = n / 1_048_576
    return f"{mb / 1024:.1f}G" if mb >= 1024 else f"{mb:.0f}M"


def _row(w: WorkerInfo) -> tuple[str, ...]:
    memory = _bytes(w.memory) + ("/" + _bytes(w.memory_limit) if w.memory_limit else "")
    resources = ",".join(f"{k}={fmt_amount(v)}" for k, v in sorted(w.resources.items())) or "-"
    pids = ",".join(format_pid(p) for p in w.pids) or "-"
    cpu = "-" if w.cpu is None else f"{w.cpu:.1f}"
    return w.name, w.address, str(w.nthreads), memory, cpu, f"{w.executing}/{w.nthreads}", resources, pids


def heading(info: ClusterInfo) -> str:
    if info.backend != "dask":
        return f"backend: {info.backend}"
    threads = sum(w.nthreads for w in info.workers)
    line = f"backend: dask, scheduler {info.scheduler}, {len(info.workers)} worker(s), {threads} thread(s)"
    if info.note:  # (dask: adaptive scaling)
        line += f"; {info.note}"
    if info.waiting:
        line += "; waiting for a worker: " + ",".join(format_pid(p) for p in info.waiting)
    return line


def cluster_table(info: ClusterInfo) -> Group | Text:
    if info.backend != "dask":
        return Text(f"{heading(info)}: {info.note}")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in COLUMNS:
        table.add_column(name, no_wrap=True, justify="right" if name in ("THREADS", "MEMORY", "CPU%", "TASKS")
                         else "left")
    for w in info.workers:
        row = _row(w)
        table.add_row(Text(row[0], style="cyan"), *row[1:7], Text(row[7], style="bold" if w.pids else "dim"))
    if not info.workers:
        table.caption = ("no workers now: they start as work arrives" if info.note else
                         "no workers: start some with `dask worker ADDRESS`")
    return Group(Text(heading(info), style="bold"), table)


def cluster_plain(info: ClusterInfo) -> str:
    if info.backend != "dask":
        return f"{heading(info)}: {info.note}"
    rows = [COLUMNS] + [_row(w) for w in info.workers]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    lines = ["  ".join(f.ljust(widths[c]) for c, f in enumerate(r)).rstrip() for r in rows]
    return "\n".join([heading(info), *lines])
