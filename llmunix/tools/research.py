"""Research-pipeline tools: `web_fetch` → `summarize` → `analyze` → `report`.

Each tool's output is a JSON-able dict that the next one accepts as its input, so a workflow (or
a person at the prompt) can pass them along unchanged:

    web_fetch  {"documents": [{"url", "path", "bytes", "status", "seconds", "content_type", "title"}],
                "failed": [{"url", "error"}], "bytes"}
    summarize  {"summaries": [{"source", "title", "path", "summary", "sentences", "words"}],
                "summary", "words_in", "words_out"}
    analyze    {"documents", "words", "sentences", "avg_sentence_words", "reading_minutes",
                "lexical_diversity", "keywords": [{"word", "count"}], "bigrams": [{"phrase", "count"}],
                "per_document": [...]}
    report     {"path", "bytes"}

Run by a person, paths are relative to the working directory and any URL or file can be read or
written. Run by an agent (the `workspace` parameter is set, which the agent loop does and a
model cannot), every path is confined to the workspace (relative ones start there), file:// URLs
are refused, and http(s) URLs, redirects included, must be in `agent_allowed_urls`.

`summarize` and `analyze` take `documents` as any of: web_fetch's output, summarize's output, a
list of dicts with `path` or `text`, a list of paths, or a string of paths (a directory stands for
the documents in it); `text=` adds raw text. An entry with a `path` is read from it, so analyze
given summarize's output analyses the documents that were summarised, not the summaries.

The text processing itself lives in `llmunix.tools.text` (pure functions); this module is the
I/O around it and the control points: every loop reports progress or checks for pause and kill.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import ipaddress
import json
import mimetypes
import os
import queue
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Annotated, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from pydantic import Field

from llmunix.models import LlmunixError, ToolError
from llmunix.process import ProcessContext
from llmunix.tools.files import Confinement, Refused, open_dir, open_file, write_atomic
from llmunix.tools.registry import PositiveSeconds, tool
from llmunix.tools.text import (
    Summarizer,
    bigrams,
    html_to_text,
    keywords,
    select_sentences,
    split_sentences,
    summarize_corpus,
    summarize_text,
    text_stats,
    text_title,
    word_tokens,
)

CHUNK = 64 * 1024  # bytes read at a time; a control point between chunks
POLL = 0.05  # longest a fetch goes without reaching a control point while the network is silent
SOCKET_IDLE = 120.0  # the helper's own socket timeout: a safety net under the per-URL deadline, which
# the process thread enforces in running time (a pause must not turn into a dead connection at once)
USER_AGENT = "llmunix-web_fetch/0.1"
DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".rst", ".text")
HTML_TYPES = ("text/html", "application/xhtml+xml")
BINARY_MAJORS = ("image", "audio", "video", "font")

SAMPLE_DOCS = Path(__file__).resolve().parent.parent / "workflows" / "examples" / "research-docs"
"""The sample documents bundled with llmunix (what the research-pipeline example reads offline)."""


def sample_documents() -> list[str]:
    """Absolute paths of the bundled sample documents, sorted by name."""
    return [str(p) for p in sorted(SAMPLE_DOCS.iterdir()) if p.suffix in DOCUMENT_SUFFIXES]


# ---------------------------------------------------------------------------------- the LLM hook

_summary_backend: Summarizer | None = None


def set_summary_backend(backend: Summarizer | None) -> None:
    """Make `summarize` use `backend(text, sentences) -> str` instead of the offline extractive
    summary (None restores it). This is where an LLM backend plugs in once one is configured."""
    global _summary_backend
    _summary_backend = backend


def summary_backend() -> Summarizer | None:
    """The summary backend `summarize` uses now; None means the offline extractive summary."""
    return _summary_backend


# ---------------------------------------------------------------------------------- where paths lead


@dataclass(frozen=True)
class _Scope:
    """Where a research tool's paths lead: the working directory for a person; the agent's
    workspace (and URL allow list) when `workspace` is set (see the module docstring)."""

    base: Path
    conf: Confinement | None

    @classmethod
    def of(cls, ctx: ProcessContext, workspace: str) -> _Scope:
        conf = Confinement.of(ctx, workspace)
        return cls(conf.root if conf is not None else Path(ctx.cwd or "."), conf)

    def path(self, name: str | os.PathLike[str]) -> Path:
        """The path `name` means; under an agent, ToolError unless it is inside the workspace."""
        if self.conf is not None:
            return self.conf.path(name)
        return Path(self.base, name).expanduser()

    def exists(self, name: str) -> bool:
        try:
            return self.path(name).exists()
        except (ToolError, OSError, ValueError):
            return False

    def documents_in(self, directory: Path) -> list[str]:
        """The documents in `directory`; under an agent, not those that are links leading out
        (as list_files leaves them out)."""
        found = _documents_in(directory)
        if self.conf is None:
            return found
        inside = []
        for name in found:
            try:
                inside.append(str(self.conf.path(name)))
            except Refused:
                continue
        return inside

    def open(self, path: Path) -> BinaryIO:
        """`path` (from `self.path`) open for reading; under an agent, reached without symlinks."""
        if self.conf is not None:
            return os.fdopen(open_file(self.conf.root, self.conf.path(path)), "rb")
        return open(path, "rb")  # noqa: SIM115 - the caller's with closes it

    def make_dir(self, path: Path) -> None:
        if self.conf is not None:
            os.close(open_dir(self.conf.root, path, create=True))
        else:
            path.mkdir(parents=True, exist_ok=True)

    def write(self, target: Path, data: bytes) -> None:
        """Replace `target` atomically (a link planted at it or its temporary file is replaced,
        never written through), making its directory."""
        if self.conf is not None:
            write_atomic(self.conf.root, target, data)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target.parent, target, data)


# ---------------------------------------------------------------------------------- web_fetch


class _FetchFailed(Exception):
    """One URL could not be fetched; the message is the cause, for `failed` and the log."""


@dataclass
class _Fetched:
    status: int | None
    content_type: str
    charset: str | None
    raw: bytes
    seconds: float


@tool(idempotent=True, needs={"network": 1}, breaker=False,  # each host has its own breaker
      touches=("urls:urls", "paths:urls", "paths:dest"))
def web_fetch(ctx: ProcessContext, urls: list[str] | str, timeout: PositiveSeconds = 30.0, dest: str = "",
              max_bytes: Annotated[int, Field(ge=1, le=10**12)] = 5_000_000, workspace: str = "") -> dict[str, Any]:
    """Fetch web pages and local files, save their readable text, and record status, bytes and time.

    Takes http(s) URLs (localhost too), file:// URLs and paths (relative to the working
    directory; a directory stands for the .txt/.md/.html documents in it). HTML is reduced to its
    text and title. A URL that fails is listed under `failed`; the process fails only when every
    URL failed. Progress is reported per URL; kill and pause act within a twentieth of a second,
    even while a server is silent. With `workspace` (an agent's), paths and `dest` stay inside it,
    file:// is refused and URLs must be in agent_allowed_urls, all checked before anything is fetched.

    Args:
        urls: the URLs or paths: a list, or a string of them separated by spaces
        timeout: seconds each URL may take in all (connecting, waiting, reading); paused time does not count
        dest: directory the documents are saved in (default: fetched/ in the working directory)
        max_bytes: a URL that sends more than this many bytes fails
        workspace: confine paths to this directory and URLs to agent_allowed_urls (agents set it)
    """
    if timeout <= 0:
        raise ToolError(f"timeout must be more than 0 seconds, not {timeout:g}")
    if max_bytes < 1:
        raise ToolError(f"max_bytes must be at least 1, not {max_bytes}")
    scope = _Scope.of(ctx, workspace)
    targets = _url_list(urls, scope)
    if not targets:
        raise ToolError("no URLs given: pass urls=URL (http(s) URLs, file:// URLs or paths, separated by spaces)")
    out_dir = _directory(scope, dest or "fetched", "dest")
    # After a crash, `recover` restarts the tool with its last checkpoint: it goes on from there.
    state = ctx.restored if isinstance(ctx.restored, dict) else {}
    documents: list[dict[str, Any]] = list(state.get("documents", []))
    failed: list[dict[str, Any]] = list(state.get("failed", []))
    n = len(targets)
    for i in range(int(state.get("next", 0)), n):
        url = targets[i]
        ctx.progress(i, n, f"fetching URL {i + 1} of {n}")
        try:
            got = _fetch(ctx, url, timeout, max_bytes, scope)
            title, text = _readable(got)
        except _FetchFailed as exc:
            failed.append({"url": url, "error": str(exc)})
            ctx.log(f"{url}: failed: {exc}")
        else:
            path = out_dir / _file_name(i, url)
            try:
                scope.write(path, text.encode("utf-8", "replace"))
            except OSError as exc:
                raise ToolError(f"cannot write {path}: {exc.strerror or exc}") from None
            documents.append({"url": url, "path": str(path), "bytes": len(got.raw), "status": got.status,
                              "seconds": round(got.seconds, 3), "content_type": got.content_type, "title": title})
            status = got.status if got.status is not None else "file"
            ctx.log(f"{url}: {status}, {len(got.raw)} bytes in {got.seconds:.3f}s ({got.content_type})")
        ctx.checkpoint({"next": i + 1, "documents": documents, "failed": failed})
    ctx.progress(n, n, f"fetched {len(documents)} of {n} URLs")
    if not documents:
        first = failed[0]
        more = f" (and {len(failed) - 1} more URLs failed; see the log)" if len(failed) > 1 else ""
        raise ToolError(f"could not fetch {first['url']}: {first['error']}{more}")
    return {"documents": documents, "failed": failed, "bytes": sum(d["bytes"] for d in documents)}


def _url_list(urls: list[str] | str, scope: _Scope) -> list[str]:
    """The URLs to fetch, in order: a string is split on whitespace (a JSON list is read as one),
    and a directory path becomes the documents in it. Under an agent each is checked here, so
    that one refused URL stops the tool before anything is fetched."""
    if isinstance(urls, str):
        text = urls.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise ToolError(f"urls {text[:60]!r} looks like a JSON list but is not valid JSON") from None
        elif text and scope.exists(text):  # one path, spaces and all
            items = [text]
        else:
            items = text.split()
    else:
        items = urls
    out: list[str] = []
    for item in (str(u).strip() for u in items):
        if not item:
            continue
        local = _local_path(item, scope)
        if local is None and scope.conf is not None:
            scope.conf.url(item)
        if local is not None and local.is_dir():
            found = scope.documents_in(local)
            out.extend(found or [item])  # an empty directory stays, to fail with a reason
        else:
            out.append(item)
    return out


def _local_path(url: str, scope: _Scope) -> Path | None:
    """The file a file:// URL or a plain path names (relative to the scope's base); None for
    other schemes. Under an agent a file:// URL or a path outside the workspace is ToolError."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if scope.conf is not None:
            scope.conf.url(url)  # refused: an agent names files by their workspace paths
        if parts.netloc not in ("", "localhost"):
            return None
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        return None
    return scope.path(url)


def _documents_in(directory: Path) -> list[str]:
    return [str(p) for p in sorted(directory.iterdir()) if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES]


_CLIENT_ERROR = re.compile(r"HTTP 4(?!08|29)\d\d\b")  # 408 and 429 say the host is struggling


def _fetch(ctx: ProcessContext, url: str, timeout: float, max_bytes: int, scope: _Scope) -> _Fetched:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        # The host's circuit breaker (docs/resilience.md): while it is open the URL fails at once.
        # A client error (404, 403...) is the request's fault, not the host's: it does not count.
        client_error: _FetchFailed | None = None
        try:
            with ctx.connection(url), ctx.host_call(url):  # the host's connection limit, then its breaker
                try:
                    return _http_get(ctx, url, timeout, max_bytes,
                                     allow=scope.conf.url if scope.conf is not None else None)
                except _FetchFailed as exc:
                    if not _CLIENT_ERROR.match(str(exc)):
                        raise
                    client_error = exc
        except LlmunixError as exc:  # the breaker is open (a ToolError), or the URL names no host
            raise _FetchFailed(str(exc)) from None
        assert client_error is not None
        raise client_error
    path = _local_path(url, scope)
    if path is None:
        raise _FetchFailed(f"unsupported URL scheme {scheme!r}; use http, https, file or a path")
    return _read_file(ctx, path, max_bytes, scope)


def _read_file(ctx: ProcessContext, path: Path, max_bytes: int, scope: _Scope) -> _Fetched:
    start = time.monotonic()
    if path.is_dir():
        raise _FetchFailed(f"{path} is a directory with no documents ({', '.join(DOCUMENT_SUFFIXES)})")
    chunks: list[bytes] = []
    size = 0
    try:
        with scope.open(path) as f:
            while chunk := f.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise _FetchFailed(f"larger than max_bytes={max_bytes}")
                chunks.append(chunk)
                ctx.check()
    except FileNotFoundError:
        raise _FetchFailed(f"no such file {path}") from None
    except OSError as exc:
        raise _FetchFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    guessed = mimetypes.guess_type(path.name)[0]
    if guessed is None and path.suffix.lower() in (".md", ".markdown"):
        guessed = "text/markdown"
    return _Fetched(None, guessed or "text/plain", None, b"".join(chunks), time.monotonic() - start)


class _Exchange:
    """One HTTP GET run on a helper thread, so that the process's own thread never blocks in a
    socket call: it takes the response from a queue, reaching a control point at least every
    POLL seconds, and on kill, timeout or error `abort()` shuts the socket so the helper ends too.
    The queue is bounded, so a paused fetch stops reading from the network soon after."""

    def __init__(self, url: str, timeout: float, allow: Callable[[str], Any] | None = None) -> None:
        self.url = url
        self.timeout = timeout  # the URL's deadline; the process thread enforces it
        self.allow = allow  # under an agent: raises ToolError for a URL (a redirect) it may not fetch
        self.items: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=16)
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def run(self) -> None:
        try:
            opener = urllib.request.build_opener(_RecordingHTTPHandler(self), _RecordingHTTPSHandler(self),
                                                 _proxy_handler(self.url), _CheckedRedirectHandler(self.allow))
            request = urllib.request.Request(self.url, headers={
                "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                "Accept": "text/html,text/plain;q=0.9,*/*;q=0.5"})
            with opener.open(request, timeout=max(self.timeout, SOCKET_IDLE)) as resp:
                self._put(("head", resp.status, resp.headers))
                while not self.cancelled.is_set():
                    chunk = resp.read1(CHUNK)
                    if not chunk:
                        break
                    self._put(("data", chunk))
            self._put(("end",))
        except urllib.error.HTTPError as exc:
            exc.close()
            self._put(("error", f"HTTP {exc.code} {exc.reason}"))
        except Exception as exc:  # reported to the process thread, which decides
            self._put(("error", _describe(exc, max(self.timeout, SOCKET_IDLE))))

    def _put(self, item: tuple[Any, ...]) -> None:
        while not self.cancelled.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
        if self.cancelled.is_set():
            self.abort()

    def abort(self) -> None:
        self.cancelled.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a helper blocked in recv (close() would not)
            except OSError:
                pass


def _recording(base: type[http.client.HTTPConnection], exchange: _Exchange) -> type[http.client.HTTPConnection]:
    class Connection(base):  # type: ignore[valid-type, misc]
        def connect(self) -> None:
            super().connect()
            exchange.attach(self.sock)

    return Connection


class _RecordingHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, exchange: _Exchange) -> None:
        super().__init__()
        self._connection = _recording(http.client.HTTPConnection, exchange)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _RecordingHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, exchange: _Exchange) -> None:
        super().__init__()
        self._connection = _recording(http.client.HTTPSConnection, exchange)
        self._tls = ssl.create_default_context()

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._tls)


class _CheckedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Under an agent, a redirect is followed only to a URL the allow list admits (an allowed
    host must not lead an agent to one that is not)."""

    def __init__(self, allow: Callable[[str], Any] | None) -> None:
        super().__init__()
        self._allow = allow

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Message,
                         newurl: str) -> urllib.request.Request | None:
        if self._allow is not None:
            try:
                self._allow(newurl)
            except ToolError as exc:
                raise urllib.error.HTTPError(newurl, code, f"redirect refused: {exc}", headers, fp) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _proxy_handler(url: str) -> urllib.request.ProxyHandler:
    """Proxies from the environment, except for loopback addresses (a local server is never
    behind a proxy, whatever no_proxy says)."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return urllib.request.ProxyHandler({} if loopback else None)


def _http_get(ctx: ProcessContext, url: str, timeout: float, max_bytes: int,
              allow: Callable[[str], Any] | None = None) -> _Fetched:
    exchange = _Exchange(url, timeout, allow)
    helper = threading.Thread(target=exchange.run, name=f"llmunix-fetch-{ctx.pid}", daemon=True)
    start = time.monotonic()
    deadline = start + timeout
    held = 0.0  # time spent paused or preempted at control points: not the URL's time
    status: int | None = None
    headers: Message | None = None
    chunks: list[bytes] = []
    size = 0
    helper.start()
    try:
        while True:
            try:
                item: tuple[Any, ...] | None = exchange.items.get(timeout=POLL)
            except queue.Empty:
                item = None
            t0 = time.monotonic()
            ctx.check()
            waited = time.monotonic() - t0
            held += waited
            deadline += waited
            if item is not None:
                kind = item[0]
                if kind == "head":
                    status, headers = item[1], item[2]
                elif kind == "data":
                    size += len(item[1])
                    if size > max_bytes:
                        raise _FetchFailed(f"larger than max_bytes={max_bytes}")
                    chunks.append(item[1])
                elif kind == "error":
                    raise _FetchFailed(item[1])
                else:
                    break
            if time.monotonic() >= deadline:
                raise _FetchFailed(f"timed out after {timeout:g}s")
    finally:
        exchange.abort()
    content_type = headers.get_content_type() if headers is not None else "text/plain"
    charset = headers.get_content_charset() if headers is not None else None
    return _Fetched(status, content_type, charset, b"".join(chunks), time.monotonic() - start - held)


def _describe(exc: BaseException, timeout: float) -> str:
    """One line saying why a request failed."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no data for {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or reason}"
    if isinstance(reason, http.client.HTTPException):
        return f"bad response: {type(reason).__name__} {reason}".strip()
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason) or type(reason).__name__
    return " ".join(text.split())


def _readable(got: _Fetched) -> tuple[str, str]:
    """(title, readable text) of a fetched document; binary content fails the URL."""
    head = got.raw[:8192]
    major = got.content_type.split("/", 1)[0]
    if major in BINARY_MAJORS or got.content_type in ("application/pdf", "application/zip") or b"\x00" in head:
        raise _FetchFailed(f"not a text document ({got.content_type})")
    sniff = head[:512].lstrip().lower()
    html = got.content_type in HTML_TYPES or sniff.startswith((b"<!doctype html", b"<html"))
    text = _decode(got.raw, got.charset or (_meta_charset(head) if html else None))
    if html:
        title, body = html_to_text(text)
        return title, body
    return text_title(text), text


def _meta_charset(head: bytes) -> str | None:
    m = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", head, re.IGNORECASE)
    return m.group(1).decode("ascii") if m else None


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return raw.decode("utf-8", errors="replace")


def _file_name(index: int, url: str) -> str:
    """`01-127.0.0.1-8000-scheduling.txt`: the URL's position, host and path, readable and unique."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        base = f"{parts.netloc}{parts.path}"
    else:
        base = Path(unquote(parts.path) if parts.scheme == "file" else url).name
    base = re.sub(r"\.(html?|txt|md|markdown|rst|text)$", "", base.rstrip("/"), flags=re.IGNORECASE)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:60] or "document"
    return f"{index + 1:02d}-{slug}.txt"


def _directory(scope: _Scope, name: str, what: str) -> Path:
    path = scope.path(name)
    if path.exists() and not path.is_dir():
        raise ToolError(f"{what} {path} is a file; give a directory")
    try:
        scope.make_dir(path)
    except OSError as exc:
        raise ToolError(f"cannot create {what} directory {path}: {exc.strerror or exc}") from None
    return path


# ---------------------------------------------------------------------------------- documents


@dataclass
class _Document:
    source: str  # the URL or path it came from, or "text"
    text: str
    path: str | None = None
    title: str = ""


def _load_documents(ctx: ProcessContext, documents: Any, text: str, verb: str, scope: _Scope) -> list[_Document]:
    """The documents a summarize/analyze call names (see the module docstring for the forms)."""
    docs: list[_Document] = []
    if documents not in (None, "", [], {}):
        for n, entry in enumerate(_entries(documents, scope), 1):
            docs.append(_document(scope, entry, n))
            ctx.check()
    if text.strip():
        docs.append(_Document("text", text))
    if not docs:
        raise ToolError(f"nothing to {verb}: pass documents=PATH... (or web_fetch's output) or text=...")
    return docs


def _entries(documents: Any, scope: _Scope) -> list[Any]:
    if isinstance(documents, dict):
        if isinstance(documents.get("documents"), list):  # web_fetch's output
            return documents["documents"]
        if isinstance(documents.get("summaries"), list):  # summarize's output
            return documents["summaries"]
        return [documents]
    if isinstance(documents, str):
        names = [documents.strip()] if scope.exists(documents.strip()) else documents.split()
        out: list[Any] = []
        for name in names:
            path = scope.path(name)
            out.extend(scope.documents_in(path) if path.is_dir() else [name])
        return out
    return list(documents)


def _document(scope: _Scope, entry: Any, n: int) -> _Document:
    if isinstance(entry, str | os.PathLike):
        return _read_document(scope, str(entry))
    if not isinstance(entry, dict):
        raise ToolError(f"document {n} is a {type(entry).__name__}; give paths or dicts with 'path' or 'text'")
    source = str(entry.get("url") or entry.get("source") or entry.get("path") or "text")
    title = str(entry.get("title") or "")
    if entry.get("path"):
        doc = _read_document(scope, str(entry["path"]), fallback=entry.get("text") or entry.get("summary"))
        return _Document(source, doc.text, doc.path, title or doc.title)
    body = entry.get("text") or entry.get("summary")
    if not isinstance(body, str):
        raise ToolError(f"document {n} has neither 'path' nor 'text' (its keys: {', '.join(map(str, entry))})")
    return _Document(source, body, None, title)


def _read_document(scope: _Scope, name: str, fallback: Any = None) -> _Document:
    path = scope.path(name)
    try:
        with scope.open(path) as f:
            raw = f.read().decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        if isinstance(fallback, str):
            return _Document(name, fallback)
        raise ToolError(f"no such document {name!r} (relative paths start at {scope.base})") from None
    except IsADirectoryError:
        raise ToolError(f"{name!r} is a directory with no documents ({', '.join(DOCUMENT_SUFFIXES)})") from None
    except OSError as exc:
        raise ToolError(f"cannot read {name!r}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".html", ".htm"):
        title, body = html_to_text(raw)
        return _Document(str(path), body, str(path.resolve()), title)
    return _Document(str(path), raw, str(path.resolve()), text_title(raw))


# ---------------------------------------------------------------------------------- summarize


@tool(idempotent=True, touches=("paths:documents",))
def summarize(ctx: ProcessContext, documents: list | dict | str | None = None,
              sentences: Annotated[int, Field(ge=1, le=10_000)] = 5,
              text: str = "", workspace: str = "") -> dict[str, Any]:
    """Summarise documents: an extractive summary of each and one of them all (offline, deterministic).

    Sentences are scored by the normalised frequency of their content words with a bonus for
    coming early, and the best are kept in their original order. Takes web_fetch's output, paths
    (a directory stands for its documents), dicts with `path` or `text`, or raw `text`.

    Args:
        documents: web_fetch's output, paths, or dicts with 'path' or 'text'
        sentences: sentences in each summary
        text: raw text to summarise (alone or with documents)
        workspace: read documents only inside this directory (agents set it)
    """
    if sentences < 1:
        raise ToolError(f"sentences must be at least 1, not {sentences}")
    docs = _load_documents(ctx, documents, text, "summarise", _Scope.of(ctx, workspace))
    backend = summary_backend()
    n = len(docs)
    summaries = []
    for i, doc in enumerate(docs):
        ctx.progress(i, n + 1, f"summarising document {i + 1} of {n}")
        if backend is None:
            chosen = select_sentences(doc.text, sentences)
            summary, count = " ".join(chosen), len(chosen)
        else:
            summary = summarize_text(doc.text, sentences, backend=backend)
            count = len(split_sentences(summary))
        summaries.append({"source": doc.source, "title": doc.title, "path": doc.path, "summary": summary,
                          "sentences": count, "words": len(word_tokens(summary))})
    ctx.progress(n, n + 1, "summarising all documents")
    overall = summarize_corpus([d.text for d in docs], sentences, backend=backend)
    ctx.progress(n + 1, n + 1, f"summarised {n} documents")
    return {"summaries": summaries, "summary": overall,
            "words_in": sum(len(word_tokens(d.text)) for d in docs), "words_out": len(word_tokens(overall))}


# ---------------------------------------------------------------------------------- analyze


@tool(idempotent=True, touches=("paths:documents",))
def analyze(ctx: ProcessContext, documents: list | dict | str | None = None, text: str = "",
            top: Annotated[int, Field(ge=1, le=10_000)] = 10, workspace: str = "") -> dict[str, Any]:
    """Text statistics and keywords of documents: words, sentences, reading time, lexical diversity.

    Keywords are the most frequent words that are not stopwords (plurals counted with their
    singular), and bigrams the most frequent two-word phrases. Takes the same documents as
    summarize, including summarize's output (then it reads the documents that were summarised).

    Args:
        documents: web_fetch's or summarize's output, paths, or dicts with 'path' or 'text'
        text: raw text to analyse (alone or with documents)
        top: how many keywords and bigrams to list
        workspace: read documents only inside this directory (agents set it)
    """
    if top < 1:
        raise ToolError(f"top must be at least 1, not {top}")
    docs = _load_documents(ctx, documents, text, "analyse", _Scope.of(ctx, workspace))
    n = len(docs)
    per_document = []
    for i, doc in enumerate(docs):
        ctx.progress(i, n + 1, f"analysing document {i + 1} of {n}")
        stats = text_stats(doc.text).to_dict()
        per_document.append({"source": doc.source, "title": doc.title, **stats,
                             "keywords": [w for w, _ in keywords(doc.text, 5)]})
    ctx.progress(n, n + 1, "keywords of all documents")
    texts = [d.text for d in docs]
    overall = text_stats(texts).to_dict()
    del overall["characters"]
    result = {"documents": n, **overall,
              "keywords": [{"word": w, "count": c} for w, c in keywords(texts, top)],
              "bigrams": [{"phrase": p, "count": c} for p, c in bigrams(texts, top)],
              "per_document": per_document}
    ctx.progress(n + 1, n + 1, f"analysed {n} documents")
    return result


# ---------------------------------------------------------------------------------- report


@tool(idempotent=True, touches=("paths:path",))
def report(ctx: ProcessContext, path: str, title: str = "Research report", summary: dict | str | None = None,
           analysis: dict | None = None, sources: dict | list | None = None, workspace: str = "") -> dict[str, Any]:
    """Write a markdown research report: sources, summaries, statistics and keywords.

    Sections appear for what is given: `sources` (web_fetch's output, or a list of URLs or
    document dicts) as a table with status, bytes and response time; `summary` (summarize's
    output, or text) per source and overall; `analysis` (analyze's output) as statistics and
    keywords. Parent directories are created; an existing file is replaced.

    Args:
        path: the file to write (relative to the working directory)
        title: the report's heading
        summary: summarize's output, or a summary text
        analysis: analyze's output
        sources: web_fetch's output, or a list of URLs or document dicts
        workspace: write only inside this directory (agents set it)
    """
    scope = _Scope.of(ctx, workspace)
    target = scope.path(path)
    if target.is_dir():
        raise ToolError(f"report path {target} is a directory; give a file name such as {target / 'report.md'}")
    ctx.progress(0, 1, f"writing {target.name}")
    text = render_report(title, summary=summary, analysis=analysis, sources=sources,
                         when=_dt.datetime.now().astimezone())
    data = text.encode("utf-8")
    try:
        scope.write(target, data)  # a reader never sees half a report
    except OSError as exc:
        raise ToolError(f"cannot write report {target}: {exc.strerror or exc}") from None
    ctx.progress(1, 1, f"wrote {target.name}")
    ctx.log(f"wrote {len(data)} bytes to {target}")
    return {"path": str(target.resolve()), "bytes": len(data)}


def render_report(title: str, *, summary: dict | str | None = None, analysis: dict | None = None,
                  sources: dict | list | None = None, when: _dt.datetime | None = None) -> str:
    """The report's markdown (pure: `report` writes it)."""
    when = when or _dt.datetime.now().astimezone()
    out = [f"# {_line(title)}", "", f"Generated {when.strftime('%Y-%m-%d %H:%M %Z').strip()} by llmunix.", ""]
    rows, failed = _source_rows(sources, summary)
    out += ["## Sources", ""]
    if rows:
        out += ["| # | Source | Title | Status | Bytes | Time |", "| ---: | --- | --- | --- | ---: | ---: |"]
        for i, r in enumerate(rows, 1):
            status = r.get("status")
            status_text = "file" if status is None and r.get("bytes") is not None else ("" if status is None
                                                                                       else str(status))
            size = f"{r['bytes']:,}" if isinstance(r.get("bytes"), int) else ""
            secs = f"{r['seconds']:.3f} s" if isinstance(r.get("seconds"), int | float) else ""
            out.append(f"| {i} | {_cell(r.get('source', ''))} | {_cell(r.get('title', ''))} | {status_text} "
                       f"| {size} | {secs} |")
        total = sum(r["bytes"] for r in rows if isinstance(r.get("bytes"), int))
        if total:
            out += ["", f"{len(rows)} documents, {total:,} bytes."]
    else:
        out.append("No sources given.")
    if failed:
        out += ["", "Not fetched:", ""] + [f"- {_line(f.get('url', '?'))}: {_line(f.get('error', ''))}"
                                           for f in failed]
    out.append("")
    if isinstance(summary, dict) and summary.get("summaries"):
        out += ["## Summaries by source", ""]
        for i, s in enumerate(summary["summaries"], 1):
            heading = s.get("title") or s.get("source") or f"Document {i}"
            out += [f"### {i}. {_line(heading)}", ""]
            if s.get("title") and s.get("source"):
                out += [f"Source: {_line(s['source'])}", ""]
            out += [_line(s.get("summary", "")) or "(empty)", ""]
    overall = summary.get("summary") if isinstance(summary, dict) else summary
    if overall:
        out += ["## Overall summary", "", _line(overall), ""]
        if isinstance(summary, dict) and summary.get("words_in"):
            out += [f"{summary.get('words_out', 0):,} words from {summary['words_in']:,}.", ""]
    if isinstance(analysis, dict) and analysis:
        out += _analysis_sections(analysis)
    return "\n".join(out).rstrip() + "\n"


def _analysis_sections(a: dict[str, Any]) -> list[str]:
    out = ["## Statistics", "", "| Measure | Value |", "| --- | ---: |"]
    measures = [("Documents", "documents", "{:,}"), ("Words", "words", "{:,}"), ("Sentences", "sentences", "{:,}"),
                ("Average sentence length", "avg_sentence_words", "{} words"),
                ("Reading time", "reading_minutes", "{} min"), ("Lexical diversity", "lexical_diversity", "{}")]
    out += [f"| {label} | {fmt.format(a[key])} |" for label, key, fmt in measures if key in a]
    per = a.get("per_document") or []
    if len(per) > 1:
        out += ["", "| Source | Words | Sentences | Reading time | Top words |", "| --- | ---: | ---: | ---: | --- |"]
        for d in per:
            out.append(f"| {_cell(d.get('title') or d.get('source', ''))} | {d.get('words', 0):,} "
                       f"| {d.get('sentences', 0):,} | {d.get('reading_minutes', 0)} min "
                       f"| {_cell(', '.join(d.get('keywords', [])))} |")
    out.append("")
    if a.get("keywords"):
        out += ["## Keywords", "", "| Keyword | Count |", "| --- | ---: |"]
        out += [f"| {_cell(k['word'])} | {k['count']} |" for k in a["keywords"]]
        out.append("")
        if a.get("bigrams"):
            phrases = ", ".join(f"{_line(b['phrase'])} ({b['count']})" for b in a["bigrams"])
            out += [f"Frequent phrases: {phrases}.", ""]
    return out


def _source_rows(sources: Any, summary: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    failed: list[dict[str, Any]] = []
    if isinstance(sources, dict):
        failed = [f for f in sources.get("failed", []) if isinstance(f, dict)]
        items = sources.get("documents", []) if "documents" in sources else [sources]
    elif isinstance(sources, list):
        items = sources
    elif isinstance(summary, dict):
        items = summary.get("summaries", [])
    else:
        items = []
    rows = []
    for item in items:
        if isinstance(item, dict):
            rows.append({**item, "source": item.get("url") or item.get("source") or item.get("path") or ""})
        else:
            rows.append({"source": str(item)})
    return rows, failed


def _line(value: Any) -> str:
    return " ".join(str(value).split())


def _cell(value: Any) -> str:
    return _line(value).replace("|", "\\|")
