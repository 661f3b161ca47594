"""The guardian: a tiny helper process that outlives llmunix just long enough to kill what it left.

llmunix starts one (reaper.py, `Guardian`) the first time it starts a child. The guardian runs
`python -I -S guardian.py LLMUNIX_PID [all]` — no site packages, no llmunix imports, so it
starts in a few milliseconds — in a session of its own (a Ctrl-C or a hang-up of the terminal
does not reach it). llmunix writes to its stdin, one line each:

    + PGID START     a process group llmunix started (START: its leader's start time, in
                     clock ticks since boot, field 22 of /proc/PID/stat)
    - PGID           that group has gone

Every SCAN seconds it notes the descendants of those groups' leaders (with `all`: of llmunix
itself), with their start times: a descendant that left its group (setsid) is still known.

When its stdin reaches end of file, llmunix has ended — normally, or by SIGKILL, or by the OOM
killer: the kernel closes a dead process's pipes whatever killed it. The guardian then SIGKILLs
every group it was told about and every descendant it saw, each only if its start time still
matches (a PID the system has given to someone else since is never hit), and exits.

The same checks serve llmunix at its next start, for the groups recorded in `<home>/children`
(reaper.py): this module is importable and has no dependencies.
"""

from __future__ import annotations

import os
import select
import signal
import sys

SCAN = 1.0  # seconds between looks at the descendants


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, start time in ticks) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # the name may hold spaces and parentheses
    try:
        return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    st = proc_stat(pid)
    return st[3] if st is not None else None


def group_is_ours(pgid: int, start: int) -> bool:
    """Is the process group `pgid` still the one whose leader started at `start`? Its leader
    alive with that start time; or the leader gone (reaped) but members left — a PID stays
    reserved while a group of that number exists, so it cannot have been reused meanwhile."""
    leader = proc_stat(pgid)
    if leader is not None:
        return leader[3] == start and leader[2] == pgid
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def children(pid: int) -> list[int]:
    """A process's children, from /proc/PID/task/*/children (the cost of the tree, not of the
    system); [] when it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def descendants(roots: list[int]) -> list[int]:
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        for c in children(todo.pop()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return list(seen)


def kill_group(pgid: int, start: int) -> bool:
    """SIGKILL the group if it is still ours; True if it was."""
    return group_is_ours(pgid, start) and _sigkill(os.killpg, pgid)


def kill_process(pid: int, start: int) -> bool:
    """SIGKILL the process if it is still the one that started at `start`; True if it was."""
    return start_time(pid) == start and _sigkill(os.kill, pid)


def _sigkill(send: object, target: int) -> bool:
    try:
        send(target, signal.SIGKILL)  # type: ignore[operator]
    except (ProcessLookupError, PermissionError):
        return False
    return True


def main(argv: list[str]) -> int:
    parent = int(argv[1])
    scan_all = len(argv) > 2 and argv[2] == "all"
    me = os.getpid()
    groups: dict[int, int] = {}
    known: dict[int, int] = {}
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], SCAN)
        if ready:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                parts = line.split()
                try:
                    if parts[0] == b"+":
                        groups[int(parts[1])] = int(parts[2])
                    elif parts[0] == b"-":
                        groups.pop(int(parts[1]), None)
                except (IndexError, ValueError):
                    continue
        if os.getppid() != parent:  # reparented: llmunix has gone (EOF says so too; this is a backstop)
            break
        roots = [parent] if scan_all else list(groups)
        for pid in descendants(roots) if roots else ():
            if pid != me and pid not in known:
                start = start_time(pid)
                if start is not None:
                    known[pid] = start
        for pid in [p for p, s in known.items() if start_time(p) != s]:
            del known[pid]
    for _ in range(2):  # twice: a member may have forked while the first sweep ran
        for pgid, start in groups.items():
            kill_group(pgid, start)
        for pid in descendants([pg for pg, s in groups.items() if start_time(pg) == s]):
            known.setdefault(pid, start_time(pid) or -1)
        for pid, start in known.items():
            if pid != me:
                kill_process(pid, start)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(main(sys.argv))
