"""Tools: how a function becomes a tool, how its parameters are validated and coerced, and the
one-line errors a user sees when a tool or a parameter is wrong."""

from __future__ import annotations

import pytest

from llmunix import Kernel, LlmunixError, ProcessContext, tool
from llmunix.tools.registry import REGISTRY, ParamSpec, ToolRegistry, make_tool


def error_of(call) -> str:
    with pytest.raises(LlmunixError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message, "errors for users are one line"
    return message


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


def test_tool_decorator_with_a_local_registry_registers_only_there(registry):
    @tool(registry=registry, idempotent=True)
    def greet(ctx: ProcessContext, who: str, punctuation: str = "!") -> str:
        """Say hello.

        Longer text that is not part of the description.

        Args:
            who: the one to greet
            punctuation (str): what ends the greeting
        """
        return f"hello {who}{punctuation}"

    assert "greet" in registry
    assert "greet" not in REGISTRY
    assert registry.names() == ["greet"]
    t = registry.get("greet")
    assert t is greet.__llmunix_tool__
    assert t.description == "Say hello."
    assert t.idempotent and not t.subprocess
    assert t.params == (
        ParamSpec("who", "str", True, None, "the one to greet"),
        ParamSpec("punctuation", "str", False, "!", "what ends the greeting"),
    )
    assert greet(None, "you") == "hello you!"  # the decorator returns the plain function


def test_tool_decorator_can_rename_the_tool(registry):
    @tool(registry=registry, name="fetch-page", description="Fetch a page.")
    def fetch(ctx: ProcessContext, url: str) -> str:
        return url

    assert registry.names() == ["fetch-page"]
    assert registry.get("fetch-page").description == "Fetch a page."


def test_a_kernel_runs_tools_from_its_own_registry_by_name(registry):
    @tool(registry=registry)
    def double(ctx: ProcessContext, n: int) -> int:
        return 2 * n

    with Kernel(monitor=False, kill_grace=0.3, registry=registry) as k:
        by_name = k.spawn("double", n="21")
        by_function = k.spawn(double, n=4)
        a, b = k.wait([by_name, by_function], timeout=10)
        assert (a.state, a.output, a.tool_name) == ("Completed", 42, "double")
        assert (b.state, b.output) == ("Completed", 8)
        assert "unknown tool 'sleep'" in error_of(lambda: k.spawn("sleep", seconds=1))


def test_make_tool_builds_a_tool_without_registering_it():
    def resize(ctx: ProcessContext, width: int, height: int = 100, *args: int) -> str:
        """Resize an image."""
        return f"{width}x{height}"

    t = make_tool(resize, source="python")
    assert (t.name, t.description, t.source) == ("resize", "Resize an image.", "python")
    assert [(p.name, p.type, p.required, p.default) for p in t.params] == [
        ("width", "int", True, None),
        ("height", "int", False, 100),
    ]
    assert t.validate({"width": "640"}) == {"width": 640, "height": 100}
    assert "resize" not in REGISTRY


def test_a_function_without_a_context_parameter_is_refused():
    def no_ctx(*, size: int) -> None:
        return None

    message = error_of(lambda: make_tool(no_ctx))
    assert "first parameter must be the context (ctx)" in message
    assert "no_ctx" in message


def test_spawn_accepts_a_plain_function_as_a_tool():
    def add(ctx: ProcessContext, a: int, b: int = 1) -> int:
        return a + b

    with Kernel(monitor=False, kill_grace=0.3) as k:
        pid = k.spawn(add, a="2", b=3)
        info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output, info.tool_name) == ("Completed", 5, "add")
    assert dict(info.context.input_parameters) == {"a": 2, "b": 3}


def test_params_mapping_passes_names_that_clash_with_spawn_arguments():
    def label(ctx: ProcessContext, name: str, priority: str) -> str:
        return f"{name}:{priority}"

    with Kernel(monitor=False, kill_grace=0.3) as k:
        pid = k.spawn(label, name="proc-name", priority="high", params={"name": "x", "priority": "urgent"})
        info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output, info.name, info.priority.label) == ("Completed", "x:urgent", "proc-name", "high")


# ---------------------------------------------------------------------------- parameter errors


def test_missing_parameter_is_named_with_an_example():
    t = REGISTRY.get("echo")
    assert error_of(lambda: t.validate({})) == "tool 'echo' needs parameter 'text' (e.g. run echo text=...)"


def test_unknown_parameter_suggests_the_close_one():
    t = REGISTRY.get("sleep")
    message = error_of(lambda: t.validate({"secnds": 1}))
    assert message == "tool 'sleep' has no parameter 'secnds' (its parameters: seconds); did you mean 'seconds'?"


def test_unknown_parameter_without_a_close_one_lists_the_parameters():
    t = REGISTRY.get("sleep")
    message = error_of(lambda: t.validate({"zzz": 1}))
    assert message == "tool 'sleep' has no parameter 'zzz' (its parameters: seconds)"


def test_bad_type_names_the_value_and_the_parameter():
    t = REGISTRY.get("sleep")
    message = error_of(lambda: t.validate({"seconds": "abc"}))
    assert message.startswith("bad value 'abc' for parameter 'seconds' of tool 'sleep': ")
    assert "number" in message


def test_numeric_strings_are_coerced_to_the_declared_type():
    t = REGISTRY.get("sleep")
    validated = t.validate({"seconds": "2"})
    assert validated == {"seconds": 2.0}
    assert type(validated["seconds"]) is float
    assert t.validate({}) == {"seconds": 1.0}  # the default


def test_spawn_validates_before_creating_a_process():
    with Kernel(monitor=False, kill_grace=0.3) as k:
        first = k.next_pid
        assert "seconds" in error_of(lambda: k.spawn("sleep", seconds="abc"))
        assert "text" in error_of(lambda: k.spawn("echo"))
        assert k.next_pid == first, "a refused spawn uses no PID"
        assert k.ps(all=True) == []
        pid = k.spawn("sleep", seconds="0.05")
        info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output) == ("Completed", 0.05)


def test_out_of_range_values_are_refused_at_spawn_using_no_pid():
    with Kernel(monitor=False, kill_grace=0.3) as k:
        first = k.next_pid
        for value, why in (("-1", "greater than or equal to 0"), ("inf", "finite number"),
                           ("nan", "finite number"), ("1e300", "less than or equal to 3153600000")):
            message = error_of(lambda v=value: k.spawn("sleep", seconds=v))
            assert message.startswith(f"bad value {value!r} for parameter 'seconds' of tool 'sleep'") and why in message
        assert error_of(lambda: k.spawn("wordcount", text="a", chunks=-5)).endswith("greater than or equal to 1")
        assert k.next_pid == first


# ---------------------------------------------------------------------------- unknown tools


def test_unknown_tool_name_suggests_a_close_one():
    assert error_of(lambda: REGISTRY.get("slep")) == "unknown tool 'slep'; did you mean 'sleep'?"


def test_unknown_tool_name_without_a_close_one_points_to_the_list(registry):
    registry.register(make_tool(lambda ctx: None, name="noop"))
    assert error_of(lambda: registry.get("zzzz")) == "unknown tool 'zzzz'; `tools` lists them"


def test_spawn_of_an_unknown_tool_suggests_a_close_one(registry):
    @tool(registry=registry)
    def greet(ctx: ProcessContext, who: str) -> str:
        return who

    with Kernel(monitor=False, kill_grace=0.3, registry=registry) as k:
        assert error_of(lambda: k.spawn("gret", who="x")) == "unknown tool 'gret'; did you mean 'greet'?"
        assert error_of(lambda: k.spawn(42)).startswith("cannot run 42")


def test_builtin_tools_are_registered_with_their_documented_parameters():
    import llmunix.tools.builtin  # noqa: F401 - registers them

    params = {t.name: [p.name for p in t.params] for t in REGISTRY if t.source == "builtin"}
    for name, expected in {"sleep": ["seconds"], "spin": ["seconds"], "echo": ["text"],
                           "fail": ["message"], "shell": ["cmd"]}.items():
        assert params[name] == expected
    assert REGISTRY.get("shell").subprocess
    assert REGISTRY.get("sleep").idempotent


# ---------------------------------------------------------------------------- open keyword tools


def test_a_tool_with_open_keyword_arguments_receives_them():
    def configurable(ctx: ProcessContext, label: str, **options: object) -> dict[str, object]:
        return dict(options)

    t = make_tool(configurable)
    assert t.validate({"label": "x", "retries": 3}) == {"label": "x", "retries": 3}
    with Kernel(monitor=False, kill_grace=0.3) as k:
        pid = k.spawn(configurable, label="x", retries=3)
        info = k.wait([pid], timeout=10)[0]
    assert (info.state, info.output) == ("Completed", {"retries": 3})
