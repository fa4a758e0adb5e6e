"""Prefill-first without chunking (the original vLLM scheduler): whole prompts pre-empt decode."""
from __future__ import annotations

from nexus.policy.base import Policy, decode_step, take_prefill_chunks
from nexus.state import Batch, ServingState


class PrefillFirst(Policy):
    name = "prefill-first"

    def __init__(self, max_prefill_tokens: int = 8192):
        self.max_prefill_tokens = max_prefill_tokens

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        chunks = take_prefill_chunks(state, self.max_prefill_tokens, whole_prompts=True)
        if chunks:
            return Batch(stream, prefill=chunks)
        return decode_step(state, stream)
