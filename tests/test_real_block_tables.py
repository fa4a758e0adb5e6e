"""BlockTables: block lists become int32 rows, and rows kept in a graph's input buffer are
rewritten exactly when their sequence, its block count or its last block changed."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.batch import BlockTables, Chunk, decode_part, split

BLOCK = 16
NUM_BLOCKS = 4096
WIDTH = 64


def expected_rows(batch: list[Chunk]) -> list[list[int]]:
    return [list(c.block_table[:-(-c.end // BLOCK)]) for c in batch]


def held_rows(out: np.ndarray, batch: list[Chunk]) -> list[list[int]]:
    return [out[i, :-(-c.end // BLOCK)].tolist() for i, c in enumerate(batch)]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rows_in_a_kept_buffer_always_match_the_lists(data) -> None:
    """Decode steps as an engine runs them: sequences grow a token a step and a block every
    16 tokens, finish and leave, new ones join, the batch is reordered and shrinks, and rows
    past the batch are overwritten as a graph's padding does."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    live: list[dict] = []
    out = np.full((32, WIDTH), -7, dtype=np.int32)
    tables = BlockTables()
    for _ in range(data.draw(st.integers(1, 40))):
        while len(live) < data.draw(st.integers(1, 24)):
            ctx = int(rng.integers(1, 300))
            live.append({"ctx": ctx, "table": [free.pop() for _ in range(-(-ctx // BLOCK))]})
        if data.draw(st.booleans()):
            rng.shuffle(live)
        batch_seqs = live[:data.draw(st.integers(1, len(live)))]
        batch = [Chunk([1], s["ctx"] - 1, s["table"]) for s in batch_seqs]
        got = tables.rows(decode_part(batch), BLOCK, NUM_BLOCKS, out=out)
        assert got is out
        assert held_rows(out, batch) == expected_rows(batch)
        fresh = BlockTables().rows(decode_part(batch), BLOCK, NUM_BLOCKS)
        assert held_rows(fresh, batch) == expected_rows(batch)
        out[len(batch):, 0] = -1                      # padding past the batch, as graphs write it
        for s in live:                                # every sequence decodes one token
            s["ctx"] += 1
            if len(s["table"]) * BLOCK < s["ctx"]:
                s["table"].append(free.pop())
        for s in [s for s in live if rng.random() < 0.1]:   # some finish; their blocks return
            live.remove(s)
            free.extend(s["table"])


def test_a_row_whose_last_block_was_replaced_in_place_is_rewritten() -> None:
    table = [5, 6, 7]
    batch = [Chunk([1], 40, table)]
    out = np.zeros((4, WIDTH), dtype=np.int32)
    tables = BlockTables()
    tables.rows(decode_part(batch), BLOCK, NUM_BLOCKS, out=out)
    table[2] = 9           # against the lists' contract, which the last-id check still catches
    tables.rows(decode_part(batch), BLOCK, NUM_BLOCKS, out=out)
    assert out[0, :3].tolist() == [5, 6, 9]


def test_a_different_buffer_gets_every_row() -> None:
    batch = [Chunk([1], 20, [1, 2]), Chunk([1], 3, [3])]
    tables = BlockTables()
    first = np.zeros((2, WIDTH), dtype=np.int32)
    second = np.zeros((2, WIDTH), dtype=np.int32)
    tables.rows(decode_part(batch), BLOCK, NUM_BLOCKS, out=first)
    tables.rows(decode_part(batch), BLOCK, NUM_BLOCKS, out=second)
    assert second[:, :2].tolist() == [[1, 2], [3, 0]]


def test_a_bad_block_id_names_the_sequence_by_its_place_in_the_batch() -> None:
    batch = [Chunk([1, 2, 3], 0, [0]), Chunk([1], 5, [1]), Chunk([1], 5, [NUM_BLOCKS])]
    prompt, decode = split(batch)
    assert (prompt.index, decode.index) == ([0], [1, 2])
    out = np.zeros((2, WIDTH), dtype=np.int32)
    with pytest.raises(ValueError, match="sequence 2: block ids must be in"):
        BlockTables().rows(decode, BLOCK, NUM_BLOCKS, out=out)
