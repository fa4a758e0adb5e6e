"""Shared pieces of the real-engine tests: tiny specs, devices, a float64 attention reference."""
from __future__ import annotations

import random

import numpy as np

import pytest
import torch

from nexus.specs import ModelSpec
from real.attention import AttentionMetadata, decode_items_for, decode_schedule
from real.triton_support import HAVE_TRITON, INTERPRET

TINY = ModelSpec("tiny-llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=128, vocab_size=256, rope_theta=10000.0, rms_norm_eps=1e-6,
                 max_position_embeddings=1024)


def triton_device(dtype: torch.dtype = torch.float32) -> str:
    """Where the Triton kernels run: the GPU, or the CPU under TRITON_INTERPRET=1.

    Triton's interpreter computes bf16 dot products wrongly, so bf16 cases need the GPU.
    """
    if torch.cuda.is_available():
        return "cuda"
    if HAVE_TRITON and INTERPRET and dtype == torch.float32:
        return "cpu"
    pytest.skip("needs a CUDA GPU (or TRITON_INTERPRET=1 with triton installed, float32 only)")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out - ref).norm() / ref.norm())


class PagedCase:
    """Random sequences (prior tokens, new tokens) laid out in a paged cache with shuffled blocks."""

    def __init__(self, chunks: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str, seed: int, block_size: int = 16, num_sms: int = 132) -> None:
        gen = torch.Generator().manual_seed(seed)
        rng = random.Random(seed)
        self.chunks, self.bs = chunks, block_size
        need = [-(-(p + n) // block_size) for p, n in chunks]
        num_blocks = sum(need) + 3
        ids = list(range(num_blocks))
        rng.shuffle(ids)
        self.tables, lo = [], 0
        for k in need:
            self.tables.append(ids[lo:lo + k])
            lo += k
        self.k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
        self.v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
        total_new = sum(n for _, n in chunks)
        self.q = torch.randn(total_new, heads, head_dim, generator=gen).to(dtype)
        order = [i for i, (_, n) in enumerate(chunks) if n > 1] + [i for i, (_, n) in enumerate(chunks) if n == 1]
        self.order = order
        pre = [i for i in order if chunks[i][1] > 1]
        dec = [i for i in order if chunks[i][1] == 1]
        width = max(need)

        def table_tensor(seqs):
            t = torch.zeros(len(seqs), width, dtype=torch.int32)
            for r, i in enumerate(seqs):
                t[r, :need[i]] = torch.tensor(self.tables[i], dtype=torch.int32)
            return t

        lens = [chunks[i][1] for i in pre]
        ctx = [sum(chunks[i]) for i in dec]
        items, first = decode_schedule(np.array(ctx, dtype=np.int64), decode_items_for(len(dec), kv_heads, num_sms))
        cu = torch.tensor([0] + torch.tensor(lens, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
        self.meta = AttentionMetadata(
            slots=torch.zeros(total_new, dtype=torch.int32), num_prefill_tokens=int(sum(lens)),
            prefill_cu_q=cu, prefill_start=torch.tensor([chunks[i][0] for i in pre], dtype=torch.int32),
            prefill_block_tables=table_tensor(pre), prefill_max_q=max(lens, default=0),
            decode_ctx_lens=torch.tensor(ctx, dtype=torch.int32), decode_block_tables=table_tensor(dec),
            decode_items=torch.from_numpy(items), decode_first=torch.from_numpy(first),
            decode_merge=bool(first[-1] > len(dec)), block_size=block_size,
            prefill_chunks=tuple(zip(cu[:-1].tolist(), lens, [chunks[i][0] for i in pre])))
        self.to(device)

    def to(self, device: str) -> None:
        for name in ("k_cache", "v_cache", "q"):
            setattr(self, name, getattr(self, name).to(device))
        for f in ("slots", "prefill_cu_q", "prefill_start", "prefill_block_tables",
                  "decode_ctx_lens", "decode_block_tables", "decode_items", "decode_first"):
            setattr(self.meta, f, getattr(self.meta, f).to(device))

    def reference(self, scale: float) -> torch.Tensor:
        """float64 attention computed from contiguous per-sequence K/V, in packed order."""
        outs = []
        heads = self.q.shape[1]
        lo = 0
        for i in self.order:
            prior, n = self.chunks[i]
            total = prior + n
            pos = torch.arange(total)
            blocks = torch.tensor(self.tables[i])[pos // self.bs]
            k = self.k_cache.cpu().double()[blocks, pos % self.bs]
            v = self.v_cache.cpu().double()[blocks, pos % self.bs]
            group = heads // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            q = self.q.cpu().double()[lo:lo + n]
            s = torch.einsum("qhd,khd->hqk", q, k) * scale
            s = s.masked_fill(pos[None, :] > (prior + torch.arange(n))[:, None], float("-inf"))
            outs.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v))
            lo += n
        return torch.cat(outs).reshape(len(self.q), -1)
