"""Choosing each sequence's next token from its logits: greedy, temperature and top-p.

A row with a seed draws from its own generator, so its tokens do not depend on what else
shares the batch; rows without one draw from the engine's generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Row:
    """How to pick one row's token; `banned` token ids can never be picked (EOS before min_tokens)."""
    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    banned: tuple[int, ...] = field(default_factory=tuple)


def sample(logits: torch.Tensor, rows: list[Row], shared: torch.Generator) -> list[int]:
    """One token per row of float32 `logits` [rows, vocab]."""
    for i, row in enumerate(rows):
        if row.banned:
            logits[i, list(row.banned)] = float("-inf")
    tokens = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        if row.temperature > 0:
            probs = torch.softmax(logits[i] / row.temperature, -1)
            if row.top_p < 1:
                probs = _top_p(probs, row.top_p)
            tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator or shared))
    return tokens


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches top_p (at least one), renormalised."""
    ordered, order = probs.sort(descending=True)
    mass_before = ordered.cumsum(-1) - ordered
    ordered = ordered.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, ordered / ordered.sum())
