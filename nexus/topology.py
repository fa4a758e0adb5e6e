"""Where the two phases run: one GPU with one KV pool, or a prefill GPU and a decode GPU.

A topology is the engine's, not the policy's state: it owns the KV pools and decides what
happens to a request whose prefill just produced its first token. On one GPU it joins the
decode batch at once; across two GPUs its KV must first cross the link into the decode
GPU's pool, which the engine carries out (`reserve` before the transfer, `deliver` after).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from nexus.errors import UserError
from nexus.kv import BlockPool
from nexus.request import Request
from nexus.running import RunningSet

# Nominal one-direction link bandwidths: NVLink 4 on H100 SXM 450 GB/s; PCIe 5.0 x16 64 GB/s;
# PCIe 4.0 x16 32 GB/s.
LINKS = {"nvlink": 450e9, "pcie5": 64e9, "pcie4": 32e9}


@dataclass(frozen=True)
class LinkSpec:
    """One direction of a link: a transfer of b bytes alone takes latency_s + b / bandwidth.

    A link file (JSON), as `experiments/bench_kv_transfer.py` writes it from a measured sweep,
    holds one in its `link` section; only that is read:

        {"link": {"latency_s": 2.0e-05, "bandwidth_bytes_per_s": 3.9e+11}, ...}

    They are the intercept and the inverse slope of a line fitted to one-way transfer times
    against bytes; `latency_s` >= 0 and `bandwidth_bytes_per_s` > 0, both finite.
    """
    latency_s: float
    bandwidth_bytes_per_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise UserError(f"link latency_s must be a finite number >= 0, got {self.latency_s!r}")
        if not (math.isfinite(self.bandwidth_bytes_per_s) and self.bandwidth_bytes_per_s > 0):
            raise UserError(f"link bandwidth_bytes_per_s must be a finite number > 0, "
                            f"got {self.bandwidth_bytes_per_s!r}")

    def alone_s(self, nbytes: float) -> float:
        """Seconds one transfer takes with the link to itself."""
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s

    @classmethod
    def load(cls, path: str | Path) -> "LinkSpec":
        """Read the `link` section of a link file; a bad file is a UserError naming it."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such link file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read ({e})") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        link = data.get("link") if isinstance(data, dict) else None
        if not isinstance(link, dict):
            raise UserError(f"{path}: no 'link' object")
        values = {}
        for key in ("latency_s", "bandwidth_bytes_per_s"):
            value = link.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{path}: link.{key} must be a number, got {value!r}")
            values[key] = float(value)
        try:
            return cls(**values)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None


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

    def __init__(self, kv: BlockPool, link: LinkSpec):
        self.decode_kv = kv
        self.prefill_kv = BlockPool(kv.num_blocks, kv.block_size, kv.track_ids)
        self.link = link
        self.outbound: list[Request] = []     # prefilled, waiting to cross the link

    def gpu_of(self, stream: str) -> int:
        return 0 if stream == "prefill" else 1

    def prefilled(self, req: Request, running: RunningSet) -> None:
        self.outbound.append(req)

    def reserve(self, req: Request) -> bool:
        """Take the decode GPU's blocks for `req`; False if they are not free yet."""
        return self.decode_kv.take(req.kv_blocks)

    def deliver(self, req: Request, running: RunningSet) -> None:
        """The KV has arrived: the prefill GPU's blocks are free and the request decodes."""
        self.prefill_kv.give(req.kv_blocks)
        running.add(req)


Topology = OneGPU | TwoGPUs
