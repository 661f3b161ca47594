"""`profile`'s suggestions: rules over the figures of one profile, each with a name, a threshold
and a reason (docs/debugging.md lists them). A rule fires only on what the profile measured; no
figure, no suggestion.

* `json` — JSON decoding (or encoding) is on the stack in at least JSON_SHARE of the samples.
* `io-wait` — it waited (was not on a CPU) at least WAIT_SHARE of the window, with I/O or network
  activity in it: waiting on I/O. Without any, it waited on something else (a sleep, a lock, a
  child): said as such.
* `cpu-bound-thread` — a thread tool used at least CPU_BOUND percent of a core: it holds the GIL
  that llmunix and every other thread tool share.
* `small-io` — at least SMALL_IO_CALLS read/write calls averaging under SMALL_IO_BYTES bytes each.
* `connections` — at least MANY_CONNECTIONS connections seen in the window, but at most a fifth
  of them open at once: one connection per request.
* `memory-growth` — with `--memory`, live allocations grew by at least GROWTH_BYTES in the window.
* `cacheable` — an idempotent tool run without the cache, and an earlier run of the same tool
  with the same parameters completed: `run --cache` would have reused its result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmunix.models import format_pid

if TYPE_CHECKING:
    from llmunix.observe.debug import ProfileReport

JSON_SHARE = 0.2
WAIT_SHARE = 0.9
CPU_BOUND = 80.0  # percent of one core
SMALL_IO_CALLS = 1000
SMALL_IO_BYTES = 512
MANY_CONNECTIONS = 10
GROWTH_BYTES = 1_000_000
MIN_MONITOR_SAMPLES = 2  # CPU figures from fewer samples say too little

_JSON_DIR = os.path.dirname(os.path.abspath(json.__file__)) + os.sep


@dataclass(frozen=True, slots=True)
class Suggestion:
    rule: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "text": self.text}


def suggestions(r: ProfileReport, *, idempotent: bool = False, repeat_of: int | None = None
                ) -> tuple[Suggestion, ...]:
    """The rules above over report `r`. `idempotent`: its tool says it is safe to run again;
    `repeat_of`: an earlier completed run with the same tool and parameters (StepCache.repeat_of)."""
    out: list[Suggestion] = []
    share, encoding = _json_share(r)
    if share >= JSON_SHARE:
        what = "encoding" if encoding else "decoding"
        out.append(Suggestion("json", f"JSON {what} is on the stack in {share:.0%} of the samples: parse once and "
                                      "keep the object, exchange less JSON, or use a faster parser (orjson)"))
    enough = r.monitor_samples >= MIN_MONITOR_SAMPLES and r.cpu_average is not None
    if enough and r.cpu_average is not None:
        waiting = max(0.0, 1.0 - r.cpu_average / 100.0)
        busy_io = bool(r.io_operations) or bool(r.network is not None and r.network.seen)
        if waiting >= WAIT_SHARE and busy_io:
            out.append(Suggestion("io-wait", f"it waits on I/O about {waiting:.0%} of its time (CPU "
                                             f"{r.cpu_average:.0f}%): run more such work side by side "
                                             "(max_running, limits), cache its results, or fetch less"))
        elif waiting >= WAIT_SHARE and r.ended_by == "duration":
            out.append(Suggestion("io-wait", f"it waits about {waiting:.0%} of its time with no I/O: sleeping, "
                                             "or waiting for a lock, a message or a child (`debug "
                                             f"{format_pid(r.pid)}` shows where)"))
        if r.thread_backed and r.cpu_average >= CPU_BOUND:
            out.append(Suggestion("cpu-bound-thread", f"it keeps a core {r.cpu_average:.0f}% busy on a thread "
                                                      "of llmunix, holding the GIL llmunix and other thread tools "
                                                      "share: `run --isolate` gives it a process of its own"))
    io = r.io
    if io is not None and io.read_ops is not None and io.write_ops is not None:
        calls = io.read_ops + io.write_ops
        moved = (io.read_bytes or 0) + (io.write_bytes or 0)
        if calls >= SMALL_IO_CALLS and moved / calls < SMALL_IO_BYTES:
            out.append(Suggestion("small-io", f"{calls:,} read/write calls of {moved / calls:.0f} bytes on "
                                              "average: buffer them (read and write in larger blocks)"))
    n = r.network
    if n is not None and n.seen >= MANY_CONNECTIONS and n.peak * 5 <= n.seen:
        out.append(Suggestion("connections", f"{n.seen} connections opened, at most {n.peak} at once: reuse "
                                             "connections (HTTP keep-alive, one session) instead of one per "
                                             "request"))
    a = r.allocations
    if a is not None and a.size_diff >= GROWTH_BYTES:
        top = next((s for s in a.sites if s.size_diff > 0), None)
        where = f" (most at {os.path.basename(top.file)}:{top.line})" if top is not None else ""
        out.append(Suggestion("memory-growth", f"its live allocations grew by {a.size_diff / 1e6:.1f} MB in the "
                                               f"window{where}: `debug {format_pid(r.pid)} memory --diff`, "
                                               "some time apart, shows whether it keeps growing"))
    if idempotent and repeat_of is not None:
        out.append(Suggestion("cacheable", f"{format_pid(repeat_of)} ran the same tool with the same parameters "
                                           "and completed: if its inputs have not changed, `run --cache` (a "
                                           "workflow step's `cache: true`) reuses that result instead"))
    return tuple(out)


def _json_share(r: ProfileReport) -> tuple[float, bool]:
    """The share of samples with the json package on the stack, and whether encoding (not
    decoding) is most of it."""
    stacks = [s for s in r.timeline if s]
    if not stacks:
        return 0.0, False
    json_frames = {i for i, f in enumerate(r.frames) if os.path.abspath(f[1]).startswith(_JSON_DIR)}
    if not json_frames:
        return 0.0, False
    hits = [s for s in stacks if json_frames.intersection(s)]
    encoding = sum(1 for s in hits if any(r.frames[i][1].endswith("encoder.py") for i in s if i in json_frames))
    return len(hits) / len(stacks), encoding * 2 > len(hits)
