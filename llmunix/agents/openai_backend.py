"""The `openai` backend: OpenAI-compatible chat completions over HTTP (stdlib http.client).

Works with api.openai.com and with the local servers people run (llama.cpp, vLLM, Ollama,
LM Studio): `POST {base_url}/chat/completions`. Two ways to call tools:

* `native` (default): the tools go in the request's `tools`; calls come back in `tool_calls`
  and results go back as `tool` messages.
* `text`: the system prompt describes the LLMunix text formats (`TOOL_CALL:` / `PARAMETERS:` /
  `REASONING:`, or `<tool_call name="x">{json}</tool_call>` and `<final_answer>`), and results go
  back as user messages. Calls in `content` are read in native mode too.

Liberal in what it accepts and conservative in what it sends, because servers differ: a
`function_call` beside `tool_calls` is a copy and is ignored (parsing.py); arguments may come as a
string or an object and always go back as a JSON string; an assistant turn without text goes
back with `"content": ""` (llama.cpp's server rejects null).

A model call waits off its process's slot (`ctx.off_slot`: `ps` says "waiting for the model:
NAME"), first in its endpoint's line when the endpoint is limited (endpoints.py), then for the
reply, on the process's own thread over a kept-alive connection (transport.py). A kill aborts it
at once (the connection is shut down, so the server stops generating); a pause shows at once and
takes hold when the reply is in. A 429, a 5xx or a dropped connection is retried up to `retries`
times after `backoff * 2**attempt` seconds, or after the server's Retry-After (seconds or an
HTTP date; at most 60 s: the whole endpoint waits that long), sleeping off-slot. A 400 for a full
context, a 401/403 (the key) and a 404 (the model, or a wrong base URL) fail at once with the
server's own message. With `stream = true` the reply comes as server-sent events: its text is
written to the process log line by line as it arrives, and the time to the first token is kept
in the decision's `timing` (with the request's wall time). Token usage comes from the reply's
`usage` (streamed: the last chunk's, asked for with `stream_options.include_usage`).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import re
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from llmunix.agents.backend import (
    BackendError,
    BackendSettings,
    Check,
    Decision,
    Log,
    OffSlot,
    Sleep,
    Turn,
    Usage,
    stay_on_slot,
)
from llmunix.agents.endpoints import CHARS_PER_TOKEN, Endpoints, Inbox
from llmunix.agents.parsing import ToolCall, parse_native, parse_text
from llmunix.agents.transport import Transport
from llmunix.models import LlmunixError
from llmunix.tools.markdown import claude_call

RETRY_AFTER_CAP = 60.0
LOG_WIDTH = 160  # a streamed line longer than this is logged in pieces, cut at a space
LOG_EVERY = 2.0  # seconds: text waiting for its end of line is logged after this long
STREAM_PREFIX = "» "  # streamed model text in the process log, told apart from llmunix's own lines

TEXT_FORMAT_HELP = """\
To use a tool, write (one or more blocks):

TOOL_CALL: tool_name
PARAMETERS: {"param": "value"}
REASONING: why this call

or <tool_call name="tool_name">{"param": "value"}</tool_call>.
When the goal is achieved, write <final_answer>your answer</final_answer>."""

_CONTEXT_FULL = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|exceeds? (the )?(available )?context|too many tokens|"
    r"prompt is too long|n_ctx|input is too long|reduce the length", re.IGNORECASE)


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: BackendSettings, endpoints: Endpoints | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints  # the kernel's endpoint limits (None: unlimited)
        self.transport = endpoints.transport if endpoints is not None else Transport()

    # ------------------------------------------------------------------ the conversation

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        """The chat history for a turn, rebuilt from the transcript (so a recovered run can go on)."""
        native = self.settings.tool_format == "native"
        system = [f"You are {turn.agent}: {turn.description}".strip().rstrip(":")]
        if turn.instructions:
            system.append(turn.instructions)
        system.append("File paths are relative to your workspace directory. Use the tools to do the work, "
                      "then give a short final answer.")
        if turn.tools and not native:
            listing = "\n".join(f"- {t.name}({t.signature()}): {t.description}" for t in turn.tools)
            system.append(f"Tools you may use:\n{listing}\n\n{TEXT_FORMAT_HELP}")
        messages: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(system)},
                                          {"role": "user", "content": f"Goal: {turn.goal}"}]
        names = self._api_names(turn)
        for step in turn.steps:
            d = step.decision
            native_ids: set[str] = set()
            if native and isinstance(d.message, dict):
                msg = dict(d.message)
                msg["content"] = _text_content(msg.get("content"))  # "" not null: llama.cpp refuses null
                if msg.get("tool_calls"):  # ids made up for calls the server gave none
                    msg["tool_calls"] = [
                        _wire_call(tc, c.id) for tc, c in zip(msg["tool_calls"], d.calls, strict=False)]
                    native_ids = {tc["id"] for tc in msg["tool_calls"]}
                else:
                    msg.pop("tool_calls", None)
                messages.append(msg)
            else:
                content = d.message if isinstance(d.message, str) else (d.message or {}).get("content")
                messages.append({"role": "assistant", "content": _text_content(content) or d.reasoning or ""})
            for r in step.results:
                if r.call.id in native_ids:
                    messages.append({"role": "tool", "tool_call_id": r.call.id, "content": r.text()})
                else:
                    shown = next((api for api, real in names.items() if real == r.tool), r.call.name)
                    messages.append({"role": "user", "content": f"Tool '{shown}' returned:\n{r.text()}"})
            if not step.results and d.final is None:
                messages.append({"role": "user", "content": "Please either call a tool or give your final answer."})
        return messages

    def _api_names(self, turn: Turn) -> dict[str, str]:
        """API-safe tool names (letters, digits, _ and -) to the tools' own names."""
        out = {}
        for t in turn.tools:
            api = re.sub(r"[^A-Za-z0-9_-]", "_", t.name)[:64] or "tool"
            out[api] = t.name
        return out

    def request_body(self, turn: Turn) -> dict[str, Any]:
        body: dict[str, Any] = {"model": turn.model or self.settings.model, "messages": self.messages(turn)}
        if turn.tools and self.settings.tool_format == "native":
            body["tools"] = [t.to_openai(api) for api, t in zip(self._api_names(turn), turn.tools, strict=True)]
            body["tool_choice"] = "auto"
        return body

    # ------------------------------------------------------------------ one Thinking phase

    def decide(self, turn: Turn, *, check: Check, sleep: Sleep, log: Log,
               off_slot: OffSlot = stay_on_slot) -> Decision:
        reply, timing = self.exchange(self.request_body(turn), check=check, sleep=sleep, log=log, off_slot=off_slot)
        usage = _usage(reply)
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Decision("the model's reply had no choices", (ToolCall(
                "?", {}, "call_0", f"unusable reply (no choices): {json.dumps(reply)[:200]}"),), None, usage, None,
                timing)
        message = choices[0].get("message") or {}
        if self.settings.tool_format == "native":
            parsed = parse_native(message)
        else:
            parsed = parse_text(_text_content(message.get("content")))
        names = self._api_names(turn)
        calls = tuple(self._ours(c, names) for c in parsed.calls)
        # What goes back next round: the calls as they were read (each once, arguments as JSON text),
        # never the server's `function_call` copy.
        kept: dict[str, Any] = {"role": "assistant", "content": _text_content(message.get("content"))}
        if message.get("tool_calls") and parsed.calls:
            kept["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": json.dumps(dict(c.arguments), ensure_ascii=False)}} for c in parsed.calls]
        return Decision(parsed.reasoning, calls, parsed.final, usage, kept, timing)

    @staticmethod
    def _ours(call: ToolCall, names: dict[str, str]) -> ToolCall:
        """A call by the API name of a granted tool, as the tool's own name. A call by a name the
        model was not offered but knows from Claude Code (`Write` with `file_path`) gets its
        parameters renamed to the built-in's (the loop resolves the name, tools/markdown.py)."""
        if call.name in names:
            return ToolCall(names[call.name], call.arguments, call.id, call.error)
        if call.error:
            return call
        return ToolCall(call.name, claude_call(call.name, call.arguments).arguments, call.id, None)

    def complete(self, body: dict[str, Any], *, check: Check, sleep: Sleep, log: Log,
                 off_slot: OffSlot = stay_on_slot) -> dict[str, Any]:
        """POST the body; retry 429, 5xx and dropped connections; return the JSON reply."""
        return self.exchange(body, check=check, sleep=sleep, log=log, off_slot=off_slot)[0]

    def exchange(self, body: dict[str, Any], *, check: Check, sleep: Sleep, log: Log,
                 off_slot: OffSlot = stay_on_slot) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST the body (streamed when the settings say so), retrying what is worth retrying;
        return the reply (a streamed one assembled into the same shape) and its timing. The
        process waits off its slot throughout (`off_slot`), in its endpoint's line first."""
        s = self.settings
        url = f"{s.base_url}/chat/completions"
        model = str(body.get("model") or s.model)
        if s.api_key is None and "api.openai.com" in s.base_url:
            raise BackendError(f"no API key: set {s.api_key_env} (or point LLMUNIX_LLM_BASE_URL at a local server)")
        if s.stream:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream, application/json" if s.stream else "application/json"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        endpoint = self.endpoints.endpoint(s.base_url, model) if self.endpoints is not None else None
        estimate = len(data) // CHARS_PER_TOKEN
        inbox = Inbox()  # a kill reaches the wait through it (off_slot's on_kill)
        attempts = s.retries + 1
        with off_slot(f"the model: {model}", inbox):
            for attempt in range(attempts):
                check()
                if endpoint is not None:
                    try:
                        endpoint.enter(estimate, inbox, check, off_slot)
                    except LlmunixError as exc:
                        raise BackendError(str(exc)) from None
                retry_after: float | None = None
                used: int | None = None
                lines = _LineLog(log)
                started = time.monotonic()
                try:
                    reply, streamed, first = self._post(url, data, headers, check, lines, inbox)
                    used = _usage(reply).total_tokens or None
                except urllib.error.HTTPError as exc:
                    check()  # killed meanwhile: that, not the reply, is the end
                    detail = _error_detail(exc)
                    if (exc.code == 429 or exc.code >= 500) and attempt + 1 < attempts:
                        retry_after = _retry_after(exc)
                        if retry_after is not None and endpoint is not None:
                            endpoint.hold(min(RETRY_AFTER_CAP, retry_after))  # everyone waits, not just us
                        problem = f"{exc.code} {exc.reason}" + (f" ({detail})" if detail else "")
                    else:
                        raise BackendError(self._refusal(url, model, exc.code, str(exc.reason), detail,
                                                          attempt + 1)) from None
                except (urllib.error.URLError, OSError) as exc:
                    check()  # an aborted call (a kill) ends here
                    reason = getattr(exc, "reason", exc)
                    if attempt + 1 >= attempts:
                        raise BackendError(f"cannot reach the LLM endpoint {url}: {reason} "
                                           f"(after {attempts} attempt{'s' if attempts > 1 else ''})") from None
                    problem = str(reason)
                else:
                    lines.close()
                    took = time.monotonic() - started
                    timing: dict[str, Any] = {"seconds": round(took, 3), "stream": streamed}
                    if streamed:
                        timing["ttft"] = None if first is None else round(first - started, 3)
                        said = f"first token after {first - started:.2f}s, " if first is not None else ""
                        log(f"LLM: {said}reply in {took:.2f}s")
                    return reply, timing
                finally:
                    if endpoint is not None:
                        endpoint.leave(estimate, used)
                delay = min(RETRY_AFTER_CAP, retry_after if retry_after is not None else s.backoff * 2 ** attempt)
                log(f"LLM: {problem}; retrying in {delay:g}s (attempt {attempt + 2} of {attempts})")
                with off_slot(f"the endpoint: {endpoint.key if endpoint is not None else s.base_url} "
                              f"(retrying in {delay:g}s after {problem.split(' (')[0]})"):
                    sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _refusal(self, url: str, model: str, code: int, reason: str, detail: str, attempts: int) -> str:
        """One line for a status that is not retried (or no longer): what happened, in the
        server's words, and what to change."""
        s = self.settings
        said = f"{code} {reason}" + (f": {detail}" if detail else "")
        if code == 400 and _CONTEXT_FULL.search(detail):
            return (f"the conversation no longer fits the model's context ({model} at {url} answered {said}); "
                    "allow fewer rounds (--max-iterations) or use a model with a longer context")
        if code in (401, 403):
            key = f"the key in ${s.api_key_env}" if s.api_key else f"no key was sent (${s.api_key_env} is not set)"
            return f"the LLM endpoint {url} answered {said}; check the API key ({key})"
        if code == 404:
            return (f"the LLM endpoint {url} answered {said}; is the model {model!r} served there (set [llm] model, "
                    "LLMUNIX_LLM_MODEL or --model), and is base_url the API root (e.g. http://localhost:8080/v1)?")
        after = f" (after {attempts} attempts)" if attempts > 1 else ""
        return f"the LLM endpoint {url} answered {said}{after}"

    def _post(self, url: str, data: bytes, headers: dict[str, str], check: Check, lines: _LineLog,
              inbox: Inbox) -> tuple[dict[str, Any], bool, float | None]:
        """The HTTP request, on this thread (a kill aborts it through `inbox`); a streamed reply's
        text goes to the log as it arrives. Returns (reply, whether it was streamed, the time of
        its first token)."""
        call = self.transport.call(url, data, headers, self.settings.timeout)
        inbox.attach(call)
        reusable = False
        try:
            check()  # a kill before the call could be aborted
            resp = call.send()
            try:
                if "text/event-stream" not in (resp.headers.get("Content-Type") or ""):
                    raw = resp.read()
                    call.check()
                    reply = _json_reply(url, resp.status, raw)
                    reusable = True
                    return reply, False, None
                stream = _StreamedReply(url)
                for line in resp:
                    text = stream.feed(line.decode("utf-8", "replace"))
                    if text:
                        lines.feed(text)
                        check()
                    lines.tick()
                call.check()  # (an aborted stream ends like a finished one)
            except http.client.HTTPException as exc:  # a reply cut short
                raise call.failure(exc) from None
            reusable = True
            return stream.reply(), True, stream.first_token
        finally:
            inbox.attach(None)
            call.finish(reusable)  # kept alive for the next call, or closed (a kill hangs up here)


# ---------------------------------------------------------------------------- replies and errors


def _text_content(content: Any) -> str:
    """A message's text: "" for null, the parts joined for a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _wire_call(tc: Any, fallback_id: str) -> dict[str, Any]:
    """One tool call as it goes back to the server: an id, `type`, and arguments as JSON text
    (an object echoed back as an object is refused by strict servers)."""
    tc = dict(tc) if isinstance(tc, dict) else {}
    fn = dict(tc.get("function") or {})
    args = fn.get("arguments")
    if not isinstance(args, str):
        fn["arguments"] = json.dumps(args if args is not None else {}, ensure_ascii=False)
    fn["name"] = str(fn.get("name") or "")
    return {"id": tc.get("id") or fallback_id, "type": tc.get("type") or "function", "function": fn}


def _usage(reply: dict[str, Any]) -> Usage:
    raw = reply.get("usage") or {}
    if not isinstance(raw, dict):
        return Usage()
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _json_reply(url: str, status: int, raw: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(raw)
    except ValueError:
        raise BackendError(f"the LLM endpoint {url} answered {status} with something that is not "
                           f"JSON: {raw[:120]!r}") from None
    if not isinstance(reply, dict):
        raise BackendError(f"the LLM endpoint {url} answered with a JSON {type(reply).__name__}, not an object")
    if reply.get("error") and not reply.get("choices"):
        raise BackendError(f"the LLM endpoint {url} answered {status} with an error: {_message_of(reply)}")
    return reply


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """The Retry-After header in seconds: a number of seconds, or an HTTP date."""
    value = (exc.headers.get("Retry-After") if exc.headers else None) or ""
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's own words about a failed request, on one line."""
    try:
        body = exc.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a body that cannot be read says nothing
        return ""
    try:
        text = _message_of(json.loads(body))
    except ValueError:
        text = body
    text = " ".join(str(text or "").split())
    return text if len(text) <= 300 else text[:299] + "…"


def _message_of(data: Any) -> str:
    """The message in the error shapes servers use: OpenAI's {"error": {"message"}}, Ollama's
    {"error": "..."}, FastAPI's {"detail": [{"loc", "msg"}...]} (llama-cpp-python), {"message"}."""
    if not isinstance(data, dict):
        return str(data)
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("msg") or json.dumps(err))
    if err:
        return str(err)
    detail = data.get("detail")
    if isinstance(detail, list) and detail:
        parts = [f"{'.'.join(str(x) for x in d.get('loc', ()))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                 for d in detail]
        more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
        return f"{len(parts)} validation error{'s' if len(parts) > 1 else ''}: " + "; ".join(parts[:3]) + more
    if detail:
        return str(detail)
    return str(data.get("message") or json.dumps(data))


# ---------------------------------------------------------------------------- streaming


class _StreamedReply:
    """Server-sent chat-completion chunks assembled into the reply a non-streamed request gets.
    Tool calls arrive in pieces keyed by `index` (the name once, the arguments a fragment at a
    time); the last chunk may carry only `usage`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.legacy = {"name": "", "arguments": ""}
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.first_token: float | None = None
        self.pending = ""  # a data line that was not a whole JSON document yet

    def feed(self, line: str) -> str:
        """One line of the event stream; returns the text it added (for the log)."""
        line = line.rstrip("\r\n")
        if not line.startswith("data:"):
            return ""  # event names, ids, comments and the blank lines between events
        payload = self.pending + line[5:].strip()
        if payload == "[DONE]":
            return ""
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.pending = payload  # some servers split one document over several data lines
            return ""
        self.pending = ""
        if not isinstance(chunk, dict):
            return ""
        if chunk.get("error"):
            raise BackendError(f"the LLM endpoint {self.url} sent an error mid-stream: {_message_of(chunk)}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        added = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            self.finish = choice.get("finish_reason") or self.finish
            delta = choice.get("delta") or choice.get("message") or {}
            text = _text_content(delta.get("content"))
            if text:
                self.content.append(text)
                added.append(text)
            for n, piece in enumerate(delta.get("tool_calls") or ()):
                if isinstance(piece, dict):
                    self._call_piece(n, piece)
            legacy = delta.get("function_call")
            if isinstance(legacy, dict):
                self.legacy["name"] = self.legacy["name"] or str(legacy.get("name") or "")
                self.legacy["arguments"] += _fragment(legacy.get("arguments"))
        if (added or self.calls) and self.first_token is None:
            self.first_token = time.monotonic()
        return "".join(added)

    def _call_piece(self, n: int, piece: dict[str, Any]) -> None:
        index = piece.get("index")
        if not isinstance(index, int):  # a server that sends whole calls without an index
            same = [i for i, c in self.calls.items() if piece.get("id") and c["id"] == piece.get("id")]
            index = same[0] if same else len(self.calls) if piece.get("id") or n else n
        slot = self.calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if piece.get("id"):
            slot["id"] = str(piece["id"])
        fn = piece.get("function") if isinstance(piece.get("function"), dict) else piece
        name = str(fn.get("name") or "")
        if name and (not slot["function"]["name"] or name.startswith(slot["function"]["name"])):
            slot["function"]["name"] = name  # sent once, or repeated whole by some servers
        slot["function"]["arguments"] += _fragment(fn.get("arguments"))

    def reply(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        elif self.legacy["name"]:
            message["function_call"] = dict(self.legacy)
        return {"choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
                "usage": self.usage or {}}


def _fragment(args: Any) -> str:
    if args is None:
        return ""
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


class _LineLog:
    """Streamed text into the process log a line at a time: at each end of line, or in pieces
    cut at a space when a line grows past LOG_WIDTH or has waited LOG_EVERY seconds (a slow
    model still shows progress). Never one log line per token."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.buffer = ""
        self.since = time.monotonic()

    def feed(self, text: str) -> None:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._emit(line)
        while len(self.buffer) > LOG_WIDTH:
            cut = self.buffer.rfind(" ", 0, LOG_WIDTH)
            cut = cut if cut > 0 else LOG_WIDTH
            self._emit(self.buffer[:cut])
            self.buffer = self.buffer[cut:].lstrip(" ")

    def tick(self) -> None:
        if self.buffer and time.monotonic() - self.since >= LOG_EVERY and " " in self.buffer.strip():
            cut = self.buffer.rstrip().rfind(" ")
            self._emit(self.buffer[:cut])
            self.buffer = self.buffer[cut:].lstrip(" ")

    def close(self) -> None:
        if self.buffer.strip():
            self._emit(self.buffer)
        self.buffer = ""

    def _emit(self, line: str) -> None:
        self.since = time.monotonic()
        if line.strip():
            self.log(STREAM_PREFIX + line.rstrip())


def complete_text(settings: BackendSettings, system: str, user: str, *, check: Check, sleep: Sleep, log: Log,
                  off_slot: OffSlot = stay_on_slot, endpoints: Endpoints | None = None) -> tuple[str, Usage]:
    """One plain completion (no tools), for markdown prompt tools."""
    backend = OpenAIBackend(settings, endpoints)
    reply = backend.complete({"model": settings.model, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]}, check=check, sleep=sleep, log=log,
        off_slot=off_slot)
    try:
        content = _text_content(reply["choices"][0]["message"].get("content"))
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BackendError("the model's reply had no message") from None
    parsed = parse_text(content)
    return (parsed.final or content).strip(), _usage(reply)
