"""The malformed-input corpus: command lines a careless, confused or hostile user types, each with
the exit status it must give. `tests/test_malformed_inputs.py` runs them all as one script
(`llmunix -k FILE`, so every line runs) and checks that no input gives a traceback or an
"internal error", that each one fails or succeeds as listed, and that each failure is exactly one
line on stderr, starting `FILE:LINE: ` and naming the command. `bench/malformed.py` runs the same
corpus with the larger generated inputs (`generated(big=True)`).

A case is `(line, ok)`: `ok` is True when the command must succeed. Lines may use `{dir}`, the
directory holding the files FILES describes (written before the group runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DEEP = 5_000  # levels of nesting: deeper than any parser's recursion limit

# Files the cases refer to as {dir}/NAME: name -> bytes.
FILES: dict[str, bytes] = {
    "deep.yaml": b"name: deep\nsteps: " + b"[" * DEEP + b"]" * DEEP + b"\n",
    "deep-map.yaml": b"name: deep\nsteps:\n" + b"".join(b"  " * i + b"a:\n" for i in range(1, 300)) + b"\n",
    "deep.toml": b"name = 'deep'\nsteps = " + b"[" * DEEP + b"]" * DEEP + b"\n",
    "latin1.yaml": b"name: caf\xe9\nsteps:\n  - id: a\n    tool: echo\n    with: {text: x}\n",
    "latin1.md": b"---\nname: caf\xe9\n---\n### Step 1: x\n```yaml\ntool: echo\n```\n",
    "empty.yaml": b"",
    "list.yaml": b"- a\n- b\n",
    "scalar.yaml": b"just text\n",
    "garbage.yaml": bytes(range(256)) * 4,
    "tabs.yaml": b"name: t\nsteps:\n\t- id: a\n",
    "nul.yaml": b"name: n\x00\nsteps: []\n",
    "laughs.yaml": (b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
                    + b"".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
                               f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
                               f"*{chr(97 + i)}]\n".encode() for i in range(8))
                    + b"name: laughs\nsteps: *i\n"),
    "no-steps.yaml": b"name: nothing\n",
    "bad-step.yaml": b"name: bad\nsteps:\n  - id: a\n    tool: nosuchtool\n",
    "cycle.yaml": (b"name: cycle\nsteps:\n  - id: a\n    tool: echo\n    with: {text: x}\n    needs: [b]\n"
                   b"  - id: b\n    tool: echo\n    with: {text: y}\n    needs: [a]\n"),
    "spec.txt": b"name: x\n",
    "deep.json": b"[" * DEEP + b"]" * DEEP,
    "message.txt": b"hello\n",
}

PARSING = [
    ('run echo text="unclosed', False),
    ("run echo text='unclosed", False),
    ('run echo "unclosed', False),
    ("run echo 'unclosed", False),
    ('run echo text="a" "b', False),
    ('ps "', False),
    ("'", False),
    ('"', False),
    ("run echo text=a\\", False),
    ("ps \\", False),
    ("\\", False),
    ("run echo text=a; run echo text=b", False),
    ("ps;", False),
    (";", False),
    ("ps || ps", False),
    ("ps >>> out", False),
    ("ps >", False),
    ("ps >>", False),
    ("ps |", False),
    ("| ps", False),
    ("> out", False),
    ("ps > {dir}/a {dir}/b", False),
    ("ps > {dir}/nosuchdir/out", False),
    ("ps > {dir}", False),
    ("run echo text=a\x00b", False),
    ("\x00", False),
    ("rn", False),
    ("'rn' -a", False),
    ("ps\x1b[31m", False),
    ("\x1b[2J", False),
    ("ps --", True),
    ("ps -a # the finished ones too", True),
    ("run echo text=hi   # a note", True),
    ("run echo text='a # b'", True),
    ("run echo text=a#b", True),
    ("run echo 'text=a # b'", True),
    ("'run' echo text=x", True),
    ("run echo text=it\\'s", True),
    ('run echo text="say \\"hi\\""', True),
    ("run echo text=''", True),
    ("run shell cmd='echo a | wc -c'", True),
    ("ps -a > {dir}/ps.txt", True),
    ("ps -a >> {dir}/ps.txt", True),
    ("ps -a | cat > /dev/null", True),
    ("   ", True),
    ("# only a comment", True),
]

PIDS = [(f"{command} {pid}", False)
        for command in ("kill", "pause", "resume", "log", "mailbox", "rollback", "debug", "ps -l")
        for pid in ("0", "-1", "abc", "99999999999999999999999", "999", "1.5", "0x10", "''")]
PIDS += [
    ("priority 99999999999999999999999 high", False),
    ("priority 1 nosuchlevel", False),
    ("wait 99999999999999999999999", False),
    ("recover 99999999999999999999999", False),
    ("send 99999999999999999999999 hi", False),
    ("events -p 99999999999999999999999", False),
    ("events -p abc", False),
    ("workflow status 99999999999999999999999", False),
    ("run echo text=x --after 99999999999999999999999", False),
    ("run echo text=x --after abc", False),
    ("run echo text=x --after 0", False),
]

NUMBERS = [
    ("run sleep seconds=abc", False),
    ("run sleep seconds=-1", False),
    ("run sleep seconds=inf", False),
    ("run sleep seconds=nan", False),
    ("run sleep seconds=1e300", False),
    ("run sleep seconds=1e309", False),
    ("run sleep seconds=", False),
    ("run spin seconds=-inf", False),
    ("run wordcount text=a chunks=-5", False),
    ("run wordcount text=a chunks=0", False),
    ("run wordcount text=a chunks=1e9", False),
    ("run wordcount text=a parallel=0", False),
    ("run inbox count=-1", False),
    ("run inbox timeout=inf", False),
    ("run inbox delay=-1", False),
    ("run hold-locks seconds=nan", False),
    ("run web_fetch urls=x timeout=0", False),
    ("run web_fetch urls=x max_bytes=0", False),
    ("run summarize text=x sentences=-1", False),
    ("run analyze text=x top=0", False),
    ("run grep pattern=x max_matches=-1", False),
    ("run sleep seconds=0 --timeout -1", False),
    ("run sleep seconds=0 --timeout 0", False),
    ("run sleep seconds=0 --timeout 1e309", False),
    ("run sleep seconds=0 --timeout nan", False),
    ("run sleep seconds=0 --timeout inf", False),
    ("run sleep seconds=0 --timeout 5x", False),
    ("run sleep seconds=0 --timeout 99999999999d", False),
    ("run sleep seconds=0 --retry -1", False),
    ("run sleep seconds=0 --retry 1.5", False),
    ("run sleep seconds=0 --retry 99999999999999999999", False),
    ("run sleep seconds=0 --retry 2 --backoff 1s..inf", False),
    ("run sleep seconds=0 --retry 2 --backoff nan", False),
    ("run sleep seconds=0 --retry 2 --backoff x..y", False),
    ("run sleep seconds=0 --restart on-failure --max-restarts -1", False),
    ("run sleep seconds=0 --restart on-failure --min-uptime 1e309", False),
    ("run sleep seconds=0 --restart sometimes", False),
    ("run sleep seconds=0 --need memory=1e30", False),
    ("run sleep seconds=0 --need gpu=-1", False),
    ("run sleep seconds=0 --need gpu=nan", False),
    ("run sleep seconds=0 --need gpu=inf", False),
    ("run sleep seconds=0 --need gpu", False),
    ("run sleep seconds=0 --need =1", False),
    ("run sleep seconds=0 --need 'g p u=1'", False),
    ("run sleep seconds=0 --priority bogus", False),
    ("run sleep seconds=0 --priority ''", False),
    ("top -b -d 0", False),
    ("top -b -d nan", False),
    ("top -b -d -1", False),
    ("top -b -n 0", False),
    ("top -b -n abc", False),
    ("events -n -1", False),
    ("events -n abc", False),
    ("events --since yesterdayish", False),
    ("events --since 1e309", False),
    ("events -f --timeout nan", False),
    ("audit -n -5", False),
    ("audit --since nope", False),
    ("log 1 -n abc", False),
    ("gc --days -1", False),
    ("gc --days nan", False),
    ("gc --days inf", False),
    ("gc --keep -1", False),
    ("gc --keep abc", False),
    ("memory -n abc", False),
    ("agent run nosuchagent --goal x", False),
    ("limits gpu=-1", False),
    ("limits gpu=nan", False),
    ("limits gpu=inf", False),
    ("limits gpu", False),
    ("limits =1", False),
    ("wait --timeout nan", False),
    ("wait --timeout -1", False),
    ("wait --timeout 1e309", False),
    ("profile -d nan", False),
    ("profile -d -1", False),
    ("rollback 1 --to abc", False),
    ("run sleep seconds=0.01", True),
    ("run sleep seconds=0 --timeout 10s --retry 2 --backoff 1s..5s", True),
    ("run sleep seconds=0 --need gpu=0.5", True),
    ("events -n 1", True),
    ("audit -n 1", True),
]

SETTINGS = [
    ("set max_running 0", False),
    ("set max_running -1", False),
    ("set max_running abc", False),
    ("set max_running 1.5", False),
    ("set max_running 99999999999999999999", False),
    ("set max_running ''", False),
    ("set kill_grace nan", False),
    ("set kill_grace inf", False),
    ("set kill_grace -1", False),
    ("set kill_grace 1e309", False),
    ("set kill_grace 2h", False),
    ("set monitor_interval inf", False),
    ("set monitor_interval 0", False),
    ("set monitor_interval nan", False),
    ("set monitor_interval 1e-9", False),
    ("set time_slice 0", False),
    ("set time_slice inf", False),
    ("set stall_timeout -1", False),
    ("set stall_timeout nan", False),
    ("set stall_timeout 1e309", False),
    ("set breaker_threshold 0", False),
    ("set breaker_threshold abc", False),
    ("set breaker_cooldown inf", False),
    ("set chaos bogus", False),
    ("set chaos fail=2", False),
    ("set chaos fail=nan", False),
    ("set deadlock_policy sometimes", False),
    ("set stall_action explode", False),
    ("set loglevel loud", False),
    ("set echo maybe", False),
    ("set nosuchsetting 1", False),
    ("set max_runing 2", False),
    ("set max_running 4", True),
    ("set kill_grace 2s", True),
    ("set monitor_interval 0.5", True),
    ("set stall_timeout 2m", True),
    ("set chaos off", True),
    ("set", True),
    ("set max_running", True),
]

PARAMS = [
    ("run", False),
    ("run echo", False),
    ("run echo txt=hi", False),
    ("run echo text", False),
    ("run echo =x", False),
    ("run echo text=a text=b", False),
    ("run echo text=hi extra=1", False),
    ("run nosuchtool", False),
    ("run ''", False),
    ("run workflow", False),
    ("run sleep seconds=1 seconds=2", False),
    ("run fail message=x message=y", False),
    ("tools nosuchtool", False),
    ("tools ''", False),
    ("help nosuchcommand", False),
    ("ps --state", False),
    ("ps --bogus", False),
    ("kill", False),
    ("priority 1", False),
    ("run echo text=hi --name", False),
    ("alias create", False),
    ("send", False),
    ("send 1 -f {dir}/nosuchfile", False),
    ("broadcast", False),
    ("shared --set", False),
    ("debug", False),
    ("workflow", False),
    ("workflow nosuchaction", False),
    ("agent", False),
    ("agent run", False),
    ("breakers reset", False),
    ("breakers reset nosuchbreaker", False),
    ("run echo text=", True),
    ("run echo text=hi --name 'a name'", True),
    ("tools echo", True),
    ("tools", True),
]

WORKFLOWS = [
    ("workflow run {dir}/deep.yaml", False),
    ("workflow show {dir}/deep-map.yaml", False),
    ("workflow run {dir}/deep.toml", False),
    ("workflow run {dir}/latin1.yaml", False),
    ("workflow show {dir}/latin1.md", False),
    ("workflow run {dir}/empty.yaml", False),
    ("workflow run {dir}/list.yaml", False),
    ("workflow run {dir}/scalar.yaml", False),
    ("workflow run {dir}/garbage.yaml", False),
    ("workflow run {dir}/tabs.yaml", False),
    ("workflow run {dir}/nul.yaml", False),
    ("workflow show {dir}/laughs.yaml", False),
    ("workflow run {dir}/no-steps.yaml", False),
    ("workflow run {dir}/bad-step.yaml", False),
    ("workflow run {dir}/cycle.yaml", False),
    ("workflow run {dir}/spec.txt", False),
    ("workflow run {dir}/nosuchfile.yaml", False),
    ("workflow run {dir}", False),
    ("workflow run nosuchworkflow", False),
    ("workflow status nosuchworkflow", False),
    ("workflow run fan-out --input", False),
    ("workflow run fan-out --input =1", False),
    ("workflow run fan-out --input nosuchinput=1", False),
    ("workflow run fan-out --priority bogus", False),
    ("send 1 -f {dir}/deep.json", False),
    ("shared k --set [[[[[[[[[[[[", True),  # not JSON: stored as the text it is
    ("workflow show fan-out", True),
]


def all_cases(big: bool = False) -> list[tuple[str, bool]]:
    return [case for name, cases in GROUPS.items() if name != "generated" for case in cases] + generated(big)


def generated(big: bool = False) -> list[tuple[str, bool]]:
    """Inputs made by program: over-long lines (the tokenizer was quadratic: a 1 MB line took
    80-133 s), deeply nested JSON, and long runs of one character."""
    sizes = (70_000, 1_000_000) if big else (70_000,)
    cases: list[tuple[str, bool]] = []
    for n in sizes:
        cases += [
            ("run echo text=" + "a" * n, False),
            ("run echo " + " ".join(["x=y"] * (n // 4)), False),
            ("ps " + "'" * n, False),
            ("#" * n, True),  # a comment is never too long
        ]
    deep = "[" * DEEP + "]" * DEEP
    cases += [
        ("run inbox timeout=30", True),  # PID 1: something to send to
        (f"shared k --set '{deep}'", False),
        (f"send 1 '{deep}'", False),
        ("run echo text=" + "a" * 60_000, True),  # under the limit: runs
        ("ps " + "-" * 1000, False),
        ("run echo text=" + "\\" * 2001, False),
        ("run echo text=" + "'" * 2000, True),  # 1000 empty quotes: the text is empty
    ]
    return cases


GROUPS: dict[str, list[tuple[str, bool]]] = {
    "parsing": PARSING, "pids": PIDS, "numbers": NUMBERS, "settings": SETTINGS, "params": PARAMS,
    "workflows": WORKFLOWS, "generated": generated(),
}


@dataclass
class Outcome:
    """What one group's run did: the exit status, and per line of the script its stderr lines."""

    status: int
    errors: dict[int, list[str]] = field(default_factory=dict)  # line number -> its error lines
    other: list[str] = field(default_factory=list)  # stderr lines that belong to no line
    seconds: float = 0.0


def run_group(executable: str, cases: list[tuple[str, bool]], workdir: Path, timeout: float = 120.0) -> Outcome:
    """Run `cases` as one script, `llmunix -k SCRIPT`, in a fresh home under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in FILES.items():
        (workdir / name).write_bytes(data)
    script = workdir / "corpus.llmunix"
    script.write_bytes("\n".join(line.format(dir=workdir) for line, _ok in cases).encode("utf-8") + b"\n")
    env = {**os.environ, "LLMUNIX_HOME": str(workdir / "home"), "NO_COLOR": "1"}
    start = time.monotonic()
    done = subprocess.run([executable, "-k", str(script)], capture_output=True, text=True, env=env,
                          cwd=workdir, timeout=timeout, stdin=subprocess.DEVNULL)
    outcome = Outcome(done.returncode, seconds=time.monotonic() - start)
    prefix = re.compile(re.escape(str(script)) + r":(\d+): ")
    for line in done.stderr.splitlines():
        m = prefix.match(line)
        if m:
            outcome.errors.setdefault(int(m.group(1)), []).append(line[m.end():])
        else:
            outcome.other.append(line)
    return outcome


def problems(cases: list[tuple[str, bool]], outcome: Outcome) -> list[str]:
    """Everything wrong with an outcome: a traceback or internal error, a case that failed or
    succeeded against its listing, an error of more than one line or not naming a command."""
    found = [f"stray stderr: {line[:200]}" for line in outcome.other
             if not line.startswith("llmunix: ") or "Traceback" in line or "internal error" in line]
    for number, (line, ok) in enumerate(cases, 1):
        errors = outcome.errors.get(number, [])
        shown = repr(line if len(line) < 80 else line[:80] + "...")
        if ok and errors:
            found.append(f"line {number} {shown} should succeed: {errors[0][:200]}")
        elif not ok and not errors:
            found.append(f"line {number} {shown} should fail but exited 0")
        elif len(errors) > 1:
            found.append(f"line {number} {shown}: {len(errors)} error lines: {errors[:3]}")
        for error in errors:
            if "internal error" in error or "Traceback" in error:
                found.append(f"line {number} {shown}: {error[:200]}")
            elif not re.match(r"^[\w.!?@-]+( [\w.!?@-]+)?: \S", error):
                found.append(f"line {number} {shown}: error names no command: {error[:200]}")
    return found

# Found by the corpus and left to the helpers that own the code (run by hand, not asserted here):
#   `ps --state bogus` exits 0 with an empty table (commands/process.py, issue 16)
#   `top -n 1` in a read-only shell hangs: Kernel.samples calls Kernel.info under its own lock
#   (see test_read_only_shell_top_does_not_hang)
