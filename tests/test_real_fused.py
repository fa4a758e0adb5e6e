"""The fused Triton layers (RMSNorm + residual, SiLU-and-multiply, RoPE + KV store) against
their PyTorch reference, which the CPU tests tie to Hugging Face."""
from __future__ import annotations

import pytest
import torch

from nexus.specs import MODELS
from real import fused_ops
from real.rope import cos_sin_table
from real_helpers import rel_err, triton_device

CASES = [(torch.bfloat16, 1e-2), (torch.float32, 1e-5)]


def _reference(fn, *args):
    """Run `fn` through the PyTorch path on float64 copies of the arguments on the CPU."""
    original = fused_ops.use_triton
    fused_ops.use_triton = lambda t: False
    try:
        return fn(*[a.detach().cpu().double() if torch.is_tensor(a) and a.is_floating_point()
                    else (a.cpu() if torch.is_tensor(a) else a) for a in args])
    finally:
        fused_ops.use_triton = original


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", CASES)
def test_rms_norm(dtype: torch.dtype, tol: float) -> None:
    dev = triton_device(dtype)
    x = torch.randn(37, 4096, device=dev).to(dtype)
    res = torch.randn(37, 4096, device=dev).to(dtype)
    w = (1 + 0.1 * torch.randn(4096, device=dev)).to(dtype)
    ref_out, ref_sum = _reference(fused_ops.rms_norm, x, w, 1e-5, res)
    out, summed = fused_ops.rms_norm(x, w, 1e-5, res.clone())
    assert rel_err(out, ref_out) < tol and rel_err(summed, ref_sum) < tol
    alone, same = fused_ops.rms_norm(x, w, 1e-5)
    assert same is x and rel_err(alone, _reference(fused_ops.rms_norm, x, w, 1e-5)[0]) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", CASES)
def test_silu_and_mul(dtype: torch.dtype, tol: float) -> None:
    dev = triton_device(dtype)
    x = (3 * torch.randn(29, 2 * 1500, device=dev)).to(dtype)
    assert rel_err(fused_ops.silu_and_mul(x), _reference(fused_ops.silu_and_mul, x)) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", CASES)
def test_rope_and_store(dtype: torch.dtype, tol: float) -> None:
    dev = triton_device(dtype)
    spec = MODELS["llama-3.1-8b"]
    h, kv, d, t = spec.num_heads, spec.num_kv_heads, spec.head_dim, 21
    cos_sin = cos_sin_table(spec, 5000, dev)
    qkv = torch.randn(t, (h + 2 * kv) * d, device=dev).to(dtype)
    positions = torch.randint(0, 5000, (t,), device=dev, dtype=torch.int32)
    slots = torch.randperm(8 * 16, device=dev)[:t].to(torch.int32)
    caches = [torch.full((8, 16, kv, d), float("nan"), device=dev, dtype=dtype) for _ in range(2)]
    ref_caches = [c.cpu().double() for c in caches]
    ref_qkv = qkv.cpu().double()
    ref_q = _reference(fused_ops.rope_and_store, ref_qkv, positions, cos_sin.double(), *ref_caches, slots, h, kv)
    q = fused_ops.rope_and_store(qkv, positions, cos_sin, *caches, slots, h, kv)
    assert rel_err(q, ref_q) < tol
    written = slots.long().cpu()
    for got, want in zip(caches, ref_caches):
        flat_got, flat_want = got.view(-1, kv, d).cpu(), want.view(-1, kv, d)
        assert rel_err(flat_got[written], flat_want[written]) < tol
        untouched = torch.ones(flat_got.shape[0], dtype=torch.bool)
        untouched[written] = False
        assert flat_got[untouched].isnan().all()  # nothing outside the slots was written
