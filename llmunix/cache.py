"""Step caching: a process may reuse a stored result instead of running its tool again.

A run asks for it (`run --cache [TTL]`, a workflow step's `cache: true` and `cache_ttl: 1d`,
`Kernel.spawn(cache=CachePolicy(...))`). Its *key* is a SHA-256 over

* the tool's name and version: `@tool(version="2")` when given, else a hash of the file that
  defines it (the Python module, or the markdown definition), so editing the tool invalidates
  its results;
* its parameters (canonical JSON: key order does not matter);
* the content of its inputs: the files and directories named by the parameters the tool
  declares it reads (`touches=("paths:PARAM",)`), each file's bytes hashed (a directory: every
  file under it, by relative name). A tool that declares nothing is keyed on its parameters
  alone; one whose inputs cannot be read, or are larger than MAX_INPUT_FILES / MAX_INPUT_BYTES,
  or whose parameters are not JSON, runs uncached (its history says why).

If a result is stored under the key and is younger than the TTL (none: any age), the process is
still made — same tool, parameters, parent, PID of its own — but it ends Completed at once with
the stored output (no slot, no thread: `ProcessTable.spawn_locked(reuse=...)`), its history
saying `cached: from 042 (3.2s old)` and a `process.cached` event naming the source; so
dependents, `ps`, `wait` and the store see a process like any other. It is not a run of its
tool: it counts in no performance figure or expected duration. Otherwise the process runs, and
when it completes its output is stored under the key (when its output is JSON data that reads
back the same; else its history says it was not stored). `refresh` (`--no-cache`) skips the
lookup and stores the new result. With `--after`, a process that has to wait runs (and stores).

Storage: the store's `cache` table (schema 7: key, tool, version, source pid, created, output,
hits), aged out with everything else by retention (`gc`); the newest MEMORY results of this
session are also kept here, so a result is found before the store has committed it. Without a
store those are the whole cache.

A component of the kernel (`kernel.cache`), through the process table's hooks (registered at
the first run that asks for the cache): `on_spawn` notes what each process is to store or has
reused; `on_end` stores a completed result, counts a hit. State (table lock): `_pending` (pid ->
key to store under), `_reused` (pid -> (source, key)), `_recent` (key -> Stored).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.lazy import lazy_module
from llmunix.lifecycle import Hooks
from llmunix.models import MAX_DURATION, LlmunixError, Outcome, format_pid, short_duration
from llmunix.store.sqlite import json_text

hashlib = lazy_module("hashlib")  # (2 ms a start-up need not pay: no run asked for a cache yet)

if TYPE_CHECKING:
    from llmunix.lifecycle import ProcessTable
    from llmunix.process import Process
    from llmunix.store import Store
    from llmunix.tools.registry import Tool

MEMORY = 1000  # results of this session kept in memory (the whole cache without a store)
MAX_INPUT_FILES = 10_000  # files hashed for one run's inputs before it is refused caching
MAX_INPUT_BYTES = 1 << 30  # bytes hashed for one run's inputs (1 GiB)
KEEP_REUSED = 10_000  # PIDs of this session's cached processes remembered (then the store answers)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What a run asks of the cache: reuse a result at most `ttl` seconds old (None: any age),
    or with `refresh` reuse nothing and store its own result."""

    ttl: float | None = None
    refresh: bool = False

    def __post_init__(self) -> None:
        if self.ttl is not None and not (0 < self.ttl <= MAX_DURATION):
            raise LlmunixError(f"cache TTL must be a positive number of seconds, at most 100 years, not {self.ttl!r}")

    @classmethod
    def of(cls, value: CachePolicy | bool | float | None) -> CachePolicy | None:
        """`True` (any age), a TTL in seconds, a policy, or None/False (no caching)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, CachePolicy):
            return value
        if isinstance(value, int | float):
            return cls(ttl=float(value))
        raise LlmunixError(f"cache must be True, a TTL in seconds or a CachePolicy, not {value!r}")


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored result: the process that produced it, when, and its output."""

    key: str
    pid: int
    created: float
    output: Any


class Uncacheable(Exception):  # noqa: N818 - a reason, not a failure: the run goes on uncached
    """Why a run cannot be keyed (its inputs cannot be read, its parameters are not JSON)."""


class StepCache(Hooks):
    """See the module docstring."""

    def __init__(self, table: ProcessTable, store: Store | None) -> None:
        self.table = table
        self.store = store
        self._active = False  # registered with the table (at the first run that asks for the cache)
        self._pending: dict[int, tuple[str, str, str]] = {}  # pid -> (key, tool, version)
        self._reused: OrderedDict[int, tuple[int, str]] = OrderedDict()  # pid -> (source pid, key)
        self._recent: OrderedDict[str, Stored] = OrderedDict()
        self._versions: dict[tuple[str, int, int], str] = {}  # (file, mtime_ns, size) -> its hash

    # ------------------------------------------------------------------ before a spawn (no lock)

    def prepare(self, t: Tool, params: Mapping[str, Any], policy: CachePolicy, cwd: str, *, waits: bool
                ) -> tuple[tuple[Any, str, dict[str, Any]] | None, dict[str, Any]]:
        """For a run of `t` with `params` asking `policy`: (what `spawn_locked` reuses, or None;
        the spawn option for `on_spawn`). `waits`: it has dependencies, so it will run. Call
        without the lock: it hashes files and may read the store."""
        if not self._active:  # until a run asks for the cache, no process pays for its hooks
            with self.table.lock:  # (hook lists are read under it)
                if not self._active:
                    self.table.register(self)
                    self._active = True
        try:
            key, version = self.key(t, params, cwd)
        except Uncacheable as exc:
            return None, {"uncached": str(exc)}
        hit = None if policy.refresh or waits else self.lookup(key, policy.ttl)
        if hit is None:
            return None, {"key": key, "tool": t.name, "version": version}
        age = max(0.0, time.time() - hit.created)
        why = f"from {format_pid(hit.pid)} (stored {'just now' if age < 1 else short_duration(age) + ' ago'})"
        return (hit.output, why, {"source": hit.pid, "key": key[:16], "age": round(age, 3)}), \
            {"hit": hit.pid, "key": key}

    def key(self, t: Tool, params: Mapping[str, Any], cwd: str) -> tuple[str, str]:
        """(the cache key of a run of `t` with `params` from `cwd`, the tool's version)."""
        version = self.version(t)
        try:
            canonical = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise Uncacheable(f"its parameters are not JSON data ({exc})") from None
        inputs = {}
        for entry in t.touches or ():
            kind, _, name = entry.partition(":")
            if kind == "paths" and params.get(name):
                value = params[name]
                paths = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
                inputs[name] = [_content_hash(Path(cwd, str(p))) for p in paths]
        doc = json.dumps({"tool": t.name, "version": version, "params": canonical, "inputs": inputs},
                         sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode("utf-8", "surrogateescape")).hexdigest(), version

    def version(self, t: Tool) -> str:
        """`t`'s version: its declared one, else a hash of the file that defines it."""
        if t.version:
            return f"v{t.version}"
        path: str | None = t.source if t.source not in ("builtin", "python") and os.path.isfile(t.source) else None
        if path is None:
            try:
                path = inspect.getsourcefile(t.func)
            except TypeError:
                path = None
        if path is None or not os.path.isfile(path):
            return f"code:{getattr(t.func, '__module__', '?')}.{getattr(t.func, '__qualname__', t.name)}"
        st = os.stat(path)
        mark = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        found = self._versions.get(mark)
        if found is None:
            with open(path, "rb") as f:
                found = self._versions[mark] = "sha256:" + hashlib.sha256(f.read()).hexdigest()[:16]
        return found

    def lookup(self, key: str, ttl: float | None) -> Stored | None:
        """The result stored under `key`, if it is younger than `ttl` seconds (None: any age)."""
        with self.table.lock:
            hit = self._recent.get(key)
        if hit is None and self.store is not None:
            rows = self.store.query("SELECT pid, created, output FROM cache WHERE key=?", (key,))
            if rows:
                r = rows[0]
                hit = Stored(key, int(r["pid"]), float(r["created"]), json.loads(r["output"]))
        if hit is None or (ttl is not None and time.time() - hit.created > ttl):
            return None
        return hit

    # ------------------------------------------------------------------ hooks (lock held)

    def on_spawn(self, proc: Process, options: Mapping[str, Any]) -> None:
        c = options.get("cache")
        if c is None:
            return
        if "uncached" in c:
            proc.note("not cached", c["uncached"])
        elif "hit" in c:
            self._reused[proc.pid] = (c["hit"], c["key"])
            while len(self._reused) > KEEP_REUSED:
                self._reused.popitem(last=False)
        else:
            self._pending[proc.pid] = (c["key"], c["tool"], c["version"])

    def on_end(self, proc: Process) -> None:
        reused = self._reused.get(proc.pid)
        if reused is not None:
            if proc.state == Outcome.COMPLETED and proc.started is None:  # it did reuse the result
                if self.store is not None:
                    self.store.execute("UPDATE cache SET hits=hits+1, last_hit=? WHERE key=?", (time.time(), reused[1]))
            else:  # it failed or was stopped before it could (a stopping parent, needs never met)
                del self._reused[proc.pid]
            return
        pending = self._pending.pop(proc.pid, None)
        if pending is None or proc.state != Outcome.COMPLETED:
            return
        key, tool, version = pending
        text = json_text(proc.output)
        try:
            faithful = json.loads(text) == proc.output
        except ValueError:
            faithful = False
        if not faithful:
            proc.note("not cached", "its output is not JSON data that reads back the same")
            return
        stored = Stored(key, proc.pid, time.time(), proc.output)
        self._recent[key] = stored
        self._recent.move_to_end(key)
        while len(self._recent) > MEMORY:
            self._recent.popitem(last=False)
        if self.store is not None:
            self.store.execute("INSERT OR REPLACE INTO cache (key, tool, version, pid, created, output, hits) "
                               "VALUES (?,?,?,?,?,?,0)", (key, tool, version, proc.pid, stored.created, text))

    # ------------------------------------------------------------------ queries

    def cached_from(self, pid: int) -> int | None:
        """The process whose stored result process `pid` reused, or None if it ran."""
        with self.table.lock:
            reused = self._reused.get(pid)
        if reused is not None:
            return reused[0]
        if self.store is None:
            return None
        rows = self.store.query("SELECT cached_from FROM processes WHERE pid=?", (pid,))
        return rows[0][0] if rows and rows[0][0] is not None else None


def _content_hash(path: Path) -> str:
    """A file's (or a directory tree's) content as a hash; "missing" for nothing there."""
    h = hashlib.sha256()
    files = 0
    size = 0
    try:
        if path.is_dir():
            items = sorted(p for p in path.rglob("*") if p.is_file())
            if len(items) > MAX_INPUT_FILES:
                raise Uncacheable(f"{path} holds over {MAX_INPUT_FILES:,} files")
        elif path.is_file():
            items = [path]
        else:
            return "missing"
        for item in items:
            files += 1
            h.update(str(item.relative_to(path) if item != path else "").encode("utf-8", "surrogateescape") + b"\0")
            with open(item, "rb") as f:
                while chunk := f.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_INPUT_BYTES:
                        raise Uncacheable(f"its inputs under {path} are over {MAX_INPUT_BYTES >> 30} GiB")
                    h.update(chunk)
            h.update(b"\0")
    except OSError as exc:
        raise Uncacheable(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None
    return f"{files}:{h.hexdigest()}"
