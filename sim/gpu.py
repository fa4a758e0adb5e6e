"""A GPU as a fluid server: running iterations progress at rates set by what co-runs.

Each job carries its solo work (seconds alone on its SMs). While another job runs beside
it, it progresses at 1/slowdown. Whenever a job starts, ends or is shortened, every job's
progress is brought up to date, rates are recomputed and one timer is set for the next
finish. This is exact while slowdowns are piecewise constant.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from nexus.cost.base import BatchShape, CostModel, slowdowns
from sim.clock import Clock

_EPS = 1e-12


class Job:
    """One iteration, or a run of decode steps whose solo times grow linearly (KV grows)."""
    __slots__ = ("stream", "shape", "sms", "steps", "first_step", "step_growth", "truncatable", "payload",
                 "start_s", "work", "remaining", "rate")

    def __init__(self, stream: str, shape: BatchShape, sms: int, steps: int, first_step: float,
                 step_growth: float, truncatable: bool, payload: Any = None):
        self.stream = stream
        self.shape = shape            # representative shape, for contention
        self.sms = sms
        self.steps = steps            # decode steps it covers (1 unless a repeatable decode run)
        self.first_step = first_step  # solo seconds of the first step
        self.step_growth = step_growth  # each later step takes this much longer
        self.truncatable = truncatable
        self.payload = payload        # what the GPU's owner wants back when the job is done
        self.start_s = 0.0
        self.work = self.remaining = self.work_of(steps)
        self.rate = 1.0

    def work_of(self, steps: int) -> float:
        return steps * self.first_step + self.step_growth * steps * (steps - 1) / 2

    def steps_done(self) -> int:
        """Whole steps finished so far (inverts work_of)."""
        done = self.work - self.remaining
        a, b = self.step_growth / 2, self.first_step - self.step_growth / 2
        n = done / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * done)) / (2 * a)
        return max(0, min(self.steps, int(n * (1 + 1e-12))))


class FluidGPU:
    """Runs jobs on `clock`; calls on_done(job) (scheduled, at the instant it ends) for each."""

    def __init__(self, clock: Clock, cost: CostModel, on_done: Callable[[Job], None],
                 contention: bool = True, one_stream: bool = False):
        self.clock, self.cost, self.on_done, self.contention = clock, cost, on_done, contention
        # With one stream a job runs alone at rate 1 and ends when its timer fires, so its
        # progress is read only to cut a repeatable run: other jobs need no syncing (on two
        # GPUs the syncs were a fifth of the loop).
        self.one_stream = one_stream
        self.jobs: list[Job] = []
        # With one stream: the job running, if it is a run that shorten_runs may cut (else None),
        # so that the engine need not ask an idle or single-step GPU (on two GPUs, three asks
        # in four found nothing to cut: 155k of 204k in a 20k-request run).
        self.run: Job | None = None
        self._synced_at = 0.0
        self._generation = 0
        # The pair whose rates were set last: a retiming that finds the same two jobs (a run
        # shortened beside its partner) keeps their rates rather than asking the cost model.
        self._rated: tuple[Job, Job] | None = None

    def start(self, job: Job) -> None:
        self._sync()
        job.start_s = self.clock.now
        self.jobs.append(job)
        if self.one_stream:
            self.run = job if job.steps > 1 and job.truncatable else None
        self._retime()

    def shorten_runs(self, keep_whole: Job | None = None) -> None:
        """End every repeatable decode run at its next step boundary (the state changed)."""
        if self.one_stream:
            job = self.jobs[0] if self.jobs else None
            if job is None or job.steps == 1 or not job.truncatable or job is keep_whole:
                return
        self._sync()
        changed = False
        for job in self.jobs:
            # Most jobs are single steps (1.1 decode steps a job at 45 req/s): test that first.
            if job.steps == 1 or not job.truncatable or job is keep_whole:
                continue
            keep = min(job.steps, job.steps_done() + 1)
            if keep < job.steps:
                cut = job.work - job.work_of(keep)
                job.steps, job.work = keep, job.work - cut
                job.remaining -= cut
                changed = True
        if changed:
            self._retime()

    def _sync(self) -> None:
        now = self.clock.now
        elapsed = now - self._synced_at
        if elapsed > 0:
            for job in self.jobs:
                job.remaining -= elapsed * job.rate
            self._synced_at = now

    def _retime(self) -> None:
        # Written out for one job and for two (the only cases two streams make): this runs at
        # every start and end of an iteration, and min() over a list comprehension was a tenth
        # of it. min() would return the first of equal delays, as these do.
        jobs = self.jobs
        self._generation += 1
        if len(jobs) == 2 and self.contention:
            a, b = jobs
            rated = self._rated
            if rated is None or rated[0] is not a or rated[1] is not b:
                slow_a, slow_b = slowdowns(self.cost, a.shape, a.sms, b.shape, b.sms)
                a.rate, b.rate = 1.0 / float(slow_a), 1.0 / float(slow_b)
                self._rated = (a, b)
            delay, other = a.remaining / a.rate, b.remaining / b.rate
            if other < delay:
                delay = other
        elif len(jobs) == 1:
            job = jobs[0]
            job.rate = 1.0
            delay = job.remaining   # / 1.0, exactly
        else:
            for job in jobs:
                job.rate = 1.0
            if not jobs:
                return
            delay = min([j.remaining for j in jobs])
        self.clock.call_in(delay if delay > 0.0 else 0.0, self._on_timer, self._generation)

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return   # a later retiming replaced this timer
        self._sync()
        jobs = self.jobs
        finished = []   # a loop, not a list comprehension: on Python 3.11 that is a call per timer
        for job in jobs:
            work = job.work   # max(1.0, work) without the builtin's call, keeping the operand it keeps
            if job.remaining <= _EPS * (work if work > 1.0 else 1.0) + 1e-12:
                finished.append(job)
        if not finished:   # rounding left a sliver: finish the nearest job
            finished = [min(jobs, key=lambda j: j.remaining / j.rate)]
        for job in finished:
            jobs.remove(job)
            if job is self.run:
                self.run = None
        self._retime()
        clock = self.clock
        if clock.nothing_due_now():
            # Then these would be the loop's next calls, in this order, whatever they schedule
            # (it comes after them): make them now and save the heap a push and a pop each.
            for job in finished:
                self.on_done(job)
        else:
            for job in finished:
                clock.call_in(0, self.on_done, job)
