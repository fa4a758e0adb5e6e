"""What one iteration asks of the GPU: FLOPs and HBM bytes per operator, from a ModelSpec.

An iteration is a handful of operators: four dense matmuls per layer, the LM head, the
memory-bound elementwise kernels, and attention (prefill chunks and the decode step are
separate kernels). Every per-layer operator is identical across layers, so its totals are
the per-layer figures times num_layers; no loop over layers is needed.

FLOPs are stored already divided by the operator's compute efficiency, so a time is simply
flops / peak_rate. Weights are read once per matmul per iteration, shared by every token
in the batch; that sharing is what makes small batches memory-bound.
"""
from __future__ import annotations

import numpy as np

from nexus.cost.base import BatchShape
from nexus.specs import ModelSpec

# Logits are cast to fp32 for sampling: written once, read once by the sampler.
_LOGIT_BYTES = 4


class Work:
    """Per-operator effective FLOPs and HBM bytes of one iteration (all layers)."""
    __slots__ = ("names", "ops", "total_bytes", "_arrays")

    def __init__(self, names: tuple[str, ...], ops: tuple[tuple[float, float], ...]):
        self.names = names
        self.ops = ops                      # (effective flops, bytes) per operator
        self.total_bytes = sum(b for _, b in ops)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.ops

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(flops, bytes) as arrays, built on first use: only vectorized calls need them."""
        if self._arrays is None:
            a = np.array(self.ops, dtype=float).reshape(-1, 2)
            self._arrays = (a[:, 0].copy(), a[:, 1].copy())
        return self._arrays


EMPTY_WORK = Work((), ())


class IterationWork:
    """Turns a BatchShape into Work for one model; per-token coefficients are precomputed."""

    def __init__(self, model: ModelSpec, matmul_efficiency: float, attention_efficiency: float):
        m = model
        nl, h, d, db = m.num_layers, m.hidden_size, m.head_dim, m.dtype_bytes
        q, kv = m.num_heads * d, m.num_kv_heads * d
        qkv = q + 2 * kv
        inter, vocab = m.intermediate_size, m.vocab_size
        mm, at = 1.0 / matmul_efficiency, 1.0 / attention_efficiency

        def dense(k: int, n: int, bias: int = 0) -> tuple[float, float, float]:
            # (effective flops per token, weight bytes, activation bytes per token), all layers
            return (nl * 2.0 * k * n * mm, nl * db * float(k * n + bias), nl * db * float(k + n))

        self._dense = (
            ("qkv_proj", dense(h, qkv, qkv if m.attention_bias else 0)),
            ("o_proj", dense(q, h)),
            ("gate_up_proj", dense(h, 2 * inter)),
            ("down_proj", dense(inter, h)),
        )
        # LM head runs only on tokens that produce logits.
        self._lm = (2.0 * h * vocab * mm, db * float(h * vocab), db * float(h + vocab))
        # Memory-bound kernels, bytes per token: per layer two fused residual-add + RMSNorms
        # (read x and residual, write both), RoPE in place on q and k, the KV-cache write
        # (read k, v; write the cache), SiLU-and-mul (read 2I, write I); once per iteration
        # the embedding gather and the final norm.
        self._elem_per_token = db * float(nl * (8 * h + 2 * (q + kv) + 4 * kv + 3 * inter) + 4 * h)
        self._elem_per_logit = 2.0 * _LOGIT_BYTES * vocab
        # Attention per query-key pair: QK^T and PV, 2 FLOPs each per head dim per query head.
        self._attn_flops_per_pair = nl * 4.0 * q * at
        self._kv_bytes_per_token = nl * db * 2.0 * kv     # K and V read once per kernel
        self._q_bytes_per_token = nl * db * 2.0 * q       # read Q, write the output
        self._dense_memo: dict[tuple[int, int], tuple[float, ...]] = {}

    def _counts(self, shape: BatchShape) -> tuple[int, int, int, int, int, int, int] | None:
        """(tokens, logits, prefill tokens, attention pairs, prefill KV span, decode seqs, decode
        KV tokens) of `shape`, or None if it computes nothing."""
        prefill = pairs = span = logits = 0
        for n, prior in shape.prefill_chunks:
            if n > 0:
                prefill += n
                pairs += n * prior + n * (n + 1) // 2
                span += n + prior
                logits += 1
        ds, dkv = shape.decode_seqs, shape.decode_kv_tokens
        tokens = prefill + ds
        if tokens == 0:
            return None
        return tokens, logits + ds, prefill, pairs, span, ds, dkv

    def _op_bytes(self, counts: tuple[int, int, int, int, int, int, int]) -> list[float]:
        """HBM bytes per operator, in the order of `_op_flops`."""
        tokens, logits, prefill, _, span, ds, dkv = counts
        return [*self._dense_bytes(tokens, logits), *self._attention_bytes(prefill, span, ds, dkv)]

    def _dense_bytes(self, tokens: int, logits: int) -> tuple[float, ...]:
        """The bytes of every operator but attention (the matmuls, the LM head, the elementwise
        kernels), memoised by their two counts: a simulated run asks for the bytes of each
        co-running prefill step, and its steps share a few token counts (the chunk budget)."""
        key = (tokens, logits)
        out = self._dense_memo.get(key)
        if out is None:
            _, lm_weights, lm_per_logit = self._lm
            out = (*[w + a * tokens for _, (_, w, a) in self._dense], lm_weights + lm_per_logit * logits,
                   self._elem_per_token * tokens + self._elem_per_logit * logits)
            if len(self._dense_memo) >= 4096:
                self._dense_memo.clear()
            self._dense_memo[key] = out
        return out

    def _attention_bytes(self, prefill: int, span: int, ds: int, dkv: int) -> tuple[float, ...]:
        if prefill and ds:
            return (self._kv_bytes_per_token * span + self._q_bytes_per_token * prefill,
                    self._kv_bytes_per_token * dkv + self._q_bytes_per_token * ds)
        if prefill:
            return (self._kv_bytes_per_token * span + self._q_bytes_per_token * prefill,)
        if ds:
            return (self._kv_bytes_per_token * dkv + self._q_bytes_per_token * ds,)
        return ()

    def _op_flops(self, counts: tuple[int, int, int, int, int, int, int]) -> tuple[list[str], list[float]]:
        """Operator names and effective FLOPs, in one order with `_op_bytes`."""
        tokens, logits, prefill, pairs, _, ds, dkv = counts
        names = [name for name, _ in self._dense] + ["lm_head", "elementwise"]
        flops = [f * tokens for _, (f, _, _) in self._dense] + [self._lm[0] * logits, 0.0]
        if prefill:
            names.append("prefill_attention")
            flops.append(self._attn_flops_per_pair * pairs)
        if ds:
            names.append("decode_attention")
            flops.append(self._attn_flops_per_pair * dkv)
        return names, flops

    def __call__(self, shape: BatchShape) -> Work:
        counts = self._counts(shape)
        if counts is None:
            return EMPTY_WORK
        names, flops = self._op_flops(counts)
        return Work(tuple(names), tuple(zip(flops, self._op_bytes(counts))))

    def total_bytes(self, shape: BatchShape) -> float:
        """`self(shape).total_bytes`, summed in the same order, without building the Work: the
        simulator asks it for every prefill step that co-runs (15k times in 20k requests)."""
        chunks = shape.prefill_chunks
        if len(chunks) == 1 and chunks[0][0] > 0 and shape.decode_seqs == 0:
            # A step of one prompt chunk (every co-running prefill step of a split policy but a
            # few): _counts of it, written out. The same terms in the same order, to the bit.
            n, prior = chunks[0]
            return sum(self._dense_bytes(n, 1) + (self._kv_bytes_per_token * (n + prior)
                                                  + self._q_bytes_per_token * n,))
        counts = self._counts(shape)
        if counts is None:
            return 0
        tokens, logits, prefill, _, span, ds, dkv = counts
        # The same terms in the same order as _op_bytes, so the same sum to the last bit.
        return sum(self._dense_bytes(tokens, logits) + self._attention_bytes(prefill, span, ds, dkv))
