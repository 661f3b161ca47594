"""The `openai` backend against a local OpenAI-compatible server (real sockets on 127.0.0.1):
a multi-step tool-calling run with a 429 retry and a malformed reply, the text formats,
token usage as a process resource, and an endpoint that is not there. The fake server replays
the quirks of the servers people run (llama.cpp, vLLM, Ollama): a duplicate `function_call`,
refusing null content, SSE streaming, 429/503 with Retry-After, a full context, a bad key, a
missing model — each one a regression test, some end to end through the executable."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
from conftest import LLMUNIX, _wait_until
from fake_llm import FakeLLM, sse_chunks, text_reply, tool_reply

from commands.base import plain_text
from commands.views import ps_tree
from llmunix import Kernel
from llmunix.agents import attach
from llmunix.config import Config, LlmConfig
from llmunix.models import LlmunixError


@pytest.fixture
def agent_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "notes.txt").write_text("Aging stops starvation. Preemption serves urgent work.\n")
    return tmp_path


def start(kernel: Kernel, url: str, **llm: Any):
    config = Config(llm=LlmConfig(**{"base_url": url, "backoff": 0.01, "timeout": 5, **llm}))
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
            assert "LLM: 429 Too Many Requests (slow down); retrying in 0s (attempt 2 of 4)" in log
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


# ---------------------------------------------------------------------------- the quirks of real servers


def children_of(k: Kernel, pid: int) -> list[tuple[str, str]]:
    return [(c.name, c.state) for c in k.ps(all=True) if c.parent == pid]


@pytest.mark.parametrize("legacy", ["copy", "empty", "name:"])
def test_a_duplicate_function_call_never_runs_a_tool_twice_and_round_two_sends_empty_content(agent_home, legacy):
    """llama.cpp's server answers with `tool_calls` and a `function_call` copy (sometimes with
    an empty or "name:" name), and refuses `"content": null` in the next request (HTTP 500)."""
    fake = FakeLLM([
        tool_reply(("c1", "read_file", '{"path": "notes.txt"}'), ("c2", "list_files", "{}"), legacy=legacy),
        tool_reply(("c3", "write_file", {"path": "out.md", "content": "Aging."}), legacy=legacy),  # an object
        text_reply("Done."),
    ], strict=True)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            pid = service.run("research-agent", "Read the notes, write out.md", backend="openai")
            info = k.wait([pid], timeout=20)[0]
            assert info.state == "Completed", info.error
            assert children_of(k, pid) == [("read_file", "Completed"), ("list_files", "Completed"),
                                           ("write_file", "Completed")]
            actions = info.context.intermediate_results["checkpoint"]["actions"]
            assert [(a["iteration"], a["tool"], a["status"]) for a in actions] == [
                (1, "read_file", "ok"), (1, "list_files", "ok"), (2, "write_file", "ok")]  # no "?" call
            assert (agent_home / "workspace" / "out.md").read_text() == "Aging."
            # Two calls in one round are numbered 1. and 2. (not both "1."), three in all.
            tree = plain_text(ps_tree(info))
            assert "Actions: 3" in tree
            numbered = [line.split("✓ ")[1].split(" {")[0] for line in tree.splitlines() if "✓ " in line]
            assert numbered == ["1. read_file", "2. list_files", "3. write_file"]
    finally:
        fake.close()
    assert len(fake.requests) == 3  # the strict server refused nothing
    second = fake.requests[1]["body"]["messages"]
    echoed = [m for m in second if m["role"] == "assistant"]
    assert echoed[0]["content"] == "" and "function_call" not in echoed[0]
    assert [tc["id"] for tc in echoed[0]["tool_calls"]] == ["c1", "c2"]
    assert [m["tool_call_id"] for m in second if m["role"] == "tool"] == ["c1", "c2"]
    third = fake.requests[2]["body"]["messages"]
    write = [m for m in third if m["role"] == "assistant"][-1]["tool_calls"][0]["function"]
    assert json.loads(write["arguments"]) == {"path": "out.md", "content": "Aging."}  # echoed as a JSON string


def test_the_strict_server_really_refuses_null_content(agent_home):
    """The fake's strictness is real: a request with null content gets llama.cpp's 500."""
    import urllib.error
    import urllib.request

    fake = FakeLLM([text_reply("never")], strict=True)
    try:
        req = urllib.request.Request(f"{fake.url}/chat/completions", method="POST", data=json.dumps(
            {"model": "m", "messages": [{"role": "assistant", "content": None}]}).encode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 500 and len(json.loads(err.value.read())["detail"]) == 7
    finally:
        fake.close()


def test_429_and_503_honour_retry_after(agent_home):
    fake = FakeLLM([
        (429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"}),
        (503, {"error": "loading model"}, {"Retry-After": email.utils.formatdate(time.time() - 5, usegmt=True)}),
        text_reply("Fine."),
    ])
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, backoff=30)  # the server's Retry-After wins over the backoff
            pid = service.run("research-agent", "anything", backend="openai")
            info = k.wait([pid], timeout=20)[0]
            assert info.state == "Completed", info.error
            log = [line for _t, line in k.logs(pid)]
    finally:
        fake.close()
    assert log == ["LLM: 429 Too Many Requests (rate limited); retrying in 1s (attempt 2 of 4)",
                   "LLM: 503 Service Unavailable (loading model); retrying in 0s (attempt 3 of 4)"]


def test_retry_after_as_seconds_or_an_http_date():
    import email.message
    import urllib.error

    from llmunix.agents.openai_backend import _retry_after

    def error(value: str | None) -> urllib.error.HTTPError:
        headers = email.message.Message()
        if value is not None:
            headers["Retry-After"] = value
        return urllib.error.HTTPError("http://x", 429, "Too Many Requests", headers, None)

    assert _retry_after(error("7")) == 7.0
    assert _retry_after(error("1.5")) == 1.5
    in_a_minute = _retry_after(error(email.utils.formatdate(time.time() + 60, usegmt=True)))
    assert in_a_minute is not None and 55 <= in_a_minute <= 60
    assert _retry_after(error("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # in the past: at once
    assert _retry_after(error("soon")) is None and _retry_after(error(None)) is None


@pytest.mark.parametrize(("status", "body", "fragments"), [
    (400, {"error": {"code": 400, "type": "exceed_context_size_error",
                     "message": "the request exceeds the available context size, try increasing it"}},
     ["the conversation no longer fits the model's context (gpt-4o-mini at ",
      "answered 400 Bad Request: the request exceeds the available context size, try increasing it); "
      "allow fewer rounds (--max-iterations) or use a model with a longer context"]),
    (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you "
           "requested 5012 tokens (4500 in the messages, 512 in the completion).", "code": 400},
     ["no longer fits the model's context", "maximum context length is 4096 tokens"]),
    (401, {"error": {"message": "Incorrect API key provided: sk-test-123"}},
     ["answered 401 Unauthorized: Incorrect API key provided", "check the API key (the key in $OPENAI_API_KEY)"]),
    (403, {"error": "forbidden for this project"},
     ["answered 403 Forbidden: forbidden for this project; check the API key"]),
    (404, {"error": {"message": "model \"gpt-4o-mini\" not found, try pulling it first", "type": "api_error"}},
     ["answered 404 Not Found: model \"gpt-4o-mini\" not found, try pulling it first; is the model 'gpt-4o-mini' "
      "served there"]),
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]},
     ["answered 422 Unprocessable Entity: 1 validation error: body.messages: field required"]),
])
def test_refusals_fail_at_once_with_one_line_and_the_servers_own_message(agent_home, status, body, fragments):
    fake = FakeLLM([(status, body, {})])
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            info = k.wait([service.run("research-agent", "anything", backend="openai")], timeout=20)[0]
    finally:
        fake.close()
    assert info.state == "Failed"
    assert "\n" not in info.error
    for fragment in fragments:
        assert fragment in info.error
    assert len(fake.requests) == 1  # not retried


def test_a_streamed_reply_reaches_the_log_as_it_arrives_and_its_first_token_time_is_kept(agent_home, wait_until):
    fake = FakeLLM([
        tool_reply(("c1", "read_file", '{"path": "notes.txt"}'), ("c2", "grep", '{"pattern": "aging|starv"}'),
                   content="I will read the notes first.\nThen search them.", usage=(40, 12)),
        text_reply("Aging stops starvation, says notes.txt.", usage=(90, 9)),
    ], hold_after=7)  # the role chunk, the first line word by word (its end in "first.\nThen "): then it waits
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, stream=True)
            pid = service.run("research-agent", "What stops starvation?", backend="openai")
            assert fake.holding.wait(10)

            def logged() -> list[str]:
                return [line for _t, line in k.logs(pid)]

            wait_until(lambda: "» I will read the notes first." in logged(), message="the first streamed line")
            assert logged() == ["» I will read the notes first."]  # the first line, while the rest is held
            assert not k.info(pid).is_done
            fake.release()
            info = k.wait([pid], timeout=20)[0]
            assert info.state == "Completed", info.error
            assert info.output["answer"] == "Aging stops starvation, says notes.txt."
            assert info.output["tokens"] == {"prompt_tokens": 130, "completion_tokens": 21, "total_tokens": 151}
            assert children_of(k, pid) == [("read_file", "Completed"), ("grep", "Completed")]
            log = logged()
            transcript = info.context.intermediate_results["checkpoint"]["transcript"]
    finally:
        fake.close()
    assert log[:2] == ["» I will read the notes first.", "» Then search them."]
    assert log[2].startswith("LLM: first token after ") and "s, reply in " in log[2]
    assert log[3] == "» Aging stops starvation, says notes.txt."
    timing = transcript[0]["decision"]["timing"]
    assert timing["stream"] is True and 0 <= timing["ttft"] <= timing["seconds"]
    body = fake.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_streamed_pieces_assemble_into_the_reply_a_plain_request_gets():
    from llmunix.agents.openai_backend import _StreamedReply

    status, reply, _h = tool_reply(("c1", "write_file", json.dumps({"path": "a, b.md", "content": "x\ny"})),
                                   ("c2", "read_file", {"path": "n.txt"}), content="Writing.", usage=(3, 4))
    stream = _StreamedReply("http://x")
    for chunk in sse_chunks(reply, usage=True):
        stream.feed(f"data: {json.dumps(chunk)}\n")
    stream.feed("data: [DONE]\n")
    got = stream.reply()
    message = got["choices"][0]["message"]
    assert message["content"] == "Writing."
    assert [(tc["id"], tc["function"]["name"], json.loads(tc["function"]["arguments"]))
            for tc in message["tool_calls"]] == [("c1", "write_file", {"path": "a, b.md", "content": "x\ny"}),
                                                 ("c2", "read_file", {"path": "n.txt"})]
    assert got["usage"]["total_tokens"] == 7 and got["choices"][0]["finish_reason"] == "tool_calls"
    assert stream.first_token is not None


def test_interop_end_to_end_through_the_executable(agent_home):
    """`agent run --backend openai` from `llmunix -c` against a strict, streaming server that
    sends duplicate function calls: each tool runs once, the run completes, `ps -l` numbers the
    parallel calls, `log` has the streamed text."""
    fake = FakeLLM([
        tool_reply(("c1", "read_file", '{"path": "notes.txt"}'), ("c2", "list_files", {}), legacy="name:",
                   content="Reading first."),
        text_reply("Preemption serves urgent work."),
    ], strict=True)
    env = {**os.environ, "LLMUNIX_HOME": str(agent_home / "home"), "NO_COLOR": "1", "OPENAI_API_KEY": "sk-local",
           "LLMUNIX_LLM_BASE_URL": fake.url, "LLMUNIX_LLM_STREAM": "1"}
    try:
        r = subprocess.run([LLMUNIX, "-c", 'agent run research-agent --goal "What serves urgent work?" '
                            "--backend openai", "-c", "wait", "-c", "ps -a", "-c", "ps -l 1", "-c", "log 1"],
                           capture_output=True, text=True, env=env, cwd=agent_home, timeout=60)
    finally:
        fake.close()
    assert r.returncode == 0, r.stderr
    rows = [line.split()[:3] for line in r.stdout.splitlines() if line[:3].isdigit() and len(line.split()) > 3]
    assert [row for row in rows if row[0] != "001"] == [["002", "read_file", "Completed"],
                                                        ["003", "list_files", "Completed"]]
    assert "Actions: 2" in r.stdout
    assert "✓ 1. read_file" in r.stdout and "✓ 2. list_files" in r.stdout
    assert "» Reading first." in r.stdout and "LLM: first token after" in r.stdout
    assert "malformed" not in r.stdout and "?" not in [row[1] for row in rows]
    assert all(m["content"] is not None for req in fake.requests for m in req["body"]["messages"])


def test_a_refusal_end_to_end_is_one_line_in_ps_and_a_failed_wait(agent_home):
    fake = FakeLLM([(404, {"error": {"message": "model 'qwen9' not found"}}, {})])
    env = {**os.environ, "LLMUNIX_HOME": str(agent_home / "home"), "NO_COLOR": "1", "LLMUNIX_LLM_BASE_URL": fake.url}
    env.pop("OPENAI_API_KEY", None)
    try:
        r = subprocess.run([LLMUNIX, "-c", 'agent run research-agent --goal "x" --backend openai', "-c", "wait",
                            "-c", "ps -l 1"], capture_output=True, text=True, env=env, cwd=agent_home, timeout=60)
    finally:
        fake.close()
    assert r.returncode == 1
    assert r.stderr.strip() == "wait: 1 of 1 processes did not complete: 001 Failed" or \
        r.stderr.strip().startswith("wait: 1 of 1 processes did not complete")
    assert "answered 404 Not Found: model 'qwen9' not found; is the model 'gpt-4o-mini' served there" in r.stdout


def test_a_call_written_for_claude_codes_tools_runs_the_built_in_with_its_parameter_names(agent_home):
    """A model that knows Claude Code writes `Write` with `file_path`: one mapping (the one
    workflows use) makes it write_file with `path`."""
    fake = FakeLLM([
        text_reply('TOOL_CALL: Write\nPARAMETERS: {"file_path": "claude.md", "content": "From Claude."}'),
        text_reply("<final_answer>Written.</final_answer>"),
    ])
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, tool_format="text")
            pid = service.run("summarization-agent", "Write claude.md", backend="openai")
            info = k.wait([pid], timeout=20)[0]
            assert info.state == "Completed", info.error
            assert children_of(k, pid) == [("write_file", "Completed")]
    finally:
        fake.close()
    assert (agent_home / "workspace" / "claude.md").read_text() == "From Claude."


def test_kill_reaches_an_agent_in_the_middle_of_a_streamed_reply_and_hangs_up(agent_home, wait_until):
    """Killed mid-stream, the agent ends at once and the connection is shut down, so the server
    stops generating (with a 30 s timeout, a connection merely left to time out would still be
    open when the server sends its next chunk)."""
    fake = FakeLLM([text_reply("One line.\nAnd a second line that never comes.")], hold_after=3)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, stream=True, timeout=30)
            pid = service.run("research-agent", "anything", backend="openai")
            assert fake.holding.wait(10)
            wait_until(lambda: [line for _t, line in k.logs(pid)] == ["» One line."], message="the first line")
            k.kill(pid)
            info = k.wait([pid], timeout=10)[0]
            assert info.state == "Cancelled"
            fake.release()
            assert fake.hung_up.wait(10), "the connection was left open"
    finally:
        fake.close()


# ---------------------------------------------------------------------------- model calls off-slot, endpoint limits

KEY_MODEL = "gpt-4o-mini"


def held(reply: Any = None) -> tuple[Any, Any, Any]:
    """A `respond` that answers each request only once `release` is set; `arrived` counts them."""
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def respond(body: dict[str, Any]) -> Any:
        arrived.release()
        assert release.wait(20)
        return reply or text_reply("Done.")

    return respond, release, arrived


def test_two_agents_wait_for_the_model_at_once_with_one_slot(agent_home, wait_until):
    """max_running=1, and yet both requests are in flight together: the server answers neither
    until both have arrived (a slot-bound model call would leave the second unsent for ever)."""
    both, release = threading.Barrier(2, timeout=15), threading.Event()

    def respond(body: dict[str, Any]) -> Any:
        both.wait()
        assert release.wait(20)
        return text_reply("Done.")

    fake = FakeLLM(respond=respond)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3, max_running=1) as k:
            service = start(k, fake.url, retries=0)
            pids = [service.run("research-agent", f"goal {i}", backend="openai") for i in range(2)]
            wait_until(lambda: fake.active == 2, message="both requests in flight")
            for pid in pids:
                info = k.info(pid)
                assert (info.phase, info.detail) == ("waiting", f"waiting for the model: {KEY_MODEL}")
                assert info.state == "Thinking"
            release.set()
            infos = k.wait(pids, timeout=20)
    finally:
        fake.close()
    assert [i.state for i in infos] == ["Completed", "Completed"], [i.error for i in infos]
    assert fake.peak == 2


def test_max_concurrent_one_serialises_requests_and_says_what_it_waits_for(agent_home, wait_until):
    respond, release, arrived = held()
    fake = FakeLLM(respond=respond)
    key = f"{fake.url}|{KEY_MODEL}"
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3, max_running=4) as k:
            service = start(k, fake.url, endpoints={key: {"max_concurrent": 1}})
            first = service.run("research-agent", "one", backend="openai")
            assert arrived.acquire(timeout=10)
            second = service.run("research-agent", "two", backend="openai")
            wait_until(lambda: k.info(second).detail == f"waiting for the endpoint: {key} (1 of 1 in flight)",
                       message="the second in the endpoint's line")
            assert k.info(second).phase == "waiting"
            [shown] = [e for e in service.endpoint_limits() if e.key == key]
            assert (shown.in_flight, shown.waiting, shown.limits.max_concurrent) == (1, 1, 1)
            release.set()
            infos = k.wait([first, second], timeout=20)
            [shown] = [e for e in service.endpoint_limits() if e.key == key]
    finally:
        fake.close()
    assert [i.state for i in infos] == ["Completed", "Completed"]
    assert fake.peak == 1 and (shown.in_flight, shown.waiting, shown.requests) == (0, 0, 2)


def test_a_429_with_retry_after_holds_the_whole_endpoint(agent_home, wait_until):
    calls = []

    def respond(body: dict[str, Any]) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return (429, {"error": {"message": "rate limited"}}, {"Retry-After": "2"})
        return text_reply("Done.")

    fake = FakeLLM(respond=respond)
    key = f"{fake.url}|{KEY_MODEL}"
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            first = service.run("research-agent", "one", backend="openai")
            wait_until(lambda: any("429" in line for _t, line in k.logs(first)), message="the 429")
            second = service.run("research-agent", "two", backend="openai")
            wait_until(lambda: k.info(second).detail.startswith(
                f"waiting for the endpoint: {key} (the server asked to wait "), message="the second held back")
            infos = k.wait([first, second], timeout=20)
    finally:
        fake.close()
    assert [i.state for i in infos] == ["Completed", "Completed"]
    assert len(calls) == 3 and min(calls[1:]) - calls[0] >= 1.9  # nobody sent before the Retry-After


def test_kill_reaches_an_agent_waiting_in_the_endpoints_line(agent_home, wait_until):
    fake = FakeLLM(respond=lambda body: text_reply("Done."))
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, endpoints={fake.url: {"requests_per_min": 1}})  # one model for all
            assert k.wait([service.run("research-agent", "one", backend="openai")], timeout=20)[0].state == "Completed"
            second = service.run("research-agent", "two", backend="openai")
            wait_until(lambda: k.info(second).detail.startswith(
                f"waiting for the endpoint: {fake.url} (requests_per_min 1: "), message="the bucket empty")
            k.kill(second)
            assert k.wait([second], timeout=5)[0].state == "Cancelled"
            [shown] = service.endpoint_limits()
    finally:
        fake.close()
    assert (shown.key, shown.waiting, shown.in_flight, shown.requests) == (fake.url, 0, 0, 1)
    wait_until(lambda: fake.served >= 1, message="the server to count its reply")  # (counted after sending it)
    assert fake.served == 1


def test_pause_during_a_slow_reply_shows_at_once_and_holds_the_reply(agent_home, wait_until):
    respond, release, arrived = held(tool_reply(("c1", "read_file", '{"path": "notes.txt"}')))
    fake = FakeLLM(respond=respond)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            pid = service.run("research-agent", "Read the notes", backend="openai")
            assert arrived.acquire(timeout=10)
            k.pause(pid)
            assert k.info(pid).phase == "paused"  # at once: it holds no slot while it waits
            release.set()
            wait_until(lambda: fake.served >= 1, message="the reply sent")
            assert k.info(pid).phase == "paused" and children_of(k, pid) == []  # no tool starts while paused
            fake.respond = lambda body: text_reply("The notes are read.")
            k.resume(pid)
            info = k.wait([pid], timeout=20)[0]
            assert info.state == "Completed", info.error
            assert children_of(k, pid) == [("read_file", "Completed")]
    finally:
        fake.close()


# ---------------------------------------------------------------------------- tokens, money, budgets

PRICES = {KEY_MODEL: {"input": 0.15, "output": 0.6}}  # USD per 1M tokens


def two_rounds(body: dict[str, Any]) -> Any:
    """Any conversation: first a read_file call (10 + 5 tokens), then a final answer (20 + 8)."""
    if any(m.get("role") == "assistant" for m in body["messages"]):
        return text_reply("The notes say aging stops starvation.")
    return tool_reply(("c1", "read_file", '{"path": "notes.txt"}'))


def test_a_token_budget_stops_the_agent_at_the_reply_that_exhausts_it(agent_home):
    fake = FakeLLM(respond=two_rounds)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, prices=PRICES)
            pid = service.run("research-agent", "Read the notes", backend="openai", max_tokens=20)
            info = k.wait([pid], timeout=20)[0]
            usage = service.usage([pid])[pid]
            children = children_of(k, pid)
    finally:
        fake.close()
    assert (info.state, info.error) == ("Failed", "token budget exhausted: 43 of 20")
    assert children == [("read_file", "Completed")]
    assert (usage.own.calls, usage.own.total_tokens, usage.budget.max_tokens) == (2, 43, 20)
    _wait_until(lambda: fake.served >= 2, message="the server to count its replies")  # (counted after sending)
    assert fake.served == 2  # nothing asked after the budget was gone


def test_a_cost_budget_needs_a_price_and_stops_past_it(agent_home):
    fake = FakeLLM(respond=two_rounds)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            unpriced = start(k, fake.url)
            with pytest.raises(LlmunixError, match=r"--max-cost needs a price for model 'gpt-4o-mini': add "
                                                   r"\[llm.prices.\"gpt-4o-mini\"\]"):
                unpriced.run("research-agent", "x", backend="openai", max_cost=0.01)
            service = start(k, fake.url, prices=PRICES)
            pid = service.run("research-agent", "Read the notes", backend="openai", max_cost=0.00001)
            info = k.wait([pid], timeout=20)[0]
    finally:
        fake.close()
    # 30 prompt tokens at $0.15/1M and 13 completion tokens at $0.60/1M: $0.0000123
    assert (info.state, info.error) == ("Failed", "cost budget exhausted: $0.0000123 of $0.00001")


WORKFLOW = {"name": "pair", "max_tokens": 60, "steps": [
    {"id": "a", "agent": "research-agent", "goal": "Read the notes"},
    {"id": "b", "agent": "research-agent", "goal": "Read the notes again", "needs": ["a"]}]}


def test_a_workflow_budget_covers_its_agents_and_stops_the_run(agent_home):
    """Two agent steps of 43 tokens each, one after the other, under a budget of 60: the second
    one's second reply takes the run to 86; the workflow fails, that step is cancelled."""
    from llmunix.workflows.spec import spec_from_data

    fake = FakeLLM(respond=two_rounds)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3, max_running=4) as k:
            service = start(k, fake.url, prices=PRICES, backend="openai")
            pid = k.workflow_run(spec_from_data(WORKFLOW))
            info = k.wait([pid], timeout=30)[0]
            steps = sorted((c.state, c.error or "") for c in k.ps(all=True) if c.parent == pid)
            usage = service.usage([pid])[pid]
            report = service.token_report()
    finally:
        fake.close()
    assert (info.state, info.error) == ("Failed", "token budget exhausted: 86 of 60")
    assert steps == [("Cancelled", f"parent {pid:03d} token budget exhausted: 86 of 60"), ("Completed", "")]
    assert (usage.own.calls, usage.total.calls, usage.total.total_tokens) == (0, 4, 86)
    [row] = report.processes
    assert (row.key, row.name, row.kind, row.usage.total_tokens) == (f"{pid:03d}", "pair", "workflow Failed", 86)
    [model] = report.models
    assert (model.key, model.name, model.usage.calls) == (KEY_MODEL, f"{fake.url}|{KEY_MODEL}", 4)
    assert model.usage.cost_text() == "$0.0000246"


def test_a_prompt_tool_counts_its_tokens_and_waits_off_slot(agent_home, wait_until):
    (agent_home / "tools").mkdir()
    (agent_home / "tools" / "brief-writer.md").write_text(
        "---\nname: brief-writer\ndescription: Writes a one-line brief\nparameters:\n  topic: string\n---\n"
        "Write a one-line brief about the topic.\n")
    respond, release, arrived = held(text_reply("Aging stops starvation.", usage=(40, 6)))
    fake = FakeLLM(respond=respond)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, backend="openai", prices=PRICES)
            pid = k.spawn("brief-writer", topic="aging")
            assert arrived.acquire(timeout=10)
            assert k.info(pid).detail == f"waiting for the model: {KEY_MODEL}"
            release.set()
            info = k.wait([pid], timeout=20)[0]
            usage = service.usage([pid])[pid]
    finally:
        fake.close()
    assert (info.state, info.output) == ("Completed", "Aging stops starvation.")
    assert (usage.own.calls, usage.own.prompt_tokens, usage.own.completion_tokens) == (1, 40, 6)


def test_stats_tokens_and_ps_l_show_the_roll_ups_and_earlier_sessions(agent_home, capsys):
    from conftest import Session

    fake = FakeLLM(respond=two_rounds)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url, prices=PRICES)
            pid = service.run("research-agent", "Read the notes", backend="openai", max_tokens=1000)
            assert k.wait([pid], timeout=20)[0].state == "Completed"
            sh = Session(k, capsys)
            live = sh.ok(f"ps -l {pid}")
            k.flush()
            with Kernel(agent_home / "home", monitor=False, read_only=True) as second:  # a second shell
                start(second, fake.url, prices=PRICES)
                read_only = Session(second, capsys).ok(f"ps -l {pid}")
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:  # a later session: the store
            start(k, fake.url, prices=PRICES)
            sh = Session(k, capsys)
            later = sh.ok(f"ps -l {pid}")
            stats = sh.ok("stats --tokens")
            as_json = json.loads(sh.ok("stats --tokens --json"))
            assert "-n goes with --tokens" in sh.bad("stats -n 3")
    finally:
        fake.close()
    for shown in (live, read_only, later):
        assert "Tokens: 43 (30 in, 13 out; 2 calls), $0.0000123" in shown
        assert "Budget: 1,000 tokens (used 43 tokens)" in shown
        assert "Backend: openai" in shown and "via openai" not in shown  # one Tokens line, not two
    lines = stats.splitlines()
    assert lines[0].split() == ["PID", "NAME", "KIND", "STATE", "CALLS", "INPUT", "OUTPUT", "TOTAL", "COST"]
    assert lines[1].split() == [f"{pid:03d}", "research-agent", "agent", "Completed", "2", "30", "13", "43",
                                "$0.0000123"]
    assert lines[3].split() == ["MODEL", "ENDPOINT", "CALLS", "INPUT", "OUTPUT", "TOTAL", "COST"]
    assert lines[4].split() == [KEY_MODEL, f"{fake.url}|{KEY_MODEL}", "2", "30", "13", "43", "$0.0000123"]
    assert lines[5].split() == ["TOTAL", "-", "2", "30", "13", "43", "$0.0000123"]
    assert as_json["total"] == {"calls": 2, "prompt_tokens": 30, "completion_tokens": 13, "total_tokens": 43,
                                "cost_usd": 0.0000123, "unpriced_tokens": 0}


def test_limits_shows_and_sets_endpoint_limits(agent_home, capsys):
    from conftest import Session

    with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
        start(k, "http://127.0.0.1:9/v1", endpoints={"http://127.0.0.1:9/v1|qwen": {"max_concurrent": 2}})
        sh = Session(k, capsys)
        out = sh.ok("limits").splitlines()
        at = out.index(next(line for line in out if line.startswith("ENDPOINT")))
        assert out[at].split() == ["ENDPOINT", "IN_FLIGHT", "WAITING", "REQUESTS/MIN", "LEFT", "TOKENS/MIN", "LEFT",
                                   "REQUESTS"]
        assert out[at + 1].split() == ["http://127.0.0.1:9/v1|qwen", "0/2", "0", "unlimited", "-", "unlimited", "-",
                                       "0"]
        sh.ok("limits --endpoint http://127.0.0.1:9/v1 requests_per_min=60 tokens_per_min=90k")
        data = json.loads(sh.ok("limits --json"))
        shown = {e["endpoint"]: e for e in data["endpoints"]}
        assert shown["http://127.0.0.1:9/v1"]["requests_per_min"] == 60
        assert shown["http://127.0.0.1:9/v1|qwen"]["max_concurrent"] == 2
        assert sh.bad("limits --endpoint http://127.0.0.1:9/v1 gpu=1") == \
            "limits: unknown endpoint limit 'gpu'; use max_concurrent, requests_per_min, tokens_per_min"
        assert "needs NAME=VALUE" in sh.bad("limits --endpoint http://127.0.0.1:9/v1")
        assert "bad endpoint 'ftp://x'" in sh.bad("limits --endpoint ftp://x max_concurrent=1")


def test_budgets_and_stats_tokens_end_to_end_through_the_executable(agent_home):
    """`agent run --max-tokens` and `run PROMPT_TOOL --max-tokens` from `llmunix -c`, with prices
    in config.toml: both fail with the budget's line, `ps -l` shows tokens, cost and budget,
    `stats --tokens` rolls them up, and a bad budget is one line."""
    (agent_home / "tools").mkdir()
    (agent_home / "tools" / "brief-writer.md").write_text(
        "---\nname: brief-writer\ndescription: Writes a one-line brief\nparameters:\n  topic: string\n---\n"
        "Write a one-line brief about the topic.\n")
    home = agent_home / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('[llm]\nbackend = "openai"\n\n[llm.prices."gpt-4o-mini"]\n'
                                      "input = 0.15\noutput = 0.60\n")

    def respond(body: dict[str, Any]) -> Any:
        if "one-line brief" in body["messages"][0]["content"]:
            return text_reply("Aging stops starvation.", usage=(40, 6))
        return two_rounds(body)

    fake = FakeLLM(respond=respond)
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1", "OPENAI_API_KEY": "sk-local",
           "LLMUNIX_LLM_BASE_URL": fake.url}
    try:
        r = subprocess.run([LLMUNIX, "-k", "-c", 'agent run research-agent --goal "Read the notes" --max-tokens 20',
                            "-c", "run brief-writer topic=aging --max-tokens 30", "-c", "wait", "-c", "ps -l 1",
                            "-c", "ps -l 2", "-c", "stats --tokens"],
                           capture_output=True, text=True, env=env, cwd=agent_home, timeout=60)
        bad = subprocess.run([LLMUNIX, "-c", "run brief-writer topic=x --max-cost free"],
                             capture_output=True, text=True, env=env, cwd=agent_home, timeout=60)
    finally:
        fake.close()
    assert r.returncode == 1, r.stderr  # `wait`: two processes did not complete
    out = r.stdout
    assert "State: Failed (token budget exhausted: 43 of 20)" in out
    assert "Tokens: 43 (30 in, 13 out; 2 calls), $0.0000123" in out
    assert "Budget: 20 tokens (used 43 tokens)" in out
    assert "State: Failed (token budget exhausted: 46 of 30)" in out
    assert "Tokens: 46 (40 in, 6 out; 1 call), $0.0000096" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["001"], ["002"])
            and len(line.split()) == 9}
    assert rows["001"] == ["001", "research-agent", "agent", "Failed", "2", "30", "13", "43", "$0.0000123"]
    assert rows["002"] == ["002", "brief-writer", "tool", "Failed", "1", "40", "6", "46", "$0.0000096"]
    assert any(line.split() == ["TOTAL", "-", "3", "70", "19", "89", "$0.0000219"] for line in out.splitlines())
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "run: bad cost budget 'free'; give US dollars > 0, e.g. --max-cost 0.50"


def test_a_recovered_agent_keeps_its_budget_and_what_it_had_used(agent_home, wait_until):
    """Interrupted while waiting for its second reply, an agent under --max-tokens 40 is
    recovered in a later session: the 15 tokens of its first reply (in the store) and its budget
    (the `process.budget` event) still count, so the second reply (28) stops it at 43 of 40."""
    calls: list[int] = []
    release = threading.Event()

    def respond(body: dict[str, Any]) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the second round in the first session: never answered in time
            release.wait(20)
        return two_rounds(body)

    fake = FakeLLM(respond=respond)
    try:
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            service = start(k, fake.url)
            pid = service.run("research-agent", "Read the notes", backend="openai", max_tokens=40)
            wait_until(lambda: len(calls) == 2, message="the second request")
        with Kernel(agent_home / "home", monitor=False, kill_grace=0.3) as k:
            assert k.info(pid).state == "Interrupted"
            start(k, fake.url)
            k.recover([pid])
            info = k.wait([pid], timeout=20)[0]
    finally:
        release.set()
        fake.close()
    assert (info.state, info.error) == ("Failed", "token budget exhausted: 43 of 40")
