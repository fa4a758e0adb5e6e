"""The iteration contract, written once: what a stream runs next, and what happens when it ends.

Both engines are executors of `Step`s. The simulator turns one into a fluid job on its
simpy clock, the real engine into kernels on a partition; neither talks to the policy.
A stream's loop reads as three lines:

    step = stepper.next(stream, now)          # schedule
    start_s, end_s = execute(step)            # run
    record, finished = stepper.finish(step, steps, start_s, end_s)   # postprocess
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

from nexus.cost.base import BatchShape
from nexus.policy import check_split
from nexus.policy.base import Policy
from nexus.request import Request
from nexus.state import Batch, ServingState, Split
from nexus.topology import OneGPU, Topology


class StepRecord(NamedTuple):
    """One row of a run's timeline, the same in the simulator and the engine.

    A tuple, so that a 100k-step simulated timeline becomes a DataFrame quickly."""
    start_s: float
    end_s: float
    stream: str
    sms: int
    prefill_tokens: int
    decode_seqs: int
    decode_steps: int
    kv_usage: float
    prefill_prior_tokens: int   # cached tokens the step's chunks continue (their attention reach)
    decode_kv_tokens: int
    prefill_chunks: int         # how many prompts the prefill tokens belong to (attention is per prompt)
    # Each chunk as "tokens:prior", space-separated ("" without prefill): a step's sums price
    # prompts of unequal length short (nexus.step_view prices the step from these).
    prefill_shape: str


TIMELINE_COLUMNS = list(StepRecord._fields)
# StepRecord(...) without the named tuple's generated __new__ (a Python frame per step).
_record = partial(tuple.__new__, StepRecord)


def chunks_text(chunks: tuple[tuple[int, int], ...]) -> str:
    """A step's prompt chunks as StepRecord.prefill_shape writes them."""
    if len(chunks) == 1:   # most steps: the simulator writes one a step, in its loop
        n, prior = chunks[0]
        return f"{n}:{prior}"
    return " ".join([f"{n}:{prior}" for n, prior in chunks])


def chunks_from_text(text: object) -> tuple[tuple[int, int], ...] | None:
    """`chunks_text` read back; None where a timeline holds no such text (written before the
    field existed, or read from a CSV cell that was empty)."""
    if not isinstance(text, str) or not text:
        return None
    return tuple((int(n), int(prior)) for n, prior in (c.split(":") for c in text.split()))


class Step:
    """A planned iteration: the batch, its SMs, how many decode steps it may run, its shape."""
    __slots__ = ("batch", "steps", "shape", "decode_seqs", "stream", "sms")

    def __init__(self, batch: Batch, steps: int, shape: BatchShape, decode_seqs: int):
        self.batch, self.steps, self.decode_seqs = batch, steps, decode_seqs
        self.shape = shape          # representative: the middle step of a decode run
        self.stream, self.sms = batch.stream, batch.split.sms(batch.stream)


class Stepper:
    def __init__(self, state: ServingState, policy: Policy, topology: Topology | None = None):
        self.state, self.policy = state, policy
        self.topology = topology or OneGPU(state.kv)
        self._splits_seen: set = set()
        self._last_split: Split | None = None   # most plans reuse one Split object: skip hashing it
        # A policy that learns nothing from its steps keeps Policy's observe, which does nothing:
        # not calling it saves a call a step.
        self._observes = type(policy).observe is not Policy.observe

    def next(self, stream: str, now: float, max_steps: int = 1) -> Step | None:
        """Plan the stream's next iteration and take its resources; None if it has no work.

        A repeatable decode batch may cover up to `max_steps` steps: as many as pass before a
        member finishes or the KV cache runs out (the simulator runs them in closed form).
        """
        state = self.state
        state.now = now
        batch = self.policy.plan(state, stream)
        if batch is None:
            return None
        split = batch.split
        if split is not self._last_split:
            if split not in self._splits_seen:   # a custom policy may pick any split
                check_split(self.policy, split, state.gpu)
                self._splits_seen.add(split)
            self._last_split = split
        running = state.running
        steps = 1
        if max_steps > 1 and batch.repeatable and batch.decode and not batch.prefill:
            # Asking steps_that_fit for no more than the run can take lets it skip the partial cycle.
            steps = running.steps_that_fit(min(max_steps, running.steps_until_finish()))
        state.begin(batch, steps)
        return Step(batch, steps, batch.shape(state, (steps - 1) // 2),
                    running.batch_size if batch.decode else 0)

    def shape_after(self, step: Step, steps_ahead: int) -> BatchShape:
        """The shape of the step `steps_ahead` steps into a decode run (its KV has grown)."""
        return step.batch.shape(self.state, steps_ahead)

    def finish(self, step: Step, steps: int, start_s: float, end_s: float
               ) -> tuple[StepRecord, list[Request]]:
        """Account `steps` completed steps of `step`; returns its record and who finished."""
        state, batch = self.state, step.batch
        if self._observes:
            self.policy.observe(state, batch, steps, start_s, end_s)
        finished, prefilled = state.end(batch, steps, start_s, end_s)
        for req in prefilled:
            self.topology.prefilled(req, state.running)
        shape = step.shape
        prefill_tokens = prior_tokens = 0
        for n, prior in shape.prefill_chunks:   # one chunk per batch.prefill entry
            prefill_tokens += n
            prior_tokens += prior
        record = _record((start_s, end_s, step.stream, step.sms, prefill_tokens, step.decode_seqs,
                          steps if batch.decode else 0, state.kv.usage, prior_tokens,
                          shape.decode_kv_tokens, len(shape.prefill_chunks),
                          chunks_text(shape.prefill_chunks) if prefill_tokens else ""))
        return record, finished
