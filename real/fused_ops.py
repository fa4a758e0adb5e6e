"""Elementwise layers fused into single passes: RMSNorm (+ residual add), SiLU-and-multiply,
and RoPE applied to q and k with k and v stored straight into the paged KV cache.

On a GPU each is one Triton kernel, because unfused they cost a fifth of a prefill's time in
extra memory traffic. The PyTorch versions below are the reference and the CPU path; they
follow Hugging Face's Llama arithmetic.
"""
from __future__ import annotations

import torch

from real.triton_support import HAVE_TRITON, next_pow2, tl, triton, use_triton


# ---------------------------------------------------------------- RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (norm(x + residual) * weight, x + residual); with no residual, x itself is it."""
    if use_triton(x):
        return _rms_norm_triton(x, weight, eps, residual)
    h = x if residual is None else x + residual
    hf = h.float()
    normed = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed, h


if HAVE_TRITON:
    @triton.jit
    def _rms_norm_kernel(x_ptr, res_ptr, out_ptr, w_ptr, n_cols, eps,
                         HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
        if HAS_RES:
            x = x + tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0)
            tl.store(res_ptr + row * n_cols + cols, x, mask=mask)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = (xf * rstd) * w
        tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rms_norm_triton(x, weight, eps, residual):
    x = x.contiguous()
    n = x.shape[-1]
    out = torch.empty_like(x)
    rows = x.numel() // n
    if residual is not None:
        # The sum replaces the residual in place: the caller's next residual is this tensor.
        residual = residual.contiguous()
    block = next_pow2(n)
    _rms_norm_kernel[(rows,)](x, residual if residual is not None else x, out, weight, n, eps,
                              HAS_RES=residual is not None, BLOCK=block,
                              num_warps=min(16, max(1, block // 512)))
    return out, (x if residual is None else residual)


# ---------------------------------------------------------------- SiLU and multiply
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x = [gate | up] along the last dim; returns silu(gate) * up."""
    if use_triton(x):
        return _silu_and_mul_triton(x)
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


if HAVE_TRITON:
    @triton.jit
    def _silu_and_mul_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g = tl.load(x_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _silu_and_mul_triton(x):
    x = x.contiguous()
    n = x.shape[-1] // 2
    rows = x.numel() // (2 * n)
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    block = 1024
    _silu_and_mul_kernel[(rows, triton.cdiv(n, block))](x, out, n, BLOCK=block, num_warps=4)
    return out


# ---------------------------------------------------------------- RoPE + KV store
def rope_and_store(qkv: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                   num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Rotate q in place inside `qkv`; write rotated k and plain v to their cache slots.

    qkv: [T, (H + 2*KV) * D]; cos_sin: [max_pos, D] (cos | sin halves); caches:
    [num_blocks, block_size, KV, D]; slots: [T] flat slot = block_id * block_size + offset.
    Returns q as a [T, H, D] view of qkv.
    """
    t = qkv.shape[0]
    d = cos_sin.shape[1]
    q = qkv[:, :num_heads * d].view(t, num_heads, d)
    if use_triton(qkv):
        _rope_and_store_triton(qkv, positions, cos_sin, k_cache, v_cache, slots,
                               num_heads, num_kv_heads, d)
        return q
    k = qkv[:, num_heads * d:(num_heads + num_kv_heads) * d].view(t, num_kv_heads, d)
    v = qkv[:, (num_heads + num_kv_heads) * d:].view(t, num_kv_heads, d)
    cos, sin = cos_sin[positions.long()].unsqueeze(1).chunk(2, dim=-1)
    q.copy_(_rotate(q, cos, sin))
    flat_k = k_cache.view(-1, num_kv_heads, d)
    flat_v = v_cache.view(-1, num_kv_heads, d)
    slots = slots.long()
    flat_k[slots] = _rotate(k, cos, sin).to(k_cache.dtype)
    flat_v[slots] = v.to(v_cache.dtype)
    return q


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Pairs (i, i + D/2) rotate together: Hugging Face's rotate_half layout.
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


if HAVE_TRITON:
    @triton.jit
    def _rope_and_store_kernel(qkv_ptr, pos_ptr, cs_ptr, kc_ptr, vc_ptr, slot_ptr, stride_tok,
                               H: tl.constexpr, KV: tl.constexpr, HALF: tl.constexpr,
                               H_PAD: tl.constexpr, KV_PAD: tl.constexpr):
        tok = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + tok).to(tl.int64)
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        i = tl.arange(0, HALF)
        cos = tl.load(cs_ptr + pos * 2 * HALF + i)[None, :]
        sin = tl.load(cs_ptr + pos * 2 * HALF + HALF + i)[None, :]
        row = qkv_ptr + tok * stride_tok

        h = tl.arange(0, H_PAD)[:, None]
        hm = h < H
        q1p = row + h * 2 * HALF + i[None, :]
        q1 = tl.load(q1p, mask=hm, other=0.0).to(tl.float32)
        q2 = tl.load(q1p + HALF, mask=hm, other=0.0).to(tl.float32)
        tl.store(q1p, (q1 * cos - q2 * sin).to(qkv_ptr.dtype.element_ty), mask=hm)
        tl.store(q1p + HALF, (q2 * cos + q1 * sin).to(qkv_ptr.dtype.element_ty), mask=hm)

        g = tl.arange(0, KV_PAD)[:, None]
        gm = g < KV
        k1p = row + (H + g) * 2 * HALF + i[None, :]
        k1 = tl.load(k1p, mask=gm, other=0.0).to(tl.float32)
        k2 = tl.load(k1p + HALF, mask=gm, other=0.0).to(tl.float32)
        dst = slot * KV * 2 * HALF + g * 2 * HALF + i[None, :]
        tl.store(kc_ptr + dst, (k1 * cos - k2 * sin).to(kc_ptr.dtype.element_ty), mask=gm)
        tl.store(kc_ptr + dst + HALF, (k2 * cos + k1 * sin).to(kc_ptr.dtype.element_ty), mask=gm)
        v1p = row + (H + KV + g) * 2 * HALF + i[None, :]
        tl.store(vc_ptr + dst, tl.load(v1p, mask=gm, other=0.0), mask=gm)
        tl.store(vc_ptr + dst + HALF, tl.load(v1p + HALF, mask=gm, other=0.0), mask=gm)


def _rope_and_store_triton(qkv, positions, cos_sin, k_cache, v_cache, slots, h, kv, d):
    assert qkv.stride(1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    t = qkv.shape[0]
    if t == 0:
        return
    _rope_and_store_kernel[(t,)](qkv, positions, cos_sin, k_cache, v_cache, slots, qkv.stride(0),
                                 H=h, KV=kv, HALF=d // 2, H_PAD=next_pow2(h), KV_PAD=next_pow2(kv),
                                 num_warps=4)
