"""Deadlock detection on the wait-for graph.

Nodes are processes; an edge P -> Q means P waits for a primitive Q holds. A cycle can only close
when some process starts waiting, so the kernel checks at each new wait, from the new waiter:
it follows wait edges outwards (networkx DiGraph), and if the graph it reached has a cycle it asks
which of those processes can never go on:

* a mutex, rwlock or condition waiter needs *every* holder to release (one holder, or all
  readers): it is stuck if any of them is stuck;
* a semaphore waiter needs *any* holder to release: it is stuck only if all of them are.

Starting from "every waiter there is stuck" and removing those that can go on, until nothing
changes, leaves the deadlocked set (a greatest fixpoint). A cycle through a semaphore that a
free-running holder will release is therefore not reported. Waits nobody in particular can end
(barriers, condition sleepers waiting for a notify) are not edges.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmunix.ipc.sync import Waiter
from llmunix.models import format_pid, iso_time

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True, slots=True)
class WaitEdge:
    waiter: int
    kind: str
    name: str
    holder: int


@dataclass(slots=True)
class Deadlock:
    """One deadlock found: the cycle (in order), every process caught in it, and what was done."""

    id: int
    found: float
    cycle: tuple[int, ...]
    members: tuple[int, ...]
    edges: tuple[WaitEdge, ...]
    policy: str
    victim: int | None = None
    resolved: float | None = None
    how: str = ""  # how it ended: "killed 004", "004 gave up waiting", ...
    members_set: frozenset[int] = field(default=frozenset(), repr=False)

    def path(self) -> str:
        return " -> ".join(format_pid(p) for p in (*self.cycle, self.cycle[0]))

    def summary(self) -> str:
        """`003 -> 004 -> 003: 003 waits for mutex b (held by 004); 004 waits for mutex a (held by 003)`."""
        waits = "; ".join(f"{format_pid(e.waiter)} waits for {e.kind} {e.name} (held by {format_pid(e.holder)})"
                          for e in self.edges)
        return f"{self.path()}: {waits}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "found": iso_time(self.found), "cycle": [format_pid(p) for p in self.cycle],
                "members": [format_pid(p) for p in self.members],
                "waits": [{"waiter": format_pid(e.waiter), "kind": e.kind, "name": e.name,
                           "holder": format_pid(e.holder)} for e in self.edges],
                "policy": self.policy, "victim": None if self.victim is None else format_pid(self.victim),
                "resolved": None if self.resolved is None else iso_time(self.resolved), "how": self.how,
                "summary": self.summary()}


def wait_graph(start: int, waiting: Mapping[int, Waiter]) -> nx.DiGraph:
    """The wait-for graph reachable from `start`; edges carry the primitive waited for."""
    import networkx as nx  # here, not at import: `llmunix -c ps` should not pay for it

    graph = nx.DiGraph()
    graph.add_node(start)
    frontier = [start]
    seen = {start}
    while frontier:
        pid = frontier.pop()
        w = waiting.get(pid)
        if w is None or w.granted or not w.prim.tracked:
            continue
        for holder in w.prim.blockers(w):
            graph.add_edge(pid, holder, prim=w.prim)
            if holder not in seen:
                seen.add(holder)
                frontier.append(holder)
    return graph


def deadlocked(graph: nx.DiGraph, waiting: Mapping[int, Waiter]) -> set[int]:
    """The processes of `graph` that can never go on (see the module docstring)."""
    stuck = {p for p in graph if graph.out_degree(p) > 0}
    changed = True
    while changed:
        changed = False
        for p in list(stuck):
            holders = list(graph.successors(p))
            if waiting[p].prim.any_holder:
                blocked = all(h in stuck for h in holders)
            else:
                blocked = any(h in stuck for h in holders)
            if not blocked:
                stuck.discard(p)
                changed = True
    return stuck


def find_deadlock(start: int, waiting: Mapping[int, Waiter], next_id: int, policy: str) -> Deadlock | None:
    """A deadlock that `start`'s new wait completes, or None."""
    import networkx as nx

    graph = wait_graph(start, waiting)
    if graph.number_of_edges() == 0:
        return None
    try:
        nx.find_cycle(graph, source=start)
    except nx.NetworkXNoCycle:
        return None
    stuck = deadlocked(graph, waiting)
    if not stuck:
        return None
    sub = graph.subgraph(stuck)
    try:
        cycle_edges = nx.find_cycle(sub, source=start if start in stuck else None)
    except nx.NetworkXNoCycle:  # pragma: no cover - a stuck set always contains a cycle
        return None
    cycle = tuple(u for u, _v in cycle_edges)
    edges = tuple(WaitEdge(u, sub.edges[u, v]["prim"].kind, sub.edges[u, v]["prim"].name, v) for u, v in cycle_edges)
    return Deadlock(next_id, time.time(), cycle, tuple(sorted(stuck)), edges, policy, members_set=frozenset(stuck))
