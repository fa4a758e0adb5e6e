"""vLLM V1-style chunked prefill on one stream with all SMs.

Each step takes every running decode first, then fills the rest of the token budget with
prefill chunks in FCFS order. Defaults are vLLM V1's for online serving:
max_num_batched_tokens=2048 and max_num_seqs=256.
"""
from __future__ import annotations

from nexus.policy.base import Policy, make_decode_room, take_prefill_chunks
from nexus.state import Batch, ServingState


class Chunked(Policy):
    name = "chunked"

    def __init__(self, max_num_batched_tokens: int = 2048):
        self.max_num_batched_tokens = max_num_batched_tokens

    def chunk_limit(self) -> int:
        return self.max_num_batched_tokens

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        batch = Batch(stream)
        make_decode_room(state, batch)
        budget = self.max_num_batched_tokens - state.running.batch_size
        batch.prefill = take_prefill_chunks(state, budget)
        batch.repeatable = not batch.prefill
        return batch if batch.decode or batch.prefill else None
