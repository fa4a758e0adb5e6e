"""The real engine: the shared iteration contract drives a ModelRunner on green-context partitions.

One thread per policy stream (the runner's, kept across runs) tells the same story as the
simulator's processes: take the requests that have arrived by the wall clock, ask the
stepper for the next step, launch it on the partition of its split, wait for its tokens, let
the stepper account them. The ServingState is shared under one lock; the GPU work runs
outside it, so prefill and decode overlap.

Token times come from CUDA events measured against one origin event (host clock on CPU).
"""
from __future__ import annotations

import functools
import gc
import threading
from concurrent import futures

import numpy as np

from nexus.request import Request
from nexus.state import Batch
from nexus.step import Step, Stepper, StepRecord
from real.batch import Chunk
from real.clock import Clock
from real.model_runner import ModelRunner
from real.partitions import Partition, Partitions


class RealEngine:
    def __init__(self, runner: ModelRunner, partitions: Partitions, stepper: Stepper,
                 requests: list[Request], seed: int = 0):
        self.runner, self.partitions, self.stepper = runner, partitions, stepper
        self.state = stepper.state
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.lock = threading.Condition()
        self.timeline: list[StepRecord] = []
        self.tokens: dict[Request, list[int]] = {}
        rng = np.random.default_rng(seed)
        vocab = runner.spec.vocab_size
        for req in self.requests:   # random prompts: lengths matter, contents do not
            self.tokens[req] = rng.integers(0, vocab, req.prompt_tokens).tolist()
        self._next_arrival = 0
        self._error: BaseException | None = None
        self._stopping = False
        self.clock: Clock | None = None
        self._ready: threading.Barrier | None = None

    def run(self) -> None:
        streams = self.stepper.policy.streams
        # The clock starts once every stream thread has built what its steps would otherwise
        # build inside them (ModelRunner.warm_thread): arrivals count from then. The threads
        # are the runner's (real.stream_threads), so a later run finds that work done.
        self._ready = threading.Barrier(len(streams), action=self._start_clock)
        gc.freeze()   # the model, caches and graphs are long-lived: keep collections off them
        running = [self.runner.stream_threads.submit(f"stream-{s}", functools.partial(self._guarded, s))
                   for s in streams]
        try:
            # Short waits: Ctrl-C may be delivered to a stream thread (or one of torch's),
            # and the main thread only sees it once it runs Python again.
            while futures.wait(running, timeout=0.1).not_done:
                pass
        except BaseException:
            # Ctrl-C lands here, in the main thread. Let each stream finish the step it has
            # on the device and return, so that nothing is torn down under a running kernel
            # (which aborted the process with "terminate called without an active exception").
            self.stop()
            while not all(f.done() for f in running):
                try:
                    futures.wait(running)
                except KeyboardInterrupt:
                    pass   # already stopping; a second Ctrl-C must not abandon the streams
            raise
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Ask the stream threads to return after their current step."""
        with self.lock:
            self._stopping = True
            self.lock.notify_all()
        if self._ready is not None:
            self._ready.abort()

    def longest_prompt(self) -> int:
        """The most prompt tokens a request of this run has."""
        return max((r.prompt_tokens for r in self.requests), default=0)

    def _start_clock(self) -> None:
        self.clock = Clock(self.runner.is_cuda)

    def _done(self) -> bool:
        return len(self.state.finished) == len(self.requests) or self._error is not None or self._stopping

    def _admit_arrivals(self) -> float | None:
        """Move arrived requests into the state; seconds until the next arrival, if any."""
        now = self.clock.host_now()
        while self._next_arrival < len(self.requests):
            req = self.requests[self._next_arrival]
            if req.arrival_s > now:
                return req.arrival_s - now
            self.state.arrive(req)
            self._next_arrival += 1
        return None

    def _guarded(self, stream: str) -> None:
        try:
            self.runner.warm_thread(self.longest_prompt(), self.stepper.policy.chunk_limit())
            self._ready.wait()
            self._loop(stream)
        except BaseException as e:  # surface a worker's failure in the main thread
            with self.lock:
                # A thread whose wait was broken by another's failure, or by stop(), has
                # nothing to add.
                if not (isinstance(e, threading.BrokenBarrierError) and (self._stopping or self._error)):
                    self._error = self._error or e
                self.lock.notify_all()
            self._ready.abort()

    def _loop(self, stream: str) -> None:
        while True:
            with self.lock:
                if self._done():
                    self.lock.notify_all()
                    return
                wait = self._admit_arrivals()
                step = self.stepper.next(stream, self.clock.host_now())
                if step is None:
                    self.lock.wait(timeout=wait if wait is not None else 0.05)
                    continue
                chunks = self._chunks(step.batch)
            start_s, end_s, next_tokens = self._run(step, chunks)
            with self.lock:
                emitted = self._record_tokens(step.batch, next_tokens)
                record, _ = self.stepper.finish(step, 1, start_s, end_s)
                self.timeline.append(record)
                self._on_tokens(emitted, end_s)
                self.lock.notify_all()

    def _run(self, step: Step, chunks: list[Chunk]) -> tuple[float, float, list[int]]:
        """Launch the step on its partition; its start and end on the run's clock, and its tokens."""
        split = step.batch.split
        # A single ("mixed") stream runs on the decode side of the whole GPU: a plain stream
        # whose decode graphs were captured there.
        partition = (self.partitions.prefill(split.prefill_sms) if step.stream == "prefill"
                     else self.partitions.decode(split.prefill_sms))
        start = self.clock.mark(partition.stream)
        next_tokens = self._next_tokens(chunks, partition)
        end = self.clock.mark(partition.stream)
        return self.clock.seconds(start), self.clock.seconds(end), next_tokens

    def _chunks(self, batch: Batch) -> list[Chunk]:
        """Token ids, positions and block tables of this step (decode members first synced)."""
        kv = self.state.kv
        chunks = []
        for req, n in batch.prefill:
            ids = self.tokens[req][req.kv_tokens:req.kv_tokens + n]
            chunks.append(Chunk(ids, req.kv_tokens, kv.tables[req]))
        if batch.decode:
            running = self.state.running
            running.materialize(lookahead=1)
            for req in running.members:
                chunks.append(Chunk(self.tokens[req][-1:], req.kv_tokens, kv.tables[req]))
        return chunks

    def _next_tokens(self, chunks: list[Chunk], partition: Partition) -> list[int]:
        """The next token of each chunk's sequence: greedy here; a serving engine samples."""
        return self.runner.step(chunks, partition)

    def _on_tokens(self, emitted: list[tuple[Request, int]], end_s: float) -> None:
        """Called under the lock once a step's tokens are accounted; a serving engine streams them."""

    def _record_tokens(self, batch: Batch, next_tokens: list[int]) -> list[tuple[Request, int]]:
        """Keep each request's new token; returns them as (request, token) in batch order."""
        emitted = []
        i = 0
        for req, n in batch.prefill:
            if req.kv_tokens + n == req.prefill_target:   # this chunk ends the prompt: keep its token
                self.tokens[req].append(next_tokens[i])
                emitted.append((req, next_tokens[i]))
            i += 1
        if batch.decode:
            for req in self.state.running.members:
                self.tokens[req].append(next_tokens[i])
                emitted.append((req, next_tokens[i]))
                i += 1
        return emitted
