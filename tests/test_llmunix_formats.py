"""Every LLMunix definition loads as it is: one fixture per format of the project's history
(tests/fixtures/llmunix: agents and tools laid out as an LLMunix project keeps them;
tests/fixtures/traces: execution traces), bold-key headers with or without `- `, parameters as
lists of mappings, notes in tool lists, first-era prose agents, the trace details that refused
real files, the shared Claude Code mapping, discovery of a project's folders, and the
`agents --check`, `tools --check`, `workflow check` and `agents --paths` reports (cmd2 app and
the real executable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import LLMUNIX, Session

from llmunix import Kernel, LlmunixError
from llmunix.agents import attach
from llmunix.config import Config
from llmunix.tools.markdown import (
    AGENT,
    TOOL,
    DefinitionError,
    _as_names,
    claude_call,
    parse_definition,
)
from llmunix.tools.registry import REGISTRY
from llmunix.workflows.spec import SpecError, _step_refs, read_spec

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT = FIXTURES / "llmunix"
TRACES = FIXTURES / "traces"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory laid out as an LLMunix project (a copy of the fixtures), and the
    traces beside it (../traces: they are workflows, not agent definitions)."""
    shutil.copytree(PROJECT, tmp_path / "project")
    shutil.copytree(TRACES, tmp_path / "traces")
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


# ---------------------------------------------------------------------------- headers


def test_bold_key_headers_with_or_without_a_leading_dash():
    math = parse_definition(PROJECT / "components" / "agents" / "MathematicianAgent.md")
    assert (math.kind, math.name, math.format, math.tools) == (AGENT, "mathematician-agent", "component",
                                                               ("Read", "Write"))
    assert math.description == "Turns a project description into a formal mathematical framework"
    assert math.capabilities == ("formal modelling", "equation derivation", "symbolic reasoning")
    real = parse_definition(PROJECT / "components" / "agents" / "RealSummarizationAgent.md")
    assert (real.kind, real.name, real.tools, real.version) == (AGENT, "RealSummarizationAgent",
                                                                ("Read", "Write", "WebFetch"), "v1.2")
    assert real.description.startswith("The RealSummarizationAgent writes structured summaries")
    digest = parse_definition(PROJECT / "components" / "agents" / "DigestAgent.md")
    assert (digest.name, digest.tools) == ("DigestAgent", ("Read", "Write", "Glob"))
    both = parse_definition(PROJECT / "projects" / "Project_demo" / "components" / "agents" / "ResearchReportAgent.md")
    assert (both.name, both.format, both.version) == ("research-report-agent", "frontmatter+component", "1.0")
    assert all(not d.warnings for d in (math, real, digest, both))


def test_a_bold_key_tool_and_the_colon_inside_the_bold(tmp_path):
    f = tmp_path / "QueryTool.md"
    f.write_text("# Query Memory Tool\n\n**Component Type:** Tool\n**Claude Tool Mapping**: Read, Grep, Bash  \n\n"
                 "## Purpose\n\nAnswers questions from the memory log.\n")
    d = parse_definition(f)
    assert (d.kind, d.name, d.tools) == (TOOL, "query-memory-tool", ("Read", "Grep", "Bash"))
    assert d.description == "Answers questions from the memory log."


def test_parameters_as_a_list_of_mappings_or_a_mapping_of_mappings():
    runner = parse_definition(PROJECT / "components" / "tools" / "CodeRunnerTool.md")
    assert [(i.name, i.type, i.required, i.default) for i in runner.inputs] == [
        ("code", "string", True, None), ("language", "string", False, "python"), ("repeat", "integer", False, 1)]
    assert runner.inputs[0].description == "the code to run"
    shout = parse_definition(PROJECT / "projects" / "Project_demo" / "components" / "tools" / "ShoutTool.md")
    assert [(i.name, i.type, i.required, i.default) for i in shout.inputs] == [
        ("text", "string", True, None), ("times", "integer", False, 1)]


def test_a_list_at_its_keys_indentation_an_unnamed_parameter_and_a_bad_name(tmp_path):
    f = tmp_path / "tools" / "t.md"
    f.parent.mkdir()
    f.write_text("---\nname: t\nparameters:\n- name: path\n  type: str\n  description: a file,\n    wrapped\n"
                 "- type: string\n- name: n\n  type: whole number\ntools:\n- Read\n---\n")
    d = parse_definition(f)
    assert [(i.name, i.type, i.description) for i in d.inputs] == [("path", "string", "a file, wrapped"),
                                                                   ("n", "string", "")]
    assert d.tools == ("Read",)
    assert d.warnings == ("parameter 2 has no name; it is left out", "parameter 'n' has type 'whole number', "
                          "read as string")
    f.write_text("---\nname: t\nparameters:\n  - name: _secret\n---\n")
    with pytest.raises(DefinitionError, match="parameter '_secret': a parameter name is letters"):
        parse_definition(f)


def test_notes_in_tool_lists_are_dropped():
    reviewer = parse_definition(PROJECT / ".claude" / "agents" / "code-reviewer.md")
    assert reviewer.tools == ("Read", "Write", "Edit", "Bash", "Grep")
    assert _as_names("Read - the notes, `Write`, Bash (for testing, code), WebFetch: pages") == [
        "Read", "Write", "Bash", "WebFetch"]
    assert _as_names([{"name": "Grep", "why": "search"}, {"Glob": "find files"}]) == ["Grep", "Glob"]


def test_a_first_era_prose_agent_loads_from_an_agents_folder_with_a_warning(tmp_path):
    ceo = parse_definition(PROJECT / "system" / "agents" / "CEOAgent.md")
    assert (ceo.kind, ceo.name, ceo.format, ceo.tools) == (AGENT, "ceo-agent", "prose", ())
    assert ceo.description.startswith("You are the CEO Agent of Northwind Robotics.")
    assert ceo.body.startswith("# CEO Agent\n\nYou are the CEO Agent")
    assert ceo.warnings == ("no LLMunix header: read as a prose agent named 'ceo-agent' from its title; it is "
                            "granted no tools; its text names WebFetch, Write: grant them with a 'tools: ...' line",)
    elsewhere = tmp_path / "tools" / "CEOAgent.md"
    elsewhere.parent.mkdir()
    shutil.copy(PROJECT / "system" / "agents" / "CEOAgent.md", elsewhere)
    with pytest.raises(DefinitionError) as err:
        parse_definition(elsewhere, default_kind=TOOL)
    assert str(err.value) == (f"{elsewhere}:1: not an LLMunix definition: no '---' frontmatter, no '# Component: "
                              "NAME' heading and no '**Name**:' header line (a prose agent loads only from an agents "
                              "folder)")
    untitled = tmp_path / "agents" / "untitled.md"
    untitled.parent.mkdir()
    untitled.write_text("You are an agent, but nobody named you.\n")
    with pytest.raises(DefinitionError, match="no '# Title' heading to name a prose agent by"):
        parse_definition(untitled)


# ---------------------------------------------------------------------------- one mapping for Claude Code's tools


def test_claude_calls_map_to_the_built_ins_and_their_parameter_names():
    write = claude_call("Write", {"file_path": "a.md", "content": "x"})
    assert (write.tool, write.arguments, write.dropped) == ("write_file", {"path": "a.md", "content": "x"}, ())
    bash = claude_call("Bash", {"command": "ls", "timeout": 5000, "description": "list"})
    assert (bash.tool, bash.arguments, bash.timeout, bash.dropped) == ("shell", {"cmd": "ls"}, 5.0, ("description",))
    fetch = claude_call("WebFetch", {"url": "https://a.example", "prompt": "summarise"})
    assert (fetch.tool, fetch.arguments, fetch.dropped) == ("web_fetch", {"urls": ["https://a.example"]},
                                                            ("prompt",))
    assert claude_call("FileReaderTool", {"file_path": "n.txt"}).arguments == {"path": "n.txt"}
    assert claude_call("write_file", {"file_path": "a"}).arguments == {"path": "a"}  # ours, with Claude's name
    assert claude_call("search", {"query": "q"}) == claude_call("search", {"query": "q"})  # a user's tool: as is
    assert claude_call("search", {"query": "q"}).tool == "search"


def test_the_registry_resolves_every_spelling_and_says_did_you_mean_only_when_it_cannot():
    import llmunix.tools.files  # noqa: F401 - registers edit_file
    import llmunix.tools.research  # noqa: F401 - registers web_fetch

    assert REGISTRY.get("WebFetch").name == "web_fetch"
    assert REGISTRY.get("Edit").name == "edit_file"
    assert REGISTRY.get("READ_FILE").name == "read_file"
    with pytest.raises(LlmunixError, match=r"unknown tool 'web_fetchh'; did you mean 'web_fetch'\?"):
        REGISTRY.get("web_fetchh")


def test_edit_file_replaces_text_once_or_everywhere(make_kernel, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.md").write_text("one two one")
    k = make_kernel()
    run = lambda **p: k.wait([k.spawn("Edit", workspace=str(ws), **p)], timeout=10)[0]  # noqa: E731
    assert "occurs 2 times" in run(path="a.md", old_string="one", new_string="1").error
    assert run(path="a.md", old_string="two", new_string="2").output == {"path": "a.md", "replacements": 1}
    assert run(path="a.md", old_string="one", new_string="1", replace_all=True).output["replacements"] == 2
    assert (ws / "a.md").read_text() == "1 2 1"
    assert "does not occur" in run(path="a.md", old_string="zzz", new_string="").error


# ---------------------------------------------------------------------------- execution traces


@pytest.mark.parametrize(("written", "needs"), [
    ("None (first step)", []),
    ("None (can run in parallel with Step 1)", []),
    ("N/A", []),
    ("Step 1, Step 2", ["step1", "step2"]),
    ("Steps 1 and 3", ["step1", "step3"]),
    (["Step 2 (output_variable: `step_2_output`)", "Step 3"], ["step2", "step3"]),
    ([1, "Step 4 complete"], ["step1", "step4"]),
])
def test_dependencies_as_traces_write_them(written, needs):
    assert _step_refs("t.md: line 1: Step 5", written) == needs


def test_a_dependency_that_is_no_step_is_refused_in_one_line():
    with pytest.raises(SpecError, match=r"^t.md: line 9: Step 2: cannot read dependency 'Phase 1'; write it as "):
        _step_refs("t.md: line 9: Step 2", "Phase 1")


def test_a_yaml_era_trace_with_claude_tools_loads_with_its_warnings():
    spec, warnings = read_spec(TRACES / "execution_trace_notes_v1.md")
    assert (spec.name, spec.version) == ("notes-digest-v1.0", "1.0")
    assert spec.description.startswith("write scheduling notes")
    s = {st.id: st for st in spec.steps}
    assert (s["step1"].tool, s["step1"].with_["path"], s["step1"].retry.max_attempts) == (
        "write_file", "trace-out/notes.md", 2)
    assert s["step1"].needs == [] and s["step2"].needs == []
    assert (s["step2"].tool, s["step2"].with_) == ("web_fetch", {"urls": ["{{ workflow.dir }}/docs/aging.txt"]})
    assert (s["step3"].tool, s["step3"].with_) == ("grep", {"pattern": "aging|preempt", "path": "trace-out",
                                                            "ignore_case": True})
    assert (s["step4"].agent, s["step4"].needs, s["step4"].on_error) == ("summarization-agent", ["step1", "step3"],
                                                                         "fail")
    assert s["step4"].goal.endswith("in 2 sentences ({{ steps.step1.output }})")
    assert (s["step5"].tool, s["step5"].with_, s["step5"].needs) == ("read_file", {"path": "trace-out/digest.md"},
                                                                     ["step4"])
    assert warnings == [
        "line 29: Step 1: {current_timestamp} is not a reference; written as it is",
        "line 95: Step 4: on_error action 'human_escalate' is read as 'fail' (llmunix knows fail, skip, retry and "
        "fallback_step)",
        "the validation checks of step 1 are not run (llmunix checks that each step completes)",
        "step 'step2' (WebFetch): 'prompt' has no counterpart in web_fetch; left out",
        "step 'step3' (Grep): 'output_mode' has no counterpart in grep; left out",
    ]


def test_a_pure_markdown_trace_loads_without_yaml():
    spec, warnings = read_spec(TRACES / "markdown_trace_test.md")
    assert (spec.name, spec.description) == ("pure-markdown-trace-v1.0",
                                             "Write a file and read it back, with no YAML anywhere")
    one, two = spec.steps
    assert (one.tool, one.with_, one.needs, one.retry.max_attempts) == (
        "write_file", {"path": "trace-out/hello.txt",
                       "content": "Hello from a pure markdown execution trace, with a comma."}, [], 3)
    assert (two.tool, two.with_, two.needs, two.on_error) == ("read_file", {"path": "trace-out/hello.txt"},
                                                              ["step1"], "fail")
    assert warnings == []


def test_both_traces_run_with_their_claude_steps_and_the_agent_step(project):
    with Kernel(project / "home", monitor=False, kill_grace=0.3) as k:
        attach(k, Config())
        pids = [k.workflow_run(k.workflow_spec(f"../traces/{n}")) for n in ("execution_trace_notes_v1.md",
                                                                          "markdown_trace_test.md")]
        infos = k.wait(pids, timeout=30)
        assert [i.state for i in infos] == ["Completed", "Completed"], [i.error for i in infos]
        steps = {i.name.split("/")[-1]: i for i in k.ps(all=True) if i.parent == pids[0]}
        assert sorted(steps) == ["step1", "step2", "step3", "step4", "step5"]
        assert [m["text"] for m in steps["step3"].output] == [
            "Aging raises the priority of waiting work so that nothing starves.",
            "Preemption lets urgent work in quickly."]  # grep, case-insensitive as the trace asked
        assert steps["step5"].output.startswith("# Summary of trace-out/notes.md")
    assert (project / "workspace" / "trace-out" / "hello.txt").read_text().startswith("Hello from a pure markdown")


# ---------------------------------------------------------------------------- discovery and reports


def test_discovery_searches_an_llmunix_projects_folders_and_the_configured_path(project):
    extra = project / "extra" / "team-a" / "defs"
    extra.mkdir(parents=True)
    (extra / "helper.md").write_text("---\nname: helper-agent\ntools: Read\n---\nHelps.\n")
    with Kernel(project / "home", monitor=False, kill_grace=0.3) as k:
        service = attach(k, Config(definition_paths=["extra/*/defs", "nowhere/*"]))
        assert service.names() == sorted([
            "code-reviewer", "DigestAgent", "mathematician-agent", "RealSummarizationAgent", "research-report-agent",
            "ceo-agent", "system-agent", "helper-agent", "research-agent", "summarization-agent"])
        assert {"code-runner-tool", "WordCountTool", "shout"} <= set(k.registry.names())
        assert service.errors == []
        paths = [(p.pattern, p.origin, p.exists, p.agents, p.tools) for p in service.search_paths()]
    assert paths[0] == ("builtin", "builtin", True, 2, 0)
    assert paths[3:] == [
        ("system/agents", "project", True, 2, 0), ("components/agents", "project", True, 3, 0),
        ("components/tools", "project", True, 0, 2), ("projects/*/components/agents", "project", True, 1, 0),
        ("projects/*/components/tools", "project", True, 0, 1), (".claude/agents", "project", True, 1, 0),
        ("agents", "cwd", False, 0, 0), ("tools", "cwd", False, 0, 0), ("extra/*/defs", "config", True, 1, 0),
        ("nowhere/*", "config", False, 0, 0)]


EXPECTED = [
    ("loaded", "agent", "code-reviewer", ".claude/agents/code-reviewer.md"),
    ("loaded", "agent", "DigestAgent", "components/agents/DigestAgent.md"),
    ("loaded", "agent", "mathematician-agent", "components/agents/MathematicianAgent.md"),
    ("loaded", "agent", "RealSummarizationAgent", "components/agents/RealSummarizationAgent.md"),
    ("loaded", "tool", "code-runner-tool", "components/tools/CodeRunnerTool.md"),
    ("loaded", "tool", "WordCountTool", "components/tools/WordCountTool.md"),
    ("loaded", "agent", "research-report-agent", "projects/Project_demo/components/agents/ResearchReportAgent.md"),
    ("skipped", "-", "-", "projects/Project_demo/components/tools/README.md"),
    ("loaded", "tool", "shout", "projects/Project_demo/components/tools/ShoutTool.md"),
    ("warnings", "agent", "ceo-agent", "system/agents/CEOAgent.md"),
    ("warnings", "agent", "system-agent", "system/agents/SystemAgent.md"),
]


def test_agents_check_reports_every_fixture(kernel, capsys):
    sh = Session(kernel, capsys)
    out = sh.ok(f"agents --check {PROJECT}")
    lines = out.splitlines()
    assert lines[0].split() == ["STATUS", "KIND", "NAME", "FILE", "DETAIL"]
    assert [tuple(line.split()[:4]) for line in lines[1:-1]] == EXPECTED
    assert lines[-1] == "11 files: 8 loaded, 2 loaded with warnings, 0 refused, 1 skipped"
    assert lines[-2].split(None, 4)[4] == "no tool here answers to Task; it is not offered to the agent"
    report = json.loads(sh.ok(f"agents --check {PROJECT} --json"))
    assert report["summary"] == {"files": 11, "loaded": 8, "warnings": 2, "refused": 0, "skipped": 1}
    ceo = next(f for f in report["files"] if f["name"] == "ceo-agent")
    assert (ceo["format"], ceo["kind"], len(ceo["warnings"])) == ("prose", "agent", 1)


def test_a_refused_file_fails_the_check_with_one_line_and_says_why(kernel, capsys):
    sh = Session(kernel, capsys)
    out, err, failed = sh.run(f"agents --check {FIXTURES / 'markdown'}")
    assert failed and err.strip() == "agents: 3 of 10 files refused"
    refused = next(line for line in out.splitlines() if "bad/badline.md" in line)
    assert refused.split(None, 4) == ["refused", "-", "-", "bad/badline.md",
                                      "line 4: expected 'key: value', got 'this line has no colon'"]
    assert "no such file or directory: nope" in sh.bad("agents --check nope")
    assert "tools --check DIR takes no TOOL name" in sh.bad("tools sleep --check .")


def test_tools_check_and_workflow_check(kernel, capsys):
    sh = Session(kernel, capsys)
    out = sh.ok(f"tools --check {PROJECT / 'components' / 'tools'}")
    assert [line.split()[:4] for line in out.splitlines()[1:-1]] == [
        ["loaded", "tool", "code-runner-tool", "CodeRunnerTool.md"], ["loaded", "tool", "WordCountTool",
                                                                      "WordCountTool.md"]]
    flows = sh.ok(f"workflow check {TRACES}")
    assert [line.split()[:4] for line in flows.splitlines()[1:-1]] == [
        ["warnings", "workflow", "notes-digest-v1.0", "execution_trace_notes_v1.md"],
        ["loaded", "workflow", "pure-markdown-trace-v1.0", "markdown_trace_test.md"]]
    assert flows.splitlines()[-1] == "2 files: 1 loaded, 1 loaded with warnings, 0 refused"
    report = json.loads(sh.ok(f"workflow check {TRACES / 'markdown_trace_test.md'} --json"))
    assert report["summary"]["loaded"] == 1
    out, err, failed = sh.run(f"workflow check {PROJECT / 'system'}")
    assert failed and err.strip() == "workflow: 2 of 2 files refused"
    assert "no '### Step N: Title' sections found" in out


def test_agents_paths_lists_where_it_looks(kernel, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "components" / "agents").mkdir(parents=True)
    shutil.copy(PROJECT / "components" / "agents" / "MathematicianAgent.md", tmp_path / "components" / "agents")
    attach(kernel, Config())
    sh = Session(kernel, capsys)
    out = sh.ok("agents --paths").splitlines()
    assert out[0].split() == ["#", "SEARCHED", "DIRECTORY", "READ_AS", "FOUND"]
    assert out[1].split()[:2] == ["1", "builtin"] and out[1].endswith("2 agents")
    assert out[5].split() == ["5", "components/agents", "components/agents", "agent", "1", "agent"]
    assert out[7].split() == ["7", "projects/*/components/agents", "-", "agent", "no", "match"]
    assert [p["pattern"] for p in json.loads(sh.ok("agents --paths --json"))][-2:] == ["agents", "tools"]


def test_an_llmunix_project_end_to_end_through_the_executable(project):
    (project / "home").mkdir()
    (project / "home" / "config.toml").write_text("allow_shell_tools = true\n")
    env = {**os.environ, "LLMUNIX_HOME": str(project / "home"), "NO_COLOR": "1"}
    r = subprocess.run([LLMUNIX, "-c", "agents --check .", "-c", "workflow check ../traces", "-c", "agents",
                        "-c", "run shout text=hello times=2", "-c", "run code-runner-tool 'code=print(6 * 7)'",
                        "-c", "workflow run ../traces/markdown_trace_test.md --wait", "-c", "wait", "-c", "log 1",
                        "-c", "log 2"],
                       capture_output=True, text=True, env=env, cwd=project, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # every definition in the project loaded: nothing to complain about at start
    out = r.stdout
    assert "11 files: 8 loaded, 2 loaded with warnings, 0 refused, 1 skipped" in out
    assert "2 files: 1 loaded, 1 loaded with warnings, 0 refused" in out
    listed = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[2:3] and
              line.split()[2].endswith(".md")}
    assert listed["ceo-agent"] == "-" and listed["mathematician-agent"] == "read_file,write_file"
    assert listed["code-reviewer"] == "read_file,write_file,edit_file,shell,grep"
    assert "HELLO\nHELLO" in out and "42" in out
    bad = subprocess.run([LLMUNIX, "-c", "agents --check ../traces"], capture_output=True, text=True, env=env,
                         cwd=project, timeout=60)
    assert bad.returncode == 1 and bad.stderr == "agents: 2 of 2 files refused\n"


def test_a_name_defined_twice_is_a_warning_and_a_single_file_can_be_checked(tmp_path):
    from llmunix.tools.markdown import check_directory

    for folder in ("a", "b"):
        (tmp_path / folder / "agents").mkdir(parents=True)
        (tmp_path / folder / "agents" / "helper.md").write_text("---\nname: helper\ntools: Read\n---\nHelps.\n")
    first, second = check_directory(tmp_path, AGENT)
    assert (first.status, second.status) == ("loaded", "warnings")
    assert second.warnings == (f"agent 'helper' is also defined by {first.path}; the one found later wins",)
    [one] = check_directory(tmp_path / "a" / "agents" / "helper.md", AGENT)
    assert (one.status, one.kind, one.name) == ("loaded", "agent", "helper")
