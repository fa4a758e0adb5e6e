"""A fixed SM split: prefill chunks on one partition, decode on the other (semi-PD, SGLang PD multiplexing)."""
from __future__ import annotations

from nexus.policy.base import Policy, decode_step, prefill_step
from nexus.specs import GPUSpec
from nexus.state import Batch, ServingState, Split


class Static(Policy):
    name = "static"
    streams = ("prefill", "decode")

    def __init__(self, prefill_sms: int = 64, decode_sms: int = 68, chunk_tokens: int = 2048):
        self.prefill_sms, self.decode_sms = prefill_sms, decode_sms
        self.chunk_tokens = chunk_tokens

    def check(self, gpu: GPUSpec) -> None:
        gpu.check_split(self.prefill_sms, self.decode_sms)

    def splits(self, gpu: GPUSpec) -> list[int]:
        return [self.prefill_sms]

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        split = Split(self.prefill_sms, self.decode_sms)
        if stream == "prefill":
            return prefill_step(state, stream, self.chunk_tokens, split)
        return decode_step(state, stream, split)
