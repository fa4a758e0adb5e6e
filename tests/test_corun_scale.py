"""The served scales: measured from an engine timeline (nexus.step_view.corun_scale and
decode_scale), carried by a calibration and applied by the measured model on all its paths."""
import copy

import numpy as np
import pandas as pd
import pytest

from nexus.cost import default_calibration
from nexus.cost.base import BatchShape
from nexus.cost.calibration import read_calibration
from nexus.cost.measured import MeasuredCost
from nexus.errors import UserError
from nexus.specs import GPUS, MODELS
from nexus.step import chunks_from_text, chunks_text
from nexus.step_view import MIN_CORUN_STEPS, corun_scale, decode_scale, step_table

MODEL, GPU = MODELS["llama-3.1-8b"], GPUS["h200"]
DATA = read_calibration(default_calibration(MODEL, GPU))
PREFILL = BatchShape(prefill_chunks=((2048, 0),))
DECODE = BatchShape(decode_seqs=16, decode_kv_tokens=16 * 1024)
MIXED = BatchShape(prefill_chunks=((512, 0),), decode_seqs=32, decode_kv_tokens=32 * 700)


def cost_with(scale: dict | None, decode: dict | None = None) -> MeasuredCost:
    engine = {k: v for k, v in copy.deepcopy(DATA["engine"]).items() if k not in ("corun_scale", "decode_scale")}
    if scale is not None:
        engine["corun_scale"] = scale
    if decode is not None:
        engine["decode_scale"] = decode
    cost = MeasuredCost(MODEL, GPU, DATA["fit"])
    cost.use_engine(engine, "test")
    return cost


def test_the_scale_multiplies_each_phases_corun_factor_and_never_an_idle_one():
    plain, scaled = cost_with(None), cost_with({"prefill": 1.04, "decode": 1.1})
    assert scaled.slowdown(DECODE, 100, PREFILL, 32) == pytest.approx(1.1 * plain.slowdown(DECODE, 100, PREFILL, 32))
    assert scaled.slowdown(PREFILL, 32, DECODE, 100) == pytest.approx(1.04 * plain.slowdown(PREFILL, 32, DECODE, 100))
    mixed = scaled.slowdown(MIXED, 100, PREFILL, 32) / plain.slowdown(MIXED, 100, PREFILL, 32)
    assert 1.04 < mixed < 1.1   # a mixed batch takes both phases' scales, weighted
    assert scaled.slowdown(DECODE, 100, BatchShape(), 32) == 1.0
    assert scaled.solo_time(DECODE, 100) == plain.solo_time(DECODE, 100)


def test_a_scale_under_one_never_makes_a_corun_faster_than_alone():
    low = cost_with({"prefill": 0.5, "decode": 0.5})
    assert low.slowdown(DECODE, 100, PREFILL, 32) == 1.0
    assert low.slowdown(PREFILL, 32, DECODE, 100) == 1.0


@pytest.mark.parametrize("shape, other", [(DECODE, PREFILL), (PREFILL, DECODE), (MIXED, PREFILL), (MIXED, DECODE)])
def test_scaled_scalar_path_is_the_array_paths_to_the_bit(shape, other):
    cost = cost_with({"prefill": 1.03, "decode": 1.12})
    for sms, other_sms in ((100, 32), (68, 64), (36, 96)):
        want = float(cost.slowdown(shape, np.array([sms]), other, np.array([other_sms]))[0])
        assert cost.slowdown(shape, sms, other, other_sms) == want


@pytest.mark.parametrize("scale", [None, {"prefill": 1.0, "decode": 1.0}, {"prefill": 1.03, "decode": 1.12}])
def test_a_mixed_batch_over_several_candidate_splits_is_priced_split_by_split(scale):
    # A controller scores all its candidate splits at once; a mixed batch's weighted scale is
    # then an array, and each split must get the factor it gets alone.
    cost = cost_with(scale)
    sms, other_sms = np.array([100, 68, 36]), np.array([32, 64, 96])
    factors = cost.slowdown(MIXED, sms, PREFILL, other_sms)
    assert factors.shape == (3,)
    for i in range(3):
        assert factors[i] == cost.slowdown(MIXED, int(sms[i]), PREFILL, int(other_sms[i]))


@pytest.mark.parametrize("bad", [{"prefill": 1.0}, {"prefill": 3.0, "decode": 1.0}, {"prefill": "x", "decode": 1},
                                 [1.0, 1.0]])
def test_a_malformed_scale_is_a_user_error_naming_it(bad):
    with pytest.raises(UserError, match="corun_scale"):
        cost_with(bad)


def corun_timeline(cost: MeasuredCost, ratio: float, decode_steps: int) -> pd.DataFrame:
    """One long prefill step on 32 SMs, beside which `decode_steps` decode steps run back to
    back on 100, each `ratio` times what the model predicts for it there."""
    step = ratio * cost.solo_time(DECODE, 100) * cost.slowdown(DECODE, 100, PREFILL, 32)
    base = dict(prefill_prior_tokens=0, prefill_chunks=0)
    rows = [dict(base, stream="prefill", sms=32, start_s=0.0, end_s=step * (decode_steps + 2),
                 prefill_tokens=2048, prefill_chunks=1, decode_seqs=0, decode_kv_tokens=0)]
    rows += [dict(base, stream="decode", sms=100, start_s=step * (k + 1), end_s=step * (k + 2), prefill_tokens=0,
                  decode_seqs=DECODE.decode_seqs, decode_kv_tokens=DECODE.decode_kv_tokens)
             for k in range(decode_steps)]
    return pd.DataFrame(rows)


def test_corun_scale_recovers_how_much_slower_the_served_corun_steps_ran():
    cost = cost_with(None)
    scale = corun_scale(step_table(corun_timeline(cost, 1.15, 40), cost))
    assert scale["decode"] == pytest.approx(1.15, abs=1e-3)
    assert scale["steps"] == {"prefill": 1, "decode": 40}
    assert scale["prefill"] == 1.0            # one co-run prefill step is too few to set a scale


def test_prefill_steps_of_several_prompts_set_no_scale():
    """Their sums price them short (unequal prompts attend over more pairs than equal shares)."""
    cost = cost_with(None)
    decode_step = cost.solo_time(DECODE, 100)
    rows = []
    for k in range(2 * MIN_CORUN_STEPS):   # prefill steps of two prompts, each beside a decode step
        start = k * 0.2
        rows.append(dict(stream="prefill", sms=32, start_s=start, end_s=start + 0.15, prefill_tokens=2048,
                         prefill_prior_tokens=0, prefill_chunks=2, decode_seqs=0, decode_kv_tokens=0))
        rows.append(dict(stream="decode", sms=100, start_s=start, end_s=start + 0.15 + decode_step, prefill_tokens=0,
                         prefill_prior_tokens=0, prefill_chunks=0, decode_seqs=DECODE.decode_seqs,
                         decode_kv_tokens=DECODE.decode_kv_tokens))
    scale = corun_scale(step_table(pd.DataFrame(rows), cost))
    assert scale["steps"]["prefill"] == 0 and scale["prefill"] == 1.0
    assert scale["steps"]["decode"] == 2 * MIN_CORUN_STEPS


def test_too_few_corun_steps_give_no_scale():
    cost = cost_with(None)
    scale = corun_scale(step_table(corun_timeline(cost, 1.15, MIN_CORUN_STEPS - 1), cost))
    assert scale["decode"] == 1.0 and scale["steps"]["decode"] == MIN_CORUN_STEPS - 1


def test_a_step_of_several_prompts_is_priced_as_several():
    cost = cost_with(None)
    row = dict(stream="prefill", sms=0, start_s=0.0, end_s=0.05, prefill_tokens=2048, prefill_prior_tokens=0,
               decode_seqs=0, decode_kv_tokens=0)
    one, eight = (step_table(pd.DataFrame([dict(row, prefill_chunks=n)]), cost)["predicted_s"].iloc[0]
                  for n in (1, 8))
    assert eight == pytest.approx(float(cost.solo_time(BatchShape(prefill_chunks=((256, 0),) * 8), 0)))
    assert one == pytest.approx(float(cost.solo_time(BatchShape(prefill_chunks=((2048, 0),)), 0)))


# ---- the decode scale ---------------------------------------------------------------------

def test_the_decode_scale_multiplies_decode_steps_on_the_plain_stream_and_partitions_apart():
    plain, scaled = cost_with(None), cost_with(None, {"plain": 0.95, "partitions": 0.98})
    assert scaled.solo_time(DECODE, 0) == pytest.approx(0.95 * plain.solo_time(DECODE, 0))
    for sms in (36, 68, 132):
        assert scaled.solo_time(DECODE, sms) == pytest.approx(0.98 * plain.solo_time(DECODE, sms))
    assert scaled.solo_time(PREFILL, 0) == plain.solo_time(PREFILL, 0)
    assert scaled.solo_time(PREFILL, 68) == plain.solo_time(PREFILL, 68)
    # A chunked-prefill step's decode rows read the decode curve's attention: a little faster.
    assert scaled.solo_time(MIXED, 0) <= plain.solo_time(MIXED, 0)


def test_a_plain_stream_scaled_up_is_still_no_slower_than_a_partition_of_every_sm():
    cost = cost_with(None, {"plain": 1.5, "partitions": 1.0})
    for batch, context in ((1, 512), (64, 1024), (256, 4096)):
        shape = BatchShape(decode_seqs=batch, decode_kv_tokens=batch * context)
        assert cost.solo_time(shape, 0) <= cost.solo_time(shape, GPU.num_sms)


def test_partitions_scaled_below_the_plain_stream_leave_the_plain_streams_own_scale():
    # An H200 replay read plain x0.993, partitions x0.938; capping the plain stream at the
    # scaled partitions once priced it at x0.938, and its own replay read 1.059 against that.
    plain, scaled = cost_with(None), cost_with(None, {"plain": 0.993, "partitions": 0.938})
    for batch, context in ((1, 512), (64, 1024), (256, 4096)):
        shape = BatchShape(decode_seqs=batch, decode_kv_tokens=batch * context)
        assert scaled.solo_time(shape, 0) == pytest.approx(0.993 * plain.solo_time(shape, 0), rel=1e-12)
        t = scaled.solo_time(shape, np.arange(1, GPU.num_sms + 1))
        assert np.all(np.diff(t) <= 0.0) and scaled.solo_time(shape, 0) <= t[-1]
        # Clamped term by term (which keeps every term monotone in SMs): at least the scaled
        # partition and the plain stream, at most the unscaled partition. Where the scaled
        # partition binds, its terms' sum and the whole's product differ in the last bit.
        t68 = scaled.solo_time(shape, 68)
        low = max(0.938 * plain.solo_time(shape, 68), scaled.solo_time(shape, 0))
        assert low * (1 - 1e-12) <= t68 <= plain.solo_time(shape, 68)


@pytest.mark.parametrize("shape, other", [(DECODE, PREFILL), (MIXED, DECODE), (PREFILL, DECODE)])
def test_decode_scaled_scalar_path_is_the_array_paths_to_the_bit(shape, other):
    cost = cost_with({"prefill": 1.03, "decode": 1.12}, {"plain": 0.96, "partitions": 0.99})
    for sms, other_sms in ((100, 32), (68, 64), (0, 0)):
        assert cost.solo_time(shape, sms) == float(cost.solo_time(shape, np.array([sms]))[0])
        want = float(cost.slowdown(shape, np.array([sms]), other, np.array([other_sms]))[0])
        assert cost.slowdown(shape, sms, other, other_sms) == want


def test_an_engine_without_a_decode_scale_takes_the_grids_times_again():
    cost = cost_with(None, {"plain": 0.9, "partitions": 0.9})
    scaled = cost.solo_time(DECODE, 68)
    cost.use_engine({k: v for k, v in DATA["engine"].items() if k not in ("corun_scale", "decode_scale")}, "test")
    assert cost.solo_time(DECODE, 68) == pytest.approx(scaled / 0.9)


@pytest.mark.parametrize("bad", [{"plain": 1.0}, {"plain": 0.2, "partitions": 1.0}, [0.9, 0.9]])
def test_a_malformed_decode_scale_is_a_user_error_naming_it(bad):
    with pytest.raises(UserError, match="decode_scale"):
        cost_with(None, bad)


def decode_timeline(cost: MeasuredCost, ratios: dict[int, float], steps: int) -> pd.DataFrame:
    """`steps` decode steps alone on each SM count, each `ratios[sms]` times the model's time."""
    rows, t = [], 0.0
    for sms, ratio in ratios.items():
        for _ in range(steps):
            length = ratio * cost.solo_time(DECODE, sms)
            rows.append(dict(stream="decode", sms=sms, start_s=t, end_s=t + length, prefill_tokens=0,
                             prefill_prior_tokens=0, prefill_chunks=0, decode_seqs=DECODE.decode_seqs,
                             decode_kv_tokens=DECODE.decode_kv_tokens))
            t += length + 1e-4
    return pd.DataFrame(rows)


def test_decode_scale_recovers_how_much_faster_the_served_decode_steps_ran():
    cost = cost_with(None)
    scale = decode_scale(step_table(decode_timeline(cost, {0: 0.95, 68: 0.98}, MIN_CORUN_STEPS), cost))
    assert scale["plain"] == pytest.approx(0.95, abs=1e-3)
    assert scale["partitions"] == pytest.approx(0.98, abs=1e-3)
    assert scale["steps"] == {"plain": MIN_CORUN_STEPS, "partitions": MIN_CORUN_STEPS}
    few = decode_scale(step_table(decode_timeline(cost, {0: 0.95}, MIN_CORUN_STEPS - 1), cost))
    assert few["plain"] == 1.0 and few["partitions"] == 1.0


# ---- recorded prompt chunks ---------------------------------------------------------------

def test_a_timeline_records_each_steps_chunks_consistent_with_its_sums():
    import sim
    from synthetic import make_trace
    timeline = sim.run(make_trace(200, 40.0, (20, 3000), (1, 200), seed=3), policy="chunked").timeline
    several = 0
    for row in timeline.itertuples():
        chunks = chunks_from_text(row.prefill_shape)
        if row.prefill_tokens == 0:
            assert chunks is None
            continue
        assert len(chunks) == row.prefill_chunks
        assert sum(n for n, _ in chunks) == row.prefill_tokens
        assert sum(p for _, p in chunks) == row.prefill_prior_tokens
        several += len(chunks) > 1
    assert several > 0   # the case that sums alone price wrongly occurs


def test_a_step_with_recorded_chunks_is_priced_as_recorded_and_counts_for_the_prefill_scale(tmp_path):
    cost = cost_with(None)
    chunks = ((1900, 0), (148, 300))
    row = dict(stream="prefill", sms=0, start_s=0.0, end_s=0.05, prefill_tokens=2048, prefill_prior_tokens=300,
               prefill_chunks=2, decode_seqs=0, decode_kv_tokens=0, prefill_shape=chunks_text(chunks))
    path = tmp_path / "steps.csv"
    pd.DataFrame([row, dict(row, start_s=0.1, end_s=0.15)]).to_csv(path, index=False)   # through a CSV
    priced = step_table(pd.read_csv(path), cost)["predicted_s"]
    assert priced.iloc[0] == pytest.approx(float(cost.solo_time(BatchShape(prefill_chunks=chunks), 0)))
    assert priced.iloc[0] != pytest.approx(float(cost.solo_time(BatchShape(prefill_chunks=((1024, 150),) * 2), 0)))

    decode_step = cost.solo_time(DECODE, 100)
    rows = []
    for k in range(MIN_CORUN_STEPS):   # the two-prompt steps above, each beside a decode step
        start = k * 0.2
        rows.append(dict(row, sms=32, start_s=start, end_s=start + 0.15))
        rows.append(dict(row, stream="decode", sms=100, start_s=start, end_s=start + 0.15 + decode_step,
                         prefill_tokens=0, prefill_prior_tokens=0, prefill_chunks=0, prefill_shape="",
                         decode_seqs=DECODE.decode_seqs, decode_kv_tokens=DECODE.decode_kv_tokens))
    assert corun_scale(step_table(pd.DataFrame(rows), cost))["steps"]["prefill"] == MIN_CORUN_STEPS
