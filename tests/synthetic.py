"""Small Poisson traces with uniform lengths, for fast simulator tests."""
import numpy as np

from traces import TraceEntry


def make_trace(n: int, rate: float, prompt: tuple[int, int], output: tuple[int, int],
               seed: int = 0) -> list[TraceEntry]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    times -= times[0]
    return [TraceEntry(f"r{i}", float(t), int(rng.integers(*prompt)), int(rng.integers(*output)))
            for i, t in enumerate(times)]
