"""Paged attention (prefill chunks with cached prefixes, decodes) against a float64 reference."""
from __future__ import annotations

import threading

import pytest
import torch

import nexus.graph_buckets
from real.attention import paged_attention, prefill_dense, takes_dense_path
from real.dense_attention import attend, merge_attention, own_keys_attention, warm
from real_helpers import PagedCase, rel_err, triton_device

# Set here rather than read, so that these tests keep covering the path whatever bound the
# engine ships (None turns it off).
DENSE_MIN_TOKENS = 3072


@pytest.fixture
def dense_on(monkeypatch):
    monkeypatch.setattr(nexus.graph_buckets, "DENSE_MIN_TOKENS", DENSE_MIN_TOKENS)

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


# ---------------------------------------------------------------- dense path (long chunks of eager steps)
# Chunks after prefixes of under 256 tokens run as one causal call behind zero queries; longer
# prefixes split at prefix_cut (300: 256 + 44; 4100: 4096 + 4; 8500: 8192 + 308; 512: no rest).
PROMPTS = [(0, 37), (21, 50), (64, 16), (130, 70), (0, 2), (300, 40), (512, 9), (4100, 30), (8500, 3)]


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_path_matches_float64_on_cpu(seed: int) -> None:
    # Gathers each chunk's keys, runs a chunk after a prefix as an unmasked and a causal call,
    # merges them by log-sum-exp: the same steps as on CUDA, with PyTorch's CPU kernel.
    case = PagedCase(PROMPTS, 8, 2, 16, torch.float32, "cpu", seed)
    scale = 16 ** -0.5
    out = torch.full_like(case.q, float("nan"))
    for i in range(len(PROMPTS)):
        prefill_dense(case.q, case.k_cache, case.v_cache, case.meta, scale, out, i)
    assert rel_err(out.flatten(1), case.reference(scale)) < 1e-5


@pytest.mark.parametrize("n", [1, 37, 256, 300])
def test_padding_a_chunk_to_its_dense_length_changes_no_real_query(n: int) -> None:
    # Padded keys sit after every real query, where the causal mask hides them.
    gen = torch.Generator().manual_seed(n)
    q, k, v = torch.randn(n, 4, 8, generator=gen), torch.randn(n, 2, 8, generator=gen), torch.randn(n, 2, 8, generator=gen)
    out, lse = own_keys_attention(q, k, v, scale=0.3)
    exact, exact_lse = attend(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                              v.transpose(0, 1).unsqueeze(0), causal=True, scale=0.3)
    assert out.shape == exact.shape == (1, 4, n, 8)
    torch.testing.assert_close(out, exact)
    torch.testing.assert_close(lse, exact_lse)


def test_warm_builds_each_length_once_a_thread(dense_on) -> None:
    # cuDNN's graphs live per thread, so a new thread builds them again; the CPU runs the same calls.
    lengths = nexus.graph_buckets.dense_lengths(DENSE_MIN_TOKENS + 1)
    assert lengths == [DENSE_MIN_TOKENS, nexus.graph_buckets.dense_length(DENSE_MIN_TOKENS + 1)]
    pairs = [(256, 512)]          # a prefix call: 256 queries over 512 keys
    shape = (torch.device("cpu"), torch.float32, 2, 1, 8)

    def twice() -> list[int]:
        return [warm(lengths, pairs, *shape), warm(lengths[:1], pairs, *shape), warm(lengths, [], *shape)]

    counts: list[list[int]] = []
    for _ in range(2):
        thread = threading.Thread(target=lambda: counts.append(twice()))
        thread.start()
        thread.join()
    assert counts == [[3, 0, 0], [3, 0, 0]]
    assert warm(lengths, pairs, torch.device("cpu"), torch.float32, 4, 1, 8) == 3    # another model's heads


def test_merging_two_key_sets_is_attention_over_their_union() -> None:
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 4, 9, 8, generator=gen) for _ in range(3))
    whole, lse_whole = attend(q, k, v, causal=False, scale=0.3)
    for cut in (1, 4, 8):
        a, lse_a = attend(q, k[:, :, :cut], v[:, :, :cut], causal=False, scale=0.3)
        b, lse_b = attend(q, k[:, :, cut:], v[:, :, cut:], causal=False, scale=0.3)
        torch.testing.assert_close(merge_attention(a, lse_a, b, lse_b), whole)
        torch.testing.assert_close(torch.logaddexp(lse_a, lse_b), lse_whole)


def test_only_eager_steps_with_a_long_chunk_take_the_dense_path(dense_on) -> None:
    case = PagedCase([(0, 20), (5, 1)], 8, 2, 16, torch.bfloat16, "cpu", 0)
    assert case.meta.prefill_chunks == ((0, 20, 0),)
    long = PagedCase([(0, DENSE_MIN_TOKENS)], 8, 2, 16, torch.bfloat16, "cpu", 0)
    assert not takes_dense_path(long.q, long.meta)   # no cuDNN on the CPU
    if torch.cuda.is_available():
        long.to("cuda")
        assert takes_dense_path(long.q, long.meta)
        long.meta.prefill_chunks = None                   # as in a CUDA graph
        assert not takes_dense_path(long.q, long.meta)


@pytest.mark.gpu
@pytest.mark.parametrize("chunks", [
    [(0, DENSE_MIN_TOKENS + 5)],
    # long first chunks between runs of short chunks and a long chunk after a prefix, which
    # the Triton kernel takes
    [(0, 40), (17, 300), (3000, DENSE_MIN_TOKENS), (5, 33), (0, DENSE_MIN_TOKENS)],
    # chunks after long prefixes: split at a cut with a rest (4400: 4352 + 48), and without
    [(4400, 2048), (5, 1), (8192, 2100)]])
def test_dense_path_on_cuda_matches_float64(chunks, dense_on) -> None:
    # 8 query heads on 2 KV heads keeps the float64 reference's score matrices near 1 GB.
    case = PagedCase(chunks, 8, 2, 128, torch.bfloat16, triton_device(torch.bfloat16), 8)
    assert takes_dense_path(case.q, case.meta)
    scale = 128 ** -0.5
    out = paged_attention(case.q, case.k_cache, case.v_cache, case.meta, scale)
    assert rel_err(out, case.reference(scale)) < 1e-2
