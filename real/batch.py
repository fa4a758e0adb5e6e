"""Turn a batch described in plain Python (one Chunk per sequence) into packed device tensors.

Prefill chunks (more than one token) go first and decode tokens after, as the attention
kernels expect; `order` maps packed rows back to the caller's order. All index data travels
to the device in one copy.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter, getitem, is_
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


_start, _tokens, _table = attrgetter("start"), attrgetter("token_ids"), attrgetter("block_table")


def starts_and_lens(chunks: Sequence[Chunk]) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk's start and token count, as int64 arrays."""
    # map over attrgetters: a third of a generator expression's time (256 rows: 32 us against 90).
    n = len(chunks)
    return (np.fromiter(map(_start, chunks), dtype=np.int64, count=n),
            np.fromiter(map(len, map(_tokens, chunks)), dtype=np.int64, count=n))


@dataclass(frozen=True)
class Part:
    """The prompt chunks or the decode rows of a batch, with their shape as arrays (read once a
    step: reading 256 rows' starts and lengths again for each use cost 0.15 ms a step)."""
    name: str                 # "prompt" or "decode"
    chunks: list[Chunk]
    index: list[int]          # each chunk's place in the caller's batch
    starts: np.ndarray
    lens: np.ndarray

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def ends(self) -> np.ndarray:
        return self.starts + self.lens


def split(batch: Sequence[Chunk]) -> tuple[Part, Part]:
    """The prompt chunks (more than one token) and the decode rows of `batch`, each in order."""
    starts, lens = starts_and_lens(batch)
    one = lens == 1
    parts = []
    for name, rows in (("prompt", np.flatnonzero(~one)), ("decode", np.flatnonzero(one))):
        index = rows.tolist()
        parts.append(Part(name, [batch[i] for i in index], index, starts[rows], lens[rows]))
    return parts[0], parts[1]


def decode_part(batch: Sequence[Chunk]) -> Part:
    """A batch of decode rows only, as its Part."""
    starts, lens = starts_and_lens(batch)
    return Part("decode", list(batch), list(range(len(batch))), starts, lens)


def validate(batch: Sequence[Chunk], num_blocks: int, block_size: int, max_len: int) -> None:
    """ValueError naming the first chunk that cannot be run: these are engine bugs, not user errors.

    Block ids are checked where the tables are read (`BlockTables.rows`), once per block.
    """
    if not batch:
        raise ValueError("empty batch")
    # Checked as arrays first: a Python loop over 256 decode rows cost about 0.15 ms a step.
    starts, lens = starts_and_lens(batch)
    blocks = np.fromiter(map(len, map(_table, batch)), dtype=np.int64, count=len(batch))
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
    1-4k tokens, most of a decode step's host time. Conversions are kept per thread and `part`
    (the prompt or the decode rows of a batch). A list that shrank or whose last converted id
    changed is converted afresh.

    Rows written into a caller's buffer (`out`, a CUDA graph's pinned inputs) are also
    remembered: a row that holds the same list, reaching the same block, as the last call
    put there is left as it is. From one decode step to the next a row gains a block once in
    16 tokens, so most rows are skipped; writing all 256 rows anew was 0.42 ms of a mixed
    step's host time (of 1.4 ms packing, on a 2-core development machine).
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._written: dict[str, tuple] = {}   # part -> (buffer, its lists by row, blocks, last ids)

    def rows(self, part: Part, block_size: int, num_blocks: int, out: np.ndarray | None = None) -> np.ndarray:
        """The blocks each chunk of `part` reaches, one row a chunk (into `out` if given, which
        keeps entries past each row's blocks). ValueError names a chunk whose ids are out of
        range, by its place in the caller's batch.

        Rows of `out` must change only through this method while it holds them: the rows of
        the last call on a part of that name are skipped when unchanged, other rows are written."""
        n = len(part.chunks)
        need = -(-part.ends // block_size)
        if out is None:
            # A width that is a multiple of 16 keeps the row stride's divisibility constant, so
            # Triton does not compile a new kernel variant when a batch's longest sequence changes.
            out = np.zeros((n, -(-max(int(need.max(initial=1)), 1) // 16) * 16), dtype=np.int32)
            return self._write(part, need, out, np.arange(n), num_blocks)
        tables = list(map(_table, part.chunks))
        last = np.fromiter(map(getitem, tables, (need - 1).tolist()), dtype=np.int64, count=n)
        buffer = (out.__array_interface__["data"][0], out.strides)
        held = self._written.get(part.name)
        stale = np.ones(n, dtype=bool)
        if held is not None and held[0] == buffer:
            m = min(n, len(held[1]))
            same = np.fromiter(map(is_, tables[:m], held[1][:m]), dtype=bool, count=m)
            stale[:m] = ~(same & (need[:m] == held[2][:m]) & (last[:m] == held[3][:m]))
        self._written.pop(part.name, None)   # a call that fails leaves no rows held
        self._write(part, need, out, np.flatnonzero(stale), num_blocks)
        self._written[part.name] = (buffer, tables, need, last)
        return out

    def _write(self, part: Part, need: np.ndarray, out: np.ndarray, which: np.ndarray,
               num_blocks: int) -> np.ndarray:
        """Write rows `which` of `out` from their chunks' lists, converting only new blocks."""
        chunks = part.chunks
        seen: dict = getattr(self._local, part.name, None)
        if seen is None or len(seen) > 2 * len(chunks) + 64:
            # Forget lists that left the batch (a finished request's), keeping the batch's own.
            old, seen = seen or {}, {}
            for c in chunks:
                entry = old.get(id(c.block_table))
                if entry is not None:
                    seen[id(c.block_table)] = entry
            setattr(self._local, part.name, seen)
        parts = []
        # entry: [the list, its ids as int32, how many are converted, the last converted id]
        for i in which.tolist():
            table, k = chunks[i].block_table, int(need[i])
            entry = seen.get(id(table))
            if entry is None or entry[0] is not table or len(table) < entry[2] \
                    or (entry[2] and table[entry[2] - 1] != entry[3]):
                entry = [table, np.empty(max(k, 16), dtype=np.int32), 0, -1]
                seen[id(table)] = entry
            ids, done = entry[1], entry[2]
            if k > done:
                new = np.asarray(table[done:k], dtype=np.int64)
                if new.min() < 0 or new.max() >= num_blocks:
                    raise ValueError(f"sequence {part.index[i]}: block ids must "
                                     f"be in [0, {num_blocks}), got {list(table[:k])}")
                if k > len(ids):
                    ids = np.concatenate([ids[:done], np.empty(max(k, 2 * len(ids)) - done, dtype=np.int32)])
                    entry[1] = ids
                ids[done:k] = new
                entry[2], entry[3] = k, table[k - 1]
            parts.append(ids[:k])
        if parts:
            k = need[which]
            width = int(k.max())
            filled = np.arange(width) < k[:, None]
            if len(which) == len(chunks):
                out[:len(chunks), :width][filled] = np.concatenate(parts)
            else:
                rows = out[which, :width]      # a copy: fancy indexing
                rows[filled] = np.concatenate(parts)
                out[which, :width] = rows
        return out


def token_layout(part: Part, tables: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids, positions, cache slots) of `part`'s chunks packed end to end; `tables` their block rows."""
    chunks, starts, lens = part.chunks, part.starts, part.lens
    total = int(lens.sum())
    if total == len(chunks):
        # Decode rows, the common case: one token each, at its sequence's next position (256
        # rows: 50 us here against 78 through the general layout below).
        ids = np.fromiter(map(getitem, map(_tokens, chunks), repeat(0, total)), dtype=np.int64, count=total)
        blocks = tables[np.arange(len(chunks)), starts // block_size].astype(np.int64)
        return ids, starts, blocks * block_size + starts % block_size
    ids = np.fromiter(chain.from_iterable(map(_tokens, chunks)), dtype=np.int64, count=total)
    seq = np.repeat(np.arange(len(chunks)), lens)
    first = np.cumsum(lens) - lens
    positions = np.arange(total) - first[seq] + starts[seq]
    slots = tables[seq, positions // block_size].astype(np.int64) * block_size + positions % block_size
    return ids, positions, slots


def pack(batch: Sequence[Chunk], device: torch.device, block_size: int, kv_heads: int,
         num_sms: int, num_blocks: int, tables: BlockTables | None = None) -> PackedBatch:
    """The batch as device tensors; `tables` converts block tables (a fresh one if None)."""
    tables = tables or BlockTables()
    pre, dec = split(batch)
    order = pre.index + dec.index
    pre_tables = tables.rows(pre, block_size, num_blocks)
    dec_tables = tables.rows(dec, block_size, num_blocks)
    pre_ids, pre_pos, pre_slots = token_layout(pre, pre_tables, block_size)
    dec_ids, dec_pos, dec_slots = token_layout(dec, dec_tables, block_size)
    ids, positions = np.concatenate([pre_ids, dec_ids]), np.concatenate([pre_pos, dec_pos])
    slots = np.concatenate([pre_slots, dec_slots])
    lens, starts = pre.lens, pre.starts
    cu = np.concatenate([[0], np.cumsum(lens)])
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
        decode_merge=bool(first[-1] > len(dec)), block_size=block_size, decode_rows=rows_t,
        prefill_chunks=tuple(zip(cu[:-1].tolist(), lens.tolist(), starts.tolist())))
    return PackedBatch(ids_t, pos_t, meta, select_t.long(), inverse_t.long())
