"""The simulated engine: arrivals, and one simpy process per stream that plans, runs, accounts.

Each stream's story: ask the policy for a batch; if there is none, sleep until something
happens; otherwise run it on the GPU (a repeatable decode batch runs as many steps as
can pass before anything could change its composition), then account the tokens and
wake whoever may now have work.
"""
from __future__ import annotations

from typing import Callable

import simpy

from nexus.cost.base import CostModel
from nexus.errors import UserError
from nexus.kv import BlockPool
from nexus.policy import check_split
from nexus.policy.base import Policy
from nexus.request import Request
from nexus.state import Batch, ServingState
from sim.gpu import FluidGPU, Job

MAX_RUN_STEPS = 1 << 20


class SimEngine:
    def __init__(self, env: simpy.Environment, state: ServingState, policy: Policy,
                 cost: CostModel, requests: list[Request],
                 on_finish: Callable[[int], None] | None = None):
        self.env, self.state, self.policy, self.cost = env, state, policy, cost
        self.requests = requests
        if getattr(policy, "gpus", 1) == 2:
            # Engine-level disaggregation: a whole GPU and KV pool per phase, no contention.
            self.gpu_of = {s: FluidGPU(env, cost) for s in policy.streams}
            state.prefill_kv = BlockPool(state.kv.num_blocks, state.kv.block_size)
            state.handoff = self._handoff
        else:
            shared = FluidGPU(env, cost)
            self.gpu_of = {s: shared for s in policy.streams}
        self.gpus = list({id(g): g for g in self.gpu_of.values()}.values())
        self.transfers = 0
        self.splits_checked: set = set()
        self.kv_freed: list[simpy.Event] = []
        self.idle: dict[str, simpy.Event | None] = {s: None for s in policy.streams}
        self.all_done = env.event()
        self.arrived = 0
        self.timeline: list[tuple] = []
        self.on_finish = on_finish
        env.process(self._arrivals())
        for stream in policy.streams:
            env.process(self._stream(stream))

    def _arrivals(self):
        env, state = self.env, self.state
        for req in self.requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            state.arrive(req)
            self.arrived += 1
            self._poke()

    def _poke(self, started: Job | None = None) -> None:
        """Something changed: repeatable decode runs stop at their next step; idle streams wake."""
        for gpu in self.gpus:
            gpu.shorten_runs(keep_whole=started)
        for stream, event in self.idle.items():
            if event is not None:
                self.idle[stream] = None
                event.succeed()

    def _stream(self, stream: str):
        env, state, policy = self.env, self.state, self.policy
        running = state.running
        while True:
            state.now = env.now
            batch = policy.plan(state, stream)
            if batch is None:
                self._check_stalled(stream)
                self.idle[stream] = env.event()
                yield self.idle[stream]
                continue
            steps = 1
            if batch.repeatable and batch.decode and not batch.prefill:
                steps = min(running.steps_until_finish(), running.steps_that_fit(MAX_RUN_STEPS))
            state.begin(batch, steps)
            split = policy.split(state)
            if split not in self.splits_checked:
                check_split(policy, split, state.gpu)
                self.splits_checked.add(split)
            batch.sms = split.decode_sms if stream == "decode" else split.prefill_sms
            job = self._job(batch, steps)
            self.gpu_of[stream].start(job)
            self._poke(started=job)
            yield job.done
            state.now = env.now
            decode_seqs = running.batch_size if batch.decode else 0
            finished = state.end(batch, job.steps, job.start_s, env.now)
            self.timeline.append((job.start_s, env.now, stream, batch.sms,
                                  sum(n for _, n in batch.prefill), decode_seqs,
                                  job.steps if batch.decode else 0, state.kv.usage,
                                  sum(p for _, p in job.shape.prefill_chunks),
                                  job.shape.decode_kv_tokens))
            if finished:
                if self.on_finish:
                    self.on_finish(len(finished))
                waiters, self.kv_freed = self.kv_freed, []
                for event in waiters:
                    event.succeed()
            if len(state.finished) == len(self.requests):
                if not self.all_done.triggered:
                    self.all_done.succeed()
                return
            self._poke()

    def _handoff(self, req: Request) -> None:
        self.transfers += 1
        self.env.process(self._transfer(req))

    def _transfer(self, req: Request):
        """A prefilled request's KV crosses the link once the decode GPU has room for it."""
        state = self.state
        while not state.kv.take(req.kv_blocks):
            freed = self.env.event()
            self.kv_freed.append(freed)
            yield freed
        yield self.env.timeout(self.policy.transfer_s(req, state.model))
        state.prefill_kv.give(req.kv_blocks)
        self.transfers -= 1
        state.running.add(req)
        self._poke()

    def _job(self, batch: Batch, steps: int) -> Job:
        cost, state = self.cost, self.state
        first_shape = batch.shape(state)
        # The engine's host time between iterations is charged to each step.
        first = float(cost.solo_time(first_shape, batch.sms)) + cost.step_overhead(first_shape)
        growth, shape = 0.0, first_shape
        if steps > 1:
            # Step time is affine in KV tokens within a regime: interpolate between the ends.
            last_shape = batch.shape(state, steps - 1)
            last = float(cost.solo_time(last_shape, batch.sms)) + cost.step_overhead(last_shape)
            growth = (last - first) / (steps - 1)
            shape = batch.shape(state, (steps - 1) // 2)
        return Job(batch.stream, shape, batch.sms, steps, first, growth, batch.repeatable,
                   self.env.event())

    def _check_stalled(self, stream: str) -> None:
        state = self.state
        if any(g.jobs for g in self.gpus) or self.transfers or self.arrived < len(self.requests) \
                or not state.waiting:
            return
        if len(state.running) or state.prefilling:
            return
        if any(ev is None for name, ev in self.idle.items() if name != stream):
            return  # another stream is between iterations and will plan again
        req = state.waiting.peek()
        raise UserError(
            f"simulation stalled: request {req.request_id} needs {req.prefill_remaining} more "
            f"prefill tokens but only {state.kv.free} of {state.kv.num_blocks} KV blocks are free "
            f"and nothing is running to free more; the KV cache is too small for this trace")
