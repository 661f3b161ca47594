"""End to end: how the shell reads what people type — quoting, comments, operators, scripts'
FILE:LINE errors, settings with ranges, list and dict parameters, user tools that replace
built-ins, `--tools` errors, and a second (read-only) shell on a busy home."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pexpect
import pytest
from conftest import LLMUNIX, PROMPT, close_prompt, spawn_prompt


def llmunix(*args: str, home, stdin: str = "", cwd=None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run([LLMUNIX, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def outputs(home) -> dict[str, object]:
    """Each finished process's output, by PID ("001": ...)."""
    r = llmunix("-c", "ps -a --json", home=home)
    return {row["process_id"]: row.get("output") for row in json.loads(r.stdout)}


# ---------------------------------------------------------------------------- quoting and comments


@pytest.mark.parametrize(("line", "error"), [
    ('run echo text="unclosed', "run: unclosed \" in 'text=\"unclosed': close the quote"),
    ("run echo 'unclosed", "run: unclosed ' in \"'unclosed\": close the quote"),
    ("run echo text=a\\", "run: the line ends with a backslash"),
    ("ps >", "ps: '>' needs a file name, e.g. `ps > out.txt`"),
    ("ps; ps -a", "ps: ';' would end the command here"),
])
def test_a_syntax_error_is_one_line_naming_the_command(tmp_path, line, error):
    r = llmunix("-c", line, home=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith(error) and r.stderr.count("\n") == 1, r.stderr
    assert "internal error" not in r.stderr and "Invalid syntax" not in r.stderr


def test_a_comment_starts_where_a_word_starts_with_hash(tmp_path):
    script = tmp_path / "jobs.llmunix"
    script.write_text(textwrap.dedent("""\
        # a whole-line comment
        run sleep seconds=0.1   # a note after the command
        run echo text='a # b'
        run echo text=a#b
        wait
    """))
    r = llmunix(str(script), home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path) == {"001": 0.1, "002": "a # b", "003": "a#b"}


def test_quotes_inside_a_word_keep_spaces_pipes_and_escapes(tmp_path):
    r = llmunix("-c", "run echo text='a   b'", "-c", "run shell cmd='echo a | tr a b'",
                "-c", "run echo text=it\\'s", "-c", 'run echo "text=say \\"hi\\""', "-c", "wait",
                "-c", "log 2", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "b"  # the pipe ran inside the tool's shell, not the llmunix shell's
    got = outputs(tmp_path)
    assert (got["001"], got["003"], got["004"]) == ("a   b", "it's", 'say "hi"')


def test_an_over_long_line_is_refused_before_it_is_parsed(tmp_path):
    script = tmp_path / "big.llmunix"
    script.write_text("run echo text=" + "x" * 1_000_000 + "\nps\n")
    r = llmunix(str(script), home=tmp_path)
    assert r.returncode == 1
    assert r.stderr == (f"{script}:1: run: the command line is too long (1,000,014 characters; the limit is "
                        "65,536); pass large values in a file\n")


# ---------------------------------------------------------------------------- scripts


def test_script_errors_say_file_and_line_and_the_script_stops_there(tmp_path):
    script = tmp_path / "jobs.llmunix"
    # (001 is waited for: a process still live when the script stops would be reported on exit)
    script.write_text("run echo text=one\nwait\n# comment\nrun echo txt=two\nrun echo text=three\n")
    r = llmunix(str(script), home=tmp_path)
    assert r.returncode == 1
    assert r.stderr == (f"{script}:4: run: tool 'echo' has no parameter 'txt' (its parameters: text); "
                        "did you mean 'text'?\n")
    assert r.stdout.splitlines()[0] == "001" and r.stdout.splitlines()[1].startswith("[001] echo completed")
    assert len(r.stdout.splitlines()) == 2


def test_piped_commands_name_the_line_too_and_usage_errors_are_one_line(tmp_path):
    r = llmunix("-k", home=tmp_path, stdin="ps --bogus\nps\nkill 99999999999999999999999\n")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "<stdin>:1: ps: unrecognized arguments: --bogus (see 'ps -h')",
        "<stdin>:3: kill: no process 99999999999999999999999: no PID is that large; `ps -a` lists them",
    ]


def test_an_unknown_command_is_one_line_with_a_suggestion(tmp_path):
    r = llmunix("-c", "rn sleep", home=tmp_path)
    assert (r.returncode, r.stderr) == (1, "llmunix: no command 'rn'; did you mean 'run'? (`help` lists them)\n")


def test_run_help_titles_its_resilience_options_plainly(tmp_path):
    r = llmunix("-c", "run -h", home=tmp_path)
    assert r.returncode == 0
    assert "\nResilience:\n  retries, timeouts and restarts: see docs/resilience.md" in r.stdout
    assert "Docs/Resilience.Md" not in r.stdout


# ---------------------------------------------------------------------------- settings and bounds


def test_settings_refuse_values_that_would_stop_a_thread_and_keep_the_old_one(tmp_path):
    r = llmunix("-k", "-c", "set monitor_interval inf", "-c", "set kill_grace nan", "-c", "set max_running 0",
                "-c", "set kill_grace 5s", "-c", "set monitor_interval 0.5",
                "-c", "run sleep seconds=0 --timeout 1e309", "-c", "set", home=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "set: monitor_interval must be a number from 0.01 to 3,600 (seconds, or a duration such as 2m), not 'inf'",
        "set: kill_grace must be a number from 0 to 3,600 (seconds, or a duration such as 2m), not 'nan'",
        "set: max_running must be a whole number from 1 to 1,000,000, or auto, not '0'",
        "run: bad duration '1e309'; at most 100 years (timers cannot wait longer)",
    ]
    assert "Traceback" not in r.stdout + r.stderr  # the monitor thread did not die
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.split()}
    assert (rows["kill_grace"], rows["monitor_interval"], rows["max_running"]) == ("5.0", "0.5", "8")


def test_set_piped_is_one_line_per_setting_however_long(tmp_path):
    r = llmunix("-c", "set", home=tmp_path)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VALUE", "DESCRIPTION"]
    chaos = next(line for line in lines if line.startswith("chaos "))
    assert len(chaos) > 80 and chaos.endswith('"fail=0.2,hang=0.05,slow=0.1,seed=42" or off')
    assert all(line.split()[0].replace("_", "").isalpha() for line in lines)  # no wrapped continuation lines


def test_out_of_range_config_values_are_refused_at_start(tmp_path):
    (tmp_path / "config.toml").write_text("kill_grace = nan\n")
    r = llmunix("-c", "ps", home=tmp_path)
    assert (r.returncode, r.stderr) == (2, f"llmunix: {tmp_path}/config.toml: setting 'kill_grace' must be a "
                                           "number from 0 to 3,600\n")


# ---------------------------------------------------------------------------- tools from the user

FETCH = '''\
from llmunix import tool


@tool
def fetch(ctx, urls: list[str], opts: dict[str, int] | None = None) -> dict:
    """Fetch URLs.

    Args:
        urls: the URLs to fetch
    """
    return {"urls": urls, "opts": opts}
'''

SUMMARIZE = '''\
from llmunix import tool


@tool
def summarize(ctx, text: str = "") -> str:
    """My own summary: the first word."""
    return text.split()[0] if text.split() else ""
'''


def test_list_and_dict_parameters_take_json_commas_or_a_repeated_key(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "fetch.py").write_text(FETCH)
    home = tmp_path / "home"
    r = llmunix("-c", "run fetch urls=a,b", "-c", "run fetch urls='[\"x\", \"y z\"]' opts='{\"retries\": 2}'",
                "-c", "run fetch urls=a urls=b,c", "-c", "wait", "-c", "tools fetch", home=home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = outputs(home)
    assert got == {"001": {"urls": ["a", "b"], "opts": None}, "002": {"urls": ["x", "y z"], "opts": {"retries": 2}},
                   "003": {"urls": ["a", "b", "c"], "opts": None}}
    assert """from the shell: urls='["a","b"]' (JSON), urls=a,b or urls=a urls=b""" in r.stdout
    assert """from the shell: opts='{"key": "value"}' (JSON)""" in r.stdout
    assert "urls: list[str] (required) — the URLs to fetch" in r.stdout
    bad = llmunix("-c", "run fetch urls='[1'", home=home, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith(
        "run: bad value '[1' for parameter 'urls' of tool 'fetch': not a JSON list")


def test_a_user_tool_replaces_the_built_in_of_its_name_and_says_so_once(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "summarize.py").write_text(SUMMARIZE)
    home = tmp_path / "home"
    r = llmunix("-c", "run summarize text='hello world'", "-c", "wait", "-c", "tools", "-c", "tools summarize",
                home=home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["llmunix: tool 'summarize' from tools/summarize.py overrides the built-in one"]
    assert outputs(home)["001"] == "hello"
    listed = next(line.split() for line in r.stdout.splitlines() if line.startswith("summarize "))
    assert listed == ["summarize", "[text]", "tools/summarize.py", "builtin"]
    assert "Source: tools/summarize.py (overrides the built-in summarize)" in r.stdout


@pytest.mark.parametrize(("module", "error"), [
    ("nosuchmodule", "ModuleNotFoundError: No module named 'nosuchmodule'"),
    ("broken_tools", "SyntaxError: invalid syntax (broken_tools.py, line 1)"),
])
def test_a_tools_module_that_cannot_load_stops_llmunix_with_one_line(tmp_path, module, error):
    (tmp_path / "broken_tools.py").write_text("def broken(:\n")
    env_cwd = tmp_path
    r = subprocess.run([LLMUNIX, "--tools", module, "-c", "run echo text=x"], capture_output=True, text=True,
                       cwd=env_cwd, timeout=60, env={**os.environ, "LLMUNIX_HOME": str(tmp_path / "home"),
                                                     "PYTHONPATH": str(tmp_path)})
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"llmunix: could not load tools from module {module}: {error}\n"


# ---------------------------------------------------------------------------- a second shell on a busy home


@pytest.fixture
def busy_home(tmp_path):
    """A home owned by another llmunix, which runs a long sleep until the test ends."""
    owner = spawn_prompt(tmp_path)
    owner.sendline("run sleep seconds=60")
    owner.expect("001")
    owner.expect(PROMPT)
    yield tmp_path
    close_prompt(owner)


def test_a_read_only_shell_refuses_to_change_the_owners_settings(busy_home):
    r = llmunix("-k", "-c", "set max_running 3", "-c", "set chaos fail=0.5", "-c", "set loglevel debug",
                "-c", "set max_running", home=busy_home)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if not line.endswith("use another --home to run processes)")]
    assert len(errors) == 2 and all(e.startswith(f"set: read-only: {busy_home} is in use by llmunix pid ")
                                    for e in errors)
    assert errors[0].endswith("; change max_running there") and errors[1].endswith("; change chaos there")
    assert "loglevel ─> 'debug'" in r.stdout  # this shell's own log level is its own
    last = r.stdout.splitlines()[-1]
    assert last.split()[:2] == ["max_running", "8"] and "processes allowed to run at once" in last


def test_a_read_only_shell_can_show_top_once(busy_home):
    r = llmunix("-c", "top -b -n 1", home=busy_home, timeout=20)
    assert r.returncode == 0 and "001" in r.stdout


# ---------------------------------------------------------------------------- the interactive prompt


def test_at_the_prompt_a_bad_line_is_one_error_and_the_prompt_comes_back(tmp_path):
    child = spawn_prompt(tmp_path)
    try:
        child.sendline('run echo text="unclosed')
        child.expect("run: unclosed \" in 'text=\"unclosed': close the quote")
        child.expect(PROMPT)
        child.sendline("run echo text=hi   # with a note")
        child.expect("001")
        child.expect(PROMPT)
        child.sendline("ps >")
        child.expect("ps: '>' needs a file name")
        child.expect(PROMPT)
        child.sendline("set kill_grace inf")
        child.expect("set: kill_grace must be a number from 0 to 3,600")
        child.expect(PROMPT)
        child.sendline("ps -a --json")
        child.expect('"output": "hi"')
        child.expect(PROMPT)
    except pexpect.TIMEOUT:
        pytest.fail(f"the prompt did not come back: {child.before!r}")
    finally:
        close_prompt(child)
