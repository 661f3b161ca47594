"""`{{ ... }}` references in step parameters, resolved when the step starts.

* ``{{ inputs.NAME }}`` — a workflow input;
* ``{{ steps.ID.output }}`` and ``{{ steps.ID.output.KEY.0.KEY }}`` — a finished step's output
  (dict keys and list indices, dot-separated); a skipped step's output is null;
* ``{{ run.dir }}``, ``{{ run.pid }}``, ``{{ workflow.name }}``, ``{{ workflow.dir }}`` — where this run
  keeps its files, and where its spec file is (for files shipped next to it).

A value that is exactly one reference takes the referenced value as it is (a list stays a list);
a reference inside longer text is formatted into it (dicts and lists as JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from llmunix.models import LlmunixError

REF = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
ROOTS = ("inputs", "steps", "run", "workflow")


class RefError(LlmunixError):
    pass


def references(value: Any) -> Iterator[str]:
    """Every reference expression inside a (nested) parameter value."""
    if isinstance(value, str):
        for m in REF.finditer(value):
            yield m.group(1)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from references(v)


def check(expr: str) -> tuple[str, str | None]:
    """Validate a reference's shape at load time: (root, step id or None)."""
    parts = expr.split(".")
    if parts[0] not in ROOTS:
        raise RefError(f"unknown reference {{{{ {expr} }}}}; it starts with one of: {', '.join(ROOTS)}")
    if parts[0] == "steps":
        if len(parts) < 3 or parts[2] != "output":
            raise RefError(f"bad reference {{{{ {expr} }}}}; write {{{{ steps.ID.output }}}} or "
                           "{{ steps.ID.output.KEY }}")
        return "steps", parts[1]
    if len(parts) < 2:
        raise RefError(f"bad reference {{{{ {expr} }}}}; name what in {parts[0]}, e.g. {{{{ {parts[0]}.NAME }}}}")
    return parts[0], None


def resolve(value: Any, scope: Mapping[str, Any]) -> Any:
    """`value` with its references replaced from `scope` ({"inputs": ..., "steps": {id: {"output":
    ...}}, "run": ..., "workflow": ...}). A reference that leads nowhere raises RefError."""
    if isinstance(value, str):
        whole = REF.fullmatch(value.strip())
        if whole is not None:
            return lookup(whole.group(1), scope)
        return REF.sub(lambda m: _text(lookup(m.group(1), scope)), value)
    if isinstance(value, Mapping):
        return {k: resolve(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(v, scope) for v in value]
    return value


def lookup(expr: str, scope: Mapping[str, Any]) -> Any:
    parts = expr.split(".")
    current: Any = scope
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the workflow"
        if isinstance(current, Mapping):
            if part not in current:
                have = ", ".join(map(str, list(current)[:8])) or "nothing"
                raise RefError(f"{{{{ {expr} }}}}: {where} has no {part!r} (it has: {have})")
            current = current[part]
        elif isinstance(current, list):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                raise RefError(f"{{{{ {expr} }}}}: {where} is a list of {len(current)}; "
                               f"{part!r} is not an index in it") from None
        else:
            raise RefError(f"{{{{ {expr} }}}}: {where} is {type(current).__name__}, not a mapping or a list")
    return current


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, default=str)
