"""What users and tools write never drives the terminal: escape sequences, control characters,
bidirectional overrides and undecodable bytes in names, messages and log lines are shown escaped
in `ps`, `ps -l`, `top`, `log`, `events`, `breakers` and the alerts; `--json` keeps the real
value. And `ps --json` is written as it is built: one valid array, the same text as before."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import LLMUNIX, PROMPT, close_prompt, spawn_prompt
from rich.text import Text

from commands.terminal_safe import json_array_chunks, json_safe, safe_rich, safe_text
from llmunix import Kernel

TITLE = "\x1b]2;PWNED\x07"  # sets the window title: nothing llmunix itself would ever print
NAME = f"evil{TITLE}\x1b[2J\u202eb\x9bc"
SEEN = "evil\\x1b]2;PWNED\\x07\\x1b[2J\\u202eb\\x9bc"  # the same name, as it is shown


def test_safe_text_escapes_controls_overrides_and_undecodable_bytes_and_nothing_else():
    assert safe_text(NAME) == SEEN
    assert safe_text("caf\udce9 ok") == "caf\\xe9 ok"  # surrogateescape's stand-in for byte 0xe9
    assert safe_text("tab\there\nline") == "tab\\there\\nline"
    assert safe_text("tab\there\nline\r", lines=True) == "tab\there\nline\\r"
    plain = "naïve 中文 emoji 🙂 [bold]not markup[/bold] \\x1b"
    assert safe_text(plain) is plain
    styled = Text.assemble(("[", "cyan"), ("a\x1bb", "red"), "c")
    out = safe_rich(styled)
    assert out.plain == "[a\\x1bbc" and [(s.start, s.end, s.style) for s in out.spans] == [(0, 1, "cyan"),
                                                                                           (1, 7, "red")]


def test_json_keeps_the_value_and_escapes_what_a_terminal_would_act_on():
    records = [{"name": NAME, "bytes": "caf\udce9"}, {"n": [1, {"x": None}]}]
    text = "".join(json_array_chunks(records))
    assert json.loads(text) == records
    assert text == json_safe(json.dumps(records, indent=2, ensure_ascii=False)) + "\n"
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e\udce9")
    assert "".join(json_array_chunks([])) == "[]\n"


def llmunix(*commands: str, home, cwd=None) -> subprocess.CompletedProcess[str]:
    args = [LLMUNIX, "--keep-going"]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1"})


def test_a_hostile_name_and_output_reach_no_listing_raw_but_json_keeps_them(tmp_path):
    quoted = NAME.replace("'", "")
    r = llmunix(f"run shell 'cmd=printf \"a\\033]2;PWNED\\007b\\n\"' --name '{quoted}'", "wait",
                "ps -a", "ps -a --tree", "ps -l 1", "events --pid 1", "top -b", "stats", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert TITLE not in r.stdout and "\x1b" not in r.stdout and "\u202e" not in r.stdout
    assert r.stdout.count(SEEN) >= 5  # wait's line, ps, ps --tree, ps -l, events
    # `log` is the tool's own output: piped or redirected it is exactly what the tool wrote (as
    # `cat` would give it); on a terminal it is escaped like everything else.
    assert llmunix("log 1", home=tmp_path).stdout == f"a{TITLE}b\n"
    from commands.process import _log_line
    assert _log_line(0.0, f"a{TITLE}b", False) == "a\\x1b]2;PWNED\\x07b"
    [record] = json.loads(llmunix("ps -a --json", home=tmp_path).stdout)
    assert record["name"] == NAME and record["output"] == f"a{TITLE}b"
    [line] = json.loads(llmunix("log 1 --json", home=tmp_path).stdout)
    assert line["line"] == f"a{TITLE}b"


def test_names_that_look_like_rich_markup_are_printed_as_written(tmp_path):
    # A workflow's name and step titles went through rich as markup when piped: `[bold]wf` lost
    # its brackets, and an escape sequence in a title reached the terminal raw.
    spec = tmp_path / "wf.yaml"
    spec.write_text('name: "[bold]wf[/bold]"\nsteps:\n  - id: s1\n    title: "[red]T\\u001b[2J"\n'
                    '    tool: echo\n    with: {text: "[link=http://x]y"}\n')
    r = llmunix(f"workflow run {spec}", "wait", "workflow status 1", f"workflow show {spec}", "ps -a", "ps -l 2",
                home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert r.stdout.count("[bold]wf[/bold]") >= 5  # run, wait's line, status, show, ps
    assert r.stdout.count("[red]T\\x1b[2J") == 3  # run, status, show
    assert "Output: [link=http://x]y" in r.stdout


def test_ps_json_streams_the_same_array_as_before_over_many_processes(tmp_path):
    with Kernel(tmp_path, monitor=False) as k:
        k.wait([k.spawn("echo", text=f"record {n}") for n in range(300)])
        k.flush()
    r = llmunix("ps -a --json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert [x["pid"] for x in records] == list(range(1, 301))
    assert r.stdout == json.dumps(records, indent=2, ensure_ascii=False) + "\n"  # the text it always was
    empty = llmunix("ps --json", home=tmp_path)
    assert empty.stdout == "[]\n"


def test_alerts_on_the_terminal_show_a_hostile_error_escaped(tmp_path):
    home = tmp_path / "home"
    (home / "tools").mkdir(parents=True)
    (home / "tools" / "hostile.py").write_text(
        "from llmunix import tool\nfrom llmunix.models import ToolError\n\n"
        "@tool\ndef hostile(ctx) -> None:\n    \"\"\"Fails with an escape sequence in its message.\"\"\"\n"
        "    raise ToolError('boom \\x1b]2;PWNED\\x07 done')\n")
    home.chmod(0o700)
    (home / "tools").chmod(0o700)
    child = spawn_prompt(home)
    try:
        child.sendline("run hostile")
        child.expect(PROMPT)
        child.expect(r"hostile[^\n]*failed[^\n]*boom \\x1b\]2;PWNED\\x07 done")
        assert TITLE not in child.before + child.after
    finally:
        close_prompt(child)


def test_on_a_terminal_events_have_a_header_and_a_closed_breaker_over_its_threshold_says_why(tmp_path):
    child = spawn_prompt(tmp_path)
    try:
        child.sendline("run echo text=hi")
        child.expect(PROMPT)
        child.sendline("events --pid 1 --tail 2")
        child.expect(r"TIME[^\n]*PID[^\n]*TYPE[^\n]*DETAILS")
        child.expect(r"001[^\n]*process\.")
        child.expect(PROMPT)
        child.sendline("events --pid 1 --type 'process.completed' --follow")  # ended: the header, the event
        child.expect(r"TIME[^\n]*PID[^\n]*TYPE[^\n]*DETAILS")
        child.expect(r"001[^\n]*process\.completed")
        child.expect(PROMPT)
        for _ in range(3):
            child.sendline("run fail")
            child.expect(PROMPT)
        child.sendline("wait")
        child.expect(PROMPT)
        child.sendline("set breaker_threshold 2")
        child.expect(PROMPT)
        child.sendline("breakers")
        child.expect(r"tool:fail[^\n]*closed[^\n]*3/2")
        child.expect(r"tool:fail: 3 failures in a row, threshold since lowered to 2: opens at the next failure "
                     r"\(or `breakers reset fail`\)")
        child.expect(PROMPT)
    finally:
        close_prompt(child)
