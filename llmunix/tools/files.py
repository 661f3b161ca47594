"""File tools confined to a workspace directory: read_file, write_file, list_files, grep.

Agents act on files through these, so every path is checked: it is taken relative to the
workspace (a leading `workspace/`, as LLMunix definitions write paths, is dropped), resolved with
symlinks followed, and refused unless it stays inside. The workspace is the `workspace`
parameter if given, else `workspace` in config.toml (default `./workspace`), relative to the
process's working directory. Agents always pass their own, so a model cannot choose another.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from llmunix.config import active_config
from llmunix.models import ToolError
from llmunix.process import ProcessContext
from llmunix.tools.registry import tool

READ_LIMIT = 1_000_000  # bytes read_file returns at most
LIST_LIMIT = 1000  # paths list_files returns at most
CHECK_EVERY = 100  # files between control points while walking


def workspace_root(ctx: ProcessContext | None, workspace: str = "") -> Path:
    """The workspace directory a file tool works in (created if missing)."""
    chosen = workspace or active_config().workspace
    base = Path(ctx.cwd) if ctx is not None and ctx.cwd else Path.cwd()
    root = (base / Path(chosen).expanduser()).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolError(f"cannot use {root} as the workspace: {exc.strerror}") from None
    return root


def confine(root: Path, path: str) -> Path:
    """`path` inside the workspace `root`, or ToolError saying it is outside."""
    if not str(path).strip():
        raise ToolError("empty path")
    p = Path(str(path).strip()).expanduser()
    if not p.is_absolute():
        parts = p.parts
        if len(parts) > 1 and parts[0] == root.name and not (root / parts[0]).exists():
            p = Path(*parts[1:])
        p = root / p
    resolved = p.resolve()
    if resolved != root and root not in resolved.parents:
        raise ToolError(f"path {path!r} is outside the workspace {root}; file tools only reach files inside it")
    return resolved


def relative(root: Path, path: Path) -> str:
    return "." if path == root else path.relative_to(root).as_posix()


@tool(idempotent=True)
def read_file(ctx: ProcessContext, path: str, workspace: str = "") -> str:
    """Read a text file from the workspace.

    Args:
        path: the file, relative to the workspace
        workspace: the workspace directory (default: `workspace` in config.toml)
    """
    root = workspace_root(ctx, workspace)
    target = confine(root, path)
    if target.is_dir():
        raise ToolError(f"{relative(root, target)} is a directory; list_files lists it")
    try:
        with open(target, "rb") as f:
            data = f.read(READ_LIMIT + 1)
    except FileNotFoundError:
        raise ToolError(f"no such file: {path} (in workspace {root})") from None
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror}") from None
    if b"\0" in data[:8192]:
        raise ToolError(f"{path} is a binary file; read_file reads text")
    text = data[:READ_LIMIT].decode("utf-8", "replace")
    if len(data) > READ_LIMIT:
        ctx.log(f"{path}: read the first {READ_LIMIT} bytes only")
    ctx.check()
    return text


@tool
def write_file(ctx: ProcessContext, path: str, content: str, append: bool = False,
               workspace: str = "") -> dict[str, Any]:
    """Write (or append) text to a file in the workspace, creating directories as needed.

    Args:
        path: the file, relative to the workspace
        content: the text to write
        append: add to the end instead of replacing the file
        workspace: the workspace directory (default: `workspace` in config.toml)
    """
    root = workspace_root(ctx, workspace)
    target = confine(root, path)
    if target.is_dir():
        raise ToolError(f"{relative(root, target)} is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if append:
            with open(target, "a", encoding="utf-8") as f:
                f.write(content)
        else:  # replace atomically: a reader never sees half a file
            tmp = target.with_name(f".{target.name}.llmunix-tmp")
            tmp.write_text(content, encoding="utf-8")
            os.replace(tmp, target)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror}") from None
    ctx.log(f"wrote {len(content.encode())} bytes to {relative(root, target)}")
    return {"path": relative(root, target), "bytes": len(content.encode())}


def _walk(ctx: ProcessContext, root: Path, start: Path, pattern: str, recursive: bool) -> list[Path]:
    files = []
    seen = 0
    candidates = start.rglob(pattern) if recursive else start.glob(pattern)
    for p in candidates:
        seen += 1
        if seen % CHECK_EVERY == 0:
            ctx.check()
        if any(part.startswith(".") for part in p.relative_to(start).parts):
            continue  # hidden files and our own temporary files
        try:
            resolved = p.resolve()
        except OSError:
            continue
        if (resolved == root or root in resolved.parents) and resolved.is_file():
            files.append(p)
    return sorted(files)


@tool(idempotent=True)
def list_files(ctx: ProcessContext, path: str = ".", pattern: str = "*", recursive: bool = True,
               workspace: str = "") -> list[str]:
    """List files in the workspace (paths relative to it), sorted.

    Args:
        path: the directory to list, relative to the workspace
        pattern: a glob the file names must match, e.g. *.md
        recursive: include subdirectories
        workspace: the workspace directory (default: `workspace` in config.toml)
    """
    root = workspace_root(ctx, workspace)
    start = confine(root, path)
    if not start.is_dir():
        raise ToolError(f"no such directory: {path} (in workspace {root})")
    files = _walk(ctx, root, start, pattern or "*", recursive)
    if len(files) > LIST_LIMIT:
        ctx.log(f"{len(files)} files; listing the first {LIST_LIMIT}")
    return [relative(root, f) for f in files[:LIST_LIMIT]]


@tool(idempotent=True)
def grep(ctx: ProcessContext, pattern: str, path: str = ".", ignore_case: bool = True,
         max_matches: Annotated[int, Field(ge=1, le=1_000_000)] = 200,
         workspace: str = "") -> list[dict[str, Any]]:
    """Search text files in the workspace for a regular expression; each match is {file, line, text}.

    Args:
        pattern: a regular expression (Python syntax), e.g. schedul(er|ing)|priority
        path: a file or directory, relative to the workspace
        ignore_case: match regardless of case
        max_matches: stop after this many matching lines
        workspace: the workspace directory (default: `workspace` in config.toml)
    """
    try:
        rx = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ToolError(f"bad pattern {pattern!r}: {exc}") from None
    root = workspace_root(ctx, workspace)
    start = confine(root, path)
    if start.is_file():
        files = [start]
    elif start.is_dir():
        files = _walk(ctx, root, start, "*", True)
    else:
        raise ToolError(f"no such file or directory: {path} (in workspace {root})")
    matches: list[dict[str, Any]] = []
    for n, f in enumerate(files, 1):
        ctx.progress(n, len(files), f"searching {relative(root, f)}")
        try:
            with open(f, "rb") as fh:
                head = fh.read(8192)
                if b"\0" in head:
                    continue
                text = (head + fh.read(READ_LIMIT)).decode("utf-8", "replace")
        except OSError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if rx.search(line):
                matches.append({"file": relative(root, f), "line": lineno, "text": line.strip()[:300]})
                if len(matches) >= max_matches:
                    return matches
    return matches
