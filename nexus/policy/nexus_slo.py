"""Nexus-SLO: split the SMs by the latency targets themselves, not by stretch factors.

Each prefill chunk is planned against the decode batch it will run beside. Decode gets the
smallest partition whose predicted co-running step (the cost model's solo time times its
slowdown, plus the engine's step gap) stays within `headroom` of the TBT target; prefill
gets the rest, which is what drains the queue fastest while tokens still flow in time. If
no split keeps decode in time beside this chunk, the TBT target is lost for the chunk and
the TTFT target decides: prefill gets the fewest SMs that still drain the waiting prompts
within `headroom` of it (all it can, if none does). A phase alone runs on a plain stream.
Prompts wait shortest-first with Nexus's ageing (gamma=None: first come, first served).
The default headroom leaves room for the simulator's ~5% step-time error on the H100.
"""
from __future__ import annotations

import numpy as np

from nexus.cost.base import BatchShape
from nexus.policy.base import Policy, decode_step, take_prefill_chunks
from nexus.policy.split_controller import _bucket
from nexus.request import Request
from nexus.state import Batch, ServingState, Split


class NexusSLO(Policy):
    name = "nexus-slo"
    streams = ("prefill", "decode")

    def __init__(self, ttft_slo_s: float = 1.0, tbt_slo_s: float = 0.05, headroom: float = 0.95,
                 chunk_tokens: int = 2048, gamma: float | None = 15.0):
        self.ttft_slo_s, self.tbt_slo_s, self.headroom = ttft_slo_s, tbt_slo_s, headroom
        self.chunk_tokens, self.gamma = chunk_tokens, gamma
        self._split = Split()
        self._memo: dict[tuple, int] = {}

    def split(self, state: ServingState) -> Split:
        prefill_busy = state.inflight.get("prefill") is not None or bool(state.waiting)
        return self._split if prefill_busy and len(state.running) else Split()

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        if stream == "decode":
            batch = decode_step(state, stream)
            if batch:
                batch.split = self.split(state)
            return batch
        chunks = take_prefill_chunks(state, self.chunk_tokens)
        if not chunks:
            return None
        batch = Batch(stream, prefill=chunks)
        running = state.running
        if len(running):
            seqs = len(running)
            decode = BatchShape((), seqs, running.kv_tokens() + sum(r.kv_tokens for r in running.pending) + seqs)
            self._split = self._choose(state, batch.shape(state), decode)
        batch.split = self._split if len(running) else Split()   # prefill alone: every SM
        return batch

    def _choose(self, state: ServingState, prefill: BatchShape, decode: BatchShape) -> Split:
        gpu = state.gpu
        key = (_bucket(prefill.prefill_tokens), _bucket(sum(n * p for n, p in prefill.prefill_chunks)),
               _bucket(decode.decode_seqs), _bucket(decode.decode_kv_tokens))
        index = self._memo.get(key)
        if index is None:
            index, by_shape_alone = self._search(state, prefill, decode, np.array(gpu.partition_sizes()))
            if by_shape_alone:
                self._memo[key] = index
        p = gpu.partition_sizes()[index]
        return Split(p, gpu.num_sms - p)

    def _search(self, state: ServingState, prefill: BatchShape, decode: BatchShape,
                p: np.ndarray) -> tuple[int, bool]:
        """Index of the prefill partition to use, and whether the shapes alone decided it (else
        the queue did, and the choice must not be remembered for these shapes)."""
        cost, d = state.cost, state.gpu.num_sms - p
        t_decode = cost.solo_time(decode, d) * cost.slowdown(decode, d, prefill, p) + cost.step_overhead(decode)
        in_time = np.flatnonzero(t_decode <= self.headroom * self.tbt_slo_s)
        if in_time.size:
            return int(in_time[-1]), True
        t_prefill = cost.solo_time(prefill, p) * cost.slowdown(prefill, p, decode, d)
        queue = state.waiting.pending_tokens() + prefill.prefill_tokens
        drains = np.flatnonzero(queue / prefill.prefill_tokens * t_prefill <= self.headroom * self.ttft_slo_s)
        return (int(drains[0]) if drains.size else len(p) - 1), False

    def priority(self, req: Request) -> float:
        if self.gamma is None:
            return req.arrival_s
        return req.prefill_remaining + self.gamma * req.arrival_s
