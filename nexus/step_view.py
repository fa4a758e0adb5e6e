"""A run's measured steps beside the cost model's time for each step's exact shape.

Each engine step is priced as the simulator would price it: the step's shape alone on its
SMs, stretched by whatever ran beside it on the other stream. What is left between the two
is cost-model error, apart from any divergence in scheduling; `decode_scale` and `corun_scale`
turn the decode steps' and the co-run steps' part of it into the corrections a calibration
carries (nexus.cost.measured).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nexus.cost.base import BatchShape, CostModel
from nexus.step import chunks_from_text

# How steps CSVs write floats. A step's time is read back as end_s - start_s, so the clock's
# resolution must hold a step's length: with 7 digits, 20 s into a run the clock reads to
# 10 us, 1% of a 1 ms step, and a rescore (nexus-real validate --rescore) drifted from its
# run. With 12, a 1 ms step 1000 s in keeps six digits.
STEPS_FLOAT_FORMAT = "%.12g"


def step_table(timeline: pd.DataFrame, cost: CostModel) -> pd.DataFrame:
    """Each measured step beside the model's time for its shape and SMs, stretched by the
    steps that ran beside it on the other stream.

    A 100 ms prefill step on one side overlaps ten 10 ms decode steps on the other, none of
    them for more than a tenth of it; so the stretch is the overlap-weighted mean of each
    co-runner's slowdown (1 where nothing ran beside it), as the simulator retimes a step
    whenever its co-runner changes.
    """
    columns = ["stream", "start_s", "end_s", "sms", "prefill_tokens", "prefill_prior_tokens",
               "decode_seqs", "decode_kv_tokens", "prefill_chunks", "prefill_shape", "sm_clock_mhz"]
    steps = timeline[[c for c in columns if c in timeline.columns]].sort_values("start_s", kind="stable").reset_index(drop=True)
    steps["measured_s"] = steps["end_s"] - steps["start_s"]
    shapes = [_shape(r) for r in steps.itertuples()]
    solo = np.array([float(cost.solo_time(shape, int(s))) for shape, s in zip(shapes, steps["sms"])])
    stream, sms = steps["stream"].to_numpy(), steps["sms"].to_numpy()
    start, end, length = (steps[c].to_numpy() for c in ("start_s", "end_s", "measured_s"))
    stretch = np.ones(len(steps))
    covered = np.zeros(len(steps))
    for name in np.unique(stream):
        others = np.flatnonzero(stream != name)
        if not len(others):
            continue
        # The other stream's steps follow one another, so their ends are sorted too.
        o_start, o_end = start[others], end[others]
        for i in np.flatnonzero((stream == name) & (length > 0)):
            lo, hi = np.searchsorted(o_end, start[i], "right"), np.searchsorted(o_start, end[i], "left")
            excess = 0.0
            for j in range(lo, hi):
                overlap = min(o_end[j], end[i]) - max(o_start[j], start[i])
                if overlap > 0:
                    rival = others[j]
                    covered[i] += overlap / length[i]
                    excess += overlap / length[i] * (float(cost.slowdown(
                        shapes[i], int(sms[i]), shapes[rival], int(sms[rival]))) - 1.0)
            stretch[i] += excess
    steps["covered"] = np.minimum(covered, 1.0)
    steps["solo_s"] = solo
    steps["predicted_s"] = solo * stretch
    kind = np.where((steps["prefill_tokens"] > 0) & (steps["decode_seqs"] > 0), "mixed",
                    np.where(steps["prefill_tokens"] > 0, "prefill", "decode"))
    steps["kind"] = [k + ("+corun" if c > 0.5 else "") for k, c in zip(kind, steps["covered"])]
    with np.errstate(divide="ignore", invalid="ignore"):
        steps["error_pct"] = 100.0 * (steps["predicted_s"] - steps["measured_s"]) / steps["measured_s"]
    return steps[steps["measured_s"] > 0].reset_index(drop=True)


def step_view(steps: pd.DataFrame) -> dict:
    """Per step kind: how many, and the median signed and absolute % error of the model; with
    the engine's SM clock beside each step (`sm_clock_mhz`), also its median, and the signed
    error apart for the steps at the run's top clock and those below it."""
    clock = steps["sm_clock_mhz"] if "sm_clock_mhz" in steps else None
    top_mhz = float(clock.max()) if clock is not None and clock.notna().any() else None
    view = {}
    for kind, g in sorted(steps.groupby("kind"), key=lambda kv: kv[0]):
        view[kind] = _errors(g["error_pct"])
        if top_mhz is not None and g["sm_clock_mhz"].notna().any():
            mhz = g["sm_clock_mhz"]
            top = mhz >= top_mhz - CLOCK_BAND_MHZ
            view[kind]["sm_clock_mhz"] = float(mhz.median())
            for name, mine in (("at_top_clock", top), ("below_top_clock", ~top & mhz.notna())):
                if mine.any():
                    view[kind][name] = _errors(g["error_pct"][mine])
    return view


def _errors(error_pct: pd.Series) -> dict:
    return {"n": int(len(error_pct)), "median_signed_pct": float(error_pct.median()),
            "median_abs_pct": float(error_pct.abs().median())}


# Steps within this of the run's highest sampled SM clock count as unthrottled (NVML reports
# it in steps of 15 MHz; an H200 rests at 1980).
CLOCK_BAND_MHZ = 30.0


def _shape(r) -> BatchShape:
    """The step's shape from its timeline row: its chunks as recorded (`prefill_shape`), or,
    in a timeline recorded before they were, from its sums over them.

    From the sums, the prompts share the tokens and the prior evenly: ShareGPT prefill steps
    of 8-16 short prompts, taken as one long prompt, were priced 17-25% over their measured
    time on the H200 (attention pairs grow with the square of a prompt's length). Timelines
    recorded before `prefill_chunks` existed read as one prompt a step."""
    chunks = chunks_from_text(getattr(r, "prefill_shape", None))
    if chunks is not None:
        return BatchShape(chunks, int(r.decode_seqs), int(r.decode_kv_tokens))
    tokens, prior = int(r.prefill_tokens), int(r.prefill_prior_tokens)
    count = min(max(int(getattr(r, "prefill_chunks", 1)), 1), tokens) if tokens else 0
    chunks = tuple((tokens // count + (i < tokens % count), prior // count + (i < prior % count))
                   for i in range(count))
    return BatchShape(chunks, int(r.decode_seqs), int(r.decode_kv_tokens))


# A scale is set only from this many steps of its kind: fewer, and one odd step (a first
# launch, a clock change) would set it.
MIN_CORUN_STEPS = 20


def decode_scale(steps: pd.DataFrame) -> dict:
    """The median ratio of measured to predicted time over the decode steps that ran alone
    ("decode" in `steps`, a `step_table`), on the plain stream (SM count 0) and on partitions
    apart; 1.0 for either with fewer than MIN_CORUN_STEPS of them."""
    alone = steps[steps["kind"] == "decode"]
    return _scales({"plain": alone[alone["sms"] == 0], "partitions": alone[alone["sms"] > 0]})


def corun_scale(steps: pd.DataFrame) -> dict:
    """Per phase, the median ratio of measured to predicted time over the steps that ran beside
    the other stream for most of their length ("decode+corun", "prefill+corun" in `steps`, a
    `step_table`); 1.0 for a phase with fewer than MIN_CORUN_STEPS of them.

    Prefill steps count only if they hold one prompt or the timeline recorded their chunks
    (`prefill_shape`): from a step's sums alone, prompts of unequal length are priced as equal
    shares, which attend over fewer pairs, and would skew the scale."""
    single = steps["prefill_chunks"] <= 1 if "prefill_chunks" in steps else True
    if "prefill_shape" in steps:
        single = single | steps["prefill_shape"].map(lambda t: chunks_from_text(t) is not None)
    return _scales({"prefill": steps[(steps["kind"] == "prefill+corun") & single],
                    "decode": steps[steps["kind"] == "decode+corun"]})


def _scales(groups: dict[str, pd.DataFrame]) -> dict:
    """Per group of steps, the median measured / predicted time (1.0 with fewer than
    MIN_CORUN_STEPS of them), and under "steps" how many each had."""
    out: dict = {"steps": {}}
    for name, mine in groups.items():
        ratio = (mine["measured_s"] / mine["predicted_s"]).to_numpy()
        ratio = ratio[np.isfinite(ratio)]
        out["steps"][name] = int(ratio.size)
        out[name] = round(float(np.median(ratio)), 4) if ratio.size >= MIN_CORUN_STEPS else 1.0
    return out
