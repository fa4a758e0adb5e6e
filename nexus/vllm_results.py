"""A results file with the keys of vLLM's serving benchmark, beside our own summary.json.

Tools built around `vllm bench serve` read `request_throughput`, `output_throughput`,
`total_token_throughput` and `{mean,median,std,pN}_{ttft,tpot,itl,e2el}_ms`. Statistics
follow that benchmark: TPOT is each request's (E2E - TTFT) / (output tokens - 1) over
requests with more than one token; ITL is every gap between two tokens of a request;
percentiles interpolate linearly (numpy's default) and std is the population's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from nexus.errors import UserError
from nexus.metrics import TokenGaps

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def parse_percentiles(text: str) -> list[float]:
    """'50,90,99' -> [50.0, 90.0, 99.0]; each in (0, 100]."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--percentiles takes numbers like 50,90,99; got {text!r}") from None
    if not values or any(not 0 < p <= 100 for p in values):
        raise UserError(f"--percentiles must be numbers in (0, 100]; got {text!r}")
    return values


def _key(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def _stats(name: str, values_s: np.ndarray, percentiles: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s, dtype=float) * 1e3
    if ms.size == 0:
        return {f"{k}_{name}_ms": math.nan for k in ("mean", "median", "std", *(f"p{_key(p)}" for p in percentiles))}
    out = {f"mean_{name}_ms": float(ms.mean()), f"median_{name}_ms": float(np.median(ms)),
           f"std_{name}_ms": float(ms.std())}
    out.update({f"p{_key(p)}_{name}_ms": float(np.percentile(ms, p)) for p in percentiles})
    return out


def vllm_results(requests: pd.DataFrame, gaps: TokenGaps, percentiles: list[float] = DEFAULT_PERCENTILES) -> dict:
    """The metrics object from a requests frame (nexus.metrics.requests_frame) and its token gaps.

    Duration runs from the first arrival to the last finish, as in summary.json.
    """
    done = requests[requests["finish_s"].notna()]
    duration = float(done["finish_s"].max() - done["arrival_s"].min()) if len(done) else 0.0
    inputs = int(done["prompt_tokens"].sum())
    outputs = int(done["generated_tokens"].sum())
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: math.nan)
    many = done[done["generated_tokens"] > 1]
    tpot = ((many["finish_s"] - many["first_token_s"]) / (many["generated_tokens"] - 1)).to_numpy()
    values, counts = gaps.arrays()
    result = {
        "duration": duration, "completed": int(len(done)),
        "total_input_tokens": inputs, "total_output_tokens": outputs,
        "request_throughput": per_s(len(done)), "output_throughput": per_s(outputs),
        "total_token_throughput": per_s(inputs + outputs),
        "percentiles": list(percentiles),
    }
    result.update(_stats("ttft", done["ttft_s"].to_numpy(), percentiles))
    result.update(_stats("tpot", tpot, percentiles))
    result.update(_stats("itl", np.repeat(values, counts), percentiles))
    result.update(_stats("e2el", done["e2e_s"].to_numpy(), percentiles))
    return result


def write_vllm_results(path: Path, requests: pd.DataFrame, gaps: TokenGaps,
                       percentiles: list[float] = DEFAULT_PERCENTILES, extra: dict | None = None) -> dict:
    result = {**(extra or {}), **vllm_results(requests, gaps, percentiles)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
