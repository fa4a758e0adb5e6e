"""Nexus-SLO: plan each step by the latency targets themselves, not by stretch factors.

Whenever a prefill chunk is to start, the controller weighs two plans with the cost model,
both held to the TBT target (within `headroom`):

- **mixed**: the whole GPU runs one step of decode plus the largest prefill chunk whose
  predicted step time still meets the target (what chunked prefill does, with its token
  budget set per step by the prediction instead of fixed);
- **split**: decode gets the smallest partition whose predicted co-running step meets the
  target, and prefill the rest, as a separate stream.

If every prompt that could be admitted now fits into one mixed step, the step is mixed:
those prompts start within one TBT either way, and decode runs on every SM without
contention (when seats or KV are full, decode's speed is what frees them). Otherwise the
plan with the higher predicted prefill rate (tokens per second) wins. If neither plan can
meet the TBT target beside any prefill, the TBT target is lost for this chunk and the TTFT
target decides: prefill gets the fewest SMs that still drain the waiting prompts within
`headroom` of it (all it can, if none does). A phase alone runs on a plain stream.

The mixed step runs on the decode stream, so the stream that owns decode is never starved
and the real engine runs it exactly as chunked prefill's step (a plain stream, all SMs).
Prompts wait shortest-first with Nexus's ageing (gamma=None: first come, first served).

Predictions are corrected by what the steps measure (`StepError`, one for mixed steps and
one for decode beside a split-off prefill): each plan holds its predicted time, scaled by the
measured ratio plus two deviations, to `headroom` of the target. So the controller keeps
the TBT target on a GPU whose steps run slower than its calibration says, and uses the
room on one whose steps run faster.
"""
from __future__ import annotations

import itertools

import numpy as np

from nexus.cost.base import FULL_GPU, BatchShape, CostModel, corun_times_each, make_shape
from nexus.kv import blocks_for
from nexus.policy.base import Policy, make_decode_room, take_prefill_chunks
from nexus.policy.split_controller import _bucket
from nexus.policy.step_error import StepError
from nexus.request import Request
from nexus.state import Batch, ServingState, Split

TOKEN_GRAIN = 16   # mixed-step budgets are searched in whole KV blocks


class NexusSLO(Policy):
    name = "nexus-slo"
    streams = ("prefill", "decode")

    def __init__(self, ttft_slo_s: float = 1.0, tbt_slo_s: float = 0.05, headroom: float = 0.95,
                 chunk_tokens: int = 2048, gamma: float | None = 15.0):
        self.ttft_slo_s, self.tbt_slo_s, self.headroom = ttft_slo_s, tbt_slo_s, headroom
        self.chunk_tokens, self.gamma = chunk_tokens, gamma
        self._split = Split()
        self._split_t_decode = 0.0   # the predicted decode step beside a prefill on self._split
        self._memo: dict[tuple, tuple[int, bool, float, float]] = {}
        self._error = {"mixed": StepError(), "split": StepError()}
        self._expected: tuple[str, float] | None = None   # the decode stream's step in flight
        self._last_mixed: tuple[tuple, int] | None = None    # mixed_tokens' last question and answer

    def learnt(self) -> dict:
        return {"step_error": {kind: e.describe() for kind, e in self._error.items()}}

    def observe(self, state: ServingState, batch: Batch, steps: int, start_s: float, end_s: float) -> None:
        """Learn from a decode step that followed the previous one with no pause: the gap
        between their ends is the TBT the members saw (host time included, as predicted)."""
        if batch.stream != "decode":
            return
        expected, self._expected = self._expected, None
        if expected is None or len(state.running) == len(batch.joined):
            return   # after an idle decode stream the gap is no step's time
        kind, predicted_s = expected
        if kind == "split" and state.inflight.get("prefill") is None:
            return   # the prefill beside it ended early: part of the step ran alone
        self._error[kind].observe((end_s - state.running.last_step_end_s) / steps, predicted_s)

    def split(self, state: ServingState) -> Split:
        """The split a decode-only step runs under now: the co-running prefill's, else every SM."""
        prefill = state.inflight.get("prefill")
        return self._split if prefill is not None and len(state.running) else Split()

    def chunk_limit(self) -> int:
        return self.chunk_tokens

    def plan(self, state: ServingState, stream: str) -> Batch | None:
        return self._plan_decode(state) if stream == "decode" else self._plan_prefill(state)

    def _plan_decode(self, state: ServingState) -> Batch | None:
        batch = Batch("decode")
        if not make_decode_room(state, batch):
            return None   # nobody decodes: the prefill stream runs alone on every SM
        batch.repeatable = True
        if state.inflight.get("prefill") is not None:
            batch.split = self._split   # beside the chunk the prefill stream planned
            self._expected = ("split", self._split_t_decode)
            return batch
        budget = self.mixed_budget(state, batch.shape(state))
        if budget is None:
            batch.split = self._split   # the prefill stream, woken by this step, takes the rest
            return batch
        batch.prefill = take_prefill_chunks(state, budget)
        predicted_s = self._fit(state, batch)
        if batch.prefill:
            self._expected = ("mixed", predicted_s)
        batch.repeatable = not batch.prefill
        return batch   # Split(): a plain stream on the whole GPU

    def _fit(self, state: ServingState, batch: Batch) -> float:
        """Trim the mixed step's last chunks until its predicted time meets the TBT target;
        returns the step's predicted time.

        The budget was sized for chunks that start at the queue head's position; a later chunk
        that continues a long prompt attends to its whole prefix and costs more per token.
        """
        cost, bound = state.cost, self._bound("mixed")
        predicted_s = self.step_time(cost, batch.shape(state))
        while batch.prefill and predicted_s > bound:
            req, n = batch.prefill[-1]
            lo, hi = 0, n
            while hi - lo > 1:
                mid = (lo + hi) // 2
                batch.prefill[-1] = (req, mid)
                lo, hi = (mid, hi) if self.step_time(cost, batch.shape(state)) <= bound else (lo, mid)
            if lo:
                batch.prefill[-1] = (req, lo)
                return self.step_time(cost, batch.shape(state))
            batch.prefill.pop()
            if not req.kv_tokens:
                state.prefill_kv.release(req)   # a prompt not yet started gives its blocks back
            state.waiting.push(req)
            predicted_s = self.step_time(cost, batch.shape(state))
        return predicted_s

    def _bound(self, kind: str) -> float:
        """The predicted step time a plan of this kind may reach: the target's headroom share,
        less what such steps have measured beyond their predictions."""
        return self.headroom * self.tbt_slo_s / self._error[kind].factor

    def _plan_prefill(self, state: ServingState) -> Batch | None:
        waiting = state.waiting
        if not waiting or (state.seats_free <= 0 and not waiting.started_tokens()):
            # No prompt can start (none waits, or every seat is taken and none has begun): what
            # follows would come to None too, after pricing a mixed step for nothing. Past
            # saturation most plans of this stream end here (1.8 a request on ShareGPT).
            return None
        decoding = state.inflight.get("decode")
        if decoding is not None and decoding.prefill:
            return None   # a mixed step holds the whole GPU
        running = state.running
        if len(running):
            seqs = len(running)
            decode = make_shape(((), seqs, running.kv_tokens() + sum(r.kv_tokens for r in running.pending) + seqs))
            if self.mixed_budget(state, decode) is not None:
                return None   # the decode stream's next step takes the prompts
        chunks = take_prefill_chunks(state, self.chunk_tokens)
        if not chunks:
            return None
        batch = Batch("prefill", prefill=chunks)
        if len(running):
            self._use_split(state, self._split_for(state, batch.shape(state), decode))
            batch.split = self._split
        return batch   # prefill alone: Split(), every SM

    # ---- the decision ----

    def mixed_budget(self, state: ServingState, decode: BatchShape) -> int | None:
        """Prefill tokens for a mixed step on the whole GPU beside `decode`, or None when a
        split serves the waiting prompts better (then `self._split` holds that split)."""
        if not state.waiting:
            return 0
        cost = state.cost
        head = state.waiting.peek()
        budget = self.mixed_tokens(cost, decode, head.kv_tokens)
        admissible = self._admissible_tokens(state, budget + 1)
        if admissible <= budget:
            return budget
        chunk = min(admissible, self.chunk_tokens)
        prefill = BatchShape(((chunk, head.kv_tokens),))
        found = self._split_for(state, prefill, decode)
        _, in_time, t_prefill, _ = found
        if budget and (not in_time or budget / (self.mixed_step_time(cost, decode, budget, head.kv_tokens)
                                                * self._error["mixed"].factor) >= chunk / t_prefill):
            return budget
        self._use_split(state, found)
        return None

    @staticmethod
    def step_time(cost: CostModel, shape: BatchShape) -> float:
        """Predicted seconds of a step on the whole GPU, the engine's host gap included."""
        return float(cost.solo_time(shape, FULL_GPU)) + cost.step_overhead(shape)

    def mixed_step_time(self, cost: CostModel, decode: BatchShape, tokens: int, prior: int = 0) -> float:
        """Predicted seconds of `decode` plus a chunk of `tokens` after `prior` cached ones."""
        return self.step_time(cost, make_shape((((tokens, prior),) if tokens else (),
                                                 decode.decode_seqs, decode.decode_kv_tokens)))

    def mixed_tokens(self, cost: CostModel, decode: BatchShape, prior: int = 0) -> int:
        """The most prefill tokens (whole blocks, up to chunk_tokens) a mixed step may carry
        within the TBT target; 0 if decode alone already misses it. Step time grows with tokens,
        nearly in proportion, so the bracket is first cut where the line between its ends
        crosses the bound."""
        bound = self._bound("mixed")
        # Both streams ask in one state (the prefill stream, then the decode step beside it):
        # on a ShareGPT trace 36% of the questions repeat the one before.
        key = (cost, decode.decode_seqs, decode.decode_kv_tokens, prior, bound, self.chunk_tokens)
        last = self._last_mixed
        if last is not None and last[0] == key:
            return last[1]
        tokens = self._mixed_tokens(cost, decode, prior, bound)
        self._last_mixed = (key, tokens)
        return tokens

    def _mixed_tokens(self, cost: CostModel, decode: BatchShape, prior: int, bound: float) -> int:
        seqs, kv_tokens = decode.decode_seqs, decode.decode_kv_tokens
        # About five a search, 106k in a 20k-request ShareGPT run: a model's class may price
        # them in one go (`mixed_step_times`, looked up as corun_times_fast is), to the same bits.
        fast = getattr(type(cost), "mixed_step_times", None)
        if fast is not None:
            t = fast(cost, prior, seqs, kv_tokens, FULL_GPU)
        else:
            solo_time, step_overhead = cost.solo_time, cost.step_overhead

            def t(tokens: int) -> float:
                # mixed_step_time(cost, decode, tokens, prior) with two calls fewer.
                shape = make_shape((((tokens, prior),) if tokens else (), seqs, kv_tokens))
                return float(solo_time(shape, FULL_GPU)) + step_overhead(shape)

        lo, hi = 0, self.chunk_tokens // TOKEN_GRAIN   # in grains
        t_lo, t_hi = t(lo * TOKEN_GRAIN), t(hi * TOKEN_GRAIN)
        if t_hi <= bound:
            return hi * TOKEN_GRAIN
        if t_lo > bound:
            return 0
        for chords in itertools.count():
            if hi - lo <= 1:
                break
            mid = (lo + round((bound - t_lo) / (t_hi - t_lo) * (hi - lo)) if chords < 3
                   else (lo + hi) // 2)   # a curved stretch can stall the chord: bisect then
            mid = min(max(mid, lo + 1), hi - 1)
            t_mid = t(mid * TOKEN_GRAIN)
            if t_mid <= bound:
                lo, t_lo = mid, t_mid
            else:
                hi, t_hi = mid, t_mid
        return lo * TOKEN_GRAIN

    def _admissible_tokens(self, state: ServingState, limit: int) -> int:
        """Prefill tokens the waiting prompts could start now (seats and KV allowing), counted
        in priority order and only as far as `limit`."""
        started, fresh = state.waiting.started_tokens(), 0
        if started >= limit:
            return started
        seats, blocks = state.seats_free, state.prefill_kv.free
        for req in state.waiting.first_new(min(seats, state.waiting.new_count())):
            blocks -= blocks_for(req.prefill_target, state.prefill_kv.block_size)
            if blocks < 0:
                break
            fresh += req.prefill_remaining
            if started + fresh >= limit:
                break
        return started + fresh

    def _use_split(self, state: ServingState, found: tuple[int, bool, float, float]) -> None:
        p = state.gpu.partition_sizes()[found[0]]
        self._split, self._split_t_decode = Split(p, state.gpu.num_sms - p), found[3]

    def _split_for(self, state: ServingState, prefill: BatchShape, decode: BatchShape
                   ) -> tuple[int, bool, float, float]:
        """`_search` over the GPU's partitions, remembered for shapes this close (and a
        correction this close) when the shapes alone decided it (when the queue did, it must
        be searched again)."""
        key = (_bucket(prefill.prefill_tokens), _bucket(sum(n * p for n, p in prefill.prefill_chunks)),
               _bucket(decode.decode_seqs), _bucket(decode.decode_kv_tokens),
               round(self._error["split"].factor, 2))
        found = self._memo.get(key)
        if found is None:
            found = self._search(state, prefill, decode)
            if found[1]:
                self._memo[key] = found
        return found

    def _search(self, state: ServingState, prefill: BatchShape, decode: BatchShape
                ) -> tuple[int, bool, float, float]:
        """The index of the prefill partition to use, whether its co-running decode step meets
        the TBT target (else the TTFT target chose it), and the chunk's and the decode step's
        predicted times there."""
        t_decode, t_prefill = self._split_times(state.cost, prefill, decode)
        bound = self._bound("split")
        for index in range(len(t_decode) - 1, -1, -1):   # the last in time
            if t_decode[index] <= bound:
                return index, True, t_prefill[index], t_decode[index]
        queue = state.waiting.pending_tokens() + prefill.prefill_tokens
        per_token, limit = queue / prefill.prefill_tokens, self.headroom * self.ttft_slo_s
        index = next((i for i, t in enumerate(t_prefill) if per_token * t <= limit), len(t_prefill) - 1)
        return index, False, t_prefill[index], t_decode[index]

    @staticmethod
    def _split_times(cost: CostModel, prefill: BatchShape, decode: BatchShape) -> tuple[list[float], list[float]]:
        """`split_times`'s decode and prefill times as lists of floats (numpy's per-call cost
        outweighs a dozen candidates: see nexus.policy.split_controller)."""
        p = tuple(cost.gpu.partition_sizes())
        t_prefill, t_decode = corun_times_each(cost, prefill, p, decode, tuple(cost.gpu.num_sms - s for s in p))
        overhead = cost.step_overhead(decode)
        return [t + overhead for t in t_decode], t_prefill

    @classmethod
    def split_times(cls, cost: CostModel, prefill: BatchShape, decode: BatchShape
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every prefill partition the GPU can give, and on each the predicted co-running decode
        step (host gap included) and prefill chunk."""
        t_decode, t_prefill = cls._split_times(cost, prefill, decode)
        return np.array(cost.gpu.partition_sizes()), np.array(t_decode), np.array(t_prefill)

    def priority(self, req: Request) -> float:
        if self.gamma is None:
            return req.arrival_s
        return req.prefill_remaining + self.gamma * req.arrival_s
