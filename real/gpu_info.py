"""Facts about the GPU (name, driver, clocks, memory) and a sampler of SM clock and power.

Both go through NVML (the nvidia-ml-py package). Without NVML or a GPU they report what is
missing instead of failing, so result files can always say where they were measured.
"""
from __future__ import annotations

import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml
    except Exception:  # missing package, no driver, no GPU: all mean "no facts"
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_facts(index: int = 0) -> dict[str, Any]:
    """GPU name, driver, memory and clocks, plus torch/CUDA versions; `available` False on CPU."""
    facts: dict[str, Any] = {"host": platform.node(), "python": platform.python_version()}
    try:
        import torch
        facts["torch"] = torch.__version__
        facts["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            facts["num_sms"] = props.multi_processor_count
            facts["compute_capability"] = f"{props.major}.{props.minor}"
    except ImportError:
        pass
    nv = _nvml()
    if nv is None:
        facts["available"] = False
        return facts
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        facts.update(
            available=True,
            name=_text(nv.nvmlDeviceGetName(h)),
            # Which physical GPU: step times differ by a few % between boards of one model.
            uuid=_text(nv.nvmlDeviceGetUUID(h)),
            driver=_text(nv.nvmlSystemGetDriverVersion()),
            cuda_driver_api=nv.nvmlSystemGetCudaDriverVersion_v2(),
            memory_total_bytes=mem.total,
            memory_used_bytes=mem.used,
            sm_clock_max_mhz=nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
            mem_clock_max_mhz=nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM),
            sm_clock_now_mhz=nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            power_limit_w=nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
        )
    except Exception as e:  # a field this GPU or driver does not expose
        facts["nvml_error"] = repr(e)
    return facts


@dataclass
class ClockPowerSampler:
    """Samples SM clock (MHz) and power (W) every `interval_s` on a background thread.

        with ClockPowerSampler() as s:
            run()
        s.summary()
    """
    index: int = 0
    interval_s: float = 0.05
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (perf_counter s, MHz, W)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "ClockPowerSampler":
        nv = _nvml()
        if nv is None:
            return self
        handle = nv.nvmlDeviceGetHandleByIndex(self.index)
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    mhz = nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM)
                    watts = nv.nvmlDeviceGetPowerUsage(handle) / 1000
                except Exception:
                    return
                self.samples.append((time.perf_counter(), mhz, watts))
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "ClockPowerSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clock_at(self, times: np.ndarray) -> np.ndarray:
        """The SM clock (MHz) of the sample nearest each perf_counter time; NaN where none lies
        within two intervals (the sampler was off, or NVML missing)."""
        times = np.asarray(times, dtype=float)
        if not self.samples:
            return np.full(times.shape, np.nan)
        at = np.array([s[0] for s in self.samples])
        mhz = np.array([s[1] for s in self.samples], dtype=float)
        right = np.clip(np.searchsorted(at, times), 1, len(at) - 1) if len(at) > 1 else np.zeros(times.shape, int)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(at[left] - times) <= np.abs(at[right] - times), left, right)
        return np.where(np.abs(at[nearest] - times) <= 2 * self.interval_s, mhz[nearest], np.nan)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0}
        mhz = [s[1] for s in self.samples]
        watts = [s[2] for s in self.samples]
        return {"samples": len(self.samples),
                "sm_clock_mhz": {"min": min(mhz), "median": statistics.median(mhz), "max": max(mhz)},
                "power_w": {"min": min(watts), "median": statistics.median(watts), "max": max(watts)}}
