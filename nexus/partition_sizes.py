"""Which SM partitions a GPU can give a phase: one rule for the engine (real/partitions.py)
and for everything that plans or checks splits (GPUSpec.partition_sizes)."""
from __future__ import annotations


def grantable_sizes(num_sms: int, sm_min: int, sm_step: int, usable_min: int = 0) -> list[int]:
    """SM counts a green context split off the device can have, smallest first: multiples of
    `sm_step` from `sm_min`, leaving the remainder (num_sms - size, which need not be a
    multiple of the step) at least as large. `usable_min` raises that floor on both sides to
    what kernels can really run on (cuBLAS GEMMs fail on a 12-SM partition of an H100)."""
    least = max(sm_min, usable_min)
    return [s for s in range(sm_min, num_sms, sm_step) if s >= least and num_sms - s >= least]
