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


def test_infeasible_bound_takes_the_least_stretched_split():
    ctl = SplitController(COST, beta=1.0001)        # decode can never be this close to alone
    split = ctl.choose(PREFILL, DECODE, 0.1)
    t_p_full, t_d_full = COST.solo_time(PREFILL, FULL_GPU), COST.solo_time(DECODE, FULL_GPU)

    def worse_stretch(p: int) -> float:
        d = COST.gpu.num_sms - p
        tp = COST.solo_time(PREFILL, p) * COST.slowdown(PREFILL, p, DECODE, d) / t_p_full
        td = COST.solo_time(DECODE, d) * COST.slowdown(DECODE, d, PREFILL, p) / (1.0001 * t_d_full)
        return max(tp, td)

    best = min(COST.gpu.partition_sizes(), key=worse_stretch)
    assert split.prefill_sms == best
    assert all(decode_time(type(split)(p, COST.gpu.num_sms - p)) > 1.0001 * t_d_full
               for p in COST.gpu.partition_sizes())


def test_decode_first_mode_keeps_prefill_within_alpha_when_it_can():
    alpha = 3.0
    split = SplitController(COST, alpha=alpha).choose(PREFILL, DECODE, kv_usage=0.9)
    p, d = split.prefill_sms, split.decode_sms
    t_prefill = COST.solo_time(PREFILL, p) * COST.slowdown(PREFILL, p, DECODE, d)
    assert t_prefill <= alpha * COST.solo_time(PREFILL, FULL_GPU)
    # ... and no other split within that bound decodes faster.
    for q in COST.gpu.partition_sizes():
        dq = COST.gpu.num_sms - q
        if COST.solo_time(PREFILL, q) * COST.slowdown(PREFILL, q, DECODE, dq) <= alpha * COST.solo_time(PREFILL, FULL_GPU):
            assert decode_time(type(split)(q, dq)) >= decode_time(split) * (1 - 1e-12)


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
