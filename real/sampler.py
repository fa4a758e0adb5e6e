"""Choosing each sequence's next token from its logits: greedy, temperature and top-p.

A row with a seed draws from its own generator, so its tokens do not depend on what else
shares the batch; rows without one draw from the engine's generator.

torch is imported where tokens are drawn, so that request parsing (and `nexus-real client`,
which shares the command line) can load this module without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    """One token per row of float32 `logits` [rows, vocab].

    Rows without a generator of their own are drawn together, in one call on the device.
    """
    import torch

    for i, row in enumerate(rows):
        if row.banned:
            logits[i, list(row.banned)] = float("-inf")
    tokens = logits.argmax(-1).tolist()
    drawn = [i for i, row in enumerate(rows) if row.temperature > 0]
    if not drawn:
        return tokens
    device = logits.device
    temperature = torch.tensor([rows[i].temperature for i in drawn], device=device, dtype=logits.dtype)
    probs = torch.softmax(logits[drawn] / temperature[:, None], -1)
    top_p = [rows[i].top_p for i in drawn]
    if min(top_p) < 1:
        probs = _top_p(probs, torch.tensor(top_p, device=device, dtype=probs.dtype))
    picks = torch.empty(len(drawn), dtype=torch.long, device=device)
    together = [j for j, i in enumerate(drawn) if rows[i].generator is None]
    if together:
        picks[together] = torch.multinomial(probs[together], 1, generator=shared).squeeze(1)
    for j, i in enumerate(drawn):
        if rows[i].generator is not None:
            picks[j] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    for i, token in zip(drawn, picks.tolist()):
        tokens[i] = token
    return tokens


def _top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, keep the most likely tokens whose mass reaches its top_p (at least one), renormalised."""
    import torch

    ordered, order = probs.sort(-1, descending=True)
    mass_before = ordered.cumsum(-1) - ordered
    ordered = ordered.masked_fill(mass_before >= top_p[:, None], 0.0)
    return torch.zeros_like(probs).scatter(-1, order, ordered / ordered.sum(-1, keepdim=True))
