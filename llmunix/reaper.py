"""Nothing left behind: whatever llmunix starts dies with it, even after `kill -9` of llmunix.

Three means, each covering what the others cannot:

* A parent-death signal (`die_with_parent`, prctl PR_SET_PDEATHSIG) in every child llmunix
  starts — subprocess tools' commands, py-spy, the isolation pool (isolation.py) and its workers:
  when the thread that started it ends, the kernel SIGKILLs it. It reaches only that child, not
  its own children.
* The guardian (guardian.py): a tiny helper that outlives llmunix. llmunix tells it each process
  group it starts (`Guardian.watch`) and it watches their descendants; when llmunix ends, however
  it ends, its pipe closes and the guardian SIGKILLs all of them.
* A durable record (`ChildRecord`, `<home>/children`): each group is written there *before* it
  can do any work that matters (a subprocess is written as soon as it exists; an isolated worker
  before it is given its body), and the next llmunix on the same home reaps what is still there
  (`ChildRecord.reap_leftovers`) — should the guardian have been killed too — and reports it.

Every kill is checked against the start time recorded with the PID (guardian.py), so a PID the
system has since given to another program is never hit; a record from before a reboot is dropped.

`become_subreaper` (the llmunix command only) keeps orphaned descendants of llmunix's tools under
llmunix rather than init while it runs; `ChildRecord.reap_orphans` collects the exit status of
those that end, so they do not linger as zombies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmunix import guardian
from llmunix.guardian import group_is_ours, kill_group, proc_stat, start_time

log = logging.getLogger("llmunix.reaper")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
RECORD = "children"
COMPACT_AT = 256  # lines in the record before it is rewritten with only the live groups

# Looked up once, here: a forked child (a preexec_fn) then only makes the system call.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _prctl(option: int, value: int) -> bool:
    return _PRCTL is not None and _PRCTL(option, value, 0, 0, 0) == 0


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child (a `preexec_fn`, or just after a fork): receive `sig` when the thread that
    started it ends."""
    _prctl(PR_SET_PDEATHSIG, sig)


def become_subreaper() -> bool:
    """Orphaned descendants of this process are re-parented to it, not to init (Linux 3.4+)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------- the guardian (one per OS process)


class Guardian:
    """This OS process's guardian helper (guardian.py), started the first time a group is
    watched. With `scan_all` (the llmunix command) it kills every descendant of llmunix when
    llmunix ends; else (llmunix embedded in a program) only the groups it is told about and
    what descends from them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed = False
        self.scan_all = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, pgid: int, start: int) -> None:
        self._send(f"+ {pgid} {start}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"- {pgid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None and not self._failed:
                self._start()
            if self._proc is None or self._proc.stdin is None:
                return
            try:
                self._proc.stdin.write(line.encode())
                self._proc.stdin.flush()
            except OSError as exc:  # it died (killed by hand): start another next time
                log.warning("the guardian helper is gone (%s); starting another", exc)
                self._proc = None

    def _start(self) -> None:
        argv = [sys.executable, "-I", "-S", guardian.__file__, str(os.getpid())]
        if self.scan_all:
            argv.append("all")
        try:
            # Its own session: a Ctrl-C or hang-up meant for llmunix must not end it first.
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,  # noqa: S603
                                          stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError as exc:
            self._failed = True
            log.error("cannot start the guardian helper (%s): children may outlive a crash of llmunix", exc)


GUARDIAN = Guardian()


# ---------------------------------------------------------------------- the durable record (one per home)


@dataclass(frozen=True)
class Reaped:
    """A process group an earlier llmunix left running, killed at this start."""

    pgid: int
    label: str  # what it was: "003 shell", "007 isolated worker", "isolation pool"
    processes: int  # how many processes the group (and its known descendants) had


class ChildRecord:
    """The process groups this llmunix started, kept in `<home>/children` so that the next start
    on the same home can reap them (the home's lock guarantees that the writer of the record has
    gone). Also tells the guardian. Without a home: the guardian only."""

    def __init__(self, home: Path | None) -> None:
        self._path = home / RECORD if home is not None else None
        self._lock = threading.Lock()
        self._live: dict[int, tuple[int, str]] = {}  # pgid -> (start ticks, label)
        self._lines = 0
        self._file = None

    # ------------------------------------------------------------------ at start

    def reap_leftovers(self) -> list[Reaped]:
        """Kill what an earlier llmunix on this home recorded and did not see end (it was killed,
        and its guardian with it), then start a new record. Returns what was killed."""
        if self._path is None:
            return []
        reaped: list[Reaped] = []
        try:
            text = self._path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            log.warning("cannot read %s: %s", self._path, exc)
            text = ""
        lines = text.splitlines()
        if lines and lines[0] == f"boot {boot_id()}":  # after a reboot nothing of it can be running
            for pgid, (start, label) in _replay(lines[1:]).items():
                if group_is_ours(pgid, start):
                    members = _members(pgid, start)
                    if kill_group(pgid, start):
                        for pid, pid_start in members:
                            guardian.kill_process(pid, pid_start)  # descendants that left the group
                        reaped.append(Reaped(pgid, label, max(1, len(members))))
        self._rewrite()
        return reaped

    # ------------------------------------------------------------------ while running

    def adopt(self, pid: int, label: str) -> None:
        """Record process group `pid` (it leads its group) and tell the guardian; at once, before
        it is given work where that can be arranged."""
        start = start_time(pid)
        if start is None:
            return  # already gone
        GUARDIAN.watch(pid, start)
        with self._lock:
            self._live[pid] = (start, label)
            self._append(f"+ {pid} {start} {label}\n")
            compact = self._lines > COMPACT_AT and self._lines > 4 * len(self._live)
        if compact:
            self.prune()

    def prune(self) -> None:
        """Forget groups that have gone (every process of them has ended)."""
        with self._lock:
            gone = [pgid for pgid, (start, _) in self._live.items() if not group_is_ours(pgid, start)]
            for pgid in gone:
                del self._live[pgid]
            if gone and self._lines > COMPACT_AT:
                self._rewrite_locked()
            else:
                for pgid in gone:
                    self._append(f"- {pgid}\n")
        for pgid in gone:
            GUARDIAN.forget(pgid)

    def reap_orphans(self) -> int:
        """Collect the exit status of our zombie children that were re-parented to us (we are a
        subreaper): members of a recorded group that are not its leader (the leader belongs to a
        Popen, which waits for it itself). Returns how many were collected."""
        with self._lock:
            groups = set(self._live)
        if not groups:
            return 0
        n = 0
        for pid in guardian.children(os.getpid()):
            st = proc_stat(pid)
            if st is not None and st[0] == "Z" and st[2] in groups and pid != st[2]:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                    n += 1
        return n

    def close(self) -> list[Reaped]:
        """llmunix is ending normally, its processes stopped: kill what is left of the groups
        (background jobs of finished shell tools), and leave an empty record."""
        with self._lock:
            live = dict(self._live)
            self._live.clear()
        left = []
        for pgid, (start, label) in live.items():
            if group_is_ours(pgid, start):
                members = _members(pgid, start)
                if kill_group(pgid, start):
                    for pid, pid_start in members:
                        guardian.kill_process(pid, pid_start)
                    left.append(Reaped(pgid, label, max(1, len(members))))
            GUARDIAN.forget(pgid)
        with self._lock:
            self._rewrite_locked()
            if self._file is not None:
                self._file.close()
                self._file = None
        return left

    def groups(self) -> dict[int, str]:
        with self._lock:
            return {pgid: label for pgid, (_, label) in self._live.items()}

    # ------------------------------------------------------------------ the file

    def _append(self, line: str) -> None:
        if self._path is None:
            return
        try:
            if self._file is None:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._file = os.fdopen(fd, "a", buffering=1)  # line-buffered: in the page cache at once
            self._file.write(line)
            self._lines += 1
        except OSError as exc:
            log.warning("cannot write %s: %s", self._path, exc)

    def _rewrite(self) -> None:
        with self._lock:
            self._rewrite_locked()

    def _rewrite_locked(self) -> None:
        if self._path is None:
            return
        text = f"boot {boot_id()}\n" + "".join(f"+ {pgid} {start} {label}\n"
                                                for pgid, (start, label) in self._live.items())
        tmp = self._path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._path, exc)
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lines = 1 + len(self._live)


def _replay(lines: list[str]) -> dict[int, tuple[int, str]]:
    live: dict[int, tuple[int, str]] = {}
    for line in lines:
        parts = line.split(" ", 3)
        try:
            if parts[0] == "+":
                live[int(parts[1])] = (int(parts[2]), parts[3] if len(parts) > 3 else "")
            elif parts[0] == "-":
                live.pop(int(parts[1]), None)
        except (IndexError, ValueError):
            continue
    return live


def _members(pgid: int, start: int) -> list[tuple[int, int]]:
    """The group's processes and the leader's descendants (some may have left the group), with
    their start times."""
    out = []
    roots = [pgid] if start_time(pgid) == start else []
    for pid in _group_pids(pgid) | set(guardian.descendants(roots)):
        st = proc_stat(pid)
        if st is not None and st[0] != "Z":  # (a zombie has ended already: only its parent's wait is due)
            out.append((pid, st[3]))
    return out


def _group_pids(pgid: int) -> set[int]:
    pids = set()
    for entry in _proc_pids():
        st = proc_stat(entry)
        if st is not None and st[2] == pgid:
            pids.add(entry)
    return pids


def _proc_pids() -> Iterator[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


__all__ = ["GUARDIAN", "ChildRecord", "Guardian", "Reaped", "become_subreaper", "die_with_parent"]
