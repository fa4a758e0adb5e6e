"""Where a graph step's host time goes: each host part of `ModelRunner.step`, timed on the host
clock around the call, for back-to-back decode and mixed steps (Llama-3.1-8B shapes, random bf16).

    python3 experiments/probe_host_step.py [--steps 60] [--out host_step_h200.json]

Parts: `validate`, the graph's `bucket_for`, `_host_free` (waits for the previous replay),
filling the pinned host buffer (`_fill_host`, or the decode graph's tables, token layout and
`_schedule`), `graph.replay()` (the CUDA graph launch call), the LM head and argmax launches,
and `_wait` (the stream synchronise, which holds the GPU work itself). `other` is the rest of
the step's wall time: Python between the parts. A probe, not a benchmark of record: each
wrapper adds about a microsecond.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import real.model_runner as model_runner  # noqa: E402
from bench_real_roofline import Shapes  # noqa: E402
from nexus.cost.base import FULL_GPU  # noqa: E402
from nexus.specs import MODELS  # noqa: E402
from real.graphs import DecodeGraphs, StepGraphs  # noqa: E402
from real.gpu_info import gpu_facts  # noqa: E402
from real.model import Transformer  # noqa: E402
from real.partitions import Partitions  # noqa: E402
from real.prefill_graphs import PrefillGraphs  # noqa: E402

SHAPES = (("decode", 64, 1024), ("decode", 256, 1024), ("mixed", 256, 32), ("mixed", 256, 256),
          ("mixed", 1024, 128))


class PartTimer:
    """Accumulates host seconds per named part within the current step."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        timer = self

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timer.step[label] += time.perf_counter() - t0

        setattr(owner, name, timed)

    @contextmanager
    def one_step(self, into: list[dict]):
        self.step = defaultdict(float)
        t0 = time.perf_counter()
        yield
        wall = time.perf_counter() - t0
        parts = {k: v * 1e3 for k, v in self.step.items()}
        parts["other"] = wall * 1e3 - sum(parts.values())
        parts["wall"] = wall * 1e3
        into.append(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("host_step_h200.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("probe_host_step needs a CUDA GPU")
    spec = MODELS["llama-3.1-8b"]
    full = Partitions([64], device="cuda").decode(FULL_GPU)
    runner = model_runner.ModelRunner(spec, device="cuda", max_model_len=4096 + 64, max_decode_batch=256,
                                      max_batch_tokens=2304 + 256)
    runner.capture_graphs([full])
    runner.capture_prefill_graphs([full])

    timer = PartTimer()
    timer.wrap(model_runner, "validate", "validate")
    timer.wrap(PrefillGraphs, "bucket_for", "bucket_for")
    timer.wrap(DecodeGraphs, "bucket_for", "bucket_for")
    timer.wrap(StepGraphs, "_host_free", "host_free")
    timer.wrap(PrefillGraphs, "_fill_host", "fill")
    timer.wrap(DecodeGraphs, "_pad_rows", "fill")
    timer.wrap(DecodeGraphs, "_schedule", "fill")
    timer.wrap(torch.cuda.CUDAGraph, "replay", "replay")
    timer.wrap(Transformer, "compute_logits", "lm_head")
    timer.wrap(torch.Tensor, "argmax", "lm_head")
    timer.wrap(model_runner.ModelRunner, "_wait", "wait")
    timer.wrap(torch.Tensor, "tolist", "tolist")

    shapes = Shapes(runner, {}, args.steps, 1.0)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": gpu_facts(), "shapes": []}
    for kind, a, b in SHAPES:
        if kind == "decode":
            batch, _ = shapes._decode_chunks([b] * a)
        else:
            ctx = np.linspace(256, 1792, b).astype(int).tolist()
            decodes, _ = shapes._decode_chunks(ctx)
            (table,), _ = shapes._tables([a])
            batch = [shapes._prompt(a, 0, table), *decodes]
        for _ in range(5):
            runner.step(batch, full)
        steps: list[dict] = []
        for _ in range(args.steps):
            with timer.one_step(steps):
                runner.step(batch, full)
        medians = {k: statistics.median(s.get(k, 0.0) for s in steps) for k in steps[0]}
        row = {"kind": kind, "shape": [a, b], "median_ms": medians}
        result["shapes"].append(row)
        print(kind, a, b, "  ".join(f"{k} {v:.3f}" for k, v in medians.items()), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
