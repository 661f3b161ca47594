"""Preloading: import, at start, the modules tools import lazily (`preload = ["numpy", ...]` in
config.toml), so the first run of a tool does not pay for them.

Worker pools that run tools elsewhere (isolated worker processes, issue 17) warm the same list
in their workers: such a pool calls `register_warmer(name, warm)` when it is created, and
`warm(modules)` is called with the configured list at start (and at once, if the list was
already preloaded), returning an error text or None. Until such pools exist no warmer is
registered and only this process imports.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmunix.ipc.bus import EventBus

Warmer = Callable[[list[str]], "str | None"]

_warmers: dict[str, Warmer] = {}
_preloaded: list[str] = []
_lock = threading.Lock()


def register_warmer(name: str, warm: Warmer) -> None:
    """A worker pool that wants the preloaded modules in its workers (see the module docstring)."""
    with _lock:
        _warmers[name] = warm
        modules = list(_preloaded)
    if modules:
        warm(modules)


def preload(modules: Iterable[str], bus: EventBus | None = None) -> list[tuple[str, str | None]]:
    """Import each module (a failure is reported, not raised: the others still load), then have
    every registered warmer do the same; publish `system.preloaded` with what loaded, what
    failed and how long it took. Returns [(name, error or None)]."""
    names = [m.strip() for m in modules if m and m.strip()]
    results: list[tuple[str, str | None]] = []
    t0 = time.perf_counter()
    for name in names:
        try:
            importlib.import_module(name)
            results.append((name, None))
        except BaseException as exc:  # noqa: BLE001 - a module may raise anything at import, even SystemExit
            text = str(exc).splitlines()[0] if str(exc) else ""
            results.append((name, f"{type(exc).__name__}: {text}" if text else type(exc).__name__))
    loaded = [n for n, err in results if err is None]
    with _lock:
        _preloaded.extend(n for n in loaded if n not in _preloaded)
        warmers = dict(_warmers)
    for pool, warm in warmers.items():
        err = warm(loaded)
        if err:
            results.append((f"{pool}:{','.join(loaded)}", err))
    if bus is not None and names:
        bus.publish("system.preloaded", None, {
            "modules": loaded, "failed": {n: err for n, err in results if err is not None},
            "seconds": round(time.perf_counter() - t0, 3), "pools": sorted(warmers)})
    return results
