"""Move a request's KV blocks from one engine's paged cache into another's, point to point.

A `KVLink` is one direction between two ranks of a torch.distributed job. Each message is:

1. a header of two int64: the number of KV blocks (-1 closes the link) and the length of
   the metadata that follows;
2. the metadata, int64 values the caller gives meaning to (a request's progress, its tokens);
3. the payload, if any blocks: the request's blocks of every layer, K and V, packed into one
   contiguous buffer `[layers, 2, blocks, block_size, kv_heads, head_dim]`, sent as raw bytes
   so that any cache dtype crosses any backend unchanged.

The receiver learns the block count before the payload and asks the caller to allocate that
many fresh blocks of its own cache (the caller may wait there until blocks are free); the
payload lands in one buffer and is scattered into those blocks. Headers and metadata travel
on `meta_group` (gloo, CPU tensors), the payload on `data_group` (NCCL between GPUs, gloo on
CPU). One thread sends and one thread receives on each link, so messages never interleave.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from real.kv_cache import KVCache

CLOSE = -1


def free_port() -> int:
    """A loopback TCP port free now, for the rendezvous of the two ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(rank: int, port: int, timeout_s: float = 600.0) -> None:
    """Join the two-rank job on loopback; the default group (gloo) carries no traffic itself."""
    # NVLink multicast (NVLS) is off: point-to-point sends do not use it, and it reserves
    # memory and setup time on every NCCL communicator.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=timeout_s))


def link_groups(device: torch.device) -> tuple[object, object]:
    """(meta_group, data_group) for one KVLink: gloo for metadata, NCCL for payloads on GPUs.

    Every rank must call this the same number of times, in the same order.
    """
    meta = dist.new_group([0, 1], backend="gloo")
    data = dist.new_group([0, 1], backend="nccl" if device.type == "cuda" else "gloo")
    return meta, data


@dataclass(frozen=True)
class Message:
    meta: list[int]
    block_ids: list[int]        # blocks of the receiving cache that now hold the payload
    payload_bytes: int
    seconds: float = 0.0        # from posting the payload's receive to the blocks written


def pack_blocks(cache: KVCache, block_ids: Sequence[int]) -> torch.Tensor:
    """The blocks' K and V of every layer, in block_ids order, as one contiguous tensor."""
    index = torch.as_tensor(list(block_ids), dtype=torch.long, device=cache.data.device)
    return cache.data.index_select(2, index)


def unpack_blocks(cache: KVCache, block_ids: Sequence[int], packed: torch.Tensor) -> None:
    """Write a `pack_blocks` buffer into `block_ids` of `cache` (the inverse of packing)."""
    index = torch.as_tensor(list(block_ids), dtype=torch.long, device=cache.data.device)
    cache.data.index_copy_(2, index, packed)


def packed_shape(cache: KVCache, num_blocks: int) -> tuple[int, ...]:
    layers, kv, _, block, heads, dim = cache.data.shape
    return layers, kv, num_blocks, block, heads, dim


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


class KVLink:
    """One direction of KV traffic between this rank and `peer`.

    `cache` is this rank's KV cache (the source when sending, the destination when
    receiving); a link that only carries metadata may have none.
    """

    def __init__(self, cache: KVCache | None, peer: int, meta_group=None, data_group=None) -> None:
        self.cache, self.peer = cache, peer
        self.meta_group, self.data_group = meta_group, data_group

    def send(self, meta: Sequence[int], block_ids: Sequence[int] = ()) -> int:
        """Send `meta` and the KV of `block_ids`; returns payload bytes. Blocks until sent,
        after which the source blocks may be reused."""
        meta = torch.tensor(list(meta), dtype=torch.int64)
        dist.send(torch.tensor([len(block_ids), len(meta)], dtype=torch.int64), self.peer, group=self.meta_group)
        if len(meta):
            dist.send(meta, self.peer, group=self.meta_group)
        if not block_ids:
            return 0
        payload = _as_bytes(pack_blocks(self.cache, block_ids))
        dist.send(payload, self.peer, group=self.data_group)
        if payload.is_cuda:
            torch.cuda.current_stream(payload.device).synchronize()
        return payload.numel()

    def recv(self, allocate: Callable[[list[int], int], list[int]] | None = None) -> Message | None:
        """Receive one message; None when the peer closed the link.

        `allocate(meta, num_blocks)` returns `num_blocks` free block ids of this rank's cache
        for the payload; it is called before the payload is received.
        """
        header = torch.empty(2, dtype=torch.int64)
        dist.recv(header, self.peer, group=self.meta_group)
        num_blocks, meta_len = header.tolist()
        if num_blocks == CLOSE:
            return None
        meta = torch.empty(meta_len, dtype=torch.int64)
        if meta_len:
            dist.recv(meta, self.peer, group=self.meta_group)
        meta = meta.tolist()
        if not num_blocks:
            return Message(meta, [], 0)
        if allocate is None:
            raise RuntimeError(f"a message with {num_blocks} KV blocks arrived on a link without an allocator")
        block_ids = list(allocate(meta, num_blocks))
        if len(block_ids) != num_blocks:
            raise RuntimeError(f"allocator gave {len(block_ids)} blocks for a payload of {num_blocks}")
        cache = self.cache
        start = time.perf_counter()
        packed = torch.empty(packed_shape(cache, num_blocks), dtype=cache.data.dtype, device=cache.data.device)
        dist.recv(_as_bytes(packed), self.peer, group=self.data_group)
        unpack_blocks(cache, block_ids, packed)
        if packed.is_cuda:
            torch.cuda.current_stream(packed.device).synchronize()
        return Message(meta, block_ids, packed.numel() * packed.element_size(), time.perf_counter() - start)

    def close(self) -> None:
        """Tell the peer's receiver that nothing more comes."""
        dist.send(torch.tensor([CLOSE, 0], dtype=torch.int64), self.peer, group=self.meta_group)
