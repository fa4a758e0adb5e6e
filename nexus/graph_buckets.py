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
# Prompts whose attention runs on cuDNN in eager steps (real.dense_attention) rather than on
# the paged Triton kernel the graphs hold: a first chunk (nothing cached before it) of
# DENSE_MIN_TOKENS to DENSE_MAX_TOKENS tokens; None turns the path off. One layer's attention
# on three H200 boards, cuDNN against Triton (experiments/results/prefill_attention_h200{,_board1,
# _board2}.json): 8k 1.28-1.42x, 16k 1.46-1.58x, 4k 0.96-1.08x, 2k 0.60-1.08x; whole eager steps
# on GPU-5c946a6f (experiments/results/cold_shapes_h200_off.json against _unpadded3072.json,
# repeats) 3100 tokens 2.5% faster, 4200 4.5%, 8300 5.8%.
#
# cuDNN builds an execution graph for each new shape, 40-60 ms on an H200, and PyTorch keeps
# those graphs per thread (aten/src/ATen/native/cudnn/MHA.cpp, getMHAGraphCache_), and a
# stream's thread meets new shapes all along: on GPU-5c946a6f each dense step's first
# call in a new thread ran 39-50 ms over its repeats (98 ms with a prefix: two graphs;
# cold_shapes_h200_unpadded3072.json). A served run meets new lengths all the time, and paid
# 2-5x a step for each (notes_h200_perf.md, item 11). So cuDNN sees lengths
# from a small set only, `dense_length`: a chunk's queries and keys are padded at the end to
# the next of them, which a top-left causal mask keeps exact (padded keys come after every real
# query), and each stream thread builds the set's graphs up to the longest chunk its run can
# form (its longest prompt, or the policy's chunk_limit) before the run's clock starts
# (real.engine; the threads are the runner's, real.stream_threads, so later runs find them
# built). The set holds 37 lengths up to 16k tokens (about 2 s of builds a thread) and 53 up
# to the cap, which bounds the warm-up; longer prompts stay on Triton.
#
# Chunks after a prefix: DENSE_AFTER_TOKENS tokens after DENSE_AFTER_PRIOR or more cached ones
# (one layer on an H200: 2k after 8k 1.19x, 4k after 4k 1.22x; 512 after 4k 0.49x,
# prefill_attention_h200.json). Their prefix call has no causal mask to hide padded keys, so it
# covers the prefix only up to `prefix_cut` (a dense length at or below it), its queries padded
# at the end; the rest of the prefix, under a sixteenth of it, goes before the chunk's own keys
# in the causal call, queried by as many zero rows put in front (a top-left causal mask then
# shows each real query that whole rest, and its own keys up to itself). Both calls' lengths
# come from the same small set, and the prefix calls add a graph per (chunk length, prefix cut)
# pair: 29 up to 16k-token prompts with the shipped policies' 2048-token chunks.
DENSE_MIN_TOKENS: int | None = 3072
DENSE_MAX_TOKENS = 32768
DENSE_AFTER_PRIOR = 4096
DENSE_AFTER_TOKENS = (2048, 4096)


def bucket_for(buckets: Sequence[int], n: int) -> int | None:
    """The smallest of the sorted `buckets` that holds n, or None if none does."""
    i = bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


def runs_dense(tokens: int, prior: int) -> bool:
    """Whether a prompt chunk of `tokens` after `prior` cached tokens takes the dense attention
    path, which only eager steps run (see DENSE_MIN_TOKENS)."""
    if DENSE_MIN_TOKENS is None or prior + tokens > DENSE_MAX_TOKENS:
        return False
    if prior == 0:
        return tokens >= DENSE_MIN_TOKENS
    return prior >= DENSE_AFTER_PRIOR and DENSE_AFTER_TOKENS[0] <= tokens <= DENSE_AFTER_TOKENS[1]


def dense_length(tokens: int) -> int:
    """The length a dense chunk of `tokens` is padded to: the next multiple of 256, or of a
    sixteenth of the power of two at or below it where that is larger. Padding at most 1/16
    keeps the padded attention (quadratic in length) within 13% of the chunk's own, about 1%
    of an 8k prompt's step, and the set small."""
    step = _dense_step(tokens)
    return -(-tokens // step) * step


def prefix_cut(prior: int) -> int:
    """How much of a dense chunk's prefix of `prior` tokens its unmasked prefix call covers: the
    largest dense length at or below it (0 under 256); the rest joins the chunk's causal call."""
    step = _dense_step(prior) if prior else 256
    return prior // step * step


def _dense_step(tokens: int) -> int:
    return max(256, (1 << (tokens.bit_length() - 1)) // 16)


def dense_lengths(longest: int, shortest: int | None = None) -> list[int]:
    """Every length `dense_length` gives from `shortest` (DENSE_MIN_TOKENS by default) to
    `longest` tokens: by default the own-keys lengths of first chunks up to `longest`."""
    if DENSE_MIN_TOKENS is None:
        return []
    lengths = []
    n = DENSE_MIN_TOKENS if shortest is None else shortest
    while n <= min(longest, DENSE_MAX_TOKENS):
        lengths.append(dense_length(n))
        n = lengths[-1] + 1
    return lengths


def dense_shapes(longest_prompt: int, chunk_limit: int | None) -> tuple[list[int], list[tuple[int, int]]]:
    """The cuDNN graphs a thread needs for prompts of up to `longest_prompt` tokens cut into
    chunks of up to `chunk_limit` (None: whole prompts, so never a chunk after a prefix): the
    own-keys calls' lengths, and the prefix calls' (queries, keys) pairs."""
    longest_chunk = longest_prompt if chunk_limit is None else min(chunk_limit, longest_prompt)
    own = set(dense_lengths(longest_chunk))   # empty, like every list below, with the path off
    if chunk_limit is None:
        return sorted(own), []
    low, high = DENSE_AFTER_TOKENS
    high = min(high, longest_chunk, longest_prompt - DENSE_AFTER_PRIOR)
    if high < low:
        return sorted(own), []
    longest_prior = longest_prompt - low
    # The rest of a prefix past its cut is under its step, which grows with the prefix.
    own.update(dense_lengths(high + _dense_step(longest_prior) - 1, low))
    cuts = dense_lengths(longest_prior, prefix_cut(DENSE_AFTER_PRIOR))
    return sorted(own), [(q, cut) for q in dense_lengths(high, low) for cut in cuts]


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
