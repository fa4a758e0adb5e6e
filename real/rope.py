"""Rotary position embedding tables, including Llama-3's frequency rescaling."""
from __future__ import annotations

import math

import torch

from nexus.errors import UserError
from nexus.specs import ModelSpec


def inv_frequencies(spec: ModelSpec) -> torch.Tensor:
    """Per-pair rotation frequencies (float32, head_dim/2), after any rope scaling."""
    d = spec.head_dim
    # Same arithmetic as the published Llama reference, so tables agree to the last bit.
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = spec.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    raise UserError(f"model {spec.name}: rope_type {kind!r} is not supported (default or llama3)")


def _llama3_scaled(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between."""
    factor = s["factor"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    long_wave = wavelen > old_ctx / low
    short_wave = wavelen < old_ctx / high
    scaled = torch.where(long_wave, inv_freq / factor, inv_freq)
    ramp = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - ramp) * scaled / factor + ramp * scaled
    return torch.where(~long_wave & ~short_wave, blended, scaled)


def cos_sin_table(spec: ModelSpec, max_positions: int, device: torch.device | str) -> torch.Tensor:
    """[max_positions, head_dim] float32: cos in the first half of each row, sin in the second."""
    inv_freq = inv_frequencies(spec)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(device)
