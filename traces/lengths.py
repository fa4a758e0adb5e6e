"""Token-length distributions for synthetic traces, and their compact spec syntax.

    fixed:512                               every request has 512 tokens
    uniform:100:2000                        integers 100..2000, equally likely
    lognormal:mean=5905,median=5461         lognormal with that mean and median
    lognormal:mean=5905,median=5461,p95=9292
                                            shifted lognormal that also hits P95
    zipf:a=1.5,max=4096                     P(k) proportional to k^-a on 1..max

lognormal also takes min= and max= (defaults 1 and 131072); draws are rounded
to integers and clipped to [min, max]. zipf takes min= (default 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

import numpy as np

from nexus.errors import UserError

SPEC_HELP = "fixed:N | uniform:LO:HI | lognormal:mean=M,median=P50[,p95=P95][,min=A][,max=B] | zipf:a=A,max=B[,min=C]"
DEFAULT_MAX = 131072  # the context length of today's long-context models
_Z95 = NormalDist().inv_cdf(0.95)


class LengthDist(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n positive integer lengths (int64)."""
        ...


@dataclass(frozen=True)
class Fixed:
    value: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    lo: int
    hi: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo, self.hi + 1, n, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal:
    """shift + exp(N(mu, sigma^2)), rounded and clipped to [lo, hi]."""

    mu: float
    sigma: float
    shift: float = 0.0
    lo: int = 1
    hi: int = DEFAULT_MAX

    @classmethod
    def fit(cls, mean: float, median: float, p95: float | None = None,
            lo: int = 1, hi: int = DEFAULT_MAX) -> "LogNormal":
        """Match the mean and median; with p95, a shift makes the 95th percentile match too.

        A lognormal's median is exp(mu) and its mean exp(mu + sigma^2/2). Adding a shift c
        gives a third degree of freedom: (mean - median) / (p95 - median) depends on sigma
        alone, which fixes sigma; then exp(mu) = (p95 - median) / (exp(z95 sigma) - 1).
        """
        if not 0 < median <= mean:
            raise UserError(f"lognormal needs 0 < median <= mean, got mean={mean:g}, median={median:g}")
        if p95 is None:
            return cls(math.log(median), math.sqrt(2 * math.log(mean / median)), 0.0, lo, hi)
        if p95 <= median:
            raise UserError(f"lognormal needs p95 > median, got median={median:g}, p95={p95:g}")
        target = (mean - median) / (p95 - median)

        def ratio(s: float) -> float:
            return math.expm1(s * s / 2) / math.expm1(_Z95 * s)

        a, b = 1e-9, 4.0
        if not ratio(a) <= target <= ratio(b):
            raise UserError(f"no shifted lognormal has mean={mean:g}, median={median:g}, p95={p95:g}")
        for _ in range(200):
            mid = (a + b) / 2
            a, b = (mid, b) if ratio(mid) < target else (a, mid)
        sigma = (a + b) / 2
        scale = (p95 - median) / math.expm1(_Z95 * sigma)
        return cls(math.log(scale), sigma, median - scale, lo, hi)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self.shift + rng.lognormal(self.mu, self.sigma, n)
        return np.clip(np.rint(x), self.lo, self.hi).astype(np.int64)


@dataclass(frozen=True)
class Zipf:
    """P(k) proportional to k^-a on lo..hi; a bounded support allows any a > 0."""

    a: float
    hi: int
    lo: int = 1

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = np.arange(self.lo, self.hi + 1, dtype=np.float64)
        cdf = np.cumsum(k ** -self.a)
        picks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        return (self.lo + np.minimum(picks, len(k) - 1)).astype(np.int64)


def _bad(spec: str, why: str) -> UserError:
    return UserError(f"bad length spec {spec!r}: {why} (expected {SPEC_HELP})")


def _positive_int(spec: str, text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(spec, f"{name} must be an integer, got {text!r}") from None
    if value <= 0:
        raise _bad(spec, f"{name} must be positive, got {value}")
    return value


def _positive_float(spec: str, text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(spec, f"{name} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise _bad(spec, f"{name} must be a positive finite number, got {text!r}")
    return value


def _keywords(spec: str, body: str, required: set[str], optional: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in body.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in required | optional:
            raise _bad(spec, f"unexpected {part.strip()!r}; keys are {', '.join(sorted(required | optional))}")
        if key in out:
            raise _bad(spec, f"{key} given twice")
        out[key] = value.strip()
    missing = required - out.keys()
    if missing:
        raise _bad(spec, f"missing {', '.join(sorted(missing))}")
    return out


def _bounds(spec: str, lo: int, hi: int) -> tuple[int, int]:
    if lo > hi:
        raise _bad(spec, f"min {lo} is above max {hi}")
    return lo, hi


def parse_length_spec(spec: str) -> LengthDist:
    """Parse one of the specs in this module's docstring."""
    kind, _, body = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "fixed":
        return Fixed(_positive_int(spec, body, "the length"))
    if kind == "uniform":
        parts = body.split(":")
        if len(parts) != 2:
            raise _bad(spec, "uniform takes two bounds, uniform:LO:HI")
        lo, hi = _bounds(spec, _positive_int(spec, parts[0], "LO"), _positive_int(spec, parts[1], "HI"))
        return Uniform(lo, hi)
    if kind == "lognormal":
        kw = _keywords(spec, body, {"mean", "median"}, {"p95", "min", "max"})
        lo, hi = _bounds(spec, _positive_int(spec, kw.get("min", "1"), "min"),
                         _positive_int(spec, kw.get("max", str(DEFAULT_MAX)), "max"))
        p95 = _positive_float(spec, kw["p95"], "p95") if "p95" in kw else None
        mean, median = _positive_float(spec, kw["mean"], "mean"), _positive_float(spec, kw["median"], "median")
        try:
            return LogNormal.fit(mean, median, p95, lo, hi)
        except UserError as e:
            raise _bad(spec, str(e)) from None
    if kind == "zipf":
        kw = _keywords(spec, body, {"a", "max"}, {"min"})
        lo, hi = _bounds(spec, _positive_int(spec, kw.get("min", "1"), "min"), _positive_int(spec, kw["max"], "max"))
        if hi - lo > 10_000_000:
            raise _bad(spec, "zipf support is limited to 10 million values")
        return Zipf(_positive_float(spec, kw["a"], "a"), hi, lo)
    raise _bad(spec, f"unknown distribution {kind!r}")
