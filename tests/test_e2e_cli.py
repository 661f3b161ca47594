"""End to end: the real `llmunix` executable in -c, script and pipe modes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest
from conftest import LLMUNIX


def llmunix(*args: str, home, stdin: str | None = None, cwd=None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "LLMUNIX_HOME": str(home), "NO_COLOR": "1", **(env or {})}
    return subprocess.run([LLMUNIX, *args], input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)


def test_commands_run_in_order_and_exit_zero(tmp_path):
    r = llmunix("-c", "run echo text=hi", "-c", "run sleep seconds=0.2", "-c", "wait", "-c", "ps -a",
                home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["001", "002"]
    table = [line.split() for line in lines if line[:3].isdigit() and len(line.split()) == 8]
    assert [(row[0], row[1], row[2]) for row in table] == [("001", "echo", "Completed"), ("002", "sleep", "Completed")]


def test_piped_ps_can_be_grepped_from_bash(tmp_path):
    r = subprocess.run(f"{LLMUNIX} -c 'run fail' -c 'run echo text=a' -c 'wait -t 30' -k -c 'ps -a' "
                       "| grep Failed | awk '{print $1}'", shell=True, capture_output=True, text=True,
                       env={**os.environ, "LLMUNIX_HOME": str(tmp_path)}, timeout=60)
    assert r.stdout.strip() == "001"


def test_a_failed_command_gives_one_line_on_stderr_and_non_zero_status(tmp_path):
    r = llmunix("-c", "kill 999", home=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == "kill: no process 999; `ps -a` lists them"


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("ps --bogus", "unrecognized arguments: --bogus"),
        ("run nope", "unknown tool 'nope'"),
        ("run sleep seconds=x", "parameter 'seconds'"),
        ("priority 1 urgent", "unknown priority 'urgent'"),
        ("priority 1 high", "no process 001"),
        ("blargh", "blargh"),
    ],
)
def test_bad_input_never_shows_a_traceback(tmp_path, command, fragment):
    r = llmunix("-c", command, home=tmp_path)
    assert r.returncode != 0
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_a_script_stops_at_the_first_failure_unless_keep_going(tmp_path):
    script = tmp_path / "jobs.llmunix"
    script.write_text("# a comment\n\nrun echo text=one\nkill 42\nrun echo text=two\nwait\nps -a\n")
    r = llmunix(str(script), home=tmp_path / "h1")
    assert r.returncode == 1
    assert "kill: no process 042" in r.stderr
    assert r.stdout.splitlines() == ["001"]  # nothing after the failure ran
    r = llmunix("--keep-going", str(script), home=tmp_path / "h2")
    assert r.returncode == 1
    assert "002" in r.stdout and r.stdout.count("Completed") == 2


def test_commands_piped_on_stdin_run_too(tmp_path):
    r = llmunix(home=tmp_path, stdin="run echo text=piped\nwait\nps -a --json\n")
    assert r.returncode == 0, r.stderr
    assert '"tool_name": "echo"' in r.stdout and '"output": "piped"' in r.stdout


def test_leaving_with_live_processes_interrupts_them_and_stops_their_subprocesses(tmp_path):
    marker = f"{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000 + 1}"
    r = llmunix("-c", f'run shell "cmd=sleep {marker}; echo never"', "-c", "run sleep seconds=60",
                home=tmp_path, timeout=30)
    assert r.returncode == 0
    assert "interrupted 2 live process(es) on exit (001, 002); `recover` continues them" in r.stderr

    def leftover() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] and marker in " ".join(p.info["cmdline"]):
                found.append(p)
        return found

    assert leftover() == []


def test_pids_are_never_reused_across_runs(tmp_path):
    assert llmunix("-c", "run echo text=a", home=tmp_path).stdout.strip() == "001"
    assert llmunix("-c", "run echo text=b", home=tmp_path).stdout.strip() == "002"


def test_user_tools_load_from_the_tools_directory_and_a_broken_file_is_reported(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "greet.py").write_text(textwrap.dedent("""
        from llmunix import tool

        @tool
        def greet(ctx, name: str = "world") -> str:
            '''Say hello.'''
            return f"hello {name}"
    """))
    (tools / "broken.py").write_text("import nosuchmodule_xyz\n")
    r = llmunix("-c", "run greet name=ada", "-c", "wait", "-c", "ps -a --json", home=tmp_path / "home",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"output": "hello ada"' in r.stdout
    assert "broken.py: ModuleNotFoundError: No module named 'nosuchmodule_xyz'" in r.stderr


def test_tools_module_option(tmp_path):
    mod = tmp_path / "mytools_e2e.py"
    mod.write_text("from llmunix import tool\n\n@tool\ndef triple(ctx, x: int) -> int:\n    return 3 * x\n")
    r = llmunix("--tools", "mytools_e2e", "-c", "run triple x=4", "-c", "wait", "-c", "ps -l 1",
                home=tmp_path / "home", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "Output: 12" in r.stdout


def test_missing_script_and_bad_config_are_reported(tmp_path):
    r = llmunix(str(tmp_path / "nope.txt"), home=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"llmunix: no such script file: {tmp_path / 'nope.txt'}"
    (tmp_path / "config.toml").write_text("max_runing = 3\n")
    r = llmunix("-c", "ps", home=tmp_path)
    assert r.returncode == 2 and "unknown setting 'max_runing'" in r.stderr


def test_config_file_sets_max_running(tmp_path):
    (tmp_path / "config.toml").write_text("max_running = 1\n")
    r = llmunix("-c", "run sleep seconds=5", "-c", "run sleep seconds=5", "-c", "ps", home=tmp_path)
    assert r.returncode == 0, r.stderr
    states = [line.split()[2] for line in r.stdout.splitlines() if line.startswith("00") and len(line.split()) > 3]
    assert states == ["Running", "Pending"]


def test_version(tmp_path):
    r = llmunix("--version", home=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("llmunix ")


def test_python_api_runs_without_the_shell(tmp_path):
    code = textwrap.dedent("""
        from llmunix import Kernel, tool

        @tool
        def add(ctx, a: int, b: int) -> int:
            ctx.progress(1, 1)
            return a + b

        with Kernel() as k:
            pid = k.spawn("add", a=2, b="3")
            print(k.wait([pid], timeout=10)[0].output)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "5", r.stderr
