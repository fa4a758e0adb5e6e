"""Prefill attention on keys and values gathered out of the paged cache, by cuDNN's fused
kernel: the path `real.attention` takes for long first chunks in eager steps when
nexus.graph_buckets.runs_dense picks them.

A chunk's keys and values are copied out of its blocks into one [S, KV, D] tensor (an
`index_select` each) and handed to cuDNN as strided [1, KV, S, D] views; cuDNN takes GQA and
those strides as they are. cuDNN builds a graph for each new shape and PyTorch keeps them per
thread, so the chunk's own causal call is padded to nexus.graph_buckets.dense_length, and
`warm` builds those lengths' graphs on a thread before it serves (measurements in
nexus/graph_buckets.py). A chunk after a prefix runs as two calls, the prefix unmasked and the
chunk's own keys causal, merged by log-sum-exp: cuDNN's lower-right causal mask, which would do
it in one, ran at 255 TFLOP/s on an H200 (experiments/results/engine_probes_h200.json). No
served chunk takes that form (its prefix length would be a graph of its own); the attention
bench times it. On the CPU the same steps run on PyTorch's CPU kernel, which is how the tests
check them.
"""
from __future__ import annotations

import functools
import threading
from typing import Iterable

import torch
import torch.nn.functional as F

from nexus.graph_buckets import dense_length

# The own-keys shapes whose cuDNN graphs this thread has built (see warm).
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
    total = prior + n
    k = k_cache.index_select(0, blocks).flatten(0, 1)[:total]
    v = v_cache.index_select(0, blocks).flatten(0, 1)[:total]
    o, lse = own_keys_attention(q, k[prior:], v[prior:], scale)
    into = out.transpose(0, 1).unsqueeze(0)
    if prior:
        qs = q.transpose(0, 1).unsqueeze(0)
        o_prefix, lse_prefix = attend(qs, as_heads(k[:prior]), as_heads(v[:prior]), causal=False, scale=scale)
        merge_attention(o_prefix, lse_prefix, o, lse, out=into)
    else:
        into.copy_(o)


def own_keys_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of a chunk's queries q [n, H, D] over its own keys and values [n, KV, D],
    all padded at the end to dense_length(n) (zeros: finite, and after every real query, so the
    causal mask hides them); returns `attend`'s output and log-sum-exp for the n real queries."""
    n = q.shape[0]
    pad = (0, 0, 0, 0, 0, dense_length(n) - n)
    o, lse = attend(as_heads(F.pad(q, pad)), as_heads(F.pad(k, pad)), as_heads(F.pad(v, pad)),
                    causal=True, scale=scale)
    return o[:, :, :n], lse[:, :, :n]


def as_heads(x: torch.Tensor) -> torch.Tensor:
    """[1, heads, S, D], a view of x [S, heads, D] (the strides cuDNN's graphs are built for)."""
    return x.transpose(0, 1).unsqueeze(0)


def warm(lengths: Iterable[int], device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int,
         head_dim: int) -> int:
    """Build, on this thread, the cuDNN graphs of own-keys calls padded to each of `lengths`
    (dense_length values) that it has not built yet; returns how many it built. A step's first
    call of a new shape otherwise builds its graph inside the step: 40-60 ms on an H200."""
    built = _built.__dict__.setdefault("shapes", set())
    todo = [n for n in lengths if (n, device, dtype, heads, kv_heads, head_dim) not in built]
    for n in todo:
        q = torch.zeros(n, heads, head_dim, device=device, dtype=dtype)
        kv = torch.zeros(n, kv_heads, head_dim, device=device, dtype=dtype)
        own_keys_attention(q, kv, kv, scale=1.0)
        built.add((n, device, dtype, heads, kv_heads, head_dim))
    return len(todo)
