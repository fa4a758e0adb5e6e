"""The measured model's scalar fast paths (what the simulator calls: a decode step's line in
its KV tokens, its bytes, the co-run slowdown from memoised per-shape terms, answers
memoised by shape object or by chunks, and the array path's memos at an SM array) give the general
array path's numbers to the last bit."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.cost import load_cost_model
from nexus.cost.base import FULL_GPU, BatchShape, corun_times, corun_times_each, make_shape, slowdowns
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
    assert cost.slowdown(BatchShape(*shape), sms, BatchShape(*other), other_sms) == want   # equal ones


def fresh(gpu):
    """A model that has memoised nothing yet."""
    return load_cost_model(MODELS["llama-3.1-8b"], GPUS[gpu], None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(chunks, st.integers(0, 300)), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300 * 8192), st.sampled_from(SIZES)),
                min_size=1, max_size=30),
       st.sampled_from(sorted(COSTS)))
def test_memoised_chunk_parts_give_a_fresh_models_times(batches, asks, gpu):
    """A step's chunk part is memoised by (chunks, decode rows, SMs) and its decode batch's KV
    tokens added afresh: asked in any order with any KV tokens, each time is what a model
    that never answered anything gives, and what the array path gives."""
    cost = fresh(gpu)
    for i, kv_tokens, sms in asks:
        prefill_chunks, seqs = batches[i % len(batches)]
        shape = BatchShape(prefill_chunks, seqs, kv_tokens)
        want = fresh(gpu).solo_time(shape, sms)
        assert cost.solo_time(shape, sms) == want
        assert cost.solo_time(shape, sms) == general(shape, sms, cost)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 16384), st.integers(0, 300)), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4096), st.integers(0, 300 * 8192),
                          st.sampled_from(SIZES)), min_size=1, max_size=30),
       st.sampled_from(sorted(COSTS)))
def test_mixed_step_times_are_solo_time_and_overhead_to_the_bit(batches, asks, gpu):
    """nexus-slo's budget search prices a chunk of n tokens beside a decode step through
    mixed_step_times: asked in any order (its chunk parts memoised by prior tokens, decode rows
    and SMs), each is solo_time plus the host gap, of a model that never answered anything."""
    cost = fresh(gpu)
    for i, n, kv_tokens, sms in asks:
        prior, seqs = batches[i % len(batches)]
        shape = BatchShape(((n, prior),) if n else (), seqs, kv_tokens)
        want = fresh(gpu)
        assert cost.mixed_step_times(prior, seqs, kv_tokens, sms)(n) == \
            float(want.solo_time(shape, sms)) + want.step_overhead(shape)


def test_new_engine_graphs_reprice_steps_priced_before():
    """use_engine changes how steps are padded, so nothing priced before it may be reused."""
    cost = fresh("h200")
    coarse = {**cost.engine, "prefill_graphs": {**cost.engine["prefill_graphs"], "buckets": [16, 2048]}}
    shape, splits = BatchShape(((1030, 0),)), np.array([FULL_GPU, 64])
    fine = cost.solo_time(shape, FULL_GPU)   # the 1152-token graph
    cost.solo_time(shape, splits)
    cost.use_engine(coarse)
    want = fresh("h200")
    want.use_engine(coarse)
    assert cost.solo_time(shape, FULL_GPU) == want.solo_time(shape, FULL_GPU) > fine   # the 2048-token one
    assert np.array_equal(cost.solo_time(shape, splits), want.solo_time(shape, splits))


@settings(max_examples=100, deadline=None)
@given(st.lists(shapes, min_size=2, max_size=6), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)),
                                                          min_size=1, max_size=20),
       st.sampled_from(sorted(COSTS)))
def test_slowdowns_over_candidate_splits_are_the_scalar_paths_to_the_bit(pool, pairs, gpu):
    """A controller's slowdowns over every split read bandwidth uses and SM shares memoised at
    each SM array: element by element they are the scalar path's, asked again and again, and
    an answer's array is the caller's own (changing it changes no later answer)."""
    cost = COSTS[gpu]
    p = np.array(GPUS[gpu].partition_sizes())
    d = GPUS[gpu].num_sms - p
    for i, j in pairs:
        shape, other = pool[i % len(pool)], pool[j % len(pool)]
        for mine, theirs in ((p, d), (d, p)):
            got = cost.slowdown(shape, mine, other, theirs)
            want = [cost.slowdown(shape, int(a), other, int(b)) for a, b in zip(mine, theirs)]
            assert got.tolist() == want
            got[:] = -1.0
            assert cost.slowdown(shape, mine.copy(), other, theirs.copy()).tolist() == want


def both_ways(cost, shape, sms, other, other_sms):
    """What corun_times and slowdowns stand for: the two one-sided questions, asked apart."""
    return (cost.solo_time(shape, sms) * cost.slowdown(shape, sms, other, other_sms),
            cost.solo_time(other, other_sms) * cost.slowdown(other, other_sms, shape, sms),
            cost.slowdown(shape, sms, other, other_sms), cost.slowdown(other, other_sms, shape, sms))


# A split search's shapes: mostly one phase each (a prefill batch beside a decode batch).
one_sided = st.one_of(st.builds(lambda c: BatchShape(c), chunks.filter(lambda c: any(n > 0 for n, _ in c))),
                      st.builds(lambda seqs, kv: BatchShape((), seqs, kv), st.integers(1, 300),
                                st.integers(0, 300 * 8192)),
                      shapes)


@settings(max_examples=100, deadline=None)
@given(one_sided, one_sided, st.booleans(), st.sampled_from(sorted(COSTS)), st.booleans())
def test_both_sides_of_a_corun_in_one_pass_are_each_sides_own_to_the_bit(shape, other, swap, gpu, scaled):
    """corun_times over candidate splits (one pass over stacked rows where both shapes are one
    phase each, two slowdowns otherwise) gives each side's solo time times its slowdown, and
    slowdowns at one SM count each gives both scalar slowdowns, with and without a co-run scale."""
    cost = fresh(gpu)
    if scaled:
        cost.use_engine({**cost.engine, "corun_scale": {"prefill": 1.07, "decode": 0.93}})
    p = np.array(GPUS[gpu].partition_sizes())
    d = GPUS[gpu].num_sms - p
    mine, theirs = (d, p) if swap else (p, d)
    twin = fresh_like(cost)   # memoises nothing that `cost` is asked
    t_shape, t_other, _, _ = both_ways(twin, shape, mine, other, theirs)
    got = corun_times(cost, shape, mine, other, theirs)
    assert got[0].tolist() == t_shape.tolist() and got[1].tolist() == t_other.tolist()
    one_phase = all((s.prefill_tokens > 0) != (s.decode_seqs > 0) for s in (shape, other))
    assert (cost.corun_times_fast(shape, mine, other, theirs) is not None) == one_phase
    for a, b in zip(mine.tolist(), theirs.tolist()):
        _, _, s_shape, s_other = both_ways(twin, shape, a, other, b)
        assert slowdowns(cost, shape, a, other, b) == (s_shape, s_other)


def fresh_like(cost):
    """A model that has memoised nothing, with `cost`'s engine terms."""
    twin = fresh(cost.gpu.name)
    twin.use_engine(cost.engine)
    return twin


def test_pricing_both_sides_at_once_is_left_to_a_model_that_can():
    """A cost model without the one-pass answers (the analytical one) is asked each side apart."""
    cost = load_cost_model(MODELS["llama-3.1-8b"], GPUS["h100-sxm"], "analytical")
    assert not hasattr(cost, "corun_times_fast") and not hasattr(cost, "slowdowns_fast")
    shape, other = BatchShape(((700, 300),)), BatchShape((), 40, 40 * 900)
    p = np.array(GPUS["h100-sxm"].partition_sizes())
    t_shape, t_other, s_shape, s_other = both_ways(cost, shape, p, other, 132 - p)
    got = corun_times(cost, shape, p, other, 132 - p)
    assert np.array_equal(got[0], t_shape) and np.array_equal(got[1], t_other)
    assert slowdowns(cost, shape, 64, other, 68) == (cost.slowdown(shape, 64, other, 68),
                                                     cost.slowdown(other, 68, shape, 64))


@given(chunks, st.integers(0, 300), st.integers(0, 300 * 8192))
def test_make_shape_is_the_named_tuples_constructor(prefill_chunks, seqs, kv_tokens):
    made = make_shape((prefill_chunks, seqs, kv_tokens))
    want = BatchShape(prefill_chunks, seqs, kv_tokens)
    assert type(made) is BatchShape and made == want and made.prefill_tokens == want.prefill_tokens


class Slower:
    """A wrapper that passes everything on to a model but doubles its solo times."""

    def __init__(self, model):
        self.model_ = model

    def __getattr__(self, name):
        return getattr(self.model_, name)

    def solo_time(self, shape, sms):
        return 2.0 * self.model_.solo_time(shape, sms)


def test_a_wrapped_model_is_priced_through_its_own_solo_time():
    """The one-pass answers belong to the model's class: a wrapper that passes attributes on
    gets its own (doubled) solo times, not the wrapped model's shortcut."""
    cost = fresh("h100-sxm")
    wrapped = Slower(cost)
    shape, other = BatchShape(((700, 0),)), BatchShape((), 40, 40 * 900)
    p = np.array(GPUS["h100-sxm"].partition_sizes())
    got = corun_times(wrapped, shape, p, other, 132 - p)
    want = corun_times(cost, shape, p, other, 132 - p)
    assert np.array_equal(got[0], 2.0 * want[0]) and np.array_equal(got[1], 2.0 * want[1])


def test_a_shape_that_computes_nothing_slows_nothing_in_one_pass():
    """A prompt chunk beside a negative decode count adds up to no tokens: `slowdown` treats it
    as empty (a factor of 1 both ways), and so does the one-pass answer."""
    cost = fresh("h100-sxm")
    shape, nothing = BatchShape((), 1, 0), BatchShape(((1, 0),), -1, 0)
    p = np.array(GPUS["h100-sxm"].partition_sizes())
    assert nothing.is_empty and cost.corun_times_fast(shape, 132 - p, nothing, p) is None
    got = corun_times(cost, shape, 132 - p, nothing, p)
    assert got[0].tolist() == cost.solo_time(shape, 132 - p).tolist()


sm_lists = st.lists(st.sampled_from(SIZES), min_size=1, max_size=14).map(tuple)


@settings(max_examples=100, deadline=None)
@given(one_sided, one_sided, sm_lists, st.data(), st.sampled_from(sorted(COSTS)), st.booleans())
def test_candidate_splits_priced_in_plain_floats_are_the_array_paths_to_the_bit(shape, other, mine, data,
                                                                                 gpu, scaled):
    """corun_times_each (a split search's question, answered without numpy where each shape is
    one phase) gives corun_times's numbers at each pair of SM counts, asked of a model that has
    memoised nothing, with and without a co-run scale; asked again, the same."""
    theirs = tuple(data.draw(st.lists(st.sampled_from(SIZES), min_size=len(mine), max_size=len(mine))))
    cost = fresh(gpu)
    if scaled:
        cost.use_engine({**cost.engine, "corun_scale": {"prefill": 1.07, "decode": 0.93}})
    want = corun_times(fresh_like(cost), shape, np.array(mine), other, np.array(theirs))
    for _ in range(2):
        got = corun_times_each(cost, shape, mine, other, theirs)
        assert got == (want[0].tolist(), want[1].tolist())
        assert all(type(t) is float for side in got for t in side)


def test_candidate_pricing_follows_new_engine_terms():
    """The per-shape terms a split search memoises are dropped when the engine's terms change
    (graphs pad the steps, a served scale moves the decode curve)."""
    cost = fresh("h100-sxm")
    prefill, decode = BatchShape(((700, 300),)), BatchShape((), 40, 40 * 900)
    p = tuple(GPUS["h100-sxm"].partition_sizes())
    d = tuple(132 - s for s in p)
    before = corun_times_each(cost, prefill, p, decode, d)
    engine = {**cost.engine, "decode_scale": {"plain": 1.0, "partitions": 1.2},
              "prefill_graphs": {"buckets": [512, 1024], "max_seqs": 4}}
    cost.use_engine(engine)
    twin = fresh("h100-sxm")
    twin.use_engine(engine)
    after = corun_times_each(cost, prefill, p, decode, d)
    assert after == corun_times_each(twin, prefill, p, decode, d) and after != before
    assert after[0] == corun_times(fresh_like(cost), prefill, np.array(p), decode, np.array(d))[0].tolist()


def test_candidate_pricing_without_a_shortcut_asks_corun_times():
    """A model without the plain-float pass (the analytical one), and a mixed batch on the
    measured one, are priced through corun_times, as lists of floats."""
    p = tuple(GPUS["h100-sxm"].partition_sizes())
    d = tuple(132 - s for s in p)
    analytical = load_cost_model(MODELS["llama-3.1-8b"], GPUS["h100-sxm"], "analytical")
    mixed, decode = BatchShape(((700, 300),), 8, 8 * 500), BatchShape((), 40, 40 * 900)
    for cost, shape in ((analytical, BatchShape(((700, 300),))), (fresh("h100-sxm"), mixed)):
        got = corun_times_each(cost, shape, p, decode, d)
        want = corun_times(cost, shape, np.array(p), decode, np.array(d))
        assert got == (want[0].tolist(), want[1].tolist())
    assert fresh("h100-sxm").corun_times_each_fast(mixed, p, decode, d) is None
