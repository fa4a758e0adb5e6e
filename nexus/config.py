"""The engine settings both APIs share (`sim.run` and `real.run`), checked where they are built."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nexus.errors import UserError
from nexus.kv import BLOCK_SIZE


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 256                # most requests running or prefilling at once (vLLM's default)
    gpu_memory_utilization: float = 0.9    # share of GPU memory for weights, activations and KV
    block_size: int = BLOCK_SIZE           # tokens per KV block
    seed: int = 0                          # arrivals redrawn with --rate, random weights and prompts

    def __post_init__(self) -> None:
        if isinstance(self.max_num_seqs, bool) or not isinstance(self.max_num_seqs, int) \
                or self.max_num_seqs < 1:
            raise UserError(f"max_num_seqs must be a whole number of at least 1, got {self.max_num_seqs!r}")
        util = self.gpu_memory_utilization
        if isinstance(util, bool) or not isinstance(util, (int, float)) or not math.isfinite(util) \
                or not 0 < util <= 1:
            raise UserError(f"gpu_memory_utilization must be in (0, 1], got {util!r}")
        if self.block_size != BLOCK_SIZE:
            # The closed-form decode counts block growth over 16 residue classes.
            raise UserError(f"block_size must be {BLOCK_SIZE}, got {self.block_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be a whole number >= 0, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)
