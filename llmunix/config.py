"""Configuration: the home directory and `config.toml`, validated by pydantic."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from llmunix.home import UnsafePath, prepare_home, unsafe_reason
from llmunix.models import LlmunixError

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
MAX_COUNT = 1_000_000  # processes, threads, failures: far beyond any real use, far below overflow
MAX_AMOUNT = 1e12  # megabytes and other amounts


class EndpointConfig(pydantic.BaseModel):
    """One `[llm.endpoints."URL|MODEL"]` (or `."URL"`) table: how much an LLM endpoint takes
    (docs/agents.md, "Endpoint limits"). Unset: unlimited."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    max_concurrent: int | None = pydantic.Field(None, ge=1, le=MAX_COUNT, description="requests in flight at once")
    requests_per_min: float | None = pydantic.Field(None, gt=0, le=MAX_AMOUNT, description="requests per minute")
    tokens_per_min: float | None = pydantic.Field(None, gt=0, le=MAX_AMOUNT,
                                                  description="tokens (prompt and completion) per minute")


class PriceConfig(pydantic.BaseModel):
    """One `[llm.prices."MODEL"]` table: US dollars per million tokens, for `stats --tokens`,
    `ps -l` and `--max-cost`."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    input: float = pydantic.Field(ge=0, le=1e6, description="USD per 1M prompt (input) tokens")
    output: float = pydantic.Field(ge=0, le=1e6, description="USD per 1M completion (output) tokens")


class LlmConfig(pydantic.BaseModel):
    """The `[llm]` table: how agents reach a language model (see docs/agents.md). The environment
    overrides it: LLMUNIX_LLM_BACKEND, LLMUNIX_LLM_BASE_URL, LLMUNIX_LLM_MODEL, LLMUNIX_LLM_STREAM,
    and the key from the variable named by `api_key_env`."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: Literal["offline", "openai"] = pydantic.Field(
        "offline", description="offline (deterministic, no network) or openai (OpenAI-compatible chat completions)")
    base_url: str = pydantic.Field("https://api.openai.com/v1", description="the chat completions API root")
    model: str = pydantic.Field("gpt-4o-mini", description="the model name sent to the API")
    api_key_env: str = pydantic.Field("OPENAI_API_KEY", description="environment variable holding the API key")
    timeout: float = pydantic.Field(60.0, gt=0, le=DAY, description="seconds to wait for one reply")
    retries: int = pydantic.Field(3, ge=0, le=100, description="retries after a 429, a 5xx or a dropped connection")
    backoff: float = pydantic.Field(1.0, ge=0, le=HOUR, description="first retry delay in seconds (doubles each time)")
    max_iterations: int = pydantic.Field(10, ge=1, le=10_000,
                                         description="an agent's Thinking/Acting rounds unless it says")
    tool_format: Literal["native", "text"] = pydantic.Field(
        "native", description="native function calling, or the LLMunix text formats in the reply")
    stream: bool = pydantic.Field(
        False, description="ask for the reply as a stream (SSE): its text reaches the process log as it arrives, "
        "and the time to the first token is recorded")
    endpoints: dict[str, EndpointConfig] = pydantic.Field(
        default_factory=dict, description='limits per endpoint: [llm.endpoints."URL|MODEL"] (or "URL": one limit '
        "for every model served there) with max_concurrent, requests_per_min, tokens_per_min")
    prices: dict[str, PriceConfig] = pydantic.Field(
        default_factory=dict, description='prices per model: [llm.prices."MODEL"] input = USD per 1M prompt tokens, '
        "output = USD per 1M completion tokens")

    @pydantic.field_validator("endpoints")
    @classmethod
    def _endpoint_keys(cls, value: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        from llmunix.agents.endpoints import split_key

        for key in value:
            try:
                split_key(key)
            except LlmunixError as exc:
                raise ValueError(str(exc)) from None
        return value


class ToolSettings(pydantic.BaseModel):
    """A `[tools.NAME]` table: how one tool's processes run (docs/tools.md, "Isolated processes")."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    isolation: Literal["thread", "process"] | None = pydantic.Field(
        None, description="process: each run in a worker OS process of its own; thread: on a thread")
    memory: str | float | None = pydantic.Field(
        None, description="memory limit of each run, e.g. 500MB (isolates a Python tool)")
    cpu_time: str | float | None = pydantic.Field(
        None, description="CPU time limit of each run, e.g. 60s (isolates a Python tool)")

    @pydantic.field_validator("memory")
    @classmethod
    def _memory_parses(cls, value: str | float | None) -> str | float | None:
        from llmunix.isolation import parse_memory

        try:
            parse_memory(value)
        except LlmunixError as exc:
            raise ValueError(str(exc)) from None
        return value

    @pydantic.field_validator("cpu_time")
    @classmethod
    def _cpu_time_parses(cls, value: str | float | None) -> str | float | None:
        from llmunix.isolation import parse_cpu_time

        try:
            parse_cpu_time(value)
        except LlmunixError as exc:
            raise ValueError(str(exc)) from None
        return value


class Config(pydantic.BaseModel):
    """Settings read from `<home>/config.toml` (or `--config FILE`). Every key is optional.
    Every number has a range (the shell's `set` checks against the same, see `check_setting`):
    an infinite, NaN or absurd value would stop a timer or a background thread."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    max_running: int = pydantic.Field(8, ge=1, le=MAX_COUNT, description="processes allowed to run at once")
    max_threads: int | None = pydantic.Field(
        1024, ge=1, le=MAX_COUNT, description="worker threads kept (a soft cap: past it threads are made for the "
        "moment and end after; processes waiting off-slot for a model keep theirs)")
    kill_grace: float = pydantic.Field(2.0, ge=0, le=HOUR, description="seconds between kill escalation steps")
    time_slice: float = pydantic.Field(0.5, gt=0, le=HOUR, description="seconds before a process yields to its peers")
    aging_interval: float = pydantic.Field(5.0, ge=0, le=DAY, description="seconds of waiting per level of aging")
    monitor_interval: float = pydantic.Field(1.0, ge=0.01, le=HOUR, description="seconds between resource samples")
    retention_days: float = pydantic.Field(30.0, ge=0, le=36_500, description="finished processes older than this many "
                                           "days are compacted (summary row kept; events, logs, checkpoints deleted)")
    retention_count: int = pydantic.Field(10_000, ge=0, le=10**9, description="newest finished processes kept in full "
                                          "(and the most held in memory); older ones are compacted")
    tool_paths: list[str] = pydantic.Field(default_factory=list, description="extra directories of tools")
    definition_paths: list[str] = pydantic.Field(
        default_factory=list, description="extra directories of LLMunix agent and tool markdown, searched after "
        "the built-in ones (relative to where llmunix starts; globs such as projects/*/agents allowed; "
        "`agents --paths` lists them all)")
    tool_modules: list[str] = pydantic.Field(default_factory=list, description="modules to import for tools")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = pydantic.Field(
        "info", description="what llmunix.log records (the shell's `set loglevel` changes it)")
    log_max_bytes: int = pydantic.Field(5_000_000, ge=0, le=10**12,
                                        description="rotate llmunix.log at this size (0: never)")
    log_backups: int = pydantic.Field(3, ge=0, le=1000, description="rotated llmunix.log files to keep")
    limits: dict[str, float] = pydantic.Field(
        default_factory=dict, description="resource capacities, e.g. memory_mb = 8000, gpu = 1, "
        "llm_tokens_per_min = 90000 (the `limits` command changes them)")
    memory_pressure_mb: float | None = pydantic.Field(
        None, ge=0, le=MAX_AMOUNT,
        description="below this much available memory, low and idle work waits (default: 5% of total)")
    pause_idle_under_pressure: bool = pydantic.Field(
        False, description="under memory pressure, also pause running idle processes (resumed when it ends)")
    scheduling: Literal["fifo", "learned"] = pydantic.Field(
        "fifo", description="the order within a priority level: fifo (arrival), or learned (shortest expected "
        "duration first from each tool's past runs, with aging; deadlines earliest first; the shell's "
        "`set scheduling` changes it)")
    preload: list[str] = pydantic.Field(
        default_factory=list, description="modules to import at start (what tools import lazily), so the first "
        "run does not pay for them")
    deadlock_policy: Literal["report", "kill-lowest"] = pydantic.Field(
        "report", description="on a deadlock: report it (event, alert, `locks`), or also kill its lowest-priority "
        "member (the shell's `set deadlock_policy` changes it)")
    llm: LlmConfig = pydantic.Field(default_factory=LlmConfig, description="agents' LLM backend ([llm] table)")
    allow_shell_tools: bool = pydantic.Field(
        False, description="let markdown shell tools run, and agents use the shell tool")
    workspace: str = pydantic.Field(
        "workspace", description="the directory file tools are confined to (relative to where llmunix starts)")
    agent_allowed_urls: list[str] = pydantic.Field(
        default_factory=list, description="URLs tools run by agents (web_fetch) may fetch: SCHEME://HOST[:PORT] "
        "entries, http or https; HOST may be * or *.example.com; no port: any port. file:// never (default: none)")
    isolation: Literal["thread", "process"] = pydantic.Field(
        "thread", description="where users' Python tools run by default: thread (microseconds, shares llmunix's "
        "memory) or process (a worker OS process each: true memory, hard pause and kill, crashes contained)")
    tools: dict[str, ToolSettings] = pydantic.Field(
        default_factory=dict, description="per-tool settings: [tools.NAME] isolation, memory, cpu_time")
    backend: Literal["threads", "dask"] = pydantic.Field(
        "threads", description="where bodies of remote tools run: threads (here) or dask (a cluster; docs/cluster.md)")
    dask_scheduler: str | None = pydantic.Field(
        None, description="the Dask scheduler's address for the dask backend, e.g. tcp://10.0.0.5:8786 "
        "(unset: a local cluster is started)")

    # resilience (docs/resilience.md)
    breaker_threshold: int = pydantic.Field(5, ge=1, le=MAX_COUNT,
                                            description="consecutive failures that open a circuit breaker")
    breaker_cooldown: float = pydantic.Field(30.0, ge=0, le=WEEK,
                                             description="seconds an open breaker waits before a probe")
    stall_timeout: float = pydantic.Field(60.0, ge=0, le=WEEK, description="seconds without progress before a running "
                                          "process is marked stalled (0: no watchdog)")
    stall_action: Literal["alert", "restart", "kill"] = pydantic.Field(
        "alert", description="what the watchdog does with a stalled process")
    chaos: str | None = pydantic.Field(None, description='fault injection for tool processes, e.g. '
                                       '"fail=0.2,hang=0.05,slow=0.1,seed=42" (testing only)')
    health_min_disk_mb: float = pydantic.Field(100.0, ge=0, le=MAX_AMOUNT,
                                               description="`health` fails below this much free "
                                               "disk space in the home")

    @pydantic.field_validator("agent_allowed_urls")
    @classmethod
    def _urls_parse(cls, value: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for entry in value:
            parts = urlsplit(entry.strip())
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{entry!r} is not an http(s)://HOST[:PORT] entry (file:// is never allowed)")
        return [entry.strip() for entry in value]

    @pydantic.field_validator("chaos")
    @classmethod
    def _chaos_parses(cls, value: str | None) -> str | None:
        from llmunix.resilience.chaos import ChaosSpec

        try:
            ChaosSpec.parse(value)
        except LlmunixError as exc:
            raise ValueError(str(exc)) from None
        return value

    def resilience(self) -> dict[str, Any]:
        """The Kernel's resilience keyword arguments."""
        return {k: getattr(self, k) for k in ("breaker_threshold", "breaker_cooldown", "stall_timeout",
                                              "stall_action", "chaos", "health_min_disk_mb")}


_ADAPTERS: dict[str, pydantic.TypeAdapter[Any]] = {}


def check_setting(name: str, value: Any) -> Any:
    """`value` for the setting `name`, converted and checked against its range in Config (what
    the shell's `set NAME VALUE` runs). Raises LlmunixError saying what is allowed."""
    field = Config.model_fields[name]
    adapter = _ADAPTERS.get(name)
    if adapter is None:
        adapter = _ADAPTERS[name] = pydantic.TypeAdapter(
            Annotated[field.annotation, *field.metadata], config=pydantic.ConfigDict(allow_inf_nan=False))
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError:
        raise LlmunixError(f"{name} must be {allowed_values(name)}, not {value!r}") from None


def allowed_values(name: str) -> str:
    """What a numeric setting accepts, in words: `a number from 0 to 3,600`."""
    field = Config.model_fields[name]
    low = high = None
    above = False
    for rule in field.metadata:
        if getattr(rule, "ge", None) is not None:
            low = rule.ge
        elif getattr(rule, "gt", None) is not None:
            low, above = rule.gt, True
        elif getattr(rule, "le", None) is not None:
            high = rule.le
    whole = int in (field.annotation, *getattr(field.annotation, "__args__", ()))
    kind = "a whole number" if whole else "a number"
    if low is None and high is None:
        return kind
    if above:
        return f"{kind} greater than {_num(low)}" + (f" and at most {_num(high)}" if high is not None else "")
    if high is None:
        return f"{kind} of at least {_num(low)}"
    return f"{kind} from {_num(low)} to {_num(high)}"


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


_ACTIVE: Config | None = None


def active_config() -> Config:
    """The configuration in effect in this program (`activate`d by the CLI; defaults otherwise)."""
    return _ACTIVE if _ACTIVE is not None else Config()


def activate(config: Config | None) -> None:
    """Make `config` the one `active_config()` returns (None: back to the defaults)."""
    global _ACTIVE
    _ACTIVE = config


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """`--home`, else $LLMUNIX_HOME, else the XDG state directory, made private (prepare_home)."""
    from llmunix.paths import home_path

    path = home_path(home)
    try:
        prepare_home(path)  # 0700 whatever the umask; refused if others can write it
    except OSError as exc:
        raise LlmunixError(f"cannot use {path} as the llmunix home: {exc.strerror}") from None
    return path


def load_config(home: Path, config_file: str | os.PathLike[str] | None = None) -> Config:
    path = Path(config_file) if config_file else home / "config.toml"
    if not path.exists():
        if config_file:
            raise LlmunixError(f"config file {path} does not exist")
        return Config()
    unsafe = unsafe_reason(path)  # its tool_modules, tool_paths and allow_shell_tools decide what runs
    if unsafe:
        raise UnsafePath(f"refusing to read the configuration: {unsafe}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise LlmunixError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise LlmunixError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise LlmunixError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start})") from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise LlmunixError(f"{path}: nested too deeply to be a configuration") from None
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = LlmConfig if len(err["loc"]) > 1 and err["loc"][0] == "llm" else Config
            if len(err["loc"]) > 2 and err["loc"][0] == "tools":
                section = ToolSettings
            known = ", ".join(section.model_fields)
            raise LlmunixError(f"{path}: unknown setting {key!r}; known settings: {known}") from None
        if len(err["loc"]) == 1 and key in Config.model_fields and Config.model_fields[key].metadata:
            raise LlmunixError(f"{path}: setting {key!r} must be {allowed_values(key)}") from None
        raise LlmunixError(f"{path}: setting {key!r}: {err['msg']}") from None
