"""Breakpoint conditions: a small, safe expression language over a process's progress and state.

`break --when EXPR` takes a Python-looking expression over five names:

    step, total, percentage   the process's progress (total and percentage may be None)
    params                    its parameters (a dict: `params["n"]` or `params.n`)
    checkpoint                its last checkpoint state (None before the first one)

and literals (numbers, strings, True/False/None, tuples and lists of them), comparisons
(`== != < <= > >= in not in is is not`), `and` / `or` / `not`, arithmetic (`+ - * / // %`), and
subscripts or attributes on those values (`params.n` means `params["n"]`). Nothing else: no calls,
no other names, no `**` — an expression is parsed and checked once, when the breakpoint is set, so
a bad one is refused there with one line saying why. It is evaluated by walking its syntax tree
(never `eval`), at control points, under the kernel lock: it must be cheap and must not run user
code. At run time an error (a missing key, comparing None with a number) makes it false; the
breakpoint keeps the error to show in `breakpoints`.

>>> c = Condition.parse("step >= 3 and params.mode == 'fast'")
>>> c.evaluate({"step": 3, "total": 10, "percentage": 30.0, "params": {"mode": "fast"}, "checkpoint": None})
True
>>> Condition.parse("__import__('os')")
Traceback (most recent call last):
...
llmunix.observe.condition.BadCondition: bad condition "__import__('os')": calls are not allowed; ...
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping
from typing import Any

from llmunix.models import LlmunixError

NAMES = ("step", "total", "percentage", "params", "checkpoint")
MAX_LENGTH = 500
MAX_SEQUENCE = 10_000  # a string or list an expression builds may not grow past this

_HELP = "use step, total, percentage, params and checkpoint with comparisons, and/or/not and arithmetic"

_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
_WHAT = {  # how a refused node is named in the error
    ast.Call: "calls", ast.Lambda: "lambdas", ast.Pow: "**", ast.NamedExpr: ":=", ast.IfExp: "if-else",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.Await: "await", ast.JoinedStr: "f-strings", ast.Starred: "*",
    ast.Dict: "dict displays", ast.Set: "set displays", ast.Slice: "slices",
}


class BadCondition(LlmunixError):
    pass


class Condition:
    """A checked expression; `evaluate(names)` returns its truth (raising on run-time errors)."""

    __slots__ = ("text", "_tree")

    def __init__(self, text: str, tree: ast.expr) -> None:
        self.text = text
        self._tree = tree

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse and check `text`; a BadCondition (one line) says what is not allowed."""
        source = text.strip()
        if not source:
            raise BadCondition("empty condition; e.g. --when \"step >= 3\"")
        if len(source) > MAX_LENGTH:
            raise BadCondition(f"condition too long ({len(source)} characters, at most {MAX_LENGTH})")
        try:
            tree = ast.parse(source, mode="eval").body
        except SyntaxError as exc:
            where = f" at column {exc.offset}" if exc.offset else ""
            raise BadCondition(f"bad condition {text!r}: {exc.msg}{where}") from None
        for node in ast.walk(tree):
            _check(node, text)
        return cls(source, tree)

    def evaluate(self, names: Mapping[str, Any]) -> bool:
        return bool(_eval(self._tree, names))

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def _check(node: ast.AST, text: str) -> None:
    def refuse(what: str) -> BadCondition:
        return BadCondition(f"bad condition {text!r}: {what} not allowed; {_HELP}")

    if isinstance(node, ast.Name):
        if node.id not in NAMES:
            raise BadCondition(f"bad condition {text!r}: unknown name {node.id!r}; {_HELP}")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, int | float | str | bool | type(None)):
            raise refuse(f"the constant {node.value!r} is")
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise refuse(f"the attribute {node.attr!r} is")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise refuse(f"{_WHAT.get(type(node.op), type(node.op).__name__)} is")
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise refuse(f"{type(node.op).__name__} is")
    elif isinstance(node, ast.Compare | ast.BoolOp | ast.Subscript | ast.Tuple | ast.List | ast.Load
                    | ast.And | ast.Or | ast.cmpop | ast.operator | ast.unaryop):
        pass
    else:
        raise refuse(f"{_WHAT.get(type(node), type(node).__name__)} are" if type(node) in _WHAT
                     else f"{type(node).__name__} is")


def _eval(node: ast.expr, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            value: Any = True
            for v in node.values:
                value = _eval(v, names)
                if not value:
                    return value
            return value
        value = False
        for v in node.values:
            value = _eval(v, names)
            if value:
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, names))
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Mult) and _too_big(left, right):
            raise ValueError("repetition too large")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, str | list | tuple) and len(result) > MAX_SEQUENCE:
            raise ValueError("result too large")
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        return _item(_eval(node.value, names), _eval(node.slice, names))
    if isinstance(node, ast.Attribute):
        container = _eval(node.value, names)
        if not isinstance(container, Mapping):
            raise TypeError(f"{type(container).__name__} has no key {node.attr!r}")
        return container[node.attr]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, names) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, names) for e in node.elts]
    raise TypeError(f"{type(node).__name__} cannot be evaluated")  # refused by _check already


def _item(container: Any, key: Any) -> Any:
    if isinstance(container, Mapping | list | tuple | str):
        return container[key]
    raise TypeError(f"{type(container).__name__} cannot be subscripted")


def _too_big(a: Any, b: Any) -> bool:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
            return True
    return False
