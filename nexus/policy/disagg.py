"""Engine-level PD disaggregation: a prefill GPU and a decode GPU joined by a link.

Each phase has a whole GPU and its own KV pool; a prefilled request's KV crosses the link
before it can decode (DistServe, Splitwise). The engine's topology (nexus.topology) carries
out the transfer; this policy only chooses the link and schedules each GPU.

`link` is a nominal link by name (nexus.topology.LINKS, with `link_latency_s`) or a link file
measured on the hardware (`experiments/bench_kv_transfer.py` writes one: its own latency and
bandwidth, and `link_latency_s` is then not used).
"""
from __future__ import annotations

from nexus.errors import UserError
from nexus.kv import BlockPool
from nexus.policy.base import Policy, decode_step, prefill_step
from nexus.state import Batch, ServingState
from nexus.topology import LINKS, LinkSpec, TwoGPUs


class Disagg(Policy):
    name = "disagg"
    streams = ("prefill", "decode")

    def __init__(self, link: str = "nvlink", link_latency_s: float = 20e-6, prefill_tokens: int = 8192):
        if link in LINKS:
            self._link_spec = LinkSpec(link_latency_s, LINKS[link])
        elif link.endswith(".json"):
            self._link_spec = LinkSpec.load(link)
        else:
            raise UserError(f"unknown link {link!r}; known: {', '.join(LINKS)}, or a link file (.json)")
        self.link, self.link_latency_s, self.prefill_tokens = link, link_latency_s, prefill_tokens

    def chunk_limit(self) -> int:
        return self.prefill_tokens

    def topology(self, kv: BlockPool) -> TwoGPUs:
        return TwoGPUs(kv, self._link_spec)

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        if stream == "prefill":
            return prefill_step(state, stream, self.prefill_tokens)
        return decode_step(state, stream)
