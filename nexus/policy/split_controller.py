"""The Nexus split controller: pick prefill/decode SMs from the cost model.

Below the KV threshold it is prefill-first: the fastest prefill whose co-running decode
step stays within beta of decode alone on the whole GPU. Above it, decode-first: the
fastest decode whose prefill stays within alpha of prefill alone. The paper searches
greedily in 1% steps; partitions only come in the GPU's SM step, so we score every
grantable split, which finds the same optimum.
"""
from __future__ import annotations

import math

from nexus.cost.base import FULL_GPU, BatchShape, CostModel, corun_times_each
from nexus.state import Split


def _bucket(x: float) -> int:
    """Quarter-octave buckets: shapes this close get the same decision."""
    return -1 if x <= 0 else int(4 * math.log2(x))


class SplitController:
    def __init__(self, cost: CostModel, alpha: float = 1.3, beta: float = 1.1,
                 kv_threshold: float = 0.7, hysteresis: float = 0.05):
        self.cost = cost
        self.alpha, self.beta = alpha, beta
        self.kv_threshold, self.hysteresis = kv_threshold, hysteresis
        gpu = cost.gpu
        # Tuples and plain floats, not arrays: a dozen candidates are too few for numpy, whose
        # per-call cost made a search 370k instructions (callgrind, fresh prompt shapes on the
        # H100); this one takes 160k.
        self.prefill_sms = tuple(gpu.partition_sizes())
        self.decode_sms = tuple(gpu.num_sms - p for p in self.prefill_sms)
        self.current: Split | None = None
        self._splits = [Split(p, d) for p, d in zip(self.prefill_sms, self.decode_sms)]
        self._index = {p: i for i, p in enumerate(self.prefill_sms)}
        self._memo: dict[tuple, int] = {}

    def choose(self, prefill: BatchShape, decode: BatchShape, kv_usage: float) -> Split:
        decode_first = kv_usage >= self.kv_threshold
        chunks = prefill.prefill_chunks   # one, in most steps: no generator
        cross_pairs = chunks[0][0] * chunks[0][1] if len(chunks) == 1 else sum([n * p for n, p in chunks])
        key = (decode_first, _bucket(prefill.prefill_tokens), _bucket(cross_pairs),
               _bucket(decode.decode_seqs), _bucket(decode.decode_kv_tokens),
               None if self.current is None else self.current.prefill_sms)
        index = self._memo.get(key)
        if index is None:
            index = self._memo[key] = self._search(prefill, decode, decode_first)
        self.current = self._splits[index]
        return self.current

    def _search(self, prefill: BatchShape, decode: BatchShape, decode_first: bool) -> int:
        cost = self.cost
        t_prefill, t_decode = corun_times_each(cost, prefill, self.prefill_sms, decode, self.decode_sms)
        prefill_full = cost.solo_time(prefill, FULL_GPU)
        decode_full = cost.solo_time(decode, FULL_GPU)
        if decode_first:
            limit = self.alpha * prefill_full
            objective, bound = [t / decode_full for t in t_decode], [t / limit for t in t_prefill]
        else:
            limit = self.beta * decode_full
            objective, bound = [t / prefill_full for t in t_prefill], [t / limit for t in t_decode]
        feasible = [b <= 1.0 for b in bound]
        if not any(feasible):
            # No split keeps the protected phase in bounds (on the measured H100 any co-running
            # chunk stretches decode by ~10%, so beta = 1.1 often cannot be met). Starving the
            # other phase would serve neither, so take the split whose worse-stretched phase
            # is stretched least. Within this regime the choice moves smoothly with the bound;
            # at the edge of feasibility it can jump (see tests/test_split_controller.py).
            worse = [o if o >= b else b for o, b in zip(objective, bound)]   # as np.maximum picks
            return worse.index(min(worse))   # the first of equals, as np.argmin
        best = min([i for i, ok in enumerate(feasible) if ok], key=objective.__getitem__)
        if self.current is not None:
            # Hysteresis: keep a feasible current split unless the best beats it clearly.
            here = self._index.get(self.current.prefill_sms)
            if here is not None and feasible[here] and \
                    objective[here] <= (1 + self.hysteresis) * objective[best]:
                return here
        return best
