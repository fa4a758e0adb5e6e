"""Where the two phases run: one GPU with one KV pool, or a prefill GPU and a decode GPU.

A topology is the engine's, not the policy's state: it owns the KV pools and decides what
happens to a request whose prefill just produced its first token. On one GPU it joins the
decode batch at once; across two GPUs its KV must first cross the link into the decode
GPU's pool, which the engine carries out (`reserve` before the transfer, `deliver` after).
"""
from __future__ import annotations

from nexus.kv import BlockPool
from nexus.request import Request
from nexus.running import RunningSet

# Nominal one-direction link bandwidths: NVLink 4 on H100 SXM 450 GB/s; PCIe 5.0 x16 64 GB/s;
# PCIe 4.0 x16 32 GB/s.
LINKS = {"nvlink": 450e9, "pcie5": 64e9, "pcie4": 32e9}


class OneGPU:
    """Both phases on one GPU, sharing one KV pool."""
    gpus = 1

    def __init__(self, kv: BlockPool):
        self.decode_kv = self.prefill_kv = kv
        self.outbound: list[Request] = []

    def gpu_of(self, stream: str) -> int:
        return 0

    def prefilled(self, req: Request, running: RunningSet) -> None:
        running.add(req)


class TwoGPUs:
    """Engine-level PD disaggregation: a whole GPU and KV pool per phase, joined by a link."""
    gpus = 2

    def __init__(self, kv: BlockPool, link_bandwidth: float, link_latency_s: float):
        self.decode_kv = kv
        self.prefill_kv = BlockPool(kv.num_blocks, kv.block_size, kv.track_ids)
        self.link_bandwidth, self.link_latency_s = link_bandwidth, link_latency_s
        self.outbound: list[Request] = []     # prefilled, waiting to cross the link

    def gpu_of(self, stream: str) -> int:
        return 0 if stream == "prefill" else 1

    def prefilled(self, req: Request, running: RunningSet) -> None:
        self.outbound.append(req)

    def transfer_s(self, req: Request, kv_bytes_per_token: int) -> float:
        return self.link_latency_s + req.kv_tokens * kv_bytes_per_token / self.link_bandwidth

    def reserve(self, req: Request) -> bool:
        """Take the decode GPU's blocks for `req`; False if they are not free yet."""
        return self.decode_kv.take(req.kv_blocks)

    def deliver(self, req: Request, running: RunningSet) -> None:
        """The KV has arrived: the prefill GPU's blocks are free and the request decodes."""
        self.prefill_kv.give(req.kv_blocks)
        running.add(req)


Topology = OneGPU | TwoGPUs
