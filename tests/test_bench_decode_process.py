"""experiments/bench_decode_process.py on CPU: its contiguous decode batches are the profile's
shapes with each sequence's blocks consecutive, and the runner steps them."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import bench_decode_process  # noqa: E402

from nexus.specs import GPUS, MODELS  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.partitions import Partitions  # noqa: E402
from real.profile import Profiler  # noqa: E402


def test_contiguous_batches_keep_the_profile_shape_in_consecutive_blocks():
    runner = ModelRunner(MODELS["tiny-llama"], device="cpu", num_blocks=256)
    parts = Partitions([], device="cpu", cpu_gpu=GPUS["h100-sxm"])
    prof = Profiler(runner, parts, repeats=1)
    batch = bench_decode_process.contiguous_batch(prof, 8, 40)
    scattered = prof.decode_batch(8, 40)
    assert [c.end for c in batch] == [c.end for c in scattered]
    blocks = [b for c in batch for b in c.block_table]
    assert blocks == list(range(len(blocks)))                 # consecutive, none shared
    for c in batch:
        assert len(c.block_table) == -(-c.end // runner.block_size)
    assert len(runner.step(batch, parts.decode(0))) == 8
