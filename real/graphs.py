"""CUDA graphs of model steps: what every kind shares (StepGraphs), and decode steps, one
graph per (partition, batch-size bucket).

A graph is captured on its partition's own stream: one captured elsewhere and replayed on a
green-context stream hangs. The graphs of one kind share one memory pool and one set of
static input buffers; that is safe because a replay first waits for the previous replay of
its kind, wherever it ran. A decode batch is padded up to its bucket with rows that write to
and read from the KV cache's sink block.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from nexus.graph_buckets import DECODE_GRAPH_BUCKETS, bucket_for
from real.attention import ITEM_FIELDS, MAX_PIECES, AttentionMetadata, decode_items_for, decode_schedule
from real.batch import BlockTables, Chunk, decode_part, token_layout
from real.blas_choice import DEFAULT, capture_fastest
from real.kv_cache import KVCache
from real.model import Transformer
from real.partitions import Partition

DEFAULT_BUCKETS = DECODE_GRAPH_BUCKETS


class StepGraphs:
    """Graphs keyed by (partition name, bucket) over one int32 static input buffer of `size`
    (with a pinned host twin), one memory pool, and one replay at a time."""

    def __init__(self, model: Transformer, kv: KVCache, device: torch.device, size: int) -> None:
        self.model, self.kv, self.device = model, kv, device
        self.static = torch.zeros(size, dtype=torch.int32, device=device)
        self.host = torch.zeros_like(self.static, device="cpu").pin_memory()
        self.pool = torch.cuda.graph_pool_handle()
        self._last_replay: torch.cuda.Event | None = None
        # (start, end) events of each replay's own work while a benchmark times steps; see
        # ModelRunner.timing_steps.
        self.step_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] | None = None
        self._empty = torch.zeros(0, dtype=torch.int32, device=device)
        self.tables = BlockTables()
        self.libraries: dict[tuple[str, int], str] = {}   # (partition, bucket) -> non-default BLAS library

    def _capture(self, partition: Partition, forward, tokens: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture `forward` (which reads the static buffer, `tokens` rows) on `partition`'s
        stream, with the BLAS library whose replay is fastest (real.blas_choice)."""
        def capture_once() -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
            forward()  # compiles kernels and warms the BLAS library on this stream, outside the capture
            torch.cuda.current_stream().synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=torch.cuda.current_stream()):
                out = forward()
            torch.cuda.current_stream().synchronize()
            return graph, out

        with partition.use():
            torch.cuda.current_stream().wait_stream(torch.cuda.default_stream(self.device))
            graph, out, library = capture_fastest(capture_once, tokens)
        if library != DEFAULT:
            self.libraries[(partition.name, tokens)] = library
        return graph, out

    def library_choices(self) -> dict[str, dict[str, str]]:
        """{partition name: {bucket: library}} of the graphs captured off the default library."""
        out: dict[str, dict[str, str]] = {}
        for (name, n), library in sorted(self.libraries.items()):
            if (name, n) in self.graphs:
                out.setdefault(name, {})[str(n)] = library
        return out

    def buckets(self, partition: Partition) -> list[int]:
        return sorted(n for name, n in self.graphs if name == partition.name)

    def _host_free(self) -> None:
        """Wait until the last replay's copy out of `host` has finished, so it can be refilled."""
        if self._last_replay is not None:
            self._last_replay.synchronize()

    def _replay(self, graph: torch.cuda.CUDAGraph, hidden: torch.Tensor, rows: int,
                upload) -> tuple[torch.Tensor, torch.Tensor]:
        """After the previous replay, `upload()` the host inputs, replay, and run the LM head on
        the first `rows` hidden states; returns (logits, tokens). Call inside partition.use()."""
        stream = torch.cuda.current_stream()
        if self._last_replay is not None:
            stream.wait_event(self._last_replay)  # shared pool and inputs: one replay at a time
        timed = self.step_events is not None
        if timed:
            start = torch.cuda.Event(enable_timing=True)
            start.record(stream)
        upload()
        graph.replay()
        logits = self.model.compute_logits(hidden[:rows])
        tokens = logits.argmax(-1)
        self._last_replay = torch.cuda.Event(enable_timing=timed)
        self._last_replay.record(stream)   # after the LM head has read the graph's output
        if timed:
            self.step_events.append((start, self._last_replay))
        return logits, tokens


class DecodeGraphs(StepGraphs):
    def __init__(self, model: Transformer, kv: KVCache, max_batch: int, max_blocks_per_seq: int,
                 device: torch.device) -> None:
        self.max_batch, self.width = max_batch, max_blocks_per_seq
        b, w = max_batch, max_blocks_per_seq
        # Layout of the one static int32 buffer: ids | positions | slots | ctx lens | work items
        # | first items | tables, each part 16-byte aligned.
        self.max_items = b + MAX_PIECES
        self._items_at = 4 * b
        self._first_at = self._items_at + -(-ITEM_FIELDS * self.max_items // 4) * 4
        self._tables_at = self._first_at + -(-(b + 1) // 4) * 4
        super().__init__(model, kv, device, self._tables_at + b * w)
        self._rows = torch.arange(b, dtype=torch.int32, device=device)   # token row of each sequence
        self._pad_rows(0)
        # (partition, bucket) -> (graph, its output hidden states, its work-list length)
        self.graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, int]] = {}

    def _views(self, n: int, items: int) -> tuple[torch.Tensor, ...]:
        b, s = self.max_batch, self.static
        tables = s[self._tables_at:].view(b, self.width)
        work = s[self._items_at:self._items_at + ITEM_FIELDS * items].view(items, ITEM_FIELDS)
        first = s[self._first_at:self._first_at + n + 1]
        return s[:n], s[b:b + n], s[2 * b:2 * b + n], s[3 * b:3 * b + n], work, first, tables[:n]

    def _schedule(self, n: int, items: int) -> None:
        """The work list of the first n rows (as `host` holds them) into `host`."""
        h, b = self.host.numpy(), self.max_batch
        work, first = decode_schedule(h[3 * b:3 * b + n], items)
        h[self._items_at:self._items_at + ITEM_FIELDS * items] = work.ravel()
        h[self._first_at:self._first_at + n + 1] = first

    def _pad_rows(self, first: int) -> None:
        """Rows from `first` on: token 0 at position 0 in the sink block, context of one."""
        b, h = self.max_batch, self.host
        h[first:b] = 0
        h[b + first:2 * b] = 0
        h[2 * b + first:3 * b] = self.kv.pad_block * self.kv.block_size
        h[3 * b + first:4 * b] = 1
        h[self._tables_at:].view(b, self.width)[first:, 0] = self.kv.pad_block

    def capture(self, partition: Partition, buckets: Iterable[int]) -> None:
        """Capture one graph per bucket on `partition`'s stream, largest first."""
        for n in sorted({b for b in buckets if b <= self.max_batch}, reverse=True):
            items = decode_items_for(n, self.kv.k.shape[3], partition.sm_count)
            self._schedule(n, items)
            self.static.copy_(self.host)
            ids, pos, slots, ctx, work, first, tables = self._views(n, items)
            meta = AttentionMetadata(
                slots=slots, num_prefill_tokens=0, prefill_cu_q=self._empty[:1], prefill_start=self._empty,
                prefill_block_tables=self._empty.view(0, 1), prefill_max_q=0, decode_ctx_lens=ctx,
                decode_block_tables=tables, decode_items=work, decode_first=first,
                block_size=self.kv.block_size, decode_rows=self._rows[:n])

            # The graph stops at the final hidden states: keeping [bucket, vocab] logits alive
            # for every (partition, bucket) would take gigabytes; the LM head runs after replay.
            graph, hidden = self._capture(partition, lambda: self.model(ids, pos, self.kv, meta), n)
            self.graphs[(partition.name, n)] = (graph, hidden, items)

    def bucket_for(self, partition: Partition, n: int) -> int | None:
        return bucket_for(self.buckets(partition), n)

    def run(self, batch: Sequence[Chunk], partition: Partition, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay the bucket's graph on the decode batch; returns (logits, tokens) rows of the batch.

        Must be called inside partition.use(). Results live in static buffers until the next replay.
        """
        n, b, bs, h = len(batch), self.max_batch, self.kv.block_size, self.host.numpy()
        self._host_free()
        self._pad_rows(n)  # rows past this batch may still hold a longer previous batch
        rows = decode_part(batch)
        tables = self.tables.rows(rows, bs, self.kv.num_blocks, out=h[self._tables_at:].reshape(b, self.width))
        h[:n], h[b:b + n], h[2 * b:2 * b + n] = token_layout(rows, tables, bs)
        h[3 * b:3 * b + n] = h[b:b + n] + 1
        graph, hidden, items = self.graphs[(partition.name, bucket)]
        self._schedule(bucket, items)
        t = self._tables_at

        def upload() -> None:
            self.static[:t].copy_(self.host[:t], non_blocking=True)
            self.static[t:t + bucket * self.width].copy_(self.host[t:t + bucket * self.width], non_blocking=True)

        return self._replay(graph, hidden, n, upload)
