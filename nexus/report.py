"""What a run leaves behind: summary.json, requests.parquet, timeline.parquet and plots.

The real engine writes the same files through these functions, so results compare
column for column.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def write_run(out: Path, summary: dict, requests: pd.DataFrame, timeline: pd.DataFrame,
              extra: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({**summary, **(extra or {})}, indent=2, sort_keys=True,
                                                 default=str) + "\n")
    requests.to_parquet(out / "requests.parquet", index=False)
    timeline.to_parquet(out / "timeline.parquet", index=False)


def plot_latency_cdfs(runs: dict[str, pd.DataFrame], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, df in runs.items():
        for ax, col, scale in ((axes[0], "ttft_s", 1.0), (axes[1], "tbt_mean_s", 1e3)):
            v = np.sort(df[col].dropna().to_numpy() * scale)
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=name)
    axes[0].set(xlabel="TTFT (s)", ylabel="fraction of requests", xscale="log", title="Time to first token")
    axes[1].set(xlabel="mean TBT per request (ms)", title="Time between tokens")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timeline(runs: dict[str, pd.DataFrame], num_sms: int, path: Path) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for name, tl in runs.items():
        pre = tl[tl["stream"] == "prefill"]
        if len(pre):
            sms = pre["sms"].where(pre["sms"] > 0, num_sms)
            axes[0].step(pre["start_s"], sms, where="post", label=f"{name}: prefill SMs")
        axes[1].plot(tl["end_s"], tl["kv_usage"] * 100, label=name)
    axes[0].set(ylabel="prefill SMs", ylim=(0, num_sms + 4), title="SM split over time (prefill side)")
    axes[1].set(xlabel="time (s)", ylabel="KV use (%)", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(summaries: Sequence[dict], console: Console | None = None) -> None:
    console = console or Console(width=150)
    table = Table(title="Serving summary (latencies: mean / p95 / p99)")
    for col in ("policy", "req/s", "out tok/s", "TTFT s", "TBT ms", "E2E s", "norm. ms/tok", "preempt"):
        table.add_column(col, justify="right")
    for s in summaries:
        def fmt(key: str, scale: float = 1.0, digits: int = 3) -> str:
            m = s[key]
            return " / ".join(f"{m[k] * scale:.{digits}f}" for k in ("mean", "p95", "p99"))
        table.add_row(s["policy"], f"{s['throughput_rps']:.2f}", f"{s['output_tokens_per_s']:.0f}",
                      fmt("ttft_s"), fmt("tbt_s", 1e3, 1), fmt("e2e_s", 1.0, 2),
                      fmt("normalized_latency_s", 1e3, 1), str(s["preemptions"]))
    console.print(table)
    first = summaries[0]
    console.print(f"[dim]{first['model']} on {first['gpu']}, cost model: {first['cost_model'].get('name')}"
                  + (f" ({first['cost_model'].get('calibration')})" if first['cost_model'].get('calibration') else "")
                  + "[/dim]")
    for s in summaries:
        if "slo" in s:
            slo = s["slo"]
            console.print(f"{s['policy']}: SLO attainment {slo['attainment']:.1%}, "
                          f"goodput {slo['goodput_rps']:.2f} req/s "
                          f"(TTFT <= {slo['ttft_s']} s, TBT <= {slo['tbt_s']} s)")
