"""Nexus: two streams, a cost-model split controller, shortest-prompt-first prefill with ageing.

Prefill priority is `remaining tokens - gamma * seconds waited`. `spf=False` gives FCFS and
`dynamic=False` keeps the `static_split`, which together make the paper's ablations.
"""
from __future__ import annotations

from nexus.cost.base import make_shape
from nexus.policy.base import Policy, decode_step, take_prefill_chunks
from nexus.policy.split_controller import SplitController
from nexus.request import Request
from nexus.specs import GPUSpec
from nexus.state import WHOLE_GPU, Batch, ServingState, Split


class Nexus(Policy):
    name = "nexus"
    streams = ("prefill", "decode")

    def __init__(self, alpha: float = 1.3, beta: float = 1.1, kv_threshold: float = 0.7,
                 hysteresis: float = 0.05, gamma: float = 15.0, chunk_tokens: int = 2048,
                 spf: bool = True, dynamic: bool = True, static_split: tuple[int, int] | None = None):
        """`static_split` (the split before the controller first decides, and all along with
        dynamic=False) defaults to the GPU's half split, resolved by check()."""
        self.alpha, self.beta, self.kv_threshold = alpha, beta, kv_threshold
        self.hysteresis, self.gamma, self.chunk_tokens = hysteresis, gamma, chunk_tokens
        self.spf, self.dynamic = spf, dynamic
        self.static_split = None if static_split is None else tuple(static_split)
        self._controller: SplitController | None = None
        self._split = Split(*self.static_split) if self.static_split else Split()

    def priority(self, req: Request) -> float:
        if not self.spf:
            return req.arrival_s
        # remaining - gamma*(now - arrival); the gamma*now term is common, so drop it.
        return req.prefill_remaining + self.gamma * req.arrival_s

    def check(self, gpu: GPUSpec) -> None:
        if self.static_split is None:
            self.static_split = gpu.half_split()
            self._split = Split(*self.static_split)
        gpu.check_split(*self.static_split)

    def splits(self, gpu: GPUSpec) -> list[int]:
        self.check(gpu)
        return gpu.partition_sizes() if self.dynamic else [self.static_split[0]]

    def chunk_limit(self) -> int:
        return self.chunk_tokens

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        if stream == "decode":
            batch = decode_step(state, stream)
            if batch is not None:
                prefill_busy = state.inflight.get("prefill") is not None or bool(state.waiting)
                batch.split = self._split if prefill_busy else WHOLE_GPU   # decode alone: every SM
            return batch
        chunks = take_prefill_chunks(state, self.chunk_tokens)
        if not chunks:
            return None
        batch = Batch(stream, prefill=chunks)
        if self.dynamic:
            self._split = self._choose(state, batch)
        # With nobody decoding, prefill runs alone on a plain stream with every SM.
        batch.split = self._split if len(state.running) else WHOLE_GPU
        return batch

    def _choose(self, state: ServingState, batch: Batch) -> Split:
        if self._controller is None:
            self._controller = SplitController(state.cost, self.alpha, self.beta,
                                               self.kv_threshold, self.hysteresis)
        running = state.running
        seqs = len(running)
        if not seqs:
            return self._split   # prefill runs alone on every SM; nothing to trade off
        pending = running.pending   # mostly empty: no generator for nothing
        joining = sum([r.kv_tokens for r in pending]) if pending else 0
        decode = make_shape(((), seqs, running.kv_tokens() + joining + seqs))
        return self._controller.choose(batch.shape(state), decode, state.kv.usage)
