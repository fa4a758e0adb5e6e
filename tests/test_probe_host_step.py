"""experiments/probe_host_step.py's part timer on CPU: the parts it wraps are charged to the
step they ran in, and with `other` they add up to the step's wall time."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import probe_host_step  # noqa: E402

import real.model_runner as model_runner  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from real.batch import Chunk  # noqa: E402
from real.model import Transformer  # noqa: E402
from real.partitions import Partitions  # noqa: E402


def test_part_timer_charges_each_wrapped_call_to_its_step(monkeypatch):
    # Restored after the test: the timer replaces these attributes for good.
    monkeypatch.setattr(model_runner, "validate", model_runner.validate)
    monkeypatch.setattr(Transformer, "compute_logits", Transformer.compute_logits)
    runner = model_runner.ModelRunner(MODELS["tiny-llama"], device="cpu", num_blocks=64)
    part = Partitions([], device="cpu", cpu_gpu=GPUS["h100-sxm"]).decode(0)
    timer = probe_host_step.PartTimer()
    timer.wrap(model_runner, "validate", "validate")
    timer.wrap(Transformer, "compute_logits", "lm_head")
    batch = [Chunk([1, 2, 3, 4, 5], 0, [0]), Chunk([7], 20, [1, 2])]
    steps: list[dict] = []
    for _ in range(2):
        with timer.one_step(steps):
            runner.step(batch, part)
    with timer.one_step(steps):
        pass
    assert len(steps) == 3
    for s in steps[:2]:
        assert s["validate"] > 0 and s["lm_head"] > 0
        assert s["other"] >= 0
        assert s["validate"] + s["lm_head"] + s["other"] == pytest.approx(s["wall"])
    assert set(steps[2]) == {"other", "wall"}      # nothing ran: nothing charged
