"""SM partitions of one GPU: green-context pairs, all made at start-up.

For each prefill SM count p the policy may choose, p SMs are split off the device (side A,
for prefill) and a second green context takes the remainder (side B, for decode); the two
are disjoint. Kernels launched on a partition's stream run only on its SMs. "All SMs" is a
plain stream, which is faster than a green context holding nearly every SM.

The SM minimum and step come from the driver (the SM resource's minSmPartitionSize and
smCoscheduledAlignment, or by probing cuDevSmResourceSplitByCount on older bindings), and
the SM counts stored are the ones the driver granted. On CPU every partition has a null
stream, so the engine runs unchanged with device='cpu'.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from nexus.cost.base import FULL_GPU
from nexus.errors import UserError
from nexus.partition_sizes import grantable_sizes
from nexus.specs import GPUS, GPUSpec


@dataclass(frozen=True)
class Partition:
    """One stream and the SMs its kernels may use. `name` is unique within a Partitions."""
    name: str
    sm_count: int
    stream: Any = field(default=None, compare=False)  # torch.cuda.Stream, or None on CPU

    def use(self) -> AbstractContextManager:
        """Context in which torch launches work on this partition."""
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()


class Partitions:
    """Every partition the engine may use, made once.

    prefill(p) / decode(p): the two sides of split p (p SMs for prefill, the rest for decode).
    prefill(FULL_GPU) / decode(FULL_GPU): two plain streams on all SMs.
    """

    def __init__(self, prefill_sms: Iterable[int] = (), device: torch.device | str = "cuda",
                 cpu_gpu: GPUSpec | None = None) -> None:
        self.device = torch.device(device)
        self._pairs: dict[int, tuple[Partition, Partition]] = {}
        self._handles: list[tuple[Any, Any]] = []  # (green context, stream) to destroy on close
        sizes = sorted(set(int(p) for p in prefill_sms) - {FULL_GPU})
        if self.device.type == "cuda":
            self._driver = _Driver(self.device)
            self.num_sms, self.sm_min, self.sm_step = self._driver.sm_facts()
            plain = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device))
            for p in sizes:
                self._pairs[p] = self._green_pair(p)
        else:
            gpu = cpu_gpu or GPUS["h100-sxm"]
            self.num_sms, self.sm_min, self.sm_step = gpu.num_sms, gpu.sm_min, gpu.sm_step
            plain = (None, None)
            for p in sizes:
                self._check_size(p)
                self._pairs[p] = (Partition(f"prefill:{p}", p), Partition(f"decode:{self.num_sms - p}", self.num_sms - p))
        self._full = (Partition("all:prefill", self.num_sms, plain[0]),
                      Partition("all:decode", self.num_sms, plain[1]))

    def sizes(self) -> list[int]:
        """Prefill SM counts this GPU can split off (whether or not they were made)."""
        return grantable_sizes(self.num_sms, self.sm_min, self.sm_step)

    def made(self) -> list[int]:
        """Prefill SM counts of the pairs made at start-up."""
        return sorted(self._pairs)

    def prefill(self, sms: int) -> Partition:
        return self._side(sms, 0)

    def decode(self, sms: int) -> Partition:
        """The decode side of the split that gives prefill `sms` SMs."""
        return self._side(sms, 1)

    def all(self) -> list[Partition]:
        return [*self._full, *(part for pair in self._pairs.values() for part in pair)]

    def describe(self) -> dict:
        return {"num_sms": self.num_sms, "sm_min": self.sm_min, "sm_step": self.sm_step,
                "splits": {p: [a.sm_count, b.sm_count] for p, (a, b) in self._pairs.items()}}

    def close(self) -> None:
        """Destroy the green contexts; no partition stream may be used afterwards.

        Every tensor and CUDA graph that ran on a partition must be freed first: the caching
        allocator records an event on a tensor's streams when it frees it, and on a destroyed
        context that aborts the process. The CLIs leave this to process exit.
        """
        if self.device.type == "cuda":
            for ctx, stream in self._handles:
                self._driver.destroy(ctx, stream)
        self._handles.clear()
        self._pairs.clear()

    def _side(self, sms: int, side: int) -> Partition:
        if sms == FULL_GPU:
            return self._full[side]
        if sms not in self._pairs:
            raise UserError(f"no partition with {sms} prefill SMs was made at start-up; made: {self.made()}")
        return self._pairs[sms][side]

    def _check_size(self, p: int) -> None:
        if p not in self.sizes():
            raise UserError(f"this GPU cannot split off {p} SMs: it has {self.num_sms}, and partitions are "
                            f"multiples of {self.sm_step} from {self.sm_min} leaving at least {self.sm_min} "
                            f"(possible: {self.sizes()})")

    def _green_pair(self, p: int) -> tuple[Partition, Partition]:
        self._check_size(p)
        group, remainder = self._driver.split(p)
        parts = []
        for name, res in (("prefill", group), ("decode", remainder)):
            ctx, stream, granted = self._driver.green_stream(res)
            self._handles.append((ctx, stream))
            parts.append(Partition(f"{name}:{granted}", granted,
                                   torch.cuda.ExternalStream(int(stream), device=self.device)))
        if parts[0].sm_count != p or parts[0].sm_count + parts[1].sm_count > self.num_sms:
            raise UserError(f"asked for {p} SMs, the driver granted {parts[0].sm_count} "
                            f"(remainder {parts[1].sm_count} of {self.num_sms})")
        return parts[0], parts[1]


class _Driver:
    """The few CUDA driver calls green contexts need, with their errors checked."""

    def __init__(self, device: torch.device) -> None:
        try:
            from cuda.bindings import driver
        except ImportError:
            raise UserError("SM partitions need the cuda-bindings package (pip install cuda-bindings)") from None
        self.drv = driver
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_device(index)
        torch.empty(1, device=device)  # make the primary context current before green contexts retain it
        self._call(driver.cuInit, 0)
        self.dev = self._call(driver.cuDeviceGet, index)
        self.sm_type = driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        self.resource = self._call(driver.cuDeviceGetDevResource, self.dev, self.sm_type)

    def _call(self, fn, *args):
        err, *rest = fn(*args)
        if err != self.drv.CUresult.CUDA_SUCCESS:
            _, name = self.drv.cuGetErrorName(err)
            raise RuntimeError(f"{fn.__name__} failed: {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else rest

    def sm_facts(self) -> tuple[int, int, int]:
        """(SMs on the device, smallest partition, partition step)."""
        sm = self.resource.sm
        total = sm.smCount
        smallest = getattr(sm, "minSmPartitionSize", 0)
        step = getattr(sm, "smCoscheduledAlignment", 0)
        if not smallest or not step:
            # Older bindings lack the fields: the smallest grant, and the next one up, tell both.
            smallest = self._granted(1)
            step = self._granted(smallest + 1) - smallest
        return total, smallest, step

    def _granted(self, min_count: int) -> int:
        groups, n, _ = self._call(self.drv.cuDevSmResourceSplitByCount, 1, self.resource, 0, min_count)
        return groups[0].sm.smCount if n else 0

    def split(self, p: int):
        groups, n, remainder = self._call(self.drv.cuDevSmResourceSplitByCount, 1, self.resource, 0, p)
        if n != 1:
            raise UserError(f"the driver could not split {p} SMs off the device")
        return groups[0], remainder

    def green_stream(self, resource) -> tuple[Any, Any, int]:
        d = self.drv
        desc = self._call(d.cuDevResourceGenerateDesc, [resource], 1)
        ctx = self._call(d.cuGreenCtxCreate, desc, self.dev, int(d.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
        stream = self._call(d.cuGreenCtxStreamCreate, ctx, int(d.CUstream_flags.CU_STREAM_NON_BLOCKING), 0)
        granted = self._call(d.cuGreenCtxGetDevResource, ctx, self.sm_type).sm.smCount
        return ctx, stream, granted

    def destroy(self, ctx, stream) -> None:
        self._call(self.drv.cuStreamDestroy, stream)
        self._call(self.drv.cuGreenCtxDestroy, ctx)
