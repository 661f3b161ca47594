"""Configuration: the home directory and `config.toml`, validated by pydantic."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import pydantic

from llmunix.models import LlmunixError


class Config(pydantic.BaseModel):
    """Settings read from `<home>/config.toml` (or `--config FILE`). Every key is optional."""

    model_config = pydantic.ConfigDict(extra="forbid")

    max_running: int = pydantic.Field(8, ge=1, description="processes allowed to run at once")
    max_threads: int | None = pydantic.Field(None, ge=1, description="cap on worker threads")
    kill_grace: float = pydantic.Field(2.0, ge=0, description="seconds between kill escalation steps")
    time_slice: float = pydantic.Field(0.5, gt=0, description="seconds before a process yields to its peers")
    aging_interval: float = pydantic.Field(5.0, ge=0, description="seconds of waiting per level of aging")
    monitor_interval: float = pydantic.Field(1.0, gt=0, description="seconds between resource samples")
    retention_days: float = pydantic.Field(30.0, ge=0, description="finished processes older than this many "
                                           "days are compacted (summary row kept; events, logs, checkpoints deleted)")
    retention_count: int = pydantic.Field(10_000, ge=0, description="newest finished processes kept in full "
                                          "(and the most held in memory); older ones are compacted")
    tool_paths: list[str] = pydantic.Field(default_factory=list, description="extra directories of tools")
    tool_modules: list[str] = pydantic.Field(default_factory=list, description="modules to import for tools")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = pydantic.Field(
        "info", description="what llmunix.log records (the shell's `set loglevel` changes it)")
    log_max_bytes: int = pydantic.Field(5_000_000, ge=0, description="rotate llmunix.log at this size (0: never)")
    log_backups: int = pydantic.Field(3, ge=0, description="rotated llmunix.log files to keep")
    limits: dict[str, float] = pydantic.Field(
        default_factory=dict, description="resource capacities, e.g. memory_mb = 8000, gpu = 1, "
        "llm_tokens_per_min = 90000 (the `limits` command changes them)")
    memory_pressure_mb: float | None = pydantic.Field(
        None, ge=0, description="below this much available memory, low and idle work waits (default: 5% of total)")
    pause_idle_under_pressure: bool = pydantic.Field(
        False, description="under memory pressure, also pause running idle processes (resumed when it ends)")
    deadlock_policy: Literal["report", "kill-lowest"] = pydantic.Field(
        "report", description="on a deadlock: report it (event, alert, `locks`), or also kill its lowest-priority "
        "member (the shell's `set deadlock_policy` changes it)")


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """`--home`, else $LLMUNIX_HOME, else the XDG state directory."""
    if home:
        path = Path(home).expanduser()
    elif os.environ.get("LLMUNIX_HOME"):
        path = Path(os.environ["LLMUNIX_HOME"]).expanduser()
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "llmunix"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LlmunixError(f"cannot use {path} as the llmunix home: {exc.strerror}") from None
    return path


def load_config(home: Path, config_file: str | os.PathLike[str] | None = None) -> Config:
    path = Path(config_file) if config_file else home / "config.toml"
    if not path.exists():
        if config_file:
            raise LlmunixError(f"config file {path} does not exist")
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LlmunixError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise LlmunixError(f"{path}: {exc.strerror}") from None
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(Config.model_fields)
            raise LlmunixError(f"{path}: unknown setting {key!r}; known settings: {known}") from None
        raise LlmunixError(f"{path}: setting {key!r}: {err['msg']}") from None
