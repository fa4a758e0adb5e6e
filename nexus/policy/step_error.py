"""How far measured steps run from the cost model's predictions, learnt while serving.

A controller that plans each step to a latency target inherits its cost model's bias in
full. On the H200, nexus-slo planned its steps to 95% of a 35 ms TBT target with a model
whose decode steps beside a prefill ran 4-10% fast, and missed the target (P95 TBT
35.5-37.5 ms) at every load down to a third of what tuned chunked prefill sustained. The
ratio of measured to predicted step time corrects the plan on the GPU the engine actually
runs on, for the shapes the workload actually has; in the simulator, which runs the
model itself, it stays near 1.
"""
from __future__ import annotations

# Weight of one observation in the running mean and deviation: about the last 16 steps, a
# few hundred ms of decode, so a correction follows a change of workload within a second.
WEIGHT = 1 / 16
# Planning to mean + 2 deviations covers about 95% of steps for a bell-shaped ratio,
# which is what a P95 latency target asks of each step.
SPREAD = 2.0
# A ratio outside this range is a step that stalled or a broken prediction, not model error.
LOW, HIGH = 0.5, 2.0


class StepError:
    """A running mean and mean absolute deviation of measured / predicted seconds."""
    __slots__ = ("mean", "deviation", "count", "factor")

    def __init__(self) -> None:
        self.mean, self.deviation, self.count = 1.0, 0.0, 0
        # What to multiply a predicted step time by before holding it to a target. Kept, not
        # a property: nexus-slo reads it a few times a plan, and it changes only here.
        self.factor = self._factor()

    def observe(self, measured_s: float, predicted_s: float) -> None:
        ratio = min(max(measured_s / predicted_s, LOW), HIGH)
        miss = ratio - self.mean
        self.mean += WEIGHT * miss
        self.deviation += WEIGHT * (abs(miss) - self.deviation)
        self.count += 1
        self.factor = self._factor()

    def _factor(self) -> float:
        return min(max(self.mean + SPREAD * self.deviation, LOW), HIGH)

    def describe(self) -> dict:
        return {"mean": self.mean, "deviation": self.deviation, "steps": self.count}
