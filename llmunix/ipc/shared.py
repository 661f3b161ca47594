"""Shared memory: a versioned key-value blackboard, and named memory-mapped buffers.

The blackboard holds JSON-shaped values, copied in and out (a process never holds another's
object). Every key has a version that grows by one with each write; a missing key is version 0.
`cas(key, expected_version, value)` writes only if nobody wrote since the caller read, which is
how cooperating processes update a value without a lock.

A buffer is a file in a directory of the kernel's own (in /dev/shm, memory-backed, when there is
one) mapped with `mmap`: for large data between processes, and between a process and the
subprocess it runs (hand it `buf.path`). A buffer belongs to the processes that opened it; when
the last of them ends its file is deleted and their mappings closed.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmunix.models import LlmunixError, format_pid, iso_time

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    name = str(name)
    if not _NAME.match(name):
        raise LlmunixError(f"bad {kind} name {name!r}; use letters, digits and _ . : - (up to 128)")
    return name


def copy_json(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise LlmunixError(f"shared values must be JSON-serialisable: {exc}") from None


# ---------------------------------------------------------------------------- blackboard


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """One blackboard key as `shared` shows it."""

    key: str
    value: Any
    version: int
    updated: float
    writer: int | None  # PID of the last writer (None: the shell or the kernel API)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "version": self.version, "updated": iso_time(self.updated),
                "writer": None if self.writer is None else format_pid(self.writer)}


class Blackboard:
    """Keys -> (value, version). Mutates under the kernel lock; values stored as private copies."""

    def __init__(self) -> None:
        self._entries: dict[str, SharedEntry] = {}
        self._versions: dict[str, int] = {}  # survives delete, so a deleted key's version still grows

    def get(self, key: str) -> SharedEntry | None:
        return self._entries.get(key)

    def version(self, key: str) -> int:
        entry = self._entries.get(key)
        return entry.version if entry is not None else 0

    def set(self, key: str, value: Any, writer: int | None) -> SharedEntry:
        version = self._versions.get(key, 0) + 1
        self._versions[key] = version
        entry = SharedEntry(key, value, version, time.time(), writer)
        self._entries[key] = entry
        return entry

    def delete(self, key: str) -> bool:
        return self._entries.pop(key, None) is not None

    def entries(self) -> list[SharedEntry]:
        return [self._entries[k] for k in sorted(self._entries)]


# ---------------------------------------------------------------------------- buffers


@dataclass(frozen=True, slots=True)
class BufferInfo:
    name: str
    size: int
    path: str
    users: tuple[int, ...]
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "path": self.path,
                "users": [format_pid(p) for p in self.users], "created": iso_time(self.created)}


class SharedBuffer:
    """A process's mapping of a named buffer: `buf[0:4] = b"data"`, `buf.read()`, `buf.path`
    for a subprocess. Closed when the process ends (or with `close()`)."""

    def __init__(self, name: str, path: Path, size: int) -> None:
        self.name = name
        self.path = str(path)
        self.size = size
        with open(path, "r+b") as f:
            self._map: mmap.mmap | None = mmap.mmap(f.fileno(), size)

    @property
    def mmap(self) -> mmap.mmap:
        if self._map is None:
            raise LlmunixError(f"buffer {self.name!r} is closed")
        return self._map

    def read(self, size: int | None = None, offset: int = 0) -> bytes:
        end = self.size if size is None else min(self.size, offset + size)
        return self.mmap[offset:end]

    def write(self, data: bytes, offset: int = 0) -> int:
        if offset < 0 or offset + len(data) > self.size:
            raise LlmunixError(f"buffer {self.name!r} is {self.size} bytes; {len(data)} at offset {offset} do not fit")
        self.mmap[offset:offset + len(data)] = data
        return len(data)

    def __getitem__(self, index: Any) -> Any:
        return self.mmap[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self.mmap[index] = value

    def __len__(self) -> int:
        return self.size

    def memoryview(self) -> memoryview:
        return memoryview(self.mmap)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a memoryview of it is still alive; the mapping goes with it
                return
            self._map = None

    @property
    def closed(self) -> bool:
        return self._map is None

    def __enter__(self) -> SharedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SharedBuffer {self.name!r} {self.size} bytes at {self.path}>"


class BufferRegion:
    """The kernel's record of one buffer. Mutates under the kernel lock."""

    __slots__ = ("name", "path", "size", "users", "created", "maps")

    def __init__(self, name: str, path: Path, size: int) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.users: set[int] = set()
        self.created = time.time()
        self.maps: list[tuple[int, SharedBuffer]] = []  # (pid, its mapping), closed when that pid ends

    def info(self) -> BufferInfo:
        return BufferInfo(self.name, self.size, str(self.path), tuple(sorted(self.users)), self.created)


class BufferSpace:
    """Named buffers of one kernel, in a directory of its own made on first use."""

    def __init__(self) -> None:
        self.regions: dict[str, BufferRegion] = {}
        self._dir: Path | None = None

    def directory(self) -> Path:
        if self._dir is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self._dir = Path(tempfile.mkdtemp(prefix=f"llmunix-{os.getpid()}-", dir=base))
        return self._dir

    def create(self, name: str, size: int) -> BufferRegion:
        if size < 1:
            raise LlmunixError(f"buffer {name!r} needs a size of at least 1 byte")
        path = self.directory() / name
        with open(path, "wb") as f:
            f.truncate(size)
        region = BufferRegion(name, path, size)
        self.regions[name] = region
        return region

    def free(self, region: BufferRegion) -> None:
        self.regions.pop(region.name, None)
        for _pid, buf in region.maps:
            buf.close()
        region.maps.clear()
        try:
            region.path.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        for region in list(self.regions.values()):
            self.free(region)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
