"""experiments/steps_by_bucket.py: an engine run's prompt steps grouped by the graph they ran."""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import steps_by_bucket  # noqa: E402

GRAPHS = {"buckets": [64, 128, 512, 640], "max_seqs": 2}
# The H200 calibration shipped before the profile measured every graph bucket: it has no
# prefill point at 640 tokens, which the what-if below adds.
BEFORE_BUCKET_GRID = Path(__file__).resolve().parent.parent / \
    "experiments/results/fidelity_h200_run_previous/calibration_at_run.json"


def test_steps_group_by_the_bucket_their_chunks_and_rows_pad_to():
    steps = pd.DataFrame([
        # shape, decode rows, SMs, measured, predicted
        ("100:0", 20, 0, 1.1, 1.0),        # 120 -> 128
        ("60:0", 4, 0, 1.3, 1.0),          # 64 -> 64
        ("50:0 50:900", 20, 0, 1.2, 1.0),  # 120 -> 128
        ("600:2048", 30, 0, 2.0, 1.0),     # 630 -> 640
        ("1:0", 10, 0, 9.0, 1.0),          # a one-token chunk runs eagerly: no bucket
        ("20:0 20:0 20:0", 3, 0, 9.0, 1.0),  # more prompts than a graph takes: eager
        ("100:0", 0, 64, 9.0, 1.0),        # on a partition: not the plain stream's graphs
        ("", 32, 0, 9.0, 1.0),             # decode only
    ], columns=["prefill_shape", "decode_seqs", "sms", "measured_s", "predicted_s"])
    steps["prefill_tokens"] = [sum(int(c.split(":")[0]) for c in s.split()) for s in steps["prefill_shape"]]
    table = steps_by_bucket.by_bucket(steps, GRAPHS)
    assert table.index.tolist() == [64, 128, 640]
    assert table.loc[128, "steps"] == 2 and abs(table.loc[128, "median"] - 1.15) < 1e-9
    assert table.loc[64, "median"] == 1.3 and table.loc[640, "median"] == 2.0


def test_the_what_if_raises_the_curve_only_where_the_grid_did_not_measure(tmp_path):
    from nexus.cost.base import BatchShape
    from nexus.cost.measured import MeasuredCost
    from nexus.specs import GPUS, MODELS
    table = pd.DataFrame({"median": [1.0, 1.2, 1.3], "steps": [200, 40, 3]}, index=[512, 640, 768])
    out = tmp_path / "what_if.json"
    raised = steps_by_bucket.write_what_if(BEFORE_BUCKET_GRID, table, {512}, out)
    assert raised == [640]        # 512 was measured; 768 has too few steps
    model, gpu = MODELS["llama-3.1-8b"], GPUS["h200"]
    before = MeasuredCost.load(BEFORE_BUCKET_GRID, model, gpu)
    after = MeasuredCost.load(out, model, gpu)
    at = lambda cost, n: float(cost.solo_time(BatchShape(((n, 0),)), 0))  # noqa: E731
    assert abs(at(after, 640) / at(before, 640) - 1.2) < 0.03
    assert abs(at(after, 512) / at(before, 512) - 1.0) < 0.02
