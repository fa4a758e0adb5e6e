"""A model made ready on this machine's GPU (or CPU), that replays traces under policies.

`Bench` builds what every run shares once (weights, KV cache, SM partitions, CUDA graphs,
compiled kernels); `Bench.run` replays one trace under one policy and returns the same
`Result` as the simulator. `real.run` is the one-call form; `nexus-real bench` runs several
policies on one `Bench`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from nexus.config import EngineConfig
from nexus.cost import engine_prefill_buckets, load_cost_model
from nexus.errors import UserError
import nexus.graph_buckets
from nexus.graph_buckets import PREFILL_GRAPH_BUCKETS
from nexus.kv import BlockPool
from nexus.policy import Policy, check_policy as check_policy_splits
from nexus.request import Request, check_fits
from nexus.result import Result, make_result
from nexus.specs import GPUSpec, ModelSpec
from nexus.state import ServingState
from nexus.step import Stepper
from nexus.topology import OneGPU
from real.batch import Chunk
from real.engine import RealEngine
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions
from traces import TraceEntry


class Bench:
    def __init__(self, model: ModelSpec, gpu: GPUSpec, policies: list[Policy],
                 config: EngineConfig = EngineConfig(), device: str = "cuda",
                 weights: str | Path | None = None, num_blocks: int | None = None,
                 ready: tuple[ModelRunner, Partitions] | None = None, calibration: str | None = None):
        """Build the model, cache, partitions and graphs; `ready` reuses a runner and
        partitions whose graphs are captured (the profiler's). `calibration` (default: the
        shipped one) names the prefill buckets its profile dropped, which are not captured."""
        for pol in policies:
            check_policy(pol, gpu)
        self.model, self.gpu, self.config, self.device = model, gpu, config, device
        if ready is not None:
            self.runner, self.partitions = ready
            return
        self.runner = ModelRunner(model, device=device, weights=weights, seed=config.seed,
                                  num_blocks=num_blocks, memory_utilization=config.gpu_memory_utilization,
                                  max_decode_batch=config.max_num_seqs)
        self.partitions = build_partitions(policies, gpu, device)
        capture_all_graphs(self.runner, self.partitions,
                           engine_prefill_buckets(model, gpu, calibration))
        warm_up(self.runner, self.partitions)

    def machine(self) -> dict:
        return gpu_facts() if self.device == "cuda" else {"device": "cpu"}

    def run(self, entries: list[TraceEntry], policy: Policy, calibration: str | None = None,
            slo_ttft_s: float | None = None, slo_tbt_s: float | None = None) -> Result:
        runner, model, gpu = self.runner, self.model, self.gpu
        check_policy(policy, gpu)   # also settles defaults that depend on the GPU (static's split)
        check_fits(entries, runner.num_blocks, runner.max_model_len, "this engine's KV cache")
        cost = load_cost_model(model, gpu, calibration)
        pool = BlockPool(runner.num_blocks, runner.block_size, track_ids=True)
        requests = [Request(e.request_id, e.arrival_time_s, e.prompt_tokens, e.output_tokens)
                    for e in entries]
        state = ServingState(model, gpu, cost, pool, policy.priority, self.config.max_num_seqs)
        engine = RealEngine(runner, self.partitions, Stepper(state, policy), requests, self.config.seed)
        with ClockPowerSampler() as sampler:
            engine.run()
        extra = {"cost_model": cost.describe(), "model": model.name, "gpu": gpu.name,
                 "kv_blocks": pool.num_blocks, "measured": True, "clocks_during_run": sampler.summary()}
        config = {"policy": policy.describe(), **self.config.to_dict(), "num_sms": gpu.num_sms,
                  "device": self.device, "partitions": self.partitions.describe()}
        result = make_result(policy, requests, state.gaps, engine.timeline, slo_ttft_s, slo_tbt_s,
                             extra, config)
        if self.device == "cuda" and sampler.samples:
            add_sm_clock(result.timeline, sampler, engine.clock.host_origin)
        return result


def add_sm_clock(timeline: pd.DataFrame, sampler: ClockPowerSampler, host_origin: float) -> None:
    """Give each step of an engine timeline the SM clock sampled nearest its middle
    (`sm_clock_mhz`). Back to back at the 700 W limit an H200's compute-bound steps run 9-13%
    slower than after a pause; a step's clock tells that apart from a shape the model
    misprices. Step times are seconds from the run's origin, CUDA events on a GPU, whose
    origin event was synchronised at `host_origin` (real.clock)."""
    middle = host_origin + (timeline["start_s"].to_numpy() + timeline["end_s"].to_numpy()) / 2
    timeline["sm_clock_mhz"] = sampler.clock_at(middle)


def check_policy(policy: Policy, gpu: GPUSpec) -> None:
    if not isinstance(policy.topology(BlockPool(1)), OneGPU):
        raise UserError(f"{policy.name} needs two GPUs; nexus-real runs on one")
    check_policy_splits(policy, gpu)


def build_partitions(policies: list[Policy], gpu: GPUSpec, device: str) -> Partitions:
    sizes = sorted({p for pol in policies for p in pol.splits(gpu)})
    parts = Partitions(sizes, device=device, cpu_gpu=gpu)
    if parts.num_sms != gpu.num_sms:
        raise UserError(f"this GPU has {parts.num_sms} SMs but the GPU spec {gpu.name!r} says "
                        f"{gpu.num_sms}; pass the right --gpu")
    return parts


def capture_all_graphs(runner: ModelRunner, parts: Partitions,
                       prefill_buckets: Sequence[int] = PREFILL_GRAPH_BUCKETS) -> None:
    """Decode graphs where decode steps run; prefill graphs where prefill-only steps run
    (the prefill sides, and the single stream of one-stream policies)."""
    runner.capture_graphs([parts.decode(0), *(parts.decode(p) for p in parts.made())])
    runner.capture_prefill_graphs([parts.decode(0), parts.prefill(0), *(parts.prefill(p) for p in parts.made())],
                                  prefill_buckets)


def warm_up(runner: ModelRunner, parts: Partitions) -> None:
    """Compile every kernel variant a run can meet, on every partition, before the clock starts.

    Triton specialises kernels on integer arguments and pointer alignment; a first use inside
    a timed run would cost seconds and land on whichever policy happens to run first.
    """
    if not runner.is_cuda:
        return   # the CPU path compiles nothing
    table = _warm_up_table(runner, 64)
    for part in parts.all():
        for batch in warm_up_batches(runner):
            runner.step(batch, part, graphs=False)
        for n in (1, 7, runner.max_decode_batch):
            decodes = [Chunk([1], 16 + i % 32, table) for i in range(n)]
            runner.step(decodes, part, graphs=False)
            runner.step([Chunk(list(range(1, 18)), 0, table), *decodes], part)


def warm_up_batches(runner: ModelRunner) -> list[list[Chunk]]:
    """The eager prefill steps warm_up runs: short chunks with and without a prefix, and where the
    cache holds one, a prompt long enough for the dense path followed by a short one. That last
    step is the first of its kind in a process otherwise: its dense call's first run, and the
    Triton kernel on a slice of the step's chunks (off a 16-byte boundary: one more variant)
    took 1.3 s against 0.14 predicted in a prefill-first run on an H200 (GPU-3cf01c9d)."""
    def tokens(n: int) -> list[int]:
        return [1 + i % (runner.spec.vocab_size - 1) for i in range(n)]

    table = _warm_up_table(runner, 64)
    batches = [[Chunk(tokens(n), prior, table)] for n, prior in ((2, 0), (17, 0), (64, 16), (300, 33), (1024, 0))]
    dense = nexus.graph_buckets.DENSE_MIN_TOKENS
    if dense is not None and min(runner.num_blocks * runner.block_size, runner.max_model_len) >= dense:
        long_table = _warm_up_table(runner, -(-dense // runner.block_size))
        batches.append([Chunk(tokens(dense), 0, long_table), Chunk(tokens(17), 0, long_table)])
    return batches


def _warm_up_table(runner: ModelRunner, blocks: int) -> list[int]:
    # Warm-up steps write garbage KV into the first blocks, which no request holds yet.
    return list(range(min(runner.num_blocks, blocks)))


def write_outputs(out: Path, results: list[Result], extra: dict, num_sms: int) -> None:
    from nexus.report import RunOutput, write_results
    write_results(out, {r.policy: RunOutput(r.summary, r.requests, r.timeline, {**extra, "config": r.config})
                        for r in results}, num_sms)
