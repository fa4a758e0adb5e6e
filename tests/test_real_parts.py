"""KV cache sizing, partitions on CPU (same API, null streams), and GPU facts without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nexus.cost.base import FULL_GPU
from nexus.errors import UserError
from nexus.specs import GPUS, MODELS
from real.gpu_info import ClockPowerSampler, gpu_facts
from real.kv_cache import KVCache, activation_reserve_bytes, block_bytes, blocks_for_memory
from real.partitions import Partitions


def test_block_bytes_llama8b() -> None:
    # 32 layers x (K + V) x 8 KV heads x 128 dims x 2 bytes = 128 KiB a token, 16 tokens a block.
    assert block_bytes(MODELS["llama-3.1-8b"]) == 16 * 131072


def test_blocks_for_memory_budget() -> None:
    spec = MODELS["llama-3.1-8b"]
    free = 80 * 2**30
    n = blocks_for_memory(spec, free, 0.9, max_batch_tokens=4096)
    budget = int(free * 0.9) - spec.weight_bytes - activation_reserve_bytes(spec, 4096)
    assert n == budget // block_bytes(spec)
    assert 20_000 < n < 30_000
    assert blocks_for_memory(spec, free, 0.5) < n
    assert blocks_for_memory(spec, 10 * 2**30) == 0  # the weights alone do not fit
    with pytest.raises(ValueError):
        blocks_for_memory(spec, free, 1.5)


def test_kv_cache_layout_and_sink_block() -> None:
    spec = MODELS["qwen2.5-3b"]
    kv = KVCache(spec, 3, "cpu", torch.bfloat16)
    assert kv.k.shape == (spec.num_layers, 4, 16, spec.num_kv_heads, spec.head_dim)
    assert kv.pad_block == 3 and kv.k[0].is_contiguous()
    assert kv.bytes == 4 * block_bytes(spec)


def test_cpu_partitions_follow_the_gpu_spec() -> None:
    parts = Partitions([64, 8, FULL_GPU], device="cpu", cpu_gpu=GPUS["h100-sxm"])
    assert parts.made() == [8, 64]
    assert (parts.prefill(64).sm_count, parts.decode(64).sm_count) == (64, 68)
    assert parts.prefill(64).stream is None
    assert parts.prefill(FULL_GPU).sm_count == 132 and parts.prefill(FULL_GPU) != parts.decode(FULL_GPU)
    assert len({p.name for p in parts.all()}) == len(parts.all()) == 6
    # The driver's sizes; the spec's usable ones (both sides >= 16 SMs) are a subset of them.
    assert parts.sizes()[0] == 8 and parts.sizes()[-1] == 120
    assert set(GPUS["h100-sxm"].partition_sizes()) < set(parts.sizes())
    with pytest.raises(UserError, match="made: \\[8, 64\\]"):
        parts.prefill(16)
    with pytest.raises(UserError, match="cannot split off 60 SMs"):
        Partitions([60], device="cpu")
    with pytest.raises(UserError, match="cannot split off 128 SMs"):
        Partitions([128], device="cpu")  # would leave 4, under the minimum
    with parts.decode(8).use():
        pass


def test_gpu_facts_and_sampler_degrade_without_a_gpu() -> None:
    facts = gpu_facts()
    assert "torch" in facts and "available" in facts
    if not torch.cuda.is_available():
        assert "num_sms" not in facts
    with ClockPowerSampler(interval_s=0.01) as s:
        pass
    summary = s.summary()
    assert summary["samples"] == len(s.samples)


def sampler_with(samples: list[tuple[float, int]], interval_s: float = 0.05) -> ClockPowerSampler:
    return ClockPowerSampler(interval_s=interval_s, samples=[(t, mhz, 500.0) for t, mhz in samples])


def test_clock_at_reads_the_nearest_sample_and_nothing_far_from_one() -> None:
    s = sampler_with([(10.00, 1980), (10.05, 1710), (10.10, 1500)])
    got = s.clock_at(np.array([9.95, 10.02, 10.03, 10.074, 10.076, 10.19, 10.21, 9.89]))
    assert got[:6].tolist() == [1980, 1980, 1710, 1710, 1500, 1500]
    assert np.isnan(got[6:]).all()            # more than two intervals from any sample
    assert np.isnan(ClockPowerSampler().clock_at(np.array([1.0]))).all()
    one = sampler_with([(5.0, 1845)]).clock_at(np.array([4.95, 5.2]))
    assert one[0] == 1845 and np.isnan(one[1])


def test_engine_steps_take_the_clock_sampled_at_their_middle() -> None:
    import pandas as pd
    from real.bench import add_sm_clock
    timeline = pd.DataFrame({"start_s": [0.00, 0.20, 0.50], "end_s": [0.02, 0.30, 0.51]})
    add_sm_clock(timeline, sampler_with([(100.0, 1980), (100.25, 1600), (100.5, 1410)], 0.1), 100.0)
    assert timeline["sm_clock_mhz"].tolist() == [1980, 1600, 1410]
