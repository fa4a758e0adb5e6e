"""Prefill attention on keys and values gathered out of the paged cache, by cuDNN's fused
kernel: the path `real.attention` takes for long chunks in eager steps when
nexus.graph_buckets.runs_dense picks them.

A chunk's keys and values are copied out of its blocks into one [S, KV, D] tensor (an
`index_select` each) and handed to cuDNN as strided [1, KV, S, D] views; cuDNN takes GQA and
those strides as they are. cuDNN builds a graph for each new shape and PyTorch keeps them per
thread, so the chunk's own causal call is padded to nexus.graph_buckets.dense_length, and
`warm` builds those lengths' graphs on a thread before it serves (measurements in
nexus/graph_buckets.py). A chunk after a prefix runs as two calls merged by log-sum-exp: the
prefix up to nexus.graph_buckets.prefix_cut unmasked, and the rest of the prefix with the
chunk's own keys causal, behind as many zero queries (cuDNN's lower-right causal mask, which
would do it in one call, ran at 255 TFLOP/s on an H200: experiments/results/engine_probes_h200.json).
On the CPU the same steps run on PyTorch's CPU kernel, which is how the tests
check them.
"""
from __future__ import annotations

import functools
import threading
from typing import Iterable

import torch
import torch.nn.functional as F

from nexus.graph_buckets import dense_length, prefix_cut

# The shapes whose cuDNN graphs this thread has built (see warm).
_built = threading.local()


@functools.cache
def dense_attention_works(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """cuDNN's fused attention is there for these inputs (Ampere or later, 16-bit, head_dim <= 128)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or head_dim > 128:
        return False
    if not (torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(device)[0] >= 8):
        return False
    q = torch.zeros(1, 2, 16, head_dim, dtype=dtype, device=device)
    k = torch.zeros(1, 1, 16, head_dim, dtype=dtype, device=device)
    try:
        attend(q, k, k, causal=True, scale=1.0)
    except RuntimeError:
        return False
    return True


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [1, H, n, D] over k, v [1, KV, S, D] (H a multiple of KV); returns the
    output [1, H, n, D] and each query's log-sum-exp of scores (natural log) [1, H, n, 1].

    causal masks key j from query i when j > i (the chunk's own keys, n == S)."""
    if q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale)[:2]
    else:
        # The CPU kernel takes as many KV heads as query heads.
        group = q.shape[1] // k.shape[1]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), 0.0, causal, scale=scale)
    return out, lse.reshape(*out.shape[:3], 1).float()


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over the union of two disjoint key sets, from each set's output and log-sum-exp
    (into `out` if given)."""
    # a's share of the union's softmax mass is sigmoid(lse_a - lse_b): one interpolation
    # kernel over the outputs, where weighting each in float32 took seven.
    share = torch.sigmoid(lse_a - lse_b).to(out_a.dtype)
    return torch.lerp(out_b, out_a, share, out=out)


def chunk_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, blocks: torch.Tensor,
                    prior: int, scale: float, out: torch.Tensor) -> None:
    """Attention of one chunk's queries q [n, H, D] over the `prior` tokens cached before it and
    itself, written into out [n, H, D]; `blocks` holds the sequence's blocks in order, at least
    as many as its prior + n tokens fill."""
    n = q.shape[0]
    cut = prefix_cut(prior)
    k = k_cache.index_select(0, blocks).flatten(0, 1)[:prior + n]
    v = v_cache.index_select(0, blocks).flatten(0, 1)[:prior + n]
    o, lse = own_keys_attention(q, k[cut:], v[cut:], scale)
    into = out.transpose(0, 1).unsqueeze(0)
    if cut:
        o_prefix, lse_prefix = prefix_attention(q, k[:cut], v[:cut], scale)
        merge_attention(o_prefix, lse_prefix, o, lse, out=into)
    else:
        into.copy_(o)


def own_keys_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a chunk's queries q [n, H, D] over keys and values [m, KV, D] (m >= n) whose
    last n are the chunk's own, causal among those, and the first m - n visible to every query;
    returns `attend`'s output and log-sum-exp for the n queries. The call is causal over m rows
    padded at the end to dense_length(m): m - n zero queries in front (their rows are dropped),
    zeros after (finite, and after every real query, so the mask hides them)."""
    n, m = q.shape[0], k.shape[0]
    end = (0, 0, 0, 0, 0, dense_length(m) - m)
    o, lse = attend(as_heads(F.pad(q, (0, 0, 0, 0, m - n, dense_length(m) - m))), as_heads(F.pad(k, end)),
                    as_heads(F.pad(v, end)), causal=True, scale=scale)
    return o[:, :, m - n:m], lse[:, :, m - n:m]


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries q [n, H, D] over every one of keys and values [cut, KV, D] (cut a
    dense length), the queries padded at the end to dense_length(n); as `attend` returns, for
    the n queries."""
    n = q.shape[0]
    o, lse = attend(as_heads(F.pad(q, (0, 0, 0, 0, 0, dense_length(n) - n))), as_heads(k), as_heads(v),
                    causal=False, scale=scale)
    return o[:, :, :n], lse[:, :, :n]


def as_heads(x: torch.Tensor) -> torch.Tensor:
    """[1, heads, S, D], a view of x [S, heads, D] (the strides cuDNN's graphs are built for)."""
    return x.transpose(0, 1).unsqueeze(0)


def warm(own_lengths: Iterable[int], prefix_pairs: Iterable[tuple[int, int]], device: torch.device,
         dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> int:
    """Build, on this thread, the cuDNN graphs of own-keys calls padded to each of `own_lengths`
    and of prefix calls of each (queries, keys) of `prefix_pairs` (nexus.graph_buckets.dense_shapes)
    that it has not built yet; returns how many it built. A step's first call of a new shape
    otherwise builds its graph inside the step: 40-60 ms on an H200."""
    built = _built.__dict__.setdefault("shapes", set())
    model = (device, dtype, heads, kv_heads, head_dim)
    todo = [(n, 0) for n in own_lengths] + list(prefix_pairs)
    todo = [shape for shape in todo if (shape, model) not in built]
    for n, cut in todo:
        q = torch.zeros(n, heads, head_dim, device=device, dtype=dtype)
        if cut:
            kv = torch.zeros(cut, kv_heads, head_dim, device=device, dtype=dtype)
            prefix_attention(q, kv, kv, scale=1.0)
        else:
            kv = torch.zeros(n, kv_heads, head_dim, device=device, dtype=dtype)
            own_keys_attention(q, kv, kv, scale=1.0)
        built.add(((n, cut), model))
    return len(todo)
