"""The simulated engine: arrivals, and per stream a loop that executes steps.

Each stream's story: ask the stepper for the next step; if there is none, sleep until
something happens; otherwise run it on its GPU as a fluid job (a repeatable decode batch
runs as many steps as can pass before anything could change its composition), then let
the stepper account it and wake whoever may now have work.

The loops are written as callbacks on `sim.clock.Clock` (plan -> job done -> plan ...), in
the order simpy's processes took the same steps.
"""
from __future__ import annotations

import gc
from typing import Callable

from nexus.cost.base import CostModel
from nexus.request import Request
from nexus.step import Step, Stepper, StepRecord
from nexus.topology import TwoGPUs
from sim.clock import URGENT, Clock
from sim.gpu import FluidGPU, Job
from sim.link import Link

MAX_RUN_STEPS = 1 << 20


class SimEngine:
    def __init__(self, stepper: Stepper, cost: CostModel, requests: list[Request],
                 on_finish: Callable[[int], None] | None = None):
        self.clock = clock = Clock()
        self.stepper, self.cost = stepper, cost
        self.state, self.topology = stepper.state, stepper.topology
        self.requests = requests
        # On two GPUs each phase has its own GPU, so there is no contention between them.
        streams = stepper.policy.streams
        self.gpus = [FluidGPU(clock, cost, self._job_done,
                              one_stream=sum(self.topology.gpu_of(s) == gpu for s in streams) == 1)
                     for gpu in range(self.topology.gpus)]
        self.gpu_of = {stream: self.gpus[self.topology.gpu_of(stream)] for stream in streams}
        topology = self.topology
        self.link = (Link(clock, topology.link, stepper.state.model.kv_bytes_per_token, topology.reserve,
                          self._delivered) if isinstance(topology, TwoGPUs) else None)
        self.idle: dict[str, bool] = {s: False for s in streams}   # asleep until something happens
        self.asleep = 0   # how many are
        self.all_done = False
        self.arrived = 0
        self.timeline: list[StepRecord] = []
        self.on_finish = on_finish
        clock.call_in(0, self._arrivals, False, URGENT)
        for stream in streams:
            clock.call_in(0, self._plan, stream, URGENT)

    def run(self) -> None:
        """Simulate until every request has finished."""
        # With the cyclic garbage collector off: the loop makes no cycles (a 20k-request nexus
        # run left none to collect), but the collector's passes over every live object (the
        # trace, the libraries imported) were 12% of its time.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.clock.run()
        finally:
            if collecting:
                gc.enable()

    def _arrivals(self, waited: bool) -> None:
        """Admit every request due by now, then sleep until the next one's arrival (`waited`
        when this call is that wake-up: the request is admitted whatever rounding did to now)."""
        clock, state, requests = self.clock, self.state, self.requests
        while self.arrived < len(requests):
            req = requests[self.arrived]
            if not waited and req.arrival_s > clock.now:
                clock.call_in(req.arrival_s - clock.now, self._arrivals, True)
                return
            waited = False
            state.arrive(req)
            self.arrived += 1
            self._poke()

    def _poke(self, started: Job | None = None) -> None:
        """Something changed: repeatable decode runs stop at their next step; idle streams wake."""
        for gpu in self.gpus:
            if not gpu.one_stream or (gpu.run is not None and gpu.run is not started):
                gpu.shorten_runs(keep_whole=started)
        if self.asleep:
            self.asleep = 0
            idle = self.idle
            for stream, asleep in idle.items():   # in the streams' order, for the clock's ties
                if asleep:
                    idle[stream] = False
                    self.clock.call_in(0, self._plan, stream)

    def _plan(self, stream: str) -> None:
        """The top of a stream's loop: start its next step and tell the others, or sleep."""
        job = self._start(stream)
        if job is not None:
            self._poke(started=job)

    def _start(self, stream: str) -> Job | None:
        """Start the stream's next step on its GPU; None (the stream sleeps) if it has none."""
        step = self.stepper.next(stream, self.clock.now, MAX_RUN_STEPS)
        if step is None:
            if self.arrived == len(self.requests):   # nothing stalls while requests still arrive
                self._check_stalled(stream)
            self.idle[stream] = True
            self.asleep += 1
            return None
        job = self._job(step)
        self.gpu_of[stream].start(job)
        return job

    def _job_done(self, job: Job) -> None:
        state = self.state
        record, finished = self.stepper.finish(job.payload, job.steps, job.start_s, self.clock.now)
        self.timeline.append(record)
        self._after(finished)
        if len(state.finished) == len(self.requests):
            if not self.all_done:
                self.all_done = True
                self.clock.call_in(0, self.clock.stop)   # after what is already due now
            return
        self._poke()
        # No second poke for the step this starts: the one above, at this same instant, has
        # already cut every run and woken every sleeper (a third of all pokes): a run cut at this
        # instant, read again, shows the progress the cut read (up to rounding), so it is kept.
        self._start(job.stream)

    def _after(self, finished: list[Request]) -> None:
        if finished and self.on_finish:
            self.on_finish(len(finished))
        link = self.link
        if link is not None:
            outbound = self.topology.outbound
            for req in outbound:
                link.send(req)
            outbound.clear()
            # Blocks come free when requests finish and when decode preempts: trying the head
            # only on finishes left it waiting forever once every decode had been preempted.
            link.try_next()

    def _delivered(self, req: Request) -> None:
        self.topology.deliver(req, self.state.running)
        self._poke()

    def _job(self, step: Step) -> Job:
        cost, sms, steps = self.cost, step.sms, step.steps
        # The step's own shape is that of its middle step, which is the first for runs of 1 or 2.
        first_shape = step.shape if steps <= 2 else self.stepper.shape_after(step, 0)
        # The engine's host time between iterations is charged to each step.
        first = float(cost.solo_time(first_shape, sms)) + cost.step_overhead(first_shape)
        growth = 0.0
        if steps > 1:
            # Step time is affine in KV tokens within a regime: interpolate between the ends.
            last_shape = self.stepper.shape_after(step, steps - 1)
            last = float(cost.solo_time(last_shape, sms)) + cost.step_overhead(last_shape)
            growth = (last - first) / (steps - 1)
        return Job(step.stream, step.shape, sms, steps, first, growth, step.batch.repeatable, step)

    def _check_stalled(self, stream: str) -> None:
        """Raise if nothing can ever run again; called once every request has arrived."""
        state = self.state
        if (self.link is not None and self.link.busy()) or not state.waiting:
            return
        for gpu in self.gpus:
            if gpu.jobs:
                return
        if len(state.running) or state.prefilling:
            return
        if any(not asleep for name, asleep in self.idle.items() if name != stream):
            return  # another stream is between iterations and will plan again
        # Every request fits alone (checked before the run) and a started prefill holds all
        # its blocks, so the scheduler always has a move; reaching here is a bug.
        req = state.waiting.peek()
        raise RuntimeError(
            f"scheduler made no progress: request {req.request_id} waits for {req.prefill_remaining} "
            f"prefill tokens ({req.kv_blocks} KV blocks held); prefill pool {state.prefill_kv.free} of "
            f"{state.prefill_kv.num_blocks} blocks free, decode pool {state.kv.free} of {state.kv.num_blocks}")
