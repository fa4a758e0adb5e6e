"""What an engine knows at one instant, and the bookkeeping when an iteration ends.

The simulator and the real engine both own one `ServingState`; policies read it and
plan batches against it; `nexus.step.Stepper` calls `begin`/`end` around each iteration,
so token accounting, KV blocks and timestamps follow one set of rules in both.
"""
from __future__ import annotations

from dataclasses import dataclass

from nexus.cost.base import FULL_GPU, BatchShape, CostModel, make_shape
from nexus.kv import BlockPool
from nexus.metrics import TokenGaps
from nexus.request import Request
from nexus.running import RunningSet
from nexus.specs import GPUSpec, ModelSpec
from nexus.waiting import WaitingQueue


@dataclass(frozen=True)
class Split:
    """SMs for each phase; FULL_GPU means a plain stream on the whole GPU."""
    prefill_sms: int = FULL_GPU
    decode_sms: int = FULL_GPU

    def sms(self, stream: str) -> int:
        return self.decode_sms if stream == "decode" else self.prefill_sms

    def __reduce__(self) -> tuple:
        # Pickled by its constructor: compiled (scripts/compile_sim.py), a frozen dataclass
        # cannot be restored field by field, and a sweep sends policies holding one to workers.
        return Split, (self.prefill_sms, self.decode_sms)


WHOLE_GPU = Split()   # a plain stream for each phase


class Batch:
    """One iteration of one stream: prefill chunks and/or one step of every running request,
    and the split it runs under (the policy decides both at once).

    A decode-only batch marked `repeatable` may be run for several steps back to back
    until the state changes (an arrival, a finish, a new split, the other stream moving);
    the policy promises it would plan the same batch again until then.
    """
    # A plain class with slots: planned several times per simulated step, a dataclass's
    # default factories were a measurable part of the simulator's loop.
    __slots__ = ("stream", "prefill", "decode", "repeatable", "split", "joined")

    def __init__(self, stream: str, prefill: list[tuple[Request, int]] | None = None,
                 decode: bool = False, repeatable: bool = False, split: Split = WHOLE_GPU,
                 joined: list[Request] | None = None):
        self.stream = stream
        self.prefill = [] if prefill is None else prefill
        self.decode, self.repeatable, self.split = decode, repeatable, split
        self.joined = [] if joined is None else joined   # first decode step for these

    def __repr__(self) -> str:
        return (f"Batch(stream={self.stream!r}, prefill={self.prefill!r}, decode={self.decode}, "
                f"repeatable={self.repeatable}, split={self.split!r}, joined={self.joined!r})")

    @property
    def sms(self) -> int:
        return self.split.sms(self.stream)

    def shape(self, state: "ServingState", steps_ahead: int = 0) -> BatchShape:
        chunks = tuple([(n, req.kv_tokens) for req, n in self.prefill]) if self.prefill else ()
        if not self.decode:
            return make_shape((chunks, 0, 0))
        running = state.running
        b = running.batch_size
        return make_shape((chunks, b, running.kv_tokens() + b * (steps_ahead + 1)))


class ServingState:
    def __init__(self, model: ModelSpec, gpu: GPUSpec, cost: CostModel, kv: BlockPool,
                 priority, max_num_seqs: int = 256, prefill_kv: BlockPool | None = None):
        self.model, self.gpu, self.cost, self.kv = model, gpu, cost, kv
        # Where prefill chunks allocate: `kv` itself on one GPU, the prefill GPU's own pool
        # when the engine's topology puts the phases on two (nexus.topology).
        self.prefill_kv = kv if prefill_kv is None else prefill_kv
        self.max_num_seqs = max_num_seqs
        self.now = 0.0
        self.waiting = WaitingQueue(priority)
        self.running = RunningSet(kv)
        self.prefilling = 0            # requests inside an in-flight prefill batch
        self.finished: list[Request] = []
        self.gaps = TokenGaps()
        self.inflight: dict[str, Batch | None] = {}

    @property
    def seats_free(self) -> int:
        return self.max_num_seqs - len(self.running) - self.prefilling

    def arrive(self, req: Request) -> None:
        self.waiting.push(req)

    def preempt(self, req: Request) -> None:
        """Evict a running request by recompute, as vLLM does when decode cannot grow."""
        self.running.remove(req)
        req.last_token_s = max(req.last_token_s or 0.0, self.running.last_step_end_s)
        self.kv.release(req)
        req.preempt()
        self.waiting.push(req)

    # ---- iteration bookkeeping, called by the engine ----

    def begin(self, batch: Batch, steps: int = 1) -> None:
        self.prefilling += len(batch.prefill)
        if batch.decode:
            self.running.reserve(steps)
        self.inflight[batch.stream] = batch

    def end(self, batch: Batch, steps: int, start_s: float, end_s: float
            ) -> tuple[list[Request], list[Request]]:
        """Account a finished iteration that ran `steps` decode steps from start_s to end_s.

        Returns the requests that finished, and those whose prefill just ended and that
        go on to decode (the engine's topology decides where).
        """
        self.inflight[batch.stream] = None
        self.prefilling -= len(batch.prefill)
        done: list[Request] = []
        prefilled: list[Request] = []
        if batch.decode:
            done += self._end_decode(batch, steps, start_s, end_s)
        for req, n in batch.prefill:
            req.kv_tokens += n
            if req.prefill_remaining:
                self.waiting.push(req)
                continue
            self._emit_token(req, end_s)
            if req.generated >= req.output_tokens:
                self._finish(req, end_s, self.prefill_kv)
                done.append(req)
            else:
                prefilled.append(req)
        return done, prefilled

    def _end_decode(self, batch: Batch, steps: int, start_s: float, end_s: float) -> list[Request]:
        running = self.running
        dt = (end_s - start_s) / steps
        first_step_end = start_s + dt
        joined = batch.joined
        continuing = running.batch_size - len(joined)
        if continuing:
            self.gaps.add(first_step_end - running.last_step_end_s, continuing)
        for req in joined:
            self.gaps.add(first_step_end - req.last_token_s, 1)   # type: ignore[operator]  # joined: it has a token
        if steps > 1:
            self.gaps.add(dt, running.batch_size * (steps - 1))
        running.advance(steps)
        running.last_step_end_s = end_s
        done = running.finished_now()
        for req in done:
            running.remove(req)
            req.last_token_s = end_s
            self._finish(req, end_s)
        return done

    def _emit_token(self, req: Request, t: float) -> None:
        if req.first_token_s is None:
            req.first_token_s = t
        else:
            self.gaps.add(t - req.last_token_s, 1)   # type: ignore[operator]  # set with first_token_s
        req.generated += 1
        req.last_token_s = t

    def _finish(self, req: Request, t: float, pool: BlockPool | None = None) -> None:
        req.finish_s = t
        self.waiting.forget(req)
        (pool or self.kv).release(req)
        self.finished.append(req)
