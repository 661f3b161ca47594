"""File tools confined to a workspace directory: read_file, write_file, edit_file, list_files,
grep; and the confinement every tool an agent may be granted uses (`Confinement`).

Agents act on files through these, so every path is checked: it is taken relative to the
workspace (a leading `workspace/`, as LLMunix definitions write paths, is dropped), resolved with
symlinks followed, and refused unless it stays inside. The workspace is the `workspace`
parameter if given, else `workspace` in config.toml (default `./workspace`), relative to the
process's working directory. Agents always pass their own, so a model cannot choose another.

The check is not only made once on the name: files are opened from the workspace one directory
at a time without following symlinks (`open_dir`), so a directory swapped for a link after the
check fails instead of leading out; files are replaced through a temporary file made with
O_CREAT|O_EXCL|O_NOFOLLOW (mode 0600) beside them and renamed over them, so a link planted
where the temporary file or the file goes is never written through (`write_atomic`).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field

from llmunix.config import active_config
from llmunix.models import EXIT_REFUSED, ToolError
from llmunix.process import ProcessContext
from llmunix.tools.registry import tool

READ_LIMIT = 1_000_000  # bytes read_file returns at most
LIST_LIMIT = 1000  # paths list_files returns at most
CHECK_EVERY = 100  # files between control points while walking


class Refused(ToolError):
    """A path or URL outside what the tool may touch: the caller's (or a model's) mistake, not a
    failure of the tool (exit status 77; circuit breakers do not count it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_REFUSED)


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
        raise Refused(f"path {path!r} is outside the workspace {root}; file tools only reach files inside it")
    return resolved


def relative(root: Path, path: Path) -> str:
    return "." if path == root else path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------------- confinement


@dataclass(frozen=True)
class Confinement:
    """What a tool run under an agent may touch: files inside `root` (the agent's workspace)
    and URLs that `allowed_urls` admits (the `agent_allowed_urls` setting); `file://` never.

    A tool that declares `touches` (see registry.py) and takes `workspace` gets one from
    `Confinement.of(ctx, workspace)` — None when `workspace` is empty, i.e. a person ran it and
    it may reach what that person can — and passes every path and URL through `path` and `url`
    before touching it."""

    root: Path
    allowed_urls: tuple[str, ...] = ()

    @classmethod
    def of(cls, ctx: ProcessContext | None, workspace: str) -> Confinement | None:
        if not workspace:
            return None
        return cls(workspace_root(ctx, workspace), tuple(active_config().agent_allowed_urls))

    def path(self, name: str | os.PathLike[str]) -> Path:
        """`name` (relative to the workspace) resolved inside it, or ToolError."""
        return confine(self.root, str(name))

    def url(self, url: str) -> str:
        """`url` if the allow list admits it, else ToolError saying how to allow it."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            raise Refused(f"{url}: file:// URLs are refused under an agent; name a file in the workspace "
                            f"{self.root} by its path instead")
        if scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"{url}: only http and https URLs can be allowed for agents")
        if not any(url_allowed(pattern, url) for pattern in self.allowed_urls):
            allowed = ", ".join(self.allowed_urls) or "none"
            raise Refused(f"{url}: not in agent_allowed_urls (allowed: {allowed}); add e.g. "
                            f"\"{scheme}://{parts.hostname}\" to agent_allowed_urls in config.toml")
        return url


def url_allowed(pattern: str, url: str) -> bool:
    """Whether an `agent_allowed_urls` entry admits `url`. An entry is SCHEME://HOST[:PORT]:
    HOST may be `*` (any host) or start with `*.` (any subdomain); without a port, any port."""
    want, got = urlsplit(pattern.strip()), urlsplit(url)
    if not want.scheme or want.scheme.lower() != got.scheme.lower() or got.hostname is None:
        return False
    if not fnmatch.fnmatchcase(got.hostname, want.hostname or "*"):  # both lower-cased by urlsplit
        return False
    try:
        port = want.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(got.scheme.lower())
    return port is None or port == (got.port or default)


def open_dir(root: Path, directory: Path, *, create: bool = False) -> int:
    """A descriptor of `directory` (resolved, inside `root`, as `confine` returns it), reached
    from `root` one component at a time without following a symlink; with `create`, missing
    directories are made. The caller closes it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in directory.relative_to(root).parts:
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"{directory}: {part} is not a directory inside the workspace "
                                    "(a symlink put there?); refused") from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root: Path, target: Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor of `target` inside `root`, reached without following any symlink."""
    dfd = open_dir(root, target.parent)
    try:
        return os.open(target.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{target} is a symlink; refused") from None
        raise
    finally:
        os.close(dfd)


def write_atomic(root: Path, target: Path, data: bytes, *, append: bool = False) -> None:
    """Write `data` to `target` (inside `root`, as `confine` returns it), making directories.
    Replacing: through a new temporary file beside it (O_CREAT|O_EXCL|O_NOFOLLOW, 0600, a random
    name) renamed over it, so a reader never sees half a file and a link planted at either name
    is replaced, never written through; the file keeps the mode it had (new files: 0666 less the
    umask). Appending: O_APPEND|O_NOFOLLOW."""
    dfd = open_dir(root, target.parent, create=True)
    try:
        if append:
            fd = os.open(target.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=dfd)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
        try:
            st = os.stat(target.name, dir_fd=dfd, follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_umask()
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        for _ in range(100):
            tmp = f".{target.name[:200]}.{secrets.token_hex(4)}.llmunix-tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dfd)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 random names all taken
            raise ToolError(f"cannot make a temporary file beside {target}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def encode_text(text: str) -> bytes:
    """UTF-8 bytes of `text`; bytes that came in as bytes (surrogateescape'd) go out as them."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that never was a byte
        return text.encode("utf-8", "replace")


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


# ---------------------------------------------------------------------------------- the file tools


@tool(idempotent=True, touches=("paths:path",))
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
        with os.fdopen(open_file(root, target), "rb") as f:
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


@tool(touches=("paths:path",))
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
    data = encode_text(content)
    try:
        write_atomic(root, target, data, append=append)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror}") from None
    ctx.log(f"wrote {len(data)} bytes to {relative(root, target)}")
    return {"path": relative(root, target), "bytes": len(data)}


@tool(touches=("paths:path",))
def edit_file(ctx: ProcessContext, path: str, old_string: str, new_string: str, replace_all: bool = False,
              workspace: str = "") -> dict[str, Any]:
    """Replace text in a file in the workspace (Claude Code's Edit): `old_string` must occur
    exactly once, or `replace_all` must be set.

    Args:
        path: the file, relative to the workspace
        old_string: the text to replace, exactly as it is in the file
        new_string: the text to put in its place
        replace_all: replace every occurrence, not just the only one
        workspace: the workspace directory (default: `workspace` in config.toml)
    """
    root = workspace_root(ctx, workspace)
    target = confine(root, path)
    if not old_string:
        raise ToolError("old_string is empty; write_file writes a whole file")
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError(f"no such file: {path} (in workspace {root})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    count = text.count(old_string)
    if count == 0:
        raise ToolError(f"old_string does not occur in {relative(root, target)}")
    if count > 1 and not replace_all:
        raise ToolError(f"old_string occurs {count} times in {relative(root, target)}; give more context to "
                        "make it unique, or set replace_all")
    updated = text.replace(old_string, new_string) if replace_all else text.replace(old_string, new_string, 1)
    try:
        write_atomic(root, target, encode_text(updated))  # never through a planted link (issue 19)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror}") from None
    ctx.log(f"replaced {count if replace_all else 1} occurrence(s) in {relative(root, target)}")
    return {"path": relative(root, target), "replacements": count if replace_all else 1}


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


@tool(idempotent=True, touches=("paths:path",))
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


@tool(idempotent=True, touches=("paths:path",))
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
