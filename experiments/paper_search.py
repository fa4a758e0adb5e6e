"""One simulated point of the study, and the bisection for the highest rate within the SLOs."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

import sim
from nexus.config import EngineConfig
from paper_setup import MODEL, ROOT, GPUSetup, Variant
from traces import TraceEntry

# Arrivals "all at once" when measuring what a policy drains at full load.
FLOOD_RATE = 1e4


def _stats(d: dict) -> dict:
    return {k: d[k] for k in ("mean", "p50", "p95", "p99")}


def simulate(entries: list[TraceEntry], setup: GPUSetup, v: Variant, rate: float,
             seed: int = 0, slo: dict | None = None) -> dict:
    """Serve the trace at `rate` req/s (Poisson, `seed`) and keep the numbers the study reports."""
    r = sim.run(entries, policy=v.policy, model=MODEL, gpu=setup.gpu, calibration=setup.calibration,
                policy_params=v.params, rate=rate, config=EngineConfig(seed=seed),
                slo_ttft_s=slo["ttft_p95_s"] if slo else None,
                slo_tbt_s=slo["tbt_p95_s"] if slo else None)
    s = r.summary
    point = {
        "rate_rps": rate, "gpus": v.gpus,
        "throughput_rps": s["throughput_rps"],
        "throughput_rps_per_gpu": s["throughput_rps"] / v.gpus,
        "output_tokens_per_s": s["output_tokens_per_s"],
        "ttft_s": _stats(s["ttft_s"]), "tbt_s": _stats(s["tbt_s"]),
        "e2e_s": {"mean": s["e2e_s"]["mean"], "p95": s["e2e_s"]["p95"]},
        "preemptions": s["preemptions"], "duration_s": s["duration_s"],
        "sim_wall_s": r.config["sim_wall_s"],
    }
    if slo:
        point["slo_attainment"] = s["slo"]["attainment"]
        point["within_slo"] = within(point, slo)
    tl = r.timeline
    split = tl[(tl["stream"] == "prefill") & (tl["sms"] > 0)]
    if len(split) and v.gpus == 1:
        # SMs the prefill side held while the GPU was split, weighted by time.
        w = (split["end_s"] - split["start_s"]).to_numpy()
        point["prefill_sms_when_split"] = (float(np.average(split["sms"], weights=w))
                                           if w.sum() > 0 else math.nan)
    return point


def cost_model_of(setup: GPUSetup) -> dict:
    """The cost model's self-description, as sim.run reports it."""
    one = [TraceEntry("0", 0.0, 16, 2)]
    described = sim.run(one, policy="chunked", model=MODEL, gpu=setup.gpu,
                        calibration=setup.calibration).summary["cost_model"]
    if "calibration" in described:   # a path inside the checkout reads the same on every machine
        path = Path(described["calibration"])
        if path.is_relative_to(ROOT):
            described["calibration"] = str(path.relative_to(ROOT))
    return described


def within(point: dict, slo: dict) -> bool:
    """The paper-style bound: P95 TTFT and P95 TBT both inside their limits."""
    return point["ttft_s"]["p95"] <= slo["ttft_p95_s"] and point["tbt_s"]["p95"] <= slo["tbt_p95_s"]


def drain_rate(entries: list[TraceEntry], setup: GPUSetup, v: Variant) -> float:
    """Requests per second the policy completes when every request is already waiting."""
    return simulate(entries, setup, v, FLOOD_RATE)["throughput_rps"]


def bisect_max_rate(ok_at: Callable[[float], bool], lo: float, hi: float,
                    rel_tol: float = 0.02, max_doublings: int = 4) -> dict:
    """Highest rate where `ok_at` holds, searched geometrically between lo and hi.

    Returns the last rate that held and the lowest rate seen to fail, plus every probe.
    `status` is "bracketed", "fails-at-lowest" (max_rate_rps is None) or "holds-at-highest"
    (hi was doubled `max_doublings` times and still held; the max is at least that).
    Latency is not strictly monotone in rate, so only the bracket is promised.
    """
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got {lo}, {hi}")
    probes: list[dict] = []

    def probe(rate: float) -> bool:
        ok = bool(ok_at(rate))
        probes.append({"rate_rps": rate, "ok": ok})
        return ok

    if not probe(lo):
        return {"max_rate_rps": None, "first_failing_rate_rps": lo, "status": "fails-at-lowest",
                "probes": probes}
    for _ in range(max_doublings + 1):
        if not probe(hi):
            break
        lo, hi = hi, 2 * hi
    else:
        return {"max_rate_rps": lo, "first_failing_rate_rps": None, "status": "holds-at-highest",
                "probes": probes}
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return {"max_rate_rps": lo, "first_failing_rate_rps": hi, "status": "bracketed", "probes": probes}
