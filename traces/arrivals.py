"""Arrival processes: gaps between requests drawn from the gamma family.

The coefficient of variation (CV) of the gaps picks the process: 0 is a
constant rate, 1 is Poisson (exponential gaps), above 1 is burstier than
Poisson. The first request arrives at t = 0; a rate of infinity puts every
request at t = 0.
"""
from __future__ import annotations

import math

import numpy as np

from nexus.errors import UserError

PROCESS_CV = {"poisson": 1.0, "constant": 0.0}


def resolve_cv(process: str | None, cv: float | None) -> float:
    """Turn the --arrival / --cv pair into one CV, refusing contradictory settings."""
    if cv is not None and (not math.isfinite(cv) or cv < 0):
        raise UserError(f"--cv must be a finite number >= 0, got {cv}")
    if process is None:
        return 1.0 if cv is None else cv
    if process == "gamma":
        if cv is None:
            raise UserError("--arrival gamma needs --cv (1 is Poisson, above 1 is burstier)")
        return cv
    fixed = PROCESS_CV[process]
    if cv is not None and cv != fixed:
        raise UserError(f"--arrival {process} has a CV of {fixed:g}; use --arrival gamma for --cv {cv:g}")
    return fixed


def check_rate(rate: float) -> float:
    if math.isnan(rate) or rate <= 0:
        raise UserError(f"--rate must be a positive number of requests per second (or inf), got {rate}")
    return rate


def arrival_times(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """n non-decreasing arrival times in seconds, at mean `rate` requests per second."""
    check_rate(rate)
    if math.isinf(rate) or n == 0:
        return np.zeros(n)
    mean_gap = 1.0 / rate
    count = n - 1
    if cv == 0:
        gaps = np.full(count, mean_gap)
    elif cv == 1:
        # Its own branch so that "CV 1" is exactly the Poisson trace, not just one like it.
        gaps = rng.exponential(mean_gap, count)
    else:
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, mean_gap / shape, count)
    return np.concatenate(([0.0], np.cumsum(gaps)))
