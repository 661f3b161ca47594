"""The malformed-input corpus at full size, and how long llmunix takes to refuse a huge line.

Not a test: it prints what it finds and exits 0. The corpus is tests/malformed_inputs.py (the
suite runs it with 70,000-character lines; here also 1,000,000). Before the shell read lines
itself (commands/cmdline.py), cmd2's tokenizer took 80-133 s for one 1 MB line.

    python bench/malformed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import malformed_inputs as corpus  # noqa: E402
from conftest import LLMUNIX  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="llmunix-malformed-"))
    cases = corpus.all_cases(big=True)
    outcome = corpus.run_group(LLMUNIX, cases, work / "corpus", timeout=600)
    found = corpus.problems(cases, outcome)
    failing = sum(1 for _line, ok in cases if not ok)
    print(f"corpus: {len(cases)} inputs ({failing} must fail), one llmunix run: {outcome.seconds:.1f} s, "
          f"{len(found)} problem(s)")
    for problem in found:
        print("  ", problem)
    print("\nrefusing one over-long line (llmunix start-up included):")
    print(f"{'characters':>12}  {'seconds':>8}  verdict")
    for n in (65_537, 1_000_000, 10_000_000):
        line = [("run echo text=" + "a" * n, False)]
        start = time.monotonic()
        result = corpus.run_group(LLMUNIX, line, work / f"line-{n}", timeout=600)
        seconds = time.monotonic() - start
        ok = not corpus.problems(line, result)
        print(f"{n:>12,}  {seconds:>8.2f}  {'refused in one line' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
