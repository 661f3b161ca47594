"""The workspace file tools: they work inside the workspace and refuse every way out of it."""

from __future__ import annotations

import os

import pytest

WORKSPACE_PARAM = "workspace"


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "workspace"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.md").write_text("Alpha line\nscheduling is fair\n")
    (root / "docs" / "b.txt").write_text("nothing here\n")
    (root / ".hidden").write_text("secret scheduling\n")
    (tmp_path / "outside.txt").write_text("outside scheduling\n")
    return root


def run(kernel, tool, **params):
    return kernel.wait([kernel.spawn(tool, **params)], timeout=10)[0]


def test_read_write_list_and_grep_inside_the_workspace(make_kernel, ws):
    k = make_kernel()
    w = str(ws)
    assert run(k, "read_file", path="docs/a.md", workspace=w).output.startswith("Alpha")
    assert run(k, "read_file", path="workspace/docs/a.md", workspace=w).output.startswith("Alpha")  # LLMunix style
    written = run(k, "write_file", path="out/new.md", content="x, \"y\"", workspace=w)
    assert written.output == {"path": "out/new.md", "bytes": 6}
    assert (ws / "out" / "new.md").read_text() == 'x, "y"'
    run(k, "write_file", path="out/new.md", content="!", append=True, workspace=w)
    assert (ws / "out" / "new.md").read_text() == 'x, "y"!'
    assert run(k, "list_files", workspace=w).output == ["docs/a.md", "docs/b.txt", "out/new.md"]
    assert run(k, "list_files", path="docs", pattern="*.md", workspace=w).output == ["docs/a.md"]
    matches = run(k, "grep", pattern="schedul(er|ing)", workspace=w).output
    assert matches == [{"file": "docs/a.md", "line": 2, "text": "scheduling is fair"}]  # hidden files skipped


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "docs/../../outside.txt", "~/x"])
def test_paths_outside_the_workspace_are_refused(make_kernel, ws, path):
    k = make_kernel()
    for tool, extra in (("read_file", {}), ("write_file", {"content": "x"}), ("list_files", {}),
                        ("grep", {"pattern": "x"})):
        info = run(k, tool, path=path, workspace=str(ws), **extra)
        assert info.state == "Failed"
        assert "is outside the workspace" in info.error, (tool, info.error)
    assert not (ws.parent / "x").exists()


def test_symlinks_that_lead_out_are_refused_and_not_followed_by_listings(make_kernel, ws):
    os.symlink(ws.parent / "outside.txt", ws / "docs" / "link.txt")
    os.symlink(ws.parent, ws / "up")
    k = make_kernel()
    info = run(k, "read_file", path="docs/link.txt", workspace=str(ws))
    assert info.state == "Failed" and "outside the workspace" in info.error
    assert "docs/link.txt" not in run(k, "list_files", workspace=str(ws)).output
    assert all("outside" not in m["text"] for m in run(k, "grep", pattern="scheduling", workspace=str(ws)).output)


def test_clear_errors_for_missing_files_binary_files_and_bad_patterns(make_kernel, ws):
    (ws / "blob.bin").write_bytes(b"\x00\x01\x02")
    k = make_kernel()
    assert "no such file: nope.md" in run(k, "read_file", path="nope.md", workspace=str(ws)).error
    assert "binary file" in run(k, "read_file", path="blob.bin", workspace=str(ws)).error
    assert "is a directory" in run(k, "read_file", path="docs", workspace=str(ws)).error
    assert "bad pattern" in run(k, "grep", pattern="(", workspace=str(ws)).error


def test_the_default_workspace_comes_from_the_configuration(make_kernel, tmp_path, monkeypatch):
    from llmunix.config import Config, activate

    monkeypatch.chdir(tmp_path)
    activate(Config(workspace="area"))
    try:
        k = make_kernel()
        run(k, "write_file", path="f.txt", content="hi")
        assert (tmp_path / "area" / "f.txt").read_text() == "hi"
    finally:
        activate(None)
