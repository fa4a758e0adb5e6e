"""Invariants every simulated run must keep, for every policy."""
import json

import numpy as np
import pytest

import sim
from nexus.config import EngineConfig
from nexus.cost import load_cost_model
from nexus.cost.base import FULL_GPU, BatchShape
from nexus.specs import GPUS, MODELS
from synthetic import make_trace
from traces import TraceEntry

POLICIES = ["chunked", "prefill-first", "static", "nexus", "nexus-slo", "disagg"]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_finishes_once_with_all_its_tokens(policy, small_trace):
    result = sim.run(small_trace, policy=policy)
    df = result.requests
    assert len(df) == len(small_trace)
    assert df["request_id"].is_unique
    assert (df["generated_tokens"] == df["output_tokens"]).all()
    assert df["finish_s"].notna().all()


@pytest.mark.parametrize("policy", POLICIES)
def test_timestamps_are_ordered(policy, small_trace):
    df = sim.run(small_trace, policy=policy).requests
    assert (df["first_token_s"] > df["arrival_s"]).all()
    assert (df["finish_s"] >= df["first_token_s"]).all()
    assert (df["ttft_s"] <= df["e2e_s"]).all()
    single = df["output_tokens"] == 1
    assert (df.loc[single, "finish_s"] == df.loc[single, "first_token_s"]).all()


@pytest.mark.parametrize("policy", POLICIES)
def test_timeline_is_monotone_and_streams_never_overlap_themselves(policy, small_trace):
    tl = sim.run(small_trace, policy=policy).timeline
    assert (tl["end_s"] >= tl["start_s"]).all()
    for _, stream in tl.groupby("stream"):
        starts, ends = stream["start_s"].to_numpy(), stream["end_s"].to_numpy()
        assert np.all(np.diff(starts) >= 0)
        assert np.all(starts[1:] >= ends[:-1] - 1e-12)


@pytest.mark.parametrize("policy", POLICIES)
def test_kv_never_exceeds_capacity_under_pressure(policy, tmp_path):
    # A GPU with little memory left after the weights forces preemptions.
    gpu = GPUS["h100-sxm"].to_dict() | {"name": "tiny-h100", "memory_bytes": int(24.3 * 2**30)}
    spec = tmp_path / "gpu.json"
    spec.write_text(json.dumps(gpu))
    trace = make_trace(200, 200.0, (200, 900), (200, 600), seed=3)
    result = sim.run(trace, policy=policy, gpu=str(spec))
    assert result.summary["kv_blocks"] < 3000
    assert result.timeline["kv_usage"].max() <= 1.0
    assert result.requests["preemptions"].sum() > 0
    assert (result.requests["generated_tokens"] == result.requests["output_tokens"]).all()


def test_one_request_alone_takes_exactly_the_cost_model_sum():
    prompt, output = 3000, 50
    result = sim.run([TraceEntry("solo", 0.0, prompt, output)], policy="chunked")
    cost = load_cost_model(MODELS["llama-3.1-8b"], GPUS["h100-sxm"])
    expected_ttft = 0.0
    done = 0
    while done < prompt:       # chunked prefill with vLLM's 2048-token budget
        n = min(2048, prompt - done)
        shape = BatchShape(((n, done),))
        expected_ttft += cost.solo_time(shape, FULL_GPU) + cost.step_overhead(shape)
        done += n
    decode = sum(cost.solo_time(BatchShape((), 1, prompt + k), FULL_GPU)
                 + cost.step_overhead(BatchShape((), 1, prompt + k)) for k in range(1, output))
    row = result.requests.iloc[0]
    assert row["ttft_s"] == pytest.approx(expected_ttft, rel=1e-9)
    assert row["e2e_s"] == pytest.approx(expected_ttft + decode, rel=1e-9)
    assert result.summary["tbt_s"]["mean"] == pytest.approx(decode / (output - 1), rel=1e-9)
    tl = result.timeline
    prefill = tl[tl["prefill_tokens"] > 0]
    assert prefill["prefill_prior_tokens"].tolist() == [0, 2048]      # the second chunk continues the first
    decode = tl[tl["decode_seqs"] > 0]
    # a run of decode steps is recorded at its middle step's shape
    first_context = prompt + 1
    assert decode["decode_kv_tokens"].min() >= first_context
    assert decode["decode_kv_tokens"].max() <= prompt + output


def test_same_seed_gives_identical_summary(small_trace):
    a = sim.run(small_trace, policy="nexus", rate=30.0, config=EngineConfig(seed=7)).summary
    b = sim.run(small_trace, policy="nexus", rate=30.0, config=EngineConfig(seed=7)).summary
    c = sim.run(small_trace, policy="nexus", rate=30.0, config=EngineConfig(seed=8)).summary
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)


def test_rate_scale_compresses_arrivals(small_trace):
    base = sim.run(small_trace, policy="chunked").requests
    fast = sim.run(small_trace, policy="chunked", rate_scale=2.0).requests
    assert fast["arrival_s"].max() == pytest.approx(base["arrival_s"].max() / 2)


def test_prefill_heavy_trace_orders_tbt_tails():
    # Long prompts arriving while many requests decode: prefill interferes with decode.
    trace = make_trace(250, 4.0, (3000, 8000), (100, 300), seed=1)
    p99 = {p: sim.run(trace, policy=p).summary["tbt_s"]["p99"]
           for p in ("prefill-first", "chunked", "nexus")}
    assert p99["chunked"] > p99["nexus"]
    assert p99["prefill-first"] > p99["chunked"]


def test_disagg_pays_exactly_the_kv_transfer():
    from nexus.policy.disagg import LINKS
    prompt, output = 1500, 20
    trace = [TraceEntry("solo", 0.0, prompt, output)]
    fast = sim.run(trace, policy="disagg", policy_params={"link": "nvlink"}).requests.iloc[0]
    slow = sim.run(trace, policy="disagg", policy_params={"link": "pcie4"}).requests.iloc[0]
    kv_bytes = prompt * MODELS["llama-3.1-8b"].kv_bytes_per_token
    assert fast["ttft_s"] == pytest.approx(slow["ttft_s"], rel=1e-12)
    assert slow["e2e_s"] - fast["e2e_s"] == pytest.approx(kv_bytes / LINKS["pcie4"] - kv_bytes / LINKS["nvlink"], rel=1e-6)


@pytest.mark.parametrize("policy", POLICIES)
def test_no_step_takes_more_prompt_tokens_than_the_policy_declares(policy):
    # A real engine builds its long-prompt path only up to chunk_limit (real.engine), so a
    # policy that broke its own limit would meet an unbuilt shape mid-run.
    from nexus.policy import make_policy

    trace = make_trace(40, 20.0, (1500, 9000), (2, 8), seed=3)
    limit = make_policy(policy).chunk_limit()
    steps = sim.run(trace, policy=policy).timeline
    most = steps["prefill_tokens"].max()
    if limit is None:
        assert policy == "prefill-first" and most > 2048     # whole prompts in one chunk
    else:
        assert 0 < most <= limit
