"""Fit the measured cost model to a calibration file's measurements (numpy only).

Solo time of one phase on an SM count s is a sum of non-negative terms, each a fitted
coefficient times a physical feature of the shape:

    prefill: base(tokens) + own_pair_s * own_pairs + cross_pair_s * cross_pairs
             + prior_token_s * prior_tokens + dense_cross_pair_s * dense_cross_pairs
    decode:  base(batch)  + kv_token_s * kv_tokens

own_pairs = sum over chunks of n(n+1)/2, the causal query-key pairs among a chunk's n new
tokens; cross_pairs = sum of n*prior, its queries against the prior tokens already cached;
kv_tokens = batch * context. The two kinds of pairs get their own coefficients: attention
over a cached prefix runs other kernels than causal attention within a chunk, and on the
H100 profile costs several times more per pair. A chunk whose prefix runs on the dense path
(cuDNN, nexus.graph_buckets.runs_dense) counts its n*prior in dense_cross_pairs instead: the
profile marks those records ("dense"), and a profile without any prices them as cross pairs.
base() is fitted as a non-decreasing piecewise-linear curve with knots at the measured chunk sizes (batch sizes), flat below
the first knot (a tiny chunk still streams every weight and launches every kernel) and
extended with its last slope above the last one. Not a line, because a matmul is
weight-bound for few tokens and compute-bound for many: its time has a knee whose place
depends on the SM count. (Between knots the evaluator places that knee more precisely
than a chord: see nexus.cost.measured.densify.)

A free curve through every measured size absorbs whatever a single prompt's own pairs cost,
since they too are a function of its size alone: one-prompt records leave own_pair_s
unidentified (two H200 profiles fitted it at 5.9e-9 s and at 0 on the whole GPU). Records of
several equal prompts in one step (`prompts`) share the dense size of a one-prompt record
but hold a fraction of its own pairs, and pin the coefficient down.

Every coefficient is fitted at every measured SM count at once, constrained to be
non-negative and non-increasing in SMs (the plain stream, sms=0, ranks above the largest
partition). With non-negative features this makes "more SMs is never slower" hold for
every shape, not only for the measured ones. The constraint becomes plain non-negativity
by writing each coefficient as a sum of non-negative increments, one per SM count at or
above it, which a small active-set NNLS (Lawson-Hanson) then solves. Rows are weighted by
1/time so that relative error is what is minimised.

A column of SMs has as many coefficients as shapes measured on it, so a shape missing from
one column (the 8192-token chunk at 40 SMs, say) would leave its knot unconstrained there.
Penalty rows tie the columns together: each coefficient's deviation from the straight line
in 1/s through its two neighbouring columns is pushed toward zero, with weight SMOOTHING
(the plain stream stands at 1/num_sms at the end of that chain). Straight in 1/s is what
work that scales with SMs, and work that has stopped scaling, both are; the knee where
one turns into the other costs a little penalty and stays.

Co-run slowdown of a phase is 1 + a*u_o + b*u_s*u_o + c*min(u_o, max(0, u_s + u_o - k))
+ d*f_o*u_o, with u_s and u_o the HBM bandwidth each phase draws alone (its bytes, from the
model's shapes, over its fitted solo time, as a fraction of the datasheet bandwidth) and f_o
the other phase's share of the SMs. a is interference felt even by compute-bound work, b
grows with how memory-bound the slowed phase is, c is the oversubscription above k, the
fraction of datasheet bandwidth the chip really delivers, and d is pressure that grows with
how many SMs the rival drives at the memory system: on the H100, prefill on 16 SMs runs
1.8-2x slower beside decode on 116, but 1.2x beside decode on 36 SMs that draw nearly as
much bandwidth. a, b, c, d >= 0 are fitted per slowed phase by NNLS; k by a grid search.
The factor is 1 when the other phase is idle and never falls as its demand grows.

Held-out error: a seeded random quarter of the grid points of each kind (a point is an SM
count and a shape, with all its repeats) is left out, the model is fitted on the rest and
scored on it. The shipped parameters are then refitted on everything.

Run `python -m nexus.cost.fit CALIBRATION.json` to refit a file in place.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nexus.cost.base import FULL_GPU, BatchShape, CostModel
from nexus.cost.calibration import read_calibration, spec_from_dict, write_calibration
from nexus.cost.measured import SERVED_SCALES, MeasuredCost
from nexus.cost.terms import (CORUN_TERMS, FIT_METHOD, FIT_VERSION, PREFILL_ATTENTION,  # noqa: F401
                              corun_features, prefill_attention, sm_share)
from nexus.errors import UserError
from nexus.graph_buckets import GREEN_MAX_TOKENS
from nexus.specs import GPUSpec, ModelSpec

# Enough for a knot at every token bucket of an engine's prefill graphs (24 on the H200
# engine) besides the grid's own sizes: a graphed step runs at its bucket, and between
# buckets the curve has steps that no chord follows (real.profile.Grid).
MAX_KNOTS = 40
# A column of the fit further than this off its own points, in median, is reported (column_bias).
BIAS_WARN_PCT = 3.0
# A prefill size measured this much slower than the next larger one is reported
# (prefill_inversions): more than the profile's repeat-to-repeat spread.
INVERSION_WARN_PCT = 2.0
# Weight of the penalty on each coefficient's bend in 1/s between neighbouring SM columns,
# relative to a measurement's relative error. It fills in a shape a column lacks from the
# columns beside it; the held-out error is flat for weights between 0.3 and 3.
SMOOTHING = 1.0
# Candidate fractions of datasheet bandwidth at which co-running phases start to queue.
BANDWIDTH_FRACTIONS = np.round(np.arange(0.40, 1.201, 0.05), 2)
# Used when a calibration holds no co-run measurements: rough, in line with the analytical
# model's defaults, and reported as such.
DEFAULT_CORUN = {"bandwidth_fraction": 0.85,
                 "prefill": {"other_use": 0.10, "own_x_other_use": 0.0, "oversubscription": 0.5,
                             "other_share_x_use": 0.0, "other_share": 0.0},
                 "decode": {"other_use": 0.05, "own_x_other_use": 0.0, "oversubscription": 1.0,
                            "other_share_x_use": 0.0, "other_share": 0.0}}


# ---- non-negative least squares ------------------------------------------------------

def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """argmin ||a x - b|| subject to x >= 0, by the Lawson-Hanson active-set method."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(m, n) * (np.abs(a).sum(0).max() if a.size else 0.0)
    for _ in range(max_iter or 3 * n):
        grad = a.T @ (b - a @ x)
        candidates = np.where(passive, -np.inf, grad)
        j = int(np.argmax(candidates)) if n else 0
        if n == 0 or candidates[j] <= tol:
            break
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            # Step from x toward z until the first passive variable reaches zero; drop it.
            blocked = passive & (z <= 0)
            gap = x[blocked] - z[blocked]
            alpha = np.min(np.divide(x[blocked], gap, out=np.zeros_like(gap), where=gap > 0))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
    return x


# ---- solo-time features ----------------------------------------------------------------

def _pick_knots(values: np.ndarray) -> np.ndarray:
    distinct = np.unique(values)
    if len(distinct) > MAX_KNOTS:
        distinct = distinct[np.round(np.linspace(0, len(distinct) - 1, MAX_KNOTS)).astype(int)]
    return distinct.astype(float)


def _ramps(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Columns [1, r_1 .. r_{K-1}]: base(x) = sum of them times (value at knot 0, increments)."""
    cols = [np.ones_like(x, dtype=float)]
    for i in range(1, len(knots)):
        r = (x - knots[i - 1]) / (knots[i] - knots[i - 1])
        cols.append(np.maximum(r, 0.0) if i == len(knots) - 1 else np.clip(r, 0.0, 1.0))
    return np.stack(cols, axis=1)


def _sm_order(sms: list[int]) -> list[int]:
    """Measured SM counts from fewest to most, the plain stream (all SMs, no partition) last."""
    green = sorted(s for s in set(sms) if s != FULL_GPU)
    return green + ([FULL_GPU] if FULL_GPU in sms else [])


def _smoothing_rows(order: list[int], num_sms: int, scale: np.ndarray) -> np.ndarray:
    """Penalty rows on the coefficients (features x SM columns, flattened feature-major).

    One row per feature and inner column of the chain of SM counts ordered by 1/s (the plain
    stream last, standing at 1/num_sms): that column's value minus the line in 1/s through
    its two neighbours, in units of the feature's typical share of a measured time.
    """
    chain = [i for i, s in enumerate(order) if s != FULL_GPU]
    x = [1.0 / order[i] for i in chain]
    if FULL_GPU in order and (not x or 1.0 / num_sms < x[-1]):
        chain.append(order.index(FULL_GPU))
        x.append(1.0 / num_sms)
    ncols, p = len(order), len(scale)
    rows = []
    for j in range(1, len(chain) - 1):
        span = x[j - 1] - x[j + 1]
        w = np.zeros(ncols)
        w[chain[j - 1]] = -(x[j] - x[j + 1]) / span
        w[chain[j]] = 1.0
        w[chain[j + 1]] = -(x[j - 1] - x[j]) / span
        for k in range(p):
            row = np.zeros((p, ncols))
            row[k] = w * scale[k]
            rows.append(row.ravel())
    return np.array(rows).reshape(-1, p * ncols)


def _fit_monotone(sms: np.ndarray, features: np.ndarray, times: np.ndarray, num_sms: int
                  ) -> tuple[list[int], np.ndarray]:
    """Coefficients (SM columns x features), >= 0, non-increasing along the SM order and
    softly straight in 1/s across neighbouring columns."""
    order = _sm_order(sms.tolist())
    col = np.array([order.index(s) for s in sms.tolist()])
    ncols, p = len(order), features.shape[1]
    # Increment d[k, c'] counts toward the coefficient at every column c <= c'.
    reach = np.arange(ncols)[None, :] >= col[:, None]
    design = (features[:, :, None] * reach[:, None, :]).reshape(len(times), p * ncols)
    design /= times[:, None]
    target = np.ones(len(times))
    if SMOOTHING > 0 and ncols >= 3:
        share = features / times[:, None]
        present = (share > 0).sum(0)
        # A knot's ramp is non-zero only for sizes past it: average where it is present.
        scale = share.sum(0) / np.maximum(present, 1)
        increments_to_coef = np.kron(np.eye(p), np.triu(np.ones((ncols, ncols))))
        penalty = SMOOTHING * _smoothing_rows(order, num_sms, scale) @ increments_to_coef
        design = np.vstack([design, penalty])
        target = np.concatenate([target, np.zeros(len(penalty))])
    norms = np.linalg.norm(design, axis=0)
    used = norms > 0
    inc = np.zeros(p * ncols)
    inc[used] = nnls(design[:, used] / norms[used], target) / norms[used]
    inc = inc.reshape(p, ncols)
    coef = np.cumsum(inc[:, ::-1], axis=1)[:, ::-1]
    return order, coef.T


def _fit_phase(sms: np.ndarray, size: np.ndarray, attention: np.ndarray, times: np.ndarray,
               num_sms: int, phase: str, size_name: str) -> dict[str, Any]:
    if len(times) == 0:
        raise UserError(f"no {phase} measurements: cannot fit a {phase} model")
    knots = _pick_knots(size)
    if len(knots) < 2:
        raise UserError(f"{phase} measurements cover a single {size_name} ({int(knots[0])}); "
                        f"at least two are needed to fit how time grows with it")
    features = np.concatenate([_ramps(size, knots), attention], axis=1)
    order, coef = _fit_monotone(sms, features, times, num_sms)
    k = len(knots)
    base = np.cumsum(coef[:, :k], axis=1)    # value at each knot, without attention terms
    return {"sms": order, "knots": [int(v) for v in knots], "base_s": base.tolist(),
            "attention": coef[:, k:].tolist()}


def fit_prefill(records: list[dict], num_sms: int) -> dict[str, Any]:
    sms = np.array([r["sms"] for r in records], dtype=int)
    n = np.array([r["chunk_tokens"] for r in records], dtype=float)
    prior = np.array([r["prior_tokens"] for r in records], dtype=float)
    prompts = np.array([r.get("prompts", 1) for r in records], dtype=float)
    times = np.array([r["time_s"] for r in records], dtype=float)
    # The dense layers see every prompt's tokens; attention stays within each prompt.
    # Which records' prefix ran on the dense path is what the profile saw, not today's rule.
    dense = np.array([bool(r.get("dense")) and r["prior_tokens"] > 0 for r in records])
    cross = n * prior
    attention = prompts[:, None] * np.stack([n * (n + 1) / 2, np.where(dense, 0.0, cross), prior,
                                             np.where(dense, cross, 0.0)], axis=1)
    fit = _fit_phase(sms, prompts * n, attention, times, num_sms, "prefill", "chunk size")
    att = np.array(fit.pop("attention")).reshape(-1, len(PREFILL_ATTENTION))
    if not dense.any():   # an engine that ran every prefix on one kernel
        att[:, PREFILL_ATTENTION.index("dense_cross_pair_s")] = att[:, PREFILL_ATTENTION.index("cross_pair_s")]
    return {"sms": fit["sms"], "token_knots": fit["knots"], "base_s": fit["base_s"],
            **{name: att[:, i].tolist() for i, name in enumerate(PREFILL_ATTENTION)}}


def fit_decode(records: list[dict], num_sms: int) -> dict[str, Any]:
    sms = np.array([r["sms"] for r in records], dtype=int)
    batch = np.array([r["batch"] for r in records], dtype=float)
    kv = batch * np.array([r["context"] for r in records], dtype=float)
    times = np.array([r["time_s"] for r in records], dtype=float)
    fit = _fit_phase(sms, batch, kv[:, None], times, num_sms, "decode", "batch size")
    att = np.array(fit.pop("attention")).reshape(-1, 1)
    return {"sms": fit["sms"], "batch_knots": fit["knots"], "base_s": fit["base_s"],
            "kv_token_s": att[:, 0].tolist()}


# ---- co-run contention -----------------------------------------------------------------

def prefill_shape(rec: dict) -> BatchShape:
    return BatchShape(prefill_chunks=((rec["chunk_tokens"], rec["prior_tokens"]),) * rec.get("prompts", 1))


def decode_shape(rec: dict) -> BatchShape:
    return BatchShape(decode_seqs=rec["batch"], decode_kv_tokens=rec["batch"] * rec["context"])


def corun_terms(own: np.ndarray, other: np.ndarray, bandwidth_fraction: float,
                other_share: np.ndarray) -> np.ndarray:
    """Feature columns of the slowdown model (see the module docstring), one row per pair."""
    return np.stack(np.broadcast_arrays(*corun_features(own, other, bandwidth_fraction, other_share)), axis=-1)


def _corun_uses(cost: MeasuredCost, records: list[dict]) -> tuple[np.ndarray, ...]:
    """Bandwidth fractions each phase of each co-run draws alone, under the solo model, and
    each phase's share of the SMs."""
    bw, n = cost.gpu.hbm_bandwidth, cost.gpu.num_sms
    up = [cost.memory_demand(prefill_shape(r["prefill"]), r["prefill"]["sms"]) / bw for r in records]
    ud = [cost.memory_demand(decode_shape(r["decode"]), r["decode"]["sms"]) / bw for r in records]
    fp = sm_share([r["prefill"]["sms"] for r in records], n)
    fd = sm_share([r["decode"]["sms"] for r in records], n)
    return np.array(up), np.array(ud), fp, fd


def fit_corun(cost: MeasuredCost, records: list[dict]) -> dict[str, Any]:
    """Contention parameters from co-run records, given a cost model for solo times."""
    if not records:
        return {**DEFAULT_CORUN, "n": 0,
                "source": "defaults: the calibration has no co-run measurements"}
    up, ud, fp, fd = _corun_uses(cost, records)
    measured = {"prefill": np.array([r["prefill_time_s"] / r["prefill_solo_s"] for r in records]),
                "decode": np.array([r["decode_time_s"] / r["decode_solo_s"] for r in records])}
    own_other = {"prefill": (up, ud, fd), "decode": (ud, up, fp)}
    best = None
    for k in BANDWIDTH_FRACTIONS:
        params, sse = {}, 0.0
        for phase, (own, other, other_share) in own_other.items():
            slow = measured[phase]
            x = corun_terms(own, other, float(k), other_share) / slow[:, None]
            coef = nnls(x, (slow - 1.0) / slow)
            sse += float(np.sum((x @ coef - (slow - 1.0) / slow) ** 2))
            params[phase] = dict(zip(CORUN_TERMS, coef.tolist()))
        if best is None or sse < best[0] - 1e-15:
            best = (sse, float(k), params)
    _, k, params = best
    return {"bandwidth_fraction": k, **params, "n": len(records),
            "source": f"fitted to {len(records)} co-run measurements"}


# ---- the whole fit, with held-out error --------------------------------------------------

def fit_params(measurements: dict[str, list], model: ModelSpec, gpu: GPUSpec,
               engine: dict | None = None) -> dict[str, Any]:
    """Fitted parameters (the calibration file's "fit") from all of `measurements`; `engine` is
    the calibration's engine section (the graphs that pad a chunked-prefill step)."""
    solo = {"method": FIT_METHOD, "version": FIT_VERSION,
            "prefill": fit_prefill(measurements.get("prefill", []), gpu.num_sms),
            "decode": fit_decode(measurements.get("decode", []), gpu.num_sms)}
    cost = MeasuredCost(model, gpu, {**solo, "corun": DEFAULT_CORUN})
    cost.use_engine(engine or {})
    return {**solo, "corun": fit_corun(cost, measurements.get("corun", [])),
            "mixed": fit_mixed(cost, measurements.get("mixed", []))}


def mixed_shape(rec: dict) -> BatchShape:
    return BatchShape(((rec["chunk_tokens"], rec["prior_tokens"]),), rec["batch"],
                      rec["batch"] * rec["context"])


def fit_mixed(cost: MeasuredCost, records: list[dict], rounds: int = 20) -> dict[str, float]:
    """The floor under a chunked-prefill step's time from the solo curves.

    The host packs every decode row (and, for an eager step, launches every kernel) while the
    GPU works through what it was given, so the step takes the longer of the two,
    max(host_s + per_seq_s * decode rows, GPU time from the solo curves); both >= 0. Fitted
    by alternating: which steps are host-bound under the current floor, then the floor by
    relative least squares on those; the best of the rounds is kept.
    """
    if not records:
        return {"host_s": 0.0, "per_seq_s": 0.0}
    t = np.array([r["time_s"] for r in records])
    gpu = np.array([float(cost.solo_time(mixed_shape(r), r["sms"])) for r in records])
    a = np.array([[1.0, r["batch"]] for r in records])

    def loss(coef: np.ndarray) -> float:
        return float(np.sum((np.maximum(a @ coef, gpu) / t - 1.0) ** 2))

    best, host_bound = np.zeros(2), t > gpu
    for _ in range(rounds):
        if not host_bound.any():
            break
        coef = nnls(a[host_bound] / t[host_bound, None], np.ones(int(host_bound.sum())))
        if loss(coef) < loss(best):
            best = coef
        now = a @ coef > gpu
        if np.array_equal(now, host_bound):
            break
        host_bound = now
    return {"host_s": float(best[0]), "per_seq_s": float(best[1])}


def _point_key(phase: str, rec: dict) -> tuple:
    if phase == "prefill":
        return rec["sms"], rec["chunk_tokens"], rec["prior_tokens"], rec.get("prompts", 1)
    if phase == "decode":
        return rec["sms"], rec["batch"], rec["context"]
    if phase == "mixed":
        return rec["sms"], rec["chunk_tokens"], rec["prior_tokens"], rec["batch"], rec["context"]
    p, d = rec["prefill"], rec["decode"]
    return p["sms"], p["chunk_tokens"], p["prior_tokens"], d["sms"], d["batch"], d["context"]


def split_holdout(measurements: dict[str, list], fraction: float, seed: int
                  ) -> tuple[dict[str, list], dict[str, list]]:
    """(train, held out): a seeded random `fraction` of each kind's grid points, repeats together."""
    train: dict[str, list] = {}
    held: dict[str, list] = {}
    for i, phase in enumerate(("prefill", "decode", "corun", "mixed")):
        records = measurements.get(phase, [])
        keys = sorted({_point_key(phase, r) for r in records})
        n_out = int(round(fraction * len(keys))) if len(keys) >= 4 else 0
        rng = np.random.default_rng([seed, i])
        out = {keys[j] for j in rng.permutation(len(keys))[:n_out]}
        train[phase] = [r for r in records if _point_key(phase, r) not in out]
        held[phase] = [r for r in records if _point_key(phase, r) in out]
    return train, held


def _stats(errors: list[float]) -> dict[str, Any]:
    if not errors:
        return {"median_abs_pct": None, "p90_abs_pct": None, "n": 0}
    e = np.abs(np.array(errors))
    return {"median_abs_pct": round(float(np.median(e)), 3),
            "p90_abs_pct": round(float(np.percentile(e, 90)), 3), "n": len(errors)}


def _solo_errors(cost: CostModel, measurements: dict[str, list]) -> Iterator[tuple[str, int, float]]:
    """(phase, SMs, signed % error of `cost`) for every solo-time record."""
    for phase, shape_of in (("prefill", prefill_shape), ("decode", decode_shape), ("mixed", mixed_shape)):
        for r in measurements.get(phase, []):
            yield phase, r["sms"], 100.0 * (cost.solo_time(shape_of(r), r["sms"]) / r["time_s"] - 1.0)


def prediction_errors(cost: CostModel, measurements: dict[str, list]) -> dict[str, list[float]]:
    """Signed % errors of `cost` against measurements: solo times, and co-run slowdowns."""
    out: dict[str, list[float]] = {"prefill": [], "decode": [], "corun_slowdown": [], "mixed": []}
    for phase, _, error in _solo_errors(cost, measurements):
        out[phase].append(error)
    for r in measurements.get("corun", []):
        p, d = prefill_shape(r["prefill"]), decode_shape(r["decode"])
        ps, ds = r["prefill"]["sms"], r["decode"]["sms"]
        for pred, meas in ((cost.slowdown(p, ps, d, ds), r["prefill_time_s"] / r["prefill_solo_s"]),
                           (cost.slowdown(d, ds, p, ps), r["decode_time_s"] / r["decode_solo_s"])):
            out["corun_slowdown"].append(100.0 * (pred / meas - 1.0))
    return out


def column_bias(cost: CostModel, measurements: dict[str, list]) -> dict[str, dict[str, float]]:
    """Median signed % error of a fit against the very points it was fitted on, per phase and SM
    column ("0" is the plain stream).

    Held-out error is a median over every column, so one column priced a few % off throughout
    hides in it; this does not. Such a bias comes from the model's form or from columns that
    contradict each other under the rule that more SMs are never slower: a plain stream once
    read 4.6% under its own points on an H200 profile, when the partitions' extrapolated trend
    capped it.
    """
    by: dict[str, dict[int, list[float]]] = {}
    for phase, sms, error in _solo_errors(cost, measurements):
        by.setdefault(phase, {}).setdefault(sms, []).append(error)
    return {phase: {str(s): round(float(np.median(v)), 2) for s, v in sorted(cols.items())}
            for phase, cols in by.items()}


def bias_warnings(bias: dict[str, dict[str, float]]) -> list[str]:
    """One line per column whose fit is more than BIAS_WARN_PCT off its own points."""
    lines = []
    for phase, cols in bias.items():
        for sms, b in cols.items():
            if abs(b) > BIAS_WARN_PCT:
                where = "the plain stream" if sms == str(FULL_GPU) else f"{sms} SMs"
                lines.append(f"{phase} on {where}: the fit is {abs(b):.1f}% {'under' if b < 0 else 'over'} "
                             f"its own points (median); the model's form or contradictory columns leave it")
    return lines


def _one_prompt_no_prior(r: dict) -> bool:
    """A prefill record of one prompt without a prior: a graph bucket's step where it fits one."""
    return r.get("prompts", 1) == 1 and r["prior_tokens"] == 0


def one_prompt_prefill_medians(records: list[dict]) -> dict[tuple[int, int], float]:
    """Median time of each one-prompt prefill size without a prior, by (SMs, tokens): what a
    graph bucket's step costs on each SM column."""
    times: dict[tuple[int, int], list[float]] = {}
    for r in records:
        if _one_prompt_no_prior(r):
            times.setdefault((r["sms"], r["chunk_tokens"]), []).append(r["time_s"])
    return {key: float(np.median(t)) for key, t in times.items()}


def prefill_inversions(records: list[dict]) -> list[list[int | float]]:
    """[SMs, tokens, next larger tokens, % slower] for each one-prompt prefill size without a
    prior whose median time on an SM column exceeds the next larger size's there by more than
    INVERSION_WARN_PCT. The fit is non-decreasing in tokens and cannot follow one; an engine
    would do better to pad such a step past it (a graph bucket that costs more than the next)."""
    median = one_prompt_prefill_medians(records)
    out: list[list[int | float]] = []
    for sms in sorted({s for s, _ in median}):
        sizes = sorted(n for s, n in median if s == sms)
        for small, large in zip(sizes, sizes[1:]):
            slower = 100.0 * (median[sms, small] / median[sms, large] - 1.0)
            if slower > INVERSION_WARN_PCT:
                out.append([sms, small, large, round(float(slower), 1)])
    return out


def fit_report(fit_error: dict[str, Any]) -> list[str]:
    """What a refit or a profile prints of its fit: the held-out error of each kind, then a
    warning for each column off its own points (bias_warnings)."""
    lines = []
    for kind in ("prefill", "decode", "corun_slowdown", "mixed"):
        s = fit_error.get(kind, {})
        lines.append(f"{kind:15s} held-out median {s['median_abs_pct']:6.2f}%  P90 {s['p90_abs_pct']:6.2f}%  "
                     f"n={s['n']}" if s.get("n") else f"{kind:15s} no held-out points")
    lines += [f"warning: {line}" for line in bias_warnings(fit_error.get("bias_pct", {}))]
    for sms, small, large, slower in fit_error.get("prefill_inversions", []):
        where = "the plain stream" if sms == FULL_GPU else f"{sms} SMs"
        lines.append(f"warning: prefill of {small} tokens on {where} took {slower:.1f}% longer than of {large}: "
                     f"the fit prices it at most as {large}; pad such steps past it")
    return lines


def without_dropped_graphs(measurements: dict[str, list], engine: dict[str, Any]) -> dict[str, list]:
    """The measurements less the graph steps of buckets the profile dropped
    (engine.prefill_graphs.dropped): one-prompt prefills without a prior at such a size, on
    the whole GPU or on a partition's graphs (up to GREEN_MAX_TOKENS).

    They timed graphs the engine no longer captures; it pads such steps to the next bucket, as
    the model does. Kept, they only pulled the held-out error up: on an H200 the 448-token
    graph ran 22-32% slower than the fit's price (512's) on every partition."""
    dropped = set((engine.get("prefill_graphs") or {}).get("dropped", []))
    if not dropped:
        return measurements

    def stale(r: dict) -> bool:
        return (_one_prompt_no_prior(r) and r["chunk_tokens"] in dropped
                and (r["sms"] == FULL_GPU or r["chunk_tokens"] <= GREEN_MAX_TOKENS))

    return {**measurements, "prefill": [r for r in measurements.get("prefill", []) if not stale(r)]}


def fit_calibration(data: dict[str, Any], holdout_fraction: float = 0.25,
                    seed: int = 0) -> dict[str, Any]:
    """{"fit": parameters fitted on all measurements, "fit_error": held-out error}.

    `data` is a validated calibration (see nexus.cost.calibration). Co-run slowdown error
    counts two factors per co-run, one per phase.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise UserError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    model = spec_from_dict(ModelSpec, data["model"], "calibration model")
    gpu = spec_from_dict(GPUSpec, data["gpu"], "calibration gpu")
    # The grid is scored as measured: the engine's served scales (nexus.cost.measured) are not its.
    engine = {k: v for k, v in data.get("engine", {}).items() if k not in SERVED_SCALES}
    measurements = without_dropped_graphs(data["measurements"], engine)
    fit = fit_params(measurements, model, gpu, engine)

    train, held = split_holdout(measurements, holdout_fraction, seed)
    how = (f"{holdout_fraction:.0%} of the grid points of each kind (an SM count and a shape, "
           f"with all its repeats) drawn with numpy default_rng([{seed}, kind]), fitted on the "
           f"rest; the shipped fit uses every point")
    try:
        held_cost = MeasuredCost(model, gpu, fit_params(train, model, gpu, engine))
        held_cost.use_engine(engine)
        errors = prediction_errors(held_cost, held)
    except UserError as e:
        errors = {"prefill": [], "decode": [], "corun_slowdown": [], "mixed": []}
        how = f"none: too little data left to fit after holding points out ({e})"
    fit_error = {kind: _stats(errors[kind]) for kind in ("prefill", "decode", "corun_slowdown", "mixed")}
    fit_error["holdout"] = how
    cost = MeasuredCost(model, gpu, fit)
    cost.use_engine(engine)
    fit_error["bias_pct"] = column_bias(cost, measurements)
    fit_error["prefill_inversions"] = prefill_inversions(measurements.get("prefill", []))
    return {"fit": fit, "fit_error": fit_error}


def refit_file(path: str | Path, holdout_fraction: float = 0.25, seed: int = 0,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Refit a calibration file in place, with the served scales of the engine replay beside
    it measured against the new fit (none without one); returns its new fit_error."""
    from nexus.cost.served import read_replay, served_scales   # pandas, for the replay only
    data = read_calibration(path)
    replay = read_replay(path)
    data.update(fit_calibration(data, holdout_fraction, seed))
    served_scales(data, replay, log)
    write_calibration(data, path)
    return data["fit_error"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nexus.cost.fit",
                                     description="Refit a calibration file in place, measure its "
                                                 "served scales again from the engine replay beside it "
                                                 "(NAME.replay.csv.gz; none without one), and print its "
                                                 "held-out error.")
    parser.add_argument("calibration", help="calibration JSON file")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="fraction of grid points held out to measure error (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    args = parser.parse_args(argv)
    try:
        err = refit_file(args.calibration, args.holdout, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in fit_report(err):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
