"""Where the home is, computed without importing anything heavy (the attached client needs it
before it decides whether to load the engine at all)."""

from __future__ import annotations

import os
from pathlib import Path


def home_path(home: str | os.PathLike[str] | None = None) -> Path:
    """`--home`, else $LLMUNIX_HOME, else the XDG state directory (`~/.local/state/llmunix`)."""
    if home:
        return Path(home).expanduser()
    if os.environ.get("LLMUNIX_HOME"):
        return Path(os.environ["LLMUNIX_HOME"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llmunix"
