"""The `openai` backend against a local OpenAI-compatible server (real sockets on 127.0.0.1):
a multi-step tool-calling run with a 429 retry and a malformed reply, the text formats,
token usage as a process resource, and an endpoint that is not there."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llmunix import Kernel
from llmunix.agents import attach
from llmunix.config import Config, LlmConfig


class FakeLLM:
    """A scripted chat-completions server: each POST gets the next (status, body, headers)."""

    def __init__(self, script: list[tuple[int, Any, dict[str, str]]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                fake.requests.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
                fake.headers.append(dict(self.headers))
                status, body, headers = fake.script.pop(0) if fake.script else (500, {"error": "script over"}, {})
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tool_reply(*calls: tuple[str, str, str], usage: tuple[int, int] = (10, 5), content: str | None = None) -> Any:
    return (200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": content, "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls]}}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}, {})


def text_reply(content: str, usage: tuple[int, int] = (20, 8)) -> Any:
    return (200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                  "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}, {})


@pytest.fixture
def agent_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "notes.txt").write_text("Aging stops starvation. Preemption serves urgent work.\n")
    return tmp_path


def start(kernel: Kernel, url: str, **llm: Any):
    config = Config(llm=LlmConfig(base_url=url, backoff=0.01, timeout=5, **llm))
    return attach(kernel, config, env={"OPENAI_API_KEY": "sk-test-123"})


def test_a_multi_step_tool_calling_run_with_a_429_retry_and_a_malformed_reply(agent_home):
    fake = FakeLLM([
        (429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
        tool_reply(("c1", "read_file", '{"path": "notes.txt"}')),
        tool_reply(("c2", "write_file", '{"path": "out.md", "content": "broken')),  # malformed arguments
        tool_reply(("c3", "write_file", json.dumps({"path": "out.md", "content": 'Aging, "mostly".'})),
                   ("c4", "Bash", '{"cmd": "rm -rf /"}')),  # not granted to research-agent
        text_reply("Wrote out.md: aging stops starvation."),
    ])
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            tokens: list[dict[str, Any]] = []
            k.subscribe("process.tokens", lambda e: tokens.append(dict(e.data)))
            pid = service.run("research-agent", "Summarise the notes into out.md", backend="openai")
            info = k.wait([pid], timeout=20)[0]
            assert info.state == "Completed", info.error
            assert info.output["answer"] == "Wrote out.md: aging stops starvation."
            assert info.output["tokens"] == {"prompt_tokens": 50, "completion_tokens": 23, "total_tokens": 73}
            assert (agent_home / "workspace" / "out.md").read_text() == 'Aging, "mostly".'
            children = [i for i in k.ps(all=True) if i.parent == pid]
            assert [(c.name, c.state) for c in children] == [("read_file", "Completed"), ("write_file", "Completed")]
            checkpoint = info.context.intermediate_results["checkpoint"]
            assert checkpoint["tokens"]["total_tokens"] == 73
            assert [(a["tool"], a["status"]) for a in checkpoint["actions"]] == [
                ("read_file", "ok"), ("write_file", "failed"), ("write_file", "ok"), ("Bash", "failed")]
            k.flush()
            assert [t["total_tokens"] for t in tokens] == [15, 15, 15, 28]
            assert tokens[-1]["totals"]["total_tokens"] == 73
            log = "\n".join(line for _t, line in k.logs(pid))
            assert "LLM: 429 Too Many Requests; retrying in 0s (attempt 2 of 4)" in log
            run = service.memory.runs("research-agent")[-1]
            assert run.outcome == "Completed" and run.tokens == 73 and run.backend == "openai"
            assert any("malformed tool call" in e for e in run.errors)
    finally:
        fake.close()
    assert len(fake.requests) == 5
    first = fake.requests[1]["body"]
    assert first["model"] == "gpt-4o-mini" and fake.requests[1]["path"] == "/v1/chat/completions"
    assert {t["function"]["name"] for t in first["tools"]} == {"list_files", "grep", "read_file", "write_file"}
    read = next(t["function"] for t in first["tools"] if t["function"]["name"] == "read_file")
    assert read["parameters"]["properties"].keys() == {"path"}  # the agent chooses the workspace, not the model
    assert fake.headers[1]["Authorization"] == "Bearer sk-test-123"
    after_malformed = fake.requests[3]["body"]["messages"]
    tool_msgs = [m for m in after_malformed if m["role"] == "tool"]
    assert tool_msgs[0]["tool_call_id"] == "c1" and "Aging stops starvation" in tool_msgs[0]["content"]
    assert tool_msgs[1]["tool_call_id"] == "c2" and "malformed tool call" in tool_msgs[1]["content"]
    last = fake.requests[4]["body"]["messages"]
    assert "is not granted to research-agent" in last[-1]["content"]


def test_text_formats_through_the_openai_backend(agent_home):
    fake = FakeLLM([
        text_reply("TOOL_CALL: read_file\nPARAMETERS: path=\"notes.txt\"\nREASONING: read the notes first"),
        text_reply('<tool_call name="write_file">{"path": "short.md", "content": "Aging, briefly."}</tool_call>'),
        text_reply("<final_answer>Done, see short.md</final_answer>"),
    ])
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, tool_format="text")
            info = k.wait([service.run("summarization-agent", "Summarise notes.txt", backend="openai")], timeout=20)[0]
            assert info.state == "Completed", info.error
            assert info.output["answer"] == "Done, see short.md"
            assert (agent_home / "workspace" / "short.md").read_text() == "Aging, briefly."
    finally:
        fake.close()
    system = fake.requests[0]["body"]["messages"][0]["content"]
    assert "TOOL_CALL: tool_name" in system and "read_file(path: string)" in system
    assert "tools" not in fake.requests[0]["body"]
    assert fake.requests[1]["body"]["messages"][-1]["content"].startswith("Tool 'read_file' returned:\nAging")


def test_an_unreachable_endpoint_fails_the_agent_with_a_clear_error(agent_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
        service = start(k, f"http://127.0.0.1:{port}/v1", retries=1)
        info = k.wait([service.run("research-agent", "anything", backend="openai")], timeout=20)[0]
    assert info.state == "Failed"
    assert info.error.startswith(f"cannot reach the LLM endpoint http://127.0.0.1:{port}/v1/chat/completions")
    assert "(after 2 attempts)" in info.error


def test_a_refusing_endpoint_and_a_missing_key_are_reported(agent_home):
    fake = FakeLLM([(401, {"error": {"message": "bad key"}}, {})])
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            info = k.wait([service.run("research-agent", "anything", backend="openai")], timeout=20)[0]
            assert info.state == "Failed" and "answered 401 Unauthorized: bad key" in info.error
            no_key = attach(k, Config(), env={})
            info = k.wait([no_key.run("research-agent", "anything", backend="openai")], timeout=20)[0]
            assert info.state == "Failed" and "no API key: set OPENAI_API_KEY" in info.error
    finally:
        fake.close()


def test_environment_overrides_the_configuration():
    from llmunix.agents.backend import BackendSettings

    s = BackendSettings.from_config(Config(), {"LLMUNIX_LLM_BASE_URL": "http://localhost:8080/v1/",
                                               "LLMUNIX_LLM_MODEL": "qwen", "OPENAI_API_KEY": "k"})
    assert (s.base_url, s.model, s.api_key, s.backend) == ("http://localhost:8080/v1", "qwen", "k", "offline")
