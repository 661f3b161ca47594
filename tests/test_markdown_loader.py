"""LLMunix markdown definitions of every era: frontmatter keys, component bullets, tool names,
discovery, bad files, and markdown tools run as processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmunix import Kernel, LlmunixError
from llmunix.tools.markdown import (
    AGENT,
    TOOL,
    DefinitionError,
    canonical_tool_name,
    discover,
    find_tool_name,
    markdown_tool,
    parse_definition,
    tool_key,
)
from llmunix.tools.registry import REGISTRY, ToolRegistry

FIXTURES = Path(__file__).parent / "fixtures" / "markdown"


def test_the_component_era_reads_name_type_description_and_inputs():
    tool = parse_definition(FIXTURES / "component" / "WordCountTool.md")
    assert (tool.kind, tool.name, tool.format) == (TOOL, "WordCountTool", "component")
    assert tool.description == "Counts the words of a text."
    assert [(i.name, i.type, i.required) for i in tool.inputs] == [("text", "string", True), ("unit", "string", False)]
    agent = parse_definition(FIXTURES / "component" / "ReportAgent.md")
    assert (agent.kind, agent.name, agent.tools) == (AGENT, "ReportAgent", ("Read", "Write", "Glob"))


def test_claude_code_frontmatter_over_a_component_body():
    d = parse_definition(FIXTURES / "claude_code" / "summary-agent.md")
    assert (d.kind, d.name, d.format) == (AGENT, "summary-agent", "frontmatter+component")
    assert d.tools == ("Read", "Write")  # a comma string
    assert d.description.startswith("A specialized agent") and "structured summaries" in d.description
    assert "### Logic" in d.body


def test_later_frontmatter_with_a_tool_list_model_version_and_nested_metadata():
    d = parse_definition(FIXTURES / "llmos" / "operator.md")
    assert d.tools == ("read_file", "list-files", "Grep")
    assert (d.model, d.version) == ("sonnet", "1.1.0")
    assert d.extra["category"] == "robotics"
    assert d.extra["metadata"] == {"mode": "learner", "tool_choice": "auto"}
    assert d.kind == AGENT  # from its directory (not tools/) and no type


def test_agent_name_agent_id_and_tool_name_keys():
    briefing = parse_definition(FIXTURES / "keys" / "briefing.md")
    assert (briefing.kind, briefing.name) == (AGENT, "IntelligenceBriefingAgent")
    assert briefing.description == "Builds a daily briefing from the files in the workspace."  # a folded block
    assert briefing.tools == ("Read", "Grep")  # claude_tools, quoted comma string
    assert briefing.capabilities == ("summarising", "ranking, by relevance")  # a comma inside quotes
    assert briefing.max_iterations == 4
    scout = parse_definition(FIXTURES / "keys" / "scout.md")
    assert (scout.kind, scout.name, scout.tools) == (AGENT, "scout-7", ("Read", "web-fetch"))
    assert scout.description == "Scouts the workspace; it's quick"
    assert scout.version == "2"
    shout = parse_definition(FIXTURES / "keys" / "shout.md")
    assert (shout.kind, shout.name) == (TOOL, "shout")
    assert [i.name for i in shout.inputs] == ["text"]
    assert "tr '[:lower:]'" in (shout.shell or "")


@pytest.mark.parametrize(("file", "line", "fragment"), [
    ("unclosed.md", 1, "no closing '---'"),
    ("badline.md", 4, "expected 'key: value', got 'this line has no colon'"),
    ("badquote.md", 3, "unterminated \"quoted\" value"),
])
def test_malformed_frontmatter_names_the_file_and_line(file, line, fragment):
    path = FIXTURES / "bad" / file
    with pytest.raises(DefinitionError) as err:
        parse_definition(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert fragment in str(err.value)


def test_a_file_that_is_no_definition_is_refused(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\nJust prose.\n")
    with pytest.raises(DefinitionError, match="not an LLMunix definition"):
        parse_definition(path)


def test_tool_names_in_any_spelling_are_one_tool():
    assert tool_key("Read") != tool_key("read_file")
    assert canonical_tool_name("Read") == canonical_tool_name("read_file") == canonical_tool_name("read-file") \
        == "read_file"
    assert canonical_tool_name("LS") == canonical_tool_name("Glob") == "list_files"
    assert canonical_tool_name("Bash") == "shell"
    names = ["read_file", "write_file", "list_files", "grep", "web-fetch"]
    for spelling in ("Read", "read_file", "read-file", "READ_FILE", "ReadFile", "ReadTool"):
        assert find_tool_name(names, spelling) == "read_file"
    assert find_tool_name(names, "WebFetch") == "web-fetch"
    assert find_tool_name(names, "web_fetch") == "web-fetch"
    assert find_tool_name(names, "Task") is None


def test_discovery_reports_bad_files_and_later_directories_override_earlier(tmp_path):
    builtin, local = tmp_path / "builtin", tmp_path / "local"
    builtin.mkdir()
    local.mkdir()
    (builtin / "helper.md").write_text("---\nname: helper\ndescription: old\n---\n")
    (local / "Helper.md").write_text("---\nname: Helper\ndescription: new\n---\n")
    (local / "README.md").write_text("# not a definition\n")
    (local / "broken.md").write_text("---\nname: x\n")
    found = discover([(builtin, AGENT), (local, AGENT), (tmp_path / "missing", AGENT)])
    assert [(d.name, d.description) for d in found.definitions] == [("Helper", "new")]
    assert [Path(e.path).name for e in found.errors] == ["broken.md"]


def test_a_markdown_shell_tool_is_refused_unless_shell_tools_are_allowed(tmp_path):
    d = parse_definition(FIXTURES / "keys" / "shout.md")
    allowed = {"yes": False}
    registry = ToolRegistry()
    registry.register(markdown_tool(d, allow_shell=lambda: allowed["yes"]))
    with Kernel(monitor=False, kill_grace=0.3, registry=registry) as k:
        info = k.wait([k.spawn("shout", text="hello, world")], timeout=10)[0]
        assert info.state == "Failed"
        assert "shell tools are not allowed; set allow_shell_tools = true in config.toml" in info.error
        allowed["yes"] = True
        info = k.wait([k.spawn("shout", text="hello, world")], timeout=10)[0]
        assert (info.state, info.output) == ("Completed", "HELLO, WORLD")
        with pytest.raises(LlmunixError, match="has no parameter 'txt'"):
            k.spawn("shout", text="x", txt="x")


def test_a_markdown_tool_without_a_shell_block_is_a_prompt_summarised_offline():
    d = parse_definition(FIXTURES / "component" / "WordCountTool.md")
    t = markdown_tool(d, allow_shell=lambda: False)
    assert [p.name for p in t.params] == ["text", "unit"] and not t.subprocess
    registry = ToolRegistry()
    for builtin in REGISTRY:
        registry.register(builtin)
    registry.register(t)
    text = ("Schedulers pick the next process to run. Aging raises the priority of waiting work. "
            "Preemption lets urgent work in quickly. Admission keeps the machine out of swap.")
    with Kernel(monitor=False, kill_grace=0.3, registry=registry) as k:
        info = k.wait([k.spawn("WordCountTool", text=text)], timeout=10)[0]
    assert info.state == "Completed", info.error
    assert info.output and info.output in text
