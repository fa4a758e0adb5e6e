"""Per-request records and the summary both engines report: TTFT, TBT, E2E, throughput, goodput.

TBT percentiles are over all tokens (like vLLM's ITL), so gaps are kept as weighted values:
a closed-form run of k steps over b requests adds one value with weight k*b.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from nexus.request import Request

PERCENTILES = {"mean": None, "p50": 50, "p90": 90, "p95": 95, "p99": 99}


class TokenGaps:
    """Times between consecutive tokens of the same request, as (value, count) pairs."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.counts: list[int] = []

    def add(self, value: float, count: int) -> None:
        if count > 0:
            self.values.append(value)
            self.counts.append(count)

    def __len__(self) -> int:
        return sum(self.counts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.values, dtype=float), np.asarray(self.counts, dtype=np.int64)


def weighted_stats(values: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """mean, p50, p90, p95, p99; percentiles use the inverted-CDF rule (a real sample)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {k: math.nan for k in PERCENTILES}
    weights = np.ones(values.size) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    total = cum[-1]
    out = {"mean": float(np.dot(v, w) / total)}
    for key, q in PERCENTILES.items():
        if q is not None:
            idx = int(np.searchsorted(cum, q / 100 * total, side="left"))
            out[key] = float(v[min(idx, v.size - 1)])
    return out


def requests_frame(requests: Iterable[Request]) -> pd.DataFrame:
    rows = []
    for r in requests:
        tbt_mean = ((r.last_token_s - r.first_token_s) / (r.output_tokens - 1)
                    if r.output_tokens > 1 and r.finish_s is not None else math.nan)
        rows.append((r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.generated,
                     r.first_token_s, r.finish_s, r.preemptions, tbt_mean))
    df = pd.DataFrame(rows, columns=["request_id", "arrival_s", "prompt_tokens", "output_tokens",
                                     "generated_tokens", "first_token_s", "finish_s",
                                     "preemptions", "tbt_mean_s"])
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    df["normalized_latency_s"] = df["e2e_s"] / df["output_tokens"]
    return df


def summarize(requests: pd.DataFrame, gaps: TokenGaps, policy: str,
              slo_ttft_s: float | None = None, slo_tbt_s: float | None = None) -> dict:
    """The summary.json object. Throughput counts from the first arrival to the last finish."""
    span = float(requests["finish_s"].max() - requests["arrival_s"].min())
    values, counts = gaps.arrays()
    summary = {
        "policy": policy,
        "requests": int(len(requests)),
        "duration_s": span,
        "throughput_rps": len(requests) / span if span > 0 else math.nan,
        "output_tokens_per_s": float(requests["output_tokens"].sum()) / span if span > 0 else math.nan,
        "preemptions": int(requests["preemptions"].sum()),
        "ttft_s": weighted_stats(requests["ttft_s"].to_numpy()),
        "tbt_s": weighted_stats(values, counts),
        "e2e_s": weighted_stats(requests["e2e_s"].to_numpy()),
        "normalized_latency_s": weighted_stats(requests["normalized_latency_s"].to_numpy()),
    }
    if slo_ttft_s is not None or slo_tbt_s is not None:
        ok = np.ones(len(requests), dtype=bool)
        if slo_ttft_s is not None:
            ok &= requests["ttft_s"].to_numpy() <= slo_ttft_s
        if slo_tbt_s is not None:
            # A request meets the TBT SLO when its mean gap does (single-token outputs pass).
            tbt = requests["tbt_mean_s"].to_numpy()
            ok &= np.isnan(tbt) | (tbt <= slo_tbt_s)
        summary["slo"] = {
            "ttft_s": slo_ttft_s, "tbt_s": slo_tbt_s,
            "attainment": float(ok.mean()),
            "goodput_rps": float(ok.sum()) / span if span > 0 else math.nan,
        }
    return summary
