"""The engine's Python API: `real.run(trace, policy=...) -> Result`, as `sim.run` for the simulator."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nexus.config import EngineConfig
from nexus.policy import Policy, make_policy
from nexus.result import Result
from nexus.specs import resolve_model
from real.bench import Bench
from real.gpu_detect import detect_gpu
from traces import TraceEntry
from traces.retime import load_entries


def run(trace: str | Path | Sequence[TraceEntry], policy: str | Policy = "nexus",
        model: str = "llama-3.1-8b", gpu: str | None = None, calibration: str | None = None,
        policy_params: dict | None = None, rate_scale: float = 1.0, rate: float | None = None,
        config: EngineConfig = EngineConfig(),
        slo_ttft_s: float | None = None, slo_tbt_s: float | None = None,
        device: str = "cuda", weights: str | Path | None = None,
        num_blocks: int | None = None) -> Result:
    """Serve `trace` with `policy` on this machine's GPU (device='cpu': a small model on the CPU).

    The arguments `sim.run` also takes mean the same here; `gpu` defaults to the detected
    device's preset, and `calibration` is the cost model the policy plans with. `weights` is a local Hugging Face checkpoint (random weights without).
    """
    model_spec, gpu_spec = resolve_model(model), detect_gpu(gpu, device)
    pol = policy if isinstance(policy, Policy) else make_policy(policy, **(policy_params or {}))
    entries = load_entries(trace, rate_scale, rate, config.seed)
    bench = Bench(model_spec, gpu_spec, [pol], config, device, weights, num_blocks, calibration=calibration)
    return bench.run(entries, pol, calibration, slo_ttft_s, slo_tbt_s)
