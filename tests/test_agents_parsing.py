"""Tool calls out of model replies: native function calls and the LLMunix text formats, on
tricky input (commas, quotes and newlines in values; broken JSON; missing tags)."""

from __future__ import annotations

import json

from llmunix.agents.parsing import parse_native, parse_pairs, parse_text


def test_tool_call_blocks_with_json_parameters_holding_commas_and_quotes():
    reply = parse_text('I will read it first.\n'
                       'TOOL_CALL: read_file\n'
                       'PARAMETERS: {"path": "notes, draft \\"2\\".txt"}\n'
                       'REASONING: the notes, as written, hold the answer\n')
    assert [(c.name, dict(c.arguments), c.error) for c in reply.calls] == [
        ("read_file", {"path": 'notes, draft "2".txt'}, None)]
    assert reply.reasoning == "the notes, as written, hold the answer"
    assert reply.final is None


def test_key_value_parameters_keep_commas_inside_quotes_and_unquoted_values():
    args = parse_pairs('path="a, b.txt", content=\'it\\\'s "fine", really\', count=3, text=one, two, three')
    assert args == {"path": "a, b.txt", "content": 'it\'s "fine", really', "count": 3, "text": "one, two, three"}
    assert parse_pairs("url: https://example.org/a,b\nquery: x=1") == {"url": "https://example.org/a,b",
                                                                       "query": "x=1"}
    lines = parse_text("TOOL_CALL: write_file\nPARAMETERS:\n  path: out.md\n  content: \"Line one,\\nline two\"\n")
    assert dict(lines.calls[0].arguments) == {"path": "out.md", "content": "Line one,\nline two"}


def test_several_blocks_and_a_final_answer():
    reply = parse_text("TOOL_CALL: list_files\nPARAMETERS: {}\n\nTOOL_CALL: grep\nPARAMETERS: pattern=\"a|b\", "
                       "path=docs\nREASONING: look around\nFINAL_ANSWER: not yet")
    assert [(c.name, dict(c.arguments)) for c in reply.calls] == [("list_files", {}),
                                                                  ("grep", {"pattern": "a|b", "path": "docs"})]
    assert reply.final == "not yet"


def test_tag_format_with_final_answer_and_reasoning():
    reply = parse_text('<thinking>need both files</thinking>\n'
                       '<tool_call name="read_file">{"path": "a.txt"}</tool_call>\n'
                       "<tool_call name='write_file'>\n```json\n{\"path\": \"b.txt\", \"content\": \"x </y>, z\"}\n"
                       "```\n</tool_call>\n<final_answer>Copied, with \"quotes\".</final_answer>")
    assert [(c.name, dict(c.arguments)) for c in reply.calls] == [
        ("read_file", {"path": "a.txt"}), ("write_file", {"path": "b.txt", "content": "x </y>, z"})]
    assert reply.final == 'Copied, with "quotes".'
    assert reply.reasoning == "need both files"


def test_hermes_style_tag_without_a_name_attribute():
    reply = parse_text('<tool_call>{"name": "grep", "arguments": {"pattern": "x, y"}}</tool_call>')
    assert [(c.name, dict(c.arguments), c.error) for c in reply.calls] == [("grep", {"pattern": "x, y"}, None)]


def test_malformed_calls_are_returned_with_an_error_not_dropped():
    reply = parse_text('<tool_call name="read_file">{"path": a.txt}</tool_call>')
    assert reply.calls[0].name == "read_file" and "not valid JSON" in reply.calls[0].error
    python_dict = parse_text("<tool_call name=\"read_file\">{'path': 'a.txt',}</tool_call>")  # read leniently
    assert dict(python_dict.calls[0].arguments) == {"path": "a.txt"} and python_dict.calls[0].error is None
    unclosed = parse_text('<tool_call name="read_file">{"path": "a.txt"}')
    assert "not closed" in unclosed.calls[0].error
    bad_pairs = parse_text('TOOL_CALL: write_file\nPARAMETERS: path="never closed, content=x')
    assert bad_pairs.calls[0].name == "write_file" and "unterminated" in bad_pairs.calls[0].error
    orphan = parse_text("PARAMETERS: {}")
    assert "without a TOOL_CALL" in orphan.calls[0].error


def test_plain_prose_is_a_final_answer_and_an_unclosed_final_tag_runs_to_the_end():
    assert parse_text("The answer is 42, plainly.").final == "The answer is 42, plainly."
    assert parse_text("<final_answer>All done").final == "All done"


def test_native_tool_calls_including_broken_json_arguments():
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "x, y.txt"}'}},
        {"id": "c2", "type": "function", "function": {"name": "write_file", "arguments": '{"path": "o.md", "co'}},
        {"id": "c3", "type": "function", "function": {"name": "grep", "arguments": json.dumps(["not", "object"])}},
    ]}
    reply = parse_native(message)
    assert [(c.id, c.name) for c in reply.calls] == [("c1", "read_file"), ("c2", "write_file"), ("c3", "grep")]
    assert dict(reply.calls[0].arguments) == {"path": "x, y.txt"} and reply.calls[0].error is None
    assert "not valid JSON" in reply.calls[1].error
    assert "must be a JSON object" in reply.calls[2].error
    assert parse_native({"content": "Finished."}).final == "Finished."
    text_in_content = parse_native({"content": '<tool_call name="grep">{"pattern": "q"}</tool_call>'})
    assert text_in_content.calls[0].name == "grep"



def test_function_call_beside_tool_calls_is_a_copy_and_is_ignored():
    calls = [{"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a"}'}}]
    for legacy in ({"name": "read_file", "arguments": '{"path": "a"}'}, {"name": "", "arguments": '{"path": "a"}'},
                   {"name": "name:", "arguments": "{}"}):
        reply = parse_native({"role": "assistant", "content": None, "tool_calls": calls, "function_call": legacy})
        assert [(c.id, c.name, dict(c.arguments), c.error) for c in reply.calls] == [
            ("c1", "read_file", {"path": "a"}, None)]


def test_function_call_alone_is_a_call_and_an_empty_one_is_none():
    alone = parse_native({"role": "assistant", "function_call": {"name": "grep", "arguments": {"pattern": "x"}}})
    assert [(c.name, dict(c.arguments)) for c in alone.calls] == [("grep", {"pattern": "x"})]
    empty = parse_native({"role": "assistant", "content": "All done.", "function_call": {"name": "", "arguments": ""}})
    assert empty.calls == () and empty.final == "All done."


def test_native_arguments_as_an_object_a_double_encoded_string_or_without_the_function_wrapper():
    reply = parse_native({"tool_calls": [
        {"id": "a", "function": {"name": "write_file", "arguments": {"path": "o.md", "content": "x, y"}}},
        {"id": "b", "function": {"name": "read_file", "arguments": json.dumps(json.dumps({"path": "n.txt"}))}},
        {"id": "c", "name": "grep", "arguments": '{"pattern": "p"}'},
        {"id": "a", "function": {"name": "write_file", "arguments": {"path": "o.md", "content": "x, y"}}},
    ]})
    assert [(c.id, c.name, dict(c.arguments), c.error) for c in reply.calls] == [
        ("a", "write_file", {"path": "o.md", "content": "x, y"}, None), ("b", "read_file", {"path": "n.txt"}, None),
        ("c", "grep", {"pattern": "p"}, None)]  # the repeated id "a" is one call


def test_prose_beside_native_calls_is_reasoning_not_a_final_answer():
    calls = [{"id": "c1", "function": {"name": "read_file", "arguments": "{}"}}]
    thinking = parse_native({"content": "I will read it first.", "tool_calls": calls})
    assert thinking.final is None and thinking.reasoning == "I will read it first."
    explicit = parse_native({"content": "<final_answer>42</final_answer>", "tool_calls": calls})
    assert explicit.final == "42"
