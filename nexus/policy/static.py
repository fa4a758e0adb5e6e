"""A fixed SM split: prefill chunks on one partition, decode on the other (semi-PD, SGLang PD multiplexing)."""
from __future__ import annotations

from nexus.policy.base import Policy, decode_step, prefill_step
from nexus.specs import GPUSpec
from nexus.state import Batch, ServingState, Split


class Static(Policy):
    name = "static"
    streams = ("prefill", "decode")

    def __init__(self, prefill_sms: int | None = None, decode_sms: int | None = None,
                 chunk_tokens: int = 2048):
        """Unset sides are resolved against the GPU: prefill gets its half split, decode the rest."""
        self.prefill_sms, self.decode_sms = prefill_sms, decode_sms
        self.chunk_tokens = chunk_tokens
        self._split: Split | None = None

    def check(self, gpu: GPUSpec) -> None:
        if self.prefill_sms is None:
            self.prefill_sms = gpu.half_split()[0]
        if self.decode_sms is None:
            self.decode_sms = gpu.num_sms - self.prefill_sms
        gpu.check_split(self.prefill_sms, self.decode_sms)

    def splits(self, gpu: GPUSpec) -> list[int]:
        self.check(gpu)
        return [self.prefill_sms]

    def chunk_limit(self) -> int:
        return self.chunk_tokens

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        split = self._split
        if split is None or split.prefill_sms != self.prefill_sms or split.decode_sms != self.decode_sms:
            split = self._split = Split(self.prefill_sms, self.decode_sms)
        if stream == "prefill":
            return prefill_step(state, stream, self.chunk_tokens, split)
        return decode_step(state, stream, split)
