"""The cost-model interface and the shape of one iteration's work."""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, Protocol

import numpy as np

from nexus.specs import GPUSpec, ModelSpec

# SM count meaning "a plain stream on the whole GPU". On a real GPU this is faster than a
# green context holding nearly every SM, so it is kept distinct from num_sms.
FULL_GPU = 0


class BatchShape(NamedTuple):
    """What one iteration computes: prefill chunks and/or one decode step.

    A named tuple, not a frozen dataclass: the simulator builds several a step (a controller
    pricing candidate chunks, dozens), and a tuple is made in half the time.

    prefill_chunks: (new_tokens, prior_tokens) per chunk: new_tokens are computed now,
        attending causally to themselves and to prior_tokens already in the KV cache.
    decode_seqs: sequences that each produce one token this step.
    decode_kv_tokens: KV tokens those sequences attend to, summed over sequences.
    """
    prefill_chunks: tuple[tuple[int, int], ...] = ()
    decode_seqs: int = 0
    decode_kv_tokens: int = 0

    @property
    def prefill_tokens(self) -> int:
        chunks = self.prefill_chunks
        if not chunks:   # a decode step: asked at every co-run retiming, no generator for nothing
            return 0
        return chunks[0][0] if len(chunks) == 1 else sum(n for n, _ in chunks)

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    @property
    def is_empty(self) -> bool:
        return self.tokens == 0


# make_shape((chunks, seqs, kv_tokens)) is BatchShape(chunks, seqs, kv_tokens) without the named
# tuple's generated __new__, a Python frame per shape (2-3% of a simulator's loop in py-spy).
make_shape = partial(tuple.__new__, BatchShape)


class CostModel(Protocol):
    """Answers: how long does this iteration take on `sms` SMs while the other phase runs that?

    `sms` may be an int or a numpy array of SM counts (results broadcast), so a controller can
    score every candidate split in one call. FULL_GPU (0) means a plain stream on all SMs.
    """

    name: str
    model: ModelSpec
    gpu: GPUSpec

    def step_overhead(self, shape: BatchShape) -> float:
        """Engine host time between this iteration and the next of its stream."""
        ...

    def solo_time(self, shape: BatchShape, sms: int | np.ndarray) -> float | np.ndarray:
        """Seconds for the iteration with the GPU otherwise idle."""
        ...

    def memory_demand(self, shape: BatchShape, sms: int | np.ndarray) -> float | np.ndarray:
        """Average HBM bytes/s the iteration draws alone on `sms` SMs (what co-run contention
        and the fitter's co-run features are computed from)."""
        ...

    def slowdown(self, shape: BatchShape, sms: int | np.ndarray,
                 other: BatchShape, other_sms: int | np.ndarray) -> float | np.ndarray:
        """Factor >= 1 by which `shape` on `sms` is stretched while `other` runs on `other_sms`.

        Contention is two-way: slowdown(a, b) and slowdown(b, a) both exceed 1 when the pair
        together wants more HBM bandwidth than the chip has.
        """
        ...

    def describe(self) -> dict:
        """Which model this is and where its parameters came from (for result files)."""
        ...


def corun_times(cost: CostModel, shape: BatchShape, sms: int | np.ndarray, other: BatchShape,
                other_sms: int | np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray]:
    """The times of two iterations that run side by side, each stretched by the other:
    solo_time(shape) * slowdown(shape beside other), and the same for `other`.

    A controller asks this for every candidate split at once. A model's class may answer it in
    one pass (`corun_times_fast`, returning None where it has no shortcut); its answer must be
    this one to the last bit. Looked up on the class, so that a wrapper which passes other
    attributes on to a model (one that changes its solo times, say) is asked each side apart.
    """
    fast = getattr(type(cost), "corun_times_fast", None)
    if fast is not None:
        found = fast(cost, shape, sms, other, other_sms)
        if found is not None:
            return found
    return (cost.solo_time(shape, sms) * cost.slowdown(shape, sms, other, other_sms),
            cost.solo_time(other, other_sms) * cost.slowdown(other, other_sms, shape, sms))


def corun_times_each(cost: CostModel, shape: BatchShape, sms: tuple[int, ...], other: BatchShape,
                     other_sms: tuple[int, ...]) -> tuple[list[float], list[float]]:
    """`corun_times` at each pair (sms[i], other_sms[i]) of SM counts, as lists of floats: what a
    split controller scores its candidate splits by. A model's class may answer it without
    numpy (`corun_times_each_fast`, returning None where it has no shortcut, looked up as
    corun_times's is); its answer must be corun_times's to the last bit."""
    fast = getattr(type(cost), "corun_times_each_fast", None)
    if fast is not None:
        found = fast(cost, shape, sms, other, other_sms)
        if found is not None:
            return found
    times, other_times = corun_times(cost, shape, np.array(sms), other, np.array(other_sms))
    return np.asarray(times, dtype=float).tolist(), np.asarray(other_times, dtype=float).tolist()


def slowdowns(cost: CostModel, shape: BatchShape, sms: int | np.ndarray, other: BatchShape,
              other_sms: int | np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Both ways of one co-run: (slowdown of `shape` beside `other`, slowdown of `other` beside
    `shape`). A model's class may answer both at once (`slowdowns_fast`, returning None where
    it has no shortcut, looked up as corun_times's is); its answer must be this one to the
    last bit."""
    fast = getattr(type(cost), "slowdowns_fast", None)
    if fast is not None:
        found = fast(cost, shape, sms, other, other_sms)
        if found is not None:
            return found
    return cost.slowdown(shape, sms, other, other_sms), cost.slowdown(other, other_sms, shape, sms)


def sms_array(sms: int | np.ndarray, num_sms: int) -> np.ndarray:
    """`sms` as an integer array, checked to lie in 0..num_sms (0 = the whole GPU)."""
    s = np.asarray(sms)
    if s.dtype.kind not in "iu":
        raise TypeError(f"SM counts must be integers, got dtype {s.dtype}")
    if s.size and (s.min() < 0 or s.max() > num_sms):
        raise ValueError(f"SM counts must be in 0..{num_sms} (0 = whole GPU)")
    return s
