"""experiments/bench_prefill_buckets.py: which prefill graph buckets a larger one beats, and
that the engine's bucket list keeps none of those the committed H200 run found."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import bench_prefill_buckets  # noqa: E402

from nexus.graph_buckets import PREFILL_GRAPH_BUCKETS  # noqa: E402


def test_a_bucket_slower_than_a_larger_one_is_dominated():
    times = {128: 6.0, 256: 9.0, 384: 11.0, 448: 16.8, 512: 15.0, 640: 17.7}
    assert bench_prefill_buckets.dominated(times, 0.01) == [448]


def test_dominance_looks_past_the_next_bucket_and_respects_the_margin():
    times = {256: 10.0, 384: 9.95, 512: 9.9}
    assert bench_prefill_buckets.dominated(times, 0.01) == [256]       # over 1% slower than 512 only
    assert bench_prefill_buckets.dominated(times, 0.0) == [256, 384]
    assert bench_prefill_buckets.dominated({16: 5.5, 32: 5.6}, 0.01) == []


def test_the_engine_runs_no_bucket_the_h200_run_found_dominated():
    run = json.loads((ROOT / "experiments/results/prefill_buckets_h200.json").read_text())
    full = run["partitions"]["full"]
    found = bench_prefill_buckets.dominated({int(b): t for b, t in full["ms"].items()}, run["margin"])
    assert found == full["dominated"] and found
    assert not set(found) & set(PREFILL_GRAPH_BUCKETS)
