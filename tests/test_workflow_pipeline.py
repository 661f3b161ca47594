"""The shipped research pipeline: offline with its bundled documents, and end to end through the
real executable against a real HTTP server on localhost."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

from llmunix import Kernel
from llmunix.workflows.service import EXAMPLES
from tests.conftest import LLMUNIX

DOCS = EXAMPLES / "research-docs"


def test_every_shipped_example_is_valid(make_kernel):
    k = make_kernel()
    specs = {s.name: s for s in k.workflow_specs() if s.origin == "examples"}
    assert {"research-pipeline", "research-trace", "fan-out"} <= set(specs)
    assert {n: s.error for n, s in specs.items() if s.error} == {}


def test_research_pipeline_runs_offline_on_its_bundled_documents(tmp_path):
    with Kernel(tmp_path / "home", monitor=False) as k:
        pid = k.workflow_run("research-pipeline")
        [info] = k.wait([pid], timeout=30)
        assert info.state == "Completed", info.error
        report = Path(info.output["steps"]["report"]["path"])
        assert report.parent == tmp_path / "home" / "runs" / "001"
        text = report.read_text()
        for doc in sorted(DOCS.iterdir()):
            assert str(doc) in text  # every bundled document is a source
        assert "Not fetched" not in text
        for section in ("## Sources", "## Summaries by source", "## Overall summary", "## Statistics"):
            assert section in text
        fetched = info.output["steps"]["fetch"]
        assert len(fetched["documents"]) == 3 and fetched["failed"] == []


@pytest.fixture
def docs_server():
    handler = functools.partial(_QuietHandler, directory=str(DOCS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_research_pipeline_end_to_end_over_http(tmp_path, docs_server):
    urls = f"{docs_server}/process-scheduling.html,{docs_server}/llm-agents.md,{docs_server}/missing.html"
    out = tmp_path / "report.md"
    env = {**os.environ, "LLMUNIX_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [LLMUNIX, "-c", f"workflow run research-pipeline --input urls={urls} --input output={out} "
                        "--input sentences=2 --wait"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "[✓] Report: Completed" in done.stdout
    text = out.read_text()
    assert f"{docs_server}/process-scheduling.html" in text and "How an Operating System Schedules" in text
    assert f"{docs_server}/llm-agents.md" in text
    assert "Not fetched" in text and "missing.html" in text and "404" in text  # a partial failure is reported
    fetched = list((tmp_path / "home" / "runs" / "001" / "fetched").iterdir())
    assert len(fetched) == 2
