"""The simulated engine: arrivals, and one simpy process per stream that executes steps.

Each stream's story: ask the stepper for the next step; if there is none, sleep until
something happens; otherwise run it on its GPU as a fluid job (a repeatable decode batch
runs as many steps as can pass before anything could change its composition), then let
the stepper account it and wake whoever may now have work.
"""
from __future__ import annotations

from typing import Callable

import simpy

from nexus.cost.base import CostModel
from nexus.request import Request
from nexus.step import Step, Stepper, StepRecord
from nexus.topology import TwoGPUs
from sim.gpu import FluidGPU, Job

MAX_RUN_STEPS = 1 << 20


class SimEngine:
    def __init__(self, env: simpy.Environment, stepper: Stepper, cost: CostModel,
                 requests: list[Request], on_finish: Callable[[int], None] | None = None):
        self.env, self.stepper, self.cost = env, stepper, cost
        self.state, self.topology = stepper.state, stepper.topology
        self.requests = requests
        # On two GPUs each phase has its own GPU, so there is no contention between them.
        self.gpus = [FluidGPU(env, cost) for _ in range(self.topology.gpus)]
        self.transfers = 0
        self.kv_freed: list[simpy.Event] = []
        streams = stepper.policy.streams
        self.idle: dict[str, simpy.Event | None] = {s: None for s in streams}
        self.all_done = env.event()
        self.arrived = 0
        self.timeline: list[StepRecord] = []
        self.on_finish = on_finish
        env.process(self._arrivals())
        for stream in streams:
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
        env, stepper = self.env, self.stepper
        gpu = self.gpus[self.topology.gpu_of(stream)]
        while True:
            step = stepper.next(stream, env.now, MAX_RUN_STEPS)
            if step is None:
                self._check_stalled(stream)
                self.idle[stream] = env.event()
                yield self.idle[stream]
                continue
            job = self._job(step)
            gpu.start(job)
            self._poke(started=job)
            yield job.done
            record, finished = stepper.finish(step, job.steps, job.start_s, env.now)
            self.timeline.append(record)
            self._after(finished)
            if len(self.state.finished) == len(self.requests):
                if not self.all_done.triggered:
                    self.all_done.succeed()
                return
            self._poke()

    def _after(self, finished: list[Request]) -> None:
        if finished and self.on_finish:
            self.on_finish(len(finished))
        if isinstance(self.topology, TwoGPUs):
            # Blocks come free when requests finish and when decode preempts: waking transfers
            # only on finishes left them waiting forever once every decode had been preempted.
            waiters, self.kv_freed = self.kv_freed, []
            for event in waiters:
                event.succeed()
            while self.topology.outbound:
                self.transfers += 1
                self.env.process(self._transfer(self.topology.outbound.pop(0)))

    def _transfer(self, req: Request):
        """A prefilled request's KV crosses the link once the decode GPU has room for it."""
        topology = self.topology
        while not topology.reserve(req):
            freed = self.env.event()
            self.kv_freed.append(freed)
            yield freed
        yield self.env.timeout(topology.transfer_s(req, self.state.model.kv_bytes_per_token))
        topology.deliver(req, self.state.running)
        self.transfers -= 1
        self._poke()

    def _job(self, step: Step) -> Job:
        cost = self.cost
        first_shape = self.stepper.shape_after(step, 0)
        # The engine's host time between iterations is charged to each step.
        first = float(cost.solo_time(first_shape, step.sms)) + cost.step_overhead(first_shape)
        growth = 0.0
        if step.steps > 1:
            # Step time is affine in KV tokens within a regime: interpolate between the ends.
            last_shape = self.stepper.shape_after(step, step.steps - 1)
            last = float(cost.solo_time(last_shape, step.sms)) + cost.step_overhead(last_shape)
            growth = (last - first) / (step.steps - 1)
        return Job(step.stream, step.shape, step.sms, step.steps, first, growth,
                   step.batch.repeatable, self.env.event())

    def _check_stalled(self, stream: str) -> None:
        state = self.state
        if any(g.jobs for g in self.gpus) or self.transfers or self.arrived < len(self.requests) \
                or not state.waiting:
            return
        if len(state.running) or state.prefilling:
            return
        if any(ev is None for name, ev in self.idle.items() if name != stream):
            return  # another stream is between iterations and will plan again
        # Every request fits alone (checked before the run) and a started prefill holds all
        # its blocks, so the scheduler always has a move; reaching here is a bug.
        req = state.waiting.peek()
        raise RuntimeError(
            f"scheduler made no progress: request {req.request_id} waits for {req.prefill_remaining} "
            f"prefill tokens ({req.kv_blocks} KV blocks held); prefill pool {state.prefill_kv.free} of "
            f"{state.prefill_kv.num_blocks} blocks free, decode pool {state.kv.free} of {state.kv.num_blocks}")
