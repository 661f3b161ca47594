"""Choosing processes on the command line, the same way for every command that takes them
(`ps`, `kill`, `pause`, `resume`, `priority`): PIDs and ranges (`3 5-7`), `--all`, and the
filters `--tool GLOB`, `--name GLOB`, `--state S`; and `ps`'s sort orders.

Pure functions over snapshots (`ProcessInfo`) and light rows (`PsRow`): no kernel calls, no I/O.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from cmd2 import Choices

from commands.base import parse_pid
from llmunix.models import (
    FINISHED_STATES,
    PAUSED,
    PENDING,
    QUEUED_STATE,
    RUNNING,
    STARTED_STATE,
    LlmunixError,
    Outcome,
    Phase,
    Priority,
    ProcessInfo,
    PsRow,
)

# The states llmunix itself gives processes (tool code may set others with ctx.set_state; those
# are accepted too while some process shows them). Agents' and workflows' own states come last.
KNOWN_STATES: tuple[str, ...] = tuple(dict.fromkeys(s.lower() for s in (
    PENDING, RUNNING, PAUSED, "Preempted", "Waiting", "Deadlocked", *(o.value for o in Outcome),
    *QUEUED_STATE.values(), *STARTED_STATE.values(), "Acting", "Learning", "Executing", "Monitoring")))
PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
FINISHED = frozenset({*(s.lower() for s in FINISHED_STATES), Phase.DONE.value})  # `ps --state S` implies -a

SORT_COLUMNS = ("pid", "cpu", "mem", "runtime", "priority", "state")
_MAX_RANGE = 100_000  # `kill 1-99999999` would otherwise try a hundred million PIDs one by one

Item = TypeVar("Item", ProcessInfo, PsRow)


# ---------------------------------------------------------------------- PIDs and ranges


def parse_pid_specs(texts: Iterable[str]) -> list[int]:
    """`3`, `003`, `3-7` (inclusive), several of them, in the order given, without repeats."""
    pids: dict[int, None] = {}
    for text in texts:
        raw = str(text).strip()
        first, dash, last = raw.partition("-")
        if dash and first and last:
            lo, hi = _pid(first, raw), _pid(last, raw)
            if hi < lo:
                raise LlmunixError(f"bad PID range {raw!r}; write the lower PID first, e.g. {hi:03d}-{lo:03d}")
            if hi - lo >= _MAX_RANGE:
                raise LlmunixError(f"PID range {raw!r} is too wide (over {_MAX_RANGE:,} PIDs); "
                                   "use --all or a filter (--tool, --name, --state)")
            pids.update(dict.fromkeys(range(lo, hi + 1)))
        else:
            pids[_pid(raw, raw)] = None
    return list(pids)


def single_pids(texts: Iterable[str]) -> set[int]:
    """The PIDs named one by one (not by a range): those a command must act on or report."""
    return {_pid(t.strip(), t) for t in texts if "-" not in t.strip()[1:]}


def _pid(text: str, whole: str) -> int:
    if not text.isdigit():
        raise LlmunixError(f"bad PID {whole!r}; PIDs are numbers such as 003, ranges such as 003-007")
    return parse_pid(text)  # the one PID reader (its range checks and messages)


def is_pid_spec(text: str) -> bool:
    """Whether a word reads as a PID or a range (so `priority 3 4 high` can tell PIDs from a level)."""
    first, dash, last = text.strip().partition("-")
    return first.isdigit() and (not dash or last.isdigit())


# ---------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class Filters:
    """`--tool GLOB --name GLOB --state S`: all given ones must match. Globs are shell-style
    (`*`, `?`, `[...]`) and ignore case; a glob without wildcards matches the whole name."""

    tool: str | None = None
    name: str | None = None
    state: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filters:
        return cls(getattr(args, "tool", None), getattr(args, "name", None), getattr(args, "state", None))

    def __bool__(self) -> bool:
        return any(f is not None for f in (self.tool, self.name, self.state))

    def describe(self) -> str:
        """`--tool 'sle*' --state running`, for messages."""
        return " ".join(f"--{k} {v!r}" if k != "state" else f"--state {v}"
                        for k, v in (("tool", self.tool), ("name", self.name), ("state", self.state)) if v is not None)

    def match(self, item: ProcessInfo | PsRow) -> bool:
        if self.name is not None and not _glob(item.name, self.name):
            return False
        if self.tool is not None:
            if not isinstance(item, ProcessInfo):
                raise TypeError("filtering on the tool needs snapshots (ProcessInfo)")
            if not _glob(item.tool_name, self.tool):
                return False
        return self.state is None or state_matches(item, self.state)

    def apply(self, items: Iterable[Item]) -> list[Item]:
        return [i for i in items if self.match(i)] if self else list(items)


def _glob(value: str, pattern: str) -> bool:
    return fnmatchcase(value.lower(), pattern.lower())


def state_matches(item: ProcessInfo | PsRow, state: str) -> bool:
    """As `Kernel.ps(state=...)`: the state shown, the kind's own state or the phase, any case."""
    want = state.strip().lower()
    return want in (item.display_state.lower(), str(item.phase), item.state.lower())


def check_state(state: str, shown: Callable[[], Iterable[str]]) -> str:
    """`state` if it names a state or phase, else an error listing them. `shown()` gives the
    states processes show now (tool code may set its own); it is asked only for an unknown name."""
    want = state.strip().lower()
    if want in KNOWN_STATES or want in PHASES or want in {s.lower() for s in shown()}:
        return want
    raise LlmunixError(f"unknown state {state!r}; use one of: {', '.join(KNOWN_STATES)} "
                       f"(or a phase: {', '.join(PHASES)})")


def include_finished(state: str | None) -> bool:
    """`ps --state failed` means finished ones too, without `-a`."""
    return state is not None and state.strip().lower() in FINISHED


# ---------------------------------------------------------------------- sorting


def _row(item: ProcessInfo | PsRow) -> PsRow:
    return item.ps_row() if isinstance(item, ProcessInfo) else item


_PRIORITY_RANK = {p.label: int(p) for p in Priority}
_SORT_KEYS: dict[str, Callable[[PsRow], Any]] = {
    # Unmeasured (None) sorts below every measurement.
    "pid": lambda r: r.pid,
    "cpu": lambda r: -1.0 if r.cpu_percent is None else r.cpu_percent,
    "mem": lambda r: -1.0 if r.memory_mb is None else r.memory_mb,
    "runtime": lambda r: r.runtime,
    "priority": lambda r: _PRIORITY_RANK.get(r.priority, -1),
    "state": lambda r: r.display_state.lower(),
}


def arrange(items: Sequence[Item], *, sort: str | None = None, reverse: bool = False,
            last: int | None = None) -> list[Item]:
    """`ps`'s order: keep the `last` N newest (highest PIDs) of `items`, then sort them by
    `sort` (ascending: lowest PID, CPU, memory, runtime or priority (idle) first, states A to Z;
    `reverse`: highest first). Ties stay in PID order either way."""
    if sort is None and not reverse and last is None:
        return list(items)
    chosen = sorted(items, key=lambda i: i.pid)
    if last is not None:
        chosen = chosen[-last:]
    if sort is not None:
        key = _SORT_KEYS[sort]
        chosen.sort(key=lambda i: key(_row(i)), reverse=reverse)  # stable: ties keep PID order
    elif reverse:
        chosen.reverse()
    return chosen


# ---------------------------------------------------------------------- trees


def tree_order(infos: Sequence[ProcessInfo]) -> list[tuple[ProcessInfo, str, int | None]]:
    """Parents followed by their children (an agent's tool calls, a workflow's steps), each with
    the guide drawn before its name (`├─ `, `│  └─ `) and its parent's PID when that is listed.
    A process whose parent is not listed is a root. Siblings keep the order they came in."""
    listed = {i.pid for i in infos}
    children: dict[int, list[ProcessInfo]] = {}
    roots = []
    for info in infos:
        if info.parent is not None and info.parent in listed and info.parent != info.pid:
            children.setdefault(info.parent, []).append(info)
        else:
            roots.append(info)
    out: list[tuple[ProcessInfo, str, int | None]] = []
    seen: set[int] = set()

    def walk(info: ProcessInfo, lead: str, guide: str) -> None:
        if info.pid in seen:  # a parent loop cannot happen, but never recurse forever
            return
        seen.add(info.pid)
        out.append((info, lead + guide, info.parent if info.parent in listed else None))
        kids = children.get(info.pid, [])
        below = lead + ("" if not guide else "   " if guide.startswith("└") else "│  ")
        for n, kid in enumerate(kids):
            walk(kid, below, "└─ " if n == len(kids) - 1 else "├─ ")

    for root in roots:
        walk(root, "", "")
    return out


def state_choices(_owner: object) -> Choices:
    """Completion for `--state` (a cmd2 choices provider; it needs nothing from its owner)."""
    return Choices.from_values([*KNOWN_STATES, *(p for p in PHASES if p not in KNOWN_STATES)], is_sorted=True)


def count_type(what: str = "count", example: int = 10) -> Callable[[str], int]:
    """An argparse type for a whole number of at least 1 (`ps -n N`, `top -n N`)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"bad {what} {value!r}; give a number such as {example}")
        return n

    return parse
