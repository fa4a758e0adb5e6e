"""What the paper experiments run on: workloads, GPU setups, policy variants and SLOs.

Workloads are built with the project's own trace generator (the same bytes as the
`nexus-trace` command recorded next to each), then re-timed with Poisson arrivals at each
probed rate. One arrival seed is used for every rate, so the arrival times at rate r are the
times at rate 1 divided by r: rates differ only in how fast the same requests come.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nexus.cost import FULL_GPU, BatchShape, default_calibration, load_cost_model
from nexus.kv import BlockPool
from nexus.policy import Policy, build_policies, make_policy
from nexus.specs import GPUS, resolve_gpu, resolve_model
from traces import TraceEntry, read_trace
from traces.cli import main as nexus_trace

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama-3.1-8b"


@dataclass(frozen=True)
class Workload:
    name: str
    requests: int
    seed: int = 0

    def command(self) -> str:
        """The nexus-trace command that makes these requests (arrivals are redrawn per rate)."""
        if self.name == "sharegpt":
            return f"nexus-trace sharegpt -n {self.requests} --rate 20 --seed {self.seed} -o sharegpt.jsonl"
        return (f"nexus-trace synthetic --preset {self.name} -n {self.requests} --rate 1 "
                f"--seed {self.seed} -o {self.name}.jsonl")


# Sizes keep the whole study to a few minutes on two cores: a point is one simulated run of
# the whole trace, and past saturation the queue (so TTFT) grows with the trace's length.
WORKLOADS = {
    "sharegpt": Workload("sharegpt", 1000),
    "long-doc": Workload("long-doc", 600),
    "mixed": Workload("mixed", 1000),
}


@dataclass(frozen=True)
class GPUSetup:
    """A GPU and the cost model the simulator uses for it; `split` is the static baseline's."""
    gpu: str
    calibration: str | None
    split: tuple[int, int]
    note: str = ""


def gpu_setup(gpu: str) -> GPUSetup:
    """Any GPU preset: its shipped calibration if one exists, else the datasheet roofline; the
    static baseline on the GPU's half split."""
    spec = GPUS[gpu]
    split = spec.half_split()
    if default_calibration(resolve_model(MODEL), spec) is not None:
        return GPUSetup(gpu, None, split, f"shipped measured calibration ({gpu} x {MODEL})")
    note = f"analytical roofline from the {gpu} datasheet (no calibration exists)"
    return GPUSetup(gpu, "analytical", split, note + (": the paper's GPU" if gpu == "l20" else ""))


GPU_SETUPS = {g: gpu_setup(g) for g in GPUS}
DEFAULT_GPUS = ["h100-sxm", "l20"]

POLICIES = ["chunked", "prefill-first", "static", "nexus", "disagg"]

# The ablation of the paper: each Nexus ingredient alone on top of a static split with FCFS.
ABLATION = {
    "static+fcfs": {"dynamic": False, "spf": False},
    "spf-only": {"dynamic": False, "spf": True},
    "dynamic-only": {"dynamic": True, "spf": False},
    "nexus": {"dynamic": True, "spf": True},
}
# Not the paper's ablation: how much the decode bound beta (1.1 in the paper) decides.
BETA_SENSITIVITY = {f"nexus beta={b:g}": {"beta": b} for b in (1.3, 1.5, 2.0)}


@dataclass(frozen=True)
class Variant:
    """One line of a plot: a policy with its parameters."""
    label: str
    policy: str
    params: dict = field(default_factory=dict)

    def build(self) -> Policy:
        return make_policy(self.policy, **self.params)

    @property
    def gpus(self) -> int:
        """GPUs the policy occupies, from its own topology (disaggregation takes two)."""
        return self.build().topology(BlockPool(1)).gpus


def variant(name: str, setup: GPUSetup) -> Variant:
    """A sweep policy on `setup`, with the setup's split where it takes one (as --split gives it)."""
    policy = build_policies([name], {}, setup.split)[0]
    return Variant(name, name, {k: v for k, v in vars(policy).items()
                                if not k.startswith("_") and k in ("prefill_sms", "decode_sms", "static_split")})


def ablation_variant(name: str, setup: GPUSetup) -> Variant:
    params = ABLATION.get(name) or BETA_SENSITIVITY[name]
    return Variant(name, "nexus", {**params, "static_split": setup.split})


def build_trace(workload: Workload, requests: int | None = None) -> list[TraceEntry]:
    """The workload's requests, made by the project's trace generator; `requests` trims it."""
    n = workload.requests if requests is None else requests
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.jsonl"
        args = workload.command().split()[1:]
        args[args.index("-n") + 1] = str(max(n, 1))
        args[args.index("-o") + 1] = str(path)
        with contextlib.redirect_stderr(io.StringIO()):   # the generator's progress notes
            nexus_trace(args)
        return read_trace(path)[:n]


def trace_stats(entries: list[TraceEntry]) -> dict:
    p = np.array([e.prompt_tokens for e in entries])
    o = np.array([e.output_tokens for e in entries])
    return {"requests": len(entries),
            "prompt_tokens": {"mean": float(p.mean()), "p50": float(np.median(p)),
                              "p95": float(np.percentile(p, 95))},
            "output_tokens": {"mean": float(o.mean()), "p50": float(np.median(o)),
                              "p95": float(np.percentile(o, 95))}}


# SLOs are multiples of what one request costs on an idle, whole GPU, so they mean the same
# thing on a fast and a slow GPU and for short and long prompts.
TTFT_SCALE = 10.0
TBT_SCALE = 5.0


def slo_rule(ttft_scale: float = TTFT_SCALE, tbt_scale: float = TBT_SCALE) -> str:
    return (f"P95 TTFT <= {ttft_scale:g} x the solo whole-GPU prefill time of the workload's P95 "
            f"prompt, and P95 TBT (over all tokens) <= {tbt_scale:g} x the solo whole-GPU decode "
            f"step of one request at the workload's mean context (prompt + output/2); both "
            f"rounded to 2 significant digits")


def _round2(x: float) -> float:
    return float(f"{x:.2g}")


def slos(entries: list[TraceEntry], setup: GPUSetup, ttft_scale: float = TTFT_SCALE,
         tbt_scale: float = TBT_SCALE) -> dict:
    """The workload's latency bounds on this GPU, with the solo times they are scaled from."""
    cost = load_cost_model(resolve_model(MODEL), resolve_gpu(setup.gpu), setup.calibration)
    stats = trace_stats(entries)
    p95_prompt = int(stats["prompt_tokens"]["p95"])
    context = int(stats["prompt_tokens"]["mean"] + stats["output_tokens"]["mean"] / 2)
    prefill_s = float(cost.solo_time(BatchShape(((p95_prompt, 0),)), FULL_GPU))
    decode_s = float(cost.solo_time(BatchShape((), 1, context), FULL_GPU))
    return {"ttft_p95_s": _round2(ttft_scale * prefill_s), "tbt_p95_s": _round2(tbt_scale * decode_s),
            "solo_prefill_p95_prompt_s": prefill_s, "p95_prompt_tokens": p95_prompt,
            "solo_decode_step_s": decode_s, "mean_context_tokens": context,
            "ttft_scale": ttft_scale, "tbt_scale": tbt_scale, "rule": slo_rule(ttft_scale, tbt_scale)}
