"""Paged attention (prefill chunks with cached prefixes, decodes) against a float64 reference."""
from __future__ import annotations

import pytest
import torch

from real.attention import paged_attention
from real_helpers import PagedCase, rel_err, triton_device

# (prior tokens already cached, new tokens): prefill from scratch, continuing chunks that
# start mid-block, a 1-token chunk (runs as a decode), and decodes of many context lengths.
MIXED = [(0, 37), (21, 50), (64, 16), (5, 1), (0, 1), (130, 1), (300, 1), (47, 1)]


def _check(device: str, dtype: torch.dtype, chunks, heads: int, kv_heads: int, head_dim: int,
           seed: int, tol: float, num_sms: int = 132) -> None:
    case = PagedCase(chunks, heads, kv_heads, head_dim, dtype, device, seed, num_sms=num_sms)
    scale = head_dim ** -0.5
    out = paged_attention(case.q, case.k_cache, case.v_cache, case.meta, scale)
    assert out.dtype == dtype and out.shape == (len(case.q), heads * head_dim)
    assert rel_err(out, case.reference(scale)) < tol


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_path_matches_float64(seed: int) -> None:
    _check("cpu", torch.float32, MIXED, heads=8, kv_heads=2, head_dim=16, seed=seed, tol=1e-5)


def test_torch_path_plain_mha() -> None:
    _check("cpu", torch.float32, [(0, 20), (33, 1)], heads=4, kv_heads=4, head_dim=32, seed=3, tol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_triton_matches_float64(dtype: torch.dtype, tol: float, seed: int) -> None:
    _check(triton_device(dtype), dtype, MIXED, heads=8, kv_heads=2, head_dim=64, seed=seed, tol=tol)


PRECISIONS = [(torch.bfloat16, 1e-2), (torch.float32, 1e-5)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", PRECISIONS)
@pytest.mark.parametrize("num_sms", [132, 1])  # many context splits merged, and a single split
def test_triton_decode_llama8b_heads(dtype: torch.dtype, tol: float, num_sms: int) -> None:
    chunks = [(c, 1) for c in (1, 15, 16, 17, 200, 1023, 2048, 64)]
    _check(triton_device(dtype), dtype, chunks, heads=32, kv_heads=8, head_dim=128, seed=5,
           tol=tol, num_sms=num_sms)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", PRECISIONS)
@pytest.mark.parametrize("num_sms", [132, 16])
def test_triton_decode_one_long_context_among_short_ones(dtype: torch.dtype, tol: float, num_sms: int) -> None:
    # The work list cuts the long context into many pieces and leaves the short ones whole.
    chunks = [(c, 1) for c in (5000, 30, 1, 300, 64, 65, 12, 2000)]
    _check(triton_device(dtype), dtype, chunks, heads=32, kv_heads=8, head_dim=128, seed=7,
           tol=tol, num_sms=num_sms)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", PRECISIONS)
def test_triton_long_prefill_with_prefix(dtype: torch.dtype, tol: float) -> None:
    _check(triton_device(dtype), dtype, [(100, 300), (0, 129)], heads=32, kv_heads=8,
           head_dim=128, seed=6, tol=tol)
