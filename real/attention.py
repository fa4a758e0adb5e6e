"""Attention over the paged KV cache for a packed batch.

A batch packs the tokens of every sequence end to end: first the prefill chunks (each may
continue a prompt whose earlier KV is already cached), then the decode tokens, one per
sequence. Each new token's K and V are written to the cache before attention runs, so both
kernels read every key and value, old and new, through the sequence's block table.

- prefill: causal attention of a chunk's queries over its cached prefix and itself; in
  eager steps, a long chunk (nexus.graph_buckets.runs_dense) takes the dense path
  instead (real.dense_attention: its keys gathered out of the cache, cuDNN's fused kernel);
- decode: one query per sequence over its whole context, cut along the context into
  pieces (flash-decoding) by a work list the host balances over the batch's total context,
  so that small batches still fill the GPU and one long context among short ones does not
  leave a few programs streaming it alone; the query heads of one KV head (GQA) share each
  load of K and V.

On CUDA these are Triton kernels; on CPU `_torch_attention` computes the same thing by
gathering each sequence's blocks, and is the reference the kernels are tested against.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from nexus.graph_buckets import runs_dense
from real.dense_attention import chunk_attention, dense_attention_works
from real.triton_support import HAVE_TRITON, next_pow2, tl, triton, use_triton


@dataclass
class AttentionMetadata:
    """Where each token of a packed batch sits. Index tensors are int32 on the model's device.

    slots: [T] cache slot written by each token (block_id * block_size + offset).
    Prefill part (the first `num_prefill_tokens` tokens, `len(prefill_start)` sequences):
      prefill_cu_q [P+1] chunk boundaries in the packed batch, prefill_start [P] tokens
      already cached before the chunk, prefill_block_tables [P, W], prefill_max_q.
    Decode part (the remaining tokens, one per sequence):
      decode_ctx_lens [D] tokens attended including the new one, decode_block_tables [D, W],
      decode_items [I, ITEM_FIELDS] the work list (sequence, first key, end key, pieces of
      that sequence, slot of the piece's partial result; sequence -1 for spare rows), longest
      pieces first; decode_first [D+1] each sequence's first slot.
      See decode_schedule; I is fixed per CUDA graph, and so is decode_merge there.
      decode_rows [D]: the packed row of each decode token; None means the D rows right after
      the prefill tokens. A CUDA graph of mixed steps sets it, because its split between
      prefill and decode rows changes from replay to replay.
    prefill_chunks: (first row, tokens, tokens already cached) of each prefill sequence, on the
      host. Eager steps set it, which lets long chunks take the dense path without reading
      the device; CUDA graphs leave it None, because their split changes between replays.
    """
    slots: torch.Tensor
    num_prefill_tokens: int
    prefill_cu_q: torch.Tensor
    prefill_start: torch.Tensor
    prefill_block_tables: torch.Tensor
    prefill_max_q: int
    decode_ctx_lens: torch.Tensor
    decode_block_tables: torch.Tensor
    decode_items: torch.Tensor | None = None
    decode_first: torch.Tensor | None = None
    decode_merge: bool = True   # False when no context was cut: the merge launch is skipped
    block_size: int = 16
    decode_rows: torch.Tensor | None = None
    prefill_chunks: tuple[tuple[int, int, int], ...] | None = None

    @property
    def num_prefill_seqs(self) -> int:
        return self.prefill_start.shape[0]

    @property
    def num_decode_seqs(self) -> int:
        return self.decode_ctx_lens.shape[0]


PROGRAMS_PER_SM = 2     # spare decode programs per SM to cut long contexts into
MAX_PIECES = 32         # pieces of one context at most (the merge kernel's width)
DECODE_BLOCK_N = 64     # keys per decode tile; a piece is a whole number of tiles
LONG_CONTEXT = 1.5      # a context this many times the batch's mean is cut (see decode_schedule)
ITEM_FIELDS = 5         # columns of a decode work item (see decode_schedule)


def decode_items_for(num_seqs: int, num_kv_heads: int, num_sms: int) -> int:
    """Rows of the decode work list: one per sequence, plus about PROGRAMS_PER_SM per SM
    (per KV head) to share out among the longer contexts."""
    return num_seqs + min(MAX_PIECES, math.ceil(PROGRAMS_PER_SM * num_sms / num_kv_heads))


def decode_schedule(ctx_lens: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each context into pieces of about equal length across the whole batch, and order
    the pieces longest first.

    A sequence of c keys gets floor(c * spare / total) pieces, spare = num_items - len(ctx_lens),
    which fills the GPU when the batch is small; floor, not ceiling: a context near the
    batch's average stays whole, so large batches of similar contexts need no merge (cutting
    every context of 64 x 1k in two ran attention at 0.80 of copy bandwidth against 0.95 on
    an H200: the merge is a launch a layer). A context longer than LONG_CONTEXT times the
    batch's mean is also cut into pieces of at most that length, or of a length the list has
    room for: one long context among short ones would otherwise stream on a few
    programs after the rest have finished. The kernel launches programs in list order (items
    fastest; heads fastest cost uniform batches 20%), so the longest pieces start first and
    the short ones fill in behind them. On conversation-like batches on an H200 (fractions of
    copy bandwidth): 128 rows 0.78 before these three rules, 0.84 with them (0.81 with a
    limit of 2x the mean); 256 rows 0.60 before (its 8k context was left whole), 0.89 after
    (measured with a bisection for the cut length, since replaced by _cut_long_contexts' rounds).
    At least one piece a context, at most MAX_PIECES, none shorter than a tile; the sum never
    exceeds num_items.

    Returns (items [num_items, ITEM_FIELDS] int32: sequence, first key, end key, pieces of the
    sequence, and the piece's slot first[sequence] + k for its k-th piece (where the merge
    finds its partial result); sequence -1 on unused rows, which come last; first [n + 1]
    int32).
    """
    ctx = np.asarray(ctx_lens, dtype=np.int64)
    n = len(ctx)
    spare = num_items - n
    if spare < 0:
        raise ValueError(f"{n} sequences need at least {n} work items, got {num_items}")
    total = max(int(ctx.sum()), 1)
    tiles = -(-ctx // DECODE_BLOCK_N)
    most = np.minimum(MAX_PIECES, np.maximum(tiles, 1))
    pieces = np.clip(ctx * spare // total, 1, most)
    if n:
        pieces = _cut_long_contexts(ctx, pieces, most, num_items,
                                    max(int(LONG_CONTEXT * total) // n, DECODE_BLOCK_N))
    piece_len = -(-tiles // pieces) * DECODE_BLOCK_N
    pieces = np.maximum(-(-ctx // piece_len), 1)   # rounding up to tiles may leave fewer
    first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(pieces, out=first[1:])
    seq = np.repeat(np.arange(n), pieces)
    slot = np.arange(first[-1])
    lo = (slot - first[seq]) * piece_len[seq]
    hi = np.minimum(lo + piece_len[seq], ctx[seq])
    order = np.argsort(lo - hi, kind="stable")
    items = np.full((num_items, ITEM_FIELDS), -1, dtype=np.int32)
    items[:first[-1]] = np.stack([seq, lo, hi, pieces[seq], slot], axis=1)[order]
    return items, first.astype(np.int32)


def _cut_long_contexts(ctx: np.ndarray, pieces: np.ndarray, most: np.ndarray, num_items: int,
                       cap: int) -> np.ndarray:
    """Pieces after cutting every context longer than `cap` keys to pieces of at most `cap`,
    or, where the list has no room for that, of a length it has room for."""
    balanced = np.clip(np.maximum(pieces, -(-ctx // cap)), 1, most)
    if balanced.sum() <= num_items:
        return balanced
    # No room at `cap`: the long contexts share the items the others leave. Start from the
    # length that would share them exactly and lengthen it by the overshoot until the pieces
    # fit (two or three rounds; a bisection took seven, 0.1 ms of host time a step).
    long = ctx > cap
    c, p, m = ctx[long], pieces[long], most[long]
    room = num_items - int(pieces[~long].sum())
    if room < len(c):
        return pieces
    length = max(-(-int(c.sum()) // room), cap)
    for _ in range(4):
        used = int(np.clip(np.maximum(p, -(-c // length)), 1, m).sum())
        if used <= room:
            break
        length = -(-length * used // room)
    else:
        # Each long context takes at most keys / length + 1 pieces at this length, so it fits
        # unless a context's share of the spare items alone asks for more (checked below).
        length = max(-(-int(c.sum()) // max(room - len(c), 1)), cap) if room > len(c) else int(c.max())
    out = pieces.copy()
    out[long] = np.clip(np.maximum(p, -(-c // length)), 1, m)
    return out if out.sum() <= num_items else pieces


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D] (may be a strided view); caches [num_blocks, block_size, KV, D].

    Returns [T, H * D] in q's dtype.
    """
    t, h, d = q.shape
    out = torch.empty(t, h, d, dtype=q.dtype, device=q.device)
    if use_triton(q):
        # Both kernels index the whole packed batch: prefill rows through prefill_cu_q,
        # decode rows through decode_rows.
        if meta.num_prefill_seqs:
            _prefill(q, k_cache, v_cache, meta, scale, out)
        if meta.num_decode_seqs:
            _decode_triton(q, k_cache, v_cache, meta, scale, out)
    else:
        _torch_attention(q, k_cache, v_cache, meta, scale, out)
    return out.view(t, h * d)


# ---------------------------------------------------------------- which path a prefill chunk takes
# In eager steps, chunks that nexus.graph_buckets.runs_dense picks (its measurements are
# there) take the dense path (real.dense_attention). CUDA graphs keep the Triton kernel: one
# graph serves any split of its tokens and the dense calls are shaped per chunk, which is why
# the graph rule sends such steps eager. (Another board's per-layer run, with an older merge:
# experiments/results/prefill_attention_h200_board1.json.)
def takes_dense_path(q: torch.Tensor, meta: AttentionMetadata) -> bool:
    """Whether some prefill chunk of this step runs on the dense path (prefill_dense)."""
    chunks = meta.prefill_chunks
    return (chunks is not None and any(runs_dense(n, prior) for _, n, prior in chunks)
            and dense_attention_works(q.device, q.dtype, q.shape[2]))


def prefill_dense(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                  scale: float, out: torch.Tensor, i: int) -> None:
    """Prefill attention of chunk i on the dense path (real.dense_attention.chunk_attention)."""
    row, n, prior = meta.prefill_chunks[i]
    blocks = meta.prefill_block_tables[i, :-(-(prior + n) // meta.block_size)]
    chunk_attention(q[row:row + n], k_cache, v_cache, blocks, prior, scale, out[row:row + n])


# ---------------------------------------------------------------- PyTorch path (CPU, reference)
def _torch_attention(q, k_cache, v_cache, meta, scale, out):
    bs = meta.block_size
    kv = k_cache.shape[2]
    group = q.shape[1] // kv
    seqs = []  # (first token, new tokens, prior tokens, block table row)
    cu = meta.prefill_cu_q.tolist()
    for i, prior in enumerate(meta.prefill_start.tolist()):
        seqs.append((cu[i], cu[i + 1] - cu[i], prior, meta.prefill_block_tables[i]))
    ctx_lens = meta.decode_ctx_lens.tolist()
    rows = (meta.decode_rows.tolist() if meta.decode_rows is not None
            else range(meta.num_prefill_tokens, meta.num_prefill_tokens + len(ctx_lens)))
    for i, (row, ctx) in enumerate(zip(rows, ctx_lens)):
        seqs.append((row, 1, ctx - 1, meta.decode_block_tables[i]))
    for lo, n, prior, table in seqs:
        total = prior + n
        blocks = table[: (total + bs - 1) // bs].long()
        k = k_cache[blocks].flatten(0, 1)[:total].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks].flatten(0, 1)[:total].float().repeat_interleave(group, dim=1)
        qs = q[lo:lo + n].float()
        scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
        visible = torch.arange(total)[None, :] <= (prior + torch.arange(n))[:, None]
        scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
        out[lo:lo + n] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(out.dtype)


# ---------------------------------------------------------------- Triton kernels
if HAVE_TRITON:
    @triton.jit
    def _prefill_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, cu_ptr, start_ptr, out_ptr,
                        stride_qt, stride_qh, stride_bt, stride_ot, stride_oh, scale_log2,
                        KV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        mblk = tl.program_id(0)
        seq = tl.program_id(1)
        head = tl.program_id(2)
        q0 = tl.load(cu_ptr + seq)
        qlen = tl.load(cu_ptr + seq + 1) - q0
        if mblk * BLOCK_M >= qlen:
            return
        prior = tl.load(start_ptr + seq)
        kvh = head // GROUP
        d = tl.arange(0, D)
        i = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
        imask = i < qlen
        qpos = prior + i
        tok = (q0 + i).to(tl.int64)
        q = tl.load(q_ptr + tok[:, None] * stride_qt + head * stride_qh + d[None, :],
                    mask=imask[:, None], other=0.0)
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        table = bt_ptr + seq.to(tl.int64) * stride_bt
        first_q = prior + mblk * BLOCK_M
        end = tl.minimum(prior + qlen, first_q + BLOCK_M)
        # Keys before the tile's first query are visible to every row: no causal mask there.
        unmasked_end = (first_q // BLOCK_N) * BLOCK_N
        for start in range(0, end, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            nmask = n < end
            blk = tl.load(table + n // PAGE, mask=nmask, other=0).to(tl.int64)
            off = (blk * PAGE + n % PAGE)[:, None] * (KV * D) + kvh * D + d[None, :]
            k = tl.load(k_ptr + off, mask=nmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            if start >= unmasked_end:
                s = tl.where(n[None, :] <= qpos[:, None], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + off, mask=nmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        acc = acc / l[:, None]
        tl.store(out_ptr + tok[:, None] * stride_ot + head * stride_oh + d[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=imask[:, None])

    @triton.jit
    def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, items_ptr, rows_ptr, out_ptr, part_ptr, lse_ptr,
                       stride_qt, stride_qh, stride_bt, stride_ot, stride_oh, scale_log2,
                       KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                       D: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                       PRECISION: tl.constexpr, FIELDS: tl.constexpr):
        item = tl.program_id(0) * FIELDS
        kvh = tl.program_id(1)
        seq = tl.load(items_ptr + item)
        if seq < 0:
            return
        lo = tl.load(items_ptr + item + 1)
        hi = tl.load(items_ptr + item + 2)
        pieces = tl.load(items_ptr + item + 3)
        tok = tl.load(rows_ptr + seq).to(tl.int64)
        g = tl.arange(0, GROUP_PAD)
        gmask = g < GROUP
        heads = kvh * GROUP + g
        d = tl.arange(0, D)
        q = tl.load(q_ptr + tok * stride_qt + heads[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None], other=0.0)
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, D], tl.float32)
        table = bt_ptr + seq.to(tl.int64) * stride_bt
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            nmask = n < hi
            blk = tl.load(table + n // PAGE, mask=nmask, other=0).to(tl.int64)
            off = (blk * PAGE + n % PAGE)[:, None] * (KV * D) + kvh * D + d[None, :]
            k = tl.load(k_ptr + off, mask=nmask[:, None], other=0.0)
            v = tl.load(v_ptr + off, mask=nmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s = tl.where(nmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        if pieces == 1:
            acc = acc / l[:, None]
            tl.store(out_ptr + tok * stride_ot + heads[:, None] * stride_oh + d[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=gmask[:, None])
        else:
            acc = acc / l[:, None]
            lse = m + tl.log2(l)
            slot = tl.load(items_ptr + item + 4)
            row = slot.to(tl.int64) * KV * GROUP + heads
            tl.store(part_ptr + row[:, None] * D + d[None, :], acc, mask=gmask[:, None])
            tl.store(lse_ptr + row, lse, mask=gmask)

    @triton.jit
    def _merge_kernel(part_ptr, lse_ptr, first_ptr, rows_ptr, out_ptr, stride_ot, stride_oh,
                      H: tl.constexpr, D: tl.constexpr, MAX_PIECES: tl.constexpr):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        first = tl.load(first_ptr + seq)
        count = tl.load(first_ptr + seq + 1) - first
        if count <= 1:
            return   # its one piece wrote the output itself, or a graph's spare row: no pieces
        s = tl.arange(0, MAX_PIECES)
        smask = s < count
        row = (first + s).to(tl.int64) * H + head
        lse = tl.load(lse_ptr + row, mask=smask, other=float("-inf"))
        w = tl.exp2(lse - tl.max(lse, axis=0))
        d = tl.arange(0, D)
        part = tl.load(part_ptr + row[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
        o = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
        tok = tl.load(rows_ptr + seq).to(tl.int64)
        tl.store(out_ptr + tok * stride_ot + head * stride_oh + d,
                 o.to(out_ptr.dtype.element_ty))


LOG2E = 1.4426950408889634
# Tile sizes and launch settings (bf16, head_dim <= 128), chosen by measurement. Prefill's on an
# H200: 128-key tiles over three stages run a 2k chunk after an 8k prefix at 375 TFLOP/s
# against 340 with 64-key tiles over two (8k and 2k prompts alone: +2%, +3%). They need about
# 224 KB of shared memory a block, which only Hopper-class GPUs have; others keep the smaller
# tiles. Decode's by a sweep on an H200 (experiments/bench_step_breakdown.py, results in
# experiments/results/decode_attention_sweep_h200.json): a third stage streams 5-9% faster at
# 64x1k, 256x1k and 64x4k, and batches of up to 32 rows, which hold few programs to keep
# bytes in flight, stream long contexts 20% faster with 128-key tiles on 8 warps
# (16x16k: 1.00 of copy bandwidth against 0.83).
PREFILL_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)
PREFILL_CONFIG_LESS_SMEM = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
PREFILL_CONFIG_SMEM = 224 * 1024
DECODE_CONFIG = dict(BLOCK_N=DECODE_BLOCK_N, num_warps=4, num_stages=3)
DECODE_CONFIG_FEW_ROWS = dict(BLOCK_N=128, num_warps=8, num_stages=3)
FEW_ROWS = 32


def _precision(q: torch.Tensor) -> str:
    # float32 tests need true fp32 products; tf32 would add 1e-3 level error.
    return "ieee" if q.dtype == torch.float32 else "tf32"


@functools.cache
def _shared_memory(device: torch.device) -> int:
    """Shared memory one block may opt in to on `device` (0 where unknown, as on CPU)."""
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    # Hopper and datacenter Blackwell (compute capability 9.x, 10.x) offer 227 KB.
    return getattr(props, "shared_memory_per_block_optin", 227 * 1024 if props.major in (9, 10) else 0)


def _prefill(q, k_cache, v_cache, meta, scale, out):
    if not takes_dense_path(q, meta):
        _prefill_triton(q, k_cache, v_cache, meta, scale, out, range(meta.num_prefill_seqs), meta.prefill_max_q)
        return
    chunks = meta.prefill_chunks
    # Each long chunk on its own; each run of shorter chunks between them in one Triton launch.
    for dense, run in itertools.groupby(range(len(chunks)), key=lambda i: runs_dense(*chunks[i][1:])):
        run = list(run)
        if dense:
            for i in run:
                prefill_dense(q, k_cache, v_cache, meta, scale, out, i)
        else:
            _prefill_triton(q, k_cache, v_cache, meta, scale, out, run, max(chunks[i][1] for i in run))


def _prefill_triton(q, k_cache, v_cache, meta, scale, out, seqs: range | list[int], max_q: int):
    """The kernel over the consecutive prefill sequences `seqs`, whose longest chunk is max_q."""
    _, h, d = q.shape
    kv = k_cache.shape[2]
    cfg = dict(PREFILL_CONFIG if _shared_memory(q.device) >= PREFILL_CONFIG_SMEM else PREFILL_CONFIG_LESS_SMEM)
    if q.dtype == torch.float32 or d > 128:
        # Twice the bytes a tile: keep shared memory in bounds.
        cfg.update(BLOCK_M=64, BLOCK_N=32, num_warps=4)
    lo, hi = seqs[0], seqs[-1] + 1
    # cu_q holds absolute rows, so a slice of it still places each chunk in the packed batch.
    # (A slice off a 16-byte boundary compiles one more kernel variant, once: Triton
    # specialises on pointer alignment.)
    tables = meta.prefill_block_tables[lo:hi]
    grid = (triton.cdiv(max_q, cfg["BLOCK_M"]), hi - lo, h)
    _prefill_kernel[grid](q, k_cache, v_cache, tables, meta.prefill_cu_q[lo:hi + 1],
                          meta.prefill_start[lo:hi], out, q.stride(0), q.stride(1),
                          tables.stride(0), out.stride(0), out.stride(1),
                          scale * LOG2E, KV=kv, GROUP=h // kv, D=d, PAGE=meta.block_size,
                          PRECISION=_precision(q), **cfg)


def _decode_config(q: torch.Tensor, rows: int) -> dict:
    # The few-rows tiles need three stages of 64 KB in 2-byte types; float32 would not fit.
    few = rows <= FEW_ROWS and q.element_size() == 2 and q.shape[2] <= 128
    return DECODE_CONFIG_FEW_ROWS if few else DECODE_CONFIG


def _decode_triton(q, k_cache, v_cache, meta, scale, out):
    _, h, d = q.shape
    n = meta.num_decode_seqs
    rows = meta.decode_rows
    if rows is None:
        tp = meta.num_prefill_tokens
        rows = torch.arange(tp, tp + n, dtype=torch.int32, device=q.device)
    kv = k_cache.shape[2]
    group = h // kv
    items = meta.decode_items.shape[0]
    part = torch.empty(items * h, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(items * h, dtype=torch.float32, device=q.device)
    _decode_kernel[(items, kv)](
        q, k_cache, v_cache, meta.decode_block_tables, meta.decode_items, rows, out, part, lse,
        q.stride(0), q.stride(1), meta.decode_block_tables.stride(0), out.stride(0), out.stride(1),
        scale * LOG2E, KV=kv, GROUP=group, GROUP_PAD=max(16, next_pow2(group)), D=d,
        PAGE=meta.block_size, PRECISION=_precision(q), FIELDS=ITEM_FIELDS, **_decode_config(q, n))
    if meta.decode_merge:
        _merge_kernel[(n, h)](part, lse, meta.decode_first, rows, out, out.stride(0), out.stride(1), H=h, D=d,
                              MAX_PIECES=MAX_PIECES, num_warps=4)
