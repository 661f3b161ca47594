"""Built-in tools that show communication from the shell: a mailbox reader, a lock holder, a
leader-election candidate and a map-reduce word count. Their parameter names are part of the interface."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from llmunix.ipc.coordination import map_reduce
from llmunix.process import ProcessContext
from llmunix.tools.registry import Seconds, tool


@tool(idempotent=True, touches=())
def inbox(ctx: ProcessContext, count: Annotated[int, Field(ge=0, le=1_000_000)] = 1, timeout: Seconds = 60.0,
          topic: str = "", delay: Seconds = 0.0) -> list:
    """Receive messages, writing each to the log; return their bodies (sensitive ones as
    "<sensitive>"). Persistent ones are acknowledged once logged.

    Args:
        count: how many to wait for (0: until a message "stop")
        timeout: give up after this many seconds without a message
        topic: also listen to broadcasts on this topic (a glob such as news.*)
        delay: seconds to wait before reading the first message (not again when recovered)
    """
    if topic:
        ctx.subscribe_topic(topic)
    if delay > 0 and not (ctx.restored or {}).get("waited"):
        ctx.checkpoint({"waited": True})  # first: a recovered inbox reads at once
        ctx.sleep(delay)
    bodies: list = []
    while count <= 0 or len(bodies) < count:
        msg = ctx.recv(timeout=timeout)
        if msg is None:
            ctx.log(f"no message for {timeout:g}s; stopping")
            break
        sender = "the shell" if msg.sender is None else f"{msg.sender:03d}"
        shown = "<sensitive>" if msg.sensitive else repr(msg.body)
        ctx.log(f"{msg.id} from {sender} ({msg.type}{', topic ' + msg.topic if msg.topic else ''}): {shown}")
        msg.ack()
        if count <= 0 and msg.body == "stop":
            break
        bodies.append("<sensitive>" if msg.sensitive else msg.body)  # the output is stored: keep secrets out
        ctx.progress(len(bodies), count if count > 0 else None)
    return bodies


@tool(name="hold-locks", touches=())
def hold_locks(ctx: ProcessContext, names: str = "a", seconds: Seconds = 5.0, step: Seconds = 0.5) -> str:
    """Take the named mutexes in order, `step` seconds apart, hold them all for `seconds`, then
    release them (two of these taking the same locks in opposite orders deadlock).

    Args:
        names: comma-separated mutex names, taken in this order
        seconds: how long to hold them all
        step: pause after taking each one
    """
    held = []
    try:
        for name in (n.strip() for n in names.split(",") if n.strip()):
            lock = ctx.lock(name)
            lock.acquire()
            held.append(lock)
            ctx.log(f"holding {name}")
            ctx.sleep(step)
        ctx.sleep(seconds)
    finally:
        for lock in reversed(held):
            lock.release()
    return f"held {', '.join(lock.name for lock in held)}"


@tool(touches=())
def lead(ctx: ProcessContext, name: str = "leader", seconds: Seconds = 5.0, lease: Seconds = 10.0,
         step: Seconds = 0.25) -> str:
    """Stand in the leader election `name`; once leading, work for `seconds` (a control point
    every `step`, which renews the lease), then resign so that the next candidate leads. A
    leader that loses the lead (its lease ran out: it was paused) waits to lead again.

    Args:
        name: the election
        seconds: how long to lead (time spent not leading does not count)
        lease: seconds the lead lasts without a sign of life
        step: seconds between control points while leading
    """
    election = ctx.elect(name, lease=max(lease, 0.05))
    leader = election.leader
    if leader is not None and leader != ctx.pid:
        ctx.log(f"candidate in {name}; following {leader:03d}")
    terms = []
    done = 0.0
    with election:
        while done < seconds:
            if not election.is_leader:
                who = election.leader
                ctx.log(f"lost the lead of {name}{f' to {who:03d}' if who else ''}; waiting to lead again")
                election.wait_leader()
            if not terms or terms[-1] != election.term:
                terms.append(election.term)
                ctx.log(f"leading {name} (term {election.term})")
            ctx.sleep(min(step, seconds - done))
            done += min(step, seconds - done)
            ctx.progress(round(done * 1000), round(seconds * 1000))
    return f"led {name} for {seconds:g}s in term{'s' if len(terms) > 1 else ''} {', '.join(map(str, terms))}"


def _count_words(ctx: ProcessContext, item: str) -> dict:
    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z']+", item.lower()):
        counts[word] = counts.get(word, 0) + 1
    return counts


def _merge(parts: list[dict]) -> dict:
    total: dict[str, int] = {}
    for part in parts:
        for word, n in part.items():
            total[word] = total.get(word, 0) + n
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


@tool(touches=())
def wordcount(ctx: ProcessContext, text: str, chunks: Annotated[int, Field(ge=1, le=10_000)] = 4,
              parallel: Annotated[int, Field(ge=1, le=1_000)] = 2) -> dict:
    """Count words with map-reduce: the words are cut into `chunks` pieces, each counted by a
    child process (at most `parallel` at once), then the counts are merged.

    Args:
        text: the text (or @FILE to read a file)
        chunks: how many pieces (mapper processes)
        parallel: mappers running at once
    """
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    words = text.split()
    size = max(1, -(-len(words) // max(1, chunks)))
    pieces = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return map_reduce(ctx, _count_words, pieces, _merge, parallel=parallel, name="count")
