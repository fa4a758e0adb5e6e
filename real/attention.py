"""Attention over the paged KV cache for a packed batch.

A batch packs the tokens of every sequence end to end: first the prefill chunks (each may
continue a prompt whose earlier KV is already cached), then the decode tokens, one per
sequence. Each new token's K and V are written to the cache before attention runs, so both
kernels read every key and value, old and new, through the sequence's block table.

- prefill: causal attention of a chunk's queries over its cached prefix and itself;
- decode: one query per sequence over its whole context, split along the context
  (flash-decoding) so that small batches still fill the GPU, the query heads of one KV
  head (GQA) sharing each load of K and V.

On CUDA these are Triton kernels; on CPU `_torch_attention` computes the same thing by
gathering each sequence's blocks, and is the reference the kernels are tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
      decode_splits: how many pieces each context is cut into (fixed per CUDA graph).
    """
    slots: torch.Tensor
    num_prefill_tokens: int
    prefill_cu_q: torch.Tensor
    prefill_start: torch.Tensor
    prefill_block_tables: torch.Tensor
    prefill_max_q: int
    decode_ctx_lens: torch.Tensor
    decode_block_tables: torch.Tensor
    decode_splits: int = 1
    block_size: int = 16

    @property
    def num_prefill_seqs(self) -> int:
        return self.prefill_start.shape[0]

    @property
    def num_decode_seqs(self) -> int:
        return self.decode_ctx_lens.shape[0]


PROGRAMS_PER_SM = 2  # measured: at batch 64 one piece beat two by 2% on an H100


def decode_splits_for(num_seqs: int, num_kv_heads: int, num_sms: int, max_splits: int = 16) -> int:
    """Pieces per context so that the decode grid has about PROGRAMS_PER_SM programs per SM."""
    programs = max(1, num_seqs * num_kv_heads)
    return max(1, min(max_splits, math.ceil(PROGRAMS_PER_SM * num_sms / programs)))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D] (may be a strided view); caches [num_blocks, block_size, KV, D].

    Returns [T, H * D] in q's dtype.
    """
    t, h, d = q.shape
    out = torch.empty(t, h, d, dtype=q.dtype, device=q.device)
    tp = meta.num_prefill_tokens
    if use_triton(q):
        if meta.num_prefill_seqs:
            _prefill_triton(q[:tp], k_cache, v_cache, meta, scale, out[:tp])
        if meta.num_decode_seqs:
            _decode_triton(q[tp:], k_cache, v_cache, meta, scale, out[tp:])
    else:
        _torch_attention(q, k_cache, v_cache, meta, scale, out)
    return out.view(t, h * d)


# ---------------------------------------------------------------- PyTorch path (CPU, reference)
def _torch_attention(q, k_cache, v_cache, meta, scale, out):
    bs = meta.block_size
    kv = k_cache.shape[2]
    group = q.shape[1] // kv
    seqs = []  # (first token, new tokens, prior tokens, block table row)
    cu = meta.prefill_cu_q.tolist()
    for i, prior in enumerate(meta.prefill_start.tolist()):
        seqs.append((cu[i], cu[i + 1] - cu[i], prior, meta.prefill_block_tables[i]))
    tp = meta.num_prefill_tokens
    for i, ctx in enumerate(meta.decode_ctx_lens.tolist()):
        seqs.append((tp + i, 1, ctx - 1, meta.decode_block_tables[i]))
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
    def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, part_ptr, lse_ptr,
                       stride_qt, stride_qh, stride_bt, stride_ot, stride_oh, scale_log2,
                       KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                       D: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                       SPLITS: tl.constexpr, PRECISION: tl.constexpr):
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(ctx_ptr + seq)
        per_split = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
        lo = split * per_split
        hi = tl.minimum(lo + per_split, ctx)
        g = tl.arange(0, GROUP_PAD)
        gmask = g < GROUP
        heads = kvh * GROUP + g
        d = tl.arange(0, D)
        q = tl.load(q_ptr + seq.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + d[None, :],
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
        if SPLITS == 1:
            acc = acc / l[:, None]
            tl.store(out_ptr + seq.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + d[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=gmask[:, None])
        else:
            # An empty piece (short context) has l == 0: give it zero weight in the merge.
            empty = l == 0.0
            acc = acc / tl.where(empty, 1.0, l)[:, None]
            lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
            row = (seq.to(tl.int64) * KV * GROUP + heads) * SPLITS + split
            tl.store(part_ptr + row[:, None] * D + d[None, :], acc, mask=gmask[:, None])
            tl.store(lse_ptr + row, lse, mask=gmask)

    @triton.jit
    def _merge_kernel(part_ptr, lse_ptr, out_ptr, stride_ot, stride_oh,
                      H: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        row = (seq.to(tl.int64) * H + head) * SPLITS
        s = tl.arange(0, SPLITS)
        lse = tl.load(lse_ptr + row + s)
        w = tl.exp2(lse - tl.max(lse, axis=0))
        d = tl.arange(0, D)
        part = tl.load(part_ptr + (row + s)[:, None] * D + d[None, :])
        o = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
        tl.store(out_ptr + seq.to(tl.int64) * stride_ot + head * stride_oh + d,
                 o.to(out_ptr.dtype.element_ty))


LOG2E = 1.4426950408889634
# Tile sizes and launch settings (bf16, head_dim <= 128), chosen by measurement on an H100.
PREFILL_CONFIG = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
DECODE_CONFIG = dict(BLOCK_N=64, num_warps=4, num_stages=2)


def _precision(q: torch.Tensor) -> str:
    # float32 tests need true fp32 products; tf32 would add 1e-3 level error.
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _prefill_triton(q, k_cache, v_cache, meta, scale, out):
    _, h, d = q.shape
    kv = k_cache.shape[2]
    cfg = dict(PREFILL_CONFIG)
    if q.dtype == torch.float32 or d > 128:
        # Twice the bytes a tile: keep shared memory in bounds.
        cfg.update(BLOCK_M=64, BLOCK_N=32, num_warps=4)
    p = meta.num_prefill_seqs
    grid = (triton.cdiv(meta.prefill_max_q, cfg["BLOCK_M"]), p, h)
    _prefill_kernel[grid](q, k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_q,
                          meta.prefill_start, out, q.stride(0), q.stride(1),
                          meta.prefill_block_tables.stride(0), out.stride(0), out.stride(1),
                          scale * LOG2E, KV=kv, GROUP=h // kv, D=d, PAGE=meta.block_size,
                          PRECISION=_precision(q), **cfg)


def _decode_triton(q, k_cache, v_cache, meta, scale, out):
    n, h, d = q.shape
    kv = k_cache.shape[2]
    splits = next_pow2(meta.decode_splits)
    group = h // kv
    common = dict(KV=kv, GROUP=group, GROUP_PAD=max(16, next_pow2(group)), D=d,
                  PAGE=meta.block_size, SPLITS=splits, PRECISION=_precision(q), **DECODE_CONFIG)
    grid = (n, kv, splits)
    args = (q, k_cache, v_cache, meta.decode_block_tables, meta.decode_ctx_lens, out)
    strides = (q.stride(0), q.stride(1), meta.decode_block_tables.stride(0),
               out.stride(0), out.stride(1), scale * LOG2E)
    if splits == 1:
        _decode_kernel[grid](*args, out, out, *strides, **common)
        return
    part = torch.empty(n * h * splits, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(n * h * splits, dtype=torch.float32, device=q.device)
    _decode_kernel[grid](*args, part, lse, *strides, **common)
    _merge_kernel[(n, h)](part, lse, out, out.stride(0), out.stride(1), H=h, D=d, SPLITS=splits,
                          num_warps=4)
