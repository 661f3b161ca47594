"""I/O priority by level, for a subprocess or isolated tool's process group (what `ionice` sets).

`priority` maps to the group's nice value (process.renice_group) and, here, to its I/O class:
idle → the idle class (disk time only when nobody else wants it), low → best-effort level 7 (the
lowest), normal, high and critical → "none" (the default: derived from the nice value), so that
raising a process back from low gives the default again. Set with ioprio_set(2) on the whole
process group (IOPRIO_WHO_PGRP: every thread of every member; children forked later inherit it),
through libc's syscall(); on an architecture whose system call number is not known here, on each
process of the tree through psutil instead. Honoured by the BFQ (and old CFQ) I/O schedulers;
mq-deadline, kyber and none ignore I/O classes (`cat /sys/block/DEV/queue/scheduler`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from llmunix.models import Priority

log = logging.getLogger("llmunix.ioprio")

CLASS_NONE, CLASS_RT, CLASS_BE, CLASS_IDLE = 0, 1, 2, 3
_CLASS_SHIFT = 13
_WHO_PROCESS, _WHO_PGRP = 1, 2
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "arm64": 30, "riscv64": 30, "i386": 289, "i686": 289,
                   "armv7l": 314, "ppc64le": 273, "ppc64": 273, "s390x": 282}
_SYS_IOPRIO_GET = {"x86_64": 252, "aarch64": 31, "arm64": 31, "riscv64": 31, "i386": 290, "i686": 290,
                   "armv7l": 315, "ppc64le": 274, "ppc64": 274, "s390x": 283}

IO_CLASS_FOR: dict[Priority, tuple[int, int]] = {
    Priority.IDLE: (CLASS_IDLE, 0),
    Priority.LOW: (CLASS_BE, 7),
    Priority.NORMAL: (CLASS_NONE, 0),
    Priority.HIGH: (CLASS_NONE, 0),
    Priority.CRITICAL: (CLASS_NONE, 0),
}
CLASS_NAMES = {CLASS_NONE: "none", CLASS_RT: "realtime", CLASS_BE: "best-effort", CLASS_IDLE: "idle"}

_libc: Any = None
_MACHINE = os.uname().machine


def _syscall() -> Any:
    """libc, for syscall() (ctypes is imported at the first use: it is not free at start-up)."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        import ctypes

        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            return None
    return _libc


def set_group_io_priority(pgid: int, priority: Priority) -> bool:
    """Give process group `pgid` the I/O class of `priority`; False if it could not be set (the
    group has gone, no permission, not Linux)."""
    ioclass, level = IO_CLASS_FOR[priority]
    number = _SYS_IOPRIO_SET.get(_MACHINE)
    libc = _syscall()
    if number is not None and libc is not None:
        if libc.syscall(number, _WHO_PGRP, pgid, (ioclass << _CLASS_SHIFT) | level) == 0:
            return True
        import ctypes

        log.debug("ioprio_set(pgrp %d): %s", pgid, os.strerror(ctypes.get_errno()))
        return False
    return _set_tree(pgid, ioclass, level)


def own_io_priority_setter(priority: Priority) -> Callable[[], None] | None:
    """A function that gives the calling process the I/O class of `priority`, safe to call in a
    child between fork and exec (a `preexec_fn`: libc is loaded here, before the fork, so the
    child imports nothing); None where the system call is not known. A short command would
    otherwise do its I/O before the group is given its class."""
    ioclass, level = IO_CLASS_FOR[priority]
    number = _SYS_IOPRIO_SET.get(_MACHINE)
    libc = _syscall()
    if number is None or libc is None:
        return None
    value = (ioclass << _CLASS_SHIFT) | level

    def set_own() -> None:
        libc.syscall(number, _WHO_PROCESS, 0, value)

    return set_own


def group_io_priority(pid: int) -> tuple[str, int] | None:
    """(class name, level) of process `pid` (its main thread), or None if unreadable."""
    number = _SYS_IOPRIO_GET.get(_MACHINE)
    libc = _syscall()
    if number is None or libc is None:
        return None
    value = libc.syscall(number, _WHO_PROCESS, pid)
    if value < 0:
        return None
    return CLASS_NAMES.get(value >> _CLASS_SHIFT, str(value >> _CLASS_SHIFT)), value & ((1 << _CLASS_SHIFT) - 1)


def _set_tree(pgid: int, ioclass: int, level: int) -> bool:
    import psutil

    classes = {CLASS_NONE: "IOPRIO_CLASS_NONE", CLASS_BE: "IOPRIO_CLASS_BE", CLASS_IDLE: "IOPRIO_CLASS_IDLE"}
    value = getattr(psutil, classes[ioclass], None)
    if value is None:
        return False
    try:
        root = psutil.Process(pgid)
        for p in (root, *root.children(recursive=True)):
            p.ionice(value, level if ioclass == CLASS_BE else None)
    except (psutil.Error, ValueError, OSError):
        return False
    return True
