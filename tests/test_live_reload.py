"""`tools reload`: user tools are loaded again without a restart. Running processes keep the code
they started with, new ones get the new code, a broken file is refused in one line and keeps its
old tools, a deleted tool goes (and a built-in it overrode comes back)."""

from __future__ import annotations

import json
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import Prompt, _wait_until, wait_phase

from commands.tools_views import shown_source
from llmunix.tools import loader
from llmunix.tools.registry import REGISTRY


@pytest.fixture
def sources(monkeypatch):
    """Fresh loader records, and every tool the test registered taken away afterwards (a
    built-in one it overrode comes back)."""
    import llmunix.tools.builtin  # noqa: F401 - registered before the snapshot: they are not the test's

    monkeypatch.setattr(loader, "SOURCES", loader.ToolSources())
    before = {name: REGISTRY.find(name) for name in REGISTRY.names()}
    yield loader.SOURCES
    for name in REGISTRY.names():
        t = REGISTRY.find(name)
        if t is not None and t is not before.get(name):
            REGISTRY.remove(name, t.source)


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def loaded_tools(tmp_path: Path) -> Path:
    """A tools directory with greet.py (v1: rl_greet, rl_extra), loaded as at start."""
    tools = tmp_path / "tools"
    tools.mkdir()
    write(tools / "greet.py", greet_v("v1"))
    assert loader.load_user_tools([tools]) == []
    return tools


def greet_v(version: str, *, extra: bool = True) -> str:
    body = f'''
        from llmunix import tool

        @tool
        def rl_greet(ctx, who: str = "world", gate: str = "") -> str:
            """Greet, after waiting for the file `gate` (if given) to exist."""
            import os
            while gate and not os.path.exists(gate):
                ctx.sleep(0.01)
            return "hello " + who + " {version}"
        '''
    if extra:
        body += '''
        @tool
        def rl_extra(ctx) -> str:
            return "extra"
        '''
    return body


def test_running_processes_keep_their_code_and_new_ones_get_the_new_code(sources, make_kernel, tmp_path):
    tools = loaded_tools(tmp_path)
    k = make_kernel()
    gate = tmp_path / "gate"
    old = k.spawn("rl_greet", gate=str(gate))
    wait_phase(k, old, "running")
    write(tools / "greet.py", greet_v("v2", extra=False))
    report = k.reload_tools()
    (source,) = report.sources
    assert (source.status, source.reloaded, source.removed) == ("reloaded", ("rl_greet",), ("rl_extra",))
    assert report.running_old == ((old, "rl_greet"),)
    new = k.spawn("rl_greet")
    gate.touch()
    assert [i.output for i in k.wait([old, new])] == ["hello world v1", "hello world v2"]
    with pytest.raises(Exception, match="unknown tool 'rl_extra'"):
        k.spawn("rl_extra")


def test_a_broken_file_is_refused_and_keeps_its_old_tools(sources, make_kernel, tmp_path):
    tools = loaded_tools(tmp_path)
    k = make_kernel()
    write(tools / "greet.py", greet_v("v2"))
    with open(tools / "greet.py", "a") as f:
        f.write("\nraise RuntimeError('half way')\n")  # its tools have registered by then
    report = k.reload_tools()
    (source,) = report.refused
    assert source.kept == ("rl_greet", "rl_extra")
    assert source.error.startswith("RuntimeError: half way (line ")
    assert k.wait([k.spawn("rl_greet")])[0].output == "hello world v1"  # nothing of the half-run v2
    write(tools / "greet.py", "def broken(:\n")
    assert k.reload_tools().refused[0].error.startswith("SyntaxError")
    write(tools / "greet.py", greet_v("v3"))
    assert k.reload_tools().sources[0].status == "reloaded"
    assert k.wait([k.spawn("rl_greet")])[0].output == "hello world v3"


def test_new_gone_and_unchanged_files_and_an_override_that_goes(sources, make_kernel, tmp_path):
    tools = loaded_tools(tmp_path)
    k = make_kernel()
    assert k.reload_tools().sources == () and k.reload_tools().unchanged == 1
    write(tools / "mine.py", '''
        from llmunix import tool

        @tool
        def echo(ctx, text: str = "") -> str:
            return "my echo: " + text
        ''')
    report = k.reload_tools()
    assert [(s.label, s.status, s.added) for s in report.sources] == [(str(tools / "mine.py"), "new", ("echo",))]
    assert k.wait([k.spawn("echo", text="x")])[0].output == "my echo: x"
    assert k.registry.get("echo").overrides == "builtin"
    (tools / "mine.py").unlink()
    report = k.reload_tools()
    assert [(s.status, s.removed) for s in report.sources] == [("gone", ("echo",))]
    assert k.registry.get("echo").source == "builtin"  # the built-in is back
    assert k.wait([k.spawn("echo", text="x")])[0].output == "x"


def test_markdown_tools_reload_too(sources, make_kernel, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    md = tools / "shout.md"
    md.write_text("---\nname: rl-shout\ndescription: Shout it.\n---\n\nSay {{text}} loudly.\n")
    loader.load_user_tools([tools])
    k = make_kernel()
    assert k.registry.get("rl-shout").description == "Shout it."
    md.write_text("---\nname: rl-shout\ndescription: Shout it louder.\n---\n\nSay {{text}} loudly!\n")
    report = k.reload_tools()
    assert [(s.status, s.reloaded) for s in report.sources] == [("reloaded", ("rl-shout",))]
    assert k.registry.get("rl-shout").description == "Shout it louder."
    md.unlink()
    assert [s.status for s in k.reload_tools().sources] == ["gone"]
    assert k.registry.find("rl-shout") is None


def test_a_named_module_is_run_again(sources, make_kernel, tmp_path, monkeypatch):
    write(tmp_path / "rl_mod.py", greet_v("m1", extra=False).replace("rl_greet", "rl_modgreet"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert loader.load_user_tools([], ["rl_mod"]) == []
    k = make_kernel()
    write(tmp_path / "rl_mod.py", greet_v("m2", extra=False).replace("rl_greet", "rl_modgreet"))
    (source,) = k.reload_tools().sources
    assert (source.label, source.status) == ("module rl_mod", "reloaded")
    assert k.wait([k.spawn("rl_modgreet")])[0].output == "hello world m2"


def test_tools_reload_in_the_shell_refuses_in_one_line_and_says_what_runs_old_code(sources, sh, tmp_path):
    tools = loaded_tools(tmp_path)
    gate = tmp_path / "gate"
    pid = sh.kernel.spawn("rl_greet", gate=str(gate))
    write(tools / "greet.py", greet_v("v2"))
    write(tools / "bad.py", "import nothing_by_this_name\n")
    line = sh.bad("tools reload")
    assert line.startswith(f"tools: refused {shown_source(str(tools / 'bad.py'))}: "
                           "ModuleNotFoundError: No module named 'nothing_by_this_name'")
    assert line.endswith("; nothing of it is loaded")
    (tools / "bad.py").unlink()
    write(tools / "greet.py", greet_v("v3"))
    out = sh.ok("tools reload")
    assert f"{shown_source(str(tools / 'greet.py'))}  reloaded  rl_greet, rl_extra" in out
    assert f"running processes keep the code they started with: {pid:03d} rl_greet" in out
    data = json.loads(sh.ok("tools reload --json"))
    assert data["sources"] == [] and data["unchanged"] == 1
    gate.touch()
    assert sh.kernel.wait([pid])[0].output == "hello world v1"


def test_e2e_reload_at_the_prompt(tmp_path):
    home = tmp_path / "home"
    (home / "tools").mkdir(parents=True)
    home.chmod(0o700)
    tool_file = home / "tools" / "greet.py"
    write(tool_file, greet_v("v1"))
    (tmp_path / "out").mkdir()
    gate = tmp_path / "gate"
    shell = Prompt(home, tmp_path / "out")
    try:
        assert shell.run(f"run rl_greet gate={gate}").strip() == "001"
        write(tool_file, greet_v("v2"))
        out = shell.run("tools reload")
        assert "reloaded  rl_greet, rl_extra" in out and "keep the code they started with: 001 rl_greet" in out
        assert shell.run("run rl_greet who=again").strip() == "002"
        write(tool_file, "def broken(:\n")
        refused = shell.run("tools reload").splitlines()[1].split(None, 2)
        assert refused[1:] == ["refused", refused[2]] and refused[2].startswith("rl_greet (kept), rl_extra (kept): Syn")
        assert shell.run("run rl_greet who=still").strip() == "003"
        gate.touch()
        shell.run("wait")
        outputs = {r["pid"]: r["output"] for r in json.loads(shell.run("ps -a --json"))}
        assert outputs == {1: "hello world v1", 2: "hello again v2", 3: "hello still v2"}
    finally:
        shell.close()


def test_a_stage_keeps_nothing_of_a_source_that_failed_and_registers_one_that_loaded():
    from llmunix.tools.registry import ToolRegistry, make_tool

    reg = ToolRegistry()

    def f(ctx):
        return 1

    with reg.staged() as stage:
        reg.register(make_tool(f, name="rl_a", source="x.py"))
        assert reg.find("rl_a") is None  # held back
    assert reg.find("rl_a") is None
    with reg.staged() as stage:
        reg.register(make_tool(f, name="rl_a", source="x.py"))
        stage.keep = True
    assert reg.find("rl_a").source == "x.py"
    done = threading.Event()

    def elsewhere():  # another thread's registrations are not this stage's
        reg.register(make_tool(f, name="rl_b", source="y.py"))
        done.set()

    with reg.staged():
        threading.Thread(target=elsewhere).start()
        _wait_until(done.is_set)
    assert reg.find("rl_b") is not None
