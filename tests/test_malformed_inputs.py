"""The malformed-input corpus (tests/malformed_inputs.py) through the real executable: one
`llmunix -k SCRIPT` run for all of it (a few seconds); bench/malformed.py runs the larger version."""

from __future__ import annotations

import malformed_inputs as corpus
from conftest import LLMUNIX


def test_every_malformed_input_gives_one_line_naming_its_command_and_the_right_exit_status(tmp_path):
    cases = corpus.all_cases()
    assert len(cases) > 250 and sum(1 for _line, ok in cases if not ok) > 200  # the corpus stays big
    outcome = corpus.run_group(LLMUNIX, cases, tmp_path)
    found = corpus.problems(cases, outcome)
    assert not found, f"{len(found)} problem(s):\n" + "\n".join(found)
    assert outcome.status == 1  # -k ran every line; some failed


def test_the_checker_itself_catches_a_wrong_status_and_a_two_line_error(tmp_path):
    cases = [("ps", False), ("kill 999", True), ("rn", False)]
    outcome = corpus.run_group(LLMUNIX, cases, tmp_path)
    found = corpus.problems(cases, outcome)
    assert any("'ps' should fail but exited 0" in p for p in found)
    assert any("'kill 999' should succeed" in p for p in found)
    assert not any("'rn'" in p for p in found)
    outcome.errors[3].append("a second line")
    assert any("2 error lines" in p for p in corpus.problems(cases, outcome))
