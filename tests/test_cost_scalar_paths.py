"""The measured model's scalar fast paths (what the simulator calls: a decode step's line in
its KV tokens, its bytes, the co-run slowdown from memoised per-shape terms, answers
memoised by shape object) give the general array path's numbers to the last bit."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.cost import load_cost_model
from nexus.cost.base import FULL_GPU, BatchShape
from nexus.specs import GPUS, MODELS

COSTS = {gpu: load_cost_model(MODELS["llama-3.1-8b"], GPUS[gpu], None) for gpu in ("h100-sxm", "h200")}
SIZES = [FULL_GPU] + GPUS["h100-sxm"].partition_sizes() + [GPUS["h100-sxm"].num_sms]

chunks = st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 16384)), max_size=4).map(tuple)
shapes = st.builds(BatchShape, chunks, st.integers(0, 300), st.integers(0, 300 * 8192))


def general(shape, sms, cost):
    """The array path at one SM count (nothing memoised, numpy arithmetic)."""
    return float(cost.solo_time(shape, np.array([sms]))[0])


@settings(max_examples=300, deadline=None)
@given(shapes, st.sampled_from(SIZES), st.sampled_from(sorted(COSTS)))
def test_scalar_solo_time_is_the_array_paths_to_the_bit(shape, sms, gpu):
    cost = COSTS[gpu]
    want = general(shape, sms, cost)
    assert cost.solo_time(shape, sms) == want
    assert cost.solo_time(shape, sms) == want                       # memoised, same object
    assert cost.solo_time(BatchShape(*shape), sms) == want   # an equal one


@settings(max_examples=300, deadline=None)
@given(shapes)
def test_decode_bytes_are_the_roofline_works_to_the_bit(shape):
    cost = COSTS["h100-sxm"]
    assert cost._total_bytes(shape) == cost._bytes_of(shape).total_bytes


@settings(max_examples=300, deadline=None)
@given(shapes, st.sampled_from(SIZES), shapes, st.sampled_from(SIZES), st.sampled_from(sorted(COSTS)))
def test_scalar_slowdown_is_the_array_paths_to_the_bit(shape, sms, other, other_sms, gpu):
    cost = COSTS[gpu]
    want = float(cost.slowdown(shape, np.array([sms]), other, np.array([other_sms]))[0])
    assert cost.slowdown(shape, sms, other, other_sms) == want
    assert cost.slowdown(shape, sms, other, other_sms) == want      # from the memoised terms
