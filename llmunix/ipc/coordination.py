"""Coordination patterns over tool processes, built on `ctx.spawn`, `ctx.wait` and mailboxes.

* `map_reduce(ctx, tool, items, reduce)`: one child process per item, at most `parallel` at once
  (fan-out with bounded parallelism, off-slot waits), outputs in input order, then a reducer — a
  function, or a tool run as one more child with the list as its `items` parameter.
* `pipeline(ctx, stages, items)`: producer-consumer. One child process per stage, connected by
  mailboxes: the caller feeds items to the first stage, each stage sends its results to the next,
  the last sends them back. At most `window` items are in flight, so a fast producer cannot
  flood a slow stage (the mailboxes stay bounded).

Both are called from inside a process (the coordinator, whose children the workers are: `ps -l`
shows the tree; killing the coordinator stops them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError, ToolError, format_pid

if TYPE_CHECKING:
    from llmunix.process import ProcessContext

PIPE_TYPE = "json"
_POLL = 0.5  # seconds between checks that every stage is still alive while waiting for results


def map_reduce(ctx: ProcessContext, tool: Any, items: Iterable[Any], reduce: Callable[[list[Any]], Any] | Any = None,
               *, parallel: int = 4, param: str = "item", params: Mapping[str, Any] | None = None,
               name: str | None = None) -> Any:
    """Run `tool` once per item (as `tool(item=...)`, or the parameter named `param`) in child
    processes, at most `parallel` at a time; then `reduce(outputs)` (outputs in input order), or
    run `reduce` as a tool with `items=outputs`, or return the outputs if `reduce` is None.

    A failed mapper fails the whole: no new ones start, those running finish, then ToolError
    names the first failure."""
    if parallel < 1:
        raise LlmunixError("map_reduce needs parallel of at least 1")
    work = list(enumerate(items))
    outputs: list[Any] = [None] * len(work)
    running: dict[int, int] = {}  # pid -> item index
    failure: str | None = None
    label = name or (tool if isinstance(tool, str) else getattr(tool, "__name__", "map"))
    queue = iter(work)
    while True:
        while failure is None and len(running) < parallel:
            nxt = next(queue, None)
            if nxt is None:
                break
            i, item = nxt
            pid = ctx.spawn(tool, name=f"{label}[{i}]", params={**(params or {}), param: item})
            running[pid] = i
        if not running:
            break
        for info in ctx.wait(list(running), any=True):
            if not info.is_done or info.pid not in running:
                continue
            i = running.pop(info.pid)
            if info.finished_ok:
                outputs[i] = info.output
            elif failure is None:
                failure = f"map step {i} ({format_pid(info.pid)}) {info.state.lower()}: {info.error}"
    if failure is not None:
        raise ToolError(failure)
    if reduce is None:
        return outputs
    if callable(reduce) and not getattr(reduce, "__llmunix_tool__", None):
        return reduce(outputs)
    info = ctx.run(reduce, name=f"{label}-reduce", params={"items": outputs})
    if not info.finished_ok:
        raise ToolError(f"reduce ({format_pid(info.pid)}) {info.state.lower()}: {info.error}")
    return info.output


def _stage_body(fn: Callable[[ProcessContext, Any], Any], downstream: int) -> Callable[[ProcessContext], int]:
    def stage(ctx: ProcessContext) -> int:
        done = 0
        while True:
            msg = ctx.recv()
            assert msg is not None
            body = msg.body
            if body.get("end"):
                ctx.send(downstream, {"end": True})
                return done
            ctx.send(downstream, {"seq": body["seq"], "item": fn(ctx, body["item"])})
            done += 1

    stage.__name__ = getattr(fn, "__name__", "stage")
    return stage


def pipeline(ctx: ProcessContext, stages: Sequence[Callable[[ProcessContext, Any], Any]], items: Iterable[Any],
             *, window: int = 16, name: str = "stage") -> list[Any]:
    """Push `items` through `stages` (each `fn(ctx, item) -> item`, run in a child process of its
    own); returns the last stage's outputs in input order. Items and results travel as messages,
    so they must be JSON-shaped. A stage that fails or is killed fails the pipeline (ToolError)."""
    if not stages:
        raise LlmunixError("a pipeline needs at least one stage")
    if window < 1:
        raise LlmunixError("a pipeline's window must be at least 1")
    # Last stage first, so each is spawned knowing where its output goes.
    downstream = ctx.pid
    pids: list[int] = []
    for k in range(len(stages) - 1, -1, -1):
        fn = stages[k]
        downstream = ctx.spawn(_stage_body(fn, downstream), name=f"{name}{k + 1}:{getattr(fn, '__name__', 'fn')}")
        pids.insert(0, downstream)
    head = pids[0]
    results: dict[int, Any] = {}
    sent = 0
    feed = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and sent - len(results) < window:
                item = next(feed, _END)
                exhausted = item is _END
                try:
                    ctx.send(head, {"end": True} if exhausted else {"seq": sent, "item": item})
                except LlmunixError:
                    _check_stages(ctx, pids)  # the first stage has ended: say why
                    raise
                sent += not exhausted
            msg = ctx.recv(timeout=_POLL)
            if msg is None:
                _check_stages(ctx, pids)
                continue
            if msg.body.get("end"):
                break
            results[msg.body["seq"]] = msg.body["item"]
    except BaseException:
        for pid in pids:  # stop the rest: an end marker lets each finish what it has
            try:
                ctx.send(pid, {"end": True})
            except LlmunixError:
                pass
        raise
    return [results[i] for i in range(sent)]


def _check_stages(ctx: ProcessContext, pids: list[int]) -> None:
    for info in ctx.wait(pids, timeout=0):
        if info.is_done and not info.finished_ok:
            raise ToolError(f"pipeline stage {info.name} ({info.process_id}) {info.state.lower()}: {info.error}")


_END = object()
