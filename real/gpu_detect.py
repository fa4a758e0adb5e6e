"""Which GPU is this? Match the device to a preset, or describe it from device queries.

`nexus-real` plans with the GPU's spec and calibration: an H200 run as `h100-sxm` gave the
Nexus controller the H100's step times, and only the summary's footer said so. So the
device decides, `--gpu` may only confirm it, and a GPU without a preset gets a spec built
from what the driver reports, with a warning that its cost model is analytical.
"""
from __future__ import annotations

import re
from typing import Callable

from nexus.errors import UserError
from nexus.specs import GPUS, GPUSpec, resolve_gpu

# Dense bf16 tensor FLOP per SM per clock, by compute capability (from the datasheets'
# peak rates over SMs x boost clock: H100 SXM 989 TFLOP/s = 132 x 1.83 GHz x 4096).
_FLOP_PER_SM_CLOCK = {"9.0": 4096, "8.0": 2048, "8.6": 1024, "8.9": 1024, "10.0": 8192}
# Green-context SM granularity (cuDevSmResourceSplitByCount): 8 on Hopper and later, 2 before.
_SM_STEP = {"9.0": (8, 8), "10.0": (8, 8)}


def describe_device(index: int = 0) -> dict:
    """Name, SMs, memory and clocks of CUDA device `index` (torch, plus NVML where present)."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but torch sees no CUDA GPU (use --device cpu)")
    props = torch.cuda.get_device_properties(index)
    facts = {"name": props.name, "num_sms": props.multi_processor_count,
             "memory_bytes": props.total_memory, "compute_capability": f"{props.major}.{props.minor}"}
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        facts["max_sm_clock_hz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6
        facts["max_mem_clock_hz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM) * 1e6
        facts["memory_bus_bits"] = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
    except Exception:   # no NVML: the spec falls back to nominal clocks below
        pass
    return facts


def match_preset(facts: dict) -> GPUSpec | None:
    """The preset with this SM count and memory size (within 10%), named like the device."""
    name = facts["name"].lower()
    for key, spec in GPUS.items():
        family = key.split("-")[0]
        same_memory = abs(spec.memory_bytes - facts["memory_bytes"]) <= 0.1 * spec.memory_bytes
        if spec.num_sms == facts["num_sms"] and same_memory and family in name:
            return spec
    return None


def spec_from_device(facts: dict) -> GPUSpec:
    cc = facts["compute_capability"]
    step, least = _SM_STEP.get(cc, (2, 4))
    clock = facts.get("max_sm_clock_hz", 1.5e9)
    bandwidth = (2 * facts["max_mem_clock_hz"] * facts["memory_bus_bits"] / 8
                 if "max_mem_clock_hz" in facts and "memory_bus_bits" in facts else 1e12)
    name = re.sub(r"[^a-z0-9]+", "-", facts["name"].lower()).strip("-")
    return GPUSpec(name, facts["num_sms"], step, least,
                   facts["num_sms"] * clock * _FLOP_PER_SM_CLOCK.get(cc, 1024), bandwidth,
                   facts["memory_bytes"], cc, "device queries (no preset)",
                   usable_min_sms=16 if step == 8 else 0)


def detect_gpu(requested: str | None, device: str, warn: Callable[[str], None] = print,
               facts: dict | None = None) -> GPUSpec:
    """The spec to plan with: the device's preset, checked against `requested` if given.

    On the CPU there is no device to ask: `requested` (default h100-sxm) only sizes the cost model.
    """
    if device != "cuda":
        return resolve_gpu(requested or "h100-sxm")
    facts = facts or describe_device()
    found = match_preset(facts)
    if requested is not None:
        spec = resolve_gpu(requested)
        if spec.num_sms != facts["num_sms"] or (found is not None and found.name != spec.name
                                                 and requested in GPUS):
            raise UserError(f"--gpu {requested} does not match this device: {facts['name']} with "
                            f"{facts['num_sms']} SMs and {facts['memory_bytes'] / 2**30:.0f} GiB"
                            + (f" (preset {found.name})" if found else ""))
        return spec
    if found is not None:
        return found
    spec = spec_from_device(facts)
    warn(f"warning: no preset for {facts['name']}; using a spec from device queries ({spec.name}, "
         f"{spec.num_sms} SMs) and the analytical cost model")
    return spec
