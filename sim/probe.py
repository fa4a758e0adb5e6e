"""One simulated load point: a trace at a load, a policy, a verdict against the SLO.

`probe` is what max-rate searches and sweeps run, one call per point, in a worker process
or a Ray task: everything it needs travels in its arguments (a fresh copy of the policy
each time, since policies keep state while they run).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from nexus.config import EngineConfig
from nexus.errors import UserError
from nexus.policy import Policy
from sim.run import run
from traces import TraceEntry
from traces.retime import load_entries

PERCENTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class SLO:
    """Latency bounds on one percentile: TTFT over requests, TBT over all tokens."""
    ttft_s: float | None
    tbt_s: float | None
    percentile: str = "p95"

    def __post_init__(self) -> None:
        if self.ttft_s is None and self.tbt_s is None:
            raise UserError("an SLO needs --slo-ttft, --slo-tbt or both")
        for name in ("ttft_s", "tbt_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise UserError(f"--slo-{name[:-2].replace('_', '-')} must be a positive number of seconds, got {v}")
        if self.percentile not in PERCENTILES:
            raise UserError(f"--slo-percentile must be one of {', '.join(PERCENTILES)}, got {self.percentile!r}")

    def met(self, summary: dict) -> bool:
        q = self.percentile
        return ((self.ttft_s is None or summary["ttft_s"][q] <= self.ttft_s)
                and (self.tbt_s is None or summary["tbt_s"][q] <= self.tbt_s))

    def describe(self) -> dict:
        return {"ttft_s": self.ttft_s, "tbt_s": self.tbt_s, "percentile": self.percentile,
                "rule": f"{self.percentile} TTFT over requests and {self.percentile} TBT over all "
                        "tokens both at or under their bounds"}


@dataclass(frozen=True)
class Setup:
    """What stays fixed across the points of a study: model, GPU, cost model, engine limits."""
    model: str = "llama-3.1-8b"
    gpu: str = "h100-sxm"
    calibration: str | None = None
    policy_calibration: str | None = None
    max_num_seqs: int = 256


@dataclass(frozen=True)
class Load:
    """How a point re-times the trace: `scale` multiplies its own request rate (keeping its
    burstiness); `rate` redraws Poisson arrivals at that many req/s from `seed` (the same
    unit-rate draws at every rate)."""
    unit: str = "scale"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.unit not in ("scale", "rate"):
            raise ValueError(f"unit must be 'scale' or 'rate', got {self.unit!r}")

    def apply(self, entries: Sequence[TraceEntry], x: float) -> list[TraceEntry]:
        if self.unit == "scale":
            return load_entries(entries, rate_scale=x)
        return load_entries(entries, rate=x, seed=self.seed)


def _stats(d: dict) -> dict:
    return {k: d[k] for k in ("mean", "p50", "p90", "p95", "p99")}


def probe(entries: Sequence[TraceEntry], policy: Policy, setup: Setup, load: Load, x: float,
          slo: SLO | None = None) -> dict:
    """Simulate `entries` re-timed to load `x` under a fresh copy of `policy`.

    Returns the point: offered rate, throughput, TTFT/TBT/E2E statistics, and with an SLO
    its verdict under "ok".
    """
    timed = load.apply(entries, x)
    r = run(timed, policy=copy.deepcopy(policy), model=setup.model, gpu=setup.gpu,
            calibration=setup.calibration, policy_calibration=setup.policy_calibration,
            config=EngineConfig(max_num_seqs=setup.max_num_seqs),
            slo_ttft_s=slo.ttft_s if slo else None, slo_tbt_s=slo.tbt_s if slo else None)
    point = point_of(r.summary, r.timeline, timed, load, x, slo)
    point["sim_wall_s"] = r.config["sim_wall_s"]
    return point


def point_of(s: dict, tl: pd.DataFrame, timed: Sequence[TraceEntry], load: Load, x: float,
             slo: SLO | None) -> dict:
    """A load point from a run's summary and timeline, simulated or measured alike."""
    span = timed[-1].arrival_time_s - timed[0].arrival_time_s
    point = {
        load.unit: x,
        "offered_rps": (len(timed) - 1) / span if span > 0 else math.inf,
        "arrival_span_s": span,
        "throughput_rps": s["throughput_rps"],
        "output_tokens_per_s": s["output_tokens_per_s"],
        "ttft_s": _stats(s["ttft_s"]), "tbt_s": _stats(s["tbt_s"]),
        "e2e_s": {"mean": s["e2e_s"]["mean"], "p95": s["e2e_s"]["p95"]},
        "preemptions": s["preemptions"], "duration_s": s["duration_s"],
    }
    split = tl[(tl["stream"] == "prefill") & (tl["sms"] > 0)]
    if len(split):
        # SMs the prefill side held while the GPU was split, weighted by time (a plain stream,
        # as disaggregation's whole prefill GPU, records 0 and is left out).
        w = (split["end_s"] - split["start_s"]).to_numpy()
        point["prefill_sms_when_split"] = (float(np.average(split["sms"], weights=w))
                                           if w.sum() > 0 else math.nan)
    if slo is not None:
        point["slo_attainment"] = s["slo"]["attainment"]
        point["ok"] = slo.met(s)
    return point
