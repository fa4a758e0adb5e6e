"""One simulated point of the study (sim.probe), and the bracket search for the highest rate
within the SLOs (nexus.rate_search), in the study's own record format."""
from __future__ import annotations

from pathlib import Path

import sim
from nexus.rate_search import RateSearch
from paper_setup import MODEL, ROOT, GPUSetup, Variant
from sim.probe import SLO, Load, Setup, probe
from traces import TraceEntry

# Arrivals "all at once" when measuring what a policy drains at full load.
FLOOD_RATE = 1e4
# The search starts between these multiples of a rate reference and doubles hi while it holds.
DOUBLINGS, REL_TOL = 4, 0.02


def _slo(slo: dict | None) -> SLO | None:
    return SLO(slo["ttft_p95_s"], slo["tbt_p95_s"], "p95") if slo else None


def simulate(entries: list[TraceEntry], setup: GPUSetup, v: Variant, rate: float,
             seed: int = 0, slo: dict | None = None) -> dict:
    """Serve the trace at `rate` req/s (Poisson, `seed`) and keep the numbers the study reports."""
    p = probe(entries, v.build(), Setup(MODEL, setup.gpu, setup.calibration), Load("rate", seed),
              rate, _slo(slo))
    point = {
        "rate_rps": rate, "gpus": v.gpus,
        "throughput_rps": p["throughput_rps"],
        "throughput_rps_per_gpu": p["throughput_rps"] / v.gpus,
        "output_tokens_per_s": p["output_tokens_per_s"],
        "ttft_s": {k: p["ttft_s"][k] for k in ("mean", "p50", "p95", "p99")},
        "tbt_s": {k: p["tbt_s"][k] for k in ("mean", "p50", "p95", "p99")},
        "e2e_s": p["e2e_s"], "preemptions": p["preemptions"], "duration_s": p["duration_s"],
        "sim_wall_s": p["sim_wall_s"],
    }
    if slo:
        point["slo_attainment"] = p["slo_attainment"]
        point["within_slo"] = p["ok"]
    if "prefill_sms_when_split" in p:
        point["prefill_sms_when_split"] = p["prefill_sms_when_split"]
    return point


def probe_point(entries: list[TraceEntry], setup: GPUSetup, v: Variant, rate: float, slo: dict) -> dict:
    """A search probe: the point, with its verdict under "ok"."""
    point = simulate(entries, setup, v, rate, slo=slo)
    return {"ok": point["within_slo"], "point": point}


def search_from(lo: float, hi: float) -> RateSearch:
    """The study's search: from lo, then hi, doubled at most DOUBLINGS times while it holds."""
    return RateSearch(lo, hi, factor=2.0, rel_tol=REL_TOL, max_expansions=DOUBLINGS, expand_down=False)


def found(search: RateSearch) -> dict:
    """The search's result in the study's terms (req/s), with a compact record of each probe."""
    r = search.result()
    probes = [{"rate_rps": p["rate"], "ok": p["ok"], "ttft_p95_s": p["point"]["ttft_s"]["p95"],
               "tbt_p95_s": p["point"]["tbt_s"]["p95"], "throughput_rps": p["point"]["throughput_rps"]}
              for p in r["probes"]]
    at = {p["rate"]: p["point"] for p in r["probes"]}
    return {"max_rate_rps": r["max_rate"], "first_failing_rate_rps": r["min_failing"],
            "status": r["status"], "at_max": at.get(r["max_rate"]), "probes": probes}


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
    return _slo(slo).met(point)


def drain_rate(entries: list[TraceEntry], setup: GPUSetup, v: Variant) -> float:
    """Requests per second the policy completes when every request is already waiting."""
    return simulate(entries, setup, v, FLOOD_RATE)["throughput_rps"]
