"""Chaos: fault injection at the start of tool process bodies, to test how work copes with failure.

`set chaos "fail=0.2,hang=0.05,slow=0.1,seed=42"` (or `chaos = "..."` in config.toml) makes each
attempt of a tool process, before the tool's own code runs:

* fail at rate `fail` — the attempt fails with "chaos: injected failure";
* hang at rate `hang` — it blocks, holding its slot and reaching no control point, until it is
  killed or its timeout stops it (what a hung network call looks like to llmunix);
* slow down at rate `slow` — it sleeps `delay` seconds (default 1s) first, then runs normally.

One draw per attempt decides (so the rates add up to at most 1). With a `seed` the draw depends
only on the seed, the PID and the attempt number, so a run is reproducible whatever order its
processes start in; without one it is random. Only tool processes are touched (not workflow or
agent bodies, whose tools are processes of their own). Every injected fault is an event
(`process.chaos`).

>>> spec = ChaosSpec.parse("fail=0.2,hang=0.05,slow=0.1,seed=42")
>>> str(spec)
'fail=0.2,hang=0.05,slow=0.1,delay=1s,seed=42'
>>> spec.draw(7, 1) == spec.draw(7, 1)
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmunix.models import LlmunixError, parse_duration

FAULTS = ("fail", "hang", "slow")
KEYS = (*FAULTS, "delay", "seed")
OFF = ("", "off", "none", "0", "false", "no")
INJECTED_FAILURE = "chaos: injected failure"


@dataclass(frozen=True, slots=True)
class ChaosSpec:
    fail: float = 0.0
    hang: float = 0.0
    slow: float = 0.0
    delay: float = 1.0  # seconds a slowed attempt waits
    seed: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> ChaosSpec | None:
        """`fail=0.2,hang=0.05,slow=0.1,delay=2s,seed=42`; `off` (or nothing) is None."""
        raw = (text or "").strip().strip("'\"")
        if raw.lower() in OFF:
            return None
        values: dict[str, float | int] = {}
        for part in raw.replace(";", ",").split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep or key not in KEYS:
                raise LlmunixError(f"bad chaos setting {part.strip()!r}; write KEY=VALUE with keys "
                                   f"{', '.join(KEYS)}, e.g. fail=0.2,hang=0.05,slow=0.1,seed=42 (or off)")
            try:
                if key == "seed":
                    values[key] = int(value)
                elif key == "delay":
                    values[key] = parse_duration(value)
                else:
                    values[key] = float(value)
            except (ValueError, LlmunixError):
                raise LlmunixError(f"bad chaos value {part.strip()!r}; rates are numbers from 0 to 1, "
                                   "delay a duration (2s), seed a whole number") from None
        for key in FAULTS:
            rate = float(values.get(key, 0.0))
            if not 0.0 <= rate <= 1.0:
                raise LlmunixError(f"chaos rate {key}={rate:g} must be between 0 and 1")
        if sum(float(values.get(k, 0.0)) for k in FAULTS) > 1.0 + 1e-9:
            raise LlmunixError("chaos rates fail + hang + slow must add up to at most 1")
        return cls(**values)  # type: ignore[arg-type]

    def draw(self, pid: int, attempt: int) -> str | None:
        """The fault for this attempt of this process, or None."""
        rng = random.Random(f"{self.seed}/{pid}/{attempt}") if self.seed is not None else random
        r = rng.random()
        for fault in FAULTS:
            rate = getattr(self, fault)
            if r < rate:
                return fault
            r -= rate
        return None

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in FAULTS if getattr(self, k)]
        parts.append(f"delay={self.delay:g}s")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ",".join(parts)
