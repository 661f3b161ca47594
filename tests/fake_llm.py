"""A local OpenAI-compatible chat-completions server for tests and bench/agents.py (real sockets
on 127.0.0.1): scripted replies, or replies made by a function of the request, after an optional
latency, with switchable quirks of the servers people run. Run as a script it serves until
killed and prints its URL on the first line:

    python tests/fake_llm.py --latency 1 --rounds 3     # every conversation ends after 3 replies
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any, dict[str, str]]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # a thousand clients connect at once (the default backlog is 5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (a kill): expected
            super().handle_error(request, client_address)


class FakeLLM:
    """A scripted chat-completions server: each POST gets the next (status, body, headers).

    Switchable behaviours, each a quirk of a real server:
    * `strict`: like llama-cpp-python's server, a request whose messages hold `"content": null`
      or tool-call arguments that are not a string is refused with HTTP 500 and validation errors;
    * `respond(body) -> (status, reply, headers)` answers instead of the script (bench: any number
      of conversations), and `latency` seconds pass before each answer (a model thinking);
    * `active`/`peak`: requests being answered now, and the most at once (max_concurrent tests);
    * a request with `"stream": true` gets its scripted 200 reply as server-sent events (content
      a word per chunk, tool-call arguments in fragments, usage in a last chunk of its own when
      `stream_options.include_usage` asks); with `hold_after=N` the server sends N chunks, then
      waits for `release()` before the rest (so a test can look at a half-streamed reply).
    """

    def __init__(self, script: list[Reply] | None = None, *, strict: bool = False, hold_after: int | None = None,
                 respond: Callable[[dict[str, Any]], Reply] | None = None, latency: float = 0.0,
                 record: bool = True) -> None:
        self.script = list(script or [])
        self.respond = respond
        self.latency = latency
        self.record = record
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.served = 0
        self.strict = strict
        self.hold_after = hold_after
        self.holding = threading.Event()
        self.released = threading.Event()
        self.hung_up = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with fake.lock:
                    fake.active += 1
                    fake.peak = max(fake.peak, fake.active)
                    if fake.record:
                        fake.requests.append({"path": self.path, "body": body})
                        fake.headers.append(dict(self.headers))
                try:
                    if fake.latency:
                        time.sleep(fake.latency)
                    self.answer(body)
                finally:
                    with fake.lock:
                        fake.active -= 1
                        fake.served += 1

            def answer(self, body: dict[str, Any]) -> None:
                refusal = fake.refuse(body)
                if refusal is None and fake.respond is not None:
                    refusal = fake.respond(body)
                with fake.lock:
                    status, reply, headers = refusal or (
                        fake.script.pop(0) if fake.script else (500, {"error": "script over"}, {}))
                if status == 200 and body.get("stream") and isinstance(reply, dict):
                    self.stream(reply, bool((body.get("stream_options") or {}).get("include_usage")))
                    return
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def stream(self, reply: dict[str, Any], usage: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for n, chunk in enumerate(sse_chunks(reply, usage)):
                        if fake.hold_after is not None and n == fake.hold_after:
                            fake.holding.set()
                            fake.released.wait(10)
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.hung_up.set()  # the client went away mid-stream

            def log_message(self, *args: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def refuse(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]] | None:
        """What llama-cpp-python's server says to a request its schema does not accept."""
        if not self.strict:
            return None
        errors = []
        for i, m in enumerate(body.get("messages", [])):
            if "content" in m and m["content"] is None:
                for kind in ("str", "list[...]", "ChatCompletionRequestSystemMessage", "UserMessage",
                             "FunctionMessage", "ToolMessage", "AssistantMessage.content"):
                    errors.append({"loc": ["body", "messages", i, kind], "msg": "Input should be a valid string"})
            for tc in m.get("tool_calls") or ():
                if not isinstance(tc.get("function", {}).get("arguments"), str):
                    errors.append({"loc": ["body", "messages", i, "tool_calls", "arguments"],
                                   "msg": "Input should be a valid string"})
        return (500, {"detail": errors}, {}) if errors else None

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def sse_chunks(reply: dict[str, Any], usage: bool) -> list[dict[str, Any]]:
    """A chat completion as the chunks a streaming server sends."""
    message = reply["choices"][0]["message"]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    text = message.get("content") or ""
    words = text.split(" ")
    for i, word in enumerate(words):
        piece = word if i == len(words) - 1 else word + " "
        if piece:
            chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
    for index, tc in enumerate(message.get("tool_calls") or ()):
        args = tc["function"]["arguments"]
        args = args if isinstance(args, str) else json.dumps(args)
        chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": tc["id"], "type": "function",
             "function": {"name": tc["function"]["name"], "arguments": ""}}]}}]})
        for start in range(0, len(args), 7):
            chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": index, "function": {"arguments": args[start:start + 7]}}]}}]})
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage and reply.get("usage"):
        chunks.append({**base, "choices": [], "usage": reply["usage"]})
    return chunks


def tool_reply(*calls: tuple[str, str, Any], usage: tuple[int, int] = (10, 5), content: str | None = None,
               legacy: str | None = None) -> Any:
    """A reply with native tool calls. `legacy`: also the deprecated `function_call`, as
    llama.cpp's server sends it: "copy" (of the first call), "empty" or "name:" (a broken copy)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}} for cid, name, args in calls]}
    if legacy == "copy":
        message["function_call"] = dict(message["tool_calls"][0]["function"])
    elif legacy is not None:
        message["function_call"] = {"name": "" if legacy == "empty" else legacy, "arguments": calls[0][2]}
    return (200, {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": message}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}, {})


def text_reply(content: str, usage: tuple[int, int] = (20, 8)) -> Any:
    return (200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                  "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}, {})


def rounds_reply(rounds: int, usage: tuple[int, int] = (100, 20), tool: str | None = "read_file",
                 arguments: str = '{"path": "doc.txt"}') -> Callable[[dict[str, Any]], Reply]:
    """A `respond` for any number of agents: each conversation gets `rounds - 1` replies that call
    `tool` once (None: that say nothing, so the agent asks again), then a final answer: an agent
    granted the tool makes `rounds` model calls."""
    def respond(body: dict[str, Any]) -> Reply:
        said = sum(1 for m in body.get("messages", ()) if m.get("role") == "assistant")
        if said + 1 >= rounds:
            return text_reply(f"Done after {said + 1} rounds.", usage)
        if tool is None:
            return text_reply("", usage)
        return tool_reply((f"call_{said + 1}", tool, arguments), usage=usage)
    return respond


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve fake chat completions until killed.")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each answer")
    parser.add_argument("--rounds", type=int, default=3, help="replies per conversation")
    parser.add_argument("--no-tools", action="store_true", help="rounds before the last call no tool")
    args = parser.parse_args()
    fake = FakeLLM(respond=rounds_reply(args.rounds, tool=None if args.no_tools else "read_file"),
                   latency=args.latency, record=False)
    print(fake.url, flush=True)
    try:
        for _line in sys.stdin:  # any line asks: print what was served
            print(json.dumps({"served": fake.served, "peak": fake.peak, "active": fake.active}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()


if __name__ == "__main__":
    main()
