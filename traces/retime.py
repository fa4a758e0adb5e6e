"""Re-timing a trace: scale its request rate, or redraw arrivals (Poisson, or gamma with a CV)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nexus.errors import UserError
from traces.arrivals import arrival_times, resolve_cv
from traces.format import TraceEntry, check_arrival, read_trace
from traces.seeding import rng_for


def load_entries(trace: str | Path | Sequence[TraceEntry], rate_scale: float = 1.0,
                 rate: float | None = None, seed: int = 0, cv: float | None = None) -> list[TraceEntry]:
    """Read a trace (or take entries) with arrivals shifted to start at 0 and optionally re-timed.

    `rate` alone redraws Poisson arrivals. `cv` redraws gamma-distributed gaps with that
    coefficient of variation (1 is Poisson, above 1 bursty), at `rate` or else at the
    trace's own mean rate, so the same load comes in bursts.
    """
    entries = list(read_trace(trace)) if isinstance(trace, (str, Path)) else list(trace)
    if not entries:
        raise UserError("the trace has no requests")
    if not (rate_scale > 0 and np.isfinite(rate_scale)):
        raise UserError(f"--rate-scale must be a positive number, got {rate_scale}")
    if rate is not None and not (rate > 0 and np.isfinite(rate)):
        raise UserError(f"--rate must be a positive number, got {rate}")
    if (rate is not None or cv is not None) and seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    if cv is not None:
        cv = resolve_cv(None, cv)
        if rate is None:
            span = entries[-1].arrival_time_s - entries[0].arrival_time_s
            if span <= 0 and len(entries) > 1:
                raise UserError("--cv needs --rate: every request of this trace arrives at once")
            rate = (len(entries) - 1) / span * rate_scale if span > 0 else 1.0
        times = arrival_times(len(entries), rate, cv, rng_for(seed, "arrivals"))
    elif rate is not None:
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(entries))
        times = np.cumsum(gaps) - gaps[0]
    else:
        t0 = entries[0].arrival_time_s
        times = [(e.arrival_time_s - t0) / rate_scale for e in entries]
    return [TraceEntry(e.request_id, check_arrival(float(t), f"request {e.request_id}", "arrival_time_s"),
                       e.prompt_tokens, e.output_tokens)
            for e, t in zip(entries, times)]
