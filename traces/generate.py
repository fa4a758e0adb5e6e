"""From lengths and an arrival process to trace entries, one function per source."""
from __future__ import annotations

import numpy as np

from traces.arrivals import arrival_times
from traces.format import TraceEntry
from traces.lengths import LengthDist
from traces.presets import MIXED_SHAREGPT_SHARE, PRESETS
from traces.seeding import rng_for
from traces.sharegpt import Exchange, LengthFilter, sample_lengths


def with_arrivals(
    ids: list[str], lengths: list[tuple[int, int]], rate: float, cv: float, seed: int
) -> list[TraceEntry]:
    times = arrival_times(len(lengths), rate, cv, rng_for(seed, "arrivals"))
    return [
        TraceEntry(rid, float(t), int(p), int(o))
        for rid, t, (p, o) in zip(ids, times, lengths)
    ]


def synthetic_lengths(input: LengthDist, output: LengthDist, n: int, seed: int) -> list[tuple[int, int]]:
    rng = rng_for(seed, "lengths")
    prompts = input.sample(n, rng)
    outputs = output.sample(n, rng)
    return list(zip(prompts.tolist(), outputs.tolist()))


def sharegpt_lengths(exchanges: list[Exchange], n: int, seed: int, keep: LengthFilter) -> list[tuple[int, int]]:
    return sample_lengths(exchanges, n, rng_for(seed, "sharegpt"), keep)


def mixed_lengths(
    exchanges: list[Exchange], n: int, seed: int, keep: LengthFilter
) -> tuple[list[str], list[tuple[int, int]]]:
    """Exactly round(60% of n) ShareGPT requests and the rest long-doc, interleaved at random.

    Ids name the source ("sharegpt-12", "long-doc-13") so results can be split by it.
    """
    n_sharegpt = round(MIXED_SHAREGPT_SHARE * n)
    is_sharegpt = rng_for(seed, "mix").permutation(np.arange(n) < n_sharegpt)
    chat = iter(sharegpt_lengths(exchanges, n_sharegpt, seed, keep))
    long_doc = PRESETS["long-doc"]
    docs = iter(synthetic_lengths(long_doc.input, long_doc.output, n - n_sharegpt, seed))
    ids, lengths = [], []
    for i, chat_turn in enumerate(is_sharegpt):
        ids.append(f"{'sharegpt' if chat_turn else 'long-doc'}-{i}")
        lengths.append(next(chat) if chat_turn else next(docs))
    return ids, lengths
