"""`nexus-real max-rate`: the highest load each policy sustains within an SLO, measured with few probes.

The simulator first finds each policy's max rate on the same calibration (`sim.max_rate`).
The engine then confirms that prediction rather than searching from scratch: it probes the
predicted rate and 1.1x it, and bisects only where the engine disagrees
(`RateSearch.around`), so a policy usually costs two or three runs of the trace. The record
has the shape of `nexus-sim --max-rate`'s max_rate.json, with the simulator's bracket beside
the engine's for each policy.
"""
from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from nexus.cost import CostModel, load_cost_model
from nexus.policy import Policy
from nexus.rate_search import RateSearch
from nexus.step_view import STEPS_FLOAT_FORMAT, step_table, step_view
from sim import max_rate as sim_max_rate
from sim.probe import SLO, Load, Setup, point_of
from traces import TraceEntry


def measured_probe(bench, entries: Sequence[TraceEntry], make: Callable[[], Policy], calibration: str | None,
                   cost: CostModel, load: Load, x: float, slo: SLO) -> tuple[dict, pd.DataFrame]:
    """One engine run at load `x`: its point (with the error of `calibration`'s model `cost`
    per kind of step, the view that separates cost-model error from scheduling near
    saturation) and its steps."""
    timed = load.apply(entries, x)
    result = bench.run(timed, make(), calibration, slo.ttft_s, slo.tbt_s)
    point = point_of(result.summary, result.timeline, timed, load, x, slo)
    if "learnt" in result.summary:
        point["learnt"] = result.summary["learnt"]
    steps = step_table(result.timeline, cost)
    point["steps"] = step_view(steps)
    return point, steps


def engine_max_rates(bench, entries: Sequence[TraceEntry], policies: dict[str, Callable[[], Policy]],
                     calibration: str | None, slo: SLO, load: Load, sim_executor: Executor,
                     spread: float = 0.1, log: Callable[[str], None] = print,
                     on_policy: Callable[[dict, list[pd.DataFrame]], None] | None = None) -> dict:
    """Per policy label: the simulator's search result, then the engine's probes around it.
    `on_policy` gets the results and every probe's steps so far after each probe (the policy
    being searched has status "unfinished" until its search ends), so a run cut short keeps
    what it measured."""
    setup = Setup(bench.model.name, bench.gpu.name, calibration, None, bench.config.max_num_seqs)
    variants = [sim_max_rate.Variant(label, make()) for label, make in policies.items()]
    predicted = sim_max_rate.find_max_rates(entries, variants, setup, load, slo, sim_executor,
                                            lambda: sim_max_rate.search_for(1.0))
    cost = load_cost_model(bench.model, bench.gpu, calibration)
    out: dict = {}
    steps: list[pd.DataFrame] = []
    for label, make in policies.items():
        guess = predicted[label]["max_rate"] or predicted[label]["min_failing"]
        search = RateSearch.around(guess, spread=spread, max_expansions=3)
        while (x := search.next_rate()) is not None:
            point, probe_steps = measured_probe(bench, entries, make, calibration, cost, load, x, slo)
            steps.append(probe_steps.assign(policy=label, rate=x))
            log(f"  {label}: {x:.4g} {'ok' if point['ok'] else 'fails'} on the engine")
            search.tell(x, point.pop("ok"), **point)
            res = search.result()
            at_max = [p for p in res["probes"] if p["ok"] and p["rate"] == res["max_rate"]]
            out[label] = {"policy": make().describe(), "max_rate": res["max_rate"],
                          "min_failing": res["min_failing"], "status": res["status"], "probes": res["probes"],
                          "steady_state": sim_max_rate.steady_state(at_max[0]) if at_max else None,
                          "simulated": {k: predicted[label][k] for k in ("max_rate", "min_failing", "status")},
                          "simulated_within_bracket": _within(predicted[label]["max_rate"], res, spread)}
            if on_policy is not None:
                on_policy(out, steps)
    return out


def _within(simulated: float | None, measured: dict, tolerance: float) -> bool | None:
    """Whether the simulator's max rate lies in the engine's bracket, or within `tolerance` of it."""
    lo, hi = measured["max_rate"], measured["min_failing"]
    if simulated is None or (lo is None and hi is None):
        return None
    low_ok = lo is None or simulated >= lo * (1 - tolerance)
    high_ok = hi is None or simulated <= hi * (1 + tolerance)
    return low_ok and high_ok


def write_steps(frames: list[pd.DataFrame], path: Path) -> None:
    """Every probe's measured steps beside the model's time for them, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pd.concat(frames, ignore_index=True).to_csv(tmp, index=False, float_format=STEPS_FLOAT_FORMAT, compression="gzip")
    tmp.replace(path)
