"""The model runner: owns the model and the KV cache and runs one batch step at a time.

    runner = ModelRunner(MODELS["llama-3.1-8b"], device="cuda")
    parts = Partitions([64], device="cuda")
    runner.capture_graphs([parts.decode(64)])
    runner.capture_prefill_graphs([parts.prefill(64)])
    tokens = runner.step([Chunk(prompt_ids, 0, table)], parts.prefill(64))

On a partition with captured graphs, decode-only batches, prefill batches and (on a plain
stream) chunked-prefill batches of up to 2304 tokens replay a CUDA graph; anything else
(long chunks, more than 16 prompts) runs eagerly on the partition's stream.
`step` and `logits` block until their results are ready, waiting only for their own stream,
so prefill and decode can be driven from two threads at once.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from nexus.errors import UserError
from nexus.graph_buckets import dense_shapes
from nexus.specs import ModelSpec
from real.batch import BlockTables, Chunk, pack, validate
from real.dense_attention import dense_attention_works, warm
from real.graphs import DEFAULT_BUCKETS, DecodeGraphs
from real.kv_cache import BLOCK_SIZE, KVCache, blocks_for_memory
from real.memory import check_memory
from real.model import build_model
from real.partitions import Partition
from real.prefill_graphs import GREEN_MAX_TOKENS, MAX_SEQS, PREFILL_GRAPH_BUCKETS, PrefillGraphs
from real.stream_threads import StreamThreads
from real.weights import load_weights

CPU_DEFAULT_BLOCKS = 256


class ModelRunner:
    def __init__(self, spec: ModelSpec, *, device: str | torch.device = "cuda",
                 dtype: torch.dtype | None = None, weights: str | Path | None = None, seed: int = 0,
                 num_blocks: int | None = None, memory_utilization: float = 0.9,
                 max_model_len: int | None = None, max_batch_tokens: int = 8192,
                 max_decode_batch: int = 256) -> None:
        """Build the model (random seeded weights, or `weights`, a Hugging Face checkpoint dir)
        and the KV cache: `num_blocks` blocks, or as many as fit in the free memory x
        `memory_utilization` beside the weights and activations of `max_batch_tokens` tokens."""
        self.spec = spec
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and not torch.cuda.is_available():
            raise UserError("device 'cuda' asked for, but torch sees no CUDA GPU (use --device cpu)")
        self.dtype = dtype or (torch.bfloat16 if self.is_cuda else torch.float32)
        self.max_model_len = min(max_model_len or spec.max_position_embeddings, spec.max_position_embeddings)
        self.num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count if self.is_cuda else 1

        free_before = torch.cuda.mem_get_info(self.device)[0] if self.is_cuda else 0
        check_memory(spec, self.device, self.dtype, num_blocks or (1 if self.is_cuda else CPU_DEFAULT_BLOCKS),
                     max_batch_tokens, free_before, memory_utilization)
        self.model = build_model(spec, self.device, self.dtype, self.max_model_len, seed)
        if weights is not None:
            load_weights(self.model, weights)
        if num_blocks is None:
            if self.is_cuda:
                weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
                num_blocks = blocks_for_memory(spec, free_before, memory_utilization, weight_bytes=weight_bytes,
                                               max_batch_tokens=max_batch_tokens)
            else:
                num_blocks = CPU_DEFAULT_BLOCKS
        if num_blocks < 1:
            raise UserError(f"no GPU memory left for the KV cache of {spec.name} "
                            f"(utilization {memory_utilization}); raise --gpu-memory-utilization")
        self.kv = KVCache(spec, num_blocks, self.device, self.dtype)
        # The threads engines run their streams on: what warm_thread builds there lasts.
        self.stream_threads = StreamThreads()
        self.max_decode_batch = max_decode_batch
        self._graphs: DecodeGraphs | None = None
        self._prefill_graphs: PrefillGraphs | None = None
        self._table_width = math.ceil(self.max_model_len / BLOCK_SIZE)
        self._tables = BlockTables()   # eager steps' block tables

    @property
    def num_blocks(self) -> int:
        """Usable KV block ids are 0..num_blocks-1."""
        return self.kv.num_blocks

    @property
    def block_size(self) -> int:
        return self.kv.block_size

    def capture_graphs(self, partitions: Iterable[Partition], buckets: Iterable[int] = DEFAULT_BUCKETS) -> None:
        """Capture decode CUDA graphs on each partition for each batch-size bucket."""
        if not self.is_cuda:
            return
        if self._graphs is None:
            self._graphs = DecodeGraphs(self.model, self.kv, self.max_decode_batch, self._table_width,
                                        self.device)
        with torch.inference_mode():
            for part in partitions:
                self._graphs.capture(part, buckets)

    def capture_prefill_graphs(self, partitions: Iterable[Partition],
                               buckets: Iterable[int] = PREFILL_GRAPH_BUCKETS) -> None:
        """Capture prefill CUDA graphs on each partition for each token bucket. On a plain
        (all-SM) stream they also take decode rows, for chunked-prefill steps; on a green
        context they stop at GREEN_MAX_TOKENS (see real.prefill_graphs)."""
        if not self.is_cuda:
            return
        if self._prefill_graphs is None:
            self._prefill_graphs = PrefillGraphs(self.model, self.kv, self._table_width, self.device,
                                                 max_decode_rows=self.max_decode_batch)
        buckets = list(buckets)
        with torch.inference_mode():
            for part in partitions:
                if part.sm_count == self.num_sms:
                    self._prefill_graphs.capture(part, buckets, decode_rows=self.max_decode_batch)
                else:
                    self._prefill_graphs.capture(part, [b for b in buckets if b <= GREEN_MAX_TOKENS])

    def drop_prefill_buckets(self, buckets: Iterable[int]) -> None:
        """Stop replaying these prefill buckets' graphs (a profile found them slower than a
        larger bucket's); their steps pad to the next bucket."""
        if self._prefill_graphs is not None:
            self._prefill_graphs.drop(buckets)

    def prefill_graph_spec(self) -> dict | None:
        """How prefill and chunked-prefill steps are padded ({'buckets', 'max_seqs',
        'decode_rows'}), or None without prefill graphs."""
        if self._prefill_graphs is None or not self._prefill_graphs.graphs:
            return None
        return {"buckets": sorted({n for _, n in self._prefill_graphs.graphs}), "max_seqs": MAX_SEQS,
                "decode_rows": self._prefill_graphs.decode_rows()}

    def decode_graph_spec(self) -> dict | None:
        """How decode steps are padded ({'buckets'}), or None without decode graphs."""
        if self._graphs is None or not self._graphs.graphs:
            return None
        return {"buckets": sorted({n for _, n in self._graphs.graphs})}

    def blas_choices(self) -> dict[str, dict[str, dict[str, str]]]:
        """{'decode' or 'prefill': {partition: {bucket: library}}} of the graphs whose capture
        found a library faster than the default (real.blas_choice); empty if none did."""
        sets = (("decode", self._graphs), ("prefill", self._prefill_graphs))
        return {kind: choices for kind, graphs in sets if graphs is not None and (choices := graphs.library_choices())}

    def warm_thread(self, longest_prompt: int, chunk_limit: int | None) -> int:
        """Build on the calling thread what steps of prompts of up to `longest_prompt` tokens, in
        chunks of up to `chunk_limit` (None: whole), would otherwise build inside them: cuDNN's
        graphs for the dense path, which PyTorch keeps per thread
        (nexus.graph_buckets.DENSE_MIN_TOKENS); returns how many it built."""
        if not dense_attention_works(self.device, self.dtype, self.spec.head_dim):
            return 0
        spec = self.spec
        with torch.inference_mode():
            return warm(*dense_shapes(longest_prompt, chunk_limit), self.device, self.dtype,
                        spec.num_heads, spec.num_kv_heads, spec.head_dim)

    def graph_buckets(self, partition: Partition) -> list[int]:
        return self._graphs.buckets(partition) if self._graphs else []

    @contextmanager
    def timing_steps(self) -> Iterator[list[float]]:
        """GPU time in ms of each CUDA-graph step run inside the block, from its input upload to
        its LM head, appended to the yielded list as the block ends; eager steps are not timed.

        A step's wall time less this is the host time its GPU waited for. Timing the GPU apart
        from back-to-back steps would not do: run back to back, compute-bound steps draw the
        H200 to its 700 W limit and its clocks drop (chunked steps of 512-2048 prompt tokens
        ran 9-13% slower than after a pause), which a host-time estimate would wrongly charge to the host.
        """
        events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        graph_sets = [g for g in (self._graphs, self._prefill_graphs) if g is not None]
        for graphs in graph_sets:
            graphs.step_events = events
        times: list[float] = []
        try:
            yield times
        finally:
            for graphs in graph_sets:
                graphs.step_events = None
            for start, end in events:
                end.synchronize()
                times.append(start.elapsed_time(end))

    def step(self, batch: Sequence[Chunk], partition: Partition | None = None, graphs: bool = True) -> list[int]:
        """Run one step; returns the greedy next token of each sequence, in batch order.

        A prefill chunk that does not end its prompt also gets a token; the caller drops it.
        graphs=False runs the batch eagerly even where a graph was captured.
        """
        with self._on(partition):
            _, tokens = self._run(batch, partition, graphs)
            host = tokens.to("cpu", non_blocking=self.is_cuda)
            self._wait()
        return host.tolist()

    def logits(self, batch: Sequence[Chunk], partition: Partition | None = None,
               graphs: bool = True) -> torch.Tensor:
        """float32 logits of each sequence's last token, [len(batch), vocab], in batch order."""
        with self._on(partition):
            logits, _ = self._run(batch, partition, graphs)
            logits = logits.clone()
            self._wait()
        return logits

    def _on(self, partition: Partition | None) -> AbstractContextManager:
        return partition.use() if partition is not None else nullcontext()

    def _wait(self) -> None:
        if self.is_cuda:
            torch.cuda.current_stream().synchronize()

    @torch.inference_mode()
    def _run(self, batch: Sequence[Chunk], partition: Partition | None,
             graphs: bool) -> tuple[torch.Tensor, torch.Tensor]:
        validate(batch, self.kv.num_blocks, self.kv.block_size, self.max_model_len)
        if graphs and partition is not None:
            if self._graphs is not None and all(len(c.token_ids) == 1 for c in batch):
                bucket = self._graphs.bucket_for(partition, len(batch))
                if bucket is not None:
                    return self._graphs.run(batch, partition, bucket)
            if self._prefill_graphs is not None:
                bucket = self._prefill_graphs.bucket_for(partition, batch)
                if bucket is not None:
                    return self._prefill_graphs.run(batch, partition, bucket)
        sms = partition.sm_count if partition is not None else self.num_sms
        packed = pack(batch, self.device, self.kv.block_size, self.spec.num_kv_heads, sms, self.kv.num_blocks,
                      self._tables)
        hidden = self.model(packed.input_ids, packed.positions, self.kv, packed.meta, packed.select)
        logits = self.model.compute_logits(hidden)[packed.inverse]
        return logits, logits.argmax(-1)
