"""The simulator's clock: callbacks in time order, ties broken exactly as simpy breaks them.

The engine only ever needs "call this at that time", which simpy serves with an Event object
per wake-up and a generator per process; on a 20,000-request run that machinery was about a
quarter of the event loop. Here an entry is a tuple on a heap. Ties go by priority (URGENT
before NORMAL, as simpy starts processes before it resumes them), then by the order in
which entries were scheduled, and a time is `now + delay` as simpy computes it, so a run
takes the same steps, in the same order, at the same instants as it did under simpy.
"""
from __future__ import annotations

from heapq import heappop, heappush
from typing import Any, Callable

URGENT, NORMAL = 0, 1


class Clock:
    __slots__ = ("now", "_queue", "_scheduled", "_stopped")

    def __init__(self) -> None:
        # An int until the first entry is due, as simpy's is. Times are typed `float | int`, not
        # `float`: compiled (scripts/compile_sim.py), a `float` would turn that 0 into 0.0.
        self.now: float | int = 0
        self._queue: list[tuple[float | int, int, int, Callable[[Any], None], Any]] = []
        self._scheduled = 0
        self._stopped = False

    def call_in(self, delay: float | int, fn: Callable[[Any], None], arg: Any = None, priority: int = NORMAL) -> None:
        """Call fn(arg) `delay` seconds from now."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        self._scheduled += 1
        heappush(self._queue, (self.now + delay, priority, self._scheduled, fn, arg))

    def nothing_due_now(self) -> bool:
        """True if no call is scheduled for this instant: one that a callback schedules now with
        call_in(0, ...) as its last act would be the next call the loop makes."""
        queue = self._queue
        return not queue or queue[0][0] > self.now

    def stop(self, _arg: Any = None) -> None:
        """End `run` once the current call returns (schedule it to stop after what is due first)."""
        self._stopped = True

    def run(self) -> None:
        """Make the calls in order until `stop`; RuntimeError if they run out before it."""
        queue = self._queue
        while not self._stopped:
            if not queue:
                raise RuntimeError("the simulation ran out of events before every request finished")
            self.now, _, _, fn, arg = heappop(queue)
            fn(arg)
