"""The simulator's shortcuts give the answers of the paths they shortcut, to the bit: the
array solo times memoised per SM array, nexus-slo's remembered mixed-step budget, a
one-stream GPU that syncs a job only when it may cut it, the pool's and the running set's
counts kept as attributes, and the loop's garbage collector switched off and back."""
import gc
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from nexus.cost import load_cost_model
from nexus.cost.base import BatchShape
from nexus.kv import BlockPool
from nexus.policy import make_policy
from nexus.policy.step_error import StepError
from nexus.specs import GPUS, MODELS
from sim.engine import SimEngine
from synthetic import make_trace

MODEL, H100 = MODELS["llama-3.1-8b"], GPUS["h100-sxm"]
chunks = st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 16384)), max_size=4).map(tuple)
shapes = st.builds(BatchShape, chunks, st.integers(0, 300), st.integers(0, 300 * 8192))


@settings(max_examples=100, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=8), st.lists(st.integers(0, 7), min_size=1, max_size=40))
def test_memoised_array_solo_times_are_a_fresh_models(pool, picks):
    """Asked again and again (the memo fills, clears and is read), each answer is what a model
    that never answered anything gives, and nobody can change a memoised array."""
    cost = load_cost_model(MODEL, H100)
    splits = np.array(H100.partition_sizes())
    for i in picks:
        shape = pool[i % len(pool)]
        t = cost.solo_time(shape, splits)
        fresh = load_cost_model(MODEL, H100).solo_time(shape, splits)
        assert np.array_equal(t, fresh)
        assert np.array_equal(cost.solo_time(BatchShape(*shape), splits.copy()), fresh)   # equal, not same
        if not t.flags.writeable:
            with pytest.raises(ValueError):
                t[0] = 1.0


def test_remembered_mixed_budget_is_the_searched_one():
    """Repeated and changed questions (decode, prior, the learnt error's bound) get the search's answer."""
    policy = make_policy("nexus-slo")
    cost = load_cost_model(MODEL, H100)
    questions = [(BatchShape((), 64, 64 * 900), 0), (BatchShape((), 64, 64 * 900), 0),
                 (BatchShape((), 64, 64 * 901), 0), (BatchShape((), 64, 64 * 901), 300),
                 (BatchShape((), 200, 200 * 3000), 0), (BatchShape((), 64, 64 * 900), 0)]
    for step, (decode, prior) in enumerate(questions * 2):
        if step == len(questions):   # the learnt error moves the bound
            policy._error["mixed"] = StepError()
            policy._error["mixed"].observe(1.3, 1.0)
        want = policy._mixed_tokens(cost, decode, prior, policy._bound("mixed"))
        assert policy.mixed_tokens(cost, decode, prior) == want
    assert policy._bound("mixed") < 0.95 * policy.tbt_slo_s   # the bound did move


@pytest.mark.parametrize("policy", ["chunked", "disagg", "prefill-first"])
def test_one_stream_gpus_time_every_step_as_syncing_gpus_do(policy, monkeypatch):
    """A GPU that one stream uses skips syncing jobs it will not cut; timelines are unchanged."""
    trace = make_trace(300, 40.0, (20, 3000), (1, 400), seed=5)
    run_module = importlib.import_module("sim.run")

    def timeline(one_stream: bool):
        class Engine(SimEngine):
            def run(self):
                assert any(gpu.one_stream for gpu in self.gpus)
                for gpu in self.gpus:
                    gpu.one_stream = gpu.one_stream and one_stream
                super().run()

        monkeypatch.setattr(run_module, "SimEngine", Engine)
        return sim.run(trace, policy=policy).timeline

    fast, synced = timeline(True), timeline(False)
    assert fast.equals(synced)
    assert (fast["decode_steps"] > 1).any()   # repeatable runs were cut on the way


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=60))
def test_pool_free_count_follows_take_and_give(ops):
    pool = BlockPool(200)
    for take, n in ops:
        if take:
            ok = pool.take(n)
            assert ok == (n <= 200 - (pool.used - (n if ok else 0)))
        elif n <= pool.used:
            pool.give(n)
        assert pool.free == pool.num_blocks - pool.used


@pytest.mark.parametrize("enabled", [True, False])
def test_loop_leaves_the_garbage_collector_as_it_found_it(enabled):
    trace = make_trace(20, 10.0, (20, 200), (1, 20), seed=1)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        sim.run(trace, policy="static")
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 256), st.integers(0, 256 * 4096), st.integers(0, 8192), st.sampled_from([0.02, 0.035, 0.05]))
def test_mixed_budget_search_prices_candidates_as_mixed_step_time_does(seqs, kv_tokens, prior, tbt):
    """The chunk search's own pricing of a candidate is mixed_step_time's: the budget it finds
    meets the bound by that price, and a block more does not (or it is the most allowed)."""
    policy = make_policy("nexus-slo", tbt_slo_s=tbt)
    cost = load_cost_model(MODELS["llama-3.1-8b"], H100)
    decode = BatchShape((), seqs, kv_tokens)
    bound = policy._bound("mixed")
    tokens = policy._mixed_tokens(cost, decode, prior, bound)
    if tokens:
        assert policy.mixed_step_time(cost, decode, tokens, prior) <= bound
    else:
        assert policy.mixed_step_time(cost, decode, 16, prior) > bound
    if tokens < policy.chunk_tokens:
        assert policy.mixed_step_time(cost, decode, tokens + 16, prior) > bound

