"""The profiler's bookkeeping on CPU: a tiny grid is measured, written, resumed and fitted."""
import json

import pytest

pytest.importorskip("torch")

from nexus.cost.calibration import read_calibration  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.partitions import Partitions  # noqa: E402
from real.profile import Grid, profile  # noqa: E402

TINY_GRID = Grid(prefill=((16, 0), (64, 0), (32, 64)), decode=((1, 32), (4, 64), (8, 32)),
                 corun_splits=(64,), corun_prefill=((32, 0),), corun_decode=((4, 32),),
                 mixed_prefill=((16, 0), (32, 16)), mixed_decode=((2, 32), (8, 32)))


def test_profile_writes_a_valid_resumable_calibration(tmp_path):
    model, gpu = MODELS["tiny-llama"], GPUS["h100-sxm"]
    runner = ModelRunner(model, device="cpu", num_blocks=64)
    parts = Partitions([32, 64, 96], device="cpu", cpu_gpu=gpu)
    out = tmp_path / "cal.json"
    profile(runner, parts, model, gpu, out, ["prefill"], "test", repeats=1, grid=TINY_GRID, log=lambda m: None)
    first = read_calibration(out)
    assert len(first["measurements"]["prefill"]) == 4 * 3     # FULL + three partitions
    assert not first["measurements"]["decode"]
    assert "fit" not in first                                  # nothing to fit decode with yet
    profile(runner, parts, model, gpu, out, ["prefill", "decode", "corun", "mixed"], "test", repeats=1,
            grid=TINY_GRID, log=lambda m: None)
    data = read_calibration(out)
    assert data["measurements"]["prefill"] == first["measurements"]["prefill"]   # resumed, not redone
    assert len(data["measurements"]["decode"]) == 4 * 3
    assert {r["sms"] for r in data["measurements"]["decode"]} == {0, 100, 68, 36}
    (corun,) = data["measurements"]["corun"]
    assert corun["prefill"]["sms"] == 64 and corun["decode"]["sms"] == 68
    assert len(data["measurements"]["mixed"]) == 4 and {r["sms"] for r in data["measurements"]["mixed"]} == {0}
    assert set(data["fit"]["mixed"]) == {"const_s", "per_seq_s"}
    assert all(r["time_s"] > 0 for r in data["measurements"]["prefill"] + data["measurements"]["decode"])
    assert "fit" in data and set(data["fit_error"]) >= {"prefill", "decode", "corun_slowdown"}
    assert json.loads(out.read_text())["model"]["name"] == "tiny-llama"
