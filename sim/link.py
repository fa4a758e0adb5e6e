"""A link between two GPUs as a shared resource: concurrent transfers share its bandwidth.

A transfer first waits the link's latency (setup and propagation, not shared), then its
bytes flow. Flows share the bandwidth fairly: with n flows active each moves at
bandwidth / n. When a flow starts or ends, every flow's progress is brought up to date and
one timer is set for the next finish, as `sim.gpu.FluidGPU` does for iterations. Two
transfers of b bytes that start together therefore end together, at
latency + 2b / bandwidth, and the link never idles while a flow has bytes left.

Link file (JSON), as `experiments/bench_kv_transfer.py` writes it; only `link` is read:

    {"link": {"latency_s": 2.0e-05, "bandwidth_bytes_per_s": 3.9e+11}, ...}

`latency_s` >= 0 and `bandwidth_bytes_per_s` > 0, both finite; they are the intercept and
the inverse slope of a line fitted to measured one-way transfer times against bytes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import simpy

from nexus.errors import UserError

_EPS = 1e-9   # of a flow's size: what float rounding can leave over


@dataclass(frozen=True)
class LinkSpec:
    latency_s: float
    bandwidth_bytes_per_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise UserError(f"link latency_s must be a finite number >= 0, got {self.latency_s!r}")
        if not (math.isfinite(self.bandwidth_bytes_per_s) and self.bandwidth_bytes_per_s > 0):
            raise UserError(f"link bandwidth_bytes_per_s must be a finite number > 0, "
                            f"got {self.bandwidth_bytes_per_s!r}")

    def alone_s(self, nbytes: float) -> float:
        """Seconds one transfer takes with the link to itself."""
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s

    @classmethod
    def load(cls, path: str | Path) -> "LinkSpec":
        """Read the `link` section of a link file; a bad file is a UserError naming it."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such link file") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        link = data.get("link") if isinstance(data, dict) else None
        if not isinstance(link, dict):
            raise UserError(f"{path}: no 'link' object")
        values = {}
        for key in ("latency_s", "bandwidth_bytes_per_s"):
            value = link.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{path}: link.{key} must be a number, got {value!r}")
            values[key] = float(value)
        try:
            return cls(**values)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None


@dataclass(eq=False)
class _Flow:
    size: float
    remaining: float
    done: simpy.Event


class Link:
    """One direction of a link; `transfer(nbytes)` is a simpy process that ends on arrival."""

    def __init__(self, env: simpy.Environment, spec: LinkSpec):
        self.env, self.spec = env, spec
        self.flows: list[_Flow] = []
        self.transfers = 0
        self.bytes_moved = 0.0
        self._synced_at = 0.0
        self._generation = 0

    def transfer(self, nbytes: float) -> simpy.Process:
        if nbytes < 0:
            raise ValueError(f"a transfer cannot move {nbytes} bytes")
        return self.env.process(self._transfer(nbytes))

    def _transfer(self, nbytes: float):
        self.transfers += 1
        if self.spec.latency_s:
            yield self.env.timeout(self.spec.latency_s)
        if nbytes > 0:
            flow = _Flow(float(nbytes), float(nbytes), self.env.event())
            self._sync()
            self.flows.append(flow)
            self._retime()
            yield flow.done
        self.bytes_moved += nbytes

    def _rate(self) -> float:
        return self.spec.bandwidth_bytes_per_s / len(self.flows)

    def _sync(self) -> None:
        elapsed = self.env.now - self._synced_at
        if elapsed > 0 and self.flows:
            moved = elapsed * self._rate()
            for flow in self.flows:
                flow.remaining -= moved
        self._synced_at = self.env.now

    def _retime(self) -> None:
        self._generation += 1
        if self.flows:
            delay = max(0.0, min(f.remaining for f in self.flows) / self._rate())
            generation = self._generation
            self.env.timeout(delay).callbacks.append(lambda _ev: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._sync()
        nearest = min(f.remaining for f in self.flows)
        # Flows within rounding of the nearest finish together (equal transfers started together).
        finished = [f for f in self.flows if f.remaining <= max(nearest, 0.0) + _EPS * f.size]
        for flow in finished:
            self.flows.remove(flow)
        self._retime()
        for flow in finished:
            flow.done.succeed()
