"""Whole-GPU decode step time by process state: does a profile-like process (green contexts
and graphs for every split) or the KV blocks' placement change a decode step's time?

    python3 experiments/bench_decode_process.py --out experiments/results/decode_process_h200.json

Why: on one H200 (GPU-e41ea686) the profile's whole-GPU decode grid, and its engine replay in
the same process, ran 6% slower than the decode steps that validate and max-rate processes
served minutes later on the same board (experiments/notes_h200_perf.md, item 5). One process
times the profile's decode shapes, as the profile times them (`Profiler.time_alone`), in
four states, in this order:
1. plain: no green contexts, decode graphs on the plain stream only; blocks scattered over
   the whole cache (as the profile's grid places them);
2. plain, contiguous: the same, each sequence's blocks consecutive (as a fresh allocator
   hands them out);
3. all splits: after making every split's green contexts and capturing the engine's graphs
   on all of them (as `nexus-real profile` and its replay run); blocks scattered;
4. all splits, contiguous;
5. plain again, after all that.
With --small-cache, first a runner whose cache holds just the largest shape (256 x 1024, 10%
to spare: about a third of the default cache on an H200), freed before the others are built.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
from pathlib import Path

import torch

from nexus.specs import MODELS
from real.batch import Chunk
from real.bench import capture_all_graphs
from real.gpu_detect import detect_gpu
from real.gpu_info import gpu_facts
from real.model_runner import ModelRunner
from real.partitions import Partitions
from real.profile import Grid, Profiler, decode_contexts

SHAPES = ((1, 512), (16, 512), (64, 2048), (128, 512), (256, 1024))


def contiguous_batch(prof: Profiler, batch: int, context: int) -> list[Chunk]:
    """`batch` decode rows shaped as the profile shapes them, each sequence's blocks consecutive
    and the sequences one after another from block 0."""
    bs = prof.runner.block_size
    chunks, at = [], 0
    for c in decode_contexts(prof.contexts, batch, context):
        n = -(-c // bs)
        chunks.append(Chunk([1], c - 1, list(range(at, at + n))))
        at += n
    return chunks


def time_shapes(prof: Profiler, part, contiguous: bool) -> dict[str, float]:
    make = (lambda b, c: contiguous_batch(prof, b, c)) if contiguous else prof.decode_batch
    return {f"{b}x{c}": round(prof.time_alone(make(b, c), part) * 1e3, 4) for b, c in SHAPES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--small-cache", action="store_true", help="also time on a runner with a small KV cache")
    args = ap.parse_args(argv)

    model, gpu = MODELS["llama-3.1-8b"], detect_gpu(None, "cuda")
    result = {"command": "python3 " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "machine": gpu_facts(), "repeats": args.repeats, "contexts": Grid.decode_contexts,
              "ms": {}}

    def record(state: str, times: dict[str, float]) -> None:
        result["ms"][state] = times
        print(state, times, flush=True)

    plain = Partitions([], device="cuda")
    if args.small_cache:   # first, so that its memory is back before the big cache is sized
        blocks = int(1.1 * max(b * c // 16 + b for b, c in SHAPES))   # a shape's contexts sum to b x c
        small = ModelRunner(model, device="cuda", max_decode_batch=256, num_blocks=blocks)
        small.capture_graphs([plain.decode(0)])
        result["small_cache_blocks"] = blocks
        record("small cache", time_shapes(Profiler(small, plain, args.repeats), plain.decode(0), False))
        del small
        gc.collect()
        torch.cuda.empty_cache()

    runner = ModelRunner(model, device="cuda", max_decode_batch=256)
    result["num_blocks"] = runner.num_blocks
    runner.capture_graphs([plain.decode(0)])
    prof = Profiler(runner, plain, args.repeats)
    record("plain", time_shapes(prof, plain.decode(0), False))
    record("plain, contiguous", time_shapes(prof, plain.decode(0), True))

    every = Partitions(gpu.partition_sizes(), device="cuda")
    capture_all_graphs(runner, every)
    prof = Profiler(runner, every, args.repeats)
    record("all splits", time_shapes(prof, every.decode(0), False))
    record("all splits, contiguous", time_shapes(prof, every.decode(0), True))
    record("plain again", time_shapes(prof, plain.decode(0), False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
