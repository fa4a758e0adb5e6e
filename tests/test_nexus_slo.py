"""nexus-slo plans its split against the SLO: tighter TBT, bigger decode side; set on the batch."""
import numpy as np
import pytest

import sim
from nexus.cost import BatchShape, load_cost_model
from nexus.policy import make_policy
from nexus.specs import GPUS, MODELS
from synthetic import make_trace

H100 = GPUS["h100-sxm"]


@pytest.fixture(scope="module")
def long_prompts():
    return make_trace(150, 6.0, (800, 6000), (20, 200))


def _prefill_sms(result) -> float:
    tl = result.timeline
    split = tl[(tl["stream"] == "prefill") & (tl["sms"] > 0)]
    return float(np.average(split["sms"], weights=split["end_s"] - split["start_s"]))


def test_tighter_tbt_target_gives_decode_more_sms_and_lower_tbt(long_prompts):
    loose = sim.run(long_prompts, policy=make_policy("nexus-slo", tbt_slo_s=0.06))
    tight = sim.run(long_prompts, policy=make_policy("nexus-slo", tbt_slo_s=0.02))
    assert _prefill_sms(tight) < _prefill_sms(loose)
    assert tight.summary["tbt_s"]["p95"] < loose.summary["tbt_s"]["p95"]
    for r in (loose, tight):
        tl = r.timeline
        split = tl[tl["sms"] > 0]
        assert split[split["stream"] == "prefill"]["sms"].isin(H100.partition_sizes()).all()
        assert split[split["stream"] == "decode"]["sms"].isin([132 - s for s in H100.partition_sizes()]).all()


def test_chosen_decode_side_is_the_smallest_that_meets_the_target():
    cost = load_cost_model(MODELS["llama-3.1-8b"], H100)
    policy = make_policy("nexus-slo", tbt_slo_s=0.03, headroom=1.0)
    prefill = BatchShape(((2048, 0),))
    decode = BatchShape((), 64, 64 * 1500)
    p = np.array(H100.partition_sizes())
    d = H100.num_sms - p
    t = cost.solo_time(decode, d) * cost.slowdown(decode, d, prefill, p) + cost.step_overhead(decode)

    class State:
        gpu = H100

    State.cost = cost
    index, by_shape = policy._search(State, prefill, decode, p)
    assert by_shape and t[index] <= 0.03
    assert index == len(p) - 1 or t[index + 1] > 0.03     # one more prefill SM step would miss it


def test_plan_sets_the_streams_sms():
    """The batch carries its SMs, so an engine need not ask split() (it gives the same answer)."""
    from nexus.kv import BlockPool
    from nexus.request import Request
    from nexus.state import ServingState

    model = MODELS["llama-3.1-8b"]
    policy = make_policy("nexus-slo")
    policy.check(H100)
    state = ServingState(model, H100, load_cost_model(model, H100), BlockPool(10000), policy.priority)
    state.arrive(Request("a", 0.0, 1000, 50))
    first = policy.plan(state, "prefill")
    assert first.sms == 0                                # nothing decodes: prefill on the whole GPU
    state.begin(first)
    _, prefilled = state.end(first, 1, 0.0, 0.2)
    for req in prefilled:                                # what the one-GPU topology does with them
        state.running.add(req)
    state.arrive(Request("b", 0.1, 3000, 50))
    state.now = 0.2
    second = policy.plan(state, "prefill")
    state.begin(second)
    decode = policy.plan(state, "decode")
    assert second.sms in H100.partition_sizes() and decode.sms == H100.num_sms - second.sms
    assert (second.sms, decode.sms) == (policy.split(state).prefill_sms, policy.split(state).decode_sms)
