"""The measured model's formulas, shared by the fitter (nexus.cost.fit) and the evaluator
(nexus.cost.measured): the features of a shape, and the co-run slowdown. Neither module
writes them again; nexus.cost.fit's docstring explains where they come from.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nexus.cost.base import FULL_GPU
from nexus.graph_buckets import runs_dense

FIT_METHOD = "monotone-piecewise-nnls"
FIT_VERSION = 5
# Version 3 fits lack the "other_share" co-run term (a rival's SM share slows a phase even
# when it draws little bandwidth); they read as version 4 with that term 0. Versions 3 and 4
# lack "dense_cross_pair_s" (their engine ran every chunk after a prefix on one kernel); they
# read with it equal to cross_pair_s.
READABLE_FIT_VERSIONS = (3, 4, 5)
# Prefill attention coefficients, in the order of prefill_attention's features.
PREFILL_ATTENTION = ("own_pair_s", "cross_pair_s", "prior_token_s", "dense_cross_pair_s")
# Co-run coefficients of a slowed phase, in the order of corun_features.
CORUN_TERMS = ("other_use", "own_x_other_use", "oversubscription", "other_share_x_use", "other_share")


def prefill_attention(chunks: tuple[tuple[int, int], ...]) -> tuple[int, int, int, int, int]:
    """(new tokens, causal pairs among new tokens, new x prior pairs, prior KV tokens, new x
    prior pairs of dense chunks), summed over prefill chunks. A chunk after a prefix that the
    dense path takes (nexus.graph_buckets.runs_dense) counts its pairs in the last term
    instead: cuDNN's kernel ran them 1.2-1.4x faster than the Triton one on an H200."""
    if len(chunks) == 1:   # most steps, and every candidate chunk a controller prices
        n, p = chunks[0]
        if n <= 0:
            return 0, 0, 0, 0, 0
        if p and runs_dense(n, p):
            return n, n * (n + 1) // 2, 0, p, n * p
        return n, n * (n + 1) // 2, n * p, p, 0
    tokens = own = cross = prior = dense = 0
    for n, p in chunks:
        if n > 0:
            tokens += n
            own += n * (n + 1) // 2
            if p and runs_dense(n, p):
                dense += n * p
            else:
                cross += n * p
            prior += p
    return tokens, own, cross, prior, dense


def sm_share(sms: Any, num_sms: int) -> Any:
    """Fraction of the GPU's SMs a stream runs on; the plain stream (FULL_GPU) has them all."""
    if isinstance(sms, (int, np.integer)):   # the simulator's hot path: no numpy for one count
        return 1.0 if sms == FULL_GPU else sms / num_sms
    return np.where(np.asarray(sms) == FULL_GPU, 1.0, np.asarray(sms) / num_sms)


def oversubscription(own: Any, other: Any, bandwidth_fraction: float) -> Any:
    """How far the pair's bandwidth use exceeds what the chip delivers, at most the rival's use."""
    if isinstance(own, np.ndarray) or isinstance(other, np.ndarray):
        return np.minimum(other, np.maximum(own + other - bandwidth_fraction, 0.0))
    return min(other, max(own + other - bandwidth_fraction, 0.0))


def corun_features(own: Any, other: Any, bandwidth_fraction: float, other_share: Any) -> tuple:
    """The slowdown's features, in CORUN_TERMS order: u_o, u_s*u_o, the oversubscription, f_o*u_o, f_o."""
    return (other, own * other, oversubscription(own, other, bandwidth_fraction), other_share * other,
            other_share)


def corun_excess(coef: list[float], bandwidth_fraction: float, own: Any, other: Any, other_share: Any) -> Any:
    """slowdown - 1 of a phase drawing `own` beside a rival drawing `other` (fractions of the
    datasheet bandwidth) on `other_share` of the SMs; `coef` in CORUN_TERMS order."""
    a, b, c, d, e = coef
    over = oversubscription(own, other, bandwidth_fraction)
    return a * other + b * own * other + c * over + d * other_share * other + e * other_share
