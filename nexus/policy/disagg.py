"""Engine-level PD disaggregation: a prefill GPU and a decode GPU joined by a link.

Each phase has a whole GPU and its own KV pool; a prefilled request's KV crosses the link
before it can decode (DistServe, Splitwise). Link bandwidths are nominal one-direction
figures: NVLink 4 on H100 SXM 450 GB/s; PCIe 5.0 x16 64 GB/s; PCIe 4.0 x16 32 GB/s.
"""
from __future__ import annotations

from nexus.errors import UserError
from nexus.policy.base import Policy, decode_step, take_prefill_chunks
from nexus.request import Request
from nexus.specs import ModelSpec
from nexus.state import Batch, ServingState

LINKS = {"nvlink": 450e9, "pcie5": 64e9, "pcie4": 32e9}


class Disagg(Policy):
    name = "disagg"
    streams = ("prefill", "decode")
    gpus = 2

    def __init__(self, link: str = "nvlink", link_latency_s: float = 20e-6, prefill_tokens: int = 8192):
        if link not in LINKS:
            raise UserError(f"unknown link {link!r}; known: {', '.join(LINKS)}")
        self.link, self.link_latency_s, self.prefill_tokens = link, link_latency_s, prefill_tokens

    def transfer_s(self, req: Request, model: ModelSpec) -> float:
        return self.link_latency_s + req.kv_tokens * model.kv_bytes_per_token / LINKS[self.link]

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        if stream == "prefill":
            chunks = take_prefill_chunks(state, self.prefill_tokens)
            return Batch(stream, prefill=chunks) if chunks else None
        return decode_step(state, stream)
