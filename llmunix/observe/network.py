"""A process tree's network use over a profile window: its connections (psutil) and the bytes its
TCP connections carried (the kernel's tcp_info, read with `ss -tin` from iproute2).

What is measured, and how. Linux keeps no per-process network byte counters an unprivileged user
can read (the interface counters in /proc/net/dev are the whole network namespace's; per-process
accounting needs eBPF or netfilter rules, i.e. root). It does keep counters per TCP socket,
readable by anyone through sock_diag (what `ss -ti` prints): bytes_sent (retransmissions
included) and bytes_received. So at each sample the tree's inet connections are listed (psutil
says which sockets are its), and each TCP one's counters are looked up by its two addresses. A
connection's bytes in the window are its last counters minus its counters when first seen (zero
when it opened during the window). Not counted: UDP, Unix sockets, and a connection opened and
closed between two samples. Without `ss` the report says so and counts connections only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import psutil

from llmunix.reaper import die_with_parent

SS_TIMEOUT = 5.0

Addr = tuple[str, int]
Conn = tuple[Addr, Addr]  # (local, remote)


def _addr(text: str) -> Addr | None:
    """`127.0.0.1:8000`, `[::1]:8000`, `[::ffff:10.0.0.1]:443`, `*:22` as (ip, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    host = host.strip("[]").split("%", 1)[0]
    return (host.removeprefix("::ffff:"), int(port))


def parse_ss(text: str) -> dict[Conn, tuple[int, int]]:
    """`ss -tinH` output as {(local, remote): (bytes_sent, bytes_received)}."""
    out: dict[Conn, tuple[int, int]] = {}
    current: Conn | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            parts = line.split()
            current = None
            if len(parts) >= 5:
                local, remote = _addr(parts[3]), _addr(parts[4])
                if local is not None and remote is not None:
                    current = (local, remote)
            continue
        if current is None:
            continue
        sent = received = 0
        for word in line.split():
            name, _, value = word.partition(":")
            if name == "bytes_sent" and value.isdigit():
                sent = int(value)
            elif name == "bytes_received" and value.isdigit():
                received = int(value)
        out[current] = (sent, received)
        current = None
    return out


def tcp_counters() -> tuple[dict[Conn, tuple[int, int]] | None, str]:
    """Every TCP socket's counters now, or (None, why not)."""
    exe = shutil.which("ss")
    if exe is None:
        return None, "`ss` (iproute2) not found: TCP bytes not measured"
    try:
        r = subprocess.run([exe, "-tinH"], capture_output=True, text=True, timeout=SS_TIMEOUT,  # noqa: S603
                           preexec_fn=die_with_parent)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`ss` failed ({exc}): TCP bytes not measured"
    if r.returncode != 0:
        return None, f"`ss` failed ({r.stderr.strip()[:80] or r.returncode}): TCP bytes not measured"
    return parse_ss(r.stdout), ""


@dataclass
class NetworkWatch:
    """Connections of a child tree and their TCP bytes, sampled over a window."""

    seen: set[tuple[Any, ...]] = field(default_factory=set)
    peak: int = 0
    last: int = 0
    samples: int = 0
    denied: bool = False
    first: dict[Conn, tuple[int, int]] = field(default_factory=dict)  # counters when first seen
    latest: dict[Conn, tuple[int, int]] = field(default_factory=dict)
    bytes_note: str = ""  # why TCP bytes are not measured

    def sample(self, child_pid: int) -> None:
        try:
            root = psutil.Process(child_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        now: set[tuple[Any, ...]] = set()
        tcp: set[Conn] = set()
        for p in tree:
            try:
                for c in p.net_connections(kind="inet"):
                    now.add((p.pid, c.fd, c.laddr, c.raddr, c.type))
                    if c.laddr and c.raddr and c.type == 1:  # SOCK_STREAM: TCP
                        tcp.add(((_norm(c.laddr.ip), c.laddr.port), (_norm(c.raddr.ip), c.raddr.port)))
            except psutil.AccessDenied:
                self.denied = True
            except psutil.Error:
                continue
        if tcp and self.bytes_note == "":
            counters, why = tcp_counters()
            if counters is None:
                self.bytes_note = why
            else:
                for conn in tcp:
                    value = counters.get(conn)
                    if value is None:
                        continue
                    if conn not in self.first:  # opened before the window: count from here; else from 0
                        self.first[conn] = value if self.samples == 0 else (0, 0)
                    self.latest[conn] = value
        self.samples += 1
        self.seen |= now
        self.peak = max(self.peak, len(now))
        self.last = len(now)

    def bytes(self) -> tuple[int, int] | None:
        """(sent, received) on the tree's TCP connections in the window; None when not measured."""
        if self.bytes_note or not self.samples:
            return None
        sent = sum(max(0, v[0] - self.first[c][0]) for c, v in self.latest.items())
        received = sum(max(0, v[1] - self.first[c][1]) for c, v in self.latest.items())
        return sent, received


def _norm(ip: str) -> str:
    return ip.removeprefix("::ffff:")
