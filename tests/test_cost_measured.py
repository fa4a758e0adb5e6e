"""The measured cost model, fitted to synthetic calibrations drawn from the analytical model.

The analytical model plays the GPU: its times, times a few % of log-normal noise, are the
"measurements", so the fit can be checked against the noise-free truth.
"""
import copy
import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.cost import load_cost_model
from nexus.cost.analytical import AnalyticalCost
from nexus.cost.base import FULL_GPU, BatchShape, CostModel
from nexus.cost.calibration import (merge_calibrations, new_calibration, read_calibration,
                                    write_calibration)
from nexus.cost.fit import (BIAS_WARN_PCT, bias_warnings, decode_shape, fit_calibration, fit_params, main, nnls,
                            prefill_shape, split_holdout)
from nexus.cost.measured import MeasuredCost, densify
from nexus.errors import UserError
from nexus.specs import GPUS, MODELS

H100 = GPUS["h100-sxm"]
LLAMA8 = MODELS["llama-3.1-8b"]
SMS = [FULL_GPU] + list(range(8, 129, 8))
CHUNKS = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
PRIORS = [0, 1024, 4096, 8192]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
CONTEXTS = [128, 512, 2048, 8192]
NOISE = 0.02


def synthetic(model=LLAMA8, gpu=H100, noise=NOISE, seed=1, sms=SMS, corun=True) -> dict:
    """A calibration measured on the analytical model, with multiplicative noise."""
    truth = AnalyticalCost(model, gpu)
    rng = np.random.default_rng(seed)
    data = new_calibration(model, gpu, command="synthetic", machine={"gpu_name": "analytical"},
                           grid={"sms": list(sms)})
    meas = data["measurements"]

    def noisy(t: float) -> float:
        return float(t * np.exp(rng.normal(0.0, noise)))

    for s in sms:
        for n, p in itertools.product(CHUNKS, PRIORS):
            rec = {"sms": s, "chunk_tokens": n, "prior_tokens": p}
            meas["prefill"].append({**rec, "time_s": noisy(truth.solo_time(prefill_shape(rec), s))})
        for b, c in itertools.product(BATCHES, CONTEXTS):
            rec = {"sms": s, "batch": b, "context": c}
            meas["decode"].append({**rec, "time_s": noisy(truth.solo_time(decode_shape(rec), s))})
    if corun:
        for sp, n, p, b, c in itertools.product((32, 64, 96), (256, 1024, 4096), (0, 4096),
                                                (16, 64, 256), (512, 4096)):
            pre = {"sms": sp, "chunk_tokens": n, "prior_tokens": p}
            dec = {"sms": gpu.num_sms - sp, "batch": b, "context": c}
            ps, ds = prefill_shape(pre), decode_shape(dec)
            tp, td = truth.solo_time(ps, sp), truth.solo_time(ds, dec["sms"])
            meas["corun"].append({
                "prefill": pre, "decode": dec,
                "prefill_time_s": noisy(tp * truth.slowdown(ps, sp, ds, dec["sms"])),
                "decode_time_s": noisy(td * truth.slowdown(ds, dec["sms"], ps, sp)),
                "prefill_solo_s": noisy(tp), "decode_solo_s": noisy(td)})
    return data


@pytest.fixture(scope="module")
def data() -> dict:
    return synthetic()


@pytest.fixture(scope="module")
def fitted(data) -> dict:
    return fit_calibration(data)


@pytest.fixture(scope="module")
def cost(fitted) -> MeasuredCost:
    return MeasuredCost(LLAMA8, H100, fitted["fit"])


@pytest.fixture(scope="module")
def truth() -> AnalyticalCost:
    return AnalyticalCost(LLAMA8, H100)


def abs_pct(pred, true) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(true) - 1.0) * 100.0


# ---- NNLS --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_nnls_matches_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(12, 5))
    b = rng.normal(size=12)
    x = nnls(a, b)
    assert np.all(x >= 0)
    best = np.inf
    for mask in itertools.product([False, True], repeat=5):
        mask = np.array(mask)
        z = np.zeros(5)
        if mask.any():
            z[mask] = np.linalg.lstsq(a[:, mask], b, rcond=None)[0]
        if np.all(z >= 0):
            best = min(best, float(np.sum((a @ z - b) ** 2)))
    assert np.sum((a @ x - b) ** 2) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_nnls_handles_collinear_and_empty_columns():
    a = np.ones((6, 3))
    a[:, 2] = 0.0
    x = nnls(a, np.full(6, 2.0))
    assert np.all(x >= 0) and x[2] == 0.0 and x.sum() == pytest.approx(2.0)


def test_nnls_recovers_a_nonnegative_solution_exactly():
    rng = np.random.default_rng(3)
    a = rng.uniform(size=(40, 6))
    x_true = np.array([0.0, 2.0, 0.5, 0.0, 1.0, 3.0])
    assert np.allclose(nnls(a, a @ x_true), x_true, atol=1e-9)


# ---- the fit against the generating model ------------------------------------------------

def test_fit_recovers_the_generating_times_on_the_grid(data, cost, truth):
    for kind, shape_of in (("prefill", prefill_shape), ("decode", decode_shape)):
        recs = data["measurements"][kind]
        pred = [cost.solo_time(shape_of(r), r["sms"]) for r in recs]
        true = [truth.solo_time(shape_of(r), r["sms"]) for r in recs]
        err = abs_pct(pred, true)
        assert np.median(err) < 1.5 and np.percentile(err, 90) < 3.0 and err.max() < 6.0, kind


def test_fit_generalises_off_the_grid(cost, truth):
    # Shapes and SM counts (including partition remainders such as 68 and 132) never measured.
    rng = np.random.default_rng(7)
    errs = {"prefill": [], "decode": [], "mixed": []}
    for _ in range(600):
        s = int(rng.choice([0, 12, 36, 68, 100, 124, 132] + list(range(8, 129, 8))))
        n = int(np.exp(rng.uniform(np.log(64), np.log(8192))))
        p = int(rng.uniform(0, 8192))
        b = int(np.exp(rng.uniform(0, np.log(256))))
        kv = b * int(np.exp(rng.uniform(np.log(128), np.log(8192))))
        for kind, shape in (("prefill", BatchShape(((n, p),))),
                            ("decode", BatchShape(decode_seqs=b, decode_kv_tokens=kv)),
                            ("mixed", BatchShape(((n, p),), decode_seqs=b, decode_kv_tokens=kv))):
            errs[kind].append(abs_pct(cost.solo_time(shape, s), truth.solo_time(shape, s)))
    for kind, e in errs.items():
        # The worst case is a knee inside the last interval, where the chord is kept.
        assert np.median(e) < 1.5 and np.percentile(e, 90) < 3.5 and max(e) < 12.0, kind


def test_several_chunks_add_their_features(cost, truth):
    one = BatchShape(((1024, 2048),))
    two = BatchShape(((512, 0), (512, 4096)))
    # Same tokens through the dense layers, fewer attention pairs and KV reads.
    assert cost.solo_time(two, 64) < cost.solo_time(one, 64)
    assert cost.solo_time(two, 64) > cost.solo_time(BatchShape(((1024, 0),)), 64) * 0.99
    assert abs_pct(cost.solo_time(two, 64), truth.solo_time(two, 64)) < 5.0


def test_corun_slowdown_recovers_the_generating_model(data, cost, truth):
    pred, true = [], []
    for r in data["measurements"]["corun"]:
        p, d = prefill_shape(r["prefill"]), decode_shape(r["decode"])
        ps, ds = r["prefill"]["sms"], r["decode"]["sms"]
        pred += [cost.slowdown(p, ps, d, ds), cost.slowdown(d, ds, p, ps)]
        true += [truth.slowdown(p, ps, d, ds), truth.slowdown(d, ds, p, ps)]
    err = abs_pct(pred, true)
    assert max(true) > 1.1      # the synthetic co-runs really do contend
    assert np.median(err) < 2.0 and err.max() < 8.0


# ---- held-out error ----------------------------------------------------------------------

def test_heldout_error_meets_the_targets(fitted):
    err = fitted["fit_error"]
    for kind in ("prefill", "decode"):
        assert err[kind]["n"] > 0
        assert err[kind]["median_abs_pct"] <= 5.0 and err[kind]["p90_abs_pct"] <= 12.0, kind
    assert err["corun_slowdown"]["n"] > 0 and err["corun_slowdown"]["median_abs_pct"] <= 10.0
    assert "25%" in err["holdout"]


def test_heldout_error_is_computed_from_held_out_points(data, fitted):
    train, held = split_holdout(data["measurements"], 0.25, 0)
    cost = MeasuredCost(LLAMA8, H100, fit_params(train, LLAMA8, H100))
    for kind, shape_of in (("prefill", prefill_shape), ("decode", decode_shape)):
        # One record per grid point here, so a quarter of the records are held out.
        assert len(held[kind]) == round(0.25 * len(data["measurements"][kind]))
        assert not any(r in train[kind] for r in held[kind])
        e = [abs_pct(cost.solo_time(shape_of(r), r["sms"]), r["time_s"]) for r in held[kind]]
        assert fitted["fit_error"][kind]["n"] == len(e)
        assert fitted["fit_error"][kind]["median_abs_pct"] == pytest.approx(np.median(e), abs=1e-3)
        assert fitted["fit_error"][kind]["p90_abs_pct"] == pytest.approx(np.percentile(e, 90),
                                                                         abs=1e-3)


def test_heldout_error_sees_points_the_fit_did_not():
    # Make every held-out point 40% slower than the GPU would be: only held-out error notices.
    data = synthetic(noise=0.0, corun=False)
    _, held = split_holdout(data["measurements"], 0.25, 0)
    tampered = {id(r) for r in held["decode"]}
    for r in data["measurements"]["decode"]:
        if id(r) in tampered:
            r["time_s"] *= 1.4
    err = fit_calibration(data)["fit_error"]["decode"]
    assert err["median_abs_pct"] == pytest.approx(100 * (1 - 1 / 1.4), abs=2.0)


def test_stored_errors_are_the_computed_ones(data, fitted, tmp_path):
    path = tmp_path / "calib.json"
    write_calibration(data, path)
    assert main([str(path)]) == 0
    stored = read_calibration(path)
    assert stored["fit_error"] == fitted["fit_error"]
    assert stored["fit"] == json.loads(json.dumps(fitted["fit"]))
    loaded = MeasuredCost.load(path, LLAMA8, H100)
    assert loaded.describe()["fit_error"] == fitted["fit_error"]


# ---- more SMs never slower ----------------------------------------------------------------

shapes = st.builds(
    BatchShape,
    prefill_chunks=st.lists(st.tuples(st.integers(0, 20000), st.integers(0, 40000)),
                            max_size=3).map(tuple),
    decode_seqs=st.integers(0, 600),
    decode_kv_tokens=st.integers(0, 600 * 10000),
)
ALL_SMS = np.arange(1, H100.num_sms + 1)


def assert_monotone(c: MeasuredCost, shape: BatchShape) -> None:
    t = c.solo_time(shape, ALL_SMS)
    assert np.all(np.diff(t) <= 0.0)
    assert c.solo_time(shape, FULL_GPU) <= t[-1]
    for s in (1, 8, 67, 68, 132):
        assert c.solo_time(shape, s) == t[s - 1]     # scalar and array paths agree exactly


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes)
def test_more_sms_never_slower(cost, shape):
    assert_monotone(cost, shape)


@pytest.fixture(scope="module")
def rough_cost() -> MeasuredCost:
    # Noisy, with the 64-SM column 30% too slow and the plain stream slower than 128 SMs.
    data = synthetic(noise=0.05, seed=4, corun=False)
    for r in data["measurements"]["prefill"] + data["measurements"]["decode"]:
        if r["sms"] == 64:
            r["time_s"] *= 1.3
        if r["sms"] == FULL_GPU:
            r["time_s"] *= 1.2
    return MeasuredCost(LLAMA8, H100, fit_calibration(data)["fit"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes)
def test_more_sms_never_slower_even_on_contradictory_data(rough_cost, shape):
    assert_monotone(rough_cost, shape)


def test_extrapolates_sanely_outside_the_measured_sms(truth):
    data = synthetic(sms=[16, 32, 48, 64, 80, 96], corun=False, noise=0.0)
    c = MeasuredCost(LLAMA8, H100, fit_calibration(data)["fit"])
    for shape in (BatchShape(((2048, 1024),)), BatchShape(decode_seqs=64, decode_kv_tokens=64000)):
        t16, t96 = c.solo_time(shape, 16), c.solo_time(shape, 96)
        assert t16 <= c.solo_time(shape, 8) <= 2 * t16        # between no loss and linear loss
        assert t96 * 96 / 132 <= c.solo_time(shape, 132) <= t96
        assert c.solo_time(shape, FULL_GPU) == c.solo_time(shape, 132)   # no plain-stream column
        assert abs_pct(c.solo_time(shape, 8), truth.solo_time(shape, 8)) < 10.0


def test_a_measured_plain_stream_is_not_clipped_by_the_partitions_trend(truth):
    # The two largest partitions fall steeply, as noise makes them do: extrapolating that fall
    # to every SM once priced the plain stream 8% under its own points (an H200 profile).
    data = synthetic(sms=[FULL_GPU, 48, 64, 80, 96], corun=False, noise=0.0)
    for kind in ("prefill", "decode"):
        for rec in data["measurements"][kind]:
            if rec["sms"] == 80:
                rec["time_s"] *= 1.08
    c = MeasuredCost(LLAMA8, H100, fit_calibration(data)["fit"])
    for shape in (BatchShape(decode_seqs=8, decode_kv_tokens=8192), BatchShape(decode_seqs=64, decode_kv_tokens=64000),
                  BatchShape(((1024, 0),))):
        assert abs_pct(c.solo_time(shape, FULL_GPU), truth.solo_time(shape, FULL_GPU)) < 2.0
        t = c.solo_time(shape, ALL_SMS)
        assert np.all(np.diff(t) <= 0.0) and c.solo_time(shape, FULL_GPU) <= t[-1]


def test_a_clean_fit_reports_no_column_bias(fitted):
    bias = fitted["fit_error"]["bias_pct"]
    assert set(bias) == {"prefill", "decode"} and set(bias["decode"]) == {str(s) for s in SMS}
    assert max(abs(b) for cols in bias.values() for b in cols.values()) < BIAS_WARN_PCT
    assert bias_warnings(bias) == []


def test_a_column_the_fit_cannot_follow_is_reported(tmp_path, capsys):
    # A plain stream measured 12% slower than 96-SM partitions: more SMs may never be slower,
    # so the fit holds it at the partitions' time, and that column reads about 11% under.
    data = synthetic(sms=[FULL_GPU, 48, 64, 80, 96], corun=False, noise=0.0)
    for rec in data["measurements"]["decode"]:
        if rec["sms"] == FULL_GPU:
            rec["time_s"] *= 1.12
    bias = fit_calibration(data)["fit_error"]["bias_pct"]
    assert bias["decode"]["0"] < -BIAS_WARN_PCT
    assert all(abs(b) < BIAS_WARN_PCT for s, b in bias["decode"].items() if s != "0")
    assert [w.split(":")[0] for w in bias_warnings(bias)] == ["decode on the plain stream"]
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    assert main([str(path)]) == 0
    assert "warning: decode on the plain stream: the fit is" in capsys.readouterr().out


@pytest.mark.parametrize("sms", [[FULL_GPU], [64], [FULL_GPU, 64]], ids=str)
def test_a_profile_of_few_sm_counts_still_answers_every_one(sms, truth):
    c = MeasuredCost(LLAMA8, H100, fit_calibration(synthetic(sms=sms, corun=False))["fit"])
    shape = BatchShape(((1024, 0),))
    for s in sms:
        assert abs_pct(c.solo_time(shape, s), truth.solo_time(shape, s)) < 5.0
    t = c.solo_time(shape, ALL_SMS)
    assert np.all(np.diff(t) <= 0.0) and c.solo_time(shape, FULL_GPU) <= t[-1]
    if sms == [FULL_GPU]:       # partitions scale the plain stream by their share of SMs
        assert t[65] == pytest.approx(c.solo_time(shape, FULL_GPU) * 132 / 66, rel=1e-12)
    if sms == [64]:             # no gain assumed above the one partition, linear loss below
        assert t[-1] == c.solo_time(shape, 64) == c.solo_time(shape, FULL_GPU)
        assert t[31] == pytest.approx(2 * c.solo_time(shape, 64), rel=1e-12)
    if sms == [FULL_GPU, 64]:
        assert c.solo_time(shape, FULL_GPU) < c.solo_time(shape, 100) < c.solo_time(shape, 64)


# ---- contention ----------------------------------------------------------------------------

def test_slowdown_is_one_beside_an_idle_phase(cost):
    p = BatchShape(((2048, 0),))
    assert cost.slowdown(p, 64, BatchShape(), 68) == 1.0
    assert cost.slowdown(BatchShape(), 64, p, 68) == 1.0
    assert np.all(cost.slowdown(p, np.array([8, 64]), BatchShape(), 68) == 1.0)


nonempty = shapes.filter(lambda s: s.prefill_tokens > 0 or s.decode_seqs > 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=nonempty, a=nonempty, b=nonempty, s=st.sampled_from([8, 64, 124]),
       so=st.sampled_from([8, 68, 124]))
def test_slowdown_grows_with_the_other_phases_demand(cost, shape, a, b, s, so):
    da, db = cost.memory_demand(a, so), cost.memory_demand(b, so)
    sa, sb = cost.slowdown(shape, s, a, so), cost.slowdown(shape, s, b, so)
    assert sa >= 1.0 and sb >= 1.0
    if da <= db:
        assert sa <= sb + 1e-12
    else:
        assert sb <= sa + 1e-12


def test_slowdown_broadcasts_like_scalar_calls(cost):
    d = BatchShape(decode_seqs=128, decode_kv_tokens=128 * 2000)
    p = BatchShape(((1024, 4096),))
    sp = np.array([16, 64, 96])
    got = cost.slowdown(d, H100.num_sms - sp, p, sp)
    want = [cost.slowdown(d, H100.num_sms - int(x), p, int(x)) for x in sp]
    assert np.allclose(got, want, rtol=1e-12)
    assert cost.slowdown(p, 64, d, np.array([[8], [68]])).shape == (2, 1)


def test_no_corun_measurements_fall_back_to_labelled_defaults():
    out = fit_calibration(synthetic(corun=False))
    assert out["fit"]["corun"]["source"].startswith("defaults")
    assert out["fit_error"]["corun_slowdown"]["n"] == 0
    c = MeasuredCost(LLAMA8, H100, out["fit"])
    d = BatchShape(decode_seqs=256, decode_kv_tokens=256 * 4096)
    assert c.slowdown(d, 68, BatchShape(((4096, 0),)), 64) > 1.0


# ---- the CostModel interface and loading ---------------------------------------------------

def test_load_cost_model_returns_a_measured_model(data, fitted, tmp_path):
    path = tmp_path / "h100.json"
    write_calibration({**data, **fitted}, path)
    c = load_cost_model(LLAMA8, H100, path)
    assert isinstance(c, MeasuredCost) and c.name == "measured"
    _: CostModel = c
    d = c.describe()
    assert d["name"] == "measured" and d["calibration"] == str(path)
    assert d["gpu"] == "h100-sxm" and d["model"] == "llama-3.1-8b"
    assert d["created"] == data["created"] and d["fit_error"]["prefill"]["n"] > 0
    json.dumps(d)


def test_a_pickled_model_answers_as_the_original():
    """Sweeps may send a model to worker processes; the shipped H200 calibration carries an
    engine section (graphs, served scales, host gaps) that must come through too."""
    import pickle
    original = load_cost_model(LLAMA8, GPUS["h200"], None)
    original.step_gap_s = 0.0021
    copy_ = pickle.loads(pickle.dumps(original))
    assert copy_.describe() == original.describe() and copy_.step_gap_s == 0.0021
    shapes = [BatchShape(((300, 0),)), BatchShape(((513, 1024),), 7, 9000), BatchShape((), 40, 50_000)]
    for shape, s in itertools.product(shapes, (FULL_GPU, 24, 68, 132)):
        assert copy_.solo_time(shape, s) == original.solo_time(shape, s)
        assert copy_.step_overhead(shape) == original.step_overhead(shape)
        assert copy_.slowdown(shape, s, shapes[2], 132 - s) == original.slowdown(shape, s, shapes[2], 132 - s)


def test_a_numpy_integer_sm_count_answers_as_the_int(cost):
    rival = BatchShape((), 8, 4000)
    for shape in (BatchShape(((300, 0),)), BatchShape(((513, 1024),), 7, 9000), BatchShape((), 40, 50_000)):
        assert cost.solo_time(shape, np.int64(48)) == cost.solo_time(shape, 48)
        assert cost.memory_demand(shape, np.int32(48)) == cost.memory_demand(shape, 48)
        assert cost.slowdown(shape, np.int64(48), rival, np.int64(80)) == cost.slowdown(shape, 48, rival, 80)
    with pytest.raises(ValueError, match="outside"):
        cost.solo_time(BatchShape((), 8, 4000), np.int64(H100.num_sms + 1))


def test_empty_and_array_shapes(cost):
    assert cost.solo_time(BatchShape(), 64) == 0.0
    assert np.all(cost.solo_time(BatchShape(((0, 100),)), np.array([8, 16])) == 0.0)
    with pytest.raises(ValueError):
        cost.solo_time(BatchShape(((10, 0),)), 133)
    with pytest.raises(TypeError):
        cost.solo_time(BatchShape(((10, 0),)), np.array([8.0]))


# ---- validation ------------------------------------------------------------------------------

def _write(tmp_path, data, name="calib.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _edit(data: dict, fn) -> dict:
    d = copy.deepcopy(data)
    fn(d)
    return d


def _set(path: str, value):
    def fn(d):
        *keys, last = path.split(".")
        obj = d
        for k in keys:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return fn


BAD = {
    "wrong format": (_set("format", "something-else"), "not a calibration file"),
    "newer version": (_set("version", 2), "version 2 is not supported"),
    "missing measurements": (_set("measurements", KeyError), "missing field measurements"),
    "missing time": (_set("measurements.prefill.3.time_s", KeyError),
                     "measurements.prefill[3]: missing field time_s"),
    "negative time": (_set("measurements.decode.5.time_s", -0.01),
                      "measurements.decode[5].time_s must be a positive number"),
    "string batch": (_set("measurements.decode.0.batch", "8"),
                     "measurements.decode[0].batch must be an integer"),
    "too many sms": (_set("measurements.prefill.0.sms", 200), "the GPU has 132 SMs"),
    "bad corun": (_set("measurements.corun.0.decode_solo_s", 0.0),
                  "measurements.corun[0].decode_solo_s must be a positive number"),
    "unknown kind": (_set("measurements.warmup", []), "unknown measurement kind(s) warmup"),
    "bad model field": (_set("model.num_layerz", 3), "model: unknown field(s) num_layerz"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_files_name_the_file_and_the_problem(data, tmp_path, case):
    fn, message = BAD[case]
    path = _write(tmp_path, _edit(data, fn))
    with pytest.raises(UserError) as e:
        MeasuredCost.load(path, LLAMA8, H100)
    assert str(path) in str(e.value) and message in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "nexus-calibration", ')
    with pytest.raises(UserError, match=r"broken\.json: not valid JSON"):
        load_cost_model(LLAMA8, H100, path)
    with pytest.raises(UserError, match="no such calibration file"):
        load_cost_model(LLAMA8, H100, tmp_path / "absent.json")
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="holds a JSON object"):
        load_cost_model(LLAMA8, H100, path)


def test_mismatched_model_and_gpu(data, tmp_path):
    path = _write(tmp_path, data)
    with pytest.raises(UserError, match="calibration is for llama-3.1-8b but the model asked "
                                        "for is qwen2.5-3b"):
        MeasuredCost.load(path, MODELS["qwen2.5-3b"], H100)
    with pytest.raises(UserError, match="calibration is for h100-sxm but the GPU asked for is h200"):
        MeasuredCost.load(path, LLAMA8, GPUS["h200"])
    from dataclasses import replace
    with pytest.raises(UserError, match="has num_layers=32 but the model asked for has num_layers=16"):
        MeasuredCost.load(path, replace(LLAMA8, num_layers=16), H100)
    with pytest.raises(UserError, match="has hbm_bandwidth=.* but the GPU asked for has"):
        MeasuredCost.load(path, LLAMA8, replace(H100, hbm_bandwidth=3.0e12))


def test_too_little_data_to_fit(data, tmp_path, capsys):
    no_decode = _edit(data, _set("measurements.decode", []))
    assert main([str(_write(tmp_path, no_decode))]) == 2
    assert "no decode measurements" in capsys.readouterr().err
    one_size = _edit(data, lambda d: d["measurements"].update(
        prefill=[r for r in d["measurements"]["prefill"] if r["chunk_tokens"] == 512]))
    assert main([str(_write(tmp_path, one_size, "one.json"))]) == 2
    assert "single chunk size" in capsys.readouterr().err


def test_malformed_fit_asks_for_a_refit(data, fitted, tmp_path):
    broken = _edit({**data, **fitted}, _set("fit.prefill.own_pair_s", [-1.0] * 17))
    path = _write(tmp_path, broken)
    with pytest.raises(UserError, match="malformed fit .*`python -m nexus.cost.fit "):
        MeasuredCost.load(path, LLAMA8, H100)
    assert main([str(path)]) == 0                  # refitting repairs it
    MeasuredCost.load(path, LLAMA8, H100)


def test_cli_reports_user_errors(tmp_path, capsys):
    assert main([str(tmp_path / "absent.json")]) == 2
    assert "no such calibration file" in capsys.readouterr().err


# ---- partial profiles ---------------------------------------------------------------------------

def test_parts_merge_into_the_whole(data):
    meas = data["measurements"]
    first = _edit(data, lambda d: d["measurements"].update(
        prefill=meas["prefill"][:100], decode=[], corun=meas["corun"]))
    second = _edit(data, lambda d: d["measurements"].update(
        prefill=meas["prefill"][100:], decode=meas["decode"], corun=[]))
    first["fit"] = {"stale": True}
    first["created"], second["created"] = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
    first["grid"], second["grid"] = {"decode": "old"}, {"decode": "new"}
    merged = merge_calibrations(first, second, "part2.json")
    assert "fit" not in merged
    assert merged["created"] == second["created"]     # new contents, new identity
    assert merged["grid"] == {"decode": "new"}        # the grid the newer part was measured on
    for kind in ("prefill", "decode", "corun"):
        assert sorted(map(json.dumps, merged["measurements"][kind])) == \
            sorted(map(json.dumps, meas[kind]))
    other = synthetic(model=MODELS["qwen2.5-3b"], corun=False, sms=[0, 64])
    with pytest.raises(UserError, match="part2.json: calibration is for qwen2.5-3b"):
        merge_calibrations(first, other, "part2.json")


# ---- between knots ------------------------------------------------------------------------------

def test_densify_puts_a_roofline_knee_where_it_belongs():
    knots = [128, 512, 2048, 4096, 8192]
    w, a = 6e-3, 25e-6                       # weight-bound floor, then compute-bound: knee at 240
    curve = lambda n: np.maximum(w, a * np.asarray(n, dtype=float))  # noqa: E731
    fine_knots, fine = densify(knots, curve(knots)[None, :])
    inner = fine_knots < 4096                  # the last interval keeps its chord
    assert np.allclose(fine[0, inner], curve(fine_knots[inner]), rtol=1e-12)
    assert np.all(np.diff(fine[0]) >= 0.0)
    # A chord would have put 240 tokens 30% above the floor.
    chord = np.interp(240, knots, curve(knots))
    assert chord > 1.3 * w


def test_densify_keeps_the_chord_where_the_curve_bends_down():
    knots = [64, 256, 1024, 4096]
    values = np.sqrt(np.array(knots, dtype=float))[None, :]
    fine_knots, fine = densify(knots, values)
    assert np.allclose(fine[0], np.interp(fine_knots, knots, values[0]), rtol=1e-12)


# ---- structure shared across SM columns and attention kinds --------------------------------

def test_a_shape_missing_from_one_column_is_filled_in_from_its_neighbours(truth):
    data = synthetic(noise=0.0, corun=False)
    data["measurements"]["prefill"] = [r for r in data["measurements"]["prefill"]
                                       if not (r["sms"] == 40 and r["chunk_tokens"] == 8192)]
    c = MeasuredCost(LLAMA8, H100, fit_calibration(data)["fit"])
    for p in PRIORS:
        shape = BatchShape(((8192, p),))
        assert abs_pct(c.solo_time(shape, 40), truth.solo_time(shape, 40)) < 3.0, p


def test_attention_over_a_cached_prefix_is_priced_apart_from_causal_attention(truth):
    # A GPU on which a query against a cached token costs more than one within the chunk.
    data = synthetic(noise=0.0, corun=False, sms=[FULL_GPU, 32, 64, 96])
    extra = 3e-10
    for r in data["measurements"]["prefill"]:
        r["time_s"] += extra * r["chunk_tokens"] * r["prior_tokens"] * 64 / (r["sms"] or 132)
    held = [r for r in data["measurements"]["prefill"]
            if r["chunk_tokens"] == 128 and r["prior_tokens"] == 8192]
    data["measurements"]["prefill"] = [r for r in data["measurements"]["prefill"] if r not in held]
    c = MeasuredCost(LLAMA8, H100, fit_calibration(data)["fit"])
    assert held
    for r in held:
        assert abs_pct(c.solo_time(prefill_shape(r), r["sms"]), r["time_s"]) < 3.0, r["sms"]


def test_mixed_batch_overhead_is_recovered_and_applied():
    """A chunked-prefill step's host floor (const + per decode row) is fitted and then predicted."""
    from pathlib import Path

    from nexus.cost.calibration import read_calibration
    from nexus.cost.fit import fit_mixed, fit_params, mixed_shape
    from nexus.cost.measured import MeasuredCost
    from nexus.specs import GPUS, MODELS

    data = read_calibration(Path(__file__).parent.parent / "nexus/cost/calibrations/h100-sxm__llama-3.1-8b.json")
    model, gpu = MODELS["llama-3.1-8b"], GPUS["h100-sxm"]
    base_fit = fit_params({k: v for k, v in data["measurements"].items() if k != "mixed"}, model, gpu)
    base = MeasuredCost(model, gpu, base_fit)
    host, per_seq = 15e-3, 40e-6
    records = [{"sms": 0, "chunk_tokens": c, "prior_tokens": p, "batch": b, "context": 1024}
               for c, p in ((16, 0), (128, 0), (512, 2048), (2048, 0)) for b in (1, 32, 200)]
    gpu_time = [float(base.solo_time(mixed_shape(r), 0)) for r in records]
    for r, g in zip(records, gpu_time):
        r["time_s"] = max(g, host + per_seq * r["batch"])
    host_bound = [r["time_s"] > g for r, g in zip(records, gpu_time)]
    assert 2 <= sum(host_bound) < len(records)      # both regimes are in the data
    fitted = fit_mixed(base, records)
    assert fitted["host_s"] == pytest.approx(host, rel=1e-6)
    assert fitted["per_seq_s"] == pytest.approx(per_seq, rel=1e-6)
    with_mixed = MeasuredCost(model, gpu, {**base_fit, "mixed": fitted})
    for r in records:
        assert with_mixed.solo_time(mixed_shape(r), 0) == pytest.approx(r["time_s"], rel=1e-9)
    # A pure prefill or pure decode step pays none of it.
    pure = BatchShape(((512, 0),))
    assert with_mixed.solo_time(pure, 0) == pytest.approx(base.solo_time(pure, 0), rel=1e-12)


# ---- prefill graphs: the engine pads prefill-only steps to a bucket ---------------------------

def test_prefill_only_steps_are_charged_at_their_graph_bucket(data, fitted, tmp_path):
    graphs = {"buckets": [64, 256, 512], "max_seqs": 2}
    path = _write(tmp_path, {**data, **fitted, "engine": {"prefill_graphs": graphs}})
    padded = MeasuredCost.load(path, LLAMA8, H100)
    plain = MeasuredCost.load(_write(tmp_path, {**data, **fitted}, "plain.json"), LLAMA8, H100)
    for sms in (16, 64, FULL_GPU):
        # 100 tokens pay the dense layers of 256, but attention only among their own 100.
        t100, t256 = BatchShape(((100, 0),)), BatchShape(((256, 0),))
        assert plain.solo_time(t100, sms) < padded.solo_time(t100, sms) < plain.solo_time(t256, sms)
        assert padded.solo_time(t256, sms) == plain.solo_time(t256, sms)
        assert padded.solo_time(BatchShape(((60, 0), (60, 0))), sms) > plain.solo_time(BatchShape(((120, 0),)), sms)
        # No graph: too many tokens, too many sequences, a one-token chunk, or decode rows too.
        for shape in (BatchShape(((600, 0),)), BatchShape(((40, 0), (40, 0), (40, 0))),
                      BatchShape(((1, 0), (30, 0))), BatchShape(((100, 0),), 8, 8000)):
            assert padded.solo_time(shape, sms) == plain.solo_time(shape, sms)


def test_bad_prefill_graph_spec_is_named(data, fitted, tmp_path):
    for bad in ({"buckets": [], "max_seqs": 4}, {"buckets": [64]}, {"buckets": ["x"], "max_seqs": 1}):
        path = _write(tmp_path, {**data, **fitted, "engine": {"prefill_graphs": bad}})
        with pytest.raises(UserError, match="engine.prefill_graphs must be"):
            MeasuredCost.load(path, LLAMA8, H100)


def test_decode_steps_are_charged_at_their_graph_bucket(data, fitted, tmp_path):
    path = _write(tmp_path, {**data, **fitted, "engine": {"decode_graphs": {"buckets": [32, 64, 96]}}})
    padded = MeasuredCost.load(path, LLAMA8, H100)
    plain = MeasuredCost.load(_write(tmp_path, {**data, **fitted}, "plain.json"), LLAMA8, H100)
    for sms in (16, 64, FULL_GPU):
        # 72 rows run the 96-row graph, but attend only over their own KV.
        d72, d96 = BatchShape((), 72, 72 * 800), BatchShape((), 96, 72 * 800)
        assert padded.solo_time(d72, sms) == plain.solo_time(d96, sms) > plain.solo_time(d72, sms)
        assert padded.solo_time(BatchShape((), 64, 64_000), sms) == plain.solo_time(BatchShape((), 64, 64_000), sms)
        # Past the largest bucket the engine runs eagerly, unpadded; mixed steps are eager too.
        for shape in (BatchShape((), 120, 96_000), BatchShape(((16, 0),), 72, 72 * 800)):
            assert padded.solo_time(shape, sms) == plain.solo_time(shape, sms)
    with pytest.raises(UserError, match="engine.decode_graphs must be"):
        MeasuredCost.load(_write(tmp_path, {**data, **fitted, "engine": {"decode_graphs": {"buckets": [0]}}},
                                 "bad.json"), LLAMA8, H100)


def test_step_gap_grows_with_decode_rows_and_bad_values_are_named(data, fitted, tmp_path):
    engine = {"step_gap_s": 2e-4, "step_gap_per_seq_s": 3e-6}
    cost = MeasuredCost.load(_write(tmp_path, {**data, **fitted, "engine": engine}), LLAMA8, H100)
    assert cost.step_overhead(BatchShape(((512, 0),))) == pytest.approx(2e-4)
    assert cost.step_overhead(BatchShape((), 100, 100_000)) == pytest.approx(2e-4 + 100 * 3e-6)
    assert cost.describe()["step_gap_per_seq_s"] == 3e-6
    for bad in ({"step_gap_per_seq_s": -1e-6}, {"step_gap_s": "fast"}):
        with pytest.raises(UserError, match=f"engine.{next(iter(bad))} must be"):
            MeasuredCost.load(_write(tmp_path, {**data, **fitted, "engine": bad}, "bad.json"), LLAMA8, H100)


def test_a_rival_that_draws_little_bandwidth_still_slows_decode_by_its_sm_share(data):
    """The H200's profile: decode beside a compute-bound 2048-token prefill ran 10-28% slower,
    growing with the prefill's SMs, though that prefill draws little bandwidth. The fit
    recovers such a term when the measurements hold one, and keeps it at zero when not."""
    from nexus.cost.fit import fit_corun
    cost = MeasuredCost(LLAMA8, H100, fitted_solo := fit_params(
        {**data["measurements"], "corun": []}, LLAMA8, H100))
    assert fitted_solo["corun"]["decode"]["other_share"] == 0.0   # the labelled defaults carry it
    records = []
    for r in data["measurements"]["corun"]:
        share = r["prefill"]["sms"] / H100.num_sms
        records.append({**r, "decode_time_s": r["decode_solo_s"] * (1.0 + 0.3 * share)})
    fit = fit_corun(cost, records)["decode"]
    assert fit["other_share"] == pytest.approx(0.3, rel=0.05)
    assert fit["other_use"] < 0.02 and fit["own_x_other_use"] < 0.02
    flat = fit_corun(cost, [{**r, "decode_time_s": r["decode_solo_s"]} for r in records])["decode"]
    assert flat["other_share"] == pytest.approx(0.0, abs=1e-9)


def test_a_version_3_fit_reads_with_no_share_term_and_a_version_4_fit_must_have_it(fitted):
    v3 = json.loads(json.dumps(fitted["fit"]))
    v3["version"] = 3
    for phase in ("prefill", "decode"):
        v3["corun"][phase].pop("other_share")
    old = MeasuredCost(LLAMA8, H100, v3)
    assert old._corun["decode"][-1] == 0.0 and old._corun["prefill"][-1] == 0.0
    v4 = {**v3, "version": 4}
    with pytest.raises((KeyError, ValueError, UserError)):
        MeasuredCost(LLAMA8, H100, v4)


def test_steps_of_several_prompts_identify_attentions_own_pairs(data, cost, truth):
    """One-prompt records cannot tell a prompt's own attention pairs from the dense curve (both
    are functions of its size); records of several equal prompts in one step can."""
    many = copy.deepcopy(data)
    rng = np.random.default_rng(11)
    for s in SMS:
        for prompts, n in ((4, 512), (8, 256), (16, 128), (4, 2048)):
            rec = {"sms": s, "chunk_tokens": n, "prior_tokens": 0, "prompts": prompts}
            t = truth.solo_time(prefill_shape(rec), s) * np.exp(rng.normal(0.0, NOISE))
            many["measurements"]["prefill"].append({**rec, "time_s": float(t)})
    with_prompts = MeasuredCost(LLAMA8, H100, fit_calibration(many)["fit"])
    # Off the grid: other prompt counts and sizes, at SM counts never measured.
    shapes = [BatchShape(prefill_chunks=((n, 0),) * k) for k, n in ((6, 300), (12, 100), (3, 1500), (10, 400))]
    sms = [0, 20, 44, 68, 100, 132]
    err = lambda model: np.array([abs_pct(model.solo_time(sh, s), truth.solo_time(sh, s))  # noqa: E731
                                  for sh in shapes for s in sms])
    assert np.median(err(with_prompts)) < 2.0
    assert np.median(err(with_prompts)) < np.median(err(cost))


# The H200 engine's prefill graph buckets: every step it runs is padded to one of them.
GRAPH_BUCKETS = [16, 32, 64, 128, 192, 256, 320, 384, 448, 512] + list(range(640, 2305, 128))


def staircase_calibration() -> dict:
    """Prefill on a GPU whose dense layers run in waves of 384 tokens (a step's time climbs in
    stairs, as matmul tiles fill the SMs wave by wave), measured at every graph bucket."""
    data = synthetic(sms=[FULL_GPU, 32, 64, 96], corun=False)
    prefill = []
    for s in (FULL_GPU, 32, 64, 96):
        share = 1.0 if s == FULL_GPU else H100.num_sms / s
        for n in sorted({*GRAPH_BUCKETS, 8192}):
            prefill.append({"sms": s, "chunk_tokens": n, "prior_tokens": 0,
                            "time_s": share * (0.005 + 0.012 * -(-n // 384))})
    data["measurements"]["prefill"] = prefill
    return data


def bucket_errors(data: dict, fitted: dict) -> np.ndarray:
    c = MeasuredCost(LLAMA8, H100, fitted["fit"])
    return np.array([abs_pct(c.solo_time(BatchShape(((r["chunk_tokens"], 0),)), r["sms"]), r["time_s"])
                     for r in data["measurements"]["prefill"] if r["chunk_tokens"] in GRAPH_BUCKETS])


def test_a_knot_at_every_graph_bucket_keeps_the_stairs_between_grid_sizes(monkeypatch):
    import nexus.cost.fit as fit_module
    data = staircase_calibration()
    fitted = fit_calibration(copy.deepcopy(data))
    assert len(fitted["fit"]["prefill"]["token_knots"]) == len(GRAPH_BUCKETS) + 1
    errors = bucket_errors(data, fitted)
    assert np.median(errors) < 0.5 and errors.max() < 1.0
    # Twelve knots, as before the profile measured every bucket: between knots a chord (or a
    # knee below it) misses a stair by a tenth of the step.
    monkeypatch.setattr(fit_module, "MAX_KNOTS", 12)
    assert bucket_errors(data, fit_calibration(copy.deepcopy(data))).max() > 8.0


def test_a_prefill_size_slower_than_the_next_larger_one_is_reported():
    from nexus.cost.fit import fit_report, prefill_inversions
    data = staircase_calibration()
    assert fit_calibration(copy.deepcopy(data))["fit_error"]["prefill_inversions"] == []
    for r in data["measurements"]["prefill"]:
        if r["chunk_tokens"] == 448 and r["sms"] == FULL_GPU:
            r["time_s"] *= 1.3        # 448 now costs more than 512 on the plain stream only
    fitted = fit_calibration(data)
    (inversion,) = fitted["fit_error"]["prefill_inversions"]
    assert inversion[:3] == [FULL_GPU, 448, 512] and inversion[3] > 2.0
    assert any("prefill of 448 tokens on the plain stream" in line for line in fit_report(fitted["fit_error"]))
    # Steps of several prompts, or over a prior, are other shapes and never compared.
    assert prefill_inversions([{"sms": 0, "chunk_tokens": 64, "prior_tokens": 4096, "time_s": 9.0},
                               {"sms": 0, "chunk_tokens": 128, "prior_tokens": 0, "time_s": 1.0},
                               {"sms": 0, "chunk_tokens": 96, "prior_tokens": 0, "prompts": 4, "time_s": 9.0}]) == []


def test_prefix_pairs_that_ran_on_the_dense_path_get_a_price_of_their_own(data, fitted):
    # The profile marks the records whose prefix took cuDNN (real.profile: "dense"); the fit
    # prices those pairs apart from the Triton kernel's, and the evaluator splits a step's
    # chunks by the same rule (nexus.graph_buckets.runs_dense). Truth here: the synthetic fit
    # with dense pairs at 0.6x the others, as the H200's cuDNN ran them 1.2-1.4x faster.
    from nexus.graph_buckets import runs_dense
    from nexus.cost.terms import prefill_attention
    true_fit = copy.deepcopy(fitted["fit"])
    true_fit["prefill"]["dense_cross_pair_s"] = [0.6 * c for c in true_fit["prefill"]["cross_pair_s"]]
    truth = MeasuredCost(LLAMA8, H100, true_fit)
    marked = copy.deepcopy(data)
    for rec in marked["measurements"]["prefill"]:
        if rec["prior_tokens"] and runs_dense(rec["chunk_tokens"], rec["prior_tokens"]):
            rec["dense"] = True
        rec["time_s"] = float(truth.solo_time(prefill_shape(rec), rec["sms"]))
    assert sum(bool(r.get("dense")) for r in marked["measurements"]["prefill"]) >= 4 * len(SMS)
    refit = MeasuredCost(LLAMA8, H100, fit_params(marked["measurements"], LLAMA8, H100))
    plain = MeasuredCost(LLAMA8, H100, fitted["fit"])     # no record marked: one price for both
    dense, triton = BatchShape(((2048, 6000),)), BatchShape(((1024, 6000),))
    assert prefill_attention(dense.prefill_chunks)[2:] == (0, 6000, 2048 * 6000)
    assert prefill_attention(triton.prefill_chunks)[2:] == (1024 * 6000, 6000, 0)
    assert prefill_attention(((2048, 6000), (1024, 6000)))[2:] == (1024 * 6000, 12000, 2048 * 6000)
    for s in (FULL_GPU, 64, 16):
        assert abs_pct(refit.solo_time(dense, s), truth.solo_time(dense, s)) < 2.0
        assert abs_pct(refit.solo_time(triton, s), truth.solo_time(triton, s)) < 2.0
        assert truth.solo_time(dense, s) < plain.solo_time(dense, s) * 0.97
        assert truth.solo_time(triton, s) == pytest.approx(plain.solo_time(triton, s), rel=1e-12)


def test_a_fit_before_the_dense_prefix_term_prices_those_pairs_as_the_others(data, fitted, tmp_path):
    old = copy.deepcopy(fitted["fit"])
    old["version"] = 4
    del old["prefill"]["dense_cross_pair_s"]
    shape = BatchShape(((2048, 6000),))
    assert MeasuredCost(LLAMA8, H100, old).solo_time(shape, 64) == MeasuredCost(LLAMA8, H100, fitted["fit"]).solo_time(shape, 64)
    # A version 5 fit without it is malformed, not read as an old one.
    current = copy.deepcopy(fitted)
    del current["fit"]["prefill"]["dense_cross_pair_s"]
    with pytest.raises(UserError, match="malformed fit .*dense_cross_pair_s"):
        MeasuredCost.load(_write(tmp_path, {**data, **current}), LLAMA8, H100)
