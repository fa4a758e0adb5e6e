"""The real engine: a Llama-family model in plain PyTorch on one GPU.

`real.run(trace, policy=...)` is the Python API (as `sim.run`); `nexus-real` the CLI.
Pieces: `model` (decoder), `weights` (Hugging Face checkpoints), `kv_cache` (one paged KV
pool for both phases), `attention` (Triton kernels on CUDA, a PyTorch reference on CPU),
`partitions` (green-context SM splits), `graphs` (decode CUDA graphs per partition),
`model_runner` (one step of a packed batch), `engine` (executes the shared iteration
contract on partitions), `bench` (a model made ready once, runs traces) and `gpu_info`.

Importing this package imports no torch; its modules (and `real.run`'s first call) do.
"""
from __future__ import annotations

from typing import Any


def run(*args: Any, **kwargs: Any):
    """`real.api.run`: serve a trace under a policy on this machine's GPU; returns a Result."""
    from real.api import run as run_engine
    return run_engine(*args, **kwargs)


