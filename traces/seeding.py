"""Independent random streams derived from one user seed.

Each purpose gets its own stream, so changing, say, the arrival rate leaves
the sampled request lengths untouched, and vice versa.
"""
from __future__ import annotations

import numpy as np

from nexus.errors import UserError

_STREAMS = {"arrivals": 1, "sharegpt": 2, "lengths": 3, "mix": 4}


def rng_for(seed: int, stream: str) -> np.random.Generator:
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([_STREAMS[stream], seed])
