"""Configuration: the home directory and `config.toml`.

The settings are plain dataclasses whose fields carry their ranges (annotated_types) and their
descriptions (`Doc`). pydantic checks a config.toml, and a `set NAME VALUE`, against exactly those
(`pydantic.TypeAdapter`); it is imported only when there is something to check, so a start-up
without a config file (every one-shot `llmunix -c ...` of most users) does not pay for pydantic
(issue 15). Settings built in code (`Config(max_running=4)`) are not range-checked; their
`__post_init__` checks what needs parsing (chaos specs, URLs, limits) either way."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le

from llmunix.home import UnsafePath, prepare_home, unsafe_reason
from llmunix.models import DEFAULT_MAX_THREADS, LlmunixError

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
MAX_COUNT = 1_000_000  # processes, threads, failures: far beyond any real use, far below overflow
MAX_AMOUNT = 1e12  # megabytes and other amounts
_STRICT = {"extra": "forbid", "allow_inf_nan": False}  # a pydantic ConfigDict (a plain dict: no import)


class Doc(str):
    """A setting's description, in its `Annotated` type (pydantic ignores it)."""


def _check(name: str, parse: typing.Callable[[Any], Any], value: Any) -> None:
    """`parse(value)`, its LlmunixError as the ValueError pydantic reports (naming the setting)."""
    try:
        parse(value)
    except LlmunixError as exc:
        raise ValueError(f"setting {name!r}: {exc}") from None


class _Settings:
    """What every settings table shares: validation from plain data, the fields with their
    types, rules and descriptions, and `model_dump` (the names pydantic models had)."""

    __pydantic_config__ = _STRICT

    @classmethod
    def model_validate(cls, data: Any) -> Any:
        """Checked and converted from plain data (a parsed TOML table). Raises pydantic's
        ValidationError; `load_config` turns that into one line."""
        return _adapter(cls).validate_python(data)

    @classmethod
    def settings(cls) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        """Each field's name: (its type, its rules and Doc); resolved once."""
        return _fields_of(cls)

    def __post_init__(self) -> None:
        self._tables()

    def _tables(self) -> None:
        """Nested tables given as plain dicts (`LlmConfig(endpoints={"URL": {...}})` in code)
        become their settings objects, as a config file's do."""
        for name, (kind, _rules) in self.settings().items():
            value = getattr(self, name)
            if _is_table(kind) and isinstance(value, dict):
                setattr(self, name, kind(**value))
            elif typing.get_origin(kind) is dict and _is_table(typing.get_args(kind)[1]) and value:
                entry = typing.get_args(kind)[1]
                setattr(self, name, {k: entry(**v) if isinstance(v, dict) else v for k, v in value.items()})

    def model_dump(self, *, exclude_none: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        if exclude_none:
            data = {k: v for k, v in data.items() if v is not None}
        return data


@cache
def _fields_of(cls: type) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is Annotated:
            out[f.name] = (hint.__origin__, hint.__metadata__)
        else:
            out[f.name] = (hint, ())
    return out


@cache
def _adapter(kind: Any) -> Any:
    import pydantic

    return pydantic.TypeAdapter(kind, config=None if dataclasses.is_dataclass(kind) else _STRICT)  # type: ignore[arg-type]


@dataclass
class EndpointConfig(_Settings):
    """One `[llm.endpoints."URL|MODEL"]` (or `."URL"`) table: how much an LLM endpoint takes
    (docs/agents.md, "Endpoint limits"). Unset: unlimited."""

    max_concurrent: Annotated[int | None, Ge(1), Le(MAX_COUNT), Doc("requests in flight at once")] = None
    requests_per_min: Annotated[float | None, Gt(0), Le(MAX_AMOUNT), Doc("requests per minute")] = None
    tokens_per_min: Annotated[float | None, Gt(0), Le(MAX_AMOUNT), Doc(
        "tokens (prompt and completion) per minute")] = None


@dataclass
class PriceConfig(_Settings):
    """One `[llm.prices."MODEL"]` table: US dollars per million tokens, for `stats --tokens`,
    `ps -l` and `--max-cost`."""

    input: Annotated[float, Ge(0), Le(1e6), Doc("USD per 1M prompt (input) tokens")]
    output: Annotated[float, Ge(0), Le(1e6), Doc("USD per 1M completion (output) tokens")]


@dataclass
class LlmConfig(_Settings):
    """The `[llm]` table: how agents reach a language model (see docs/agents.md). The environment
    overrides it: LLMUNIX_LLM_BACKEND, LLMUNIX_LLM_BASE_URL, LLMUNIX_LLM_MODEL, LLMUNIX_LLM_STREAM,
    and the key from the variable named by `api_key_env`."""

    backend: Annotated[Literal["offline", "openai"], Doc(
        "offline (deterministic, no network) or openai (OpenAI-compatible chat completions)")] = "offline"
    base_url: Annotated[str, Doc("the chat completions API root")] = "https://api.openai.com/v1"
    model: Annotated[str, Doc("the model name sent to the API")] = "gpt-4o-mini"
    api_key_env: Annotated[str, Doc("environment variable holding the API key")] = "OPENAI_API_KEY"
    timeout: Annotated[float, Gt(0), Le(DAY), Doc("seconds to wait for one reply")] = 60.0
    retries: Annotated[int, Ge(0), Le(100), Doc("retries after a 429, a 5xx or a dropped connection")] = 3
    backoff: Annotated[float, Ge(0), Le(HOUR), Doc("first retry delay in seconds (doubles each time)")] = 1.0
    max_iterations: Annotated[int, Ge(1), Le(10_000), Doc("an agent's Thinking/Acting rounds unless it says")] = 10
    tool_format: Annotated[Literal["native", "text"], Doc(
        "native function calling, or the LLMunix text formats in the reply")] = "native"
    stream: Annotated[bool, Doc(
        "ask for the reply as a stream (SSE): its text reaches the process log as it arrives, and the "
        "time to the first token is recorded")] = False
    endpoints: Annotated[dict[str, EndpointConfig], Doc(
        'limits per endpoint: [llm.endpoints."URL|MODEL"] (or "URL": one limit for every model served '
        "there) with max_concurrent, requests_per_min, tokens_per_min")] = field(default_factory=dict)
    prices: Annotated[dict[str, PriceConfig], Doc(
        'prices per model: [llm.prices."MODEL"] input = USD per 1M prompt tokens, output = USD per 1M '
        "completion tokens")] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tables()
        if self.endpoints:
            from llmunix.agents.endpoints import split_key

            for key in self.endpoints:
                _check("endpoints", split_key, key)


@dataclass
class ToolSettings(_Settings):
    """A `[tools.NAME]` table: how one tool's processes run (docs/tools.md, "Isolated processes")."""

    isolation: Annotated[Literal["thread", "process"] | None, Doc(
        "process: each run in a worker OS process of its own; thread: on a thread")] = None
    memory: Annotated[str | float | None, Doc(
        "memory limit of each run, e.g. 500MB (isolates a Python tool)")] = None
    cpu_time: Annotated[str | float | None, Doc(
        "CPU time limit of each run, e.g. 60s (isolates a Python tool)")] = None
    io_rate: Annotated[str | float | None, Doc(
        "I/O rate limit of each run, e.g. 10MB/s (isolates a Python tool)")] = None

    def __post_init__(self) -> None:
        if self.memory is not None or self.cpu_time is not None or self.io_rate is not None:
            from llmunix.isolation import parse_cpu_time, parse_io_rate, parse_memory

            _check("memory", parse_memory, self.memory)
            _check("cpu_time", parse_cpu_time, self.cpu_time)
            _check("io_rate", parse_io_rate, self.io_rate)


@dataclass
class AutoScaleConfig(_Settings):
    """The `[max_running_auto]` table: how `max_running = "auto"` moves (llmunix/autoscale.py)."""

    minimum: Annotated[int, Ge(1), Le(MAX_COUNT), Doc("never fewer slots than this")] = 1
    maximum: Annotated[int | None, Ge(1), Le(MAX_COUNT), Doc(
        "never more (default: the larger of 8 and 4 per CPU)")] = None
    cpu_low: Annotated[float, Ge(0), Le(100), Doc("grow only while CPU (all cores) is below this")] = 60.0
    cpu_high: Annotated[float, Ge(0), Le(100), Doc("shrink when CPU is at or above this")] = 85.0
    samples: Annotated[int, Ge(1), Le(1000), Doc("readings in a row that must agree before a change")] = 3

    def __post_init__(self) -> None:
        if self.maximum is not None and self.maximum < self.minimum:
            raise ValueError(f"maximum ({self.maximum}) is below minimum ({self.minimum})")
        if self.cpu_low >= self.cpu_high:
            raise ValueError(f"cpu_low ({self.cpu_low:g}) must be below cpu_high ({self.cpu_high:g})")

    def auto_settings(self) -> Any:
        from llmunix.autoscale import AutoSettings

        return AutoSettings(self.minimum, self.maximum, self.cpu_low, self.cpu_high, self.samples)


@dataclass
class DaskAdaptConfig(_Settings):
    """The `dask_adapt` table: adaptive scaling of the local Dask cluster (docs/cluster.md)."""

    minimum: Annotated[int, Ge(0), Le(10_000), Doc("workers kept even when idle")] = 0
    maximum: Annotated[int, Ge(1), Le(10_000), Doc("workers at most")] = 4

    def __post_init__(self) -> None:
        if self.maximum < self.minimum:
            raise ValueError(f"maximum ({self.maximum}) is below minimum ({self.minimum})")


@dataclass
class Config(_Settings):
    """Settings read from `<home>/config.toml` (or `--config FILE`). Every key is optional.
    Every number has a range (the shell's `set` checks against the same, see `check_setting`):
    an infinite, NaN or absurd value would stop a timer or a background thread."""

    max_running: Annotated[Annotated[int, Ge(1), Le(MAX_COUNT)] | Literal["auto"], Doc(
        "processes allowed to run at once, or auto: follow CPU and memory headroom ([max_running_auto]; "
        "`limits` says the value now and why)")] = 8
    max_running_auto: Annotated[AutoScaleConfig, Doc(
        "bounds and thresholds of max_running = auto")] = field(default_factory=AutoScaleConfig)
    max_threads: Annotated[int | None, Ge(1), Le(MAX_COUNT), Doc(
        "worker threads kept (a soft cap: past it threads are made for the moment and end after; "
        "processes waiting off-slot for a model keep theirs)")] = DEFAULT_MAX_THREADS
    kill_grace: Annotated[float, Ge(0), Le(HOUR), Doc("seconds between kill escalation steps")] = 2.0
    time_slice: Annotated[float, Gt(0), Le(HOUR), Doc("seconds before a process yields to its peers")] = 0.5
    aging_interval: Annotated[float, Ge(0), Le(DAY), Doc("seconds of waiting per level of aging")] = 5.0
    monitor_interval: Annotated[float, Ge(0.01), Le(HOUR), Doc("seconds between resource samples")] = 1.0
    retention_days: Annotated[float, Ge(0), Le(36_500), Doc(
        "finished processes older than this many days are compacted (summary row kept; events, logs, "
        "checkpoints deleted)")] = 30.0
    retention_count: Annotated[int, Ge(0), Le(10**9), Doc(
        "newest finished processes kept in full (and the most held in memory); older ones are compacted")] = 10_000
    tool_paths: Annotated[list[str], Doc("extra directories of tools")] = field(default_factory=list)
    definition_paths: Annotated[list[str], Doc(
        "extra directories of LLMunix agent and tool markdown, searched after the built-in ones (relative"
        " to where llmunix starts; globs such as projects/*/agents allowed; `agents --paths` lists them "
        "all)")] = field(default_factory=list)
    tool_modules: Annotated[list[str], Doc("modules to import for tools")] = field(default_factory=list)
    log_level: Annotated[Literal["debug", "info", "warning", "error", "critical"], Doc(
        "what llmunix.log records (the shell's `set loglevel` changes it)")] = "info"
    log_max_bytes: Annotated[int, Ge(0), Le(10**12), Doc("rotate llmunix.log at this size (0: never)")] = 5_000_000
    log_backups: Annotated[int, Ge(0), Le(1000), Doc("rotated llmunix.log files to keep")] = 3
    limits: Annotated[dict[str, float], Doc(
        "resource capacities, e.g. memory_mb = 8000, gpu = 1, llm_tokens_per_min = 90000 (the `limits` "
        "command changes them)")] = field(default_factory=dict)
    memory_pressure_mb: Annotated[float | None, Ge(0), Le(MAX_AMOUNT), Doc(
        "below this much available memory, low and idle work waits (default: 5% of total)")] = None
    pause_idle_under_pressure: Annotated[bool, Doc(
        "under memory pressure, also pause running idle processes (resumed when it ends)")] = False
    scheduling: Annotated[Literal["fifo", "learned"], Doc(
        "the order within a priority level: fifo (arrival), or learned (shortest expected duration first "
        "from each tool's past runs, with aging; deadlines earliest first; the shell's `set scheduling` "
        "changes it)")] = "fifo"
    preload: Annotated[list[str], Doc(
        "modules to import at start (what tools import lazily), so the first run does not pay for them"
    )] = field(default_factory=list)
    deadlock_policy: Annotated[Literal["report", "kill-lowest"], Doc(
        "on a deadlock: report it (event, alert, `locks`), or also kill its lowest-priority member (the "
        "shell's `set deadlock_policy` changes it)")] = "report"
    llm: Annotated[LlmConfig, Doc("agents' LLM backend ([llm] table)")] = field(default_factory=LlmConfig)
    allow_shell_tools: Annotated[bool, Doc("let markdown shell tools run, and agents use the shell tool")] = False
    workspace: Annotated[str, Doc(
        "the directory file tools are confined to (relative to where llmunix starts)")] = "workspace"
    agent_allowed_urls: Annotated[list[str], Doc(
        "URLs tools run by agents (web_fetch) may fetch: SCHEME://HOST[:PORT] entries, http or https; "
        "HOST may be * or *.example.com; no port: any port. file:// never (default: none)"
    )] = field(default_factory=list)
    isolation: Annotated[Literal["thread", "process"], Doc(
        "where users' Python tools run by default: thread (microseconds, shares llmunix's memory) or "
        "process (a worker OS process each: true memory, hard pause and kill, crashes contained)")] = "thread"
    tools: Annotated[dict[str, ToolSettings], Doc(
        "per-tool settings: [tools.NAME] isolation, memory, cpu_time, io_rate")] = field(default_factory=dict)
    io_cgroup: Annotated[str | None, Doc(
        "a cgroup v2 directory delegated to you, with the io controller available: --io-rate then uses "
        "io.max (disk I/O, held by the kernel) instead of a SIGSTOP/SIGCONT duty cycle")] = None
    connections_per_host: Annotated[int, Ge(0), Le(MAX_COUNT), Doc(
        "web_fetch connections open at once to one host, across processes (0: unlimited); more wait "
        "their turn off-slot")] = 6
    host_connections: Annotated[dict[str, Annotated[int, Ge(0), Le(MAX_COUNT)]], Doc(
        'per-host connection limits over connections_per_host: {"api.example.com" = 2, '
        '"127.0.0.1:8000" = 1} (a host, or host:port; 0: unlimited)')] = field(default_factory=dict)
    backend: Annotated[Literal["threads", "dask"], Doc(
        "where bodies of remote tools run: threads (here) or dask (a cluster; docs/cluster.md)")] = "threads"
    dask_scheduler: Annotated[str | None, Doc(
        "the Dask scheduler's address for the dask backend, e.g. tcp://10.0.0.5:8786 (unset: a local "
        "cluster is started)")] = None
    dask_adapt: Annotated[DaskAdaptConfig | None, Doc(
        "adaptive scaling of the local cluster llmunix starts: {minimum = 1, maximum = 8} workers (a "
        "remote scheduler's cluster scales where it is managed)")] = None

    # resilience (docs/resilience.md)
    breaker_threshold: Annotated[int, Ge(1), Le(MAX_COUNT), Doc(
        "consecutive failures that open a circuit breaker")] = 5
    breaker_cooldown: Annotated[float, Ge(0), Le(WEEK), Doc("seconds an open breaker waits before a probe")] = 30.0
    stall_timeout: Annotated[float, Ge(0), Le(WEEK), Doc(
        "seconds without progress before a running process is marked stalled (0: no watchdog)")] = 60.0
    stall_action: Annotated[Literal["alert", "restart", "kill"], Doc(
        "what the watchdog does with a stalled process")] = "alert"
    chaos: Annotated[str | None, Doc(
        'fault injection for tool processes, e.g. "fail=0.2,hang=0.05,slow=0.1,seed=42" (testing only)')] = None
    health_min_disk_mb: Annotated[float, Ge(0), Le(MAX_AMOUNT), Doc(
        "`health` fails below this much free disk space in the home")] = 100.0

    def __post_init__(self) -> None:
        self._tables()
        if self.agent_allowed_urls:
            from urllib.parse import urlsplit

            for entry in self.agent_allowed_urls:
                parts = urlsplit(str(entry).strip())
                if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                    raise ValueError(f"setting 'agent_allowed_urls': {entry!r} is not an http(s)://HOST[:PORT] "
                                     "entry (file:// is never allowed)")
            self.agent_allowed_urls = [str(entry).strip() for entry in self.agent_allowed_urls]
        if self.chaos is not None:
            from llmunix.resilience.chaos import ChaosSpec

            _check("chaos", ChaosSpec.parse, self.chaos)

    def resilience(self) -> dict[str, Any]:
        """The Kernel's resilience keyword arguments."""
        return {k: getattr(self, k) for k in ("breaker_threshold", "breaker_cooldown", "stall_timeout",
                                              "stall_action", "chaos", "health_min_disk_mb")}


def check_setting(name: str, value: Any) -> Any:
    """`value` for the setting `name`, converted and checked against its range in Config (what
    the shell's `set NAME VALUE` runs). Raises LlmunixError saying what is allowed."""
    import pydantic

    kind, rules = Config.settings()[name]
    adapter = _adapter(Annotated[kind, *rules] if rules else kind)
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError:
        raise LlmunixError(f"{name} must be {allowed_values(name)}, not {value!r}") from None


def allowed_values(name: str) -> str:
    """What a numeric setting accepts, in words: `a number from 0 to 3,600` (`..., or auto` for
    a setting that also takes a word)."""
    kind, rules = Config.settings()[name]
    words = [typing.get_args(a)[0] for a in typing.get_args(kind) if typing.get_origin(a) is Literal]
    if words:  # `Annotated[int, Ge(1), ...] | Literal["auto"]`: the number's range, then the words
        number = next(a for a in typing.get_args(kind) if typing.get_origin(a) is not Literal)
        inner, inner_rules = (typing.get_args(number)[0], number.__metadata__) \
            if typing.get_origin(number) is Annotated else (number, ())
        return _range(inner, inner_rules) + "".join(f", or {w}" for w in words)
    return _range(kind, rules)


def _range(kind: Any, rules: tuple[Any, ...]) -> str:
    low = high = None
    above = False
    for rule in rules:
        if getattr(rule, "ge", None) is not None:
            low = rule.ge
        elif getattr(rule, "gt", None) is not None:
            low, above = rule.gt, True
        elif getattr(rule, "le", None) is not None:
            high = rule.le
    whole = int in (kind, *typing.get_args(kind))
    number = "a whole number" if whole else "a number"
    if low is None and high is None:
        return number
    if above:
        return f"{number} greater than {_num(low)}" + (f" and at most {_num(high)}" if high is not None else "")
    if high is None:
        return f"{number} of at least {_num(low)}"
    return f"{number} from {_num(low)} to {_num(high)}"


def describe(name: str) -> str:
    """A setting's description (its `Doc`), or ""."""
    return next((str(r) for r in Config.settings()[name][1] if isinstance(r, Doc)), "")


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
    import pydantic

    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        raise LlmunixError(f"{path}: {_explain(exc.errors()[0])}") from None


def _explain(err: Any) -> str:
    """pydantic's first error about a config file, as one line naming the setting."""
    loc = [str(part) for part in err["loc"]]
    section: type[_Settings] = Config
    names: list[str] = []
    i = 0
    while i < len(loc):
        fields = section.settings()
        names.append(loc[i])
        if loc[i] not in fields:
            break  # an unknown key of this table
        kind = fields[loc[i]][0]
        tables = [a for a in typing.get_args(kind) if _is_table(a)]
        if tables and type(None) in typing.get_args(kind):  # an optional table ([dask_adapt])
            kind = tables[0]
        if typing.get_origin(kind) is dict and _is_table(typing.get_args(kind)[1]):
            if i + 1 < len(loc):  # a named entry: [tools.NAME], [llm.endpoints."URL|MODEL"]
                names.append(loc[i + 1])
                i += 1
            section = typing.get_args(kind)[1]
        elif _is_table(kind):
            section = kind
        else:
            break  # a value (what follows names the union member pydantic tried)
        i += 1
    key = ".".join(names)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown setting {key!r}; known settings: {', '.join(section.settings())}"
    if err["type"] == "value_error" and message.startswith("setting '"):
        # a check of a value that needs parsing names its setting; this says in which table
        return message.replace("setting '", f"setting '{key}.", 1) if key else message
    if len(names) == 1 and key in Config.settings() and allowed_values(key) not in ("a number", "a whole number"):
        return f"setting {key!r} must be {allowed_values(key)}"
    return f"setting {key!r}: {message}"


def _is_table(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, _Settings)
