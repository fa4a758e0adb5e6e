"""Summary statistics of a trace: size, duration, rate and token-length percentiles.

Percentiles use numpy's default (linear interpolation between order statistics).
The rate is (count - 1) / duration, the inverse of the mean gap between arrivals;
it is None when every request arrives at once.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from traces.format import TraceEntry


def _lengths(values: list[int]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": int(a.max())}


def summarize(entries: list[TraceEntry]) -> dict[str, Any]:
    duration = entries[-1].arrival_time_s - entries[0].arrival_time_s
    return {
        "count": len(entries),
        "duration_s": duration,
        "rate_rps": (len(entries) - 1) / duration if duration > 0 else None,
        "prompt_tokens": _lengths([e.prompt_tokens for e in entries]),
        "output_tokens": _lengths([e.output_tokens for e in entries]),
    }


def one_line(summary: dict[str, Any]) -> str:
    rate = summary["rate_rps"]
    return (
        f"{summary['count']} requests over {summary['duration_s']:.1f} s"
        f" ({'all at t=0' if rate is None else f'{rate:.2f} req/s'}),"
        f" prompt mean {summary['prompt_tokens']['mean']:.0f} tokens,"
        f" output mean {summary['output_tokens']['mean']:.0f} tokens"
    )
