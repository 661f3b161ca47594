"""Coordination helpers: map-reduce with bounded fan-out, and a producer-consumer pipeline of
stage processes; both give the serial result, and both run with fewer slots than processes
because their waits are off-slot."""

from __future__ import annotations

import threading

from llmunix import ProcessContext, ToolError
from llmunix.ipc import map_reduce, pipeline
from llmunix.tools.registry import ToolRegistry, make_tool


def square(ctx: ProcessContext, item: int) -> int:
    ctx.sleep(0.001)
    return item * item


def test_map_reduce_equals_the_serial_result_and_never_exceeds_its_parallelism(make_kernel):
    k = make_kernel(max_running=2)  # the coordinator waits off-slot: its children get the slots
    inside, peak = [0], [0]
    guard = threading.Lock()

    def mapper(ctx: ProcessContext, item: int) -> int:
        with guard:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            return square(ctx, item)
        finally:
            with guard:
                inside[0] -= 1

    def coordinator(ctx: ProcessContext) -> int:
        return map_reduce(ctx, mapper, range(25), sum, parallel=3)

    pid = k.spawn(coordinator)
    info = k.wait([pid], timeout=30)[0]
    assert info.output == sum(x * x for x in range(25))
    assert 1 <= peak[0] <= 2  # bounded by parallel=3 and by the two slots
    children = [i for i in k.ps(all=True) if i.parent == pid]
    assert len(children) == 25 and all(i.finished_ok for i in children)
    assert children[0].name == "mapper[0]"


def test_map_reduce_with_a_reducer_tool_and_a_named_parameter(make_kernel):
    reg = ToolRegistry()

    def add_all(ctx: ProcessContext, items: list) -> int:
        return sum(items)

    def length(ctx: ProcessContext, word: str) -> int:
        return len(word)

    reg.register(make_tool(add_all, name="add-all"))
    reg.register(make_tool(length, name="length"))
    k = make_kernel(max_running=4, registry=reg)
    words = ["alpha", "be", "gamma", "d"]
    pid = k.spawn(lambda ctx: map_reduce(ctx, "length", words, "add-all", param="word", parallel=2))
    assert k.wait([pid], timeout=20)[0].output == sum(len(w) for w in words)


def test_a_failed_mapper_fails_the_whole_and_stops_new_ones(make_kernel):
    k = make_kernel(max_running=4)

    def picky(ctx: ProcessContext, item: int) -> int:
        if item == 2:
            raise ToolError("two is not allowed")
        return item

    pid = k.spawn(lambda ctx: map_reduce(ctx, picky, range(50), parallel=2))
    info = k.wait([pid], timeout=20)[0]
    assert info.state == "Failed" and info.error.startswith("map step 2 (")
    assert info.error.endswith("failed: two is not allowed")
    assert len([i for i in k.ps(all=True) if i.parent == pid]) < 10


def test_a_pipeline_of_stage_processes_equals_the_serial_composition(make_kernel):
    k = make_kernel(max_running=2)  # 3 stages + the coordinator on 2 slots: waits are off-slot

    def double(ctx: ProcessContext, x: int) -> int:
        return 2 * x

    def add_one(ctx: ProcessContext, x: int) -> int:
        return x + 1

    def label(ctx: ProcessContext, x: int) -> str:
        return f"#{x}"

    pid = k.spawn(lambda ctx: pipeline(ctx, [double, add_one, label], range(40), window=4))
    info = k.wait([pid], timeout=30)[0]
    assert info.finished_ok, info.error
    assert info.output == [f"#{2 * x + 1}" for x in range(40)]
    stages = [i for i in k.ps(all=True) if i.parent == pid]
    assert [s.name for s in stages] == ["stage3:label", "stage2:add_one", "stage1:double"]
    assert [s.output for s in stages] == [40, 40, 40]


def test_a_failing_stage_fails_the_pipeline(make_kernel):
    k = make_kernel(max_running=4)

    def fragile(ctx: ProcessContext, x: int) -> int:
        if x == 3:
            raise ToolError("cannot take 3")
        return x

    pid = k.spawn(lambda ctx: pipeline(ctx, [fragile, lambda ctx, x: x], range(10)))
    info = k.wait([pid], timeout=20)[0]
    assert info.state == "Failed"
    assert "pipeline stage stage1:fragile" in info.error and "cannot take 3" in info.error
    k.wait(timeout=10)
    assert all(i.is_done for i in k.ps(all=True))


def test_bad_arguments_are_refused(make_kernel):
    k = make_kernel()
    bad = k.spawn(lambda ctx: map_reduce(ctx, square, [1], parallel=0))
    empty = k.spawn(lambda ctx: pipeline(ctx, [], [1]))
    assert [i.error for i in k.wait([bad, empty], timeout=10)] == [
        "LlmunixError: map_reduce needs parallel of at least 1", "LlmunixError: a pipeline needs at least one stage"]
