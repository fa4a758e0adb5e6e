"""Every request finishes with all its tokens, for every policy, however tight the KV cache.

Requests that arrive together used to each take a chunk of KV until none could finish its
prompt (issue: scheduler deadlock under KV pressure). These tests run the repros and
property-test long-prompt traces on a KV cache a few prompts deep.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim
from nexus.config import EngineConfig
from nexus.errors import UserError
from nexus.kv import kv_capacity_blocks
from nexus.policy import POLICIES
from nexus.specs import GPUS, MODELS
from traces import TraceEntry

# 28% of an H100's memory leaves about 1.8k KV blocks (28k tokens) beside Llama-3.1-8B's
# weights: a handful of long prompts fill it.
TIGHT = EngineConfig(gpu_memory_utilization=0.28)
CAPACITY_TOKENS = 16 * kv_capacity_blocks(MODELS["llama-3.1-8b"], GPUS["h100-sxm"], 0.28)
VARIANTS = [(name, {}) for name in POLICIES] + [("nexus", {"spf": False})]


def assert_all_served(result: sim.Result, trace: list[TraceEntry]) -> None:
    frame = result.requests
    assert len(frame) == len(trace)
    assert frame["finish_s"].notna().all()
    assert (frame["generated_tokens"] == frame["output_tokens"]).all()


@pytest.mark.parametrize("name,params", VARIANTS, ids=lambda v: str(v))
def test_simultaneous_long_prompts_finish(name, params):
    # Thirty prompts that together need several times the cache, all at t = 0.
    trace = [TraceEntry(f"r{i}", 0.0, 5000, 400) for i in range(30)]
    assert 30 * 5400 > 4 * CAPACITY_TOKENS
    result = sim.run(trace, policy=name, policy_params=params, config=TIGHT)
    assert_all_served(result, trace)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chunked", "static"])
def test_issue_repro_36_prompts_of_12k(name):
    trace = [TraceEntry(f"r{i}", 0.0, 12289, 1000) for i in range(36)]
    assert_all_served(sim.run(trace, policy=name), trace)


requests = st.lists(
    st.tuples(st.floats(0, 2.0), st.integers(1, 9000), st.integers(1, 1500)),
    min_size=1, max_size=10)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=requests, variant=st.sampled_from(VARIANTS))
def test_every_request_finishes(rows, variant):
    name, params = variant
    gaps = sorted(t for t, _, _ in rows)
    trace = [TraceEntry(f"r{i}", t, p, o) for i, (t, (_, p, o)) in enumerate(zip(gaps, rows))]
    result = sim.run(trace, policy=name, policy_params=params, config=TIGHT)
    assert_all_served(result, trace)


def test_a_request_that_cannot_fit_alone_is_named():
    trace = [TraceEntry("small", 0.0, 100, 10), TraceEntry("huge", 0.0, CAPACITY_TOKENS, 50)]
    with pytest.raises(UserError, match=r"request huge needs \d+ KV blocks"):
        sim.run(trace, policy="chunked", config=TIGHT)


def test_a_prompt_longer_than_the_model_context_is_refused():
    trace = [TraceEntry("long", 0.0, 200_000, 10)]
    with pytest.raises(UserError, match=r"request long needs 200010 positions .* allows 131072"):
        sim.run(trace, policy="chunked")


@pytest.mark.parametrize("name", ["nexus", "static"])
def test_a_new_prompt_at_the_head_does_not_block_a_started_one(name):
    # Shortest-prompt-first puts the 13k prompt ahead of the 16k one it arrived behind, once
    # the 16k prompt is partly prefilled; both together need more blocks than the cache has.
    assert 16000 < CAPACITY_TOKENS < 29000
    trace = [TraceEntry("long", 0.0, 16000, 10), TraceEntry("shorter", 0.001, 13000, 10)]
    params = {"chunk_tokens": 2048} if name == "nexus" else {}
    assert_all_served(sim.run(trace, policy=name, policy_params=params, config=TIGHT), trace)
