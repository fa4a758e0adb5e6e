"""Figures of the paper experiments, drawn from the JSON records alone."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nexus.report import policy_colours  # noqa: E402

PANELS = [("ttft_s", "mean", "TTFT mean (s)"), ("ttft_s", "p95", "TTFT P95 (s)"),
          ("tbt_s", "mean", "TBT mean (ms)"), ("tbt_s", "p95", "TBT P95 (ms)")]


def label(name: str, gpus: int) -> str:
    return f"{name} ({gpus} GPUs)" if gpus > 1 else name


def plot_sweep(record: dict, gpu: str, path: Path, title: str) -> None:
    """Rows: workloads; columns: TTFT/TBT mean and P95, and throughput per GPU, against rate."""
    runs = [r for r in record["runs"] if r["gpu"] == gpu]
    workloads = [w for w in record["workloads"] if any(r["workload"] == w for r in runs)]
    variants = list(dict.fromkeys(r["policy"] for r in runs))
    colours = policy_colours(variants)
    fig, axes = plt.subplots(len(workloads), 5, figsize=(20, 3.4 * len(workloads)), squeeze=False)
    for row, wl in zip(axes, workloads):
        slo = record["slos"][gpu][wl]
        for name in variants:
            pts = sorted((r for r in runs if r["workload"] == wl and r["policy"] == name),
                         key=lambda r: r["rate_rps"])
            if not pts:
                continue
            x = [p["rate_rps"] for p in pts]
            lab = label(name, pts[0]["gpus"])
            for ax, (metric, stat, _) in zip(row, PANELS):
                scale = 1e3 if metric == "tbt_s" else 1.0
                ax.plot(x, [p[metric][stat] * scale for p in pts], marker="o", ms=3, label=lab,
                        color=colours[name])
            row[4].plot(x, [p["throughput_rps_per_gpu"] for p in pts], marker="o", ms=3, label=lab,
                        color=colours[name])
        row[1].axhline(slo["ttft_p95_s"], color="k", ls="--", lw=0.8, label="SLO")
        row[3].axhline(slo["tbt_p95_s"] * 1e3, color="k", ls="--", lw=0.8, label="SLO")
        for ax, (_, _, ylabel) in zip(row, PANELS):
            ax.set(ylabel=ylabel, yscale="log")
        row[4].set(ylabel="completed req/s per GPU")
        for ax in row:
            ax.set(xlabel="offered rate (req/s)")
            ax.grid(alpha=0.3)
            ax.set_title(f"{wl}", fontsize=9)
    axes[0][4].legend(fontsize=7)
    axes[0][1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_max_rates(record: dict, path: Path, title: str) -> None:
    """Bars per GPU (rows) and workload (columns): the highest rate within the SLOs, per GPU.

    A hatched bar is a lower bound (the SLO still held at the highest rate probed); a
    missing bar means the SLO failed even at the lowest rate probed.
    """
    gpus = list(record["slos"])
    workloads = list(record["workloads"])
    fig, axes = plt.subplots(len(gpus), len(workloads), figsize=(4.2 * len(workloads), 3.4 * len(gpus)),
                             squeeze=False)
    colours = policy_colours(r["policy"] for r in record["results"])
    for row, gpu in zip(axes, gpus):
        for ax, wl in zip(row, workloads):
            rows = [r for r in record["results"] if r["gpu"] == gpu and r["workload"] == wl]
            names = [label(r["policy"], r["gpus"]) for r in rows]
            vals = [(r["max_rate_rps_per_gpu"] or 0.0) for r in rows]
            bars = ax.bar(range(len(rows)), vals, color=[colours[r["policy"]] for r in rows],
                          edgecolor="k", linewidth=0.5)
            for bar, r in zip(bars, rows):
                if r["status"] == "holds-at-highest":
                    bar.set_hatch("//")
            ax.bar_label(bars, labels=["fail" if r["max_rate_rps"] is None else f"{v:.3g}"
                                       for r, v in zip(rows, vals)], fontsize=7, padding=2)
            ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
            slo = record["slos"][gpu][wl]
            ax.set_title(f"{gpu} / {wl}\nP95 TTFT<={slo['ttft_p95_s']:g}s, "
                         f"P95 TBT<={slo['tbt_p95_s'] * 1e3:.0f}ms", fontsize=8)
            ax.set_ylabel("req/s per GPU", fontsize=8)
            ax.margins(y=0.2)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
