"""One paged KV cache on the device, shared by the prefill and decode phases.

Layout: [layers, 2 (K, V), num_blocks + 1, block_size, kv_heads, head_dim]. Block ids
0..num_blocks-1 belong to the caller's block accounting (nexus KV); the one extra block at
the end is a sink that padded rows of a CUDA graph write into, so no kernel needs a branch
for padding.
"""
from __future__ import annotations

import torch

from nexus.specs import ModelSpec

BLOCK_SIZE = 16


class KVCache:
    def __init__(self, spec: ModelSpec, num_blocks: int, device: torch.device | str,
                 dtype: torch.dtype, block_size: int = BLOCK_SIZE) -> None:
        if num_blocks < 1:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.pad_block = num_blocks
        # Zeroed so that nothing ever reads uninitialised (possibly NaN) bytes.
        self.data = torch.zeros(spec.num_layers, 2, num_blocks + 1, block_size, spec.num_kv_heads,
                                spec.head_dim, dtype=dtype, device=device)
        self.k = self.data[:, 0]
        self.v = self.data[:, 1]

    @property
    def bytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def block_bytes(spec: ModelSpec, block_size: int = BLOCK_SIZE, dtype_bytes: int | None = None) -> int:
    """Bytes one block takes across all layers, K and V."""
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * (dtype_bytes or spec.dtype_bytes)
    return block_size * per_token


def activation_reserve_bytes(spec: ModelSpec, max_batch_tokens: int) -> int:
    """Generous estimate of the peak activation memory of one forward of `max_batch_tokens`.

    The largest live tensors are the gate/up output and the SiLU product (3 x intermediate)
    and the qkv, attention and residual tensors; logits are computed for one row per sequence.
    Doubled for the allocator's slack and the second phase's stream, plus 1 GiB for cuBLAS
    workspaces and CUDA graph pools.
    """
    width = 3 * spec.intermediate_size + (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim \
        + 4 * spec.hidden_size
    return 2 * max_batch_tokens * width * spec.dtype_bytes + 2**30


def blocks_for_memory(spec: ModelSpec, free_bytes: int, utilization: float = 0.9,
                      weight_bytes: int | None = None, reserve_bytes: int | None = None,
                      max_batch_tokens: int = 8192, block_size: int = BLOCK_SIZE) -> int:
    """KV blocks that fit in free_bytes * utilization after the weights and activations.

    `free_bytes` is what the device had free before the weights were loaded.
    """
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    weights = spec.weight_bytes if weight_bytes is None else weight_bytes
    reserve = activation_reserve_bytes(spec, max_batch_tokens) if reserve_bytes is None else reserve_bytes
    budget = int(free_bytes * utilization) - weights - reserve
    return max(0, budget // block_bytes(spec, block_size))
