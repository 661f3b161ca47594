"""The `openai` backend: OpenAI-compatible chat completions over HTTP (stdlib urllib).

Works with api.openai.com and with local servers that speak the same API (llama.cpp, vLLM,
Ollama, LM Studio): `POST {base_url}/chat/completions`. Two ways to call tools:

* `native` (default): the tools go in the request's `tools`; calls come back in `tool_calls`
  and results go back as `tool` messages.
* `text`: the system prompt describes the LLMunix text formats (`TOOL_CALL:` / `PARAMETERS:` /
  `REASONING:`, or `<tool_call name="x">{json}</tool_call>` and `<final_answer>`), and results go
  back as user messages. Calls in `content` are read in native mode too.

The request runs on a helper thread while the agent's thread reaches a control point every
50 ms, so pause and kill act during a slow reply. A 429, a 5xx or a dropped connection is
retried up to `retries` times after `backoff * 2**attempt` seconds (or the server's
Retry-After, at most 60 s), sleeping pausably. Token usage comes from the reply's `usage`.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from typing import Any

from llmunix.agents.backend import BackendError, BackendSettings, Check, Decision, Log, Sleep, Turn, Usage
from llmunix.agents.parsing import ToolCall, parse_native, parse_text

POLL = 0.05
RETRY_AFTER_CAP = 60.0

TEXT_FORMAT_HELP = """\
To use a tool, write (one or more blocks):

TOOL_CALL: tool_name
PARAMETERS: {"param": "value"}
REASONING: why this call

or <tool_call name="tool_name">{"param": "value"}</tool_call>.
When the goal is achieved, write <final_answer>your answer</final_answer>."""


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

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
                if msg.get("tool_calls"):  # ids made up for calls the server gave none
                    msg["tool_calls"] = [
                        {**tc, "id": tc.get("id") or c.id} for tc, c in zip(msg["tool_calls"], d.calls, strict=False)]
                    native_ids = {tc["id"] for tc in msg["tool_calls"]}
                messages.append(msg)
            else:
                content = d.message if isinstance(d.message, str) else (d.message or {}).get("content")
                messages.append({"role": "assistant", "content": content or d.reasoning or ""})
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

    def decide(self, turn: Turn, *, check: Check, sleep: Sleep, log: Log) -> Decision:
        reply = self.complete(self.request_body(turn), check=check, sleep=sleep, log=log)
        usage_raw = reply.get("usage") or {}
        usage = Usage(int(usage_raw.get("prompt_tokens") or 0), int(usage_raw.get("completion_tokens") or 0))
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Decision("the model's reply had no choices", (ToolCall(
                "?", {}, "call_0", f"unusable reply (no choices): {json.dumps(reply)[:200]}"),), None, usage, None)
        message = choices[0].get("message") or {}
        if self.settings.tool_format == "native":
            parsed = parse_native(message)
        else:
            parsed = parse_text(message.get("content") or "")
        names = self._api_names(turn)
        calls = tuple(ToolCall(names.get(c.name, c.name), c.arguments, c.id, c.error) for c in parsed.calls)
        kept = {k: message[k] for k in ("role", "content", "tool_calls") if k in message}
        kept.setdefault("role", "assistant")
        return Decision(parsed.reasoning, calls, parsed.final, usage, kept)

    def complete(self, body: dict[str, Any], *, check: Check, sleep: Sleep, log: Log) -> dict[str, Any]:
        """POST the body; retry 429, 5xx and dropped connections; return the JSON reply."""
        s = self.settings
        url = f"{s.base_url}/chat/completions"
        if s.api_key is None and "api.openai.com" in s.base_url:
            raise BackendError(f"no API key: set {s.api_key_env} (or point LLMUNIX_LLM_BASE_URL at a local server)")
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        attempts = s.retries + 1
        for attempt in range(attempts):
            check()
            retry_after: float | None = None
            try:
                status, raw = self._post(url, data, headers, check)
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if (exc.code == 429 or exc.code >= 500) and attempt + 1 < attempts:
                    retry_after = _retry_after(exc)
                    problem = f"{exc.code} {exc.reason}"
                else:
                    raise BackendError(f"the LLM endpoint {url} answered {exc.code} {exc.reason}{detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if attempt + 1 >= attempts:
                    raise BackendError(f"cannot reach the LLM endpoint {url}: {reason} "
                                       f"(after {attempts} attempt{'s' if attempts > 1 else ''})") from None
                problem = str(reason)
            else:
                try:
                    reply = json.loads(raw)
                except ValueError:
                    raise BackendError(f"the LLM endpoint {url} answered {status} with something that is not "
                                       f"JSON: {raw[:120]!r}") from None
                if not isinstance(reply, dict):
                    raise BackendError(f"the LLM endpoint {url} answered with a JSON {type(reply).__name__}, "
                                       "not an object")
                return reply
            delay = min(RETRY_AFTER_CAP, retry_after if retry_after is not None else s.backoff * 2 ** attempt)
            log(f"LLM: {problem}; retrying in {delay:g}s (attempt {attempt + 2} of {attempts})")
            sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, url: str, data: bytes, headers: dict[str, str], check: Check) -> tuple[int, bytes]:
        """The HTTP request on a helper thread; this thread keeps reaching control points."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def fetch() -> None:
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.settings.timeout) as resp:  # noqa: S310 - the user's URL
                    box["result"] = (resp.status, resp.read())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=fetch, name="llmunix-llm-request", daemon=True).start()
        while not done.wait(POLL):
            check()  # a kill raises here; the helper thread ends on its own (timeout bounds it)
        if "error" in box:
            raise box["error"]
        return box["result"]


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except Exception:
        return ""
    try:
        msg = json.loads(body).get("error", {})
        text = msg.get("message") if isinstance(msg, dict) else str(msg)
    except (ValueError, AttributeError):
        text = body
    text = " ".join(str(text or "").split())[:200]
    return f": {text}" if text else ""


def complete_text(settings: BackendSettings, system: str, user: str, *, check: Check, sleep: Sleep,
                  log: Log) -> tuple[str, Usage]:
    """One plain completion (no tools), for markdown prompt tools."""
    backend = OpenAIBackend(settings)
    reply = backend.complete({"model": settings.model, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": user}]}, check=check, sleep=sleep, log=log)
    usage_raw = reply.get("usage") or {}
    try:
        content = reply["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BackendError("the model's reply had no message") from None
    parsed = parse_text(content)
    return (parsed.final or content).strip(), Usage(int(usage_raw.get("prompt_tokens") or 0),
                                                    int(usage_raw.get("completion_tokens") or 0))
