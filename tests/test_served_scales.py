"""A refit writes the served scales of its own fit: from the engine replay the profile left
beside the calibration, or none at all (nexus.cost.served)."""
import json
import shutil

import pytest

from nexus.cost import CALIBRATIONS_DIR
from nexus.cost.fit import main as fit_main
from nexus.cost.served import replay_path

SHIPPED = CALIBRATIONS_DIR / "h200__llama-3.1-8b.json"


def engine_of(path) -> dict:
    return json.loads(path.read_text())["engine"]


def test_a_refit_measures_the_scales_again_from_the_replay_beside_the_file(tmp_path, capsys):
    cal = tmp_path / "cal.json"
    shutil.copy(SHIPPED, cal)
    shutil.copy(replay_path(SHIPPED), replay_path(cal))
    data = json.loads(cal.read_text())
    data["engine"]["corun_scale"]["decode"] = 1.9   # stale: not what this replay says
    cal.write_text(json.dumps(data))
    assert fit_main([str(cal)]) == 0
    assert "served co-run steps over the model" in capsys.readouterr().out
    shipped, refit = engine_of(SHIPPED), engine_of(cal)
    for key, parts in (("decode_scale", ("plain", "partitions")), ("corun_scale", ("prefill", "decode"))):
        assert refit[key]["steps"] == shipped[key]["steps"]
        for part in parts:   # the replay's CSV keeps 7 digits
            assert refit[key][part] == pytest.approx(shipped[key][part], abs=1e-3)


def test_a_refit_without_a_replay_keeps_no_stale_scale(tmp_path):
    cal = tmp_path / "cal.json"
    shutil.copy(SHIPPED, cal)
    assert fit_main([str(cal)]) == 0
    engine = engine_of(cal)
    assert "corun_scale" not in engine and "decode_scale" not in engine
    assert engine["step_gap_s"] == engine_of(SHIPPED)["step_gap_s"]


def test_a_malformed_replay_is_named_and_exits_2(tmp_path, capsys):
    cal = tmp_path / "cal.json"
    shutil.copy(SHIPPED, cal)
    replay_path(cal).write_bytes(b"not gzip")
    before = cal.read_text()
    assert fit_main([str(cal)]) == 2
    err = capsys.readouterr().err
    assert "cal.replay.csv.gz" in err and err.count("\n") == 1
    assert cal.read_text() == before   # nothing written


def test_the_shipped_scales_applied_leave_the_replay_unbiased():
    """What the scales promise: priced by the shipped model, served scales included, the
    profile's own replay reads a median measured/predicted of 1 for each kind of step. (A
    plain stream capped at scaled-down partitions once read 1.059 here.)"""
    import pandas as pd

    from nexus.cost import load_cost_model
    from nexus.cost.served import read_replay
    from nexus.specs import GPUS, MODELS
    from nexus.step_view import corun_scale, decode_scale, step_table

    cost = load_cost_model(MODELS["llama-3.1-8b"], GPUS["h200"], str(SHIPPED))
    steps = pd.concat([step_table(tl, cost) for tl in read_replay(SHIPPED)], ignore_index=True)
    decode, corun = decode_scale(steps), corun_scale(steps)
    for ratio in (decode["plain"], decode["partitions"], corun["prefill"], corun["decode"]):
        assert ratio == pytest.approx(1.0, abs=0.01)
