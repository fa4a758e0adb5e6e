"""The highest load that still meets an SLO: a geometric bracket search, driven probe by probe.

`RateSearch` only decides where to probe next; it never runs anything. Whoever owns the
probes (the simulator on a process pool or on Ray, the engine on its one GPU) asks it for a
rate, runs it, and tells it the verdict. `search_all` drives many searches at once over an
executor, so that probes of different policies run side by side.

The search: probe `start`; while it holds, probe `upper`, then `factor` times that, and so
on (at most `max_expansions` times beyond `upper`); while it fails, probe as far below
`start` as `upper` is above it, then `factor` times lower (if `expand_down`). Once a
passing rate lies below a failing one, bisect geometrically until they are within
`rel_tol`. Latency is not strictly monotone in load, so only that bracket is promised:
`max_rate` is the highest passing probe, `min_failing` the lowest failing probe above it.
"""
from __future__ import annotations

import math
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class RateSearch:
    start: float
    upper: float
    factor: float = 2.0
    rel_tol: float = 0.02
    max_expansions: int = 4
    expand_down: bool = True
    probes: list[dict] = field(default_factory=list)
    lo: float | None = None          # highest passing rate of the bracket
    hi: float | None = None          # lowest failing rate above it
    _pending: float | None = None
    _status: str | None = None
    _expansions: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.start < self.upper and math.isfinite(self.upper)):
            raise ValueError(f"need 0 < start < upper, got {self.start}, {self.upper}")
        if not (self.factor > 1 and self.rel_tol > 0):
            raise ValueError("factor must exceed 1 and rel_tol be positive")

    @classmethod
    def around(cls, predicted: float, spread: float = 0.1, **kw: Any) -> "RateSearch":
        """Start at a predicted max rate and confirm the bracket (1 - spread)x .. (1 + spread)x
        around it; probe further only where the prediction is wrong."""
        return cls(predicted, predicted * (1 + spread), rel_tol=spread, **kw)

    @property
    def done(self) -> bool:
        return self._status is not None

    def next_rate(self) -> float | None:
        """The rate to probe next (the same one until it is told), or None when finished."""
        if self.done:
            return None
        if self._pending is None:
            self._pending = self._choose()
        return self._pending

    def _choose(self) -> float:
        if self.lo is None and self.hi is None:
            return self.start
        if self.hi is None:                               # everything so far passed
            return self.upper if self.lo == self.start else self.lo * self.factor
        if self.lo is None:                               # everything so far failed
            return self.start * self.start / self.upper if self.hi == self.start else self.hi / self.factor
        return math.sqrt(self.lo * self.hi)

    def tell(self, rate: float, ok: bool, /, **details: Any) -> None:
        """The verdict on `rate` (the last rate next_rate gave); details go into the probe record."""
        if rate != self._pending:
            raise ValueError(f"told about {rate}, but the search is waiting for {self._pending}")
        self._pending = None
        self.probes.append({**details, "rate": rate, "ok": bool(ok)})
        if ok:
            self.lo = rate
        else:
            self.hi = rate
        if self.lo is not None and self.hi is not None:
            if self.hi / self.lo <= 1 + self.rel_tol * (1 + 1e-9):
                self._status = "bracketed"
        elif self.lo is None and not self.expand_down:
            self._status = "fails-at-lowest"
        elif self.lo is None or self.hi is None:
            grew = (self.lo if self.hi is None else self.hi) != self.start
            if grew:
                self._expansions += 1
            if self._expansions > self.max_expansions:
                self._status = "holds-at-highest" if self.hi is None else "fails-at-lowest"

    @property
    def status(self) -> str:
        return self._status or "unfinished"

    def result(self) -> dict:
        """max_rate (None when even the lowest probe failed), min_failing (None when even the
        highest passed), status and every probe in the order it was made."""
        return {"max_rate": self.lo, "min_failing": self.hi, "status": self.status,
                "probes": list(self.probes)}


Probe = Callable[..., dict]


def search_all(searches: dict[Hashable, RateSearch], probe: Probe, args_of: Callable[[Hashable, float], tuple],
               executor: Executor, on_probe: Callable[[Hashable, dict], None] | None = None) -> None:
    """Run every search to completion, each one's next probe in flight as soon as the last ends.

    `probe(*args_of(key, rate))` must return a dict with a boolean "ok"; the rest of it is kept
    in the probe record. Probes of different searches run in parallel on `executor`.
    """
    inflight: dict[Future, tuple[Hashable, float]] = {}

    def submit(key: Hashable) -> None:
        rate = searches[key].next_rate()
        if rate is not None:
            inflight[executor.submit(probe, *args_of(key, rate))] = (key, rate)

    for key in searches:
        submit(key)
    while inflight:
        finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
        for fut in finished:
            key, rate = inflight.pop(fut)
            outcome = dict(fut.result())
            ok = outcome.pop("ok")
            searches[key].tell(rate, ok, **outcome)
            if on_probe:
                on_probe(key, searches[key].probes[-1])
            submit(key)
