"""One source each for what the engine and the cost model must agree on, and calibration identity."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nexus.graph_buckets

from nexus.cost import BatchShape, CostModel, load_cost_model
from nexus.cost.analytical import AnalyticalCost
from nexus.cost.calibration import content_digest, read_calibration, write_calibration
from nexus.cost.measured import MeasuredCost
from nexus.errors import UserError
from nexus.graph_buckets import (DECODE_GRAPH_BUCKETS, PREFILL_GRAPH_BUCKETS, PREFILL_GRAPH_MAX_SEQS,
                                 bucket_for, prefill_bucket)
from nexus.partition_sizes import grantable_sizes
from nexus.specs import GPUS, MODELS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "nexus" / "cost" / "calibrations" / "h100-sxm__llama-3.1-8b.json"
LLAMA8, H100 = MODELS["llama-3.1-8b"], GPUS["h100-sxm"]


def test_cost_modules_import_without_a_loop():
    code = ("import sys; import nexus.cost.terms; assert 'nexus.cost.fit' not in sys.modules; "
            "import nexus.cost.measured; assert 'nexus.cost.fit' not in sys.modules; import nexus.cost.fit")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_interface_declares_what_its_users_call():
    for name in ("solo_time", "slowdown", "memory_demand", "step_overhead", "describe"):
        assert hasattr(CostModel, name), name
        assert callable(getattr(AnalyticalCost, name)) and callable(getattr(MeasuredCost, name))


def test_engine_graphs_use_the_shared_buckets():
    pytest.importorskip("torch")
    import real.graphs
    import real.prefill_graphs
    assert real.graphs.DEFAULT_BUCKETS == DECODE_GRAPH_BUCKETS
    assert real.prefill_graphs.PREFILL_GRAPH_BUCKETS == PREFILL_GRAPH_BUCKETS
    assert real.prefill_graphs.MAX_SEQS == PREFILL_GRAPH_MAX_SEQS


def test_cost_model_pads_as_the_bucket_rule_says(monkeypatch):
    cost = load_cost_model(LLAMA8, H100)
    pre, dec = cost.engine["prefill_graphs"], cost.engine["decode_graphs"]
    for shape in ([(100, 0)], [(3, 0), (40, 0), (57, 0)], [(1, 0), (60, 0)], [(600, 0)], [(2, 0)] * 17,
                  [(300, 0), (200, 0)], [(2048, 0)], [(2048, 8192)], [(1024, 8192), (64, 0)], [(4096, 0)]):
        tokens = sum(n for n, _ in shape)
        bucket = prefill_bucket(sorted(pre["buckets"]), pre["max_seqs"], shape)
        assert cost._padded_tokens(tuple(shape), tokens) == (bucket or tokens)
    buckets = sorted(pre["buckets"])
    assert prefill_bucket(buckets, pre["max_seqs"], [(100, 0)]) == 128
    assert prefill_bucket(buckets, pre["max_seqs"], [(1, 0), (60, 0)]) is None     # a 1-token chunk: eager
    assert prefill_bucket(buckets + [2048], pre["max_seqs"], [(2047, 8192)]) == 2048
    assert prefill_bucket(buckets + [2048], pre["max_seqs"], [(2048, 8192)]) is None    # runs dense: eager
    assert prefill_bucket(buckets + [4096], pre["max_seqs"], [(4096, 0)]) is None      # runs dense: eager
    assert prefill_bucket(buckets + [4096], pre["max_seqs"], [(4096, 1)]) == 4096      # after a prefix: not dense
    monkeypatch.setattr(nexus.graph_buckets, "DENSE_MIN_TOKENS", None)
    assert prefill_bucket(buckets + [4096], pre["max_seqs"], [(4096, 0)]) == 4096      # the dense path off
    for seqs, bucket in ((72, 96), (3, 4), (200, 224)):
        assert bucket_for(sorted(dec["buckets"]), seqs) == bucket
        # Padded rows run the bucket's matmuls and read no KV: the same time as the full bucket.
        assert cost.solo_time(BatchShape((), seqs, seqs * 500), 0) == \
            cost.solo_time(BatchShape((), bucket, seqs * 500), 0)


def test_partition_sizes_have_one_rule():
    pytest.importorskip("torch")
    from real.partitions import Partitions
    for gpu in GPUS.values():
        assert gpu.partition_sizes() == grantable_sizes(gpu.num_sms, gpu.sm_min, gpu.sm_step, gpu.usable_min_sms)
        parts = Partitions([], device="cpu", cpu_gpu=gpu)
        assert parts.sizes() == grantable_sizes(gpu.num_sms, gpu.sm_min, gpu.sm_step)
        assert set(gpu.partition_sizes()) <= set(parts.sizes())
    assert grantable_sizes(132, 8, 8, 16)[0] == 16 and grantable_sizes(132, 8, 8, 16)[-1] == 116 - 4


def test_loading_never_fits_silently(tmp_path):
    data = read_calibration(SHIPPED)
    del data["fit"], data["fit_error"]
    path = tmp_path / "unfitted.json"
    write_calibration(data, path)
    with pytest.raises(UserError, match="no fit yet.*python -m nexus.cost.fit"):
        load_cost_model(LLAMA8, H100, path)


def test_writing_new_contents_gives_a_new_identity(tmp_path):
    path = tmp_path / "c.json"
    shutil.copy(SHIPPED, path)
    data = read_calibration(path)
    before = (data["created"], content_digest(data))
    write_calibration(data, path)                       # same contents: same identity
    assert read_calibration(path)["created"] == before[0]
    data["engine"]["step_gap_s"] = 0.0002
    write_calibration(data, path)
    after = read_calibration(path)
    assert after["created"] > before[0] and content_digest(after) != before[1]
    cost = MeasuredCost.load(path, LLAMA8, H100)
    assert cost.describe()["digest"] == content_digest(after) != before[1]


def test_fit_gap_restamps_the_calibration_it_rewrites(tmp_path):
    path = tmp_path / "c.json"
    data = read_calibration(SHIPPED)
    data["engine"]["step_gap_s"] = 0.0009               # not what the held-in runs give
    path.write_text(json.dumps(data))
    runs = [str(ROOT / "experiments" / "results" / f) for f in
            ("fidelity_real_chunked.json", "fidelity_real_static_sharegpt.json", "fidelity_real_nexus.json")]
    subprocess.run([sys.executable, "experiments/fidelity.py", "fit-gap", *runs, "--calibration", str(path)],
                   check=True, cwd=ROOT, capture_output=True)
    rewritten = read_calibration(path)
    assert rewritten["engine"]["step_gap_s"] != 0.0009
    assert rewritten["created"] > data["created"] and content_digest(rewritten) != content_digest(data)


def test_chunked_prefill_steps_pad_as_their_graph_does():
    """A chunk beside decode rows replays the graph of the bucket holding both (each row one
    token) where the calibration's engine captured such graphs, and runs unpadded otherwise."""
    h200 = load_cost_model(LLAMA8, GPUS["h200"])
    rows = h200.engine["prefill_graphs"]["decode_rows"]
    assert rows > 0
    assert h200._padded_tokens(((512, 0),), 512, 1) == 640
    assert h200._padded_tokens(((2048, 0),), 2048, 256) == 2304
    assert h200._padded_tokens(((2048, 0),), 2048, 257) == 2048 + 257      # past the buckets: eager
    assert h200._padded_tokens(((100, 0),), 100, rows + 1) == 100 + rows + 1   # more rows than captured
    # One token past the 512 bucket runs the 640 one: a quarter more matmul work.
    fits, spills = BatchShape(((496, 0),), 16, 16 * 300), BatchShape(((497, 0),), 16, 16 * 300)
    assert h200.solo_time(spills, 0) > 1.1 * h200.solo_time(fits, 0)
    h100 = load_cost_model(LLAMA8, H100)   # profiled before chunked-prefill steps had graphs
    assert "decode_rows" not in h100.engine["prefill_graphs"]
    assert h100._padded_tokens(((100, 0),), 100, 8) == 108
