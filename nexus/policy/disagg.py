"""Engine-level PD disaggregation: a prefill GPU and a decode GPU joined by a link.

Each phase has a whole GPU and its own KV pool; a prefilled request's KV crosses the link
before it can decode (DistServe, Splitwise). The engine's topology (nexus.topology) carries
out the transfer; this policy only chooses the link and schedules each GPU.
"""
from __future__ import annotations

from nexus.errors import UserError
from nexus.kv import BlockPool
from nexus.policy.base import Policy, decode_step, prefill_step
from nexus.state import Batch, ServingState
from nexus.topology import LINKS, TwoGPUs


class Disagg(Policy):
    name = "disagg"
    streams = ("prefill", "decode")

    def __init__(self, link: str = "nvlink", link_latency_s: float = 20e-6, prefill_tokens: int = 8192):
        if link not in LINKS:
            raise UserError(f"unknown link {link!r}; known: {', '.join(LINKS)}")
        self.link, self.link_latency_s, self.prefill_tokens = link, link_latency_s, prefill_tokens

    def topology(self, kv: BlockPool) -> TwoGPUs:
        return TwoGPUs(kv, LINKS[self.link], self.link_latency_s)

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        if stream == "prefill":
            return prefill_step(state, stream, self.prefill_tokens)
        return decode_step(state, stream)
