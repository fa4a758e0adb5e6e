"""A Llama-family decoder (Llama 3.x, Qwen 2.5) that runs packed batches over a paged KV cache.

Shapes come from `nexus.specs.ModelSpec`. q/k/v and gate/up projections are fused into one
matrix each, so a layer is four matrix products; `real.weights` maps Hugging Face
checkpoints onto this layout.
"""
from __future__ import annotations

import torch
from torch import nn

from nexus.specs import ModelSpec
from real.attention import AttentionMetadata, paged_attention
from real.fused_ops import rms_norm, rope_and_store, silu_and_mul
from real.kv_cache import KVCache
from real.rope import cos_sin_table


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.qkv = nn.Linear(spec.hidden_size, (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim,
                             bias=spec.attention_bias)
        self.o = nn.Linear(spec.num_heads * spec.head_dim, spec.hidden_size, bias=False)
        self.scale = spec.head_dim ** -0.5

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv(x)
        q = rope_and_store(qkv, positions, cos_sin, k_cache, v_cache, meta.slots,
                           self.num_heads, self.num_kv_heads)
        return self.o(paged_attention(q, k_cache, v_cache, meta, self.scale))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gate_up = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(silu_and_mul(self.gate_up(x)))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.input_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.attn = Attention(spec)
        self.post_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                cos_sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so each norm can fuse the add before it.
        x, residual = self.input_norm(x, residual)
        x = self.attn(x, positions, cos_sin, k_cache, v_cache, meta)
        x, residual = self.post_norm(x, residual)
        return self.mlp(x), residual


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec, max_positions: int) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = None if spec.tie_word_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.register_buffer("cos_sin", cos_sin_table(spec, max_positions, self.embed.weight.device),
                             persistent=False)

    @property
    def max_positions(self) -> int:
        return self.cos_sin.shape[0]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVCache,
                meta: AttentionMetadata, select: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states after the final norm, for the rows in `select` (all rows if None).

        Writes every token's K and V into `kv` at `meta.slots` on the way.
        """
        x, residual = self.embed(input_ids), None
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, residual, positions, self.cos_sin, kv.k[i], kv.v[i], meta)
        if select is not None:
            x, residual = x[select], residual[select]
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(hidden, head).float()

    @torch.no_grad()
    def init_random(self, seed: int, std: float = 0.02) -> None:
        """Seeded normal weights (unit norms), generated on the model's device."""
        gen = torch.Generator(device=self.embed.weight.device).manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)


def build_model(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype,
                max_positions: int, seed: int = 0) -> Transformer:
    """A model with seeded random weights, allocated directly on `device` in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of the weights
    try:
        with torch.device(device):
            model = Transformer(spec, max_positions)
    finally:
        torch.set_default_dtype(previous)
    model.init_random(seed)
    return model.eval().requires_grad_(False)
