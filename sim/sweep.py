"""Latency against load: every policy at every load of a list, as JSON and a figure.

Points run side by side on an executor (sim.executors), one probe each (sim.probe).
"""
from __future__ import annotations

import math

from concurrent.futures import Executor
from pathlib import Path
from typing import Sequence

from sim.max_rate import Variant
from sim.probe import SLO, Load, Setup, probe
from traces import TraceEntry
from traces.stats import summarize as trace_summary


def parse_loads(text: str, flag: str = "--sweep") -> list[float]:
    from nexus.errors import UserError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated positive numbers, got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise UserError(f"{flag} takes comma-separated positive numbers, got {text!r}")
    return sorted(set(values))


def sweep(entries: Sequence[TraceEntry], variants: list[Variant], setup: Setup, load: Load,
          loads: list[float], executor: Executor, slo: SLO | None = None) -> dict[str, list[dict]]:
    """Per variant label, one point per load, in load order."""
    entries = list(entries)
    futures = {(v.label, x): executor.submit(probe, entries, v.policy, setup, load, x, slo)
               for v in variants for x in loads}
    return {v.label: [futures[(v.label, x)].result() for x in loads] for v in variants}


def record(points: dict[str, list[dict]], variants: list[Variant], entries: Sequence[TraceEntry],
           setup: Setup, load: Load, slo: SLO | None, command: str) -> dict:
    return {
        "what": "latency and throughput against offered load, per policy",
        "command": command, "unit": load.unit,
        "setup": {"model": setup.model, "gpu": setup.gpu, "calibration": setup.calibration,
                  "policy_calibration": setup.policy_calibration, "max_num_seqs": setup.max_num_seqs},
        "slo": slo.describe() if slo else None,
        "trace": trace_summary(list(entries)),
        "policies": {v.label: {"policy": v.policy.describe(), "points": points[v.label]} for v in variants},
    }


def plot(rec: dict, path: Path) -> None:
    """TTFT, TBT (mean solid, tail dashed) and throughput against the offered req/s."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = rec["slo"]["percentile"] if rec["slo"] else "p95"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, (label, pol) in enumerate(rec["policies"].items()):
        pts = pol["points"]
        x = [p["offered_rps"] for p in pts]
        color = f"C{i % 10}"
        for ax, key, scale in ((axes[0], "ttft_s", 1.0), (axes[1], "tbt_s", 1e3)):
            ax.plot(x, [p[key]["mean"] * scale for p in pts], "-o", color=color, ms=3, label=f"{label} mean")
            ax.plot(x, [p[key][q] * scale for p in pts], "--", color=color, label=f"{label} {q}")
        axes[2].plot(x, [p["throughput_rps"] for p in pts], "-o", color=color, ms=3, label=label)
    if rec["slo"]:
        for ax, key, scale in ((axes[0], "ttft_s", 1.0), (axes[1], "tbt_s", 1e3)):
            if rec["slo"][key] is not None:
                ax.axhline(rec["slo"][key] * scale, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="offered req/s", ylabel="TTFT (s)", yscale="log")
    axes[1].set(xlabel="offered req/s", ylabel="TBT (ms)", yscale="log")
    axes[2].set(xlabel="offered req/s", ylabel="completed req/s")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{rec['setup']['model']} on {rec['setup']['gpu']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
