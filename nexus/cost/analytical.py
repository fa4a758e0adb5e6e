"""A roofline cost model from datasheet numbers: no measurements needed.

Each operator of an iteration (see roofline.py) takes max(flops / compute rate, bytes /
bandwidth) on its partition. The compute rate grows linearly with the SM share; the HBM
bandwidth a partition can draw saturates well below the whole chip, which is why decode
stops gaining from SMs at about half the chip while prefill keeps gaining. A green context
costs a few percent against a plain stream on the whole GPU (FULL_GPU).

Co-running phases share HBM bandwidth by demand, and *both* slow down: each one's
memory-bound time is stretched when the pair wants more than the chip has, and its
compute-bound time pays a smaller interference term (L2, scheduling). This differs from
the paper's model, where only decode is stretched; on an H100 prefill slowed down too.

The defaults are plausible Hopper-class figures, not measurements; a calibrated profile
should be preferred where one exists.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from nexus.cost.base import FULL_GPU, BatchShape, sms_array
from nexus.cost.roofline import IterationWork, Work
from nexus.errors import UserError
from nexus.specs import GPUSpec, ModelSpec

# Decode shapes rarely repeat (KV grows each step), so keep the memo small and cheap to drop.
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class AnalyticalParams:
    """Efficiencies, saturation and contention coefficients of the analytical model.

    matmul_efficiency: fraction of datasheet tensor FLOP/s a large bf16 GEMM reaches.
    attention_efficiency: the same for attention kernels (FlashAttention-style).
    bandwidth_efficiency: fraction of datasheet HBM bandwidth a streaming kernel reaches.
    bw_knee_fraction: SM share at which a partition's drawable bandwidth saturates.
    bw_knee_sharpness: how abruptly it saturates (p of a p-norm soft minimum; larger = sharper).
    green_context_penalty: a green context is this much slower than a plain stream on all SMs.
    iteration_overhead_s: fixed cost per iteration (launches, scheduling, sampling on the host).
    layer_overhead_s: per-layer kernel ramp-up and tail not captured by the roofline.
    compute_interference: stretch of compute-bound time when the co-runner uses all the
        chip's bandwidth (scaled by the fraction it does use).
    memory_interference: stretch of memory-bound time from sharing the memory system even
        below saturation (also scaled by the co-runner's bandwidth use).
    """
    matmul_efficiency: float = 0.70
    attention_efficiency: float = 0.50
    bandwidth_efficiency: float = 0.85
    bw_knee_fraction: float = 0.40
    bw_knee_sharpness: float = 8.0
    green_context_penalty: float = 0.04
    iteration_overhead_s: float = 250e-6
    layer_overhead_s: float = 8e-6
    compute_interference: float = 0.15
    memory_interference: float = 0.05

    def __post_init__(self) -> None:
        for name in ("matmul_efficiency", "attention_efficiency", "bandwidth_efficiency",
                     "bw_knee_fraction"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise UserError(f"AnalyticalParams.{name} must be in (0, 1], got {v!r}")
        if not self.bw_knee_sharpness > 0.0:
            raise UserError(f"AnalyticalParams.bw_knee_sharpness must be > 0, "
                            f"got {self.bw_knee_sharpness!r}")
        for name in ("green_context_penalty", "iteration_overhead_s", "layer_overhead_s",
                     "compute_interference", "memory_interference"):
            v = getattr(self, name)
            if not v >= 0.0:
                raise UserError(f"AnalyticalParams.{name} must be >= 0, got {v!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "AnalyticalParams":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"unknown AnalyticalParams field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


class AnalyticalCost:
    """Roofline latency per operator, SM scaling with bandwidth saturation, two-way contention.

    `sms` arguments take an int or an integer numpy array (FULL_GPU = 0 for a plain stream);
    array arguments broadcast and return arrays.
    """

    name = "analytical"

    def __init__(self, model: ModelSpec, gpu: GPUSpec, params: AnalyticalParams | None = None):
        self.model = model
        self.gpu = gpu
        self.params = params or AnalyticalParams()
        p = self.params
        self._work_of = IterationWork(model, p.matmul_efficiency, p.attention_efficiency)
        self._work_cache: dict[BatchShape, Work] = {}
        self._overhead = p.iteration_overhead_s + model.num_layers * p.layer_overhead_s
        self._chip_bw = gpu.hbm_bandwidth * p.bandwidth_efficiency

        table = np.arange(gpu.num_sms + 1)
        inv_f, inv_b = self._inverse_rates(table)
        # Tables indexed by SM count serve scalar calls without any numpy overhead.
        self._inv_f_arr, self._inv_b_arr = inv_f, inv_b
        self._inv_f = inv_f.tolist()
        self._inv_b = inv_b.tolist()
        self._bw = (1.0 / inv_b).tolist()

    # ---- rates -------------------------------------------------------------------------

    def _inverse_rates(self, sms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Seconds per effective FLOP and per byte on `sms` SMs (0 = plain stream, all SMs)."""
        p, gpu = self.params, self.gpu
        green = sms != FULL_GPU
        share = np.where(green, sms / gpu.num_sms, 1.0)
        # Drawable bandwidth: linear in SMs below the knee, flat above, joined by a soft
        # minimum, normalised so that the whole chip gets exactly the full bandwidth.
        k, sharp = p.bw_knee_fraction, p.bw_knee_sharpness

        def soft_min_one(y: np.ndarray) -> np.ndarray:
            return (y ** -sharp + 1.0) ** (-1.0 / sharp)

        bw_share = soft_min_one(share / k) / soft_min_one(np.float64(1.0 / k))
        slow = np.where(green, 1.0 + p.green_context_penalty, 1.0)
        inv_f = slow / (gpu.peak_flops * share)
        inv_b = slow / (self._chip_bw * bw_share)
        return inv_f, inv_b

    # ---- work and its split into compute- and memory-bound time ------------------------

    def _work(self, shape: BatchShape) -> Work:
        work = self._work_cache.get(shape)
        if work is None:
            if len(self._work_cache) >= _CACHE_LIMIT:
                self._work_cache.clear()
            work = self._work_cache[shape] = self._work_of(shape)
        return work

    def _split(self, work: Work, s: int) -> tuple[float, float]:
        """(compute-bound seconds, memory-bound seconds) of the iteration alone on s SMs."""
        inv_f = self._inv_f[s]
        inv_b = self._inv_b[s]
        tc = tm = 0.0
        for f, b in work.ops:
            a = f * inv_f
            m = b * inv_b
            if a > m:
                tc += a
            else:
                tm += m
        return tc, tm

    def _split_vec(self, work: Work, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flops, nbytes = work.arrays()
        lead = (slice(None),) + (None,) * s.ndim
        a = flops[lead] * self._inv_f_arr[s]
        m = nbytes[lead] * self._inv_b_arr[s]
        compute_bound = a > m
        return np.where(compute_bound, a, 0.0).sum(0), np.where(compute_bound, 0.0, m).sum(0)

    def _sms_array(self, sms: int | np.ndarray) -> np.ndarray:
        return sms_array(sms, self.gpu.num_sms)

    def _check_sms(self, s: int) -> int:
        if not 0 <= s <= self.gpu.num_sms:
            raise ValueError(f"SM count {s} outside 0..{self.gpu.num_sms} (0 = whole GPU)")
        return int(s)

    # ---- CostModel ---------------------------------------------------------------------

    def step_overhead(self, shape: BatchShape) -> float:
        return 0.0   # host time between iterations is folded into iteration_overhead_s here

    def solo_time(self, shape: BatchShape, sms: int | np.ndarray) -> float | np.ndarray:
        """Seconds for the iteration with the GPU otherwise idle."""
        work = self._work(shape)
        if isinstance(sms, (int, np.integer)):
            if work.is_empty:
                return 0.0
            tc, tm = self._split(work, self._check_sms(sms))
            return tc + tm + self._overhead
        s = self._sms_array(sms)
        if work.is_empty:
            return np.zeros(s.shape)
        tc, tm = self._split_vec(work, s)
        return tc + tm + self._overhead

    def memory_demand(self, shape: BatchShape, sms: int | np.ndarray) -> float | np.ndarray:
        """Average HBM bytes/s the iteration draws when running alone on `sms` SMs."""
        work = self._work(shape)
        if work.is_empty:
            return 0.0 if isinstance(sms, (int, np.integer)) else np.zeros(np.shape(sms))
        return work.total_bytes / self.solo_time(shape, sms)

    def slowdown(self, shape: BatchShape, sms: int | np.ndarray,
                 other: BatchShape, other_sms: int | np.ndarray) -> float | np.ndarray:
        """Factor >= 1 by which `shape` on `sms` is stretched while `other` runs on `other_sms`.

        The co-runner is summarised by its average bandwidth demand D (bytes over solo time,
        so its duty cycle between memory- and compute-bound operators is built in). While
        `shape` is memory-bound it draws its partition's bandwidth d; if d + D exceeds the
        chip's, bandwidth is shared in proportion to demand and that time stretches by
        (d + D) / chip. Compute-bound time stretches by compute_interference * D / chip.
        The result is non-decreasing in D and exactly 1 when `other` is empty.
        """
        work, rival = self._work(shape), self._work(other)
        p = self.params
        scalar = isinstance(sms, (int, np.integer)) and isinstance(other_sms, (int, np.integer))
        if work.is_empty or rival.is_empty:
            return 1.0 if scalar else np.ones(np.broadcast_shapes(np.shape(sms),
                                                                  np.shape(other_sms)))
        chip = self._chip_bw
        if scalar:
            s, so = self._check_sms(sms), self._check_sms(other_sms)
            tc, tm = self._split(work, s)
            rc, rm = self._split(rival, so)
            use = rival.total_bytes / (rc + rm + self._overhead) / chip
            mem = max(1.0 + p.memory_interference * use, self._bw[s] / chip + use)
            comp = 1.0 + p.compute_interference * use
            alone = tc + tm + self._overhead
            return (tc * comp + tm * mem + self._overhead) / alone
        s, so = self._sms_array(sms), self._sms_array(other_sms)
        tc, tm = self._split_vec(work, s)
        rc, rm = self._split_vec(rival, so)
        use = rival.total_bytes / (rc + rm + self._overhead) / chip
        own = 1.0 / (self._inv_b_arr[s] * chip)
        mem = np.maximum(1.0 + p.memory_interference * use, own + use)
        comp = 1.0 + p.compute_interference * use
        return (tc * comp + tm * mem + self._overhead) / (tc + tm + self._overhead)

    def operator_times(self, shape: BatchShape, sms: int) -> dict[str, float]:
        """Seconds per operator alone on `sms` SMs, plus the fixed overhead: for inspection."""
        work = self._work(shape)
        s = self._check_sms(sms)
        out = {name: max(f * self._inv_f[s], b * self._inv_b[s])
               for name, (f, b) in zip(work.names, work.ops)}
        if not work.is_empty:
            out["overhead"] = self._overhead
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": self.model.name,
            "gpu": self.gpu.name,
            "params": asdict(self.params),
            "source": "per-operator roofline from the model's shapes and the GPU datasheet; "
                      "efficiencies, bandwidth knee and contention coefficients are defaults, "
                      "not measurements",
        }
