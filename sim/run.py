"""The simulator's Python API: `sim.run(trace, policy=...) -> Result`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import simpy

from nexus.cost import load_cost_model
from nexus.errors import UserError
from nexus.kv import BlockPool, blocks_for, kv_capacity_blocks
from nexus.metrics import requests_frame, summarize
from nexus.policy import Policy, check_policy, make_policy
from nexus.request import Request
from nexus.specs import resolve_gpu, resolve_model
from nexus.state import ServingState
from sim.engine import SimEngine
from traces import TraceEntry
from traces.retime import load_entries

TIMELINE_COLUMNS = ["start_s", "end_s", "stream", "sms", "prefill_tokens", "decode_seqs",
                    "decode_steps", "kv_usage", "prefill_prior_tokens", "decode_kv_tokens"]


@dataclass
class Result:
    policy: str
    summary: dict
    requests: pd.DataFrame
    timeline: pd.DataFrame
    config: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (f"Result(policy={self.policy!r}, requests={s['requests']}, "
                f"ttft_p95={s['ttft_s']['p95']:.3f}s, tbt_p95={s['tbt_s']['p95'] * 1e3:.1f}ms)")


def run(trace: str | Path | Sequence[TraceEntry], policy: str | Policy = "nexus",
        model: str = "llama-3.1-8b", gpu: str = "h100-sxm", calibration: str | None = None,
        policy_params: dict | None = None, rate_scale: float = 1.0, rate: float | None = None,
        seed: int = 0, max_num_seqs: int = 256, gpu_memory_utilization: float = 0.9,
        slo_ttft_s: float | None = None, slo_tbt_s: float | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        policy_calibration: str | None = None) -> Result:
    """Simulate serving `trace` with `policy`; returns per-request and timeline DataFrames.

    `calibration` is what the simulated GPU does; `policy_calibration`, if given, is the cost
    model the policy plans with (Nexus's split controller), so a controller can be run on a
    model other than the truth: an older calibration, or 'analytical'.
    """
    model_spec, gpu_spec = resolve_model(model), resolve_gpu(gpu)
    pol = policy if isinstance(policy, Policy) else make_policy(policy, **(policy_params or {}))
    check_policy(pol, gpu_spec)
    if max_num_seqs < 1:
        raise UserError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    cost = load_cost_model(model_spec, gpu_spec, calibration)
    planning = cost if policy_calibration is None else load_cost_model(model_spec, gpu_spec, policy_calibration)
    pool = BlockPool(kv_capacity_blocks(model_spec, gpu_spec, gpu_memory_utilization))
    entries = load_entries(trace, rate_scale, rate, seed)
    for e in entries:
        need = blocks_for(e.prompt_tokens + e.output_tokens)
        if need > pool.num_blocks:
            raise UserError(f"request {e.request_id} needs {need} KV blocks "
                            f"({e.prompt_tokens}+{e.output_tokens} tokens) but only "
                            f"{pool.num_blocks} fit on {gpu_spec.name}")
    requests = [Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens)
                for e in entries]

    env = simpy.Environment()
    state = ServingState(model_spec, gpu_spec, planning, pool, pol.priority, max_num_seqs)
    done = [0]

    def finished(n: int) -> None:
        done[0] += n
        if on_progress:
            on_progress(done[0], len(requests))

    engine = SimEngine(env, state, pol, cost, requests, finished)
    wall = time.perf_counter()
    env.run(until=engine.all_done)
    wall = time.perf_counter() - wall

    frame = requests_frame(requests)
    summary = summarize(frame, state.gaps, pol.name, slo_ttft_s, slo_tbt_s)
    summary["cost_model"] = cost.describe()
    if planning is not cost:
        summary["policy_cost_model"] = planning.describe()
    summary["model"], summary["gpu"] = model_spec.name, gpu_spec.name
    summary["kv_blocks"] = pool.num_blocks
    config = {"policy": pol.describe(), "max_num_seqs": max_num_seqs,
              "gpu_memory_utilization": gpu_memory_utilization, "rate_scale": rate_scale,
              "rate": rate, "seed": seed, "num_sms": gpu_spec.num_sms, "sim_wall_s": wall}
    timeline = pd.DataFrame(engine.timeline, columns=TIMELINE_COLUMNS)
    return Result(pol.name, summary, frame, timeline, config)
