"""CUDA graphs of prefill and chunked-prefill (mixed) steps, one per (partition, token bucket).

An eager forward issues about ten kernels a layer from Python; for a few hundred tokens that
host work (~10 ms for an 8B model, with jitter) outlasts the GPU work, and a mixed step of a
chunk and 32-256 decode rows spent 15-60% of its GPU time waiting for the host on an H200.
A graph replays the same step in one call. A batch of up to MAX_SEQS prompt chunks, plus
decode rows on a partition whose graphs take them, whose tokens fit a bucket replays its
graph; anything larger, and any step with a chunk whose attention runs dense, runs eagerly
(nexus.graph_buckets.prefill_bucket, the rule the cost model pads by).

Every graph is the whole forward, attention included: the attention kernels read the split
of the bucket's tokens from the graph's inputs. Prompt tokens come first, then the decode
tokens (their rows given by `decode_rows`), then padding. Spare tokens write their KV to the
cache's sink block and belong to no sequence; spare sequences have no tokens and spare decode
rows no work items, so their attention programs exit at once. The prefill attention grid is
sized for the whole bucket, which is what lets one graph serve any split of its tokens.

Mixed steps run only on the plain (all-SM) streams of one-stream policies, so only there do
graphs take decode rows and go past GREEN_MAX_TOKENS; on green-context partitions steps are
prefill-only, and above that size GPU-bound.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from nexus.graph_buckets import GREEN_MAX_TOKENS, PREFILL_GRAPH_BUCKETS, PREFILL_GRAPH_MAX_SEQS, prefill_bucket
from real.attention import ITEM_FIELDS, MAX_PIECES, AttentionMetadata, decode_items_for, decode_schedule
from real.batch import Chunk, split, token_layout
from real.graphs import StepGraphs
from real.kv_cache import KVCache
from real.model import Transformer
from real.partitions import Partition

MAX_SEQS = PREFILL_GRAPH_MAX_SEQS


def _align4(n: int) -> int:
    return -(-n // 4) * 4


class PrefillGraphs(StepGraphs):
    def __init__(self, model: Transformer, kv: KVCache, max_blocks_per_seq: int, device: torch.device,
                 max_tokens: int = max(PREFILL_GRAPH_BUCKETS), max_decode_rows: int = 256) -> None:
        self.width, self.max_tokens, self.max_rows = max_blocks_per_seq, max_tokens, max_decode_rows
        t, p, r, w = max_tokens, MAX_SEQS, max_decode_rows, max_blocks_per_seq
        # One static int32 buffer: ids | positions | slots | cu_q | starts | select | ctx lens |
        # decode rows | first items | work items | prefill tables | decode tables. Each part
        # starts on a 16-byte boundary (Triton specialises on it); the decode tables come
        # last, so an upload stops after the rows a step uses.
        sizes = [t, t, t, p + 1, p, p + r, r, r, r + 1, ITEM_FIELDS * (r + MAX_PIECES), p * w, r * w]
        self._sizes = [_align4(n) for n in sizes]
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        super().__init__(model, kv, device, int(self._offsets[-1]))
        # (partition, bucket) -> (graph, output hidden states, decode rows it takes, work items)
        self.graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, int, int]] = {}
        self._sizes_on: dict[str, list[tuple[int, int]]] = {}   # partition -> sorted (bucket, rows)

    def _part(self, buf: torch.Tensor | np.ndarray, i: int):
        return buf[self._offsets[i]:self._offsets[i] + self._sizes[i]]

    def _views(self, buf: torch.Tensor | np.ndarray, bucket: int, rows: int, items: int) -> tuple:
        """ids, positions, slots, cu_q, starts, select, ctx, decode rows, first, work items,
        prefill tables, decode tables, each cut to a bucket's size."""
        p, w = MAX_SEQS, self.width
        ids, pos, slots = (self._part(buf, i)[:bucket] for i in range(3))
        cu, starts, select = self._part(buf, 3)[:p + 1], self._part(buf, 4)[:p], self._part(buf, 5)[:p + rows]
        ctx, dec_rows, first = self._part(buf, 6)[:rows], self._part(buf, 7)[:rows], self._part(buf, 8)[:rows + 1]
        work = self._part(buf, 9)[:ITEM_FIELDS * items].reshape(items, ITEM_FIELDS)
        pre_tables = self._part(buf, 10)[:p * w].reshape(p, w)
        dec_tables = self._part(buf, 11)[:rows * w].reshape(rows, w)
        return ids, pos, slots, cu, starts, select, ctx, dec_rows, first, work, pre_tables, dec_tables

    def bucket_for(self, partition: Partition, batch: Sequence[Chunk]) -> int | None:
        """The bucket whose graph runs this batch on `partition`, or None (eager): the rule the
        cost model pads by (nexus.graph_buckets.prefill_bucket), over the partition's graphs
        with room for its decode rows (its 1-token chunks)."""
        lens = [len(c.token_ids) for c in batch]
        decodes = lens.count(1)
        prompts = [(n, c.start) for n, c in zip(lens, batch) if n > 1]
        if not prompts:
            return None   # decode-only steps replay the decode graphs
        buckets = [b for b, rows in self._sizes_on.get(partition.name, ()) if rows >= decodes]
        return prefill_bucket(buckets, MAX_SEQS, prompts, decodes)

    def _fill_host(self, batch: Sequence[Chunk], bucket: int, rows: int, items: int) -> int:
        """Write the batch, padded to the bucket, into `host`; returns how many int32 to upload."""
        h, bs, sink = self.host.numpy(), self.kv.block_size, self.kv.pad_block
        ids, pos, slots, cu, starts, select, ctx, dec_rows, first, work, pre_tables, dec_tables = \
            self._views(h, bucket, rows, items)
        pre, dec = split(batch)
        self.tables.rows(pre, bs, self.kv.num_blocks, out=pre_tables)
        self.tables.rows(dec, bs, self.kv.num_blocks, out=dec_tables)
        pre_ids, pre_pos, pre_slots = token_layout(pre, pre_tables, bs)
        dec_ids, dec_pos, dec_slots = token_layout(dec, dec_tables, bs)
        tp, nd = len(pre_ids), len(dec)
        ids[:], pos[:], slots[:] = 0, 0, sink * bs
        ids[:tp], pos[:tp], slots[:tp] = pre_ids, pre_pos, pre_slots
        ids[tp:tp + nd], pos[tp:tp + nd], slots[tp:tp + nd] = dec_ids, dec_pos, dec_slots
        cu[0] = 0
        cu[1:len(pre) + 1] = np.cumsum(pre.lens)
        cu[len(pre) + 1:] = tp              # spare sequences are empty
        starts[:] = 0
        starts[:len(pre)] = pre.starts
        select[:] = 0                      # each sequence's last token, in the caller's order
        select[pre.index] = cu[1:len(pre) + 1] - 1
        select[dec.index] = tp + np.arange(nd)
        ctx[:] = 1
        ctx[:nd] = dec_pos + 1
        dec_rows[:] = 0
        dec_rows[:nd] = tp + np.arange(nd)
        if rows:
            w, f = decode_schedule(ctx[:nd], items)
            work[:] = w
            first[:nd + 1] = f
            first[nd + 1:] = f[-1]          # spare rows: no pieces, nothing to merge
        return int(self._offsets[11]) + nd * self.width

    def capture(self, partition: Partition, buckets: Iterable[int], decode_rows: int = 0) -> None:
        """Capture one graph per bucket on `partition`'s stream, largest first; each takes up
        to min(bucket, decode_rows) decode rows beside its prompt chunks."""
        for bucket in sorted({b for b in buckets if b <= self.max_tokens}, reverse=True):
            rows = min(bucket, decode_rows, self.max_rows)
            items = decode_items_for(rows, self.kv.k.shape[3], partition.sm_count) if rows else 0
            self._fill_host([], bucket, rows, items)
            self.static.copy_(self.host)
            ids, pos, slots, cu, starts, select, ctx, dec_rows, first, work, pre_tables, dec_tables = \
                self._views(self.static, bucket, rows, items)
            meta = AttentionMetadata(
                slots=slots, num_prefill_tokens=bucket, prefill_cu_q=cu, prefill_start=starts,
                prefill_block_tables=pre_tables, prefill_max_q=bucket, decode_ctx_lens=ctx,
                decode_block_tables=dec_tables, decode_items=work, decode_first=first,
                block_size=self.kv.block_size, decode_rows=dec_rows)
            graph, hidden = self._capture(partition, lambda: self.model(ids, pos, self.kv, meta, select),
                                          bucket)
            self.graphs[(partition.name, bucket)] = (graph, hidden, rows, items)
        self._sizes_on[partition.name] = sorted((b, g[2]) for (name, b), g in self.graphs.items()
                                                if name == partition.name)

    def drop(self, buckets: Iterable[int]) -> None:
        """Forget the graphs of these buckets on every partition: their steps pad to the next."""
        gone = set(buckets)
        self.graphs = {key: g for key, g in self.graphs.items() if key[1] not in gone}
        self._sizes_on = {name: [(b, rows) for b, rows in sizes if b not in gone]
                          for name, sizes in self._sizes_on.items()}

    def decode_rows(self) -> int:
        """The most decode rows any captured graph takes beside its prompt chunks."""
        return max((g[2] for g in self.graphs.values()), default=0)

    def run(self, batch: Sequence[Chunk], partition: Partition, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay the bucket's graph; returns (logits, tokens) of each sequence's last token,
        in batch order.

        Must be called inside partition.use(). Results live in static buffers until the next replay.
        """
        graph, hidden, rows, items = self.graphs[(partition.name, bucket)]
        self._host_free()
        upload = self._fill_host(batch, bucket, rows, items)
        return self._replay(graph, hidden, len(batch),
                            lambda: self.static[:upload].copy_(self.host[:upload], non_blocking=True))
