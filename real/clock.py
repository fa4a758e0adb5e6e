"""The engine's clock: seconds since a run's origin, read where the work happens.

On a GPU a step's start and end are CUDA events recorded on its partition's stream, so they
time the kernels, not the host's launch; on the CPU they are host clock readings.
"""
from __future__ import annotations

import time

import torch


class Clock:
    """Seconds since the origin, read from CUDA events on a GPU, from the host clock on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.host_origin = time.perf_counter()
        if cuda:
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record()
            self.origin.synchronize()

    def host_now(self) -> float:
        return time.perf_counter() - self.host_origin

    def mark(self, stream) -> object:
        if not self.cuda:
            return self.host_now()
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def seconds(self, mark: object) -> float:
        if not self.cuda:
            return float(mark)
        mark.synchronize()
        return self.origin.elapsed_time(mark) / 1e3
