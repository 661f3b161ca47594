"""How the shell reads a line before cmd2 (commands/cmdline.py): the line cmd2 gets, and the
one-line errors. End to end: tests/test_shell_input.py and the corpus."""

from __future__ import annotations

import pytest
from cmd2.parsing import StatementParser

from commands.cmdline import MAX_LINE, LineError, prepare_line


@pytest.mark.parametrize(("typed", "value"), [
    ("run echo text='a   b'", "text=a   b"),
    ('run echo text="a \\"b\\" \\\\ \\x"', 'text=a "b" \\ \\x'),
    ("run echo text=it\\'s", "text=it's"),
    ("run echo text=a\\ b", "text=a b"),
    ("run shell cmd='ls | wc -l; echo > x'", "cmd=ls | wc -l; echo > x"),
    ("run echo text='a # b'", "text=a # b"),
    ("run echo text=a#b", "text=a#b"),
    ("run echo ''", ""),
    ("run echo text=\"it's\"", "text=it's"),
])
def test_cmd2_reads_each_word_back_as_a_posix_shell_would(typed, value):
    statement = StatementParser().parse(prepare_line(typed))
    assert statement.command == "run" and not statement.redirector
    words = [w[1:-1] if len(w) > 1 and w[0] == w[-1] and w[0] in "'\"" else w for w in statement.arg_list]
    assert words == ["shell" if typed.startswith("run shell") else "echo", value]


@pytest.mark.parametrize(("typed", "prepared"), [
    ("run sleep seconds=1   # why", "run sleep seconds=1"),
    ("# all of it", ""),
    ("   ", ""),
    ("'ps' -a", "ps -a"),
    ("ps -a | grep 'x y' | sort", "ps -a | grep 'x y' | sort"),
    ("ps -a > 'my file'", "ps -a > 'my file'"),
    ("ps -a >> out # note", "ps -a >> out"),
])
def test_comments_operators_and_quoted_command_names(typed, prepared):
    assert prepare_line(typed) == prepared


@pytest.mark.parametrize(("typed", "error"), [
    ('run echo text="a', "run: unclosed \" in 'text=\"a': close the quote"),
    ("run echo 'a b", "run: unclosed ' in \"'a\": close the quote"),
    ("run echo a\\", "run: the line ends with a backslash"),
    ("ps; ps", "ps: ';' would end the command here"),
    ("ps || ps", "ps: '||' is not something llmunix understands here"),
    ("ps >", "ps: '>' needs a file name"),
    ("ps |", "ps: '|' needs a command to pipe to"),
    ("ps > a b", "ps: unexpected 'b' after `> a`"),
    ("| ps", "llmunix: a command line cannot start with '|'"),
    ("'\x1b[2J", "llmunix: unclosed '"),
    ("ps a\0b", "ps: the line contains a NUL character"),
    ("run " + "x" * MAX_LINE, f"run: the command line is too long ({MAX_LINE + 4:,} characters"),
    ("run cmd=\"a'b\" 'x", "run: unclosed '"),
])
def test_each_error_is_one_line_naming_the_command(typed, error):
    with pytest.raises(LineError) as caught:
        prepare_line(typed)
    assert str(caught.value).startswith(error) and "\n" not in str(caught.value)


def test_a_word_holding_both_kinds_of_quote_is_passed_as_typed_for_run_to_read():
    assert prepare_line('run shell cmd="echo \\"it\'s\\""') == 'run shell cmd="echo \\"it\'s\\""'
