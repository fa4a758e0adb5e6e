"""Turn a batch described in plain Python (one Chunk per sequence) into packed device tensors.

Prefill chunks (more than one token) go first and decode tokens after, as the attention
kernels expect; `order` maps packed rows back to the caller's order. All index data travels
to the device in one copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from real.attention import AttentionMetadata, decode_items_for, decode_schedule


@dataclass(frozen=True)
class Chunk:
    """This step's tokens of one sequence.

    token_ids: tokens computed now (a prompt chunk, or the one last-sampled token to decode).
    start: tokens of the sequence already in the KV cache; the chunk's positions follow them.
    block_table: KV block ids of the sequence in order, covering at least start + len(token_ids).
    """
    token_ids: Sequence[int]
    start: int
    block_table: Sequence[int]

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    select: torch.Tensor      # packed row of each sequence's last token, in packed order
    inverse: torch.Tensor     # caller's i-th sequence is packed sequence inverse[i]


def validate(batch: Sequence[Chunk], num_blocks: int, block_size: int, max_len: int) -> None:
    """ValueError naming the first chunk that cannot be run: these are engine bugs, not user errors."""
    if not batch:
        raise ValueError("empty batch")
    for i, c in enumerate(batch):
        need = -(-c.end // block_size)
        if not c.token_ids or c.start < 0:
            raise ValueError(f"sequence {i}: needs at least one token and start >= 0")
        if c.end > max_len:
            raise ValueError(f"sequence {i}: reaches position {c.end}, beyond max_model_len {max_len}")
        if len(c.block_table) < need:
            raise ValueError(f"sequence {i}: {c.end} tokens need {need} blocks, table has {len(c.block_table)}")
        used = c.block_table[:need]
        if min(used) < 0 or max(used) >= num_blocks:
            raise ValueError(f"sequence {i}: block ids must be in [0, {num_blocks}), got {list(used)}")


def _table_rows(chunks: list[Chunk], block_size: int) -> np.ndarray:
    # A width that is a multiple of 16 keeps the row stride's divisibility constant, so Triton
    # does not compile a new kernel variant when a batch's longest sequence changes.
    width = -(-max([-(-c.end // block_size) for c in chunks], default=1) // 16) * 16
    rows = np.zeros((len(chunks), width), dtype=np.int32)
    for r, c in enumerate(chunks):
        need = -(-c.end // block_size)
        rows[r, :need] = c.block_table[:need]
    return rows


def pack(batch: Sequence[Chunk], device: torch.device, block_size: int, kv_heads: int,
         num_sms: int) -> PackedBatch:
    prefill = [i for i, c in enumerate(batch) if len(c.token_ids) > 1]
    decode = [i for i, c in enumerate(batch) if len(c.token_ids) == 1]
    order = prefill + decode
    chunks = [batch[i] for i in order]
    pre, dec = chunks[:len(prefill)], chunks[len(prefill):]

    ids = np.concatenate([np.asarray(c.token_ids, dtype=np.int64) for c in chunks])
    positions = np.concatenate([np.arange(c.start, c.end) for c in chunks])
    slots = np.empty_like(positions)
    lo = 0
    for c in chunks:
        pos = positions[lo:lo + len(c.token_ids)]
        table = np.asarray(c.block_table[:-(-c.end // block_size)], dtype=np.int64)
        slots[lo:lo + len(pos)] = table[pos // block_size] * block_size + pos % block_size
        lo += len(pos)
    lens = np.array([len(c.token_ids) for c in pre], dtype=np.int64)
    cu = np.concatenate([[0], np.cumsum(lens)])
    starts = np.array([c.start for c in pre], dtype=np.int64)
    ctx = np.array([c.end for c in dec], dtype=np.int64)
    pre_tables, dec_tables = _table_rows(pre, block_size), _table_rows(dec, block_size)
    select = np.concatenate([cu[1:] - 1, cu[-1] + np.arange(len(dec))])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    items, first = decode_schedule(ctx, decode_items_for(len(dec), kv_heads, num_sms))

    parts = [ids, positions, slots, cu, starts, ctx, pre_tables.ravel(), dec_tables.ravel(), select, inverse,
             items.ravel(), first]
    # Each part starts on a 16-byte boundary: Triton specialises kernels on pointer alignment,
    # and unaligned views would compile fresh variants mid-run (about a second each).
    padded = [np.pad(p, (0, -len(p) % 4)) for p in parts]
    flat = torch.from_numpy(np.concatenate(padded).astype(np.int32)).to(device, non_blocking=True)
    views = [v[:len(p)] for v, p in zip(flat.split([len(p) for p in padded]), parts)]
    views[6] = views[6].view(pre_tables.shape)
    views[7] = views[7].view(dec_tables.shape)
    views[10] = views[10].view(items.shape)
    ids_t, pos_t, slots_t, cu_t, starts_t, ctx_t, pre_t, dec_t, select_t, inverse_t, items_t, first_t = views
    meta = AttentionMetadata(
        slots=slots_t, num_prefill_tokens=int(cu[-1]), prefill_cu_q=cu_t, prefill_start=starts_t,
        prefill_block_tables=pre_t, prefill_max_q=int(lens.max(initial=0)), decode_ctx_lens=ctx_t,
        decode_block_tables=dec_t, decode_items=items_t, decode_first=first_t,
        decode_merge=bool(first[-1] > len(dec)), block_size=block_size)
    return PackedBatch(ids_t, pos_t, meta, select_t.long(), inverse_t.long())
