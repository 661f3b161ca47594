"""Ownership of a home directory: one llmunix writes it at a time.

The owner holds an exclusive `flock` on `<home>/lock` (and writes its PID there for people to
read). The kernel releases the lock when it dies, however it dies, so a crash never leaves a
stale lock behind. A second llmunix on the same home opens it read-only instead: it can list
processes, events, logs and the audit trail, but not start or steer processes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from llmunix.models import LlmunixError


class HomeInUse(LlmunixError):
    def __init__(self, home: Path, owner: str) -> None:
        super().__init__(f"{home} is in use by llmunix pid {owner}; use another --home, or open it read-only")
        self.home = home
        self.owner = owner


class HomeLock:
    def __init__(self, home: Path) -> None:
        self.path = home / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise HomeInUse naming the owner."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HomeInUse(self.path.parent, self.owner()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
