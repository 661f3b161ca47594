"""The research tools: web_fetch against a real HTTP server on 127.0.0.1 (progress, partial
failure, timeouts, kill while a server is silent), the extractive summary and keywords on texts
whose answers follow from the scoring rules, the markdown report, and the whole chain
fetch → summarize → analyze → report passed along by hand."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmunix import Kernel
from llmunix.models import LlmunixError
from llmunix.tools import research
from llmunix.tools.text import (
    bigrams,
    html_to_text,
    keywords,
    select_sentences,
    split_sentences,
    summarize_corpus,
    summarize_text,
    text_stats,
)
from tests.conftest import WAIT, wait_phase

# Five sentences whose ranking follows from the rules in llmunix/tools/text.py. "scheduler",
# "process" and "queue" occur 3 times each (weight 1); every other content word once (1/3).
# Score = sum of distinct weights / sqrt(their number) x position bonus (1.2, 1.15, 1.1, 1.05, 1.0):
#   S0 ducks swim quiet ponds                        4/3 / 2      x 1.2  = 0.80
#   S1 scheduler moves process queue                 10/3 / 2     x 1.15 = 1.92  <- the best
#   S2 bread tastes best fresh                       4/3 / 2      x 1.1  = 0.73
#   S3 scheduler process queue three words ...text   13/3 / 2.65  x 1.05 = 1.72
#   S4 scheduler picks process queue                 10/3 / 2     x 1.0  = 1.67  but repeats S1 (3 of 4 words)
S0 = "Ducks swim on quiet ponds."
S1 = "The scheduler moves each process to the queue."
S2 = "Bread tastes best when fresh."
S3 = "Scheduler, process and queue: these three words dominate this text."
S4 = "A scheduler picks a process from the queue."
SCHEDULING = " ".join([S0, S1, S2, S3, S4])

# A second document: "agent" 3 times, "tool" twice; its best sentence is the one with both.
A0 = "Clouds drift over the hills."
A1 = "An agent calls a tool and the agent reads the tool output."
A2 = "Every agent stops eventually."
AGENTS = " ".join([A0, A1, A2])

PAGE = f"""<!DOCTYPE html><html><head><title>Scheduling &amp; queues</title>
<style>body {{ color: red }}</style><script>var secret = "do not index me";</script></head>
<body><h1>Scheduling</h1><p>{SCHEDULING}</p></body></html>"""


# ---------------------------------------------------------------------------------- a real server


class Site:
    """A ThreadingHTTPServer on an ephemeral port of 127.0.0.1 with a page, a text, a 404, a
    large body, a redirect to `localhost`, a response that stalls after its headers and one that
    stalls before them."""

    def __init__(self) -> None:
        self.release = threading.Event()  # lets stalled handlers finish (at teardown)
        self.stalled = threading.Event()  # a handler is holding a request open
        self.answered = threading.Event()  # a stalled handler let go (released, or its own WAIT ran out)
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                routes = {"/scheduling.html": ("text/html; charset=utf-8", PAGE.encode()),
                          "/agents.txt": ("text/plain", AGENTS.encode()),
                          "/big.txt": ("text/plain", b"x" * 5000)}
                if self.path in routes:
                    ctype, body = routes[self.path]
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/slow":  # headers and a little body, then silence
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"The start of a slow answer. ")
                    self.wfile.flush()
                    site.stalled.set()
                    site.release.wait(WAIT)
                    site.answered.set()
                elif self.path == "/away":  # a redirect to another host (the same server, by name)
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/agents.txt")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/stall":  # nothing at all until released
                    site.stalled.set()
                    site.release.wait(WAIT)
                    site.answered.set()
                else:
                    self.send_error(404, "Not Found")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


@pytest.fixture
def k(make_kernel) -> Kernel:
    return make_kernel(max_running=4)


def run(k: Kernel, tool: str, cwd: Path, **params: Any):
    pid = k.spawn(tool, cwd=str(cwd), params=params)
    [info] = k.wait([pid], timeout=WAIT)
    assert info.is_done
    return info


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- web_fetch


def test_web_fetch_saves_readable_text_and_records_status_bytes_time_and_progress(k, site, tmp_path):
    (tmp_path / "notes.md").write_text("# Local notes\n\nA local file is fetched too.\n")
    progress: list[str] = []
    k.subscribe("process.progress", lambda e: progress.append(e.data["message"]))
    urls = [site.url("/scheduling.html"), site.url("/agents.txt"), "notes.md"]
    info = run(k, "web_fetch", tmp_path, urls=urls, dest="run/docs")
    assert info.state == "Completed", info.error

    out = info.output
    assert [d["url"] for d in out["documents"]] == urls and out["failed"] == []
    page, text, local = out["documents"]
    assert (page["status"], page["content_type"], page["title"]) == (200, "text/html", "Scheduling & queues")
    assert page["bytes"] == len(PAGE.encode()) and text["bytes"] == len(AGENTS.encode())
    assert out["bytes"] == page["bytes"] + text["bytes"] + local["bytes"]
    assert all(0 <= d["seconds"] < 5 for d in out["documents"])
    assert (local["status"], local["title"], local["content_type"]) == (None, "Local notes", "text/markdown")

    saved = Path(page["path"])
    assert saved.parent == tmp_path / "run" / "docs" and saved.name.startswith("01-127.0.0.1")
    body = saved.read_text()
    assert S1 in body and "do not index me" not in body and "color: red" not in body
    assert Path(text["path"]).read_text() == AGENTS

    k.bus.flush()  # events reach subscribers on the bus's own thread
    assert [m for m in progress if m.startswith("fetching")] == [
        "fetching URL 1 of 3", "fetching URL 2 of 3", "fetching URL 3 of 3"]
    assert progress[-1] == "fetched 3 of 3 URLs"
    lines = [line for _, line in k.logs(info.pid)]
    assert any(line.startswith(f"{urls[0]}: 200, {page['bytes']} bytes in ") for line in lines)


def test_a_404_among_good_urls_is_listed_as_failed_and_the_rest_fetched(k, site, tmp_path):
    urls = [site.url("/agents.txt"), site.url("/missing"), site.url("/big.txt")]
    info = run(k, "web_fetch", tmp_path, urls=" ".join(urls), max_bytes=1000)  # a string of URLs
    assert info.state == "Completed", info.error
    assert [d["url"] for d in info.output["documents"]] == urls[:1]
    assert info.output["failed"] == [{"url": urls[1], "error": "HTTP 404 Not Found"},
                                     {"url": urls[2], "error": "larger than max_bytes=1000"}]
    assert Path(info.output["documents"][0]["path"]).parent == tmp_path / "fetched"  # the default dest


def test_when_every_url_fails_the_process_fails_with_one_line_naming_the_first(k, site, tmp_path):
    missing, refused = site.url("/missing"), f"http://127.0.0.1:{closed_port()}/"
    info = run(k, "web_fetch", tmp_path, urls=[missing, refused, "ftp://example.com/x", "nowhere.txt"])
    assert info.state == "Failed"
    assert info.error == f"could not fetch {missing}: HTTP 404 Not Found (and 3 more URLs failed; see the log)"
    logged = "\n".join(line for _, line in k.logs(info.pid))
    assert f"{refused}: failed: connection refused" in logged
    assert "ftp://example.com/x: failed: unsupported URL scheme 'ftp'; use http, https, file or a path" in logged
    assert f"nowhere.txt: failed: no such file {tmp_path / 'nowhere.txt'}" in logged


def test_a_server_that_goes_silent_times_out_and_the_other_urls_still_count(k, site, tmp_path):
    info = run(k, "web_fetch", tmp_path, urls=[site.url("/slow"), site.url("/agents.txt")], timeout=0.3)
    assert not site.answered.is_set()  # the fetch gave up on its own, while the server still held on
    assert info.state == "Completed", info.error
    assert info.output["failed"] == [{"url": site.url("/slow"), "error": "timed out after 0.3s"}]
    assert [d["url"] for d in info.output["documents"]] == [site.url("/agents.txt")]


def test_time_spent_paused_does_not_count_towards_the_timeout(k, site, tmp_path):
    t0 = time.monotonic()
    # params=: spawn has a `timeout` of its own (running time of the whole process)
    pid = k.spawn("web_fetch", cwd=str(tmp_path), params={"urls": [site.url("/slow")], "timeout": 0.4})
    assert site.stalled.wait(WAIT)
    k.pause(pid)
    wait_phase(k, pid, "paused")
    time.sleep(0.6)  # longer than the timeout: what is measured, not a synchronisation
    k.resume(pid)
    [info] = k.wait([pid], timeout=WAIT)
    assert info.error == "could not fetch " + site.url("/slow") + ": timed out after 0.4s"
    assert time.monotonic() - t0 >= 0.6 + 0.4 - 0.1  # paused 0.6 s, then ran until 0.4 s of running time


def test_kill_while_the_server_has_not_answered_ends_cancelled_at_once(k, site, tmp_path):
    pid = k.spawn("web_fetch", cwd=str(tmp_path), params={"urls": [site.url("/stall")], "timeout": 30})
    assert site.stalled.wait(WAIT)  # the request is in, and the server sits on it
    k.kill(pid)
    [info] = k.wait([pid], timeout=WAIT)
    assert info.state == "Cancelled"
    assert not site.answered.is_set()  # ended by the kill, not by the server finally letting go
    # The helper thread blocked in the socket is woken too (its socket is shut), not left behind.
    deadline = time.monotonic() + WAIT
    while any(t.name == f"llmunix-fetch-{pid}" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the fetch thread outlived the killed process"
        time.sleep(0.01)


def test_web_fetch_reads_a_directory_of_documents_and_rejects_bad_parameters(k, tmp_path):
    info = run(k, "web_fetch", tmp_path, urls=str(research.SAMPLE_DOCS))
    assert info.state == "Completed", info.error
    assert [Path(d["url"]).name for d in info.output["documents"]] == [
        "durable-workflows.txt", "llm-agents.md", "process-scheduling.html"]
    assert [d["title"] for d in info.output["documents"]] == [
        "Durable Workflows: Surviving Crashes Without Starting Over", "Language Model Agents",
        "How an Operating System Schedules Processes"]
    assert research.sample_documents() == [d["url"] for d in info.output["documents"]]
    assert run(k, "web_fetch", tmp_path, urls="").error.startswith("no URLs given")
    with pytest.raises(LlmunixError, match="parameter 'timeout' of tool 'web_fetch': Input should be greater than 0"):
        k.spawn("web_fetch", urls="x", params={"timeout": 0})  # refused before it starts: no PID


# ---------------------------------------------------------------------------------- text functions


def test_the_sentence_with_the_documents_main_words_is_the_one_sentence_summary():
    assert split_sentences(SCHEDULING) == [S0, S1, S2, S3, S4]
    assert select_sentences(SCHEDULING, 1) == [S1]
    assert select_sentences(SCHEDULING, 2) == [S1, S3]
    # S4 scores above S0 but repeats S1, so S0 takes the third place; the order is the text's.
    assert select_sentences(SCHEDULING, 3) == [S0, S1, S3]
    assert summarize_text(SCHEDULING, 2) == f"{S1} {S3}"
    assert select_sentences(SCHEDULING, 9) == [S0, S1, S2, S3, S4]
    backend = lambda text, n: f" {n} from {len(text)} "  # noqa: E731
    assert summarize_text(SCHEDULING, 2, backend=backend) == f"2 from {len(SCHEDULING)}"


def test_a_corpus_summary_hears_every_document_before_taking_seconds():
    assert select_sentences(AGENTS, 1) == [A1]
    assert summarize_corpus([SCHEDULING, AGENTS], 2) == f"{S1} {A1}"
    assert summarize_corpus([SCHEDULING, AGENTS], 3) == f"{S1} {S3} {A1}"


def test_sentences_split_at_ends_but_not_at_abbreviations_decimals_or_headings():
    text = "# Heading\n\nDr. Smith waits 3.5 seconds, e.g. Linux does. Then it runs!\n- an item\n- another"
    assert split_sentences(text) == ["Heading", "Dr. Smith waits 3.5 seconds, e.g. Linux does.", "Then it runs!",
                                     "an item", "another"]


def test_keywords_count_content_words_with_plurals_folded_and_ties_in_order_of_appearance():
    assert keywords(SCHEDULING, 3) == [("scheduler", 3), ("process", 3), ("queue", 3)]
    assert keywords("The queue grows. Queues shrink. Two queues merge.", 2) == [("queue", 3), ("grows", 1)]
    text = "The ready queue is short. A ready queue, queue time and a time slice. Time slice again; slice time."
    assert bigrams(text) == [("ready queue", 2), ("time slice", 2)]  # "queue time" crosses a comma


def test_text_statistics_count_words_sentences_and_diversity_but_not_headings_as_sentences():
    stats = text_stats("# The cat\n\nThe cat sat on the mat. The cat ran!")
    # words: the cat | the cat sat on the mat | the cat ran = 11; distinct: the cat sat on mat ran = 6
    assert (stats.words, stats.sentences, stats.avg_sentence_words) == (11, 2, 5.5)
    assert stats.lexical_diversity == round(6 / 11, 3) and stats.reading_minutes == 0.1
    both = text_stats(["One two three.", "Four five six seven."])
    assert (both.words, both.sentences, both.avg_sentence_words, both.lexical_diversity) == (7, 2, 3.5, 1.0)


def test_html_becomes_text_with_its_title_and_without_scripts_or_styles():
    title, text = html_to_text(PAGE)
    assert title == "Scheduling & queues"
    assert text == f"# Scheduling\n\n{SCHEDULING}"


# ---------------------------------------------------------------------------------- the tools


def test_summarize_takes_fetch_output_paths_or_text_and_reports_words(k, tmp_path):
    (tmp_path / "a.txt").write_text(SCHEDULING)
    (tmp_path / "b.txt").write_text(AGENTS)
    fetched = {"documents": [{"url": "http://x/a", "path": "a.txt", "title": "A"},
                             {"url": "http://x/b", "path": str(tmp_path / "b.txt"), "title": "B"}],
               "failed": [], "bytes": 1}
    info = run(k, "summarize", tmp_path, documents=fetched, sentences=1)
    assert info.state == "Completed", info.error
    out = info.output
    assert [(s["source"], s["title"], s["summary"], s["sentences"]) for s in out["summaries"]] == [
        ("http://x/a", "A", S1, 1), ("http://x/b", "B", A1, 1)]
    assert out["summary"] == S1  # one sentence: the best first sentence of all documents
    assert out["words_in"] == 36 + 21 and out["words_out"] == 8  # words of S0..S4, A0..A2; of S1

    by_path = run(k, "summarize", tmp_path, documents="a.txt b.txt", sentences=1).output
    assert [s["summary"] for s in by_path["summaries"]] == [S1, A1]
    by_text = run(k, "summarize", tmp_path, text=SCHEDULING, sentences=2).output
    assert by_text["summaries"][0]["source"] == "text" and by_text["summary"] == f"{S1} {S3}"

    assert run(k, "summarize", tmp_path).error.startswith("nothing to summarise: pass documents=")
    assert run(k, "summarize", tmp_path, documents=["gone.txt"]).error == (
        f"no such document 'gone.txt' (relative paths start at {tmp_path})")


def test_summarize_uses_a_summary_backend_when_one_is_set(k, tmp_path):
    research.set_summary_backend(lambda text, n: f"LLM summary of {len(text.split())} words in {n}")
    try:
        out = run(k, "summarize", tmp_path, text="one two three. four five.", sentences=2).output
    finally:
        research.set_summary_backend(None)
    assert out["summaries"][0]["summary"] == "LLM summary of 5 words in 2"
    assert research.summary_backend() is None


def test_analyze_given_summarize_output_reads_the_documents_that_were_summarised(k, tmp_path):
    (tmp_path / "a.txt").write_text(SCHEDULING)
    summary = run(k, "summarize", tmp_path, documents=["a.txt"], sentences=1).output
    info = run(k, "analyze", tmp_path, documents=summary, top=3)
    assert info.state == "Completed", info.error
    out = info.output
    assert (out["documents"], out["words"], out["sentences"]) == (1, 36, 5)
    assert out["keywords"] == [{"word": "scheduler", "count": 3}, {"word": "process", "count": 3},
                               {"word": "queue", "count": 3}]
    assert out["per_document"][0]["keywords"][:3] == ["scheduler", "process", "queue"]
    with pytest.raises(LlmunixError, match="parameter 'top' of tool 'analyze': Input should be greater than or equal"):
        k.spawn("analyze", text="x", top=0)


def test_report_writes_markdown_with_every_section_and_refuses_a_directory(k, tmp_path):
    sources = {"documents": [{"url": "http://x/a", "path": "/p", "bytes": 12345, "status": 200, "seconds": 0.25,
                              "content_type": "text/html", "title": "Pipes | filters"}],
               "failed": [{"url": "http://x/b", "error": "HTTP 404 Not Found"}], "bytes": 12345}
    summary = {"summaries": [{"source": "http://x/a", "title": "Pipes | filters", "summary": S1}],
               "summary": S1, "words_in": 40, "words_out": 8}
    analysis = {"documents": 1, "words": 40, "sentences": 5, "avg_sentence_words": 8.0, "reading_minutes": 0.2,
                "lexical_diversity": 0.75, "keywords": [{"word": "scheduler", "count": 3}],
                "bigrams": [{"phrase": "ready queue", "count": 2}]}
    info = run(k, "report", tmp_path, path="out/deep/report.md", title="Weekly research",
               summary=summary, analysis=analysis, sources=sources)
    assert info.state == "Completed", info.error
    path = tmp_path / "out" / "deep" / "report.md"
    text = path.read_text()
    assert info.output == {"path": str(path), "bytes": len(text.encode())}
    assert text.startswith("# Weekly research\n\nGenerated ")
    for section in ("## Sources", "## Summaries by source", "## Overall summary", "## Statistics", "## Keywords"):
        assert f"\n{section}\n" in text
    assert "| 1 | http://x/a | Pipes \\| filters | 200 | 12,345 | 0.250 s |" in text
    assert "- http://x/b: HTTP 404 Not Found" in text
    assert "| Words | 40 |" in text and "| scheduler | 3 |" in text and "ready queue (2)" in text
    assert text.index("## Summaries by source") < text.index("## Overall summary") < text.index("## Statistics")

    assert run(k, "report", tmp_path, path="out").error == (
        f"report path {tmp_path / 'out'} is a directory; give a file name such as {tmp_path / 'out' / 'report.md'}")


def test_the_research_chain_fetch_summarize_analyze_report_by_hand(k, site, tmp_path):
    urls = [site.url("/scheduling.html"), site.url("/agents.txt")]
    fetched = run(k, "web_fetch", tmp_path, urls=urls, dest="run-1/fetched")
    summary = run(k, "summarize", tmp_path, documents=fetched.output, sentences=1)
    analysis = run(k, "analyze", tmp_path, documents=summary.output, top=5)
    report = run(k, "report", tmp_path, path="run-1/report.md", summary=summary.output,
                 analysis=analysis.output, sources=fetched.output)
    assert [i.state for i in (fetched, summary, analysis, report)] == ["Completed"] * 4
    assert [s["summary"] for s in summary.output["summaries"]] == [S1, A1]
    assert analysis.output["documents"] == 2
    assert analysis.output["keywords"][0] == {"word": "scheduler", "count": 3}  # "agent" also 3, but later
    text = Path(report.output["path"]).read_text()
    assert f"| 1 | {urls[0]} | Scheduling & queues | 200 | {len(PAGE.encode()):,} |" in text
    assert S1 in text and A1 in text and "| agent | 3 |" in text


def test_web_fetch_host_breaker_opens_on_server_errors_not_on_404s(make_kernel):
    """Server errors count against the host's circuit breaker; once it is open the URL fails at
    once, without a request. A 404 is the request's fault and does not count."""
    import http.server
    import threading

    hits = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits["n"] += 1
            self.send_response(503 if self.path == "/down" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        k = make_kernel(breaker_threshold=2, breaker_cooldown=60)
        for _ in range(3):
            k.wait([k.spawn("web_fetch", params={"urls": f"{base}/missing"})], timeout=10)
        host = [b for b in k.breakers() if b.name.startswith("host:")]
        assert all(b.state == "closed" for b in host)
        infos = [k.wait([k.spawn("web_fetch", params={"urls": f"{base}/down"})], timeout=10)[0] for _ in range(3)]
        assert [i.state for i in infos] == ["Failed"] * 3
        assert "HTTP 503" in infos[0].error and "circuit open for host" in infos[2].error
        assert hits["n"] == 5  # the third /down never reached the server
    finally:
        server.shutdown()
        server.server_close()
