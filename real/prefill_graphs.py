"""CUDA graphs of prefill steps, one per (partition, token bucket), for chunks up to 512 tokens.

An eager forward issues about ten kernels a layer from Python; for a few hundred tokens that
host work (~10 ms for an 8B model, with jitter) outlasts the GPU work. A graph replays the
same step in one call. Batches of up to MAX_SEQS prompts
whose tokens fit a bucket replay its graph; larger ones run eagerly, where the GPU is the
bottleneck anyway.

Padding: the bucket's spare tokens write their KV to the cache's sink block and belong to no
sequence; spare sequences have no tokens, so every attention program of theirs exits at once.
The prefill attention grid is sized for the whole bucket, which is what lets one graph serve
any split of its tokens among the sequences.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from nexus.graph_buckets import PREFILL_GRAPH_BUCKETS, PREFILL_GRAPH_MAX_SEQS, prefill_bucket
from real.attention import AttentionMetadata
from real.batch import Chunk
from real.graphs import StepGraphs
from real.kv_cache import KVCache
from real.model import Transformer
from real.partitions import Partition

MAX_SEQS = PREFILL_GRAPH_MAX_SEQS


class PrefillGraphs(StepGraphs):
    def __init__(self, model: Transformer, kv: KVCache, max_blocks_per_seq: int, device: torch.device,
                 max_tokens: int = max(PREFILL_GRAPH_BUCKETS)) -> None:
        self.width, self.max_tokens = max_blocks_per_seq, max_tokens
        t, p, w = max_tokens, MAX_SEQS, max_blocks_per_seq
        # One static int32 buffer: ids | positions | slots | cu_q (p+1, padded to p+4) | starts |
        # select | tables. Each part starts on a 16-byte boundary (Triton specialises on it).
        self._sizes = (t, t, t, p + 4, p, p, p * w)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        super().__init__(model, kv, device, int(self._offsets[-1]))
        self.graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _part(self, buf: torch.Tensor | np.ndarray, i: int):
        return buf[self._offsets[i]:self._offsets[i] + self._sizes[i]]

    def _views(self, bucket: int) -> tuple[torch.Tensor, ...]:
        s = self.static
        ids, pos, slots = (self._part(s, i)[:bucket] for i in range(3))
        cu = self._part(s, 3)[:MAX_SEQS + 1]
        starts, select = self._part(s, 4), self._part(s, 5)
        tables = self._part(s, 6).view(MAX_SEQS, self.width)
        return ids, pos, slots, cu, starts, select, tables

    def bucket_for(self, partition: Partition, batch: Sequence[Chunk]) -> int | None:
        return prefill_bucket(self.buckets(partition), MAX_SEQS, [len(c.token_ids) for c in batch])

    def _fill_host(self, batch: Sequence[Chunk]) -> None:
        """Write the batch, padded to MAX_SEQS sequences and max_tokens tokens, into `host`."""
        h, bs, sink = self.host.numpy(), self.kv.block_size, self.kv.pad_block
        ids, pos, slots, cu, starts, select, tables = (self._part(h, i) for i in range(7))
        tables = tables.reshape(MAX_SEQS, self.width)
        ids[:], pos[:], slots[:] = 0, 0, sink * bs
        starts[:], select[:], tables[:] = 0, 0, sink
        lo = 0
        cu[0] = 0
        for r, c in enumerate(batch):
            n = len(c.token_ids)
            need = -(-c.end // bs)
            tables[r, :need] = c.block_table[:need]
            ids[lo:lo + n] = c.token_ids
            p = np.arange(c.start, c.end)
            pos[lo:lo + n] = p
            slots[lo:lo + n] = tables[r, p // bs] * bs + p % bs
            starts[r] = c.start
            lo += n
            cu[r + 1] = lo
            select[r] = lo - 1
        cu[len(batch) + 1:] = lo   # spare sequences are empty

    def capture(self, partition: Partition, buckets: Iterable[int]) -> None:
        """Capture one graph per bucket on `partition`'s stream, largest first."""
        self._fill_host([])
        self.static.copy_(self.host)
        for bucket in sorted({b for b in buckets if b <= self.max_tokens}, reverse=True):
            ids, pos, slots, cu, starts, select, tables = self._views(bucket)
            meta = AttentionMetadata(
                slots=slots, num_prefill_tokens=bucket, prefill_cu_q=cu, prefill_start=starts,
                prefill_block_tables=tables, prefill_max_q=bucket, decode_ctx_lens=self._empty,
                decode_block_tables=self._empty.view(0, 1), block_size=self.kv.block_size)
            graph, hidden = self._capture(partition, lambda: self.model(ids, pos, self.kv, meta, select))
            self.graphs[(partition.name, bucket)] = (graph, hidden)

    def run(self, batch: Sequence[Chunk], partition: Partition, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay the bucket's graph; returns (logits, tokens) of each sequence's last token.

        Must be called inside partition.use(). Results live in static buffers until the next replay.
        """
        self._host_free()
        self._fill_host(batch)
        graph, hidden = self.graphs[(partition.name, bucket)]
        return self._replay(graph, hidden, len(batch),
                            lambda: self.static.copy_(self.host, non_blocking=True))
