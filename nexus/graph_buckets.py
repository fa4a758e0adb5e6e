"""Which steps the engine replays as CUDA graphs, padded to which size: one rule for the
engine (real/graphs.py, real/prefill_graphs.py) and the cost model that predicts its steps.

A decode step of n sequences runs the graph of the smallest bucket holding n. A prefill step
runs the graph of the smallest token bucket holding its tokens if it has at most
PREFILL_GRAPH_MAX_SEQS chunks, each of at least 2 tokens and none that runs dense
(`runs_dense`); on the plain stream a chunked-prefill step's decode rows count as one token
each. Anything else runs eagerly.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Mapping, Sequence

DECODE_GRAPH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
# Finer where padding is dear: above 128 tokens the matmuls start to be compute-bound; above
# 512 a step of 128 tokens keeps the padding under 13% (6% at 2k). Buckets past 512 exist on
# the plain stream only, where they also hold chunked-prefill steps (prompt chunks with decode
# rows); green partitions replay prefill-only graphs of up to GREEN_MAX_TOKENS tokens.
# These are candidates: a bucket whose graph a GPU runs slower than a larger bucket's only
# costs time (pad past it instead), and which ones do is the GPU's and its BLAS heuristics'
# business, not this list's. On the H200, 448 ran 16.8 ms against 512's 15.0 on the whole
# GPU and 30.9 against 21.5 on 64 SMs (experiments/bench_prefill_buckets.py). So the profile
# times every bucket, records those slower than a larger one in the calibration
# (engine.prefill_graphs.dropped), and the engine and the simulator both leave them out.
PREFILL_GRAPH_BUCKETS = (16, 32, 64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1152, 1280,
                         1408, 1536, 1664, 1792, 1920, 2048, 2176, 2304)
# Slower than a larger bucket by more than this fraction: the profile's median of five steps
# strays about 1% between runs.
DOMINANCE_MARGIN = 0.01
GREEN_MAX_TOKENS = 512
PREFILL_GRAPH_MAX_SEQS = 16
# Prompt chunks whose attention would run on cuDNN in eager steps (real.dense_attention)
# rather than on the paged Triton kernel the graphs hold: chunks of at least this many tokens,
# or none while it is None. Off for served steps. One layer's attention on three H200 boards,
# cuDNN against Triton (experiments/results/prefill_attention_h200{,_board1,_board2}.json): 8k
# 1.28-1.42x, 16k 1.46-1.58x, 4k 0.96-1.08x, 2k 0.60-1.08x; 2k after 8k 1.19-1.42x. With it on
# from 3072 tokens, the roofline's 4k and 8k prompts ran 3-6% faster. But cuDNN builds an
# execution graph for each new pair of lengths, and PyTorch keeps those graphs per thread
# (aten/src/ATen/native/cudnn/MHA.cpp, getMHAGraphCache_), while an engine makes its stream
# threads anew for each run. With 2k chunks after 4k+ prefixes on the path, the first such step
# of each pair of lengths in a served run took 2-5x its graph's time (2048 after 4096: 145-310
# ms against 57; notes_h200_perf.md, item 11); a bench that repeats one shape pays the build
# once. Prefill-first's default 8192-token budget would meet a new length with nearly every
# prompt. Bounded lengths (padding the own-keys causal call, which a top-left mask keeps
# exact) and graphs built on each stream thread before its run are what it would take;
# experiments/bench_cold_shapes.py measures the cost, and --dense-from turns it on in the benches.
DENSE_MIN_TOKENS: int | None = None


def bucket_for(buckets: Sequence[int], n: int) -> int | None:
    """The smallest of the sorted `buckets` that holds n, or None if none does."""
    i = bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


def runs_dense(tokens: int, prior: int) -> bool:
    """Whether a prompt chunk of `tokens` after `prior` cached tokens takes the dense attention
    path, which only eager steps run (never while DENSE_MIN_TOKENS is None: see above)."""
    return DENSE_MIN_TOKENS is not None and tokens >= DENSE_MIN_TOKENS


def prefill_bucket(buckets: Sequence[int], max_seqs: int, chunks: Sequence[tuple[int, int]],
                   decode_rows: int = 0) -> int | None:
    """The token bucket a step of prompt chunks, (tokens, prior) each, and `decode_rows` decode
    rows replays, or None (eager)."""
    if (not buckets or len(chunks) > max_seqs or any(n < 2 for n, _ in chunks)
            or any(runs_dense(n, prior) for n, prior in chunks)):
        return None
    return bucket_for(buckets, sum(n for n, _ in chunks) + decode_rows)


def dominated(times: Mapping[int, float], margin: float = DOMINANCE_MARGIN) -> list[int]:
    """The buckets (keys of `times`, a step time each) slower than some larger bucket by more
    than `margin`, a fraction: padding such a step up to the larger bucket is faster."""
    sizes = sorted(times)
    return [b for i, b in enumerate(sizes)
            if any(times[b] > times[larger] * (1 + margin) for larger in sizes[i + 1:])]


def prefill_buckets_without(dropped: Iterable[int]) -> tuple[int, ...]:
    """The prefill graph buckets the engine captures, less those a profile dropped."""
    gone = set(dropped)
    return tuple(b for b in PREFILL_GRAPH_BUCKETS if b not in gone)
