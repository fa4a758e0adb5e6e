import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.cost.analytical import AnalyticalCost, AnalyticalParams
from nexus.cost.base import FULL_GPU, BatchShape, CostModel
from nexus.errors import UserError
from nexus.specs import GPUS, MODELS

# Published models only: the toy CPU model is all overhead, which the hand checks ignore.
SERVED = {name: spec for name, spec in MODELS.items() if not name.startswith("tiny")}
PRESETS = [(m, g) for m in SERVED for g in GPUS]
H100 = GPUS["h100-sxm"]
LLAMA8 = MODELS["llama-3.1-8b"]
P = AnalyticalParams()


def cost(model=LLAMA8, gpu=H100, params=None) -> AnalyticalCost:
    return AnalyticalCost(model, gpu, params)


def decode(seqs: int, ctx: int) -> BatchShape:
    return BatchShape(decode_seqs=seqs, decode_kv_tokens=seqs * ctx)


def prefill(tokens: int, prior: int = 0) -> BatchShape:
    return BatchShape(prefill_chunks=((tokens, prior),))


def overhead(model) -> float:
    return P.iteration_overhead_s + model.num_layers * P.layer_overhead_s


shapes = st.builds(
    BatchShape,
    prefill_chunks=st.lists(st.tuples(st.integers(1, 8192), st.integers(0, 32768)),
                            max_size=3).map(tuple),
    decode_seqs=st.integers(0, 512),
    decode_kv_tokens=st.integers(0, 512 * 4096),
)
nonempty_shapes = shapes.filter(lambda s: not s.is_empty)


def test_satisfies_protocol_and_describes_itself():
    c = cost()
    assert isinstance(c, AnalyticalCost) and c.name == "analytical"
    _: CostModel = c
    d = c.describe()
    assert d["model"] == "llama-3.1-8b" and d["gpu"] == "h100-sxm"
    assert d["params"]["matmul_efficiency"] == P.matmul_efficiency
    json.dumps(d)


@pytest.mark.parametrize("model", SERVED.values(), ids=list(SERVED))
def test_batch1_decode_streams_the_weights(model):
    # One token, short context: every weight matrix is streamed once; the embedding table is
    # only gathered by row, so it does not count unless it doubles as the LM head.
    streamed = model.weight_bytes
    if not model.tie_word_embeddings:
        streamed -= model.vocab_size * model.hidden_size * model.dtype_bytes
    expected = streamed / (H100.hbm_bandwidth * P.bandwidth_efficiency) + overhead(model)
    got = cost(model).solo_time(decode(1, 128), FULL_GPU)
    assert got == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("model", SERVED.values(), ids=list(SERVED))
def test_long_prefill_is_matmul_and_attention_compute(model):
    m, t = model, 8192
    h, q, kv = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    matmul_params = m.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * m.intermediate_size)
    attn_flops = 4 * (t * (t + 1) // 2) * q * m.num_layers
    compute = (2 * matmul_params * t / (H100.peak_flops * P.matmul_efficiency)
               + attn_flops / (H100.peak_flops * P.attention_efficiency))
    # Memory-bound pieces, counted by hand: per token and layer two fused add+norms move 4h
    # each, RoPE reads and writes q and k, the KV write moves k and v twice, SiLU-and-mul
    # reads 2I and writes I; plus the embedding gather and final norm, and the LM head
    # weights streamed for the one logit row.
    per_token = m.num_layers * (8 * h + 2 * (q + kv) + 4 * kv + 3 * m.intermediate_size) + 4 * h
    memory = (per_token * t + h * m.vocab_size) * m.dtype_bytes
    expected = compute + memory / (H100.hbm_bandwidth * P.bandwidth_efficiency) + overhead(m)
    got = cost(model).solo_time(prefill(t), FULL_GPU)
    assert got == pytest.approx(expected, rel=0.02)
    # and the dense matmuls dominate, as for any long prefill
    assert 2 * matmul_params * t / (H100.peak_flops * P.matmul_efficiency) > 0.6 * got


@pytest.mark.parametrize("model,gpu", PRESETS)
def test_more_sms_never_slower(model, gpu):
    c = AnalyticalCost(MODELS[model], GPUS[gpu])
    sms = np.arange(1, c.gpu.num_sms + 1)

    @settings(max_examples=25, deadline=None)
    @given(nonempty_shapes)
    def check(shape):
        t = c.solo_time(shape, sms)
        assert np.all(np.diff(t) <= 0.0)
        assert c.solo_time(shape, FULL_GPU) <= t[-1]

    check()


@pytest.mark.parametrize("model,gpu", PRESETS)
def test_decode_saturates_while_prefill_keeps_gaining(model, gpu):
    c = AnalyticalCost(MODELS[model], GPUS[gpu])
    half = c.gpu.num_sms // 2
    # Batch 32 keeps the decode matmuls memory-bound on half of every preset; on half an
    # L20 (low FLOP/s per byte) a batch of 64 already turns compute-bound and keeps gaining.
    d, p = decode(32, 2048), prefill(2048)
    assert c.solo_time(d, half) <= 1.10 * c.solo_time(d, FULL_GPU)
    assert c.solo_time(p, half) >= 1.6 * c.solo_time(p, FULL_GPU)
    # decode does slow down once well below the knee
    assert c.solo_time(d, c.gpu.num_sms // 8) > 2.0 * c.solo_time(d, FULL_GPU)


def test_plain_stream_beats_a_green_context_on_all_sms():
    c = cost()
    p = prefill(4096)
    ratio = c.solo_time(p, H100.num_sms) / c.solo_time(p, FULL_GPU)
    assert 1.0 < ratio <= 1.0 + P.green_context_penalty + 1e-9


def test_empty_shape_costs_nothing():
    c = cost()
    assert c.solo_time(BatchShape(), 64) == 0.0
    assert np.all(c.solo_time(BatchShape(), np.array([8, 64])) == 0.0)
    assert c.memory_demand(BatchShape(), 64) == 0.0


@settings(max_examples=100, deadline=None)
@given(nonempty_shapes, st.integers(1, 132))
def test_demand_within_what_the_partition_can_draw(shape, sms):
    c = cost()
    limit = H100.hbm_bandwidth * P.bandwidth_efficiency
    assert 0.0 < c.memory_demand(shape, sms) <= limit


@settings(max_examples=100, deadline=None)
@given(shapes, shapes, st.integers(8, 124))
def test_slowdown_at_least_one(a, b, sms):
    s = cost().slowdown(a, sms, b, H100.num_sms - sms)
    assert s >= 1.0


def test_slowdown_is_one_beside_nothing():
    c = cost()
    assert c.slowdown(decode(64, 1024), 68, BatchShape(), 64) == 1.0
    assert c.slowdown(BatchShape(), 68, prefill(2048), 64) == 1.0
    assert np.all(c.slowdown(decode(64, 1024), np.array([8, 68]), BatchShape(), 64) == 1.0)


def test_contention_slows_both_phases():
    c = cost()
    d, p = decode(128, 2048), prefill(2048, prior=16384)
    assert c.slowdown(d, 68, p, 64) > 1.02
    assert c.slowdown(p, 64, d, 68) > 1.05


def test_slowdown_grows_with_a_memory_bound_corunners_batch():
    c = cost()
    p = prefill(2048)
    # Up to batch 64 at this context the decode step stays memory-bound on 68 SMs, so a
    # larger batch means more bandwidth taken from the prefill.
    s = [c.slowdown(p, 64, decode(n, 1024), 68) for n in range(1, 65)]
    assert np.all(np.diff(s) >= 0.0)
    assert s[-1] > s[0]


@settings(max_examples=100, deadline=None)
@given(nonempty_shapes, nonempty_shapes, nonempty_shapes, st.integers(8, 124))
def test_slowdown_monotone_in_corunner_demand(a, b1, b2, sms):
    c = cost()
    other = H100.num_sms - sms
    if c.memory_demand(b1, other) > c.memory_demand(b2, other):
        b1, b2 = b2, b1
    assert c.slowdown(a, sms, b1, other) <= c.slowdown(a, sms, b2, other)


@pytest.mark.parametrize("model,gpu", [("llama-3.1-8b", "h100-sxm"), ("qwen2.5-3b", "l20")])
def test_vectorized_equals_scalar(model, gpu):
    c = AnalyticalCost(MODELS[model], GPUS[gpu])
    n = c.gpu.num_sms
    sms = np.array([FULL_GPU, *c.gpu.partition_sizes(), n])
    shapes_ = [decode(64, 1024), prefill(2048), prefill(512, 4096),
               BatchShape(prefill_chunks=((256, 0), (128, 900)), decode_seqs=40,
                          decode_kv_tokens=40 * 700)]
    for a in shapes_:
        vec = c.solo_time(a, sms)
        assert vec.shape == sms.shape
        np.testing.assert_allclose(vec, [c.solo_time(a, int(s)) for s in sms], rtol=1e-12)
        np.testing.assert_allclose(c.memory_demand(a, sms),
                                   [c.memory_demand(a, int(s)) for s in sms], rtol=1e-12)
        for b in shapes_:
            split = sms[(sms > 0) & (sms < n)]
            vec = c.slowdown(a, split, b, n - split)
            np.testing.assert_allclose(
                vec, [c.slowdown(a, int(s), b, int(n - s)) for s in split], rtol=1e-12)
            # broadcasting: a column of SM counts against a row of co-runner SM counts
            grid = c.slowdown(a, split[:, None], b, split[None, :])
            assert grid.shape == (len(split), len(split))
            assert grid[2, 3] == pytest.approx(c.slowdown(a, int(split[2]), b, int(split[3])),
                                               rel=1e-12)


def test_numpy_integer_scalars_are_scalars():
    c = cost()
    t = c.solo_time(decode(8, 512), np.int64(64))
    assert isinstance(t, float) and t == c.solo_time(decode(8, 512), 64)


def test_bad_sm_counts_are_rejected():
    c = cost()
    with pytest.raises(ValueError):
        c.solo_time(decode(1, 10), H100.num_sms + 1)
    with pytest.raises(ValueError):
        c.solo_time(decode(1, 10), np.array([8, -8]))
    with pytest.raises(TypeError):
        c.solo_time(decode(1, 10), np.array([8.0, 16.0]))


@pytest.mark.parametrize("field,value", [("matmul_efficiency", 0.0), ("bandwidth_efficiency", 1.5),
                                         ("bw_knee_sharpness", 0.0), ("iteration_overhead_s", -1e-3)])
def test_bad_params_are_user_errors(field, value):
    with pytest.raises(UserError, match=field):
        AnalyticalParams(**{field: value})
    with pytest.raises(UserError, match="unknown"):
        AnalyticalParams.from_dict({"matmul_efficency": 0.7})


def test_operator_times_add_up_to_solo_time():
    c = cost()
    shape = BatchShape(prefill_chunks=((1024, 2048),), decode_seqs=32, decode_kv_tokens=32 * 900)
    ops = c.operator_times(shape, 64)
    assert {"qkv_proj", "prefill_attention", "decode_attention", "lm_head"} <= set(ops)
    assert sum(ops.values()) == pytest.approx(c.solo_time(shape, 64), rel=1e-12)
