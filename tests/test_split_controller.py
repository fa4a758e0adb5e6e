"""The Nexus split controller: bounds respected, monotone in its bounds, hysteresis."""
import pytest

from nexus.cost import load_cost_model
from nexus.cost.base import FULL_GPU, BatchShape
from nexus.policy.split_controller import SplitController
from nexus.specs import GPUS, MODELS

COST = load_cost_model(MODELS["llama-3.1-8b"], GPUS["h100-sxm"])
PREFILL = BatchShape(((2048, 0),))
DECODE = BatchShape((), 100, 100 * 1500)


def decode_time(split) -> float:
    return float(COST.solo_time(DECODE, split.decode_sms) *
                 COST.slowdown(DECODE, split.decode_sms, PREFILL, split.prefill_sms))


@pytest.mark.parametrize("beta", [1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0])
def test_prefill_first_keeps_decode_within_beta_when_it_can(beta):
    split = SplitController(COST, beta=beta).choose(PREFILL, DECODE, kv_usage=0.1)
    bound = beta * COST.solo_time(DECODE, FULL_GPU)
    feasible_exists = any(
        decode_time(type(split)(int(p), COST.gpu.num_sms - int(p))) <= bound
        for p in COST.gpu.partition_sizes())
    if feasible_exists:
        assert decode_time(split) <= bound * (1 + 1e-9)


def test_decode_sms_never_grow_as_beta_loosens():
    decode_sms = [SplitController(COST, beta=b).choose(PREFILL, DECODE, 0.1).decode_sms
                  for b in (1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0)]
    assert all(a >= b for a, b in zip(decode_sms, decode_sms[1:])), decode_sms
    assert decode_sms[0] > decode_sms[-1]


def test_prefill_sms_never_grow_as_alpha_loosens_in_decode_first_mode():
    prefill_sms = [SplitController(COST, alpha=a).choose(PREFILL, DECODE, 0.9).prefill_sms
                   for a in (1.02, 1.1, 1.3, 1.6, 2.0, 4.0)]
    assert all(a >= b for a, b in zip(prefill_sms, prefill_sms[1:])), prefill_sms


def test_hysteresis_keeps_a_near_optimal_current_split():
    from nexus.state import Split
    best = SplitController(COST, beta=2.0, hysteresis=0.0).choose(PREFILL, DECODE, 0.1)
    neighbour = Split(best.prefill_sms - 8, COST.gpu.num_sms - best.prefill_sms + 8)
    assert decode_time(neighbour) <= 2.0 * COST.solo_time(DECODE, FULL_GPU)   # still feasible
    sticky = SplitController(COST, beta=2.0, hysteresis=0.5)
    sticky.current = neighbour
    assert sticky.choose(PREFILL, DECODE, 0.1) == neighbour
    eager = SplitController(COST, beta=2.0, hysteresis=0.0)
    eager.current = neighbour
    assert eager.choose(PREFILL, DECODE, 0.1) == best != neighbour
