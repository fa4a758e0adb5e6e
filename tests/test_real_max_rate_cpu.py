"""`nexus-real max-rate` on CPU with tiny-llama: the simulator's prediction, confirmed by few engine probes."""
import json

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from real.cli import main  # noqa: E402
from real.max_rate import _within  # noqa: E402
from synthetic import make_trace  # noqa: E402
from traces import write_trace  # noqa: E402


def test_max_rate_probes_around_the_prediction_and_writes_both_brackets(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(12, 5.0, (8, 60), (2, 10), seed=3), trace)
    out = tmp_path / "mr"
    # A generous SLO: the analytical H100 model predicts far more than the CPU serves, so the
    # engine must walk down from the prediction; every probe is recorded.
    assert main(["max-rate", "--device", "cpu", "--model", "tiny-llama", "--gpu", "h100-sxm",
                 "--trace", str(trace), "--policy", "chunked", "--slo-ttft", "5", "--slo-tbt", "1",
                 "--calibration", "analytical", "--num-blocks", "256", "--out", str(out)]) == 0
    rec = json.loads((out / "max_rate.json").read_text())
    r = rec["policies"]["chunked"]
    assert r["simulated"]["max_rate"] is not None and r["probes"]
    assert r["probes"][0]["rate"] == pytest.approx(r["simulated"]["max_rate"])
    for p in r["probes"]:
        assert {"ttft_s", "tbt_s", "offered_rps", "ok"} <= set(p)
        assert p["ok"] == (p["ttft_s"]["p95"] <= 5 and p["tbt_s"]["p95"] <= 1)
        assert sum(v["n"] for v in p["steps"].values()) > 0   # the model's error per kind of step
    # Every probe's steps beside the model's time for them, tagged with the probe.
    steps = pd.read_csv(out / "steps.csv.gz")   # rates written to 7 significant digits
    assert len(steps["rate"].unique()) == len(r["probes"])
    assert (steps["policy"] == "chunked").all() and steps["predicted_s"].gt(0).all()
    for p in r["probes"]:
        at = steps[(steps["rate"] / p["rate"] - 1).abs() < 1e-6]
        assert len(at) == sum(v["n"] for v in p["steps"].values())
    passing = [p["rate"] for p in r["probes"] if p["ok"]]
    assert r["max_rate"] == (max(passing) if passing else None)
    assert rec["slo"]["ttft_s"] == 5 and rec["unit"] == "scale"
    assert rec["complete"] and rec["trace"]["count"] == 12
    # Twelve requests at the max rate arrive within a few request lifetimes: not a steady state.
    assert r["steady_state"]["turnovers"] < 10 and rec["warnings"][0].startswith("chunked: the trace's arrivals")


def test_max_rate_keeps_every_finished_probe_when_a_later_one_fails(tmp_path, monkeypatch):
    import real.max_rate as mr
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(8, 5.0, (8, 40), (2, 6), seed=4), trace)
    calls = []
    real_probe = mr.measured_probe

    def probe(bench, entries, make, *args):
        calls.append(make().name)
        if calls.count("static") == 2:
            raise RuntimeError("the GPU went away")
        return real_probe(bench, entries, make, *args)

    monkeypatch.setattr(mr, "measured_probe", probe)
    out = tmp_path / "mr"
    with pytest.raises(RuntimeError):
        main(["max-rate", "--device", "cpu", "--model", "tiny-llama", "--gpu", "h100-sxm", "--trace", str(trace),
              "--policy", "chunked", "--policy", "static", "--slo-ttft", "5", "--slo-tbt", "1",
              "--calibration", "analytical", "--num-blocks", "256", "--out", str(out)])
    rec = json.loads((out / "max_rate.json").read_text())
    assert list(rec["policies"]) == ["chunked", "static"] and rec["complete"] is False
    assert rec["policies"]["chunked"]["status"] != "unfinished"
    static = rec["policies"]["static"]   # its first probe is kept, marked unfinished
    assert static["status"] == "unfinished" and len(static["probes"]) == 1


def test_within_bracket_allows_the_stated_tolerance():
    assert _within(1.0, {"max_rate": 0.95, "min_failing": 1.05}, 0.1)
    assert _within(1.14, {"max_rate": 0.95, "min_failing": 1.05}, 0.1)
    assert not _within(1.3, {"max_rate": 0.95, "min_failing": 1.05}, 0.1)
    assert not _within(0.5, {"max_rate": 0.95, "min_failing": None}, 0.1)
    assert _within(None, {"max_rate": 1, "min_failing": 2}, 0.1) is None
