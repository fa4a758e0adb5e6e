"""`nexus-real validate` on CPU with tiny-llama: engine and simulator on the same requests, one report."""
import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from real.cli import main  # noqa: E402
from real.validate import PolicyCase, summarize_cases  # noqa: E402
from synthetic import make_trace  # noqa: E402
from traces import write_trace  # noqa: E402


def test_validate_writes_cases_bands_and_step_view(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(10, 20.0, (8, 80), (2, 12), seed=4), trace)
    out = tmp_path / "val"
    assert main(["validate", "--device", "cpu", "--model", "tiny-llama", "--gpu", "h100-sxm",
                 "--trace", f"conv={trace}", "--policy", "chunked", "--policy", "nexus:beta=2",
                 "--loads", "0.5,200", "--calibration", "analytical", "--num-blocks", "256",
                 "--out", str(out)]) == 0
    record = json.loads((out / "validate.json").read_text())
    assert [c["policy"] for c in record["cases"]] == ["chunked", "chunked", "nexus:beta=2", "nexus:beta=2"]
    for case in record["cases"]:
        assert case["measured"]["requests"] == case["simulated"]["requests"] == 10
        assert set(case["error_pct"]) == {"ttft_s.mean", "ttft_s.p95", "tbt_s.mean", "tbt_s.p95", "throughput_rps"}
        assert case["steps"] and all(s["n"] > 0 for s in case["steps"].values())
        assert case["trace"] == "conv"
        sat = record["saturation_rate_scale"][f"conv/{case['policy']}"]
        assert case["band"] == ("up_to_saturation" if case["rate_scale"] <= sat else "past_saturation")
    assert any(k.startswith("decode") for k in record["cases"][-1]["steps"])
    assert "| band |" in (out / "validate.md").read_text()
    assert (out / "validate_cdf.png").stat().st_size > 10_000
    steps = pd.read_csv(out / "steps.csv")
    assert set(steps["policy"]) == {"chunked", "nexus:beta=2"}
    assert (steps["measured_s"] > 0).all() and (steps["predicted_s"] >= steps["solo_s"]).all()
    for case in record["cases"]:   # the summary is the per-step table's medians
        mine = steps[(steps["policy"] == case["policy"]) & np.isclose(steps["load"], case["load"], rtol=1e-5)]
        for kind, s in case["steps"].items():
            assert s["n"] == (mine["kind"] == kind).sum()
            assert s["median_signed_pct"] == pytest.approx(mine.loc[mine["kind"] == kind, "error_pct"].median())


def test_policy_case_parses_parameters():
    case = PolicyCase.parse("nexus:beta=2,spf=false")
    assert (case.name, case.params) == ("nexus", {"beta": 2, "spf": False})
    assert case.make().beta == 2


def test_summary_bands_hold_median_errors_and_skip_held_in_cases():
    def case(band, err, held_in=False):
        keys = ["ttft_s.mean", "ttft_s.p95", "tbt_s.mean", "tbt_s.p95", "throughput_rps"]
        return {"band": band, "held_in": held_in, "error_pct": {k: err for k in keys}}
    summary = summarize_cases([case("up_to_saturation", -10.0), case("up_to_saturation", 4.0),
                               case("up_to_saturation", 50.0, held_in=True), case("past_saturation", 8.0)])
    up = summary["up_to_saturation"]
    assert up["cases"] == 2
    assert up["median_abs_pct"]["ttft_s.mean"] == pytest.approx(7.0)
    assert up["median_signed_pct"]["ttft_s.mean"] == pytest.approx(-3.0)
    assert summary["past_saturation"]["median_signed_pct"]["tbt_s.p95"] == pytest.approx(8.0)


def test_auto_loads_are_fractions_of_the_predicted_saturation(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(8, 20.0, (8, 60), (2, 8), seed=5), trace)
    out = tmp_path / "val"
    assert main(["validate", "--device", "cpu", "--model", "tiny-llama", "--gpu", "h100-sxm",
                 "--trace", str(trace), "--policy", "static", "--loads", "auto=0.6,1.5",
                 "--calibration", "analytical", "--num-blocks", "256", "--out", str(out)]) == 0
    record = json.loads((out / "validate.json").read_text())
    sat = record["saturation_rate_scale"]["t/static"]
    assert [round(c["load"], 6) for c in record["cases"]] == [0.6, 1.5]
    assert [c["rate_scale"] for c in record["cases"]] == pytest.approx([0.6 * sat, 1.5 * sat])
    assert [c["band"] for c in record["cases"]] == ["up_to_saturation", "past_saturation"]


class _ToyCost:
    """Solo time: 10 ms a step; a step stretches by 1.5 while any other step runs beside it."""
    def solo_time(self, shape, sms):
        return 0.010

    def slowdown(self, shape, sms, other, other_sms):
        return 1.5


def test_step_table_weights_each_corunner_by_its_overlap():
    from nexus.step_view import step_table
    row = dict(sms=64, prefill_tokens=0, prefill_prior_tokens=0, decode_seqs=8, decode_kv_tokens=800)
    timeline = pd.DataFrame([
        # a 100 ms prefill step, beside which ten 4 ms decode steps run (40% of it)
        dict(row, stream="prefill", start_s=0.0, end_s=0.100, prefill_tokens=2048, decode_seqs=0,
             decode_kv_tokens=0),
        *[dict(row, stream="decode", start_s=0.01 * k, end_s=0.01 * k + 0.004) for k in range(10)],
        dict(row, stream="decode", start_s=0.200, end_s=0.210),   # alone
    ])
    steps = step_table(timeline, _ToyCost())
    prefill = steps[steps["stream"] == "prefill"].iloc[0]
    assert prefill["covered"] == pytest.approx(0.4)
    assert prefill["predicted_s"] == pytest.approx(0.010 * (1 + 0.4 * 0.5))
    assert prefill["kind"] == "prefill"   # beside others for under half of it
    decodes = steps[steps["stream"] == "decode"]
    assert (decodes["kind"].iloc[:10] == "decode+corun").all()
    assert np.allclose(decodes["predicted_s"].iloc[:10], 0.015)
    assert decodes["predicted_s"].iloc[10] == pytest.approx(0.010) and decodes["kind"].iloc[10] == "decode"


def test_rescore_reproduces_a_run_on_its_own_calibration_and_needs_its_traces(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(make_trace(8, 20.0, (8, 60), (2, 8), seed=6), trace)
    run, again = tmp_path / "run", tmp_path / "again"
    common = ["--device", "cpu", "--model", "tiny-llama", "--gpu", "h100-sxm", "--calibration", "analytical"]
    assert main(["validate", *common, "--trace", f"t={trace}", "--policy", "static", "--policy", "nexus",
                 "--loads", "0.5,50", "--num-blocks", "256", "--out", str(run)]) == 0
    assert main(["validate", *common, "--rescore", str(run), "--trace", f"t={trace}", "--out", str(again)]) == 0
    before = json.loads((run / "validate.json").read_text())
    after = json.loads((again / "validate.json").read_text())
    assert after["rescored"]["from_command"] == before["command"]
    assert [c["error_pct"] for c in after["cases"]] == [c["error_pct"] for c in before["cases"]]
    for a, b in zip(after["cases"], before["cases"]):   # steps.csv keeps 7 digits
        assert a["steps"].keys() == b["steps"].keys()
        for kind in a["steps"]:
            assert a["steps"][kind]["n"] == b["steps"][kind]["n"]
            assert a["steps"][kind]["median_signed_pct"] == pytest.approx(b["steps"][kind]["median_signed_pct"],
                                                                          abs=1e-3)
    assert main(["validate", *common, "--rescore", str(run), "--trace", f"other={trace}",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nexus-real: ") and "--trace NAME=PATH for t" in err[-1]
