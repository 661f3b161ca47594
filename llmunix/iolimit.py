"""I/O rate limits: `run --io-rate 10MB/s` (and `[tools.NAME] io_rate`) for subprocess and
isolated tools, whose work is an OS process tree llmunix can measure and stop.

Two ways, chosen once, when the first limited process starts (`IoLimiter.method`):

* cgroup v2 `io.max`, where the machine allows: a writable cgroup v2 directory whose children
  may use the io controller (the `io_cgroup` setting names one delegated to you, e.g. a systemd
  `Delegate=yes` unit's; as root, the hierarchy's root is tried). Each limited process's tree
  goes into a cgroup of its own, `llmunix-<os pid>-<PID>`, with `rbps` and `wbps` at the rate on
  every disk. The kernel's block layer then holds it to the rate: exact and free, but it limits
  disk I/O only (pipes and sockets are not block I/O; writes count when the page cache writes
  them back).
* otherwise a measured duty cycle (this machine: cgroup v2 has no io controller). The regulator
  thread reads the tree's I/O bytes — read and written through the read/write family of system
  calls: files and pipes, not a socket's send/recv (/proc/PID/io `rchar`, `wchar`: the
  monitor's figures; network traffic is limited per host, hosts.py) — and runs them against two
  token buckets (pool.TokenBucket), one for reads and one for writes, each refilled at the rate
  and holding BURST seconds' worth: the rate holds each way, as io.max's rbps and wbps do. While
  a bucket is in debt the tree's process group is stopped (SIGSTOP); when both have refilled, it
  is continued (SIGCONT). The tree is held from its first instant: a subprocess tool's command
  starts stopped (`held_command`: ctx.popen asks `starts_held`), and the `on_subprocess` hook
  stops what is attached (an isolated worker, before it is given its body).
  Each running stretch is sized from the speed the tree last showed (the fastest any tree has
  shown, until it has run for CALM seconds); a stretch shorter than MIN_RUN is timed by the
  regulator itself, spinning with the GIL held between SIGCONT and SIGSTOP, so a tree that could
  write 2 GB/s runs in stretches of a fraction of a millisecond (about a megabyte) and waits out
  the rest. Over a window of T seconds it moves at most RATE x T + BURST's worth + one stretch's
  bytes each way: the average holds the rate (bench/iolimit.py measures how closely). A stretch
  lasts longer when the regulator's thread loses its CPU (a busy machine: milliseconds, tens of
  megabytes at page-cache speed); that is paid back by a longer stop, so it shows over short
  windows, not in the long run. A pause, preemption or kill of the process always wins: the
  regulator continues a tree only while its process runs, and a tree the table continued while
  the regulator held it (a resume) is stopped again at the regulator's next look (every TICK).

State (`_lock`): `_limited` (pid -> _Limited: the tree, its bucket, figures); the thread sleeps
until the soonest `due` of them. Registered (hooks `on_subprocess`, `on_end`) at the first
limited process, so that nothing pays for it before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.isolation import fmt_rate
from llmunix.lifecycle import Hooks
from llmunix.models import Phase, format_pid, short_duration
from llmunix.pool import TokenBucket
from llmunix.process import signal_group

if TYPE_CHECKING:
    from llmunix.isolation import Isolation
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process

log = logging.getLogger("llmunix.iolimit")

TICK = 0.05  # seconds between looks at a running tree that is not near its limit
MIN_RUN = 0.005  # the shortest running stretch left to the loop; shorter ones are timed by sleeping
MIN_BURST = 0.0003  # the shortest timed stretch (a sleep of a fraction of a millisecond)
CALM = 0.5  # seconds a tree runs before its own speed is trusted to size its stretches
FASTEST = 2e9  # bytes per second assumed of an untrusted tree until one shows more (page-cache writes)
BURST = 0.25  # seconds' worth of the rate the bucket holds (a burst after an idle stretch)
STRAY = 256 * 1024  # bytes a held tree may still show (calls in flight when it was stopped)


@dataclass(frozen=True, slots=True)
class IoLimitInfo:
    """A limited process's figures so far (`debug PID`, the history's last word). The rate holds
    for reads and for writes, each (as io.max's rbps and wbps)."""

    pid: int
    rate: float  # bytes per second, each way
    method: str  # "cgroup" or "duty-cycle"
    read: int  # bytes read through read-family system calls since it started (duty cycle)
    written: int
    seconds: float  # since the regulator first saw it
    held: float  # seconds stopped by the regulator
    stops: int
    looks: int = 0  # times the regulator has read its bytes

    def describe(self) -> str:
        if self.method == "cgroup":
            return f"{fmt_rate(self.rate)} each way (cgroup v2 io.max: disk reads and writes)"
        text = f"{fmt_rate(self.rate)} each way (duty cycle)"
        if self.seconds > 0:
            text += (f": {self.read / 1e6:.1f} MB read, {self.written / 1e6:.1f} MB written in "
                     f"{short_duration(self.seconds)} ({fmt_rate(self.read / self.seconds)}, "
                     f"{fmt_rate(self.written / self.seconds)}); stopped {self.held / self.seconds:.0%} of the "
                     f"time in {self.stops} stop{'s' if self.stops != 1 else ''}")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "rate": self.rate, "method": self.method, "read": self.read,
                "written": self.written, "seconds": round(self.seconds, 3), "held": round(self.held, 3),
                "stops": self.stops, "looks": self.looks}


class _Limited:
    """One limited process's regulation state (the regulator thread's; `_lock` for the dict)."""

    def __init__(self, proc: Process, child: Any, rate: float, now: float) -> None:
        self.proc = proc
        self.child = child
        self.rate = rate
        # One bucket for reads, one for writes: the rate holds each way, as io.max's rbps and wbps.
        self.buckets = tuple(TokenBucket(rate * 60.0, time.monotonic, ceiling=rate * BURST) for _ in range(2))
        self.members: list[int] = [child.pid]
        self.listed = False  # its members have been listed once (it may have forked before it was held)
        self.totals = [0, 0]  # bytes of the tree so far: read, written
        self.speed: float | None = None  # bytes per second while it ran, lately (None: not known yet)
        self.ran = 0.0  # seconds it has run so far (not held)
        self.held = False
        self.started = now
        self.at = now
        self.due = now
        self.held_for = 0.0
        self.stops = 0
        self.looks = 0
        self.cgroup: Path | None = None
        self.placed = False  # a cgroup was tried for it

    def read(self, relist: bool) -> tuple[int, int] | None:
        """Bytes read and written by the tree so far; None when its leader has gone. `relist`:
        list its members again first (it ran since the last look, so it may have forked: a
        stopped tree cannot)."""
        if relist or not self.listed:
            self.listed = True
            self.members = _tree(self.child.pid)
        rd = wr = 0
        alive = False
        for pid in self.members:
            n = _io_bytes(pid)
            if n is not None:
                rd += n[0]
                wr += n[1]
                alive = alive or pid == self.child.pid
        return (rd, wr) if alive else None

    def debt(self) -> float:
        """Seconds until both buckets are out of debt."""
        return max(b.seconds_until(0.0) for b in self.buckets)

    def learn(self, consumed: int, running: float) -> float | None:
        """What its last stretch (`running` seconds, `consumed` bytes) says of its speed; the
        speed seen, or None."""
        if running <= 0:
            return None
        self.ran += running
        speed = consumed / running
        # Too low an estimate overshoots the rate: it rises at once and falls by halves.
        self.speed = speed if self.speed is None else max(speed, 0.5 * self.speed)
        return speed

    def next_run(self, fastest: float) -> float:
        """How long to let it run next: long enough to move a chunk (RATE x TICK, or what its
        bucket holds, if more) at its speed, within [MIN_BURST, TICK]. Until it has run for CALM
        seconds its own speed is not trusted (a writer starting up shows none): the fastest any
        limited tree has shown is used."""
        level = min(b.refill() for b in self.buckets)
        speed = self.speed or 0.0
        if self.ran < CALM:
            speed = max(speed, fastest)
        if speed <= 0:
            return TICK
        return max(MIN_BURST, min(TICK, max(level, self.rate * TICK) / speed))


class IoLimiter(Hooks):
    """See the module docstring."""

    def __init__(self, table: ProcessTable, isolation: Isolation, *,
                 cgroup: Callable[[], str | None] | str | None = None) -> None:
        self.table = table
        self.isolation = isolation
        self._cgroup = cgroup  # the `io_cgroup` setting (a callable: read when first needed)
        self._lock = threading.Lock()
        self._limited: dict[int, _Limited] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._method: tuple[str, Path | None, str] | None = None  # ("cgroup"|"duty-cycle", dir, why)
        self.fastest = FASTEST  # bytes per second: the fastest any limited tree has shown

    # ------------------------------------------------------------------ choosing the way

    def method(self) -> tuple[str, str]:
        """("cgroup", its directory) or ("duty-cycle", why not a cgroup): how rates are held here."""
        if self._method is None:
            configured = self._cgroup() if callable(self._cgroup) else self._cgroup
            root, why = find_io_cgroup(configured)
            self._method = ("cgroup", root, "") if root is not None else ("duty-cycle", None, why)
        kind, root, why = self._method
        return kind, str(root) if root is not None else why

    def starts_held(self, pid: int) -> bool:
        """Whether process `pid`'s commands must start stopped (`held_command`): its rate is held
        by the duty cycle, whose first stretch should be the command's first instant."""
        placement = self.isolation.placed(pid)
        return placement is not None and placement.io_rate is not None and self.method()[0] == "duty-cycle"

    def activate(self) -> None:
        """Register the hooks (a first limited process is about to be spawned)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self.method()
            self._thread = threading.Thread(target=self._loop, name="llmunix-io-regulator", daemon=True)
        with self.table.lock:
            self.table.register(self)
        self._thread.start()

    # ------------------------------------------------------------------ hooks

    def on_subprocess(self, proc: Process, child: Any) -> None:
        """(Lock not held.) Hold a limited tree from its first instant: left to run until the
        regulator's first look, a fast writer moves tens of megabytes (recording the child for
        the reaper, which comes next, writes to disk)."""
        placement = self.isolation.placed(proc.pid)
        if placement is None or placement.io_rate is None:
            return
        lim = _Limited(proc, child, placement.io_rate, time.monotonic())
        kind, _where = self.method()
        if kind != "cgroup":
            signal_group(child, signal.SIGSTOP)  # (continued in timed stretches once the regulator looks)
            lim.held = True
        with self.table.lock:
            proc.note("io limit", f"{fmt_rate(placement.io_rate)} by " + (
                "cgroup v2 io.max" if kind == "cgroup" else "a SIGSTOP/SIGCONT duty cycle"))
        with self._lock:
            self._limited[proc.pid] = lim
        self._wake.set()

    def on_continue(self, proc: Process) -> bool:
        """(Lock held.) The table resumes `proc` (or ends its preemption): a tree the duty cycle
        holds stays held and goes on in the regulator's timed stretches, woken now. Continued by
        the table, a fast writer moved 150 MB at page-cache speed before the next look, a debt
        that then held it for seconds."""
        with self._lock:
            lim = self._limited.get(proc.pid)
        if lim is None or lim.cgroup is not None or not lim.held or lim.child is not proc.subprocess:
            return False
        lim.due = 0.0
        self._wake.set()
        return True

    # (on_end: lock held)

    def on_end(self, proc: Process) -> None:
        with self._lock:
            lim = self._limited.pop(proc.pid, None)
        if lim is None:
            return
        info = self._info(lim, time.monotonic())
        proc.note("io limit", info.describe())
        if lim.cgroup is not None:
            self.table.timers.call_later(1.0, _remove_cgroup, lim.cgroup)

    # ------------------------------------------------------------------ queries

    def info(self, pid: int) -> IoLimitInfo | None:
        with self._lock:
            lim = self._limited.get(pid)
            return None if lim is None else self._info(lim, time.monotonic())

    def _info(self, lim: _Limited, now: float) -> IoLimitInfo:
        kind = "cgroup" if lim.cgroup is not None else "duty-cycle"
        held = lim.held_for + (max(0.0, now - lim.at) if lim.held else 0.0)  # (a stop under way counts)
        return IoLimitInfo(lim.proc.pid, lim.rate, kind, lim.totals[0], lim.totals[1], now - lim.started, held,
                           lim.stops, lim.looks)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    # ------------------------------------------------------------------ the regulator thread

    def _loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                limited = list(self._limited.values())
            soonest = now + 1.0
            for lim in limited:
                if lim.due <= now:
                    try:
                        self._tend(lim, now)
                    except Exception:  # a measuring hiccup must not end the regulator
                        log.exception("io regulator: %s", format_pid(lim.proc.pid))
                        lim.due = now + TICK
                soonest = min(soonest, lim.due)
            self._wake.wait(max(0.0, soonest - time.monotonic()))
            self._wake.clear()

    def _tend(self, lim: _Limited, now: float) -> None:
        if not lim.placed:
            lim.placed = True
            if self._method is not None and self._method[0] == "cgroup":
                lim.cgroup = self._place_in_cgroup(lim)
                if lim.cgroup is not None:
                    lim.due = float("inf")  # the kernel holds it
                    return
        was_held = lim.held
        consumed = self._measure(lim, now)
        if consumed is None:  # its leader has gone: the process is ending
            lim.due = now + TICK
            return
        debt = lim.debt()
        if debt > 0:
            # Held, yet it moved more than a write in flight: the table continued it (a resume, the
            # end of a preemption): stop it again. Looked at every TICK while held, for that.
            if (not lim.held or (was_held and consumed > STRAY)) and self._signal(lim, signal.SIGSTOP):
                lim.held = True
                lim.stops += 1
            lim.due = now + min(debt, TICK)
            return
        run = lim.next_run(self.fastest)
        if not lim.held:  # it goes on running: look again when its budget should be spent
            lim.due = now + min(TICK, max(MIN_RUN, run))
        elif run >= MIN_RUN:
            if self._signal(lim, signal.SIGCONT):
                lim.held = False
                lim.due = now + min(TICK, run)
            else:  # paused or preempted: the table continues it when it runs again
                lim.due = now + TICK
        else:  # too short a stretch to leave to the loop: timed here
            ran = self._timed_run(lim, run)
            after = time.monotonic()
            if ran is None:  # paused or preempted: the table continues it when it runs again
                lim.due = now + TICK
            elif self._measure(lim, after, ran=ran) is None:
                lim.due = after + TICK
            else:
                lim.stops += 1
                lim.due = after + min(lim.debt(), TICK)

    def _timed_run(self, lim: _Limited, seconds: float) -> float | None:
        """Continue the tree, let it run `seconds`, stop it again; the seconds it ran (measured
        around both signals), or None if it may not run now. The three calls go through libc
        with the GIL held (ctypes.PyDLL), so no other thread of llmunix runs in between: a
        thread switch there would stretch the run to the interpreter's switch interval (5 ms:
        megabytes at page-cache speed). It holds the table lock for that fraction of a ms."""
        with self.table.lock:
            proc = lim.proc
            if (proc.phase not in (Phase.RUNNING, Phase.WAITING) or proc.subprocess is not lim.child
                    or self.table.pausing(proc)):
                return None
            pgid = lim.child.pid
            libc = _pylibc()
            t0 = time.monotonic()
            end = t0 + seconds
            if libc is not None:
                libc.kill(-pgid, signal.SIGCONT)
                while time.monotonic() < end:  # spin: a sleeping regulator wakes late on a busy machine
                    pass
                libc.kill(-pgid, signal.SIGSTOP)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGCONT)
                    while time.monotonic() < end:
                        pass
                    os.killpg(pgid, signal.SIGSTOP)
            return time.monotonic() - t0

    def _measure(self, lim: _Limited, now: float, ran: float | None = None) -> int | None:
        """Read the tree's bytes and charge them to the bucket; learn its speed from the time it
        ran (`ran`: a timed stretch, after which it is held again; else since the last look,
        unless it was held). None when its leader has gone."""
        totals = lim.read(relist=not lim.held or ran is not None)
        lim.looks += 1
        if totals is None:
            return None
        moved = [max(0, t - old) for t, old in zip(totals, lim.totals, strict=True)]
        lim.totals = [max(t, old) for t, old in zip(totals, lim.totals, strict=True)]
        for bucket, n in zip(lim.buckets, moved, strict=True):
            bucket.take(n)
        consumed = max(moved)  # the busier way sizes its stretches
        elapsed = now - lim.at
        lim.at = now
        if lim.held:
            lim.held_for += elapsed - (ran or 0.0)
        running = ran if ran is not None else (0.0 if lim.held else elapsed)
        speed = lim.learn(consumed, running)
        if speed is not None and speed > self.fastest:
            self.fastest = speed
        return consumed

    def _signal(self, lim: _Limited, sig: int) -> bool:
        """SIGSTOP or SIGCONT the tree's group, with the table lock held so that a pause, resume
        or kill does not cross it; SIGCONT only while its process runs. True if sent."""
        with self.table.lock:
            proc = lim.proc
            if proc.phase is Phase.DONE or proc.subprocess is not lim.child:
                return False
            if sig == signal.SIGCONT and (proc.phase not in (Phase.RUNNING, Phase.WAITING) or
                                          self.table.pausing(proc)):
                return False
            signal_group(lim.child, sig)
            return True

    def _place_in_cgroup(self, lim: _Limited) -> Path | None:
        assert self._method is not None and self._method[1] is not None
        try:
            return make_limited_cgroup(self._method[1], f"llmunix-{os.getpid()}-{lim.proc.pid}", lim.rate,
                                       _tree(lim.child.pid))
        except OSError as exc:
            log.warning("cannot put %s in a cgroup (%s); holding it by duty cycle", format_pid(lim.proc.pid), exc)
            return None


# ---------------------------------------------------------------------- OS helpers

HELD_START = 'kill -STOP $$; exec "$@"'  # a shell that stops itself, then becomes the command


def held_command(cmd: str | list[str], shell: bool) -> list[str]:
    """`cmd` (as Popen takes it, with `shell`) as an argument list that stops itself before it
    runs: /bin/sh sends itself SIGSTOP and, once the regulator continues it, execs the command
    (the same OS process). Without it the command runs from its exec until the `on_subprocess`
    hook stops it: megabytes at page-cache speed, tens of them on a busy machine."""
    argv = ["/bin/sh", "-c", cmd] if shell and isinstance(cmd, str) else (
        [cmd] if isinstance(cmd, str) else [*cmd])
    return ["/bin/sh", "-c", HELD_START, "sh", *argv]


_PYLIBC: Any = None


def _pylibc() -> Any:
    """libc whose functions are called with the GIL held (ctypes.PyDLL), or None."""
    global _PYLIBC
    if _PYLIBC is None:
        import ctypes

        try:
            _PYLIBC = ctypes.PyDLL("libc.so.6", use_errno=True)
        except OSError:
            _PYLIBC = False
    return _PYLIBC or None



def _io_bytes(pid: int) -> tuple[int, int] | None:
    """(rchar, wchar) of one OS process (its reaped children's included, as the kernel adds them)."""
    try:
        fd = os.open(f"/proc/{pid}/io", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 512)
    except OSError:
        return None
    finally:
        os.close(fd)
    rd = wr = 0
    for line in data.split(b"\n"):
        if line.startswith(b"rchar:"):
            rd = int(line.split(b":", 1)[1])
        elif line.startswith(b"wchar:"):
            wr = int(line.split(b":", 1)[1])
    return rd, wr


def _tree(root: int) -> list[int]:
    """`root` and its descendants. Read from /proc directly, and only for PIDs above the root's
    (a descendant was made after it; a wrapped-around PID counter aside): a tenth of psutil's
    full scan, cheap enough for every look of the regulator."""
    parents: dict[int, int] = {}
    try:
        entries = os.scandir("/proc")
    except OSError:
        return [root]
    with entries:
        for entry in entries:
            name = entry.name
            if not name.isdigit() or int(name) <= root:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read(512)
                parents[int(name)] = int(stat.rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = [root]
    for pid in found:  # (the list grows as children are found: breadth first)
        found.extend(c for c, parent in parents.items() if parent == pid)
    return found


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid system), or None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return Path(parts[1])
    except OSError:
        pass
    return None


def find_io_cgroup(configured: str | None = None) -> tuple[Path | None, str]:
    """A cgroup v2 directory where llmunix may make children that use the io controller, or
    (None, why there is none)."""
    mount = cgroup2_mount()
    if configured is None and mount is None:
        return None, "no cgroup v2 hierarchy is mounted"
    candidates = [Path(configured)] if configured else ([mount] if os.geteuid() == 0 and mount else [])
    if not candidates:
        return None, "no delegated cgroup v2 directory (set io_cgroup to one delegated to you)"
    why = ""
    for cand in candidates:
        try:
            available = (cand / "cgroup.controllers").read_text().split()
        except OSError as exc:
            why = f"{cand} is not a cgroup v2 directory ({exc.strerror or exc})"
            continue
        if "io" not in available:
            why = f"cgroup v2 at {cand} has no io controller (it offers: {' '.join(available) or 'none'})"
            continue
        try:
            enabled = (cand / "cgroup.subtree_control").read_text().split()
            if "io" not in enabled:
                (cand / "cgroup.subtree_control").write_text("+io")
            probe = cand / f"llmunix-probe-{os.getpid()}"
            probe.mkdir()
            try:
                if not (probe / "io.max").exists():
                    why = f"cgroup v2 at {cand}: its children get no io.max"
                    continue
            finally:
                probe.rmdir()
        except OSError as exc:
            why = f"cgroup v2 at {cand} is not writable here ({exc.strerror or exc})"
            continue
        return cand, ""
    return None, why


def make_limited_cgroup(root: Path, name: str, rate: float, pids: list[int]) -> Path:
    """A child cgroup of `root` holding `pids` to `rate` bytes per second of reads and of
    writes on every disk (io.max)."""
    group = root / name
    group.mkdir(exist_ok=True)
    limit = int(rate)
    for dev in _disks():
        with contextlib.suppress(OSError):  # a device the io controller does not handle
            (group / "io.max").write_text(f"{dev} rbps={limit} wbps={limit}")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            (group / "cgroup.procs").write_text(str(pid))
    return group


def _disks() -> list[str]:
    """MAJ:MIN of every whole block device (/sys/block), loop and ram devices aside."""
    out = []
    for d in sorted(Path("/sys/block").glob("*")):
        if d.name.startswith(("loop", "ram")):
            continue
        with contextlib.suppress(OSError):
            out.append((d / "dev").read_text().strip())
    return out


def _remove_cgroup(group: Path) -> None:
    with contextlib.suppress(OSError):
        group.rmdir()  # (empty once its processes have gone; a leftover is harmless and named)
