"""Turn a batch described in plain Python (one Chunk per sequence) into packed device tensors.

Prefill chunks (more than one token) go first and decode tokens after, as the attention
kernels expect; `order` maps packed rows back to the caller's order. All index data travels
to the device in one copy.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import chain
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
    """ValueError naming the first chunk that cannot be run: these are engine bugs, not user errors.

    Block ids are checked where the tables are read (`BlockTables.rows`), once per block.
    """
    if not batch:
        raise ValueError("empty batch")
    # Checked as arrays first: a Python loop over 256 decode rows cost about 0.15 ms a step.
    n = len(batch)
    starts = np.fromiter((c.start for c in batch), dtype=np.int64, count=n)
    lens = np.fromiter((len(c.token_ids) for c in batch), dtype=np.int64, count=n)
    blocks = np.fromiter((len(c.block_table) for c in batch), dtype=np.int64, count=n)
    ends = starts + lens
    bad = (lens < 1) | (starts < 0) | (ends > max_len) | (blocks * block_size < ends)
    if not bad.any():
        return
    i = int(np.argmax(bad))
    c = batch[i]
    need = -(-c.end // block_size)
    if not c.token_ids or c.start < 0:
        raise ValueError(f"sequence {i}: needs at least one token and start >= 0")
    if c.end > max_len:
        raise ValueError(f"sequence {i}: reaches position {c.end}, beyond max_model_len {max_len}")
    raise ValueError(f"sequence {i}: {c.end} tokens need {need} blocks, table has {len(c.block_table)}")


class BlockTables:
    """The block tables of a batch as int32 rows, for the kernels.

    The engine's tables are Python lists that only grow (nexus.kv appends blocks, and drops a
    finished request's list), so each list is converted once and afterwards only its new
    blocks: converting every table in full cost 1-3 ms of host time a step for 256 rows of
    1-4k tokens, most of a decode step's host time. Copies are kept per thread and `part` (the
    prompt or the decode rows of a batch), for the lists of the last such part only. A list
    that shrank or whose last converted id changed is converted afresh.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def rows(self, chunks: Sequence[Chunk], block_size: int, num_blocks: int, out: np.ndarray | None = None,
             batch_index: Sequence[int] | None = None, part: str = "decode") -> np.ndarray:
        """The blocks each chunk reaches, one row a chunk (into `out` if given, which keeps entries
        past each row's blocks). ValueError names a chunk whose ids are out of range, by its
        place in the caller's batch (`batch_index[i]` for chunks[i])."""
        seen: dict = getattr(self._local, part, {})
        kept: dict = {}
        need = [-(-c.end // block_size) for c in chunks]
        parts = []
        # entry: [the list, its ids as int32, how many are converted, the last converted id]
        append = parts.append
        for i, (c, k) in enumerate(zip(chunks, need)):
            table = c.block_table
            key = id(table)
            entry = seen.get(key) or kept.get(key)
            if entry is None or entry[0] is not table or len(table) < entry[2] \
                    or (entry[2] and table[entry[2] - 1] != entry[3]):
                entry = [table, np.empty(max(k, 16), dtype=np.int32), 0, -1]
            ids, done = entry[1], entry[2]
            kept[key] = entry
            if k == done:           # nothing new since the last step: the common case
                append(ids[:k])
                continue
            if k > done:
                new = np.asarray(table[done:k], dtype=np.int64)
                if new.min() < 0 or new.max() >= num_blocks:
                    raise ValueError(f"sequence {i if batch_index is None else batch_index[i]}: block ids must "
                                     f"be in [0, {num_blocks}), got {list(table[:k])}")
                if k > len(ids):
                    ids = np.concatenate([ids[:done], np.empty(max(k, 2 * len(ids)) - done, dtype=np.int32)])
                    entry[1] = ids
                ids[done:k] = new
                entry[2], entry[3] = k, table[k - 1]
            append(ids[:k])
        setattr(self._local, part, kept)
        need_a = np.asarray(need, dtype=np.int64)
        if out is None:
            # A width that is a multiple of 16 keeps the row stride's divisibility constant, so
            # Triton does not compile a new kernel variant when a batch's longest sequence changes.
            out = np.zeros((len(chunks), -(-max(int(need_a.max(initial=1)), 1) // 16) * 16), dtype=np.int32)
        width = int(need_a.max(initial=0))
        if parts:
            out[:len(chunks), :width][np.arange(width) < need_a[:, None]] = np.concatenate(parts)
        return out


def token_layout(chunks: Sequence[Chunk], tables: np.ndarray, block_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids, positions, cache slots) of `chunks` packed end to end; `tables` their block rows."""
    starts = np.fromiter((c.start for c in chunks), dtype=np.int64, count=len(chunks))
    if all(len(c.token_ids) == 1 for c in chunks):
        # Decode rows, the common case: one token each, at its sequence's next position (256
        # rows: 50 us here against 78 through the general layout below).
        ids = np.fromiter((c.token_ids[0] for c in chunks), dtype=np.int64, count=len(chunks))
        blocks = tables[np.arange(len(chunks)), starts // block_size].astype(np.int64)
        return ids, starts, blocks * block_size + starts % block_size
    lens = np.fromiter((len(c.token_ids) for c in chunks), dtype=np.int64, count=len(chunks))
    total = int(lens.sum())
    ids = np.fromiter(chain.from_iterable(c.token_ids for c in chunks), dtype=np.int64, count=total)
    seq = np.repeat(np.arange(len(chunks)), lens)
    first = np.cumsum(lens) - lens
    positions = np.arange(total) - first[seq] + starts[seq]
    slots = tables[seq, positions // block_size].astype(np.int64) * block_size + positions % block_size
    return ids, positions, slots


def pack(batch: Sequence[Chunk], device: torch.device, block_size: int, kv_heads: int,
         num_sms: int, num_blocks: int, tables: BlockTables | None = None) -> PackedBatch:
    """The batch as device tensors; `tables` converts block tables (a fresh one if None)."""
    tables = tables or BlockTables()
    prefill = [i for i, c in enumerate(batch) if len(c.token_ids) > 1]
    decode = [i for i, c in enumerate(batch) if len(c.token_ids) == 1]
    order = prefill + decode
    chunks = [batch[i] for i in order]
    pre, dec = chunks[:len(prefill)], chunks[len(prefill):]

    pre_tables = tables.rows(pre, block_size, num_blocks, batch_index=prefill, part="prompt")
    dec_tables = tables.rows(dec, block_size, num_blocks, batch_index=decode)
    pre_ids, pre_pos, pre_slots = token_layout(pre, pre_tables, block_size)
    dec_ids, dec_pos, dec_slots = token_layout(dec, dec_tables, block_size)
    ids, positions = np.concatenate([pre_ids, dec_ids]), np.concatenate([pre_pos, dec_pos])
    slots = np.concatenate([pre_slots, dec_slots])
    lens = np.fromiter((len(c.token_ids) for c in pre), dtype=np.int64, count=len(pre))
    cu = np.concatenate([[0], np.cumsum(lens)])
    starts = np.fromiter((c.start for c in pre), dtype=np.int64, count=len(pre))
    ctx = dec_pos + 1
    dec_rows = cu[-1] + np.arange(len(dec))
    select = np.concatenate([cu[1:] - 1, dec_rows])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    items, first = decode_schedule(ctx, decode_items_for(len(dec), kv_heads, num_sms))

    parts = [ids, positions, slots, cu, starts, ctx, pre_tables.ravel(), dec_tables.ravel(), select, inverse,
             items.ravel(), first, dec_rows]
    # Each part starts on a 16-byte boundary: Triton specialises kernels on pointer alignment,
    # and unaligned views would compile fresh variants mid-run (about a second each).
    at = np.concatenate([[0], np.cumsum([-(-len(p) // 4) * 4 for p in parts])])
    host = np.zeros(int(at[-1]), dtype=np.int32)
    for p, lo in zip(parts, at):
        host[lo:lo + len(p)] = p
    flat = torch.from_numpy(host)
    if device.type == "cuda":
        # From pinned memory the copy is queued like a kernel; from pageable memory the driver
        # may first wait for the stream to drain, and the launches behind it start late.
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    views = [flat[lo:lo + len(p)] for p, lo in zip(parts, at.tolist())]
    views[6] = views[6].view(pre_tables.shape)
    views[7] = views[7].view(dec_tables.shape)
    views[10] = views[10].view(items.shape)
    ids_t, pos_t, slots_t, cu_t, starts_t, ctx_t, pre_t, dec_t, select_t, inverse_t, items_t, first_t, rows_t = views
    meta = AttentionMetadata(
        slots=slots_t, num_prefill_tokens=int(cu[-1]), prefill_cu_q=cu_t, prefill_start=starts_t,
        prefill_block_tables=pre_t, prefill_max_q=int(lens.max(initial=0)), decode_ctx_lens=ctx_t,
        decode_block_tables=dec_t, decode_items=items_t, decode_first=first_t,
        decode_merge=bool(first[-1] > len(dec)), block_size=block_size, decode_rows=rows_t)
    return PackedBatch(ids_t, pos_t, meta, select_t.long(), inverse_t.long())
