"""Which BLAS library a CUDA graph captures its matrix products with, chosen by timing both.

At a few rows the best library for a layer's products depends on the shape and the GPU. On
an H200 (experiments/results/engine_probes_h200.json), cuBLASLt streamed the down projection
at 32-64 rows at 0.86-0.88 of copy bandwidth against cuBLAS's 0.78-0.83, and was 1-2% slower
at 16, 128 and 256 rows. A graph holds the kernels it was captured with, so a graph of few
rows is captured once with each library and the faster replay is kept. PyTorch's library
switch is process-wide, so only capture, which runs on one thread before any step, flips it.
"""
from __future__ import annotations

import statistics
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

DEFAULT = "default"   # whatever the process runs on (cuBLAS, unless the user switched it)
LIBRARIES = (DEFAULT, "cublaslt")
# Graphs of more tokens than this are captured with the default library only: past 128 rows
# the products turn compute-bound, cuBLAS's ground (cuBLASLt 1-2% slower at 128 and 256 on
# the H200), and each extra capture of a large graph costs tens of ms of warm-up.
TRIAL_MAX_TOKENS = 128
# Replays of each candidate, interleaved so that clock drift falls on both alike.
TRIAL_REPLAYS = 7
# A challenger must beat the default library's median by this fraction: medians of seven
# replays of one graph stray under 0.5% on the H200.
MARGIN = 0.01


@contextmanager
def library(name: str) -> Iterator[None]:
    """Matrix products launched inside run on `name` ('default': leave the switch alone)."""
    if name == DEFAULT:
        yield
        return
    backends = torch.backends.cuda
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # PyTorch calls the switch experimental on every call
        previous = backends.preferred_blas_library()
        backends.preferred_blas_library(name)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backends.preferred_blas_library(previous)


def median_replay_ms(graphs: Sequence[torch.cuda.CUDAGraph], replays: int = TRIAL_REPLAYS) -> list[float]:
    """Median GPU time of each graph's replay on the current stream, replays interleaved."""
    stream = torch.cuda.current_stream()
    for graph in graphs:
        graph.replay()   # first replays pay for cold caches and clock ramps
    marks = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(replays)] for _ in graphs]
    for r in range(replays):
        for graph, events in zip(graphs, marks):
            events[r][0].record(stream)
            graph.replay()
            events[r][1].record(stream)
    stream.synchronize()
    return [statistics.median(start.elapsed_time(end) for start, end in events) for events in marks]


def capture_fastest(capture: Callable[[], tuple[torch.cuda.CUDAGraph, torch.Tensor]],
                    tokens: int, libraries: Sequence[str] = LIBRARIES
                    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, str]:
    """`capture()` once with each library (once with the default past TRIAL_MAX_TOKENS tokens)
    and keep the graph whose replay is fastest; call on the stream the graph replays on.
    Returns (graph, its output, the library it holds)."""
    if tokens > TRIAL_MAX_TOKENS or len(libraries) < 2:
        return (*capture(), DEFAULT)
    candidates = []
    for name in libraries:
        with library(name):
            candidates.append((name, *capture()))
    times = median_replay_ms([graph for _, graph, _ in candidates])
    best = 0
    for i, ms in enumerate(times[1:], start=1):
        if ms < times[best] * (1 - MARGIN):
            best = i
    name, graph, out = candidates[best]
    return graph, out, name
