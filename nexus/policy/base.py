"""The policy interface both engines drive, and the moves every policy is built from.

An engine has one stream ("mixed") or two ("prefill", "decode"). Before each iteration of a
stream, `nexus.step.Stepper` asks `plan(state, stream)` for a batch; the batch carries the
split it runs under, so what runs and where are decided together. The decode part of a
batch is always one step of every running request: policies decide *when* decode runs,
*where*, and *who* gets prefilled.
"""
from __future__ import annotations

from nexus.kv import BlockPool
from nexus.request import Request
from nexus.specs import GPUSpec
from nexus.state import Batch, ServingState, Split
from nexus.topology import OneGPU, Topology


class Policy:
    name = "policy"
    streams: tuple[str, ...] = ("mixed",)

    def priority(self, req: Request) -> float:
        """Waiting-queue order, smallest first; must not change while a request waits."""
        return req.arrival_s

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        """The stream's next batch, with its split set, or None when it has nothing to run."""
        raise NotImplementedError

    def observe(self, state: ServingState, batch: Batch, steps: int, start_s: float, end_s: float) -> None:
        """A batch this policy planned ran `steps` steps and ended at `end_s` (on the engine's
        clock); called before the state accounts it, so `state` still shows the step's start."""

    def learnt(self) -> dict:
        """What the policy learnt while serving (for the run's record); empty if nothing."""
        return {}

    def check(self, gpu: GPUSpec) -> None:
        """Raise UserError if this policy asks for a split `gpu` cannot give."""

    def chunk_limit(self) -> int | None:
        """The most prompt tokens one chunk may take, or None where a whole prompt may go in one
        chunk; a real engine prepares its long-prompt path up to this (real.engine)."""
        return None

    def splits(self, gpu: GPUSpec) -> list[int]:
        """Prefill SM counts `plan` may choose; a real engine makes these partitions at start-up."""
        return [] if self.streams == ("mixed",) else gpu.partition_sizes()

    def topology(self, kv: BlockPool) -> Topology:
        """Where the phases run; one GPU unless the policy is engine-level disaggregation."""
        return OneGPU(kv)

    def describe(self) -> dict:
        return {"policy": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def take_prefill_chunks(state: ServingState, token_budget: int,
                        whole_prompts: bool = False) -> list[tuple[Request, int]]:
    """Pop waiting requests in priority order and give each a chunk, until the budget is spent.

    A request starts its prefill only when the KV blocks for its whole prompt fit, and takes
    them all at once (a check paired with its action). A partly prefilled request therefore
    never waits for blocks, and can always finish: allocating chunk by chunk let requests
    that arrived together each hold part of a prompt until none could go on (36 prompts of
    12k tokens on an H100 stalled every one-GPU policy but Nexus). With whole_prompts the
    first request is taken whole even past the budget, and later ones only if they fit in it.
    """
    chunks: list[tuple[Request, int]] = []
    waiting = state.waiting
    if not waiting:
        return chunks   # most plans of a prefill GPU that keeps up (disagg: 44k of 93k)
    seats = state.seats_free
    while token_budget > 0:
        req = waiting.peek()
        if req is None:
            break
        new = req.kv_tokens == 0
        if new and seats <= 0:
            break
        want = req.prefill_remaining
        n = want if whole_prompts else min(want, token_budget)
        if whole_prompts and chunks and n > token_budget:
            break
        if not state.prefill_kv.grow(req, req.prefill_target):
            # KV is short: go on with the prompts that already hold their blocks instead, or
            # a new prompt at the head of the queue would wait on them forever.
            while token_budget > 0 and (req := waiting.pop_started()) is not None:
                n = min(req.prefill_remaining, token_budget)
                chunks.append((req, n))
                token_budget -= n
            break
        waiting.pop()
        chunks.append((req, n))
        token_budget -= n
        seats -= new
    return chunks


def prefill_step(state: ServingState, stream: str, token_budget: int,
                 split: Split = Split()) -> Batch | None:
    """A prefill-only batch of chunks within the budget, if any request can be admitted."""
    chunks = take_prefill_chunks(state, token_budget)
    return Batch(stream, prefill=chunks, split=split) if chunks else None


def make_decode_room(state: ServingState, batch: Batch) -> bool:
    """Let newly prefilled requests join, then preempt the newest until one step fits.

    Returns True when there is a decode step to run; records who joined on `batch`.
    """
    running = state.running
    batch.joined = running.admit_pending()
    while running.batch_size and running.steps_that_fit(1) == 0:
        victim = running.newest()
        if victim in batch.joined:
            batch.joined.remove(victim)
        state.preempt(victim)
    batch.decode = running.batch_size > 0
    if batch.decode:
        running.reserve(1)   # before any prefill chunk of this plan can take the blocks
    return batch.decode


def decode_step(state: ServingState, stream: str, split: Split = Split()) -> Batch | None:
    """The usual decode plan: one repeatable step of every running request, if any."""
    batch = Batch(stream, repeatable=True, split=split)
    return batch if make_decode_room(state, batch) else None
