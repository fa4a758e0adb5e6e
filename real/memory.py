"""Will the model fit? Checked before anything is allocated, so that a model too large for
the machine is a one-line error instead of the kernel's OOM killer or a CUDA OOM traceback."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nexus.errors import UserError
from nexus.specs import ModelSpec
from real.kv_cache import activation_reserve_bytes, block_bytes

GB = 1e9


def host_available_bytes() -> int | None:
    """Memory this process may still take: the kernel's MemAvailable, or the cgroup's limit
    left (containers), whichever is less; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def check_memory(spec: ModelSpec, device: torch.device, dtype: torch.dtype, num_blocks: int,
                 max_batch_tokens: int, device_free_bytes: int, utilization: float) -> None:
    """Raise UserError unless the weights, `num_blocks` KV blocks and the activations of a
    `max_batch_tokens` step fit in what the device (GPU, or host for CPU) has free."""
    item = torch.empty((), dtype=dtype).element_size()
    weights = spec.num_params * item
    kv = num_blocks * block_bytes(spec, dtype_bytes=item)
    activations = activation_reserve_bytes(spec, max_batch_tokens)
    need = weights + kv + activations
    if device.type == "cuda":
        have, where = int(device_free_bytes * utilization), f"is free on the GPU (x --gpu-memory-utilization {utilization})"
    else:
        have, where = host_available_bytes(), "of host memory is available"
        if have is None:
            return
    if need > have:
        raise UserError(f"{spec.name} needs {need / GB:.1f} GB ({weights / GB:.1f} GB of {str(dtype).removeprefix('torch.')} "
                        f"weights, {kv / GB:.1f} GB of KV cache, {activations / GB:.1f} GB for activations) but "
                        f"only {have / GB:.1f} GB {where}")
