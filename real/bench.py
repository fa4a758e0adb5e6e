"""`nexus-real bench`: replay a trace on this machine's GPU (or CPU) under each policy."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from nexus.cost import load_cost_model
from nexus.errors import UserError
from nexus.kv import BlockPool, blocks_for
from nexus.metrics import requests_frame, summarize
from nexus.policy import Policy, build_policies, check_policy
from nexus.request import Request
from nexus.specs import GPUSpec, ModelSpec
from nexus.state import ServingState
from real.batch import Chunk
from real.engine import RealEngine
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions
from traces import TraceEntry


def build_partitions(policies: list[Policy], gpu: GPUSpec, device: str) -> Partitions:
    sizes = sorted({p for pol in policies for p in pol.splits(gpu)})
    parts = Partitions(sizes, device=device, cpu_gpu=gpu)
    if parts.num_sms != gpu.num_sms:
        raise UserError(f"this GPU has {parts.num_sms} SMs but the GPU spec {gpu.name!r} says "
                        f"{gpu.num_sms}; pass the right --gpu")
    return parts


def check_fits(entries: list[TraceEntry], runner: ModelRunner) -> None:
    """Every request must fit the KV cache and the model's positions on its own."""
    for e in entries:
        tokens = e.prompt_tokens + e.output_tokens
        need = blocks_for(tokens, runner.block_size)
        if need > runner.num_blocks:
            raise UserError(f"request {e.request_id} needs {need} KV blocks but the cache has {runner.num_blocks}")
        if tokens > runner.max_model_len:
            raise UserError(f"request {e.request_id} needs {tokens} positions; "
                            f"{runner.spec.name} allows {runner.max_model_len}")


def capture_all_graphs(runner: ModelRunner, parts: Partitions) -> None:
    """Decode graphs where decode steps run; prefill graphs where prefill-only steps run
    (the prefill sides, and the single stream of one-stream policies)."""
    runner.capture_graphs([parts.decode(0), *(parts.decode(p) for p in parts.made())])
    runner.capture_prefill_graphs([parts.decode(0), parts.prefill(0), *(parts.prefill(p) for p in parts.made())])


def warm_up(runner: ModelRunner, parts: Partitions) -> None:
    """Compile every kernel variant a run can meet, on every partition, before the clock starts.

    Triton specialises kernels on integer arguments and pointer alignment; a first use inside
    a timed run would cost seconds and land on whichever policy happens to run first.
    """
    if not runner.is_cuda:
        return   # the CPU path compiles nothing
    width = min(runner.num_blocks, 64)
    table = list(range(width))
    for part in parts.all():
        for chunk, prior in ((2, 0), (17, 0), (64, 16), (300, 33), (1024, 0)):
            runner.step([Chunk(list(range(1, chunk + 1)), prior, table)], part, graphs=False)
        for n in (1, 7, runner.max_decode_batch):
            decodes = [Chunk([1], 16 + i % 32, table) for i in range(n)]
            runner.step(decodes, part, graphs=False)
            runner.step([Chunk(list(range(1, 18)), 0, table), *decodes], part)


def bench_policy(runner: ModelRunner, parts: Partitions, policy: Policy, model: ModelSpec,
                 gpu: GPUSpec, entries: list[TraceEntry], calibration: str | None,
                 max_num_seqs: int, seed: int, slo_ttft_s: float | None,
                 slo_tbt_s: float | None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    cost = load_cost_model(model, gpu, calibration)
    pool = BlockPool(runner.num_blocks, runner.block_size, track_ids=True)
    requests = [Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens) for e in entries]
    state = ServingState(model, gpu, cost, pool, policy.priority, max_num_seqs)
    engine = RealEngine(runner, parts, policy, state, requests, seed)
    with ClockPowerSampler() as sampler:
        engine.run()
    frame = requests_frame(requests)
    summary = summarize(frame, state.gaps, policy.name, slo_ttft_s, slo_tbt_s)
    summary.update(cost_model=cost.describe(), model=model.name, gpu=gpu.name, kv_blocks=pool.num_blocks,
                   measured=True, clocks_during_run=sampler.summary())
    timeline = pd.DataFrame([asdict(r) for r in engine.timeline])
    return summary, frame, timeline


def make_policies(names: list[str], params: dict, split: tuple[int, int] | None,
                  gpu: GPUSpec) -> list[Policy]:
    policies = build_policies(names, params, split)
    for pol in policies:
        if getattr(pol, "gpus", 1) > 1:
            raise UserError(f"{pol.name} needs two GPUs; nexus-real runs on one")
        check_policy(pol, gpu)
    return policies


def facts(device: str) -> dict:
    return gpu_facts() if device == "cuda" else {"device": "cpu"}


def write_outputs(out: Path, runs: dict[str, tuple[dict, pd.DataFrame, pd.DataFrame]], extra: dict,
                  num_sms: int) -> None:
    from nexus.report import RunOutput, write_results
    write_results(out, {name: RunOutput(*run, extra) for name, run in runs.items()}, num_sms)
