"""The engine's host time between two steps of a stream, measured by replaying a synthetic trace.

The gap grows with the decode rows the host loops over (recording tokens, planning the next
batch): 0.15 ms at 4 rows to 0.8 ms at 200 on an H100. It is fitted as a line in the step's
decode sequences, through the median gap of each band of batch sizes, weighted by how many
steps fell in the band. Steps without decode rows are left out: their gap is the policy's
own planning (Nexus's split controller), not the engine's.

The replay is a trace made for the purpose (seeded, Poisson, prompts log-uniform up to 4k
tokens), never a case that fidelity is judged on. The profile also prices the replay's
co-run steps with the fitted model (nexus.step_view.corun_scale), so its prompts span short
and long prefill steps: on the H200, decode beside long prefill steps ran 9-12% over the
co-run grid's model, and beside ShareGPT's short ones about as much under it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nexus.cost.fit import nnls
from nexus.policy import build_policies
from traces import TraceEntry

BANDS = (17, 33, 65, 129)
BUSY_GAP_S = 0.005   # longer gaps are idle time, not overhead


def replay_trace(requests: int = 240, rate: float = 40.0, seed: int = 0,
                 max_tokens: int = 1 << 30) -> list[TraceEntry]:
    """Prompts log-uniform over 64-4095 tokens (mean about 950) and outputs of 32-319, shrunk
    to fit `max_tokens` together."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, requests))
    prompt_hi, output_hi = min(4096, max(max_tokens // 2, 3)), min(320, max(max_tokens // 4, 3))
    prompt_lo = min(64, prompt_hi - 1)
    prompts = np.exp(rng.uniform(np.log(prompt_lo), np.log(prompt_hi), requests)).astype(int)
    return [TraceEntry(f"gap{i}", float(t - times[0]), int(p), int(rng.integers(min(32, output_hi - 1), output_hi)))
            for i, (t, p) in enumerate(zip(times, prompts))]


def fit_step_gap(timelines: list[pd.DataFrame]) -> dict:
    """{"step_gap_s", "step_gap_per_seq_s", "bands": [(median rows, median gap, steps)]}."""
    gaps, seqs = [], []
    for tl in timelines:
        for _, mine in tl.groupby("stream"):
            s, e, n = (mine[k].to_numpy() for k in ("start_s", "end_s", "decode_seqs"))
            g = s[1:] - e[:-1]
            busy = (g < BUSY_GAP_S) & (n[:-1] > 0)
            gaps.append(g[busy])
            seqs.append(n[:-1][busy])
    gaps, seqs = np.concatenate(gaps), np.concatenate(seqs)
    if gaps.size < 10:
        raise ValueError(f"only {gaps.size} busy step gaps to fit the host gap on")
    bands = np.digitize(seqs, BANDS)
    rows = [(float(np.median(seqs[bands == b])), float(np.median(gaps[bands == b])), int(np.sum(bands == b)))
            for b in np.unique(bands)]
    x = np.array([[1.0, n] for n, _, _ in rows])
    w = np.sqrt([c for _, _, c in rows])
    gap, per_seq = nnls(x * w[:, None], np.array([g for _, g, _ in rows]) * w)
    return {"step_gap_s": round(float(gap), 7), "step_gap_per_seq_s": round(float(per_seq), 9), "bands": rows}


def measure_host_gap(bench, policies: tuple[str, ...] = ("chunked", "static"), requests: int = 240
                     ) -> tuple[dict, list[pd.DataFrame]]:
    """Replay the synthetic trace on `bench` under each policy and fit the gap on all their
    steps; the fit, and the replays' timelines."""
    runner = bench.runner
    trace = replay_trace(requests, max_tokens=min(runner.num_blocks * runner.block_size // 4, runner.max_model_len))
    timelines = [bench.run(trace, policy, "analytical").timeline for policy in build_policies(list(policies), {})]
    fit = fit_step_gap(timelines)
    fit["source"] = (f"host gap between consecutive busy steps of a stream in engine replays ({', '.join(policies)}) "
                     f"of a synthetic trace (real.host_gap.replay_trace: {len(trace)} requests, Poisson 40/s, "
                     f"prompts up to {max(e.prompt_tokens for e in trace)}, outputs up to "
                     f"{max(e.output_tokens for e in trace)} tokens, seed 0)")
    return fit, timelines
