"""Whether a tensor's work goes to Triton kernels or to the plain PyTorch path.

CUDA tensors use Triton. With TRITON_INTERPRET=1 set (before triton is imported) the
kernels also run, slowly, on CPU tensors through Triton's interpreter, so they can be
debugged without a GPU.
"""
from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAVE_TRITON = True
except ImportError:  # CPU-only installs
    triton = None
    tl = None
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(t: torch.Tensor) -> bool:
    return HAVE_TRITON and (t.is_cuda or INTERPRET)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
