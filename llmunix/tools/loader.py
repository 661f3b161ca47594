"""Find users' tools: Python files and LLMunix markdown tools in tool directories, named modules,
and entry points; and load them again without a restart (`tools reload`).

Each source is imported on its own; `@tool` functions in it register themselves, held back
until the whole source has loaded (`ToolRegistry.staged`), so a source that fails is reported
with its error, registers nothing, and the others still load. Markdown tools (`tools/*.md`, see
tools/markdown.py) are registered too; agent definitions live in `agents/`.

Reload (`reload_user_tools`): the directories and modules loaded at start (`SOURCES`) are read
again. A Python file whose content changed, or that is new, is executed as a *new* module object
and its tools replace the old ones; one that fails is refused and its old module and tools stay.
A file that is gone, or no longer defines a tool, takes that tool away (a built-in it had
overridden comes back). Unchanged files are not re-run. Named modules are re-run each time (their
own file; modules they import are not re-imported). Processes that are running keep the `Tool`
they started with, and so the old code; new processes get the new one. Entry points load once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from llmunix.home import unsafe_reason

ENTRY_POINT_GROUP = "llmunix.tools"


@dataclass(frozen=True)
class LoadError:
    source: str
    error: str

    def __str__(self) -> str:
        return f"{self.source}: {self.error}"


def _error_line(exc: BaseException) -> str:
    # The line in the user's code: not one of the import machinery's (a missing module has none),
    # and a SyntaxError names its own file and line already.
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and "importlib" not in Path(f.filename).parts
              and f.filename != __file__]
    where = f" (line {frames[-1].lineno})" if frames and not isinstance(exc, SyntaxError) else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def load_file(path: Path) -> LoadError | None:
    """Run a tool file as module `llmunix_user_tools.DIR.STEM` (a new module object each time);
    on failure the module it replaced, if any, is put back."""
    return load_file_as(module_name_for(path), path)


def load_file_as(name: str, path: str | Path) -> LoadError | None:
    """Run the file at `path` as module `name` (a new module object; a Dask worker loading a
    tool file, or one llmunix reloaded)."""
    return _exec_module(name, lambda: importlib.util.spec_from_file_location(name, path), str(path))


def module_name_for(path: Path) -> str:
    return f"llmunix_user_tools.{path.parent.name}.{path.stem}"


def _exec_module(name: str, find_spec: Callable[[], Any], label: str) -> LoadError | None:
    old = sys.modules.get(name)
    try:
        spec = find_spec()
        if spec is None or spec.loader is None:
            return LoadError(label, "not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        origin = Path(spec.origin) if spec.origin else None
        if origin is not None and origin.suffix == ".py" and origin.is_file():
            # Compiled from the source read now, never from __pycache__: an edit within the same
            # second that keeps the file's size would pass the cache's check and run the old code.
            source = origin.read_bytes()
            exec(compile(source, str(origin), "exec", dont_inherit=True), module.__dict__)  # noqa: S102
            module.__llmunix_digest__ = _hash(source)  # type: ignore[attr-defined]
        else:
            spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - a user's file may raise anything, even SystemExit
        if old is not None:
            sys.modules[name] = old
        else:
            sys.modules.pop(name, None)
        return LoadError(label, _error_line(exc))
    return None


def load_markdown(directory: Path, skip: Callable[[Path], bool] = lambda _p: False
                  ) -> tuple[list[LoadError], dict[Path, list[str]]]:
    """Register the markdown tool definitions in `directory` (shell tools run only when the
    active configuration's `allow_shell_tools` is set, checked at run time), but not those of
    files `skip` says to leave. Returns the errors and the tools each file registered."""
    from llmunix.config import active_config
    from llmunix.tools.markdown import TOOL, DefinitionError, discover, markdown_tool
    from llmunix.tools.registry import REGISTRY

    found = discover([(directory, TOOL)])
    errors = list(found.errors)
    made: dict[Path, list[str]] = {}
    for d in found.of_kind(TOOL):
        if skip(Path(d.path)):
            continue
        try:
            made.setdefault(Path(d.path), []).append(
                REGISTRY.register(markdown_tool(d, allow_shell=lambda: active_config().allow_shell_tools)).name)
        except DefinitionError as exc:
            errors.append(exc)
    return [LoadError(f"{e.path}:{e.line}" if e.line else str(e.path), e.problem) for e in errors], made


def load_directory(directory: Path) -> list[LoadError]:
    if not directory.is_dir():
        return []
    errors, made = load_markdown(directory)
    for path, names in made.items():
        SOURCES.loaded[str(path)] = Loaded(str(path), _digest(path), tuple(names), markdown=True)
    for path in _python_files(directory):
        err = _load_recorded(path)
        if err:
            errors.append(err)
    return errors


def _python_files(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")]


def _load_recorded(path: Path) -> LoadError | None:
    """Load a tool file, its tools held back until it has loaded; record what it registered."""
    from llmunix.tools.registry import REGISTRY

    with REGISTRY.staged() as stage:
        err = load_file(path)
        stage.keep = err is None
    if err is None:
        digest = module_digest(sys.modules.get(module_name_for(path)))  # of what ran, not of the file now
        SOURCES.loaded[str(path)] = Loaded(str(path), digest, tuple(t.name for t in stage.registered),
                                           source=stage.registered[0].source if stage.registered else "")
    return err


def load_module(name: str) -> LoadError | None:
    """Import module `name` for its tools (a new module object when it was imported before)."""
    from llmunix.tools.registry import REGISTRY

    label = f"module {name}"
    with REGISTRY.staged() as stage:
        if name in sys.modules:
            err = _exec_module(name, lambda: importlib.util.find_spec(name), label)
        else:
            try:
                importlib.import_module(name)
                err = None
            except BaseException as exc:  # noqa: BLE001
                err = LoadError(label, _error_line(exc))
        stage.keep = err is None
    if err is None:
        SOURCES.loaded[label] = Loaded(label, None, tuple(t.name for t in stage.registered),
                                       source=stage.registered[0].source if stage.registered else "")
    return err


def load_entry_points() -> list[LoadError]:
    errors = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except BaseException as exc:  # noqa: BLE001
            errors.append(LoadError(f"entry point {ep.name}", _error_line(exc)))
    return errors


def refused(source: Path | str) -> LoadError | None:
    """A tool directory (path) or module (dotted name) llmunix must not import, because someone
    other than you (or root) owns it or can change it or a tool file in it; else None. Like ssh
    with keys: the source is not loaded, and the error says why and how to fix it."""
    if isinstance(source, Path):
        label, paths = str(source), [source]
        if source.is_dir():
            paths += sorted(p for p in source.iterdir() if p.suffix in (".py", ".md"))
        checks = [(p, False) for p in paths]
    else:
        if source in sys.modules:
            return None
        label, checks = f"module {source}", _module_paths(source)
    for path, sticky_ok in checks:
        reason = unsafe_reason(path, sticky_ok=sticky_ok)
        if reason:
            return LoadError(label, f"refused: {reason}")
    return None


def _module_paths(name: str) -> list[tuple[Path, bool]]:
    """The files and directories importing `name` would run code from, found without importing
    anything (a plain module's directory may be sticky: only that file is read from it)."""
    parts = name.split(".")
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0])
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin or not Path(spec.origin).exists():
        return []
    dirs = [Path(d) for d in (spec.submodule_search_locations or [])]
    out = [(Path(spec.origin), False), (Path(spec.origin).parent, not dirs)]
    for part in parts[1:]:
        inner = []
        for d in dirs:
            if (d / part).is_dir():
                inner.append(d / part)
                out += [(d / part, False), (d / part / "__init__.py", False)]
            else:
                out.append((d / f"{part}.py", False))
        dirs = inner
    return out


def load_user_tools(directories: Iterable[Path], modules: Iterable[str] = ()) -> list[LoadError]:
    """Load every source; return the errors (empty when all loaded). The sources are recorded
    (`SOURCES`) for `reload_user_tools`."""
    errors: list[LoadError] = []
    seen: set[Path] = set()
    with SOURCES.lock:
        for d in directories:
            d = d.resolve()
            if d in seen:
                continue
            seen.add(d)
            SOURCES.directories.append(d)
            err = refused(d)
            errors.extend([err] if err else load_directory(d))
        for m in modules:
            SOURCES.modules.append(m)
            err = refused(m) or load_module(m)
            if err:
                errors.append(err)
        errors.extend(load_entry_points())
    return errors


# ---------------------------------------------------------------------------- reload


@dataclass(frozen=True)
class Loaded:
    """One source as last loaded: a tool file, a markdown tool file or a module (`label`)."""

    label: str
    digest: str | None  # its content's hash (files): unchanged files are not run again
    tools: tuple[str, ...]  # the tools it registered
    source: str = ""  # what those tools say their source is (`Tool.source`)
    markdown: bool = False


@dataclass
class ToolSources:
    """What `load_user_tools` loaded, so that `reload_user_tools` can look again."""

    directories: list[Path] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    loaded: dict[str, Loaded] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


SOURCES = ToolSources()


@dataclass(frozen=True)
class SourceReload:
    """What `tools reload` did with one source."""

    label: str
    status: str  # reloaded, new, gone, refused (kept the old), unchanged
    added: tuple[str, ...] = ()
    reloaded: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # refused: the old tools it still has
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.label, "status": self.status, "added": list(self.added),
                "reloaded": list(self.reloaded), "removed": list(self.removed), "kept": list(self.kept),
                "error": self.error or None}


@dataclass(frozen=True)
class ReloadReport:
    """`tools reload`: each source that changed (or failed), how many did not, and the running
    processes that keep the code they started with."""

    sources: tuple[SourceReload, ...]
    unchanged: int
    seconds: float
    running_old: tuple[tuple[int, str], ...] = ()  # (pid, tool) of live processes on an older version

    @property
    def refused(self) -> tuple[SourceReload, ...]:
        return tuple(s for s in self.sources if s.status == "refused")

    def to_dict(self) -> dict[str, Any]:
        return {"sources": [s.to_dict() for s in self.sources], "unchanged": self.unchanged,
                "seconds": round(self.seconds, 4),
                "running_old_code": [{"pid": f"{pid:03d}", "tool": name} for pid, name in self.running_old]}


def reload_user_tools() -> ReloadReport:
    """Load the recorded sources again (see the module docstring)."""
    from llmunix.tools.registry import REGISTRY

    t0 = time.perf_counter()
    out: list[SourceReload] = []
    unchanged = 0
    with SOURCES.lock:
        current: set[str] = set()
        for d in SOURCES.directories:
            err = refused(d)
            if err is not None:
                out.append(SourceReload(str(d), "refused", error=err.error))
                current.update(label for label in SOURCES.loaded if Path(label).parent == d)  # keep them all
                continue
            if not d.is_dir():
                continue
            files = _python_files(d)
            mds = [p for p in sorted(d.glob("*.md"))]
            current.update(str(p) for p in files + mds)
            for path in files:
                result = _reload_file(path)
                if result is None:
                    unchanged += 1
                else:
                    out.append(result)
            unchanged += _reload_markdown(d, out)
        for m in SOURCES.modules:
            label = f"module {m}"
            current.add(label)
            before = SOURCES.loaded.get(label)
            err = refused(m) or load_module(m)
            out.append(_compare(label, before, SOURCES.loaded.get(label) if err is None else None, err))
        for label, before in list(SOURCES.loaded.items()):
            if label not in current:  # its file is gone
                del SOURCES.loaded[label]
                removed = tuple(n for n in before.tools if REGISTRY.remove(n, before.source or label))
                if not before.markdown:
                    sys.modules.pop(module_name_for(Path(label)), None)
                out.append(SourceReload(label, "gone", removed=removed))
    return ReloadReport(tuple(out), unchanged, time.perf_counter() - t0)


def _reload_file(path: Path) -> SourceReload | None:
    label = str(path)
    before = SOURCES.loaded.get(label)
    if before is not None and before.digest == _digest(path):
        return None
    err = _load_recorded(path)
    return _compare(label, before, SOURCES.loaded.get(label) if err is None else None, err)


def _reload_markdown(directory: Path, out: list[SourceReload]) -> int:
    """Register the markdown tools of `directory` whose files changed or are new; returns how
    many were unchanged. A file that no longer parses keeps its old tool."""
    def unchanged(path: Path) -> bool:
        before = SOURCES.loaded.get(str(path))
        return before is not None and before.digest == _digest(path)

    errors, made = load_markdown(directory, skip=unchanged)
    same = sum(1 for p in directory.glob("*.md") if unchanged(p))
    for path, names in made.items():
        before = SOURCES.loaded.get(str(path))
        after = SOURCES.loaded[str(path)] = Loaded(str(path), _digest(path), tuple(names), str(path), markdown=True)
        out.append(_compare(str(path), before, after, None))
    for err in errors:
        label = err.source.rsplit(":", 1)[0] if err.source.rsplit(":", 1)[-1].isdigit() else err.source
        before = SOURCES.loaded.get(label)
        out.append(SourceReload(err.source, "refused", kept=before.tools if before else (), error=err.error))
    return same


def _compare(label: str, before: Loaded | None, after: Loaded | None, err: LoadError | None) -> SourceReload:
    """What changed between two loads of a source; with `err`, it was refused and `before` stays."""
    from llmunix.tools.registry import REGISTRY

    if err is not None or after is None:
        return SourceReload(label, "refused", kept=before.tools if before else (), error=err.error if err else "")
    if before is None:
        return SourceReload(label, "new", added=after.tools)
    removed = tuple(n for n in before.tools if n not in after.tools and REGISTRY.remove(n, before.source or label))
    return SourceReload(label, "reloaded", added=tuple(n for n in after.tools if n not in before.tools),
                        reloaded=tuple(n for n in after.tools if n in before.tools), removed=removed)


def _digest(path: Path) -> str | None:
    try:
        return _hash(path.read_bytes())
    except OSError:
        return None


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def module_digest(module: ModuleType | None) -> str | None:
    """The hash of a module's file as llmunix loaded it (None: not loaded by llmunix)."""
    return getattr(module, "__llmunix_digest__", None)
