"""What a run returns, from the simulator or the engine: the same fields, the same meaning."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nexus.metrics import TokenGaps, requests_frame, summarize
from nexus.policy.base import Policy
from nexus.request import Request
from nexus.step import TIMELINE_COLUMNS, StepRecord


@dataclass
class Result:
    policy: str
    summary: dict            # summary.json as a dict
    requests: pd.DataFrame   # per request: arrival, first token, finish, TTFT, E2E, mean TBT, preemptions
    timeline: pd.DataFrame   # per iteration: nexus.step.StepRecord's columns
    config: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (f"Result(policy={self.policy!r}, requests={s['requests']}, "
                f"ttft_p95={s['ttft_s']['p95']:.3f}s, tbt_p95={s['tbt_s']['p95'] * 1e3:.1f}ms)")


def make_result(policy: Policy, requests: list[Request], gaps: TokenGaps, timeline: list[StepRecord],
                slo_ttft_s: float | None, slo_tbt_s: float | None, summary_extra: dict,
                config: dict) -> Result:
    frame = requests_frame(requests)
    summary = summarize(frame, gaps, policy.name, slo_ttft_s, slo_tbt_s)
    summary.update(summary_extra)
    if learnt := policy.learnt():
        summary["learnt"] = learnt
    steps = pd.DataFrame(timeline, columns=TIMELINE_COLUMNS)
    return Result(policy.name, summary, frame, steps, config)
