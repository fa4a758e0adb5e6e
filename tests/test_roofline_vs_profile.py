"""experiments/roofline_vs_profile.py: a roofline result priced by the calibration's model."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import roofline_vs_profile  # noqa: E402

from nexus.cost import FULL_GPU, BatchShape, load_cost_model  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402

ROOFLINE = ROOT / "experiments/results/real_roofline_h200.json"


def test_every_shape_is_priced_as_the_simulator_prices_that_step(tmp_path):
    out = tmp_path / "report.json"
    assert roofline_vs_profile.main([str(ROOFLINE), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    measured = json.loads(ROOFLINE.read_text())["shapes"]
    assert len(report["shapes"]) == len(measured)
    cost = load_cost_model(MODELS["llama-3.1-8b"], GPUS["h200"])
    for row, got in zip(measured, report["shapes"]):
        sms = FULL_GPU if row["sms"] == 132 else row["sms"]
        if row["kind"] == "decode":
            shape = BatchShape((), row["batch"], row["kv_tokens"])
        elif row["kind"] == "prefill":
            shape = BatchShape(((row["tokens"], row["prior"]),))
        else:
            continue
        assert got["predicted_ms"] == pytest.approx(cost.solo_time(shape, sms) * 1e3, abs=1e-3)
        assert got["wall_over_predicted"] == pytest.approx(row["wall_ms"] / got["predicted_ms"], rel=1e-3)
    mixed = [s for s in report["shapes"] if s["kind"] == "mixed"]
    # More decode rows beside the same chunk cost more.
    for chunk in {s["chunk"] for s in mixed}:
        times = [s["predicted_ms"] for s in sorted(mixed, key=lambda s: s["decode_rows"]) if s["chunk"] == chunk]
        assert times == sorted(times)
    on_parts = [s["wall_over_predicted"] for s in report["shapes"] if s["sms"] != 132]
    assert report["median_wall_over_predicted_on_partitions"] == pytest.approx(sorted(on_parts)[len(on_parts) // 2])


def test_a_result_that_is_not_a_roofline_is_named_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shapes": []}))
    assert roofline_vs_profile.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json" in err[0]
