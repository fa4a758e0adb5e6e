"""The decode work list: every key of every context in exactly one piece, pieces balanced."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.attention import DECODE_BLOCK_N, ITEM_FIELDS, LONG_CONTEXT, MAX_PIECES, decode_items_for, decode_schedule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40000), min_size=1, max_size=64), st.integers(0, 40))
def test_pieces_cover_each_context_once_and_fit_the_list(ctx, spare):
    ctx = np.array(ctx)
    items, first = decode_schedule(ctx, len(ctx) + spare)
    assert items.shape == (len(ctx) + spare, ITEM_FIELDS) and first[0] == 0
    assert np.all(items[first[-1]:, 0] == -1)
    launched = items[:first[-1]]
    lengths = launched[:, 2] - launched[:, 1]
    assert np.all(np.diff(lengths) <= 0)          # longest pieces first
    assert sorted(launched[:, 4]) == list(range(first[-1]))   # one slot each
    used = launched[np.argsort(launched[:, 4])]   # in slot order: each sequence's pieces in turn
    for s, c in enumerate(ctx):
        mine = used[first[s]:first[s + 1]]
        assert np.all(mine[:, 0] == s) and np.all(mine[:, 3] == len(mine))
        assert 1 <= len(mine) <= MAX_PIECES
        # Contiguous, non-empty, tile-aligned pieces that end at the context's end.
        assert mine[0, 1] == 0 and mine[-1, 2] == c
        assert np.all(mine[1:, 1] == mine[:-1, 2]) and np.all(mine[:, 2] > mine[:, 1])
        assert np.all(mine[:, 1] % DECODE_BLOCK_N == 0)


def test_a_long_context_among_short_ones_is_cut_and_the_short_ones_are_not():
    ctx = np.array([20000] + [300] * 15)
    items, first = decode_schedule(ctx, decode_items_for(len(ctx), 8, 68))
    pieces = np.diff(first)
    assert pieces[0] >= 10 and np.all(pieces[1:] == 1)
    longest = (items[:first[-1], 2] - items[:first[-1], 1]).max()
    assert longest <= 2048        # the critical path is a tenth of the long context, not all of it


def test_uniform_batches_get_equal_pieces_and_small_batches_fill_the_gpu():
    for n, sms in ((1, 132), (8, 68), (64, 68), (256, 132)):
        ctx = np.full(n, 1024)
        items, first = decode_schedule(ctx, decode_items_for(n, 8, sms))
        pieces = np.diff(first)
        assert np.all(pieces == pieces[0])
        assert first[-1] * 8 >= min(sms, n * 8 * 16)   # programs (x KV heads) cover the SMs


def test_a_large_batch_of_similar_contexts_is_not_cut():
    ctx = np.random.default_rng(0).integers(400, 1000, 76)   # none 1.5x the mean
    items, first = decode_schedule(ctx, decode_items_for(len(ctx), 8, 132))
    assert first[-1] == len(ctx)     # one piece each: no merge to launch


def test_too_few_items_is_an_error():
    with pytest.raises(ValueError, match="3 sequences need at least 3 work items"):
        decode_schedule(np.array([5, 6, 7]), 2)


def test_one_long_context_in_a_large_batch_is_cut_to_the_long_context_limit():
    ctx = np.array([8192] + [600] * 127)
    items, first = decode_schedule(ctx, decode_items_for(len(ctx), 8, 132))
    pieces = np.diff(first)
    assert np.all(pieces[1:] == 1) and pieces[0] > 3     # the share of the spare items alone gives 3
    longest = (items[:first[-1], 2] - items[:first[-1], 1]).max()
    assert longest <= LONG_CONTEXT * ctx.mean()


def test_long_contexts_are_cut_as_short_as_the_list_has_room_for():
    # A conversation-like batch of 256: too many contexts exceed the long-context limit for the
    # spare items to cut them all to it, so they are cut to the shortest length that fits.
    rng = np.random.default_rng(0)
    ctx = np.clip(rng.lognormal(np.log(600), 1.0, 256), 32, 8192).astype(int)
    ctx[np.argmax(ctx)] = 8192
    num_items = decode_items_for(len(ctx), 8, 132)
    assert (-(-ctx // int(LONG_CONTEXT * ctx.mean()))).sum() > num_items
    items, first = decode_schedule(ctx, num_items)
    pieces = np.diff(first)
    assert first[-1] <= num_items
    assert pieces[np.argmax(ctx)] >= 2
    longest = (items[:first[-1], 2] - items[:first[-1], 1]).max()
    assert longest < 8192 / 2 + DECODE_BLOCK_N
