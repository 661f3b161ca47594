"""Tokens and money: what each process's model calls used, rolled up the process tree, priced,
and held to budgets.

Every model reply that reports usage is one `process.tokens` event (prompt and completion
tokens, the model, the endpoint, the backend and, when config.toml prices the model, its cost in
US dollars at the price of the day); the store keeps them as rows (`token_usage`), so the
roll-ups are queries, and the `TokenLedger` keeps this session's sums in memory as they happen:
each process's own, and each process's with everything below it (an agent's tools, a workflow's
steps and their agents). Processes of earlier sessions are read from the store.

A budget (`--max-tokens N`, `--max-cost USD` on `run` and `agent run`, `max_tokens` and `max_cost`
in a workflow spec or step) covers the process and everything below it. The reply that goes past
it stops the process: it ends Failed ("token budget exhausted: 50,210 of 50,000"), and its
descendants Cancelled, as a timeout stops a tree. A cost budget needs a price for every model
used under it: a call to a model without one stops the process too, saying so.

The ledger is state of the agents component (dicts keyed by PID), not of `Process`.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError, NoSuchProcess, Outcome, Phase, format_pid

if TYPE_CHECKING:
    from llmunix.config import PriceConfig
    from llmunix.kernel import Kernel
    from llmunix.process import ProcessContext

PER = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Sums over some model calls. `cost` is of the priced ones; `unpriced` counts the tokens of
    the calls whose model has no price."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                          self.completion_tokens + other.completion_tokens, self.cost + other.cost,
                          self.unpriced + other.unpriced)

    @classmethod
    def of(cls, row: Iterable[Any]) -> TokenUsage:
        calls, prompt, completion, cost, unpriced = row
        return cls(int(calls), int(prompt), int(completion), float(cost), int(unpriced))

    def cost_text(self) -> str:
        """`$0.0123`, `$0.0123 (+1,200 tokens unpriced)`, or `-` when nothing was priced."""
        if not self.calls:
            return "-"
        if self.unpriced >= self.total_tokens:
            return "-"
        text = fmt_usd(self.cost)
        return f"{text} (+{self.unpriced:,} tokens unpriced)" if self.unpriced else text

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                "cost_usd": round(self.cost, 10) if self.total_tokens > self.unpriced else None,
                "unpriced_tokens": self.unpriced}


NONE = TokenUsage()


def fmt_usd(amount: float) -> str:
    """`$0.50`, `$0.0123`, `$0.000042`, `$12.30`: cents, or as many decimals as a small amount needs."""
    if amount == 0 or amount >= 0.995:
        return f"${amount:,.2f}"
    decimals = max(2, 1 - math.floor(math.log10(amount)) + 1)
    text = f"{amount:.{min(decimals, 8)}f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{amount:.2f}"
    return "$" + text


def parse_usd(text: Any) -> float:
    """A cost budget: `0.5`, `$0.50`, `0.50USD`. LlmunixError if it is not a positive amount."""
    raw = str(text).strip().lstrip("$").removesuffix("USD").removesuffix("usd").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > 1e9:
        raise LlmunixError(f"bad cost budget {text!r}; give US dollars > 0, e.g. --max-cost 0.50")
    return value


def parse_tokens(text: Any) -> int:
    """A token budget: `50000`, `50,000`, `50_000`, `50k`, `2M`."""
    raw = str(text).strip().replace(",", "").replace("_", "").lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(raw[-1:], 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1 or value > 1e15 or not value.is_integer():
        raise LlmunixError(f"bad token budget {text!r}; give a whole number of tokens >= 1, e.g. --max-tokens 50000")
    return int(value)


@dataclass(frozen=True, slots=True)
class Budget:
    """What a process and everything below it may use (None: no limit of that kind)."""

    max_tokens: int | None = None
    max_cost: float | None = None

    def __bool__(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    def exceeded(self, used: TokenUsage) -> str | None:
        """Why `used` goes past this budget (the failure's reason), or None."""
        if self.max_tokens is not None and used.total_tokens > self.max_tokens:
            return f"token budget exhausted: {used.total_tokens:,} of {self.max_tokens:,}"
        if self.max_cost is not None and used.cost > self.max_cost:
            return f"cost budget exhausted: {fmt_usd(used.cost)} of {fmt_usd(self.max_cost)}"
        return None

    def describe(self) -> str:
        parts = []
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens:,} tokens")
        if self.max_cost is not None:
            parts.append(fmt_usd(self.max_cost))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "max_cost": self.max_cost}


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """One process's usage as `ps -l` and `top` show it."""

    pid: int
    own: TokenUsage
    total: TokenUsage  # with every process below it
    budget: Budget | None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "own": self.own.to_dict(), "with_children": self.total.to_dict(),
                "budget": self.budget.to_dict() if self.budget else None}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of `stats --tokens`: a top-level process (its tree), or a model at an endpoint."""

    key: str  # the PID (formatted) or the model
    name: str  # the process's name, or the endpoint
    kind: str  # the process's kind and state, or "model"
    usage: TokenUsage

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "kind": self.kind, **self.usage.to_dict()}


@dataclass(frozen=True, slots=True)
class TokenReport:
    """`stats --tokens`: per top-level process (children included), per model and endpoint, and in all."""

    processes: tuple[UsageRow, ...]
    models: tuple[UsageRow, ...]
    total: TokenUsage

    def to_dict(self) -> dict[str, Any]:
        return {"processes": [{"pid": r.key, "name": r.name, "kind": r.kind.split()[0],
                               "state": r.kind.split()[-1], **r.usage.to_dict()} for r in self.processes],
                "models": [{"model": r.key, "endpoint": r.name, **r.usage.to_dict()} for r in self.models],
                "total": self.total.to_dict()}


class TokenLedger:
    """This session's token sums per process (own, and with its descendants), per model, and the
    budgets. Thread-safe; `record` runs in the calling process's thread."""

    def __init__(self, kernel: Kernel, prices: Mapping[str, PriceConfig]) -> None:
        self.kernel = kernel
        self.prices = dict(prices)
        self._lock = threading.Lock()
        self._own: dict[int, TokenUsage] = {}
        self._tree: dict[int, TokenUsage] = {}
        self._models: dict[tuple[str, str], TokenUsage] = {}
        self._parents: dict[int, int | None] = {}
        self._budgets: dict[int, Budget] = {}
        self._seen: set[int] = set()  # processes whose earlier sessions' usage is loaded (or none)
        # PIDs from here on were born in this session: they have no usage in the store but ours
        # (a read-only shell records nothing: everything it shows is the owner's, from the store).
        self._born_here = sys.maxsize if kernel.read_only else kernel.next_pid

    # ------------------------------------------------------------------ prices

    def price(self, model: str) -> PriceConfig | None:
        return self.prices.get(model)

    def cost(self, model: str, prompt: int, completion: int) -> float | None:
        p = self.prices.get(model)
        return None if p is None else (prompt * p.input + completion * p.output) / PER

    # ------------------------------------------------------------------ recording

    def record(self, ctx: ProcessContext, prompt: int, completion: int, *, model: str, endpoint: str,
               backend: str, **data: Any) -> TokenUsage:
        """A model reply used tokens in `ctx`'s process: publish the `process.tokens` event, add
        it up the tree, stop whatever budget it exhausts (then the caller's own control point
        raises if that reached it). Returns the process's own sums so far."""
        cost = self.cost(model, prompt, completion)
        chain = self._chain(ctx.pid, ctx.parent)  # (earlier sessions' usage read before this one is stored)
        self.kernel.table.publish("process.tokens", ctx.pid, prompt_tokens=prompt, completion_tokens=completion,
                                  total_tokens=prompt + completion, model=model, endpoint=endpoint, backend=backend,
                                  cost=None if cost is None else round(cost, 8), **data)
        use = TokenUsage(1, prompt, completion, cost or 0.0, 0 if cost is not None else prompt + completion)
        stops: list[tuple[int, str]] = []
        with self._lock:
            own = self._own[ctx.pid] = self._own.get(ctx.pid, NONE) + use
            key = (model, endpoint)
            self._models[key] = self._models.get(key, NONE) + use
            for pid in chain:
                total = self._tree[pid] = self._tree.get(pid, NONE) + use
                budget = self._budgets.get(pid)
                if budget:
                    reason = budget.exceeded(total)
                    if reason is None and budget.max_cost is not None and cost is None:
                        reason = (f"cost budget {fmt_usd(budget.max_cost)} cannot be kept: no price for model "
                                  f"{model!r} (add [llm.prices.\"{model}\"] input/output to config.toml)")
                    if reason is not None:
                        stops.append((pid, reason))
        for pid, reason in stops:  # innermost first: each budget stops its own process
            self._stop(pid, reason)
        ctx.check()
        return own

    def _chain(self, pid: int, parent: int | None) -> list[int]:
        """`pid` and its ancestors, innermost first; usage from earlier sessions is loaded for
        those this session has not seen (a recovered run keeps counting from where it was)."""
        chain = [pid]
        with self._lock:
            self._parents.setdefault(pid, parent)
        up = parent
        while up is not None and up not in chain:
            chain.append(up)
            with self._lock:
                known = up in self._parents
                nxt = self._parents.get(up)
            if not known:
                try:
                    nxt = self.kernel.info(up).parent
                except LlmunixError:
                    nxt = None
                with self._lock:
                    self._parents[up] = nxt
            up = nxt
        self._load(chain)
        return chain

    def _load(self, pids: list[int]) -> None:
        store = self.kernel.store
        with self._lock:
            new = [p for p in pids if p not in self._seen and p < self._born_here]
            self._seen.update(pids)
        if not new or store is None:
            return
        earlier = store.token_usage(new)  # (this session's rows are in memory already)
        budgets = {p: self._stored_budget(p) for p in new}
        with self._lock:
            for pid, (own, tree) in earlier.items():
                if pid in self._tree or pid in self._own:
                    continue  # recorded in memory meanwhile: the store can only lag behind that
                self._own[pid] = TokenUsage.of(own)
                self._tree[pid] = TokenUsage.of(tree)
            for pid, budget in budgets.items():
                if budget and pid not in self._budgets:
                    self._budgets[pid] = budget

    def _stored_budget(self, pid: int) -> Budget | None:
        try:
            rows = self.kernel.events(pid, "process.budget", limit=1)
        except LlmunixError:
            return None
        if not rows:
            return None
        d = rows[-1].data
        return Budget(d.get("max_tokens"), d.get("max_cost"))

    def _stop(self, pid: int, reason: str) -> None:
        table = self.kernel.table
        with table.lock:
            proc = table.get(pid)
            if proc is None or proc.phase is Phase.DONE:
                return
            table.kill_tree_locked(proc, reason, Outcome.FAILED)

    # ------------------------------------------------------------------ budgets

    def set_budget(self, pid: int, max_tokens: int | None = None, max_cost: float | None = None) -> Budget:
        """Hold process `pid` and everything below it to a budget (the `process.budget` event);
        if it is already past it, it stops now."""
        budget = Budget(max_tokens, max_cost)
        if not budget:
            raise LlmunixError("a budget needs max_tokens or max_cost")
        info = self.kernel.info(pid)
        if info.is_done:
            return budget  # (a quick process: it can no longer go past it)
        self._chain(pid, info.parent)
        self.kernel.table.publish("process.budget", pid, **budget.to_dict())
        with self._lock:
            self._budgets[pid] = budget
            reason = budget.exceeded(self._tree.get(pid, NONE))
        if reason is not None:
            self._stop(pid, reason)
        return budget

    def budget(self, pid: int) -> Budget | None:
        with self._lock:
            if pid in self._budgets:
                return self._budgets[pid]
        return self._stored_budget(pid) if self.kernel.store is not None else None

    # ------------------------------------------------------------------ what the commands show

    def usage(self, pids: Iterable[int]) -> dict[int, ProcessUsage]:
        """Usage of each of `pids` that used any (itself or below it): this session's from
        memory, earlier ones' from the store. A process that used none is left out."""
        out: dict[int, ProcessUsage] = {}
        missing = []
        with self._lock:
            for pid in pids:
                if pid in self._tree or pid in self._own:
                    out[pid] = ProcessUsage(pid, self._own.get(pid, NONE), self._tree.get(pid, NONE),
                                            self._budgets.get(pid))
                elif pid not in self._seen and pid < self._born_here:
                    missing.append(pid)
        store = self.kernel.store
        if missing and store is not None:
            for pid, (own, tree) in store.token_usage(missing).items():
                out[pid] = ProcessUsage(pid, TokenUsage.of(own), TokenUsage.of(tree), self.budget(pid))
        return out

    def report(self, limit: int | None = None) -> TokenReport:
        """`stats --tokens`: from the store (every session) when there is one, else this session's."""
        store = self.kernel.store
        if store is not None:
            self.kernel.flush(timeout=10)  # this session's latest replies counted too
            processes = [UsageRow(format_pid(pid), name or "?", f"{kind or '?'} {state or '?'}", TokenUsage.of(r))
                         for pid, name, kind, state, *r in store.token_roots(limit)]
            models = [UsageRow(model or "?", endpoint or "-", "model", TokenUsage.of(r))
                      for model, endpoint, *r in store.token_models()]
        else:
            with self._lock:
                roots = sorted(p for p in self._tree if self._parents.get(p) is None)
                trees = {p: self._tree[p] for p in roots}
                by_model = sorted(self._models.items())
            if limit:
                roots = roots[-limit:]
            processes = []
            for pid in roots:
                try:
                    info = self.kernel.info(pid)
                    name, kind = info.name, f"{info.kind} {info.display_state}"
                except NoSuchProcess:
                    name, kind = "?", "? ?"
                processes.append(UsageRow(format_pid(pid), name, kind, trees[pid]))
            models = [UsageRow(m, e, "model", u) for (m, e), u in by_model]
        total = NONE
        for row in models:
            total = total + row.usage
        return TokenReport(tuple(processes), tuple(models), total)
