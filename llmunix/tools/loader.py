"""Find users' tools: Python files and LLMunix markdown tools in tool directories, named modules,
and entry points.

Each source is imported on its own; `@tool` functions in it register themselves. A source that
fails to import is reported with its error and the others still load. Markdown tools
(`tools/*.md`, see tools/markdown.py) are registered too; agent definitions live in `agents/`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
    name = f"llmunix_user_tools.{path.parent.name}.{path.stem}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            return LoadError(str(path), "not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - a user's file may raise anything, even SystemExit
        sys.modules.pop(name, None)
        return LoadError(str(path), _error_line(exc))
    return None


def load_markdown(directory: Path) -> list[LoadError]:
    """Register the markdown tool definitions in `directory` (shell tools run only when the
    active configuration's `allow_shell_tools` is set, checked at run time)."""
    from llmunix.config import active_config
    from llmunix.tools.markdown import TOOL, DefinitionError, discover, markdown_tool
    from llmunix.tools.registry import REGISTRY

    found = discover([(directory, TOOL)])
    errors = list(found.errors)
    for d in found.of_kind(TOOL):
        try:
            REGISTRY.register(markdown_tool(d, allow_shell=lambda: active_config().allow_shell_tools))
        except DefinitionError as exc:
            errors.append(exc)
    return [LoadError(f"{e.path}:{e.line}" if e.line else e.path, e.problem) for e in errors]


def load_directory(directory: Path) -> list[LoadError]:
    if not directory.is_dir():
        return []
    errors = load_markdown(directory)
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        err = load_file(path)
        if err:
            errors.append(err)
    return errors


def load_module(name: str) -> LoadError | None:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001
        return LoadError(f"module {name}", _error_line(exc))
    return None


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
    """Load every source; return the errors (empty when all loaded)."""
    errors: list[LoadError] = []
    seen: set[Path] = set()
    for d in directories:
        d = d.resolve()
        if d in seen:
            continue
        seen.add(d)
        err = refused(d)
        errors.extend([err] if err else load_directory(d))
    for m in modules:
        err = refused(m) or load_module(m)
        if err:
            errors.append(err)
    errors.extend(load_entry_points())
    return errors
