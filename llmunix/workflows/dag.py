"""The step graph (networkx): edges from `needs` and from `{{ steps.X.output }}` references.

Checked at load time: unknown steps, cycles (the cycle is printed), and fallback steps, which run
only when the step they stand in for fails and so may not be needed by anyone.
"""

from __future__ import annotations

import networkx as nx

from llmunix.workflows import refs
from llmunix.workflows.spec import SpecError, StepSpec, WorkflowSpec


def build(spec: WorkflowSpec) -> nx.DiGraph:
    """Edge u -> v: v needs u. Raises SpecError naming the file and the step."""
    where = spec.source or spec.name
    g = nx.DiGraph()
    ids = [s.id for s in spec.steps]
    seen: set[str] = set()
    for s in spec.steps:
        if s.id in seen:
            raise SpecError(f"{where}: step {s.id!r} is defined twice")
        seen.add(s.id)
        g.add_node(s.id)
    for s in spec.steps:
        implicit: list[str] = []
        for expr in _step_refs(spec, s):
            root, target = refs.check(expr)
            if root == "inputs" and expr.split(".")[1] not in spec.inputs:
                raise SpecError(f"{where}: step {s.id!r}: {{{{ {expr} }}}} names no input "
                                f"(inputs: {', '.join(spec.inputs) or 'none'})")
            if target is not None:
                implicit.append(target)
        for dep in [*s.needs, *implicit]:
            if dep not in seen:
                raise SpecError(f"{where}: step {s.id!r} needs unknown step {dep!r} (steps: {', '.join(ids)})")
            if dep == s.id:
                raise SpecError(f"{where}: step {s.id!r} needs itself")
            g.add_edge(dep, s.id)
        if s.fallback is not None:
            if s.fallback not in seen:
                raise SpecError(f"{where}: step {s.id!r}: fallback {s.fallback!r} is not a step "
                                f"(steps: {', '.join(ids)})")
            if s.fallback == s.id:
                raise SpecError(f"{where}: step {s.id!r} cannot be its own fallback")
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([u for u, _v in cycle] + [cycle[0][0]])
        raise SpecError(f"{where}: the steps form a cycle: {path}")
    for fb in fallbacks(spec):
        users = list(g.successors(fb))
        if users:
            raise SpecError(f"{where}: step {fb!r} is a fallback (it runs only when another step fails), "
                            f"so step {users[0]!r} cannot need it")
    return g


def fallbacks(spec: WorkflowSpec) -> set[str]:
    return {s.fallback for s in spec.steps if s.fallback is not None}


def downstream(g: nx.DiGraph, step_ids: list[str]) -> set[str]:
    """The steps and everything that depends on them."""
    out = set(step_ids)
    for s in step_ids:
        out |= nx.descendants(g, s)
    return out


def _step_refs(spec: WorkflowSpec, step: StepSpec) -> list[str]:
    found = list(refs.references(step.with_))
    if step.goal:
        found += list(refs.references(step.goal))
    return found
