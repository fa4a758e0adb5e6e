"""Re-timing a trace: scale its request rate, or redraw Poisson arrivals at a new rate."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nexus.errors import UserError
from traces.format import TraceEntry, check_arrival, read_trace


def load_entries(trace: str | Path | Sequence[TraceEntry], rate_scale: float = 1.0,
                 rate: float | None = None, seed: int = 0) -> list[TraceEntry]:
    """Read a trace (or take entries) with arrivals shifted to start at 0 and optionally re-timed."""
    entries = list(read_trace(trace)) if isinstance(trace, (str, Path)) else list(trace)
    if not entries:
        raise UserError("the trace has no requests")
    if not (rate_scale > 0 and np.isfinite(rate_scale)):
        raise UserError(f"--rate-scale must be a positive number, got {rate_scale}")
    if rate is not None:
        if not (rate > 0 and np.isfinite(rate)):
            raise UserError(f"--rate must be a positive number, got {rate}")
        if seed < 0:
            raise UserError(f"--seed must be a non-negative integer, got {seed}")
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(entries))
        times = np.cumsum(gaps) - gaps[0]
    else:
        t0 = entries[0].arrival_time_s
        times = [(e.arrival_time_s - t0) / rate_scale for e in entries]
    return [TraceEntry(e.request_id, check_arrival(float(t), f"request {e.request_id}", "arrival_time_s"),
                       e.prompt_tokens, e.output_tokens)
            for e, t in zip(entries, times)]
