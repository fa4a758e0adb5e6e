"""Prefill steps of lengths the process has not run before, as a server meets them.

    python3 experiments/bench_cold_shapes.py [--out cold_shapes_h200.json]
    python3 experiments/bench_cold_shapes.py --device cpu --model tiny-llama --shapes 40:0,24:16

The roofline bench and the profile repeat every shape, so a cost paid once per new shape never
shows there. A served run meets new lengths all the time: chunked prefill's chunk is the
step's budget less its decode rows, and a prefix is whatever the chunks before it left. In
served runs on an H200, the first 2048-token chunk after each 4096+ prefix length ran 2-5x
over its price once such chunks took the cuDNN path (experiments/notes_h200_perf.md, item 11).
The engine now pads dense chunks to a few lengths and builds their graphs on each stream
thread before the run (nexus.graph_buckets.dense_shapes, ModelRunner.warm_thread); this bench
checks that a served step no longer pays. `--dense-from` moves the path's lower bound and
`--no-warm` skips the thread warm-up, to see what it saves. `--warm-up` first runs the
engine's once-a-process warm-up (real.bench.warm_up): a step's first of its kind in a process
(a kernel variant to compile, a first cuDNN run) then shows whether that warm-up covers it.

Each shape (a step's chunks, tokens:prior each, of lengths no earlier shape used) runs once in
a new thread (`first`), three more times in that thread (`repeat`, the median), and once in another new thread
(`new_thread`): a cost kept per thread comes back in every new thread (an engine's stream
threads last as long as its runner, real.stream_threads, but a new process or stream starts
one). Each new thread first warms as a stream thread does, for the
longest shape and chunk (`warm_ms`, not in the step times). Times are host wall clock around
`ModelRunner.step`, which waits for the step's tokens. `dense` says whether the shape takes the
cuDNN path (nexus.graph_buckets.runs_dense, where cuDNN works), `graph` whether a prefill graph
holds it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_real_roofline import add_dense_from, use_dense_from  # noqa: E402
import nexus.graph_buckets  # noqa: E402
from nexus.cost.base import FULL_GPU  # noqa: E402
from nexus.graph_buckets import prefill_bucket, runs_dense  # noqa: E402
from nexus.specs import GPUS, MODELS  # noqa: E402
from real.batch import Chunk  # noqa: E402
from real.bench import warm_up  # noqa: E402
from real.dense_attention import dense_attention_works  # noqa: E402
from real.gpu_info import gpu_facts  # noqa: E402
from real.model_runner import ModelRunner  # noqa: E402
from real.partitions import Partition, Partitions  # noqa: E402

# Odd lengths, so that no warm-up or earlier shape has run them: 2048-token chunks after new
# prefixes (the dense path since it takes chunks after 4096+ prefixes), other chunks after
# prefixes (graph buckets), and eager prompts of 3072+ tokens (the dense path).
SHAPES = tuple(((tokens, prior),) for tokens, prior in (
    (2048, 4160), (2048, 6240), (2000, 8320), (1900, 2100), (3100, 0), (4200, 0), (8300, 0), (3300, 2000)))
REPEATS = 3

Shape = tuple[tuple[int, int], ...]   # a step's chunks, (tokens, prior) each


def parse_shapes(text: str) -> list[Shape]:
    """TOKENS:PRIOR items, a step's chunks joined by '+', steps by ','."""
    shapes = []
    for item in text.split(","):
        chunks = []
        for chunk in item.split("+"):
            tokens, _, prior = chunk.partition(":")
            chunks.append((int(tokens), int(prior or 0)))
        shapes.append(tuple(chunks))
    return shapes


def describe(shape: Shape) -> str:
    return " + ".join(f"{tokens} after {prior}" for tokens, prior in shape)


def in_new_thread(fn) -> float:
    """Wall seconds of fn() run in a thread of its own, as an engine's stream runs it; the
    thread's exception, if any, is raised here."""
    outcome: list = []

    def body() -> None:
        t = time.perf_counter()
        try:
            fn()
        except BaseException as e:
            outcome.append(e)
            return
        outcome.append(time.perf_counter() - t)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def time_shape(runner: ModelRunner, part: Partition, shape: Shape, rng: np.random.Generator,
               warm_for: tuple[int, int | None]) -> dict:
    batch, first_block = [], 0
    for tokens, prior in shape:
        blocks = -(-(tokens + prior) // runner.block_size)
        table = list(range(first_block, first_block + blocks))
        first_block += blocks
        batch.append(Chunk(rng.integers(0, runner.spec.vocab_size, tokens).tolist(), prior, table))

    def step() -> None:
        runner.step(batch, part)

    first: list[float] = []
    repeats: list[float] = []
    warm: list[float] = []

    def warmed() -> None:
        t = time.perf_counter()
        runner.warm_thread(*warm_for)
        warm.append(time.perf_counter() - t)

    def first_then_repeats() -> None:
        warmed()
        t = time.perf_counter()
        step()
        first.append(time.perf_counter() - t)
        for _ in range(REPEATS):
            t = time.perf_counter()
            step()
            repeats.append(time.perf_counter() - t)

    in_new_thread(first_then_repeats)

    def warmed_step() -> float:
        warmed()
        t = time.perf_counter()
        step()
        return time.perf_counter() - t

    again: list[float] = []
    in_new_thread(lambda: again.append(warmed_step()))
    graphs = runner.prefill_graph_spec()
    in_graph = graphs is not None and prefill_bucket(graphs["buckets"], graphs["max_seqs"], list(shape)) is not None
    dense = (any(runs_dense(tokens, prior) for tokens, prior in shape)
             and dense_attention_works(runner.device, runner.dtype, runner.spec.head_dim))
    return {"chunks": [list(chunk) for chunk in shape], "dense": dense, "graph": in_graph,
            "first_ms": first[0] * 1e3, "repeat_ms": statistics.median(repeats) * 1e3,
            "new_thread_ms": again[0] * 1e3, "first_over_repeat": first[0] / statistics.median(repeats),
            "warm_ms": [w * 1e3 for w in warm]}


def run(args: argparse.Namespace) -> dict:
    spec = MODELS[args.model]
    use_dense_from(args.dense_from)
    shapes = parse_shapes(args.shapes) if args.shapes else list(SHAPES)
    longest = max(t + p for shape in shapes for t, p in shape)
    longest_chunk = max(t for shape in shapes for t, _ in shape)
    most_blocks = max(sum(-(-(t + p) // 16) for t, p in shape) for shape in shapes)
    parts = Partitions([], device=args.device, cpu_gpu=GPUS["h100-sxm"])   # the preset: a CPU's stand-in SMs
    part = parts.decode(FULL_GPU)
    runner = ModelRunner(spec, device=args.device, max_model_len=longest + 64, max_decode_batch=256,
                         max_batch_tokens=max(sum(t for t, _ in shape) for shape in shapes) + 256,
                         num_blocks=None if args.device == "cuda" else 2 * most_blocks)
    runner.capture_prefill_graphs([part])
    if args.warm_up:
        warm_up(runner, parts)
    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        row = time_shape(runner, part, shape, rng, (0, None) if args.no_warm else (longest, longest_chunk))
        rows.append(row)
        print(f"{describe(shape):>24}  dense {row['dense']!s:5}  graph {row['graph']!s:5}  "
              f"first {row['first_ms']:8.2f} ms  repeat {row['repeat_ms']:8.2f}  "
              f"new thread {row['new_thread_ms']:8.2f}  warm {max(row['warm_ms']):7.1f}", flush=True)
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": gpu_facts() if args.device == "cuda" else {"device": "cpu"},
            "model": spec.name, "repeats": REPEATS, "dense_min_tokens": nexus.graph_buckets.DENSE_MIN_TOKENS,
            "warm": not args.no_warm, "engine_warm_up": args.warm_up, "shapes": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--shapes", default="", help="comma list of steps, each TOKENS:PRIOR chunks joined by + "
                                                 "(default: the built-in list, one chunk a step)")
    ap.add_argument("--warm-up", action="store_true",
                    help="first run the warm-up an engine runs once per process (real.bench.warm_up)")
    add_dense_from(ap)
    ap.add_argument("--no-warm", action="store_true", help="skip the stream threads' warm-up (ModelRunner.warm_thread)")
    ap.add_argument("--out", type=Path, default=Path("cold_shapes_h200.json"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_cold_shapes needs a CUDA GPU (or --device cpu)")
    result = run(args)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
