"""The simulator's Python API: `sim.run(trace, policy=...) -> Result`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from nexus.config import EngineConfig
from nexus.cost import CostModel, load_cost_model
from nexus.kv import BlockPool, kv_capacity_blocks
from nexus.policy import Policy, check_policy, make_policy
from nexus.request import Request, check_fits
from nexus.result import Result, make_result
from nexus.specs import resolve_gpu, resolve_model
from nexus.state import ServingState
from nexus.step import Stepper
from sim.engine import SimEngine
from traces import TraceEntry
from traces.retime import load_entries

__all__ = ["Result", "run"]


def run(trace: str | Path | Sequence[TraceEntry], policy: str | Policy = "nexus",
        model: str = "llama-3.1-8b", gpu: str = "h100-sxm", calibration: str | None = None,
        policy_params: dict | None = None, rate_scale: float = 1.0, rate: float | None = None,
        config: EngineConfig = EngineConfig(),
        slo_ttft_s: float | None = None, slo_tbt_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        policy_calibration: str | CostModel | None = None) -> Result:
    """Simulate serving `trace` with `policy`; returns per-request and timeline DataFrames.

    `calibration` is what the simulated GPU does; `policy_calibration`, if given, is the cost
    model the policy plans with (Nexus's split controller), so a controller can be run on a
    model other than the truth: an older calibration, 'analytical', or any CostModel (to ask
    how a controller copes with a model that is wrong by a known amount).
    """
    model_spec, gpu_spec = resolve_model(model), resolve_gpu(gpu)
    pol = policy if isinstance(policy, Policy) else make_policy(policy, **(policy_params or {}))
    check_policy(pol, gpu_spec)
    cost = load_cost_model(model_spec, gpu_spec, calibration)
    if policy_calibration is None:
        planning = cost
    elif isinstance(policy_calibration, str):
        planning = load_cost_model(model_spec, gpu_spec, policy_calibration)
    else:
        planning = policy_calibration
    pool = BlockPool(kv_capacity_blocks(model_spec, gpu_spec, config.gpu_memory_utilization))
    entries = load_entries(trace, rate_scale, rate, config.seed)
    check_fits(entries, pool.num_blocks, model_spec.max_position_embeddings, gpu_spec.name)
    requests = [Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens)
                for e in entries]

    topology = pol.topology(pool)
    state = ServingState(model_spec, gpu_spec, planning, pool, pol.priority, config.max_num_seqs,
                         prefill_kv=topology.prefill_kv)
    done = [0]

    def finished(n: int) -> None:
        done[0] += n
        if on_progress:
            on_progress(done[0], len(requests))

    engine = SimEngine(Stepper(state, pol, topology), cost, requests, finished)
    wall, cpu = time.perf_counter(), time.process_time()
    engine.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    extra = {"cost_model": cost.describe(), "model": model_spec.name, "gpu": gpu_spec.name,
             "kv_blocks": pool.num_blocks}
    if planning is not cost:
        extra["policy_cost_model"] = planning.describe()
    run_config = {"policy": pol.describe(), **config.to_dict(), "rate_scale": rate_scale,
                  "rate": rate, "num_sms": gpu_spec.num_sms, "sim_wall_s": wall,
                  "sim_cpu_s": cpu}   # this process's CPU time in the loop: what other jobs on a shared machine disturb least
    return make_result(pol, requests, state.gaps, engine.timeline, slo_ttft_s, slo_tbt_s,
                       extra, run_config)
