"""Paged KV accounting: how many 16-token blocks exist, and who holds them.

Counts are what the simulator needs; the real engine also needs block ids, which
`BlockPool` hands out from a free list when asked for them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from nexus.errors import UserError
from nexus.specs import GPUSpec, ModelSpec

if TYPE_CHECKING:
    from nexus.request import Request

BLOCK_SIZE = 16


def blocks_for(tokens: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-tokens // block_size)


def kv_capacity_blocks(model: ModelSpec, gpu: GPUSpec, utilization: float = 0.9,
                       activation_reserve_bytes: int = 4 * 2**30,
                       block_size: int = BLOCK_SIZE) -> int:
    """Blocks that fit in memory x utilisation - weights - activation reserve (vLLM's rule)."""
    if not 0 < utilization <= 1:
        raise UserError(f"GPU memory utilisation must be in (0, 1], got {utilization}")
    budget = gpu.memory_bytes * utilization - model.weight_bytes - activation_reserve_bytes
    blocks = int(budget // (model.kv_bytes_per_token * block_size))
    if blocks < 1:
        raise UserError(
            f"{model.name} does not fit on {gpu.name}: weights take {model.weight_bytes / 2**30:.1f} GiB "
            f"of the {gpu.memory_bytes * utilization / 2**30:.1f} GiB usable "
            f"({utilization:.0%} of {gpu.memory_bytes / 2**30:.0f} GiB) with "
            f"{activation_reserve_bytes / 2**30:.1f} GiB kept for activations, leaving no room for KV")
    return blocks


class BlockPool:
    """A fixed number of KV blocks.

    Accounting is by count (`take`/`give`), so many requests can grow at once in closed
    form. A pool that tracks ids (the real engine's) also keeps a block table per request,
    filled from the free list by `sync_ids` after the count was taken.
    """

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE, track_ids: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.used = 0
        self.free = num_blocks   # num_blocks - used, kept with it: read a few times a step
        self.track_ids = track_ids
        self._free_ids = list(range(num_blocks - 1, -1, -1)) if track_ids else []
        self.tables: dict[object, list[int]] = {}

    @property
    def usage(self) -> float:
        return self.used / self.num_blocks

    def take(self, n: int) -> bool:
        if n > self.free:
            return False
        self.used += n
        self.free -= n
        return True

    def give(self, n: int) -> None:
        assert 0 <= n <= self.used, (n, self.used)
        self.used -= n
        self.free += n

    def grow(self, req: "Request", tokens: int) -> bool:
        """Give `req` enough blocks for `tokens` KV tokens; False (and no change) if they don't fit."""
        need = blocks_for(tokens, self.block_size) - req.kv_blocks
        if need > 0:
            if not self.take(need):
                return False
            req.kv_blocks += need
            self.sync_ids(req)
        return True

    def release(self, req: "Request") -> None:
        self.give(req.kv_blocks)
        req.kv_blocks = 0
        if self.track_ids:
            self._free_ids.extend(self.tables.pop(req, []))

    def sync_ids(self, req: "Request") -> None:
        if self.track_ids:
            table = self.tables.setdefault(req, [])
            extra = req.kv_blocks - len(table)
            if extra > 0:
                table.extend(self._free_ids[-extra:])
                del self._free_ids[-extra:]

