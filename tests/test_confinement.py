"""Agents are confined by capability: every tool an agent can be granted declares what it
touches, and under an agent (the `workspace` parameter set, as the agent loop does) its paths stay
in the workspace and its URLs in `agent_allowed_urls` (file:// never). write_file never writes
through a link planted where its temporary file or its file goes. The same tools still reach
anything when a person runs them."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LLMUNIX
from test_research_tools import Site

from llmunix import Kernel, LlmunixError, ProcessContext
from llmunix.config import Config, activate
from llmunix.models import ToolError
from llmunix.tools.files import write_atomic
from llmunix.tools.registry import REGISTRY, make_tool

SECRET = "the launch code is 0000\n"


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    ws = tmp_path / "workspace"
    (ws / "docs").mkdir(parents=True)
    (ws / "docs" / "inside.md").write_text("# Inside\n\nThe scheduler runs processes fairly. It ages them.\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    return {"root": tmp_path, "ws": ws, "outside": outside, "secret": secret}


@pytest.fixture(autouse=True)
def default_config() -> Iterator[None]:
    activate(None)
    yield
    activate(None)


@pytest.fixture
def make_kernel(make_kernel):
    """Refusals are many here: keep the tools' circuit breakers out of the way."""
    return lambda **kw: make_kernel(breaker_threshold=1000, **kw)


def as_agent(k: Kernel, tool: str, ws: Path, **params: Any) -> dict[str, Any]:
    """Run `tool` as the agent loop does: a child process, with the agent's workspace."""

    def agent(ctx: ProcessContext) -> dict[str, Any]:
        info = ctx.run(tool, params={**params, "workspace": str(ws)})
        return {"state": info.state, "error": info.error or "", "output": info.output}

    [info] = k.wait([k.spawn(agent)], timeout=30)
    assert info.state == "Completed", info.error
    return info.output


def as_person(k: Kernel, tool: str, cwd: Path, **params: Any):
    [info] = k.wait([k.spawn(tool, cwd=str(cwd), params=params)], timeout=30)
    return info


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()  # /agents.txt, and /away: a redirect to it on `localhost`
    yield s
    s.close()


# ---------------------------------------------------------------------------------- the escapes


def test_web_fetch_of_a_file_url_into_a_directory_outside_is_refused_under_an_agent(make_kernel, place):
    k = make_kernel()
    ws, outside, secret = place["ws"], place["outside"], place["secret"]
    got = as_agent(k, "web_fetch", ws, urls=f"file://{secret}", dest=str(outside / "x"))  # the call
    assert got["state"] == "Failed" and "file:// URLs are refused under an agent" in got["error"], got
    got = as_agent(k, "web_fetch", ws, urls="docs/inside.md", dest=str(outside / "x"))
    assert got["state"] == "Failed" and "outside the workspace" in got["error"], got
    for path in ("../secret.txt", str(secret), "~/.bashrc"):
        got = as_agent(k, "web_fetch", ws, urls=path)
        assert got["state"] == "Failed" and "outside the workspace" in got["error"], (path, got)
    assert list(outside.iterdir()) == [] and not (ws / "fetched").exists()
    ok = as_agent(k, "web_fetch", ws, urls="docs/inside.md")  # inside: fine, saved inside
    assert ok["state"] == "Completed", ok
    [doc] = ok["output"]["documents"]
    assert Path(doc["path"]).parent == ws / "fetched" and "fairly" in Path(doc["path"]).read_text()


def test_web_fetch_under_an_agent_fetches_only_allowed_urls_and_redirects(make_kernel, place, site):
    k = make_kernel()
    ws = place["ws"]
    got = as_agent(k, "web_fetch", ws, urls=site.url("/agents.txt"))
    assert got["state"] == "Failed" and "not in agent_allowed_urls (allowed: none)" in got["error"], got
    assert '"http://127.0.0.1"' in got["error"]  # says how to allow it
    activate(Config(agent_allowed_urls=[f"http://127.0.0.1:{site.server.server_address[1]}"]))
    ok = as_agent(k, "web_fetch", ws, urls=site.url("/agents.txt"))
    assert ok["state"] == "Completed", ok
    assert "agent" in Path(ok["output"]["documents"][0]["path"]).read_text()
    moved = as_agent(k, "web_fetch", ws, urls=site.url("/away"))  # to localhost: not allowed
    assert moved["state"] == "Failed" and "redirect refused" in moved["error"], moved
    activate(Config(agent_allowed_urls=["http://*"]))
    assert as_agent(k, "web_fetch", ws, urls=site.url("/away"))["state"] == "Completed"
    got = as_agent(k, "web_fetch", ws, urls=f"file://{place['secret']}")  # never, whatever the list
    assert got["state"] == "Failed" and "file://" in got["error"]


def test_summarize_and_analyze_of_files_outside_are_refused_under_an_agent(make_kernel, place):
    k = make_kernel()
    ws, secret = place["ws"], place["secret"]
    os.symlink(secret, ws / "docs" / "link.md")
    for tool in ("summarize", "analyze"):
        for documents in (str(secret), "../secret.txt", "..", "docs/link.md", [str(secret)],
                          {"documents": [{"url": "x", "path": str(secret)}]},
                          {"summaries": [{"path": str(secret), "summary": "s"}]}):
            got = as_agent(k, tool, ws, documents=documents)
            assert got["state"] == "Failed" and "outside the workspace" in got["error"], (tool, documents, got)
            assert "launch code" not in str(got["output"])
        ok = as_agent(k, tool, ws, documents="docs/inside.md")
        assert ok["state"] == "Completed" and "0000" not in str(ok["output"]), ok
    whole = as_agent(k, "summarize", ws, documents="docs")  # the link leading out is left out
    assert "fairly" in whole["output"]["summary"] and "launch" not in str(whole["output"])


def test_report_outside_the_workspace_is_refused_under_an_agent(make_kernel, place):
    k = make_kernel()
    ws, outside = place["ws"], place["outside"]
    for path in (str(outside / "r.md"), "../outside/r.md"):
        got = as_agent(k, "report", ws, path=path, summary="text")
        assert got["state"] == "Failed" and "outside the workspace" in got["error"], got
    assert list(outside.iterdir()) == []
    ok = as_agent(k, "report", ws, path="reports/r.md", summary="All good.")
    assert ok["state"] == "Completed" and (ws / "reports" / "r.md").read_text().startswith("# Research report")


def test_the_same_tools_still_reach_anything_when_a_person_runs_them(make_kernel, place):
    k = make_kernel()
    root, outside, secret = place["root"], place["outside"], place["secret"]
    fetched = as_person(k, "web_fetch", root, urls=f"file://{secret}", dest=str(outside / "x"))
    assert fetched.state == "Completed", fetched.error
    assert SECRET.strip() in (outside / "x" / "01-secret.txt").read_text()
    assert "launch code" in as_person(k, "summarize", root, documents=str(secret)).output["summary"]
    assert as_person(k, "analyze", root, documents="secret.txt").output["words"] == 5
    assert as_person(k, "report", root, path=str(outside / "r.md"), summary="s").state == "Completed"
    assert (outside / "r.md").exists()


def test_agents_refused_escapes_end_to_end(place, site):
    # Real agent runs of the offline backend, through the executable: the planner fills a
    # report's path with the file the goal names and web_fetch's urls with its URL.
    root, port = place["root"], site.server.server_address[1]
    (root / "agents").mkdir()
    (root / "agents" / "reporter.md").write_text("---\nname: reporter\ndescription: reports\ntools: report\n---\n")
    (root / "agents" / "fetcher.md").write_text("---\nname: fetcher\ndescription: fetches\ntools: WebFetch\n---\n")
    home = root / "home"

    def llmunix(*commands: str) -> subprocess.CompletedProcess[str]:
        args = [LLMUNIX, "--home", str(home)]
        for c in commands:
            args += ["-c", c]
        return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=60)

    run = llmunix('agent run reporter --goal "Report on ../outside/r.md"', "wait",
                  f'agent run fetcher --goal "Fetch {site.url("/agents.txt")}"', "wait", "ps -a")
    assert "Traceback" not in run.stderr, run.stderr
    rows = {line.split()[1]: line.split()[2] for line in run.stdout.splitlines()[-4:]}
    assert rows["report"] == "Failed" and rows["web_fetch"] == "Failed", run.stdout
    assert list(place["outside"].iterdir()) == []
    (home / "config.toml").write_text(f'agent_allowed_urls = ["http://127.0.0.1:{port}"]\n')
    again = llmunix(f'agent run fetcher --goal "Fetch {site.url("/agents.txt")}"', "wait", "ps -a")
    assert again.stdout.splitlines()[-1].split()[1:3] == ["web_fetch", "Completed"], again.stdout
    assert [p.name for p in (place["ws"] / "fetched").iterdir()] == [f"01-127.0.0.1-{port}-agents.txt"]
    show = llmunix("agent show fetcher")
    assert "WebFetch → web_fetch" in show.stdout, show.stdout


# ---------------------------------------------------------------------------------- write_file and links


def test_write_file_never_writes_through_a_planted_temporary_file_link(make_kernel, place):
    # The attack: `.out.md.llmunix-tmp` planted as a link to a file outside.
    ws, outside = place["ws"], place["outside"]
    victim = outside / "victim.txt"
    victim.write_text("untouched\n")
    os.symlink(victim, ws / ".out.md.llmunix-tmp")
    os.symlink(outside / "new.txt", ws / ".fresh.md.llmunix-tmp")  # a dangling one: would create a file
    k = make_kernel()
    for name in ("out.md", "fresh.md"):
        got = as_agent(k, "write_file", ws, path=name, content="agent words\n")
        assert got["state"] == "Completed", got
        assert not (ws / name).is_symlink() and (ws / name).read_text() == "agent words\n"
    assert victim.read_text() == "untouched\n" and not (outside / "new.txt").exists()
    assert sorted(p.name for p in ws.iterdir() if p.name.endswith(".llmunix-tmp")) == [
        ".fresh.md.llmunix-tmp", ".out.md.llmunix-tmp"]  # only the planted links: no temporary file left


def test_write_file_through_an_agent_run_end_to_end_ignores_the_planted_link(place):
    root, ws, outside = place["root"], place["ws"], place["outside"]
    (root / "agents").mkdir()
    (root / "agents" / "writer.md").write_text("---\nname: writer\ndescription: writes\ntools: Write\n---\n")
    victim = outside / "victim.txt"
    victim.write_text("untouched\n")
    os.symlink(victim, ws / ".out.md.llmunix-tmp")
    run = subprocess.run([LLMUNIX, "--home", str(root / "home"), "-c",
                          'agent run writer --goal "Write notes about scheduling into out.md"', "-c", "wait",
                          "-c", "ps -a"], cwd=root, capture_output=True, text=True, timeout=60)
    rows = {line.split()[1]: line.split()[2] for line in run.stdout.splitlines()[-2:]}
    assert run.returncode == 0 and rows == {"writer": "Completed", "write_file": "Completed"}, run.stdout + run.stderr
    assert victim.read_text() == "untouched\n"
    assert (ws / "out.md").is_file() and not (ws / "out.md").is_symlink()


def test_a_link_at_the_target_is_refused_when_it_leads_out(make_kernel, place):
    ws, outside = place["ws"], place["outside"]
    os.symlink(outside / "t.txt", ws / "out.md")
    k = make_kernel()
    got = as_agent(k, "write_file", ws, path="out.md", content="x")
    assert got["state"] == "Failed" and "outside the workspace" in got["error"]
    assert not (outside / "t.txt").exists()


def test_a_directory_swapped_for_a_link_after_the_check_is_refused(place):
    ws, outside = place["ws"], place["outside"]
    os.symlink(outside, ws / "sub")  # as if swapped in after confine() resolved ws/sub/f.txt
    with pytest.raises(ToolError, match="not a directory inside the workspace"):
        write_atomic(ws, ws / "sub" / "f.txt", b"x")
    assert list(outside.iterdir()) == []


def test_written_files_keep_their_mode_and_new_ones_follow_the_umask(make_kernel, place):
    ws = place["ws"]
    k = make_kernel()
    old = os.umask(0o027)
    try:
        as_agent(k, "write_file", ws, path="new.md", content="a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((ws / "new.md").stat().st_mode) == 0o640
    (ws / "kept.md").write_text("a")
    os.chmod(ws / "kept.md", 0o604)
    as_agent(k, "write_file", ws, path="kept.md", content="b")
    assert stat.S_IMODE((ws / "kept.md").stat().st_mode) == 0o604 and (ws / "kept.md").read_text() == "b"


# ---------------------------------------------------------------------------------- the declaration


def test_every_built_in_tool_declares_what_it_touches():
    mine = {t.name for t in REGISTRY if t.func.__module__ in ("llmunix.tools.builtin", "llmunix.tools.files",
                                                                 "llmunix.tools.research")}
    assert len(mine) == 14  # edit_file too
    undeclared = [name for name in sorted(mine) if REGISTRY.get(name).touches is None]
    assert undeclared == [], undeclared
    confined = {t.name for t in REGISTRY if t.source == "builtin" and t.confinable}
    assert {"read_file", "write_file", "edit_file", "list_files", "grep", "web_fetch", "summarize", "analyze", "report",
            "sleep", "echo"} <= confined
    assert not REGISTRY.get("shell").confinable  # "anything": only with allow_shell_tools
    for t in REGISTRY:
        if t.touches and any(e.startswith(("paths:", "urls:")) for e in t.touches):
            assert any(p.name == "workspace" for p in t.params), t.name


def test_a_declaration_that_could_not_be_confined_is_refused_at_registration():
    def no_workspace(ctx: ProcessContext, path: str) -> None: ...

    def fine(ctx: ProcessContext, path: str, workspace: str = "") -> None: ...

    with pytest.raises(LlmunixError, match="no 'workspace' parameter"):
        make_tool(no_workspace, touches=("paths:path",))
    with pytest.raises(LlmunixError, match="has no parameter 'dest'"):
        make_tool(fine, touches=("paths:dest",))
    with pytest.raises(LlmunixError, match="is not 'paths:PARAM'"):
        make_tool(fine, touches=("files:path",))
    assert make_tool(fine, touches=("paths:path",)).confinable
    assert make_tool(fine).touches is None and not make_tool(fine).confinable
    assert not make_tool(fine, touches=("anything",)).confinable
